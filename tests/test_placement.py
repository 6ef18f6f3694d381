"""Key ranges, the key map and the even split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramserver import InvalidArgument, ProtocolError
from paramserver.placement import KEY_SPACE, Assignment, EvenSplit, KeyMap, KeyRange


def test_even_split_tiles_the_key_space() -> None:
    km = EvenSplit().assign([7, 3, 5], epoch=4)
    assert km.epoch == 4
    ranges = [(a.range.lo, a.range.hi, a.master) for a in km]
    third = KEY_SPACE // 3
    assert ranges == [(0, third, 3), (third, 2 * KEY_SPACE // 3, 5), (2 * KEY_SPACE // 3, KEY_SPACE, 7)]
    assert km.servers() == [3, 5, 7]
    assert km.master_of(0) == 3 and km.master_of(KEY_SPACE - 1) == 7


def test_replica_chains_follow_the_id_order() -> None:
    km = EvenSplit().assign([1, 2, 3], epoch=1, replicas=2)
    assert [(a.master, a.replicas) for a in km] == [(1, (2,)), (2, (3,)), (3, (1,))]
    with pytest.raises(InvalidArgument, match="replicas=4"):
        EvenSplit().assign([1, 2, 3], epoch=1, replicas=4)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=200), st.integers(1, 9))
def test_slice_assigns_every_key_to_its_master(raw: list[int], n: int) -> None:
    keys = np.unique(np.array(raw, dtype=np.uint64))
    km = EvenSplit().assign(list(range(1, n + 1)), epoch=1)
    parts = km.slice(keys)
    seen = 0
    for node, pieces in parts.items():
        for a, b in pieces:
            assert b > a
            for k in keys[a:b]:
                assert km.master_of(int(k)) == node
            seen += b - a
    assert seen == len(keys)


def test_slice_range_and_owns() -> None:
    km = EvenSplit().assign([1, 2], epoch=1)
    half = KEY_SPACE // 2
    assert km.slice_range(10, half + 10) == {1: [KeyRange(10, half)], 2: [KeyRange(half, half + 10)]}
    assert km.slice_range(0, 5) == {1: [KeyRange(0, 5)]}
    assert km.owns(1, 0, half) and not km.owns(1, 0, half + 1) and km.owns(2, half, KEY_SPACE)
    with pytest.raises(InvalidArgument):
        km.slice_range(5, 5)


def test_wire_round_trip_and_validation() -> None:
    km = EvenSplit().assign([4, 9], epoch=3, replicas=2)
    assert KeyMap.from_wire(km.to_wire()) == km
    bad = km.to_wire()
    bad["ranges"][0][1] = 5  # leaves a gap
    with pytest.raises(ProtocolError, match="tile"):
        KeyMap.from_wire(bad)
    with pytest.raises(ProtocolError):
        KeyMap.from_wire({"epoch": "x", "ranges": []})


def test_key_map_must_cover_everything() -> None:
    with pytest.raises(InvalidArgument, match="reach 2\\*\\*64"):
        KeyMap(1, [Assignment(KeyRange(0, 10), 1)])
    with pytest.raises(InvalidArgument):
        KeyRange(5, 5)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=100))
def test_spread_is_a_bijection(raw: list[int]) -> None:
    from paramserver import spread, unspread

    ids = np.array(raw, dtype=np.uint64)
    np.testing.assert_array_equal(unspread(spread(ids)), ids)
    np.testing.assert_array_equal(spread(unspread(ids)), ids)


def test_spread_balances_consecutive_ids_over_servers() -> None:
    from paramserver import spread

    km = EvenSplit().assign(list(range(8)), epoch=1)
    keys = np.sort(spread(np.arange(100_000)))
    counts = [sum(b - a for a, b in pieces) for pieces in km.slice(keys).values()]
    assert len(counts) == 8 and max(counts) / min(counts) < 1.05


def test_ring_balances_eight_servers_with_the_default_vnodes() -> None:
    from paramserver.placement import DEFAULT_VNODES, Ring

    km = Ring().assign(list(range(1, 9)), epoch=1)
    share: dict[int, int] = {}
    for a in km:
        share[a.master] = share.get(a.master, 0) + (a.range.hi - a.range.lo)
    assert sorted(share) == list(range(1, 9))
    assert max(abs(s / (KEY_SPACE / 8) - 1) for s in share.values()) < 0.10
    assert len(km) <= 8 * DEFAULT_VNODES + 1


def test_ring_moves_only_the_ranges_it_should() -> None:
    from paramserver import spread
    from paramserver.placement import Ring

    ring = Ring(64)
    keys = np.sort(spread(np.arange(200_000)))
    before = ring.assign([1, 2, 3, 4], epoch=1)
    grown = ring.assign([1, 2, 3, 4, 5], epoch=2)
    shrunk = ring.assign([1, 2, 4], epoch=3)

    def owners(km: KeyMap) -> np.ndarray:
        out = np.empty(len(keys), dtype=np.int64)
        for node, pieces in km.slice(keys).items():
            for a, b in pieces:
                out[a:b] = node
        return out

    b, g, s = owners(before), owners(grown), owners(shrunk)
    moved = b != g
    assert moved.any() and (g[moved] == 5).all()  # only to the new server
    assert 0.1 < moved.mean() < 0.3  # about a fifth of the keys
    moved = b != s
    assert (b[moved] == 3).all()  # only from the removed server
    np.testing.assert_array_equal(moved, b == 3)


def test_ring_replicas_are_the_next_distinct_servers() -> None:
    from paramserver.placement import Ring

    km = Ring(16).assign([1, 2, 3], epoch=1, replicas=3)
    for a in km:
        assert len(set((a.master, *a.replicas))) == 3
    assert KeyMap.from_wire(km.to_wire()) == km


def test_failover_and_migration_maps_are_exact() -> None:
    from paramserver.placement import Ring, copy_plan, extended, in_ranges

    old = EvenSplit().assign([1, 2, 3], epoch=1, replicas=2)
    promoted = old.without(2, epoch=2)
    assert [(a.master, a.replicas) for a in promoted] == [(1, ()), (3, ()), (3, (1,))]
    restored = promoted.restored(2, [1, 3], epoch=3)
    assert restored.replicas() == 2 and restored.servers() == [1, 3]
    # joining server 4 on the ring: only what it holds is copied, each piece once, from its old master
    ring = Ring(vnodes=16)
    before = ring.assign([1, 2, 3], epoch=1, replicas=2)
    after = ring.assign([1, 2, 3, 4], epoch=3, replicas=2)
    plan = copy_plan(before, after)
    mid = extended(before, after, epoch=2)
    probe = np.random.default_rng(0).integers(0, 2**64 - 1, size=20000, dtype=np.uint64, endpoint=True)
    for k in probe[:500].tolist():
        old_chain, new_chain, mid_chain = before.chain_of(k), after.chain_of(k), mid.chain_of(k)
        assert mid_chain[0] == old_chain[0]  # masters unchanged until the switch
        added = [n for n in new_chain if n not in old_chain]
        assert list(mid_chain[1:1 + len(added)]) == added  # new holders right after the master
        for target in added:
            assert any(lo <= k < hi for lo, hi in plan[old_chain[0]][target])
    assert np.array_equal(in_ranges(probe, [(0, 2**62), (2**63, 2**64)]),
                          (probe < np.uint64(2**62)) | (probe >= np.uint64(2**63)))
    with pytest.raises(InvalidArgument, match="no replica to promote"):
        EvenSplit().assign([1, 2], epoch=1).without(1, epoch=2)
    assert isinstance(restored, KeyMap)


def _reference_split(km: KeyMap, keys: np.ndarray) -> dict[int, list[int]]:
    """Brute force: each key's master by a walk over the ranges, positions in key order."""
    out: dict[int, list[int]] = {}
    for i, k in enumerate(keys.tolist()):
        master = next(a.master for a in km if k in a.range)
        out.setdefault(master, []).append(i)
    return out


@st.composite
def _maps_and_keys(draw: st.DrawFn) -> tuple[KeyMap, np.ndarray]:
    from paramserver.placement import Ring

    kind = draw(st.sampled_from(["even", "ring", "random"]))
    servers = draw(st.lists(st.integers(0, 20), min_size=1, max_size=5, unique=True))
    if kind == "even":
        km = EvenSplit().assign(servers, epoch=1)
    elif kind == "ring":
        km = Ring(draw(st.sampled_from([1, 4, 64]))).assign(servers, epoch=1)
    else:
        cuts = sorted(set(draw(st.lists(st.integers(1, KEY_SPACE - 1), max_size=80))))
        los = [0, *cuts]
        his = [*cuts, KEY_SPACE]
        km = KeyMap(1, [Assignment(KeyRange(lo, hi), draw(st.sampled_from(servers)))
                        for lo, hi in zip(los, his, strict=True)])
    edges = [e for a in km for e in (a.range.lo, a.range.lo - 1, a.range.hi - 1) if 0 <= e < KEY_SPACE]
    raw = draw(st.lists(st.one_of(st.integers(0, KEY_SPACE - 1), st.integers(2**63, KEY_SPACE - 1),
                                  st.sampled_from(edges)), max_size=300))
    return km, np.unique(np.array(raw, dtype=np.uint64))


@given(_maps_and_keys(), st.integers(1, 3))
def test_split_matches_a_brute_force_reference(case: tuple[KeyMap, np.ndarray], width: int) -> None:
    km, keys = case
    values = np.arange(len(keys) * width, dtype=np.float32).reshape(-1, width)
    ids = np.arange(len(keys), dtype=np.int64)
    parts = km.split(keys, values, ids)
    expect = _reference_split(km, keys)
    assert list(parts) == list(expect)  # servers in the order of their first key
    for server, part in parts.items():
        want = np.array(expect[server], dtype=np.int64)
        assert part.server == server and len(part) == len(want)
        got = np.arange(len(keys))[part.pos]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(part.keys, keys[want])
        np.testing.assert_array_equal(part.arrays[0], values[want])
        np.testing.assert_array_equal(part.arrays[1], want)
        contiguous = bool(np.all(np.diff(want) == 1))
        assert isinstance(part.pos, slice) == contiguous
        if contiguous:  # views of the callers' arrays, no copy
            assert np.shares_memory(part.keys, keys) and np.shares_memory(part.arrays[0], values)
        else:
            assert part.pos.dtype == np.int64
            assert not np.shares_memory(part.keys, keys)


def test_split_views_and_gathers_exactly() -> None:
    km = KeyMap(1, [Assignment(KeyRange(0, 10), 1), Assignment(KeyRange(10, 20), 2),
                    Assignment(KeyRange(20, 30), 1), Assignment(KeyRange(30, 2**63), 3),
                    Assignment(KeyRange(2**63, KEY_SPACE), 3)])
    keys = np.array([1, 2, 11, 21, 25, 31, 2**63, KEY_SPACE - 1], dtype=np.uint64)
    v = np.arange(16.0).reshape(8, 2)
    parts = km.split(keys, v)
    assert list(parts) == [1, 2, 3]
    np.testing.assert_array_equal(parts[1].pos, [0, 1, 3, 4])
    np.testing.assert_array_equal(parts[1].arrays[0], v[[0, 1, 3, 4]])
    assert parts[2].pos == slice(2, 3) and parts[3].pos == slice(5, 8)  # two ranges of 3, one run
    assert np.shares_memory(parts[3].keys, keys) and np.shares_memory(parts[3].arrays[0], v)
    # keys of 2 absent: the runs of 1 join into one view
    joined = km.split(np.array([1, 21, 40], dtype=np.uint64))
    assert joined[1].pos == slice(0, 2) and joined[3].pos == slice(2, 3)
    single = EvenSplit().assign([4], epoch=1).split(keys, v)
    assert single[4].pos == slice(0, 8) and single[4].keys is keys and single[4].arrays[0] is v
    assert km.split(np.empty(0, dtype=np.uint64), np.empty((0, 2))) == {}


def test_split_rejects_malformed_input() -> None:
    km = EvenSplit().assign([1, 2], epoch=1)
    with pytest.raises(InvalidArgument, match="uint64"):
        km.split(np.array([1, 2], dtype=np.int64))
    with pytest.raises(InvalidArgument, match="does not match"):
        km.split(np.array([1, 2], dtype=np.uint64), np.zeros(3))
