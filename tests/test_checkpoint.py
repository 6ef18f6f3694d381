"""Checkpoints on real clusters: kill everything, restore into another number of servers,
continue, and get exactly what an uninterrupted run gets; files readable with numpy alone;
periodic checkpoints; consistent cuts while a worker keeps pushing; clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paramserver as ps
from paramserver._config import Config

pytestmark = pytest.mark.cluster

ITERS = 10
CUT = 5  # the checkpoint holds iterations 0..CUT
LR = 0.1
# Keys across the whole key space, so that every split (2 or 3 servers, even or ring) gets some.
SHARED = np.array([0, 7, 2**40, 2**62 + 3, 2**63 - 1, 2**63, 3 * 2**62 + 5, 2**64 - 1], dtype=np.uint64)


def own_keys(rank: int) -> np.ndarray:
    """Keys only this rank pushes to the adagrad table (its order of pushes is then fixed)."""
    return (np.arange(1, 9, dtype=np.uint64) * np.uint64(2**61 - 17) + np.uint64(rank)).astype(np.uint64)


def sum_values(rank: int, it: int) -> np.ndarray:
    return (np.arange(len(SHARED) * 2, dtype=np.float64).reshape(-1, 2) + 10 * it + 100 * rank)


def grads(rank: int, it: int) -> np.ndarray:
    rng = np.random.default_rng([rank, it])
    return rng.normal(size=(8, 2))


def declare(w: ps.Worker) -> tuple[ps.Table, ps.Table]:
    return (w.table("sums", width=2, dtype="float64"),
            w.table("emb", width=2, dtype="float64", updater=ps.AdaGrad(lr=LR)))


def run_iterations(w: ps.Worker, its: range, after: Callable[[ps.Worker, int], None] | None = None) -> None:
    sums, emb = declare(w)
    w.barrier()
    for it in its:
        assert w.clock == it
        sums.push(SHARED, sum_values(w.rank, it))
        emb.push(own_keys(w.rank), grads(w.rank, it))
        w.advance()
        if after is not None:
            after(w, it)
    w.wait_all()
    w.barrier()


def in_threads(workers: list[ps.Worker], fn: Callable[[ps.Worker], None]) -> None:
    """Run ``fn(worker)`` for every worker at once (barriers need them concurrent)."""
    errors: list[BaseException] = []

    def body(w: ps.Worker) -> None:
        try:
            fn(w)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def snapshot(w: ps.Worker) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sums, emb = declare(w)
    return {"sums": sums.pull_range(), "emb": emb.pull_range()}


def kill_cluster(cluster: ps.LocalCluster) -> None:
    for pid in [*cluster.server_pids, cluster.scheduler_pid]:
        os.kill(pid, signal.SIGKILL)


def test_checkpoint_kill_restore_continue_equals_uninterrupted(fast_env: dict[str, str], tmp_path: Path) -> None:
    # The uninterrupted run.
    with ps.LocalCluster(servers=2, env=fast_env) as cluster:
        workers = [ps.connect(cluster.address) for _ in range(2)]
        in_threads(workers, lambda w: run_iterations(w, range(ITERS)))
        expected = snapshot(workers[0])
        for w in workers:
            w.close()

    # Iterations 0..CUT, a checkpoint at a barrier, then the whole cluster is killed.
    path = tmp_path / "ckpt"
    manifests: list[dict[str, Any]] = []

    def checkpoint_at_cut(w: ps.Worker, it: int) -> None:
        if it == CUT:
            if w.rank == 0:
                manifests.append(w.checkpoint(path))
            w.barrier()

    with ps.LocalCluster(servers=2, env=fast_env) as cluster:
        workers = [ps.connect(cluster.address) for _ in range(2)]
        in_threads(workers, lambda w: run_iterations(w, range(CUT + 1), checkpoint_at_cut))
        at_cut = snapshot(workers[0])
        for w in workers:
            w.close()
        kill_cluster(cluster)
    assert manifests[0]["iteration"] == CUT
    assert ps.checkpoint.read_manifest(path)["iteration"] == CUT

    # A new cluster of 3 servers resumes from the checkpoint and runs the rest.
    with ps.LocalCluster(servers=3, env=fast_env, restore=path) as cluster:
        workers = [ps.connect(cluster.address) for _ in range(2)]
        start = ps.checkpoint.read_manifest(path)["iteration"] + 1
        for w in workers:
            w.set_clock(start)
        restored = snapshot(workers[0])
        for name in ("sums", "emb"):  # the restored state is the checkpointed one, bit for bit
            np.testing.assert_array_equal(restored[name][0], at_cut[name][0])
            np.testing.assert_array_equal(restored[name][1], at_cut[name][1])
        status = cluster.status()
        assert all(s["checkpoints"]["restored_iteration"] == CUT for s in status["servers"].values())
        in_threads(workers, lambda w: run_iterations(w, range(start, ITERS)))
        got = snapshot(workers[0])
        for w in workers:
            w.close()

    np.testing.assert_array_equal(got["sums"][0], expected["sums"][0])
    np.testing.assert_array_equal(got["sums"][1], expected["sums"][1])
    np.testing.assert_array_equal(got["emb"][0], expected["emb"][0])
    np.testing.assert_allclose(got["emb"][1], expected["emb"][1], rtol=1e-12, atol=1e-14)


def test_files_are_plain_numpy_and_json(cluster2: ps.LocalCluster, tmp_path: Path) -> None:
    with ps.connect(cluster2.address) as w:
        sums = w.table("sums", width=3, dtype="int64")
        emb = w.table("emb/odd name", width=2, dtype="float32", updater="adagrad", updater_args={"lr": 0.5})
        rng = np.random.default_rng(1)
        keys = rng.integers(0, 2**64 - 1, size=500, dtype=np.uint64, endpoint=True)
        sq = {}
        for _ in range(3):
            g = rng.normal(size=(500, 2)).astype(np.float32)
            sums.push(keys, np.ones((500, 3), dtype=np.int64))
            emb.push(keys, g)
            uniq, inv = np.unique(keys, return_inverse=True)
            gsum = np.zeros((len(uniq), 2), dtype=np.float64)
            np.add.at(gsum, inv, g.astype(np.float64))
            for k, row in zip(uniq.tolist(), gsum, strict=True):
                sq[k] = sq.get(k, 0) + row.astype(np.float32).astype(np.float64) ** 2
        w.advance()
        manifest = w.checkpoint(tmp_path / "c")
        pulled = {"sums": sums.pull_range(), "emb/odd name": emb.pull_range()}

    # Read back with json and numpy only.
    with open(tmp_path / "c" / "manifest.json") as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["format"] == "paramserver-checkpoint" and on_disk["version"] == 1 and on_disk["iteration"] == 0
    assert len(on_disk["servers"]) == 2
    for name, (pk, pv) in pulled.items():
        entry = on_disk["tables"][name]
        assert entry["spec"]["name"] == name and len(entry["files"]) == 2
        parts = [(np.load(tmp_path / "c" / f["keys"]), np.load(tmp_path / "c" / f["values"]),
                  {s: np.load(tmp_path / "c" / p) for s, p in f["state"].items()}) for f in entry["files"]]
        for k, v, st in parts:
            assert k.dtype == np.uint64 and bool(np.all(k[1:] > k[:-1])) and v.shape == (len(k), pv.shape[1])
            assert all(a.shape == v.shape for a in st.values())
        k = np.concatenate([p[0] for p in parts])
        order = np.argsort(k)
        np.testing.assert_array_equal(k[order], pk)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts])[order], pv)
        assert entry["keys"] == len(pk)
        if name == "emb/odd name":
            assert all(set(p[2]) == {"sum_sq"} for p in parts)
            acc = np.concatenate([p[2]["sum_sq"] for p in parts])[order]
            want = np.array([sq[int(x)] for x in pk])
            np.testing.assert_allclose(acc, want, rtol=1e-5)
            assert all(f["keys"].startswith("@") for f in entry["files"])  # an unsafe name gets a folder by id
    table = ps.checkpoint.read_table(tmp_path / "c", "sums")
    np.testing.assert_array_equal(table["keys"], pulled["sums"][0])
    np.testing.assert_array_equal(table["values"], pulled["sums"][1])


@pytest.mark.parametrize(("iters", "seconds", "expect"), [(3, 0.0, [2, 5]), (0, 1e-9, list(range(8)))],
                         ids=["every-3-iterations", "every-nanosecond"])
def test_periodic_checkpoints(cluster2: ps.LocalCluster, tmp_path: Path, iters: int, seconds: float,
                              expect: list[int]) -> None:
    config = Config.from_env(checkpoint_dir=str(tmp_path / "periodic"), checkpoint_every_iters=iters,
                             checkpoint_every_seconds=seconds)
    keys = np.array([1, 2**63 + 1], dtype=np.uint64)
    with ps.connect(cluster2.address, config=config) as w:
        assert w.rank == 0
        t = w.table("c", dtype="int64")
        for it in range(8):
            t.push(keys, np.full(2, it + 1, dtype=np.int64))
            w.advance()
        w.wait_all()
    assert sorted(os.listdir(tmp_path / "periodic")) == [f"iter-{it:06d}" for it in expect]
    for it in expect:
        folder = tmp_path / "periodic" / f"iter-{it:06d}"
        assert ps.checkpoint.read_manifest(folder)["iteration"] == it
        got = ps.checkpoint.read_table(folder, "c")
        np.testing.assert_array_equal(got["keys"], keys)
        np.testing.assert_array_equal(got["values"].ravel(), [sum(range(1, it + 2))] * 2)


def test_consistent_cut_while_a_worker_keeps_pushing(cluster2: ps.LocalCluster, tmp_path: Path) -> None:
    """A checkpoint of iteration 2 waits for the slow worker; the fast one goes on pushing
    iterations 3..5 meanwhile, and the checkpoint holds exactly iterations 0..2."""
    keys = np.array([3, 2**62, 2**63 + 3, 2**64 - 9], dtype=np.uint64)

    def vals(rank: int, it: int) -> np.ndarray:
        return np.full(len(keys), (rank + 1) * 1000 + it, dtype=np.int64)

    with ps.connect(cluster2.address) as a, ps.connect(cluster2.address) as b:
        ta = a.table("s", dtype="int64", consistency="sequential")
        tb = b.table("s", dtype="int64")
        aa = a.table("agg", dtype="int64", aggregate=True)  # summed per iteration on the servers
        ab = b.table("agg", dtype="int64", aggregate=True)
        for it in range(3):
            ta.push(keys, vals(0, it))
            aa.push(keys, vals(0, it))
            a.advance()
        for it in range(2):
            tb.push(keys, vals(1, it))
            ab.push(keys, vals(1, it))
            b.advance()
        req = a.checkpoint(tmp_path / "cut", iteration=2, block=False)
        deadline = time.monotonic() + 60  # wait until every server holds the request
        while not all(s["checkpoints"]["held"] == 1 for s in cluster2.status()["servers"].values()):
            assert time.monotonic() < deadline and not req.done()
            time.sleep(0.05)
        for it in range(3, 6):  # the fast worker goes on: deferred, acknowledged
            ta.push(keys, vals(0, it)).wait()
            aa.push(keys, vals(0, it)).wait()
            a.advance()
        pull = ta.pull(keys, block=False)  # held: it must see a's deferred pushes
        assert not req.done()
        status = cluster2.status()["servers"].values()
        assert sum(s["checkpoints"]["deferred_pushes"] for s in status) == 2 * 3 * 2
        tb.push(keys, vals(1, 2))
        ab.push(keys, vals(1, 2))  # the slow worker finishes iteration 2: the cut is reached
        b.advance()
        manifest = req.result(60)
        assert manifest["iteration"] == 2
        everything = sum(int(vals(0, it)[0]) for it in range(6)) + sum(int(vals(1, it)[0]) for it in range(3))
        np.testing.assert_array_equal(pull.result(60).ravel(), [everything] * len(keys))
    got = ps.checkpoint.read_table(tmp_path / "cut", "s")
    np.testing.assert_array_equal(got["keys"], keys)
    cut = sum(int(vals(0, it)[0]) + int(vals(1, it)[0]) for it in range(3))
    np.testing.assert_array_equal(got["values"].ravel(), [cut] * len(keys))
    got = ps.checkpoint.read_table(tmp_path / "cut", "agg")
    np.testing.assert_array_equal(got["values"].ravel(), [cut] * len(keys))


def test_restore_errors_are_clear(fast_env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ps.CheckpointError, match=r"manifest.json is missing"):
        ps.LocalCluster(servers=1, env=fast_env, restore=tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ps.CheckpointError, match="not valid JSON"):
        ps.LocalCluster(servers=1, env=fast_env, restore=bad)
    (bad / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ps.CheckpointError, match="not a paramserver checkpoint"):
        ps.checkpoint.read_manifest(bad)
    # The server command refuses a missing checkpoint at once, before looking for a scheduler.
    proc = subprocess.run([sys.executable, "-m", "paramserver", "server", "--scheduler", "127.0.0.1:9",
                           "--restore", str(tmp_path / "nowhere")], env={**os.environ, **fast_env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "manifest.json is missing" in proc.stderr

    good = tmp_path / "good"
    with ps.LocalCluster(servers=2, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("w", width=2, dtype="float32", updater="adagrad")
        with pytest.raises(ps.InvalidArgument, match="not finished"):
            w.checkpoint(good, iteration=0)
        t.push([1, 2**63 + 1], np.ones((2, 2), dtype=np.float32))
        w.advance()
        w.checkpoint(good)
        restored_values = t.pull([1, 2**63 + 1])
    with ps.LocalCluster(servers=1, env=fast_env, restore=good) as cluster, ps.connect(cluster.address) as w:
        with pytest.raises(ps.TableError, match=r"width=3.*checkpoint.*width=2"):
            w.table("w", width=3, dtype="float32", updater="adagrad")
        with pytest.raises(ps.TableError, match="is not in the checkpoint"):
            w.table("other")
        t = w.table("w", width=2, dtype="float32", updater="adagrad")
        keys, values = t.pull_range()
        np.testing.assert_array_equal(keys, np.array([1, 2**63 + 1], dtype=np.uint64))
        np.testing.assert_array_equal(values, restored_values)
    # A file that does not match the manifest.
    entry = json.loads((good / "manifest.json").read_text())["tables"]["w"]["files"][0]
    np.save(good / entry["values"], np.zeros((1, 5), dtype=np.float64))
    with pytest.raises(ps.CheckpointError, match=r"values\.npy holds float64"):
        ps.checkpoint.read_table(good, "w")


def test_a_cut_never_reached_expires_and_releases_deferred_pushes(cluster2: ps.LocalCluster,
                                                                  tmp_path: Path) -> None:
    keys = np.array([5, 2**63 + 5], dtype=np.uint64)
    with ps.connect(cluster2.address) as a, ps.connect(cluster2.address) as b:
        ta = a.table("s", dtype="int64")
        b.table("s", dtype="int64")  # b never finishes an iteration
        ta.push(keys, np.ones(2, dtype=np.int64))
        a.advance()
        req = a.checkpoint(tmp_path / "never", block=False, timeout=1.0)
        ta.push(keys, np.full(2, 10, dtype=np.int64)).wait()  # iteration 1: deferred while the request is held
        exc = req.exception(timeout=60)
        assert isinstance(exc, ps.RemoteError) and "not every live worker finished it in time" in str(exc)
        np.testing.assert_array_equal(ta.pull(keys).ravel(), [11, 11])  # applied once the request expired
        assert all(s["checkpoints"] == {"held": 0, "deferred_pushes": 0, "written": 0}
                   for s in cluster2.status()["servers"].values())
    assert not (tmp_path / "never" / "manifest.json").exists()
