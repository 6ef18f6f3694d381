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

import numpy as np
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


@pytest.mark.parametrize("action", ["join", "drain"])
@pytest.mark.parametrize("point", POINTS)
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


@pytest.mark.parametrize("point", ["sums:before", "sums:after", "switch:before:target", "switch:after:target",
                                   "switch:after:source"])
def test_aggregated_sums_handed_over_in_a_drain_survive_a_failure(fast_env: dict[str, str], tmp_path: Path,
                                                                   point: str) -> None:
    """An aggregating table, 3 workers; the drain happens while an iteration is half pushed
    (its partial sums go from the drained master to the new ones) and a server dies at
    ``point``: every acknowledged sum is kept, and the job's sums are exact."""
    once = tmp_path / "crashed"
    env = _env(fast_env, point, once)
    keys = workloads.POOL
    with ps.LocalCluster(servers=4, replicas=2, env=env) as cluster:
        ws = [ps.connect(cluster.address) for _ in range(3)]
        try:
            tables = [w.table("g", width=2, dtype="float64", aggregate=True) for w in ws]
            reqs: list[ps.Request] = []

            def push(i: int, it: int) -> None:
                reqs.append(tables[i].push(keys, np.full((len(keys), 2), float(1 + i + 10 * it))))

            def iterations(its: range) -> None:
                for it in its:
                    for i in range(3):
                        push(i, it)
                    for w in ws:
                        w.advance()

            iterations(range(0, 4))
            push(0, 4)
            push(1, 4)  # iteration 4 half pushed: partial sums wait on the masters
            with contextlib.suppress(ps.PSError):
                cluster.remove_server(0)
            push(2, 4)
            for w in ws:
                w.advance()
            iterations(range(5, 8))
            for r in reqs:
                r.wait(120)
            assert once.exists(), f"no server reached {point}"
            total = sum(float(1 + i + 10 * it) for it in range(8) for i in range(3))
            for t in tables:
                np.testing.assert_array_equal(t.pull(keys), np.full((len(keys), 2), total))
        finally:
            for w in ws:
                w.close()
