"""Per-key duplicate records of a server's table (TableSync.applied): a push part sent again
applies only the keys not applied yet; records go with migrations and below low-water marks."""

from __future__ import annotations

import numpy as np
import pytest

from paramserver import ProtocolError
from paramserver.server._sync import TableSync


def keys(*ks: int) -> np.ndarray:
    return np.array(ks, dtype=np.uint64)


def test_a_part_sent_again_applies_only_the_keys_not_applied_yet() -> None:
    sync = TableSync()
    assert sync.fresh(7, 100, keys(1, 2, 3), again=True) is None  # nothing recorded: all fresh
    sync.note(7, 100, keys(1, 5))  # one piece of request 100 came through a chain
    sync.note(7, 100, keys(9))  # and another one by another chain
    assert sync.fresh(7, 100, keys(2, 3), again=False) is None  # first-send pieces are disjoint: no search
    np.testing.assert_array_equal(sync.fresh(7, 100, keys(1, 2, 5, 9, 11), again=True),
                                  [False, True, False, False, True])
    assert sync.fresh(7, 101, keys(1), again=True) is None  # another request of the same worker
    assert sync.fresh(8, 100, keys(1), again=True) is None  # the same id from another worker
    np.testing.assert_array_equal(sync.keys_applied(7, 100), keys(1, 5, 9))


def test_a_late_first_send_is_compared_with_the_parts_sent_again() -> None:
    """A master died after forwarding: the worker's resent part reached the new master
    first, the dead master's forward of the first send arrives after it."""
    sync = TableSync()
    sync.note(7, 100, keys(2, 4, 6), again=True)
    np.testing.assert_array_equal(sync.fresh(7, 100, keys(4, 8), again=False), [False, True])


def test_records_below_the_low_water_mark_are_dropped() -> None:
    sync = TableSync()
    for rid in (10, 11, 12):
        sync.note(3, rid, keys(rid))
    sync.note(4, 5, keys(1))
    sync.note(3, 13, keys(13), low_water=12)  # worker 3 finished everything below 12
    assert sorted(sync.applied[3]) == [12, 13] and sorted(sync.applied[4]) == [5]
    sync.note(3, 11, keys(11), low_water=11)  # a late copy below the mark is not recorded
    assert sorted(sync.applied[3]) == [12, 13] and sync.low_water[3] == 12


def test_records_travel_with_a_migration_restricted_to_its_ranges() -> None:
    src = TableSync()
    src.note(1, 20, keys(5, 50, 500))
    src.note(2, 21, keys(60))
    src.note(2, 22, keys(900))
    arrays = src.applied_in([(0, 10), (40, 100)])
    np.testing.assert_array_equal(arrays[0], [1, 2])
    np.testing.assert_array_equal(arrays[1], [20, 21])
    np.testing.assert_array_equal(arrays[2], [2, 1])
    np.testing.assert_array_equal(arrays[3], keys(5, 50, 60))
    dst = TableSync()
    dst.note(1, 20, keys(7))
    dst.load_applied(arrays)
    np.testing.assert_array_equal(dst.keys_applied(1, 20), keys(5, 7, 50))
    np.testing.assert_array_equal(dst.keys_applied(2, 21), keys(60))
    np.testing.assert_array_equal(dst.fresh(2, 21, keys(60, 61), again=False), [False, True])
    assert 22 not in dst.applied[2]


def test_malformed_migrated_records_raise_protocol_errors() -> None:
    sync = TableSync()
    ints = np.array([1], dtype=np.int64)
    with pytest.raises(ProtocolError, match="counts do not match"):
        sync.load_applied([ints, ints, np.array([2], dtype=np.int64), keys(1)])
    with pytest.raises(ProtocolError, match="int64 workers"):
        sync.load_applied([ints.astype(np.float64), ints, ints, keys(1)])
    assert sync.applied == {}


def test_pushes_are_recorded_on_master_and_replica_and_one_outside_a_channel_is_not() -> None:
    from paramserver.placement import positions
    from paramserver.protocol import Message, Op
    from paramserver.testing import InProcessCluster

    with InProcessCluster(servers=2, replicas=2) as c, c.connect() as w:
        t = w.table("w", width=1, dtype="float32")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)
        t.push(keys, np.array([3, 4], dtype=np.float32)).wait(5)
        for s in c.servers:  # both servers hold both keys (master of one, replica of the other)
            np.testing.assert_array_equal(s.stores[t.id].pull(keys).ravel(), [3, 4])
            (worker, records), = s.sync[t.id].applied.items()
            (rid,) = records  # one push: its own key and the one replicated here
            assert worker == w.id
            np.testing.assert_array_equal(s.sync[t.id].keys_applied(worker, rid), keys)
        node = w._node
        assert node.keymap is not None
        parts = {server: Message(Op.PUSH, table=t.id, arrays=[keys[positions(p)], np.ones((len(positions(p)), 1),
                                                                                             np.float32)])
                 for server, p in node.keymap.slice(keys).items()}
        node.request(parts, "a push outside any channel").wait(5)  # no sequence number
        for s in c.servers:
            np.testing.assert_array_equal(s.stores[t.id].pull(keys).ravel(), [4, 5])
            assert sum(len(s.sync[t.id].keys_applied(w.id, r)) for r in s.sync[t.id].applied[w.id]) == 2
