"""The node runtime: one per node, shared by every role.

A :class:`Node` owns a transport and one receive thread. The thread decodes each incoming
message and either completes a pending :class:`Request` (a response) or calls the handler
registered for the message's op (a request); it also runs timers (heartbeats). A handler
that raises is answered with an error reply carrying the traceback, and the node keeps
serving; a malformed message is logged and, where its header names a sender, answered
with a ``ProtocolError`` reply.

The runtime also keeps the node table and the cached key map, both replaced as a whole
when the scheduler broadcasts a change (``Op.NODES``), registers with the scheduler, sends
heartbeats, and counts messages and bytes per table and direction.

Thread-safety: :meth:`Node.send`, :meth:`Node.request`, :meth:`Node.call` and the
accessors may be used from any thread. Handlers, response callbacks and timers all run on
the receive thread, one at a time, so role code they touch needs no lock of its own unless
user threads touch it too.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._config import Config
from .._errors import (
    ClosedError,
    ConnectError,
    JobAborted,
    KeyRangeError,
    NodeUnavailable,
    ProtocolError,
    PSError,
    RequestTimeout,
)
from ..clock import Request
from ..placement import KeyMap
from ..protocol import Codec, KeysMissing, Message, Op, Status, codec, decode, encode, get, value_indices
from ..protocol._codec import decode_header
from ..transport import FaultyTransport, Transport, ZmqTransport
from ._errors_wire import error_body, error_from_body
from ._info import SCHEDULER_ID, NodeInfo

__all__ = ["Node"]

log = logging.getLogger("paramserver.node")

Handler = Callable[[Message], None]
PartCallback = Callable[[Message], None]
#: ``reroute(peer, msg)``: send the part ``msg`` meant for ``peer`` to the keys' owners under
#: the current key map, as a new request whose completion completes that part.
Reroute = Callable[[int, Message], Request]

#: A part may be sent on to new owners this many times before its request fails.
MAX_REROUTES = 64


@dataclass
class _Pending:
    """A request in flight, with what it takes to send a part elsewhere.

    Invariant: every ``_deliveries`` key of this request is ``(req.ts, peer)`` with ``peer``
    in ``peers`` (reroutes send new requests, with their own timestamps). Mutable fields
    are read and written under the node lock.
    """

    req: Request
    on_part: PartCallback | None
    reroute: Reroute | None = None
    #: the peers the request has a part for (fixed at creation)
    peers: tuple[int, ...] = ()
    #: peer -> the part as it left (sequence number stamped, before filters)
    sent: dict[int, Message] = dataclasses.field(default_factory=dict)
    hops: int = 0
    #: peers whose part was already sent on (a "moved" answer and a death must not both do it)
    rerouted: set[int] = dataclasses.field(default_factory=set)

    def claim(self, peer: int) -> bool:
        """Mark ``peer``'s part as being sent on; False if it already was (under the node lock)."""
        if peer in self.rerouted:
            return False
        self.rerouted.add(peer)
        return True


@dataclass
class _Delivery:
    """One sent part that may have to travel again: resent after a timeout, or repaired
    (re-encoded with its keys) after a key-cache miss. An ordered part (a push or clock
    tick with a sequence number) is kept until its receiver answers, even if its request
    has ended meanwhile: a missing sequence number would stall the channel for good."""

    frames: list[Any]
    table: int
    due: float  # next resend time; inf when resends are off
    ordered: bool
    original: Message | None = None  # before filters, for repairs
    codecs: tuple[Codec, ...] = ()


@dataclass
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None]
    interval: float  # 0 for one-shot

    def __lt__(self, other: _Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class Node:
    """The runtime of one node. See the module docstring.

    Parameters
    ----------
    role:
        ``"scheduler"``, ``"server"``, ``"worker"`` or ``"client"``.
    config:
        The settings in effect (timeouts, heartbeats, fault injection).
    transport:
        Defaults to a new :class:`ZmqTransport`.
    """

    def __init__(self, role: str, config: Config, transport: Transport | None = None) -> None:
        self.role = role
        self.config = config
        self.transport = transport if transport is not None else ZmqTransport()
        self.id = SCHEDULER_ID if role == "scheduler" else -1
        #: The scheduler's address (set by :meth:`register`).
        self.scheduler_address = ""
        self.keymap: KeyMap | None = None
        self._handlers: dict[Op, Handler] = {
            Op.PING: lambda m: self.reply(m),
            Op.NODES: self._on_nodes,
            Op.SHUTDOWN: self._on_shutdown,
        }
        self._nodes: dict[int, NodeInfo] = {}
        self._connected: set[int] = set()
        self._lock = threading.RLock()
        self._pending: dict[int, _Pending] = {}
        self._ts = itertools.count(1)
        self._timers: list[_Timer] = []
        self._timer_seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._running = False
        self._aborted: PSError | None = None
        self._scheduler_seen = time.monotonic()
        if config.faults:
            self.transport = FaultyTransport(
                self.transport, drop=config.drop_msg / 100, dup=config.dup_msg / 100,
                delay=config.delay_msg / 100, delay_s=config.delay_ms / 1000, affects=_is_data,
                seed=None if config.fault_seed < 0 else config.fault_seed)
        self._resend_after = config.resend_after()
        self._decoders: dict[str, Codec] = {}
        self._encoders: dict[str, Codec] = {}

        #: (table, "sent"|"received", filter) -> [bytes before, bytes after] the filter.
        self.filter_bytes: defaultdict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
        # (ts, peer) -> what it takes to deliver that part again (resends, key-cache repairs)
        self._deliveries: dict[tuple[int, int], _Delivery] = {}
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.table_bytes: defaultdict[tuple[int, str], int] = defaultdict(int)
        #: Called on the receive thread after the node table or key map changed.
        self.on_nodes_changed: list[Callable[[set[int]], None]] = []
        #: Called on the receive thread when the job ends (scheduler lost or shutdown).
        self.on_abort: list[Callable[[PSError], None]] = []
        #: Called on the receive thread with responses no pending request awaits.
        self.on_unmatched_response: Callable[[Message], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return self.transport.address

    def start(self, host: str, port: int = 0) -> str:
        """Bind the transport and start the receive thread; return the bound address."""
        address = self.transport.bind(host, port)
        self._running = True
        if self._resend_after:
            self.call_every(min(self._resend_after / 4, 0.25), self._resend_due)
        self._thread = threading.Thread(
            target=self._loop, name=f"paramserver-{self.role}-recv", daemon=True
        )
        self._thread.start()
        return address

    def close(self, linger: float = 1.0) -> None:
        """Stop the receive thread, fail what is pending with :class:`ClosedError`, close."""
        self._running = False
        self.transport.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._fail_all(ClosedError(f"{self.role} {self.id} was closed"))
        self.transport.close(linger)

    @property
    def aborted(self) -> PSError | None:
        """The error that ended the job for this node, if it has ended."""
        return self._aborted

    def abort(self, exc: PSError) -> None:
        """Mark the job over: fail every pending request and every future one with ``exc``."""
        with self._lock:
            if self._aborted is not None:
                return
            self._aborted = exc
        self._fail_all(exc)
        for fn in list(self.on_abort):
            try:
                fn(exc)
            except Exception:
                log.exception("abort hook failed")

    # ------------------------------------------------------------------ node table
    def on(self, op: Op, handler: Handler) -> None:
        """Register the handler for requests of ``op`` (replaces any previous one)."""
        self._handlers[op] = handler

    def nodes(self) -> dict[int, NodeInfo]:
        """A copy of the node table."""
        with self._lock:
            return dict(self._nodes)

    def node_info(self, node: int) -> NodeInfo | None:
        with self._lock:
            return self._nodes.get(node)

    def describe_peer(self, node: int) -> str:
        info = self.node_info(node)
        if info is not None:
            return str(info)
        if node == SCHEDULER_ID:
            return f"the scheduler at {self.scheduler_address or self.address}"
        return f"node {node}"

    def set_nodes(self, nodes: list[NodeInfo], keymap: KeyMap | None, dead: set[int]) -> None:
        """Replace the node table (and key map, if given); fail requests awaiting ``dead``."""
        with self._lock:
            old = self._nodes
            self._nodes = {n.id: n for n in nodes}
            if keymap is not None and (self.keymap is None or keymap.epoch >= self.keymap.epoch):
                self.keymap = keymap
            for nid, info in self._nodes.items():
                prev = old.get(nid)
                if prev is not None and prev.address != info.address and nid in self._connected:
                    self.transport.connect(nid, info.address)
            gone = (set(old) - set(self._nodes)) | dead
        for nid in gone:
            self.peer_failed(nid, NodeUnavailable(f"{old.get(nid) or f'node {nid}'} left the cluster or died"))
        for fn in list(self.on_nodes_changed):
            fn(gone)

    def learn_nodes(self, nodes: list[NodeInfo]) -> None:
        """Add the nodes of ``nodes`` that the node table lacks (a server's "moved" answer may
        name a server that joined before the scheduler's broadcast reached this node)."""
        with self._lock:
            for info in nodes:
                if info.role == "server":
                    self._nodes.setdefault(info.id, info)

    def adopt_keymap(self, keymap: KeyMap) -> bool:
        """Use ``keymap`` if it is newer than the cached one; True if it was adopted."""
        with self._lock:
            if self.keymap is not None and keymap.epoch <= self.keymap.epoch:
                return False
            self.keymap = keymap
            return True

    def peer_failed(self, node: int, exc: PSError) -> None:
        """Fail every pending request that awaits a part from ``node``; drop the link."""
        with self._lock:
            waiting = [p for p in self._pending.values() if p.req.awaits(node)]
            for key in [k for k in self._deliveries if k[1] == node]:
                del self._deliveries[key]
            for dec in self._decoders.values():
                dec.forget(node)
            if node in self._connected and node != SCHEDULER_ID:
                self._connected.discard(node)
                self.transport.disconnect(node)
        gone = self._gone_from_map(node)  # rerouting below never changes the key map
        for p in sorted(waiting, key=lambda p: p.req.ts):  # in issue order: pushes keep their order
            if p.reroute is not None and gone:
                with self._lock:
                    left = node in p.sent and p.claim(node)
                if left:
                    self._reroute(p, node, exc)
                # else: not sent yet; it goes to the new owners when it leaves
            else:
                p.req.fail(exc)

    def _gone_from_map(self, node: int) -> bool:
        keymap = self.keymap
        return keymap is not None and node not in keymap.servers()

    # ------------------------------------------------------------------ sending
    def connect(self, node: int, address: str) -> None:
        """Open the link to ``node`` at ``address`` (used before the node table knows it)."""
        with self._lock:
            self.transport.connect(node, address)
            self._connected.add(node)

    def _ensure_link(self, node: int) -> None:
        if node in self._connected:
            return
        with self._lock:
            if node in self._connected:
                return
            info = self._nodes.get(node)
            if info is None:
                raise NodeUnavailable(f"node {node} is not in the node table (dead or never joined)")
            self.transport.connect(node, info.address)
            self._connected.add(node)

    def send(self, node: int, msg: Message) -> int:
        """Send ``msg`` to ``node`` (stamping the sender); return the bytes sent.

        Raises
        ------
        NodeUnavailable
            ``node`` is unknown or its link is closed.
        ProtocolError
            The message cannot be encoded.
        """
        msg.sender = self.id
        nbytes = self._send_frames(node, self._frames(node, msg), msg.table)
        if self.config.verbose:
            log.debug("%s %d -> %d: %s", self.role, self.id, node, msg.describe())
        return nbytes

    def _frames(self, peer: int, msg: Message) -> list[Any]:
        """Apply the message's filters (counting bytes before and after each), then encode."""
        if msg.codecs:
            if not msg.values_at:
                msg.values_at = value_indices(msg)
            for c in sorted(msg.codecs, key=lambda c: c.rank):
                out = c.encode(peer, msg)
                if out is not msg:
                    self._count_filter(msg.table, "sent", c.wire_name, msg.nbytes(), out.nbytes())
                    msg = out
        return encode(msg)

    def _count_filter(self, table: int, direction: str, name: str, before: int, after: int) -> None:
        with self._lock:
            entry = self.filter_bytes[(table, direction, name)]
            entry[0] += before
            entry[1] += after

    def encoder(self, name: str) -> Codec:
        """A filter with default settings, to encode replies as a request asked."""
        enc = self._encoders.get(name)
        if enc is None:
            enc = self._encoders[name] = codec(name)
        return enc

    def _decode_filters(self, msg: Message) -> Message:
        for name in reversed(msg.filters):
            dec = self._decoders.get(name)
            if dec is None:
                dec = self._decoders[name] = codec(name)
            before = msg.nbytes()
            try:
                msg = dec.decode(msg.sender, msg)
            except ProtocolError:
                raise
            except Exception as exc:  # hostile metadata must get an answer, not stop the thread
                raise ProtocolError(f"{name}: cannot decode: {exc!r}") from None
            self._count_filter(msg.table, "received", name, msg.nbytes(), before)
        return msg

    def _send_frames(self, node: int, frames: list[Any], table: int) -> int:
        """Send encoded ``frames`` to ``node`` and count them; return the bytes sent."""
        self._ensure_link(node)
        nbytes = self.transport.send(node, frames)
        with self._lock:
            self.counters["messages_sent"] += 1
            self.counters["bytes_sent"] += nbytes
            if table >= 0:
                self.table_bytes[(table, "sent")] += nbytes
        return nbytes

    def reply(self, request: Message, *, status: Status = Status.OK, body: dict[str, Any] | None = None,
              arrays: list[Any] | None = None, codecs: tuple[Codec, ...] = ()) -> None:
        """Answer ``request`` (through ``codecs``); a reply that cannot be delivered is logged and dropped."""
        try:
            msg = request.reply(status=status, body=body, arrays=arrays)
            msg.codecs = codecs
            self.send(request.sender, msg)
        except PSError as exc:
            log.warning("%s %d: cannot answer %s: %s", self.role, self.id, request.describe(), exc)

    def reply_error(self, request: Message, exc: BaseException, *, with_traceback: bool = True) -> None:
        """Answer ``request`` with an error reply describing ``exc``."""
        self.reply(request, status=Status.ERROR, body=error_body(exc, with_traceback=with_traceback))

    def next_ts(self) -> int:
        return next(self._ts)

    def request(
        self,
        parts: dict[int, Message],
        what: str,
        *,
        on_part: PartCallback | None = None,
        combine: Callable[[], Any] | None = None,
        timeout: float | None = None,
        ts: int | None = None,
        after: list[Request] | tuple[Request, ...] = (),
        prepare: Callable[[int, Message], None] | None = None,
        resend: bool = False,
        reroute: Reroute | None = None,
    ) -> Request:
        """Send one message per peer as one request; return its handle at once.

        ``on_part`` runs on the receive thread for each successful reply before that part
        counts as done (an exception in it fails the request); ``combine`` gives the
        request's result once every part is done. The messages leave only once every
        request of ``after`` has finished (execute-after-finished; the caller continues at
        once), and a failed dependency fails this request with the same error.
        ``prepare(peer, msg)`` runs just before each message leaves (to stamp sequence
        numbers in send order). With ``resend``, a part without a reply after
        PS_RESEND_TIMEOUT is sent again, the same frames, until it is answered.

        With ``reroute``, a part whose receiver answers "moved" (it does not own the keys
        under the current key map) or leaves the key map (it died and its replicas took
        over) is handed to ``reroute`` to be sent to the new owners; a part still unsent
        when the key map changes goes there at once. The caller never notices.
        """
        ts = self.next_ts() if ts is None else ts
        req = Request(
            ts,
            what,
            parts.keys(),
            default_timeout=self.config.timeout if timeout is None else timeout,
            peer_names=self.describe_peer,
            combine=combine,
            on_wait=self._record_wait,
        )
        with self._lock:
            aborted = self._aborted
            if aborted is None and self._running:
                self._pending[ts] = _Pending(req, on_part, reroute, tuple(parts))
        if aborted is not None:
            req.fail(aborted)
            return req
        if not self._running:
            req.fail(ClosedError(f"{what}: the {self.role} is closed"))
            return req
        req.add_done_callback(self._forget)
        for dep in after:
            if dep.done() and dep.exception(timeout=0) is not None:
                req.fail(dep.exception(timeout=0))  # type: ignore[arg-type]
                return req
        blockers = [d for d in after if not d.done()]
        if not blockers:
            self._send_parts(req, parts, prepare, resend)
            return req
        remaining = [len(blockers)]
        count_lock = threading.Lock()

        def dependency_done(dep: Request) -> None:
            exc = dep.exception(timeout=0)
            if exc is not None:
                req.fail(exc)
                return
            with count_lock:
                remaining[0] -= 1
                ready = remaining[0] == 0
            if ready and not req.done():
                self._send_parts(req, parts, prepare, resend)

        for dep in blockers:
            dep.add_done_callback(dependency_done)
        return req

    def _send_parts(self, req: Request, parts: dict[int, Message],
                    prepare: Callable[[int, Message], None] | None, resend: bool) -> None:
        resend = resend and bool(self._resend_after)
        with self._lock:
            pending = self._pending.get(req.ts)
        reroute = pending.reroute if pending is not None else None
        for peer, msg in parts.items():
            if req.done():
                return  # failed meanwhile (an error reply from another part)
            msg.ts = req.ts
            msg.sender = self.id
            keymap = self.keymap
            if pending is not None and reroute is not None and keymap is not None and 0 < msg.epoch < keymap.epoch:
                with self._lock:
                    pending.sent[peer] = msg  # sliced under an older map: go to the current owners
                    pending.claim(peer)
                self._reroute(pending, peer, None)
                continue
            try:
                if prepare is not None:
                    prepare(peer, msg)
                keeper = pending if reroute is not None else None  # keeps the part for reroutes
                repairable = any(getattr(c, "repairable", False) for c in msg.codecs)
                # The part as it left (filters return new messages), shared by reroutes and
                # repairs: neither mutates it.
                snapshot = msg
                if keeper is not None:
                    with self._lock:
                        keeper.sent[peer] = snapshot
                original = snapshot if repairable else None
                frames = self._frames(peer, msg)
                ordered = msg.seq > 0 and msg.op in (Op.PUSH, Op.CLOCK)
                if resend or repairable or ordered:
                    due = time.monotonic() + self._resend_after if resend else float("inf")
                    with self._lock:
                        if req.ts in self._pending or ordered:
                            self._deliveries[(req.ts, peer)] = _Delivery(frames, msg.table, due, ordered,
                                                                         original, msg.codecs)
                self._send_frames(peer, frames, msg.table)
            except PSError as exc:
                req.fail(exc)
                break
        req.sent = True

    def _reroute(self, p: _Pending, peer: int, cause: PSError | None) -> None:
        """Send the part of ``p`` meant for ``peer`` to the current owners of its keys (once:
        the caller claimed the part with :meth:`_Pending.claim`)."""
        req = p.req
        with self._lock:
            original = p.sent.get(peer)
            self._deliveries.pop((req.ts, peer), None)
            p.hops += 1
            hops = p.hops
        if req.done():
            return
        if original is None or p.reroute is None:
            req.fail(cause or KeyRangeError(f"{req.what}: node {peer} does not own the keys"))
            return
        if hops > MAX_REROUTES:
            req.fail(KeyRangeError(f"{req.what}: sent on {MAX_REROUTES} times without reaching the keys' owner"
                                   + (f" ({cause})" if cause else "")))
            return
        with self._lock:
            self.counters["reroutes"] += 1
        try:
            child = p.reroute(peer, original)
        except PSError as exc:
            req.fail(exc)
            return

        def child_done(c: Request) -> None:
            exc = c.exception(timeout=0)
            if exc is not None:
                req.fail(exc)
            else:
                req.part_done(peer)

        child.add_done_callback(child_done)

    def _on_moved(self, msg: Message, p: _Pending) -> None:
        """``msg.sender`` does not own the keys of a part: adopt its newer key map, if it
        sent one, and send the part on (after a pause if the receiver's map is the older)."""
        if p.reroute is None:  # a raw request: the caller sliced it and gets the answer
            p.req.fail(KeyRangeError(f"{p.req.what}: {msg.body.get('message', 'the keys moved')}"))
            return
        km = msg.body.get("keymap")
        theirs = None
        if km is not None:
            try:
                theirs = KeyMap.from_wire(km)
            except ProtocolError as exc:
                p.req.fail(exc)
                return
            try:
                self.learn_nodes([NodeInfo.from_wire(x) for x in get(msg.body, "nodes", list, [])])
            except ProtocolError as exc:
                p.req.fail(exc)
                return
            self.adopt_keymap(theirs)
        mine = self.keymap.epoch if self.keymap is not None else 0
        with self._lock:
            first = p.claim(msg.sender)
        if not first:
            return
        if theirs is not None and theirs.epoch < mine:  # the receiver has not heard of the change yet
            self.call_later(0.05, lambda: self._reroute(p, msg.sender, None))
        else:
            self._reroute(p, msg.sender, None)

    def _resend_due(self) -> None:
        now = time.monotonic()
        due: list[tuple[int, list[Any], int]] = []
        with self._lock:
            for (_, peer), d in self._deliveries.items():
                if d.due <= now:
                    d.due = now + self._resend_after
                    due.append((peer, d.frames, d.table))
        for peer, frames, table in due:
            self.counters["resends"] += 1
            try:
                self._send_frames(peer, frames, table)
            except PSError:
                pass  # the peer is gone; its death fails the request

    def _record_wait(self, seconds: float) -> None:
        with self._lock:
            self.counters["wait_ns"] += int(seconds * 1e9)

    def pending_request(self, ts: int) -> Request | None:
        """The unfinished request with timestamp ``ts``, if any."""
        with self._lock:
            entry = self._pending.get(ts)
        return entry.req if entry is not None else None

    def low_water(self) -> int:
        """The smallest timestamp of an unfinished request (0 if none): every request below
        it finished, so its parts are never sent again."""
        with self._lock:
            return min(self._pending, default=0)

    def pending_requests(self) -> list[Request]:
        """Every unfinished request of this node."""
        with self._lock:
            return [p.req for p in self._pending.values()]

    def _forget(self, req: Request) -> None:
        """Drop a finished request and its parts' deliveries, except ordered ones (they
        stay until answered, see :class:`_Delivery`). Touches only this request's keys."""
        with self._lock:
            p = self._pending.pop(req.ts, None)
            if p is None:
                return
            for peer in p.peers:
                key = (req.ts, peer)
                d = self._deliveries.get(key)
                if d is not None and not d.ordered:
                    del self._deliveries[key]

    def call(self, node: int, msg: Message, what: str, timeout: float | None = None) -> Message:
        """Send one request and block for its reply message.

        Raises
        ------
        RequestTimeout, RemoteError, NodeUnavailable, JobAborted
        """
        box: list[Message] = []
        req = self.request({node: msg}, what, on_part=box.append, timeout=timeout)
        req.wait()
        return box[0]

    def _fail_all(self, exc: PSError) -> None:
        with self._lock:
            pending = [p.req for p in self._pending.values()]
        for req in pending:
            req.fail(exc)

    # ------------------------------------------------------------------ registration
    def register(self, scheduler: str, body: dict[str, Any], timeout: float,
                 on_reply: Callable[[Message], None] | None = None) -> Message:
        """Join the cluster through the scheduler at ``scheduler``; return its reply.

        The node id, node table and key map are taken from the reply on the receive thread,
        and ``on_reply`` runs there too, before any later message is handled: requests that
        follow the reply (a table to create, a push) find the node ready.

        Raises
        ------
        ConnectError
            No scheduler answered within ``timeout`` seconds.
        """
        self.scheduler_address = scheduler
        self.connect(SCHEDULER_ID, scheduler)
        box: list[Message] = []

        def registered(reply: Message) -> None:
            self.id = get(reply.body, "id", int)
            self._apply_nodes(reply.body)
            self._scheduler_seen = time.monotonic()
            if on_reply is not None:
                on_reply(reply)
            box.append(reply)

        msg = Message(Op.REGISTER, body=body)
        req = self.request({SCHEDULER_ID: msg}, f"registration with the scheduler at {scheduler}",
                           on_part=registered, timeout=timeout)
        try:
            req.wait()
        except RequestTimeout:
            raise ConnectError(
                f"no scheduler answered at {scheduler} within {timeout:g} s "
                f"(PS_CONNECT_TIMEOUT); check the address, or start one with "
                f"`paramserver scheduler`"
            ) from None
        return box[0]

    def _apply_nodes(self, body: dict[str, Any]) -> None:
        nodes = [NodeInfo.from_wire(x) for x in get(body, "nodes", list)]
        km = body.get("keymap")
        keymap = KeyMap.from_wire(km) if km is not None else None
        dead = set(get(body, "dead", list, []))
        self.set_nodes(nodes, keymap, dead)

    def _on_nodes(self, msg: Message) -> None:
        self._apply_nodes(msg.body)
        self.reply(msg)

    def _on_shutdown(self, msg: Message) -> None:
        reason = get(msg.body, "reason", str, "the cluster was shut down")
        code = get(msg.body, "code", int, 0)
        self.reply(msg)
        self.abort(JobAborted(f"the job ended: {reason}", code))

    def start_heartbeats(self) -> None:
        """Send a heartbeat every PS_HEARTBEAT_INTERVAL; abort if the scheduler is silent
        for PS_HEARTBEAT_TIMEOUT."""
        self._scheduler_seen = time.monotonic()
        self.call_every(self.config.heartbeat_interval, self._heartbeat)

    def heartbeat_body(self) -> dict[str, Any]:
        """What a heartbeat reports (roles may extend it)."""
        return {}

    def _heartbeat(self) -> None:
        if self._aborted is not None:
            return
        now = time.monotonic()
        silent = now - self._scheduler_seen
        if silent > self.config.heartbeat_timeout:
            self.abort(NodeUnavailable(
                f"the scheduler at {self.scheduler_address} is unreachable since "
                f"{time.strftime('%H:%M:%S', time.localtime(time.time() - silent))} "
                f"(no answer for {silent:.1f} s)"
            ))
            return

        def seen(_: Message) -> None:
            self._scheduler_seen = time.monotonic()

        def check(req: Request) -> None:
            exc = req.exception(timeout=0)
            if isinstance(exc, JobAborted):
                self.abort(exc)

        req = self.request({SCHEDULER_ID: Message(Op.HEARTBEAT, body=self.heartbeat_body())},
                           "heartbeat", on_part=seen, timeout=self.config.heartbeat_timeout)
        req.add_done_callback(check)

    # ------------------------------------------------------------------ timers
    def call_every(self, interval: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the receive thread every ``interval`` seconds. Thread-safe."""
        self._add_timer(_Timer(time.monotonic() + interval, next(self._timer_seq), fn, interval))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` once on the receive thread after ``delay`` seconds. Thread-safe."""
        self._add_timer(_Timer(time.monotonic() + delay, next(self._timer_seq), fn, 0.0))

    def _add_timer(self, timer: _Timer) -> None:
        with self._lock:
            heapq.heappush(self._timers, timer)
        self.transport.wake()

    def _run_timers(self) -> float:
        """Run due timers; return seconds until the next one (at most 1)."""
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._timers or self._timers[0].when > now:
                    return min(1.0, self._timers[0].when - now) if self._timers else 1.0
                timer = heapq.heappop(self._timers)
                if timer.interval:
                    timer.when = max(timer.when + timer.interval, now)
                    heapq.heappush(self._timers, timer)
            try:
                timer.fn()
            except Exception:
                log.exception("%s %d: timer %r failed", self.role, self.id, timer.fn)

    # ------------------------------------------------------------------ receiving
    def _loop(self) -> None:
        while self._running:
            wait = self._run_timers()
            try:
                frames = self.transport.recv(max(wait, 0.0))
            except Exception:
                if self._running:
                    log.exception("%s %d: receive failed", self.role, self.id)
                    time.sleep(0.05)
                continue
            if frames is None:
                continue
            try:
                self._on_frames(frames)
            except Exception:  # nothing a peer sends may stop this thread
                log.exception("%s %d: error while handling a message", self.role, self.id)

    def _on_frames(self, frames: list[Any]) -> None:
        nbytes = sum(memoryview(f).nbytes for f in frames)
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            self._on_malformed(frames, exc)
            return
        with self._lock:
            self.counters["messages_received"] += 1
            self.counters["bytes_received"] += nbytes
            if msg.table >= 0:
                self.table_bytes[(msg.table, "received")] += nbytes
        if self.config.verbose:
            log.debug("%s %d <- %d: %s", self.role, self.id, msg.sender, msg.describe())
        if msg.filters:
            try:
                msg = self._decode_filters(msg)
            except KeysMissing as exc:
                if not msg.response:
                    self.reply(msg, status=Status.RESEND_KEYS, body={"message": str(exc), "ksig": exc.sig})
                return
            except ProtocolError as exc:
                log.warning("%s %d: cannot decode the filters of %s: %s", self.role, self.id, msg.describe(), exc)
                if not msg.response:
                    self.reply_error(msg, exc, with_traceback=False)
                else:
                    self._fail_response(msg, exc)
                return
        if msg.response:
            self._on_response(msg)
        else:
            self._on_request(msg)

    def _on_malformed(self, frames: list[Any], exc: ProtocolError) -> None:
        with self._lock:
            self.counters["messages_malformed"] += 1
        log.warning("%s %d: dropped a malformed message: %s", self.role, self.id, exc)
        try:  # answer if the header at least names a known sender of a request
            header, _ = decode_header(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
            sender, ts, flags = header[2], header[3], header[4]
            if type(sender) is int and type(ts) is int and ts >= 0 and flags == 0 and sender in self._nodes:
                self.reply_error(Message(Op.PING, sender=sender, ts=ts), exc, with_traceback=False)
        except Exception:
            pass

    def _on_response(self, msg: Message) -> None:
        with self._lock:
            entry = self._pending.get(msg.ts)
            if msg.status != Status.RESEND_KEYS:
                self._deliveries.pop((msg.ts, msg.sender), None)
        if msg.status == Status.RESEND_KEYS:
            sig = msg.body.get("ksig")
            self._repair(msg.ts, msg.sender, entry.req if entry is not None else None,
                         sig if type(sig) is int else None)
            return
        if entry is None:
            if self.on_unmatched_response is not None:
                self.on_unmatched_response(msg)
            return  # else a late reply to a request that already failed or timed out
        req, on_part = entry.req, entry.on_part
        if not req.awaits(msg.sender):
            return  # a second reply to the same part (a resend or a copy was answered too)
        if msg.status == Status.MOVED:
            self._on_moved(msg, entry)
            return
        if msg.status == Status.ERROR:
            req.fail(error_from_body(msg.body, msg.sender, req.what))
            return
        try:
            if on_part is not None:
                on_part(msg)
        except Exception as exc:
            req.fail(exc)
            return
        req.part_done(msg.sender)

    def _fail_response(self, msg: Message, exc: PSError) -> None:
        with self._lock:
            entry = self._pending.get(msg.ts)
        if entry is not None:
            entry.req.fail(exc)

    def _repair(self, ts: int, peer: int, req: Request | None, sig: int | None) -> None:
        """The peer lost a key list we sent by signature: send that part again with its keys
        (also when its request has ended: an ordered part must still arrive)."""
        with self._lock:
            d = self._deliveries.get((ts, peer))
        if d is None or d.original is None:
            if req is not None:
                req.fail(ProtocolError(f"{req.what}: node {peer} asked for keys that were not sent by signature"))
            return
        for c in d.codecs:
            c.forget(peer, sig)
        msg = d.original
        frames = self._frames(peer, msg)
        with self._lock:
            self.counters["key_repairs"] += 1
            d.frames = frames
        try:
            self._send_frames(peer, frames, msg.table)
        except PSError as exc:
            if req is not None:
                req.fail(exc)

    def _on_request(self, msg: Message) -> None:
        handler = self._handlers.get(msg.op)
        if handler is None:
            self.reply_error(msg, ProtocolError(f"a {self.role} does not handle {msg.op.name} requests"),
                             with_traceback=False)
            return
        try:
            handler(msg)
        except PSError as exc:
            self.reply_error(msg, exc, with_traceback=not isinstance(exc, ProtocolError))
        except Exception as exc:
            log.warning("%s %d: handler for %s raised %r", self.role, self.id, msg.op.name, exc)
            self.reply_error(msg, exc)


def _is_data(frames: list[Any]) -> bool:
    """Fault injection applies to data operations (push, pull, clock) and their replies."""
    try:
        header, _ = decode_header(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
    except ProtocolError:
        return False
    op = header[1]
    return type(op) is int and op >= 32


def process_info() -> dict[str, Any]:
    """The fields of this process that a registration carries."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}
