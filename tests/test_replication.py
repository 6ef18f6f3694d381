"""Chain replication and failover on real clusters: SIGKILL a server while workers push,
and every acknowledged push is in the final state; stale key maps are answered "moved"."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

import paramserver as ps
import workloads
from paramserver.placement import Assignment, KeyMap

pytestmark = pytest.mark.cluster


def _env(fast_env: dict[str, str], **extra: str) -> dict[str, str]:
    # Failure is detected by heartbeats: 0.1 s apart, a server silent for 3 s is dead (not
    # shorter: a loaded 2-core machine must not declare a live node dead).
    return {**fast_env, "PS_HEARTBEAT_INTERVAL": "0.1", "PS_HEARTBEAT_TIMEOUT": "3", **extra}


def _pushes(cluster: ps.LocalCluster) -> int:
    return sum(t["pushes"] for s in cluster.status()["servers"].values() if "tables" in s
               for t in s["tables"].values())


def _wait_for(what: str, cond: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _pushing_workers(cluster: ps.LocalCluster, env: dict[str, str], rounds: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """3 worker processes pushing the known workload of ``workloads.py``; killed if still running at the end."""
    procs = workloads.start_workers(cluster.address, 3, rounds, env)
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize(("victim", "after_pushes", "placement"), [
    (0, 30, "even"), (1, 200, "even"), (2, 100, "ring"),
])
def test_sigkill_a_server_while_three_workers_push_loses_nothing(
        fast_env: dict[str, str], victim: int, after_pushes: int, placement: str) -> None:
    """3 servers, replicas=2, 3 worker processes pushing known updates without pause; one
    server is SIGKILLed once the servers applied ``after_pushes`` pushes. Every worker waits
    for every push, so each one was acknowledged: the final state must be exact."""
    rounds = 120
    env = _env(fast_env, PS_PLACEMENT=placement)
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        with _pushing_workers(cluster, env, rounds) as procs:
            _wait_for(f"{after_pushes} pushes", lambda: _pushes(cluster) >= after_pushes)
            os.kill(cluster.server_pids[victim], signal.SIGKILL)
            codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0, 0]
        workloads.check_final_state(cluster.address, 3, rounds)
        status = cluster.status()
        assert len(status["servers"]) == 2  # the dead one is gone from the cluster
        assert status["failovers"] == 1
        _wait_for("the replicas restored", lambda: cluster.status()["migrations"] == 1)
        km = KeyMap.from_wire(cluster.status()["keymap"])
        assert len(km.servers()) == 2 and km.replicas() == 2  # every range has 2 copies again
        workloads.check_final_state(cluster.address, 3, rounds)
        keys, _, _ = workloads.expected(3, rounds)
        # every key is mastered by exactly one live server: the key counts add up
        held = [s["tables"]["1"]["keys"] for s in status["servers"].values()]
        assert sum(held) == len(keys)


def test_replicas_hold_the_same_values_as_their_master(fast_env: dict[str, str]) -> None:
    """After the pushes are acknowledged, killing any one server leaves the state intact:
    the replica of each range has exactly what its master had (kill, then read)."""
    env = _env(fast_env)
    with ps.LocalCluster(servers=3, replicas=3, env=env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("opt", width=4, dtype="float64", updater="adagrad", updater_args={"lr": 0.5})
        rng = np.random.default_rng(1)
        keys = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
        for _ in range(5):
            t.push(keys, rng.normal(size=(3000, 4))).wait()
        before = t.pull(keys)
        os.kill(cluster.server_pids[0], signal.SIGKILL)
        _wait_for("the failover", lambda: cluster.status()["failovers"] == 1)
        np.testing.assert_array_equal(t.pull(keys), before)
        os.kill(cluster.server_pids[1], signal.SIGKILL)  # and then a second one: 3 copies
        _wait_for("the second failover", lambda: cluster.status()["failovers"] == 2)
        np.testing.assert_array_equal(t.pull(keys), before)
        k, v = t.pull_range()
        np.testing.assert_array_equal(k, np.unique(keys))
        np.testing.assert_array_equal(v, t.pull(k))


def test_without_replicas_a_dead_server_ends_the_job_with_a_clear_error(fast_env: dict[str, str]) -> None:
    with ps.LocalCluster(servers=2, env=_env(fast_env)) as cluster:
        w = ps.connect(cluster.address)
        t = w.table("x")
        t.push([1, 2**63], [1.0, 2.0]).wait()
        os.kill(cluster.server_pids[1], signal.SIGKILL)
        with pytest.raises(ps.PSError, match=r"no replica to promote"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                t.pull([1, 2**63], timeout=5)
                time.sleep(0.05)
        w.close()


def test_a_stale_key_map_is_answered_moved_and_resent_unnoticed(fast_env: dict[str, str]) -> None:
    """A worker whose cached key map is older than the servers' (and wrong) still gets exact
    results: the servers answer "moved" with their map and the worker sends the parts on."""
    with ps.LocalCluster(servers=3, replicas=2, env=_env(fast_env)) as cluster, ps.connect(cluster.address) as w:
        t = w.table("s", width=2, dtype="int64")
        node = w._node
        real = node.keymap
        assert real is not None and real.epoch == 1
        servers = real.servers()
        rotated = {s: servers[(i + 1) % len(servers)] for i, s in enumerate(servers)}
        node.keymap = KeyMap(0, [Assignment(a.range, rotated[a.master], ()) for a in real])  # stale and wrong
        keys = np.array([5, 2**62, 2**63 + 7, 2**64 - 1, 5], dtype=np.uint64)
        vals = np.arange(10, dtype=np.int64).reshape(5, 2)
        t.push(keys, vals).wait(30)
        assert node.keymap.epoch == 1  # adopted from the "moved" answers
        node.keymap = KeyMap(0, [Assignment(a.range, rotated[a.master], ()) for a in real])
        np.testing.assert_array_equal(t.pull([5, 2**62, 2**63 + 7, 2**64 - 1], timeout=30),
                                      [[8, 10], [2, 3], [4, 5], [6, 7]])
        node.keymap = KeyMap(0, [Assignment(a.range, rotated[a.master], ()) for a in real])
        k, v = t.pull_range(timeout=30)
        np.testing.assert_array_equal(k, [5, 2**62, 2**63 + 7, 2**64 - 1])
        np.testing.assert_array_equal(v, [[8, 10], [2, 3], [4, 5], [6, 7]])
        assert w.stats()["reroutes"] >= 3
        assert sum(s["moved"] for s in cluster.status()["servers"].values()) >= 3


def test_aggregated_tables_replicate_each_iteration_once(fast_env: dict[str, str]) -> None:
    """With aggregation, n workers' pushes of an iteration are applied and replicated once;
    the replicas then equal the master, and fewer bytes go down the chain."""
    with ps.LocalCluster(servers=2, replicas=2, env=_env(fast_env)) as cluster:
        ws = [ps.connect(cluster.address) for _ in range(3)]
        try:
            tables = [w.table("g", width=3, dtype="float64", aggregate=True) for w in ws]
            keys = np.arange(0, 2**64 - 1, 2**54, dtype=np.uint64)
            reqs = []
            for it in range(4):
                for i, t in enumerate(tables):
                    reqs.append(t.push(keys, np.full((len(keys), 3), float(i + it))))
                for w in ws:
                    w.advance()
            for r in reqs:
                r.wait(30)
            total = sum(float(i + it) for it in range(4) for i in range(3))
            np.testing.assert_array_equal(tables[0].pull(keys), np.full((len(keys), 3), total))
            status = cluster.status()
            # each server replicated one message per iteration (its range has one chain), not one per push
            for s in status["servers"].values():
                assert s["replicated"]["agg"] == 4 and s["replicated"]["push"] == 0
                assert s["replicated_bytes"] == 4 * (len(keys) // 2) * (8 + 3 * 8)
            os.kill(cluster.server_pids[0], signal.SIGKILL)
            _wait_for("the failover", lambda: cluster.status()["failovers"] == 1)
            np.testing.assert_array_equal(tables[1].pull(keys), np.full((len(keys), 3), total))
        finally:
            for w in ws:
                w.close()


def test_aggregated_sums_are_exact_through_a_join_and_a_drain(fast_env: dict[str, str]) -> None:
    """Aggregating table on the ring, replicas=2, 3 workers: a server joins, then one is
    drained while an iteration is half pushed (its partial sums on the drained master go to
    the new masters, and the pushes waiting there are answered): every sum is exact."""
    env = _env(fast_env, PS_PLACEMENT="ring")
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        ws = [ps.connect(cluster.address) for _ in range(3)]
        try:
            job = workloads.Lockstep(ws)
            job.iterations(range(0, 4))
            cluster.add_server()
            job.iterations(range(4, 8))
            job.push(0, 8)
            job.push(1, 8)  # iteration 8 half pushed: partial sums wait on the masters
            cluster.remove_server(0)
            job.push(2, 8)
            job.advance()
            job.iterations(range(9, 12))
            job.check(range(12), timeout=60)
            assert cluster.status()["migrations"] == 2
        finally:
            for w in ws:
                w.close()


@pytest.mark.parametrize("placement", ["ring", "even"])
def test_join_a_fourth_server_then_drain_one_while_workers_push(fast_env: dict[str, str], placement: str) -> None:
    """3 servers (replicas=2) and 3 pushing workers; a 4th server joins, then the first is
    drained: the final sums are exact and the servers hold the keys the placement assigns
    (on the ring: only the ranges of the joined and the drained server's virtual nodes move)."""
    from paramserver.placement import EvenSplit, Ring

    rounds = 200
    env = _env(fast_env, PS_PLACEMENT=placement)
    policy = Ring() if placement == "ring" else EvenSplit()
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        with _pushing_workers(cluster, env, rounds) as procs:
            _wait_for("40 pushes", lambda: _pushes(cluster) >= 40)
            cluster.add_server()
            status = cluster.status()
            assert len(status["servers"]) == 4 and status["migrations"] >= 1
            km = KeyMap.from_wire(status["keymap"])
            four = sorted(int(s) for s in status["servers"])
            assert list(km) == list(policy.assign(four, km.epoch, replicas=2))
            cluster.remove_server(0)
            codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0, 0]
        assert cluster._servers[0].poll() == 0  # the drained server stopped cleanly
        workloads.check_final_state(cluster.address, 3, rounds)
        status = cluster.status()
        km = KeyMap.from_wire(status["keymap"])
        servers = sorted(int(s) for s in status["servers"])
        assert len(servers) == 3 and km.servers() == servers
        assert list(km) == list(policy.assign(servers, km.epoch, replicas=2))
        keys, _, _ = workloads.expected(3, rounds)
        owners = km.masters(keys)
        for sid, s in status["servers"].items():
            assert s["tables"]["1"]["keys"] == int((owners == int(sid)).sum())


def test_a_crash_fails_over_from_the_broken_link_without_heartbeats(fast_env: dict[str, str]) -> None:
    """Heartbeats too slow to matter (a 10-minute timeout): the SIGKILLed server's broken
    connections make its peers and the scheduler suspect it, the probe finds nothing
    listening, and the job fails over and finishes exactly."""
    rounds = 60
    env = _env(fast_env, PS_HEARTBEAT_TIMEOUT="600")
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        with _pushing_workers(cluster, env, rounds) as procs:
            _wait_for("50 pushes", lambda: _pushes(cluster) >= 50)
            os.kill(cluster.server_pids[1], signal.SIGKILL)
            codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0, 0]
        workloads.check_final_state(cluster.address, 3, rounds)
        status = cluster.status()
        assert status["failovers"] == 1
        (failure,) = [e for e in status["events"] if e[1] == "failure"]
        assert "link" in failure[3] and "connection refused" in failure[3], failure


def test_a_stopped_server_is_slow_not_dead(fast_env: dict[str, str]) -> None:
    """A server SIGSTOPped for four heartbeat timeouts misses its heartbeats, but its address
    still accepts connections: the probes find it alive, nobody fails over, and the pushes
    it held up complete once it runs again."""
    rounds = 40
    env = _env(fast_env, PS_HEARTBEAT_TIMEOUT="0.5")
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        with _pushing_workers(cluster, env, rounds) as procs:
            _wait_for("30 pushes", lambda: _pushes(cluster) >= 30)
            victim = cluster.server_pids[0]
            os.kill(victim, signal.SIGSTOP)
            try:
                time.sleep(2.0)
            finally:
                os.kill(victim, signal.SIGCONT)
            codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0, 0]
        workloads.check_final_state(cluster.address, 3, rounds)
        status = cluster.status()
        assert status["failovers"] == 0 and len(status["servers"]) == 3
        assert not [e for e in status["events"] if e[1] == "failure"]
