"""The node's pure parts without sockets: the Outbox (requests in flight), Membership, Timers."""

from __future__ import annotations

import numpy as np

from paramserver.clock import Request
from paramserver.node import NodeInfo
from paramserver.node._membership import Membership
from paramserver.node._outbox import Delivery, Outbox, VerdictKind, is_ordered
from paramserver.node._timers import MAX_WAIT, Timers
from paramserver.placement import EvenSplit, KeyMap
from paramserver.protocol import Message, Op, Status


def _req(ts: int, peers: tuple[int, ...]) -> Request:
    return Request(ts, f"request {ts}", peers, default_timeout=5)


def _reply(ts: int, sender: int, status: Status = Status.OK) -> Message:
    return Message(Op.PUSH, sender=sender, ts=ts, response=True, status=status)


def _delivery(ordered: bool = False, due: float = float("inf")) -> Delivery:
    return Delivery([b"frame"], 0, due, ordered)


def test_a_reply_completes_only_the_part_awaited_and_then_is_ignored() -> None:
    box = Outbox()
    req = _req(1, (2, 3))
    box.open(req, (2, 3))
    box.sent(1, 2, None, _delivery())
    v = box.answer(_reply(1, 2))
    assert v.kind is VerdictKind.COMPLETE and v.flight is not None and v.flight.req is req
    assert (1, 2) not in box.deliveries
    req.part_done(2)
    assert box.answer(_reply(1, 2)).kind is VerdictKind.IGNORE  # a second answer to the same part
    assert box.answer(_reply(9, 2)).kind is VerdictKind.UNMATCHED  # no such request


def test_error_moved_and_resend_keys_answers_are_told_apart() -> None:
    box = Outbox()
    box.open(_req(1, (2, 3, 4)), (2, 3, 4))
    keep = _delivery()
    box.sent(1, 4, None, keep)
    assert box.answer(_reply(1, 2, Status.ERROR)).kind is VerdictKind.FAIL
    assert box.answer(_reply(1, 3, Status.MOVED)).kind is VerdictKind.MOVED
    v = box.answer(_reply(1, 4, Status.RESEND_KEYS))
    assert v.kind is VerdictKind.REPAIR and v.delivery is keep
    assert (1, 4) in box.deliveries  # kept: the repaired part must still be delivered


def test_ordered_deliveries_outlive_their_request_and_others_do_not() -> None:
    box = Outbox()
    box.open(_req(1, (2, 3)), (2, 3))
    box.sent(1, 2, None, _delivery(ordered=True))
    box.sent(1, 3, None, _delivery(ordered=False))
    box.close(1)
    assert list(box.deliveries) == [(1, 2)]
    assert box.get(1) is None
    box.sent(1, 3, None, _delivery(ordered=False))  # a part leaving after its request ended
    box.sent(1, 4, None, _delivery(ordered=True))
    assert sorted(box.deliveries) == [(1, 2), (1, 4)]
    assert box.answer(_reply(1, 2)).kind is VerdictKind.UNMATCHED
    assert sorted(box.deliveries) == [(1, 4)]


def test_peer_gone_returns_waiting_flights_in_issue_order_and_drops_their_deliveries() -> None:
    box = Outbox()
    for ts in (5, 3, 4):
        box.open(_req(ts, (2, 7)), (2, 7))
        box.sent(ts, 2, None, _delivery(ordered=True))
        box.sent(ts, 7, None, _delivery(ordered=True))
    box.open(_req(6, (7,)), (7,))
    waiting = box.peer_gone(2)
    assert [f.req.ts for f in waiting] == [3, 4, 5]
    assert sorted(box.deliveries) == [(3, 7), (4, 7), (5, 7)]


def test_a_part_is_claimed_for_rerouting_once_and_counts_hops() -> None:
    box = Outbox()
    f = box.open(_req(1, (2,)), (2,), reroute=lambda peer, msg: _req(2, ()))
    part = Message(Op.PUSH, table=0, arrays=[np.array([1], np.uint64)])
    box.sent(1, 2, part, _delivery(ordered=True))
    assert f.claim(2) and not f.claim(2)
    original, hops = box.start_reroute(f, 2)
    assert original is part and hops == 1 and (1, 2) not in box.deliveries
    assert box.start_reroute(f, 2)[1] == 2


def test_resends_are_due_once_per_period() -> None:
    box = Outbox()
    box.open(_req(1, (2, 3)), (2, 3))
    box.sent(1, 2, None, _delivery(due=10.0))
    box.sent(1, 3, None, _delivery(due=20.0))
    assert box.due(9.0, 5.0) == []
    assert [peer for peer, _ in box.due(10.0, 5.0)] == [2]
    assert box.due(12.0, 5.0) == []  # rescheduled to 15
    assert sorted(peer for peer, _ in box.due(20.0, 5.0)) == [2, 3]


def test_low_water_is_the_oldest_request_in_flight() -> None:
    box = Outbox()
    assert box.low_water() == 0
    for ts in (4, 2, 9):
        box.open(_req(ts, (1,)), (1,))
    assert box.low_water() == 2
    box.close(2)
    assert box.low_water() == 4
    assert sorted(r.ts for r in box.requests()) == [4, 9]


def test_only_pushes_and_ticks_of_a_channel_are_ordered() -> None:
    assert is_ordered(Message(Op.PUSH, seq=3)) and is_ordered(Message(Op.CLOCK, seq=1))
    assert not is_ordered(Message(Op.PUSH, seq=0)) and not is_ordered(Message(Op.PULL, seq=3))


def _map(epoch: int, servers: list[int]) -> KeyMap:
    return EvenSplit().assign(servers, epoch)


def test_membership_takes_whole_tables_and_moves_the_key_map_forward_only() -> None:
    m = Membership()
    a, b = NodeInfo(1, "server", "tcp://h:1"), NodeInfo(2, "worker", "tcp://h:2")
    change = m.update([a, b], _map(1, [1]))
    assert change.keymap_changed and not change.gone and m.keymap is not None and m.keymap.epoch == 1
    change = m.update([NodeInfo(1, "server", "tcp://h:9")], _map(1, [1]), {7})
    assert change.gone == {2, 7} and change.moved_links == ((1, "tcp://h:9"),)
    assert not m.adopt(_map(1, [1])) and m.adopt(_map(2, [1]))
    assert not m.update([], _map(1, [1]), complete=False).keymap_changed  # older: ignored
    assert m.keymap.epoch == 2


def test_a_delayed_node_table_never_replaces_a_newer_one() -> None:
    """A NODES broadcast held up on the network arrives after a newer one: the node keeps the
    newer table (a worker it names stays known); only a newer key map in it is taken. A
    restarted scheduler's tables start their versions again."""
    m = Membership()
    s1, w8 = NodeInfo(1, "server", "tcp://h:1"), NodeInfo(8, "worker", "tcp://h:8")
    m.update([s1, w8], _map(1, [1]), version=5)
    change = m.update([s1], _map(2, [1]), {8}, version=4)  # the older broadcast, late
    assert set(m.nodes) == {1, 8} and not change.gone and change.keymap_changed and m.keymap.epoch == 2
    assert m.update([s1, w8], version=5).gone == frozenset()  # the same table again (a resend)
    change = m.update([s1], version=1, restarted=True)
    assert change.gone == {8} and set(m.nodes) == {1} and m.version == 1
    m.update([s1, w8])  # unversioned (version 0): always taken
    assert set(m.nodes) == {1, 8}


def test_a_moved_answer_adds_servers_but_never_removes_or_changes_nodes() -> None:
    m = Membership()
    m.update([NodeInfo(1, "server", "tcp://h:1")])
    m.update([NodeInfo(1, "server", "tcp://other:1"), NodeInfo(3, "server", "tcp://h:3"),
              NodeInfo(4, "worker", "tcp://h:4")], complete=False)
    assert {n: i.address for n, i in m.nodes.items()} == {1: "tcp://h:1", 3: "tcp://h:3"}
    assert m.describe(3) == "server 3 (pid 0 at tcp://h:3)" and m.describe(8) == "node 8"
    assert m.gone_from_map(3) is False  # no key map yet: nothing is gone
    m.adopt(_map(1, [1]))
    assert m.gone_from_map(3) and not m.gone_from_map(1)


def test_timers_fire_in_order_and_periodic_ones_never_burst() -> None:
    t = Timers()
    fired: list[str] = []
    t.add(0.0, 1.0, lambda: fired.append("once"))
    t.add(0.0, 0.5, lambda: fired.append("tick"), interval=0.5)
    assert t.wait(0.0) == 0.5 and t.due(0.4) == []
    for fn in t.due(0.5):
        fn()
    assert fired == ["tick"]
    for fn in t.due(10.0):  # a stalled loop: the periodic timer runs once, not 19 times
        fn()
    assert fired == ["tick", "once", "tick"] and len(t) == 1
    assert t.wait(10.0) == 0.5 and Timers().wait(0.0) == MAX_WAIT


def test_batches_round_trip_and_malformed_envelopes_are_protocol_errors() -> None:
    import pytest

    from paramserver import ProtocolError
    from paramserver.node import _batch as batch

    msgs = [[b"\x9fone"], [b"\x9ftwo", b"keys", b"values"], [b"\x9f3"]]
    frames = batch.pack(msgs)
    assert batch.is_batch(frames) and not batch.is_batch(msgs[1]) and not batch.is_batch([])
    assert batch.unpack([memoryview(f) for f in frames]) == msgs
    head = frames[0]
    for bad in ([head], [head, *frames[1:-1]], [head[:-2], *frames[1:]], [b"\xc1PB\x00\x00"],
                [b"\xc1PB\x01\x00\x00\x00", b"x"]):
        with pytest.raises(ProtocolError):
            batch.unpack(bad)
    with pytest.raises(ValueError):
        batch.pack([])
