"""The worker's Session over the in-memory transport: sequence numbers, low-water marks,
dependencies, rerouting before a part leaves, closed and aborted sessions."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

import paramserver as ps
from paramserver import Config
from paramserver.clock import Request
from paramserver.node import Node, NodeInfo
from paramserver.placement import EvenSplit
from paramserver.protocol import Message, Op
from paramserver.transport import MemoryHub, MemoryTransport
from paramserver.worker._session import Session

World = tuple[Session, Node, list[Message], threading.Event]


@pytest.fixture
def world() -> Iterator[World]:
    """A worker session (node 1) and a server node (2) that records what reaches it and
    answers once ``gate`` is set."""
    hub = MemoryHub()
    a, b = Node("worker", Config(timeout=5.0), MemoryTransport(hub)), Node("server", Config(), MemoryTransport(hub))
    a.id, b.id = 1, 2
    addr_a, addr_b = a.start(""), b.start("")
    nodes = [NodeInfo(1, "worker", addr_a), NodeInfo(2, "server", addr_b)]
    keymap = EvenSplit().assign([2], 1)
    a.set_nodes(nodes, keymap, set())
    b.set_nodes(nodes, keymap, set())
    seen: list[Message] = []
    gate = threading.Event()
    gate.set()

    def record(m: Message) -> None:
        gate.wait(5)
        seen.append(m)
        b.reply(m)

    for op in (Op.PUSH, Op.PULL, Op.CLOCK):
        b.on(op, record)
    yield Session(a), b, seen, gate
    a.close()
    b.close()


def _push(table: int = 0) -> dict[int, Message]:
    return {2: Message(Op.PUSH, table=table, epoch=1, arrays=[np.array([1], np.uint64)])}


def test_ordered_parts_are_numbered_per_channel_and_pulls_carry_the_last_number(world: World) -> None:
    s, _, seen, _ = world
    for table in (0, 0, 1, 0):
        s.request(_push(table), "push", table=table, ordered=True).wait()
    s.request({2: Message(Op.PULL, table=0, epoch=1, arrays=[np.array([1], np.uint64)])}, "pull", table=0).wait()
    assert [(m.table, m.seq) for m in seen] == [(0, 1), (0, 2), (1, 1), (0, 3), (0, 3)]
    assert s.last_seqs(2) == [[0, 3], [1, 1]] and s.last_seqs(7) == []


def test_a_push_carries_the_oldest_request_in_flight_as_its_low_water_mark(world: World) -> None:
    s, _, seen, gate = world
    gate.clear()  # the server holds its answers
    first = s.request(_push(), "first push", table=0, ordered=True)
    second = s.request(_push(), "second push", table=0, ordered=True)
    gate.set()
    first.wait()
    second.wait()
    assert [m.body["lw"] for m in seen] == [first.ts, first.ts]
    third = s.request(_push(), "third push", table=0, ordered=True)
    third.wait()
    assert seen[-1].body["lw"] == third.ts  # the earlier ones finished


def test_a_request_leaves_after_its_dependencies_and_fails_with_theirs(world: World) -> None:
    s, _, seen, _ = world
    gate_req = Request(10_000, "local gate", [99], default_timeout=5)
    parts = _push()
    req = s.open(parts, "dependent push")
    s.launch(req, parts, table=0, ordered=True, after=[gate_req])
    assert seen == [] and not req.sent  # held back, nothing numbered
    gate_req.part_done(99)
    req.wait()
    assert [m.seq for m in seen] == [1]

    failed = Request(10_001, "failed dependency", [99], default_timeout=5)
    failed.fail(ps.NodeUnavailable("gone"))
    parts = _push()
    req = s.open(parts, "after a failure")
    s.launch(req, parts, table=0, ordered=True, after=[failed])
    with pytest.raises(ps.NodeUnavailable, match="gone"):
        req.wait()
    assert s.last_seqs(2) == [[0, 1]]  # the failed one took no number


def test_a_part_sliced_under_an_older_map_is_rerouted_before_it_takes_a_number(world: World) -> None:
    s, _, seen, _ = world
    s.node.adopt_keymap(EvenSplit().assign([2], 2))  # the part below was sliced in epoch 1
    sent_on: list[Message] = []

    def reroute(peer: int, msg: Message) -> Request:
        sent_on.append(msg)
        child = _push()
        child[2].epoch = 2
        return s.request(child, "sent on", table=0, ordered=True)

    req = s.request(_push(), "stale push", table=0, ordered=True, reroute=reroute)
    req.wait()
    assert len(sent_on) == 1 and sent_on[0].seq == 0  # rerouted as it was: no number taken
    assert [(m.epoch, m.seq) for m in seen] == [(2, 1)]  # the channel has no gap


def test_resolve_keeps_unfinished_requests_and_refuses_other_things(world: World) -> None:
    s, _, _, gate = world
    gate.clear()
    pending = s.request(_push(), "held", table=0, ordered=True)
    done = Request(5, "done", [], default_timeout=1)
    assert s.resolve(None) == []
    assert s.resolve([pending, pending.ts, done, 123456]) == [pending, pending, done]
    with pytest.raises(ps.InvalidArgument, match="deps must be requests or timestamps"):
        s.resolve(["nope"])
    gate.set()
    pending.wait()


def test_a_closed_or_aborted_session_refuses_requests(world: World) -> None:
    s, _, _, _ = world
    s.closed = True
    with pytest.raises(ps.ClosedError, match="the worker is closed"):
        s.request(_push(), "push", table=0, ordered=True)
    s.closed = False
    s.node.abort(ps.JobAborted("the job ended: test", 0))
    with pytest.raises(ps.JobAborted, match="the job ended: test"):
        s.keymap()


def test_a_part_that_cannot_be_encoded_gives_its_number_back(world: World) -> None:
    s, _, seen, _ = world
    bad = _push()
    bad[2].clock = 2**63  # outside the header's range: encoding refuses it
    with pytest.raises(ps.ProtocolError, match="clock"):
        s.request(bad, "bad push", table=0, ordered=True).wait()
    s.request(_push(), "good push", table=0, ordered=True).wait()
    assert [m.seq for m in seen] == [1]  # no gap in the channel
