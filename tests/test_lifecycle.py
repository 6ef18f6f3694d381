"""Row lifecycle on the servers: admission (count, probability), eviction (ttl, capacity LRU),
exact on small cases; replicated and checkpointed with the table; delta range pulls."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import paramserver as ps
from paramserver.table import Store, TableSpec


def store(**life: object) -> Store:
    return Store(TableSpec.create("t", 2, "float64", "sum", **life))  # type: ignore[arg-type]


def keys(*ks: int) -> np.ndarray:
    return np.array(ks, dtype=np.uint64)


def ones(n: int, v: float = 1.0) -> np.ndarray:
    return np.full((n, 2), v)


def test_admission_after_k_pushes_drops_the_first_k_minus_1() -> None:
    s = store(admit_after=3)
    for clock in range(4):
        s.push(keys(1, 2), ones(2, clock + 1.0), clock)
        if clock == 0:
            s.push(keys(2), ones(1, 10.0), clock)  # key 2 is seen twice in iteration 0
    # key 1: pushes 1, 2 dropped, 3 + 4 applied; key 2: pushes 1 (1.0), 2 (10.0) dropped, 3 (2.0) ...
    np.testing.assert_array_equal(s.pull(keys(1, 2, 3)), [[7, 7], [9, 9], [0, 0]])
    k, _ = s.pull_range(0, 2**64)
    np.testing.assert_array_equal(k, keys(1, 2))
    s2 = store(admit_after=3)
    s2.push(keys(5), ones(1), 0)
    assert s2.pull_range(0, 2**64)[0].size == 0  # a candidate is no row yet
    assert len(s2) == 1  # (but it is counted)


def test_admission_by_probability_is_a_function_of_the_key() -> None:
    s = store(admit_prob=0.25)
    ks = np.arange(4000, dtype=np.uint64)
    s.push(ks, ones(4000), 0)
    expected = TableSpec.create("t", admit_prob=0.25).lifecycle.admitted_by_chance(ks)
    assert len(s) == int(expected.sum()) and s.dropped == 4000 - len(s)
    assert 900 < len(s) < 1100
    np.testing.assert_array_equal(s.pull(ks)[:, 0], expected.astype(np.float64))
    again = store(admit_prob=0.25)
    again.push(ks[::-1].copy(), ones(4000), 5)  # another order, another iteration: the same keys
    np.testing.assert_array_equal(np.sort(again.pull_range(0, 2**64)[0]), np.sort(s.pull_range(0, 2**64)[0]))


def test_ttl_evicts_rows_untouched_for_more_than_t_iterations() -> None:
    s = store(ttl=2)
    s.push(keys(1, 2, 3), ones(3), 0)
    s.push(keys(2), ones(1), 1)
    s.push(keys(3), ones(1), 2)  # iteration 2: nothing is older than 2 iterations yet
    assert len(s) == 3
    s.push(keys(9), ones(1), 3)  # iteration 3: key 1 (last pushed at 0) is gone
    assert len(s) == 3 and s.evicted == 1
    np.testing.assert_array_equal(s.pull(keys(1, 2, 3, 9))[:, 0], [0, 2, 2, 1])
    s.push(keys(1), ones(1, 5.0), 3)  # comes back from its initial values
    np.testing.assert_array_equal(s.pull(keys(1))[:, 0], [5])
    s.push(keys(7), ones(1), 5)  # 2 (at 1) and 3 (at 2) are gone too, the others stay
    np.testing.assert_array_equal(np.sort(s.pull_range(0, 2**64)[0]), keys(1, 7, 9))
    np.testing.assert_array_equal(s.pull(keys(1, 2, 3, 7, 9))[:, 0], [5, 0, 0, 1, 1])


def test_a_late_push_to_an_expired_row_starts_it_again() -> None:
    s = store(ttl=1)
    s.push(keys(1), ones(1, 3.0), 0)
    s.push(keys(2), ones(1), 1)
    s.push(keys(1), ones(1, 4.0), 5)  # lazily expired: 4, not 7 (the same wherever it is applied)
    np.testing.assert_array_equal(s.pull(keys(1))[:, 0], [4])


def test_capacity_frees_the_least_recently_touched_rows() -> None:
    s = store(capacity=10)
    for i in range(10):
        s.push(keys(100 + i), ones(1), i)
    s.push(keys(100), ones(1), 10)  # touched again: now the most recent
    assert len(s) == 10 and s.evicted == 0
    s.push(keys(200), ones(1), 11)  # the 11th row: free down to 9 rows, oldest first
    assert len(s) == 9 and s.evicted == 2
    present = set(s.pull_range(0, 2**64)[0].tolist())
    assert present == {100, 103, 104, 105, 106, 107, 108, 109, 200}
    np.testing.assert_array_equal(s.pull(keys(100, 101, 200))[:, 0], [2, 0, 1])
    s.push(np.arange(300, 309, dtype=np.uint64), ones(9), 12)  # a push is never evicted by itself
    assert len(s) == 9 and set(s.pull_range(0, 2**64)[0].tolist()) == set(range(300, 309))


def test_compaction_keeps_values_and_optimizer_state_of_the_kept_rows() -> None:
    s = Store(TableSpec.create("t", 3, "float32", "adagrad", ttl=1, init=ps.Normal(std=1.0, seed=3)))
    ref = Store(TableSpec.create("t", 3, "float32", "adagrad", init=ps.Normal(std=1.0, seed=3)))
    rng = np.random.default_rng(0)
    ks = np.arange(50, dtype=np.uint64)
    g = rng.normal(size=(50, 3)).astype(np.float32)
    s.push(ks, g, 0)
    ref.push(ks, g, 0)
    for clock in range(1, 6):  # the even keys are pushed every iteration, the odd ones expire
        s.push(ks[::2].copy(), g[::2].copy(), clock)
        ref.push(ks[::2].copy(), g[::2].copy(), clock)
    assert len(s) == 25 and s.evicted == 25
    np.testing.assert_array_equal(s.pull(ks[::2].copy()), ref.pull(ks[::2].copy()))
    np.testing.assert_array_equal(s.pull(ks[1::2].copy()), ps.Normal(std=1.0, seed=3).values(
        ks[1::2].copy(), 3, np.dtype(np.float32)))
    exported = s.export()
    assert set(exported) == {"keys", "values", "sum_sq", "_seen", "_touched"}
    np.testing.assert_array_equal(exported["_touched"][:, 0], np.full(25, 5))


def test_delta_range_pull_answers_the_rows_pushed_after_an_iteration() -> None:
    s = store(ttl=100)
    s.push(keys(1, 2, 3), ones(3), 0)
    s.push(keys(2), ones(1), 4)
    s.push(keys(3), ones(1), 7)
    np.testing.assert_array_equal(s.pull_range(0, 2**64, since=3)[0], keys(2, 3))
    np.testing.assert_array_equal(s.pull_range(0, 2**64, since=4)[0], keys(3))
    assert s.pull_range(0, 2**64, since=7)[0].size == 0
    np.testing.assert_array_equal(s.pull_range(0, 2**64, since=-1)[0], keys(1, 2, 3))


def test_lifecycle_parameters_are_checked_and_part_of_the_spec() -> None:
    with pytest.raises(ps.InvalidArgument, match="admit_prob"):
        TableSpec.create("t", admit_prob=0)
    with pytest.raises(ps.InvalidArgument, match="ttl must be an int"):
        TableSpec.create("t", ttl=-1)
    with pytest.raises(ps.InvalidArgument, match="capacity must be 0"):
        TableSpec.create("t", capacity=3)
    with pytest.raises(ps.InvalidArgument, match="aggregate"):
        TableSpec.create("t", aggregate=True, ttl=3)
    spec = TableSpec.create("t", admit_after=2, ttl=5, capacity=100)
    assert TableSpec.from_wire(spec.to_wire()) == spec
    assert "admit_after=2, ttl=5, capacity=100" in spec.describe()
    assert TableSpec.create("t", admit_after=1) == TableSpec.create("t")  # 1 is "at once", the default
    with pytest.raises(ps.TableError, match="ttl=5"):
        spec.check_compatible(TableSpec.create("t", admit_after=2, capacity=100))


def _wait_for(what: str, cond: object, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.cluster
def test_replicas_admit_and_evict_as_their_master(fast_env: dict[str, str]) -> None:
    """Admission counts and ttl eviction follow the pushes: after a failover the replica
    answers what the master answered."""
    with ps.LocalCluster(servers=2, replicas=2, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("life", width=2, dtype="float64", updater="sum", admit_after=2, ttl=2)
        rng = np.random.default_rng(4)
        ks = rng.integers(0, 2**64 - 1, size=400, dtype=np.uint64, endpoint=True)
        for _ in range(6):
            some = ks[rng.random(400) < 0.6]
            t.push(some, np.ones((len(some), 2))).wait()
            w.advance()
        before = t.pull(ks)
        k_before, v_before = t.pull_range()
        assert 0 < len(k_before) < 400 and (before[:, 0] == 0).any() and (before[:, 0] > 0).any()
        os.kill(cluster.server_pids[0], signal.SIGKILL)
        _wait_for("the failover", lambda: cluster.status()["failovers"] == 1)
        np.testing.assert_array_equal(t.pull(ks), before)
        k_after, v_after = t.pull_range()
        np.testing.assert_array_equal(k_after, k_before)
        np.testing.assert_array_equal(v_after, v_before)


@pytest.mark.cluster
def test_checkpoint_restores_admission_counts_and_ages(fast_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    spec = {"width": 1, "dtype": "float64", "updater": "sum", "admit_after": 3, "ttl": 3}
    with ps.LocalCluster(servers=2, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("life", **spec)
        t.push([1, 2, 3], [1.0, 1.0, 1.0]).wait()  # iteration 0: 1, 2, 3 seen once
        w.advance()
        t.push([1, 2], [1.0, 1.0]).wait()  # iteration 1: 1, 2 seen twice
        w.advance()
        w.checkpoint(path)
    saved = ps.checkpoint.read_table(path, "life")
    np.testing.assert_array_equal(saved["_seen"][:, 0], [2, 2, 1])
    np.testing.assert_array_equal(saved["_touched"][:, 0], [1, 1, 0])
    with ps.LocalCluster(servers=1, env=fast_env, restore=path) as cluster, ps.connect(cluster.address) as w:
        w.set_clock(2)  # resume after the checkpoint's iteration 1
        t = w.table("life", **spec)
        t.push([1, 2, 3], [5.0, 5.0, 5.0]).wait()  # the third push of 1 and 2 admits them, not 3
        np.testing.assert_array_equal(t.pull([1, 2, 3])[:, 0], [5, 5, 0])
        t.push([9], [1.0], clock=5).wait()  # a candidate (seen once): no row yet
        np.testing.assert_array_equal(t.pull_range(since=1)[0], np.array([1, 2], dtype=np.uint64))
        t.push([9], [1.0], clock=6).wait()  # iteration 6: 1, 2 and 3 (last pushed at 2) are older than ttl=3
        np.testing.assert_array_equal(t.pull([1, 2, 3])[:, 0], [0, 0, 0])
        assert t.pull_range()[0].size == 0
