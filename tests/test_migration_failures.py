"""Failures during migrations: a server that dies during a join or a drain, as source or as
target, at each phase, loses no acknowledged push.

The dying server kills itself at the chosen step (PS_CRASH_AT, server/_crashpoint.py; with
PS_CRASH_ONCE only the first server to get there), so each test hits its phase however the
machine is loaded. Workers wait for every push, so every push was acknowledged: the final
state must be exact, and a second check after one more failure proves the replicas exact too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import paramserver as ps
import workloads

pytestmark = pytest.mark.cluster

POINTS = ["copy:before", "copy:after", "load:before", "load:after",
          "switch:before:source", "switch:after:source", "switch:before:target", "switch:after:target"]


def _env(fast_env: dict[str, str], point: str, once: Path) -> dict[str, str]:
    return {**fast_env, "PS_HEARTBEAT_INTERVAL": "0.1", "PS_HEARTBEAT_TIMEOUT": "3", "PS_PLACEMENT": "ring",
            "PS_CRASH_AT": point, "PS_CRASH_ONCE": str(once)}


def _wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _pushes(cluster: ps.LocalCluster) -> int:
    return sum(t["pushes"] for s in cluster.status()["servers"].values() if "tables" in s
               for t in s["tables"].values())


def _live_servers(cluster: ps.LocalCluster) -> list[int]:
    return [i for i, p in enumerate(cluster._servers) if p.poll() is None]


def _kill_one_more_and_check(cluster: ps.LocalCluster, ranks: int, rounds: int) -> None:
    """SIGKILL a live server, wait for the failover, check again: the replicas were exact."""
    failovers = cluster.status()["failovers"]
    victim = _live_servers(cluster)[0]
    os.kill(cluster.server_pids[victim], signal.SIGKILL)
    _wait_for("the failover", lambda: cluster.status()["failovers"] > failovers)
    workloads.check_final_state(cluster.address, ranks, rounds)


def _cases() -> list[object]:
    out: list[object] = []
    for point in POINTS:
        for action in ("join", "drain"):
            if (point, action) == ("copy:after", "drain"):
                # 3 servers: a crash in the restore-replicas copy that follows the drain is a
                # second failure before the replicas are back (the job ends: a range had one copy)
                out.append(pytest.param(point, action, marks=pytest.mark.xfail(
                    reason="when the crash hits the copy after the drain, 2 of 3 servers are gone", strict=False)))
            else:
                out.append((point, action))
    return out


@pytest.mark.parametrize(("point", "action"), _cases())
def test_a_server_dies_during_a_migration_and_no_push_is_lost(fast_env: dict[str, str], tmp_path: Path,
                                                              action: str, point: str) -> None:
    once = tmp_path / "crashed"
    env = _env(fast_env, point, once)
    rounds = 150
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        procs = workloads.start_workers(cluster.address, 3, rounds, env)
        try:
            _wait_for("40 pushes", lambda: _pushes(cluster) >= 40)
            # a joining server that dies never masters its ranges (add_server says so), and
            # a drain that fails is rolled back: either way the pushes go on
            with contextlib.suppress(ps.PSError):
                if action == "join":
                    cluster.add_server()
                else:
                    cluster.remove_server(1)
            codes = [p.wait(timeout=240) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert codes == [0, 0, 0]
        assert once.exists(), f"no server reached {point}"
        _wait_for("the migrations to end", lambda: not cluster.status()["migrating"])
        workloads.check_final_state(cluster.address, 3, rounds)
        if len(_live_servers(cluster)) >= 3:
            _kill_one_more_and_check(cluster, 3, rounds)


@pytest.mark.parametrize("point", ["sums:before", "sums:after", "switch:before:target",
                                   pytest.param("switch:after:target", marks=pytest.mark.xfail(
                                       reason="known limit (docs/replication.md): a new master that dies right after "
                                              "the switch sometimes loses a handed-over partial sum", strict=False)),
                                   pytest.param("switch:after:source", marks=pytest.mark.xfail(
                                       reason="known limit (docs/replication.md): a drained master that dies right "
                                              "after handing its partial sums over may have them counted twice",
                                       strict=False))])
def test_aggregated_sums_handed_over_in_a_drain_survive_a_failure(fast_env: dict[str, str], tmp_path: Path,
                                                                   point: str) -> None:
    """An aggregating table, 3 workers; the drain happens while an iteration is half pushed
    (its partial sums go from the drained master to the new ones) and a server dies at
    ``point``: every acknowledged sum is kept, and the job's sums are exact."""
    once = tmp_path / "crashed"
    env = _env(fast_env, point, once)
    with ps.LocalCluster(servers=4, replicas=2, env=env) as cluster:
        ws = [ps.connect(cluster.address) for _ in range(3)]
        try:
            job = workloads.Lockstep(ws)
            job.iterations(range(0, 4))
            job.push(0, 4)
            job.push(1, 4)  # iteration 4 half pushed: partial sums wait on the masters
            with contextlib.suppress(ps.PSError):
                cluster.remove_server(0)
            job.push(2, 4)
            job.advance()
            job.iterations(range(5, 8))
            for r in job.reqs:
                r.wait(120)
            assert once.exists(), f"no server reached {point}"
            job.check(range(8), timeout=120)
        finally:
            for w in ws:
                w.close()
