"""Worker groups, readers and namespaces on real clusters: every node its own OS process.

The paper's setting (section 1 of the spec): one group trains while another serves queries
from the same tables, and groups with their own namespaces train side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import paramserver as ps
import workloads

pytestmark = pytest.mark.cluster
SCRIPT = str(Path(__file__).parent / "scripts" / "group_worker.py")
LR = 0.01


def reference_x(iterations: int, shards: int) -> np.ndarray:
    """Full-batch gradient descent: what synchronous SGD over ``shards`` workers computes."""
    A, b = workloads.sgd_problem()
    x = np.zeros(8)
    for _ in range(iterations):
        x = x - LR * sum(A[r::shards].T @ (A[r::shards] @ x - b[r::shards]) for r in range(shards))
    return x


def start(mode: str, out: Path, iterations: int, address: str, env: dict[str, str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, mode, str(out), str(iterations)],
                            env={**os.environ, **env, "PS_SCHEDULER": address, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    """Wait for every worker process; all must exit 0 (killed and reported otherwise)."""
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_readers_pull_continuously_while_a_bounded_aggregating_group_trains_exactly(
        tmp_path: Path, fast_env: dict[str, str]) -> None:
    """Two trainers (the default group, tau=0 with aggregation: exact synchronous SGD) and a
    reader group of two pulling the same tables all the time: the trainers' result is exact,
    every count a reader saw is a whole number of iterations, each snapshot read is the table
    exactly after its iteration on every server, the readers' pushes are refused
    (by the worker and by the servers), and the job goes on after the training group ended
    until the reader group is done too."""
    iters = 30
    with ps.LocalCluster(servers=2, workers=2, env=fast_env) as cluster:
        procs = [start("read", tmp_path, iters, cluster.address, fast_env, PS_GROUP="serve", TRAINERS="2")
                 for _ in range(2)]
        procs += [start("train", tmp_path, iters, cluster.address, fast_env) for _ in range(2)]
        finish(procs)
        scheduler = cluster._procs[0].popen  # the job ended by itself once both groups were done
        assert scheduler.wait(timeout=60) == 0
    np.testing.assert_allclose(json.loads((tmp_path / "default.x.json").read_text()), reference_x(iters, 2),
                               rtol=1e-10, atol=1e-12)
    trainers = [json.loads((tmp_path / f"default.{r}.json").read_text()) for r in range(2)]
    assert all(t["count"] == [2 * iters] * 64 and t["group"] == "default" for t in trainers)
    readers = [json.loads((tmp_path / f"read.{r}.json").read_text()) for r in range(2)]
    for rd in readers:
        assert rd["group"] == "serve" and rd["seen"], rd
        lows = [lo for lo, _ in rd["seen"]]
        highs = [hi for _, hi in rd["seen"]]
        assert lows == sorted(lows) and highs == sorted(highs)  # a server's table never goes back
        assert all(v % 2 == 0 and 0 <= v <= 2 * iters for v in lows + highs)  # whole aggregated iterations
        assert rd["snaps"] == [[2 * (t + 1)] for t in range(iters)]  # one cut on every server, after each t
        assert rd["last"] == [2 * iters] * 64 and rd["after"] == [2 * iters] * 64  # the refused pushes changed nothing
        assert "read-only" in rd["client"] and "read-only" in rd["server"] and "refused" in rd["server"]


def test_two_training_groups_on_their_own_namespaces_each_exact(tmp_path: Path, fast_env: dict[str, str]) -> None:
    """Group "a" (bounded tau=0, aggregating) and group "b" (eventual, pushes applied on
    arrival) train at once in one cluster, each in its namespace: both results are exact,
    ranks are per group, and a worker of "b" may not write "a"'s namespace."""
    iters = 20
    with ps.LocalCluster(servers=2, env=fast_env) as cluster:
        procs = [start("train", tmp_path, iters, cluster.address, fast_env, PS_GROUP="a", PS_GROUP_WORKERS="2",
                       NS="a/", CONSISTENCY="bounded") for _ in range(2)]
        procs += [start("train", tmp_path, iters, cluster.address, fast_env, PS_GROUP="b", PS_GROUP_WORKERS="2",
                        NS="b/", CONSISTENCY="eventual", OTHER_NS="a/") for _ in range(2)]
        finish(procs)
        status = cluster.status()
    for g in ("a", "b"):
        np.testing.assert_allclose(json.loads((tmp_path / f"{g}.x.json").read_text()), reference_x(iters, 2),
                                   rtol=1e-10, atol=1e-12)
        results = [json.loads((tmp_path / f"{g}.{r}.json").read_text()) for r in range(2)]  # ranks 0, 1 in each
        assert all(r["count"] == [2 * iters] * 64 and r["group"] == g for r in results)
    refused = [json.loads((tmp_path / f"b.{r}.json").read_text())["refused"] for r in range(2)]
    assert all("may not write namespace 'a'" in r for r in refused), refused
    assert status["namespaces"] == {"a": {"writers": ["a"]}, "b": {"writers": ["b"]}}
    assert status["groups"]["a"]["ended"] and status["groups"]["b"]["ended"] and status["groups"]["a"]["size"] == 2


def test_a_reader_never_stalls_a_bounded_table_in_process() -> None:
    """The reported case: a trainer on a bounded tau=0 table keeps pulling after a second
    worker attached to it only to read (it used to time out: the reader's first tick made
    it count in the table's clocks)."""
    from paramserver.testing import InProcessCluster

    with InProcessCluster(servers=2, timeout=20) as c:
        trainer = c.connect()
        t = trainer.table("w", tau=0)
        reader = c.connect(group="serve")
        r = reader.table("w", tau=0, readonly=True)
        keys = np.arange(10, dtype=np.uint64)
        for i in range(5):
            t.push(keys, np.ones(10, dtype=np.float32)).wait()
            trainer.advance()
            assert t.pull(keys, timeout=20)[:, 0].tolist() == [i + 1.0] * 10
            assert r.pull(keys, timeout=20)[:, 0].tolist() == [i + 1.0] * 10
        with pytest.raises(ps.ReadOnlyError, match="read-only"):
            r.push(keys, np.ones(10, dtype=np.float32))
        with pytest.raises(ps.InvalidArgument, match="read-only"):
            reader.table("w", tau=0)  # attached read-only already
        assert (reader.group, trainer.group, reader.rank, trainer.rank) == ("serve", "default", 0, 0)
        reader.advance()  # a reader's iterations send no ticks to a table it reads
        assert t.pull(keys, timeout=20)[:, 0].tolist() == [5.0] * 10
        reader.close()
        trainer.close()
