"""Consistency models, exactly-once pushes under message loss, dependencies, iterations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paramserver as ps
import workloads
from paramserver.testing import InProcessCluster

pytestmark = pytest.mark.cluster
HERE = Path(__file__).parent
SSP = str(HERE / "scripts" / "ssp_worker.py")


def launch(mode: str, iterations: int, out: Path, env: dict[str, str], workers: int = 3) -> None:
    res = subprocess.run([sys.executable, "-m", "paramserver", "launch", "-s", "2", "-w", str(workers), "--",
                          sys.executable, SSP, mode, str(iterations), str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def schedule(out: Path, workers: int) -> dict[tuple[int, int], tuple[float, float]]:
    rows = []
    for r in range(workers):
        rows += json.loads(out.with_suffix(f".{r}.json").read_text())["rows"]
    return {(r, t): (start, finish) for r, t, start, finish in rows}


def test_bounded_delay_schedule(tmp_path: Path, fast_env: dict[str, str]) -> None:
    """tau = 2: no worker starts iteration t while any worker's iteration t - 3 is unfinished."""
    import os

    out = tmp_path / "sched"
    launch("schedule", 25, out, {**os.environ, **fast_env, "TAU": "2"})
    s = schedule(out, 3)
    checked = 0
    for (w, t), (start, _) in s.items():
        for v in range(3):
            if t - 3 >= 0:
                assert start >= s[(v, t - 3)][1], f"worker {w} started {t} before worker {v} finished {t - 3}"
                checked += 1
    assert checked == 3 * 3 * 22
    # the fast workers did wait for the slow one: their idle time is real and counted
    stats = [json.loads(out.with_suffix(f".{r}.json").read_text())["stats"] for r in range(3)]
    assert all(st["iteration"] == 25 for st in stats)
    assert stats[1]["wait_seconds"] > 0 and 0 < stats[1]["idle_fraction"] < 1


def test_tau_zero_is_synchronous_sgd(tmp_path: Path, fast_env: dict[str, str]) -> None:
    import os

    out = tmp_path / "x.json"
    lr, iters = 0.01, 30
    launch("sgd", iters, out, {**os.environ, **fast_env, "LR": str(lr)})
    A, b = workloads.sgd_problem()
    x = np.zeros(8)
    for _ in range(iters):  # full-batch gradient descent = the sum of the three shards' gradients
        x = x - lr * sum(A[r::3].T @ (A[r::3] @ x - b[r::3]) for r in range(3))
    np.testing.assert_allclose(json.loads(out.read_text()), x, rtol=1e-10, atol=1e-12)


def test_eventual_lets_iterations_overlap(tmp_path: Path, fast_env: dict[str, str]) -> None:
    import os

    out = tmp_path / "ev"
    launch("eventual", 10, out, {**os.environ, **fast_env}, workers=2)
    s = schedule(out, 2)
    # the fast worker finished all 10 iterations while the other was still in iteration 0/1
    assert s[(0, 9)][1] < s[(1, 1)][0]


@pytest.fixture
def faulty_env(fast_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """5% of messages lost, 5% duplicated, 5% delayed by 50 ms, resends after 0.3 s: for the
    cluster's processes and this test's own (monkeypatched) environment alike."""
    faults = {"PS_DROP_MSG": "5", "PS_DUP_MSG": "5", "PS_DELAY_MSG": "5", "PS_DELAY_MS": "50",
              "PS_RESEND_TIMEOUT": "0.3"}
    for k, v in faults.items():
        monkeypatch.setenv(k, v)
    return {**fast_env, **faults}


def test_exact_sums_with_lost_duplicated_and_delayed_messages(faulty_env: dict[str, str]) -> None:
    env = faulty_env
    rounds = 40
    with ps.LocalCluster(servers=2, env=env) as cluster:
        procs = workloads.start_workers(cluster.address, 3, rounds)
        assert [p.wait(timeout=240) for p in procs] == [0, 0, 0]
        workloads.check_final_state(cluster.address, 3, rounds)
        status = cluster.status()
    # the faults really happened: the servers saw duplicates (resends and copies) and ignored them
    assert sum(s["duplicates"] for s in status["servers"].values()) > 0


def test_pushes_apply_in_issue_order_despite_reordering() -> None:
    """With delayed and duplicated messages, 'assign' still ends with the last value pushed."""
    with InProcessCluster(servers=2, delay_msg=30.0, dup_msg=10.0, delay_ms=20.0, resend_timeout=0.2,
                          fault_seed=7) as cluster, cluster.connect() as w:
        for consistency in ("eventual", "sequential"):
            t = w.table(f"a_{consistency}", width=1, dtype="int64", updater="assign", consistency=consistency)
            keys = np.array([3, 2**63 + 3], dtype=np.uint64)
            reqs = [t.push(keys, np.array([i, -i])) for i in range(1, 60)]
            for r in reqs:
                r.wait(30)
            np.testing.assert_array_equal(t.pull(keys).ravel(), [59, -59])


def test_dependencies_hold_a_request_until_they_finish() -> None:
    with InProcessCluster(servers=1) as cluster, cluster.connect() as a, cluster.connect() as b:
        ta = a.table("d", dtype="float64", consistency="bounded", tau=0)
        tb = b.table("d", dtype="float64")
        a.advance()  # a is at iteration 1: its pulls wait for b to finish iteration 0
        held = ta.pull([1], block=False)
        after = ta.push([1], np.array([5.0]), deps=[held])  # returns at once
        assert not held.done() and not after.done()
        # b reads with eventual consistency: the dependent push has not been applied
        assert tb.pull([1], consistency="eventual").ravel().tolist() == [0.0]
        b.advance()  # b finishes iteration 0: a's pull is answered, then the push leaves
        np.testing.assert_array_equal(held.result(10).ravel(), [0.0])
        after.wait(10)
        assert tb.pull([1]).ravel().tolist() == [5.0]
        assert a.stats()["wait_seconds"] > 0


def test_sequential_waits_for_each_previous_request() -> None:
    with InProcessCluster(servers=1) as cluster, cluster.connect() as a, cluster.connect() as b:
        ta = a.table("s", dtype="float64", consistency="bounded", tau=0)
        b.table("s", dtype="float64")
        a.advance()
        held = ta.pull([1], block=False)  # held by bounded delay
        nxt = ta.push([1], np.array([1.0]), consistency="sequential")  # must wait for the pull
        assert not nxt.done()
        b.advance()
        nxt.wait(10)
        assert held.done()


def test_scheduler_changes_tau_while_the_job_runs() -> None:
    with InProcessCluster(servers=2) as cluster, cluster.connect() as a, cluster.connect() as b:
        ta = a.table("p", dtype="float64")
        tb = b.table("p", dtype="float64")
        for _ in range(5):
            a.advance()
        ta.pull([1, 2**63])  # eventual: not held although b is 5 iterations behind
        assert a.set_consistency("p", "bounded", tau=1) == ps.Consistency("bounded", 1)
        assert ta.policy == ps.Consistency("bounded", 1)
        held = ta.pull([1, 2**63], block=False)  # a at iteration 5 needs every worker past iteration 3
        for _ in range(3):
            b.advance()  # b finishes iterations 0, 1, 2
        tb.pull([1, 2**63], tau=1000)  # b's own pull sees its ticks applied (read-your-writes)
        assert not held.done()
        b.advance()  # b finishes iteration 3 = 5 - 1 - 1
        held.result(10)
        statuses = [s.status()["tables"][str(ta.id)]["consistency"] for s in cluster.servers]
        assert statuses == ["bounded(tau=1)", "bounded(tau=1)"]


def test_consistency_arguments_are_checked() -> None:
    with pytest.raises(ps.InvalidArgument, match="consistency must be one of"):
        ps.Consistency("strict")
    with pytest.raises(ps.InvalidArgument, match="needs tau"):
        ps.Consistency.of("bounded")
    with pytest.raises(ps.InvalidArgument, match="tau applies to consistency='bounded' only"):
        ps.Consistency("eventual", 3)
    assert ps.Consistency.of(None, 4) == ps.Consistency("bounded", 4)


FAULTY_WORKER = """
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np, paramserver as ps, workloads
with ps.connect(sys.argv[1]) as w:
    sums = w.table("sums", width=workloads.WIDTH, dtype="float32")
    counts = w.table("counts", width=1, dtype="int64")
    w.barrier("workers")
    done = []
    for shard in w.shards("rounds", list(range(int(sys.argv[3])))):  # each round once, by one worker
        keys, values, ones = workloads.round_data(0, shard.data)
        sums.push(keys, values).wait()
        counts.push(keys, ones).wait()
        w.advance()
        done.append(shard.data)
    w.barrier("workers")
    print(" ".join(map(str, done)), flush=True)
"""


def test_a_replicated_job_survives_faults_of_every_message(faulty_env: dict[str, str]) -> None:
    """5% of *every* message lost, 5% duplicated, 5% delayed (registration, heartbeats, table
    declarations, barriers, data shards, key-map broadcasts, replication and their replies
    included) on 3 servers with replicas=2: every request is resent until answered, each is
    handled once, and the sums are exact; every round was handed out exactly once."""
    env = faulty_env
    rounds = 30
    tests = str(Path(__file__).parent)
    with ps.LocalCluster(servers=3, replicas=2, env=env) as cluster:
        procs = [subprocess.Popen([sys.executable, "-c", FAULTY_WORKER, cluster.address, tests, str(rounds)],
                                  env={**__import__("os").environ, **env, "PYTHONPATH": tests},
                                  stdout=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=240)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0]
        handed = sorted(int(x) for out in outs for x in out.split())
        assert handed == list(range(rounds))
        workloads.check_final_state(cluster.address, 1, rounds)
        status = cluster.status()
    assert status["failovers"] == 0 and len(status["servers"]) == 3
    assert sum(s["duplicates"] for s in status["servers"].values()) > 0
