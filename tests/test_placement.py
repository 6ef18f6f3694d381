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
