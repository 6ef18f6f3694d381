"""The server store: hash index, dynamic insertion, initial values, range reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver import InvalidArgument
from paramserver.table import HashIndex, Normal, Store, TableSpec, Uniform


@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=300), max_size=8))
@settings(max_examples=100, deadline=None)
def test_hash_index_matches_a_dict(batches: list[list[int]]) -> None:
    index = HashIndex()
    ref: dict[int, int] = {}
    all_keys = np.zeros(0, dtype=np.uint64)
    for batch in batches:
        keys = np.array(batch, dtype=np.uint64)
        rows = index.insert(keys, all_keys)
        for k, r in zip(batch, rows.tolist(), strict=True):
            ref.setdefault(k, len(ref))
            assert ref[k] == r
        all_keys = np.array(sorted(ref, key=ref.__getitem__), dtype=np.uint64)
        found, missing = index.lookup(keys)
        assert missing == 0 and found.tolist() == [ref[k] for k in batch]
    probe = np.array([0, 1, 2**64 - 1, 12345], dtype=np.uint64)
    rows, missing = index.lookup(probe)
    assert rows.tolist() == [ref.get(int(k), -1) for k in probe]
    assert missing == sum(int(k) not in ref for k in probe)
    assert len(index) == len(ref)


def test_index_grows_past_many_rebuilds() -> None:
    index = HashIndex()
    keys = np.random.default_rng(0).permutation(200_000).astype(np.uint64) * np.uint64(2**40 + 3)
    rows = np.concatenate([index.insert(chunk, keys) for chunk in np.array_split(keys, 50)])
    np.testing.assert_array_equal(rows, np.arange(len(keys)))
    found, missing = index.lookup(keys[::-1].copy())
    assert missing == 0
    np.testing.assert_array_equal(found, np.arange(len(keys))[::-1])


def test_store_sum_push_pull_and_growth() -> None:
    store = Store(TableSpec.create("t", width=3, dtype="int64"), capacity=4)
    rng = np.random.default_rng(1)
    ref: dict[int, np.ndarray] = {}
    for _ in range(30):
        keys = np.unique(rng.integers(0, 2**64 - 1, size=rng.integers(1, 200), dtype=np.uint64, endpoint=True))
        vals = rng.integers(-5, 5, size=(len(keys), 3))
        store.push(keys, vals)
        for k, v in zip(keys.tolist(), vals, strict=True):
            ref[k] = ref.get(k, 0) + v
    keys = np.array(sorted(ref), dtype=np.uint64)
    np.testing.assert_array_equal(store.pull(keys), np.array([ref[int(k)] for k in keys]))
    assert len(store) == len(ref)
    rk, rv = store.pull_range(0, 2**64)
    np.testing.assert_array_equal(rk, keys)
    np.testing.assert_array_equal(rv, store.pull(keys))
    lo, hi = int(keys[3]), int(keys[10])
    rk, _ = store.pull_range(lo, hi)
    np.testing.assert_array_equal(rk, keys[3:10])


def test_absent_keys_read_initial_values_without_insertion() -> None:
    spec = TableSpec.create("emb", width=4, dtype="float32", init=Normal(std=0.5, seed=3))
    store = Store(spec)
    keys = np.array([5, 9, 2**63], dtype=np.uint64)
    first = store.pull(keys)
    assert len(store) == 0
    np.testing.assert_array_equal(first, Normal(std=0.5, seed=3).values(keys, 4, np.dtype("float32")))
    store.push(keys[:1], np.ones((1, 4), dtype=np.float32))
    np.testing.assert_allclose(store.pull(keys)[0], first[0] + 1)
    np.testing.assert_array_equal(store.pull(keys)[1:], first[1:])


def test_random_init_is_a_function_of_seed_key_and_column() -> None:
    keys = np.arange(1000, dtype=np.uint64) * np.uint64(977)
    a = Normal(std=1.0, seed=1).values(keys, 8, np.dtype("float64"))
    b = Normal(std=1.0, seed=1).values(keys[::-1].copy(), 8, np.dtype("float64"))[::-1]
    np.testing.assert_array_equal(a, b)
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05
    c = Normal(std=1.0, seed=2).values(keys, 8, np.dtype("float64"))
    assert not np.allclose(a, c)
    u = Uniform(-1, 1, seed=0).values(keys, 8, np.dtype("float64"))
    assert u.min() >= -1 and u.max() < 1 and abs(u.mean()) < 0.05


def test_store_rejects_wrong_update_shape() -> None:
    store = Store(TableSpec.create("t", width=2))
    with pytest.raises(InvalidArgument, match="update of shape"):
        store.push(np.array([1], dtype=np.uint64), np.ones((1, 3), dtype=np.float32))
