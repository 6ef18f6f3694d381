"""The node runtime over the in-memory transport: replies, errors, malformed input, failures."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

import paramserver as ps
from paramserver import Config
from paramserver.node import Node, NodeInfo
from paramserver.protocol import Message, Op, encode
from paramserver.transport import MemoryHub, MemoryTransport


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    hub = MemoryHub()
    a, b = Node("worker", Config(timeout=5.0), MemoryTransport(hub)), Node("server", Config(), MemoryTransport(hub))
    a.id, b.id = 1, 2
    addr_a, addr_b = a.start(""), b.start("")
    nodes = [NodeInfo(1, "worker", addr_a), NodeInfo(2, "server", addr_b)]
    a.set_nodes(nodes, None, set())
    b.set_nodes(nodes, None, set())
    yield a, b
    a.close()
    b.close()


def test_request_reply_with_arrays(pair: tuple[Node, Node]) -> None:
    a, b = pair
    b.on(Op.PULL, lambda m: b.reply(m, arrays=[m.arrays[0] * 2]))
    reply = a.call(2, Message(Op.PULL, arrays=[np.arange(5, dtype=np.int64)]), "double")
    np.testing.assert_array_equal(reply.arrays[0], [0, 2, 4, 6, 8])
    assert a.counters["messages_sent"] == 1 and b.counters["messages_received"] == 1


def test_handler_exception_becomes_remote_error_and_node_serves_on(pair: tuple[Node, Node]) -> None:
    a, b = pair

    def boom(m: Message) -> None:
        raise ZeroDivisionError("no dividing here")

    b.on(Op.PUSH, boom)
    with pytest.raises(ps.RemoteError, match="ZeroDivisionError: no dividing here") as info:
        a.call(2, Message(Op.PUSH), "push")
    assert "in boom" in info.value.remote_traceback
    assert a.call(2, Message(Op.PING), "ping").response


def test_unhandled_op_is_a_protocol_error(pair: tuple[Node, Node]) -> None:
    a, _ = pair
    with pytest.raises(ps.ProtocolError, match="a server does not handle BARRIER requests"):
        a.call(2, Message(Op.BARRIER), "barrier")


def test_malformed_message_from_a_known_sender_gets_an_error_reply(pair: tuple[Node, Node]) -> None:
    a, b = pair
    big = np.arange(1 << 13, dtype=np.uint64)  # 64 KiB: each travels in a frame of its own
    frames = encode(Message(Op.PULL, sender=1, ts=77, arrays=[big, big]))  # one frame will be missing
    req = ps.Request(77, "malformed pull", [2], default_timeout=5)
    a.outbox.open(req, (2,))
    a.ensure_link(2)
    a.transport.send(2, [frames[0], frames[1]])
    with pytest.raises(ps.ProtocolError, match="describes 2 arrays but 1 frames follow"):
        req.wait()
    assert b.counters["messages_malformed"] == 1
    assert a.call(2, Message(Op.PING), "ping").response  # and b serves on


def test_peer_failure_fails_only_the_requests_awaiting_it(pair: tuple[Node, Node]) -> None:
    a, b = pair
    b.on(Op.PUSH, lambda m: None)  # never answers
    req = a.request({2: Message(Op.PUSH)}, "push to a silent server")
    other = a.request({1: Message(Op.PING)}, "ping myself")
    other.wait(5)
    assert not req.done()
    a.peer_failed(2, ps.NodeUnavailable("server 2 died"))
    with pytest.raises(ps.NodeUnavailable, match="server 2 died"):
        req.wait(5)


def test_timers_and_close(pair: tuple[Node, Node]) -> None:
    a, b = pair
    ticks: list[int] = []
    fired = threading.Event()
    a.call_every(0.01, lambda: (ticks.append(1), len(ticks) >= 3 and fired.set()))  # type: ignore[func-returns-value]
    assert fired.wait(5)
    b.on(Op.PUSH, lambda m: None)
    req = a.request({2: Message(Op.PUSH)}, "push")
    a.close()
    with pytest.raises(ps.ClosedError):
        req.wait(5)
    with pytest.raises(ps.ClosedError):
        a.request({2: Message(Op.PING)}, "after close").wait(5)


def test_requests_handled_in_one_step_are_answered_in_one_batch_each_exactly_once(
        pair: tuple[Node, Node]) -> None:
    from paramserver.node import _batch as batch

    a, b = pair
    got: list[int] = []
    gate = threading.Event()

    def slow_double(m: Message) -> None:
        gate.wait(5)  # the first request holds the loop while the others queue up behind it
        b.reply(m, arrays=[m.arrays[0] * 2])

    b.on(Op.PULL, slow_double)
    seen = {"batches": 0, "messages": 0}
    orig = batch.unpack

    def counting(frames: list[object]) -> list[list[object]]:
        out = orig(frames)
        seen["batches"] += 1
        seen["messages"] += len(out)
        return out

    batch.unpack = counting  # type: ignore[assignment]
    try:
        reqs = [a.request({2: Message(Op.PULL, arrays=[np.array([i], np.int64)])}, f"pull {i}",
                          on_part=lambda m: got.append(int(m.arrays[0][0])))
                for i in range(20)]
        gate.set()
        for r in reqs:
            r.wait(5)
    finally:
        batch.unpack = orig  # type: ignore[assignment]
    assert sorted(got) == [2 * i for i in range(20)]
    assert seen["batches"] >= 1 and seen["messages"] >= 2  # the queued ones came back together
    assert b.counters["messages_sent"] == 20 and a.counters["messages_received"] == 20


def test_coalescing_requests_wait_for_an_answer_keep_their_order_and_all_complete(
        pair: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch) -> None:
    from paramserver.node import _batch as batch
    from paramserver.node import _links

    monkeypatch.setattr(_links, "HOLD_S", 60.0)  # only the caller's wait releases them here
    a, b = pair
    order: list[int] = []
    gate = threading.Event()

    def record(m: Message) -> None:
        gate.wait(5)  # the first request is answered only once the others were issued
        order.append(m.clock)
        b.reply(m)

    b.on(Op.PUSH, record)
    incoming = {"batches": 0}
    orig = batch.unpack

    def counting(frames: list[object]) -> list[list[object]]:
        incoming["batches"] += 1
        return orig(frames)

    batch.unpack = counting  # type: ignore[assignment]
    try:
        reqs = []
        for i in range(30):
            req = a.open((2,), f"push {i}")
            assert a.send_part(req, 2, Message(Op.PUSH, clock=i), coalesce=True)
            reqs.append(req)
        gate.set()
        for r in reqs:
            r.wait(5)  # waiting releases what is held at once
    finally:
        batch.unpack = orig  # type: ignore[assignment]
    assert order == list(range(30))  # in the order they were issued, each once
    assert incoming["batches"] >= 1  # the held ones left together
    assert a.counters["messages_sent"] == 30 and b.counters["messages_received"] == 30


def test_a_callback_that_waits_on_the_leading_thread_is_served_there(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # b answers the pull in a later step of its loop than the ping, so the two answers
    # never travel in one batch
    b.on(Op.PULL, lambda m: b.call_later(0.2, lambda: b.reply(m, arrays=[m.arrays[0] + 1])))
    outer = a.request({2: Message(Op.PING)}, "outer ping")
    inner = a.request({2: Message(Op.PULL, arrays=[np.array([10], np.int64)])}, "inner pull")
    seen: list[int] = []

    def waits(r: ps.Request) -> None:  # runs on this thread, which leads the loop below
        inner.wait(5)
        seen.append(1)

    outer.add_done_callback(waits)
    outer.wait(5)
    inner.wait(5)
    assert seen == [1] and inner.exception(0) is None
    assert a.call(2, Message(Op.PING), "ping").response  # the loop goes on
