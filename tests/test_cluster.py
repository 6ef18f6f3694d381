"""Real clusters on 127.0.0.1: exact sums from several worker processes, pulls, range pulls."""

from __future__ import annotations

import numpy as np
import pytest

import paramserver as ps
import workloads
from reference import CASES, Reference

pytestmark = pytest.mark.cluster


def test_three_worker_processes_fifty_rounds_exact_sums(cluster2: ps.LocalCluster) -> None:
    rounds = 50
    procs = workloads.start_workers(cluster2.address, 3, rounds)
    codes = [p.wait(timeout=240) for p in procs]
    assert codes == [0, 0, 0]
    workloads.check_final_state(cluster2.address, 3, rounds)
    keys, sums, counts = workloads.expected(3, rounds)
    with ps.connect(cluster2.address) as w:
        t_sums = w.table("sums", width=workloads.WIDTH, dtype="float32")
        t_counts = w.table("counts", width=1, dtype="int64")
        # range pulls return exactly the present keys, ascending
        rk, rv = t_sums.pull_range(0, 2**64)
        np.testing.assert_array_equal(rk, keys)
        np.testing.assert_array_equal(rv, sums.astype(np.float32))
        lo, hi = 2**62, 2**63 + 2**61  # crosses the boundary between the two servers
        rk, rv = t_counts.pull_range(lo, hi)
        inside = (keys >= np.uint64(lo)) & (keys < np.uint64(hi))
        np.testing.assert_array_equal(rk, keys[inside])
        np.testing.assert_array_equal(rv.ravel(), counts[inside])
        # the servers hold exactly these keys between them, split by range
        status = cluster2.status()
        per_server = [s["tables"]["1"]["keys"] for s in status["servers"].values()]
        assert sum(per_server) == len(keys)
        assert sorted(per_server) == sorted([int((keys < np.uint64(2**63)).sum()), int((keys >= np.uint64(2**63)).sum())])


def test_pull_answers_in_caller_order_with_duplicates(worker: ps.Worker) -> None:
    t = worker.table("v", width=3, dtype="float64")
    keys = np.array([2**64 - 1, 3, 2**63, 3, 0], dtype=np.uint64)
    vals = np.arange(15, dtype=np.float64).reshape(5, 3)
    t.push(keys, vals).wait()
    expect = {2**64 - 1: vals[0], 3: vals[1] + vals[3], 2**63: vals[2], 0: vals[4]}
    query = [3, 0, 2**64 - 1, 3, 12345, 2**63]
    got = t.pull(query)
    want = np.array([expect.get(k, np.zeros(3)) for k in query])
    np.testing.assert_array_equal(got, want)
    out = np.empty((6, 3), dtype=np.float64)
    assert t.pull(query, out=out) is out
    np.testing.assert_array_equal(out, want)
    later = t.pull(query, block=False)
    np.testing.assert_array_equal(later.result(), want)
    assert later.done() and later.exception() is None


def test_many_requests_in_flight_and_wait_by_timestamp(worker: ps.Worker) -> None:
    t = worker.table("c", dtype="int32")
    keys = np.array([1, 2**63 + 1], dtype=np.uint64)
    reqs = [t.push(keys, np.array([i, 2 * i], dtype=np.int32)) for i in range(200)]
    assert len({r.ts for r in reqs}) == 200
    t.wait(reqs[-1].ts)
    worker.wait_all()
    np.testing.assert_array_equal(t.pull(keys).ravel(), [sum(range(200)), 2 * sum(range(200))])
    st = worker.stats()["tables"]["c"]
    assert st["pushes"] == 200 and st["keys_pushed"] == 400 and st["bytes_sent"] > 0 and st["bytes_received"] > 0


@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
def test_builtin_updaters_on_a_real_cluster(worker: ps.Worker, name: str, params: dict[str, float]) -> None:
    t = worker.table(f"u_{name}", width=3, dtype="float64", updater=name, updater_args=params)
    ref = Reference(name, params, 3, "float64")
    rng = np.random.default_rng(3)
    universe = np.array([5, 2**62, 2**63 + 9, 2**64 - 2], dtype=np.uint64)
    for _ in range(6):
        keys = rng.choice(universe, size=3, replace=False)
        g = rng.normal(size=(3, 3))
        t.push(keys, g).wait()
        for k, row in zip(keys.tolist(), g, strict=True):
            ref.step(k, row)
        np.testing.assert_allclose(t.pull(universe), ref.values(universe), rtol=1e-12, atol=1e-12)


def test_tables_attach_across_workers_and_random_init(cluster2: ps.LocalCluster) -> None:
    init = ps.Normal(std=0.1, seed=5)
    with ps.connect(cluster2.address) as a, ps.connect(cluster2.address) as b:
        ta = a.table("emb", width=8, updater=ps.AdaGrad(lr=0.1), init=init)
        tb = b.table("emb", width=8, updater="adagrad", updater_args={"lr": 0.1}, init="normal",
                     init_args={"std": 0.1, "seed": 5})
        assert ta.id == tb.id
        keys = np.array([7, 2**63 + 7], dtype=np.uint64)
        np.testing.assert_array_equal(ta.pull(keys), init.values(keys, 8, np.dtype("float32")))
        np.testing.assert_array_equal(tb.pull(keys), ta.pull(keys))
        with pytest.raises(ps.TableError, match="exists with width=8"):
            b.table("emb", width=4)
        assert {a.rank, b.rank} == {0, 1}


def test_ring_placement_exact_sums_and_key_counts(fast_env: dict[str, str]) -> None:
    """Consistent hashing: each server masters many ranges; sums stay exact, counts follow the ring."""
    rounds = 20
    with ps.LocalCluster(servers=3, env={**fast_env, "PS_PLACEMENT": "ring", "PS_VNODES": "32"}) as cluster:
        procs = workloads.start_workers(cluster.address, 2, rounds)
        assert [p.wait(timeout=240) for p in procs] == [0, 0]
        workloads.check_final_state(cluster.address, 2, rounds)
        keys, _, _ = workloads.expected(2, rounds)
        with ps.connect(cluster.address) as w:
            rk, _ = w.table("counts", width=1, dtype="int64").pull_range(0, 2**64)
            np.testing.assert_array_equal(rk, keys)
            keymap = w._node.keymap
        assert keymap is not None and len(keymap) > 3 * 16
        status = cluster.status()
        held = {int(sid): s["tables"]["1"]["keys"] for sid, s in status["servers"].items()}
        expect = {node: sum(b - a for a, b in pieces) for node, pieces in keymap.slice(keys).items()}
        assert held == expect


def test_empty_requests_return_empty_arrays(worker: ps.Worker) -> None:
    t = worker.table("e", width=3, dtype="int16")
    got = t.pull(np.array([], dtype=np.uint64))
    assert got.shape == (0, 3) and got.dtype == np.int16
    t.push([], np.zeros((0, 3), np.int16)).wait()
    keys, values = t.pull_range(5, 6)
    assert keys.shape == (0,) and values.shape == (0, 3)
