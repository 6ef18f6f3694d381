"""The node runtime: one per node, shared by every role; the I/O shell around pure state.

A :class:`Node` owns a transport and drives three pure parts:

* :class:`~._membership.Membership`: the node table and the cached key map;
* :class:`~._outbox.Outbox`: the requests in flight and what their replies mean;
* :class:`~._timers.Timers`: heartbeats, resends and the roles' periodic work.

It decodes each incoming message and either completes a pending request (a response) or
calls the handler registered for the message's op (a request). A handler that raises is
answered with an error reply carrying the traceback, and the node keeps serving; a
malformed message is logged and, where its header names a known sender, answered with a
``ProtocolError`` reply.

**Who receives.** Receiving and dispatching is done by whichever thread holds the node's
*baton*: normally the receive thread, but a user thread that waits for one of its requests
takes the baton over (:meth:`Node.drive`) and receives its own reply, which saves a thread
hand-off on every synchronous call. The receive thread steps aside while a caller leads
and takes the baton back a moment after the caller leaves.

Thread-safety: :meth:`Node.send`, :meth:`Node.request`, :meth:`Node.call` and the
accessors may be used from any thread. Handlers, response callbacks and timers run one at
a time on the thread holding the baton, so role code they touch needs no lock of its own
unless user threads touch it too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

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
from ..protocol import (
    Codec,
    KeysMissing,
    Message,
    Moved,
    Nodes,
    Op,
    RegisterReply,
    ResendKeys,
    Shutdown,
    Status,
    codec,
    decode,
    decode_header,
    encode,
    value_indices,
)
from ..transport import FaultyTransport, Transport, ZmqTransport
from . import _batch as batch
from ._errors_wire import error_body, error_from_body
from ._info import SCHEDULER_ID, NodeInfo
from ._membership import Membership, parse_nodes
from ._outbox import MAX_REROUTES, Delivery, Flight, Outbox, PartCallback, Reroute, VerdictKind, is_ordered
from ._timers import Timers

__all__ = ["Node", "Stamp", "process_info"]

log = logging.getLogger("paramserver.node")

Handler = Callable[[Message], None]

class Stamp(Protocol):
    """Numbers a part in its channel as it leaves (see :meth:`Node.send_part`)."""

    def take(self, peer: int, msg: Message) -> None:
        """Stamp ``msg`` for ``peer`` (it is about to be encoded and sent)."""

    def give_back(self, peer: int, msg: Message) -> None:
        """``msg`` could not leave after all: return its number if no later one was taken."""


#: How long the receive thread stays aside after a caller took the baton (seconds).
YIELD_S = 0.002
#: The most messages one step of the loop handles before it sends the replies they made.
DRAIN = 64
#: The longest a request waits to leave with others to the same peer (seconds).
HOLD_S = 0.001
#: The longest one step drains before the replies it made leave (seconds).
DRAIN_S = 0.005
#: A leading caller checks its request at least this often; a waiting one tries to lead.
LEAD_SLICE_S = 0.001


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
        self.members = Membership()
        self.outbox = Outbox()
        self.timers = Timers()
        self._handlers: dict[Op, Handler] = {
            Op.PING: lambda m: self.reply(m),
            Op.NODES: self._on_nodes,
            Op.SHUTDOWN: self._on_shutdown,
        }
        self._connected: set[int] = set()
        self._lock = threading.RLock()
        self._count_lock = threading.Lock()
        self._ts = 0
        self._thread: threading.Thread | None = None
        self._running = False
        self._aborted: PSError | None = None
        self._scheduler_seen = time.monotonic()
        # the baton: whoever holds it receives and dispatches (see the module docstring)
        self._baton = threading.Lock()
        self._baton_owner: int | None = None
        self._leaders = 0
        # While the baton's holder handles what has arrived, its replies wait here, per peer,
        # and leave as one batch per peer at the end of the step (not under fault injection,
        # which judges each message by its header).
        self._corked: dict[int, list[list[Any]]] | None = None
        self._batching = not config.faults
        # Requests that may wait to leave together (send_part(coalesce=True)): while a peer
        # has unanswered ones, new ones are held and leave as one batch when it answers,
        # when a caller starts to wait, or after HOLD_S (Nagle's rule, with a short timer).
        self._held: dict[int, list[tuple[list[Any], int]]] = {}
        self._unanswered: dict[int, set[int]] = {}  # peer -> ts of coalescing parts it owes an answer
        self._hold_armed = False  # a release timer is pending
        self._led_at = 0.0  # when a caller last gave the baton back
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
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.table_bytes: defaultdict[tuple[int, str], int] = defaultdict(int)
        #: Called with the nodes that are gone after the node table or key map changed.
        self.on_nodes_changed: list[Callable[[set[int]], None]] = []
        #: Called when the job ends (scheduler lost or shutdown).
        self.on_abort: list[Callable[[PSError], None]] = []
        #: Called with responses no pending request awaits.
        self.on_unmatched_response: Callable[[Message], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return self.transport.address

    @property
    def keymap(self) -> KeyMap | None:
        """The cached key map (None before registration)."""
        return self.members.keymap

    @keymap.setter
    def keymap(self, keymap: KeyMap | None) -> None:
        with self._lock:
            self.members.keymap = keymap

    @property
    def scheduler_address(self) -> str:
        return self.members.scheduler_address

    def start(self, host: str, port: int = 0) -> str:
        """Bind the transport and start the receive thread; return the bound address."""
        address = self.transport.bind(host, port)
        self._running = True
        if self._resend_after:
            self.call_every(min(self._resend_after / 4, 0.25), self._resend_due)
        self._thread = threading.Thread(target=self._loop, name=f"paramserver-{self.role}-recv", daemon=True)
        self._thread.start()
        return address

    def close(self, linger: float = 1.0) -> None:
        """Stop the receive thread, fail what is pending with :class:`ClosedError`, close."""
        self._running = False
        self.transport.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        # a caller may still hold the baton; it stops at its next step (not running)
        got = self._baton.acquire(timeout=10) if self._baton_owner != threading.get_ident() else False
        try:
            self._fail_all(ClosedError(f"{self.role} {self.id} was closed"))
            self.transport.close(linger)
        finally:
            if got:
                self._baton.release()

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
            return dict(self.members.nodes)

    def node_info(self, node: int) -> NodeInfo | None:
        return self.members.nodes.get(node)

    def describe_peer(self, node: int) -> str:
        return self.members.describe(node, self.address)

    def set_nodes(self, nodes: list[NodeInfo], keymap: KeyMap | None, dead: set[int]) -> None:
        """Replace the node table (and key map, if given); fail requests awaiting ``dead``."""
        with self._lock:
            old = dict(self.members.nodes)
            change = self.members.update(nodes, keymap, dead)
            for nid, address in change.moved_links:
                if nid in self._connected:
                    self.transport.connect(nid, address)
        for nid in sorted(change.gone):
            self.peer_failed(nid, NodeUnavailable(f"{old.get(nid) or f'node {nid}'} left the cluster or died"))
        for fn in list(self.on_nodes_changed):
            fn(set(change.gone))

    def adopt_keymap(self, keymap: KeyMap) -> bool:
        """Use ``keymap`` if it is newer than the cached one; True if it was adopted."""
        with self._lock:
            return self.members.adopt(keymap)

    def peer_failed(self, node: int, exc: PSError) -> None:
        """Fail every pending request that awaits a part from ``node`` (or send the part on
        to the new owners of its keys, for requests that reroute); drop the link."""
        with self._lock:
            waiting = self.outbox.peer_gone(node)
            self._held.pop(node, None)
            self._unanswered.pop(node, None)
            for dec in self._decoders.values():
                dec.forget(node)
            if node in self._connected and node != SCHEDULER_ID:
                self._connected.discard(node)
                self.transport.disconnect(node)
            gone = self.members.gone_from_map(node)  # rerouting below never changes the key map
        for f in waiting:  # in issue order: pushes keep their order
            if f.reroute is not None and gone:
                with self._lock:
                    left = node in f.sent and f.claim(node)
                if left:
                    self._reroute(f, node, exc)
                # else: not sent yet; it goes to the new owners when it leaves
            else:
                f.req.fail(exc)

    # ------------------------------------------------------------------ sending
    def connect(self, node: int, address: str) -> None:
        """Open the link to ``node`` at ``address`` (used before the node table knows it)."""
        with self._lock:
            self.transport.connect(node, address)
            self._connected.add(node)

    def ensure_link(self, node: int) -> None:
        """Open the link to ``node`` from the node table if it is not open yet.

        Raises
        ------
        NodeUnavailable
            ``node`` is not in the node table.
        """
        if node in self._connected:
            return
        with self._lock:
            if node in self._connected:
                return
            info = self.members.nodes.get(node)
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
        with self._count_lock:
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
        corked = self._corked
        if corked and node in corked and self._baton_owner == threading.get_ident():
            self._flush_peer(node, corked.pop(node))  # replies made before it leave before it
        if node not in self._connected:
            self.ensure_link(node)
        nbytes = self.transport.send(node, frames)
        self._count_sent(nbytes, table)
        return nbytes

    def _count_sent(self, nbytes: int, table: int) -> None:
        with self._count_lock:
            counters = self.counters
            counters["messages_sent"] += 1
            counters["bytes_sent"] += nbytes
            if table >= 0:
                self.table_bytes[(table, "sent")] += nbytes

    def reply(self, request: Message, *, status: Status = Status.OK, body: dict[str, Any] | None = None,
              arrays: list[Any] | None = None, codecs: tuple[Codec, ...] = ()) -> None:
        """Answer ``request`` (through ``codecs``); a reply that cannot be delivered is logged and dropped."""
        try:
            msg = request.reply(status=status, body=body, arrays=arrays)
            msg.codecs = codecs
            corked = self._corked
            if corked is not None and self._baton_owner == threading.get_ident():
                msg.sender = self.id
                frames = self._frames(request.sender, msg)
                corked.setdefault(request.sender, []).append(frames)
                self._count_sent(sum(memoryview(f).nbytes for f in frames), msg.table)
            else:
                self.send(request.sender, msg)
        except PSError as exc:
            log.warning("%s %d: cannot answer %s: %s", self.role, self.id, request.describe(), exc)

    def reply_error(self, request: Message, exc: BaseException, *, with_traceback: bool = True) -> None:
        """Answer ``request`` with an error reply describing ``exc``."""
        self.reply(request, status=Status.ERROR, body=error_body(exc, with_traceback=with_traceback))

    # ------------------------------------------------------------------ requests
    def open(self, peers: tuple[int, ...], what: str, *, on_part: PartCallback | None = None,
             combine: Callable[[], Any] | None = None, timeout: float | None = None,
             reroute: Reroute | None = None) -> Request:
        """A new request awaiting one part from each of ``peers``; nothing is sent yet
        (send each part with :meth:`send_part`). Fails at once if the node is closed or the
        job has ended.

        ``on_part`` runs (on the thread holding the baton) for each successful reply before
        that part counts as done; an exception in it fails the request. ``combine`` gives the
        request's result once every part is done. With ``reroute``, a part whose receiver
        answers "moved" or leaves the key map is handed to ``reroute`` to be sent to the new
        owners; the caller never notices.
        """
        with self._lock:
            self._ts += 1
            ts = self._ts
        req = Request(ts, what, peers, default_timeout=self.config.timeout if timeout is None else timeout,
                      peer_names=self.describe_peer, combine=combine, on_wait=self._record_wait,
                      driver=self.drive)
        with self._lock:
            aborted = self._aborted
            if aborted is None and self._running:
                self.outbox.open(req, peers, on_part, reroute)
        if aborted is not None:
            req.fail(aborted)
        elif not self._running:
            req.fail(ClosedError(f"{what}: the {self.role} is closed"))
        else:
            req.add_done_callback(self._forget)
        return req

    def send_part(self, req: Request, peer: int, msg: Message, *, resend: bool = False,
                  stamp: Stamp | None = None, coalesce: bool = False) -> bool:
        """Send the part of ``req`` for ``peer``; False if the request is over (failed
        meanwhile, or failed now because the part could not leave).

        ``stamp.take(peer, msg)`` runs just before the part is encoded, only if it leaves (to
        number it in its channel), and ``stamp.give_back(peer, msg)`` if it then cannot
        leave (its link is gone or it cannot be encoded), so no number is lost. With ``resend``, the part is sent again after
        PS_RESEND_TIMEOUT until it is answered. A part sliced under an older key map than
        the cached one goes to the current owners of its keys instead, if the request
        reroutes. With ``coalesce``, the part may wait (at most HOLD_S, or until the peer
        answers an earlier one, or a caller waits) to leave in one batch with others.
        """
        if req.done():
            return False
        msg.ts = req.ts
        msg.sender = self.id
        flight = self.outbox.flights.get(req.ts)  # one dict read: atomic, no lock needed
        keymap = self.members.keymap
        reroute = flight.reroute if flight is not None else None
        if flight is not None and reroute is not None and keymap is not None and 0 < msg.epoch < keymap.epoch:
            with self._lock:
                flight.sent[peer] = msg  # sliced under an older map: go to the current owners
                flight.claim(peer)
            self._reroute(flight, peer, None)
            return not req.done()
        try:
            if peer not in self._connected:
                self.ensure_link(peer)  # an unknown peer fails the request before a number is taken
            if stamp is not None:
                stamp.take(peer, msg)
            try:
                frames = self._frames(peer, msg)
            except PSError:
                if stamp is not None:
                    stamp.give_back(peer, msg)
                raise
            codecs = msg.codecs
            repairable = bool(codecs) and any(getattr(c, "repairable", False) for c in codecs)
            keep = reroute is not None
            snapshot = msg  # filters return new messages: the part as it left stays as it is
            resend = resend and self._resend_after > 0
            delivery = None
            if resend or repairable:  # only resends and repairs ever send a part's frames again
                due = time.monotonic() + self._resend_after if resend else float("inf")
                delivery = Delivery(frames, msg.table, due, is_ordered(msg), snapshot if repairable else None,
                                    codecs)
            if keep or delivery is not None:
                with self._lock:
                    self.outbox.sent(req.ts, peer, snapshot if keep else None, delivery)
            if coalesce and self._batching and self._hold(req.ts, peer, frames, msg.table):
                return True
            self._send_frames(peer, frames, msg.table)
        except PSError as exc:
            req.fail(exc)
            return False
        return True

    def _hold(self, ts: int, peer: int, frames: list[Any], table: int) -> bool:
        """Count the coalescing part ``ts`` to ``peer`` as unanswered; True if it was held
        (the peer owes answers, or has held parts that it must not overtake).

        Raises
        ------
        NodeUnavailable
            The link to ``peer`` was closed (it failed): the part must not wait for it.
        """
        with self._lock:
            if peer not in self._connected:
                raise NodeUnavailable(f"the connection to node {peer} was closed")
            owed = self._unanswered.setdefault(peer, set())
            q = self._held.get(peer)
            hold = bool(owed) or bool(q)
            owed.add(ts)
            if not hold:
                return False
            if q is None:
                q = self._held[peer] = []
            q.append((frames, table))
            arm = not self._hold_armed
            self._hold_armed = True
        if arm:
            self.call_later(HOLD_S, self._release_timer)
        return True

    def _release(self, peer: int) -> None:
        """Send what is held for ``peer``, as one message or one batch."""
        with self._lock:
            q = self._held.pop(peer, None)
        if not q:
            return
        try:
            for i in range(0, len(q), batch.MAX_BATCH):
                chunk = q[i:i + batch.MAX_BATCH]
                frames = chunk[0][0] if len(chunk) == 1 else batch.pack([f for f, _ in chunk])
                self.transport.send(peer, frames)
                for f, table in chunk:
                    self._count_sent(sum(memoryview(x).nbytes for x in f), table)
        except PSError as exc:  # the peer is gone: its death fails or reroutes the requests
            log.debug("%s %d: held requests to node %d not sent: %s", self.role, self.id, peer, exc)

    def _release_all(self) -> None:
        with self._lock:
            peers = list(self._held)
        for peer in peers:
            self._release(peer)

    def _release_timer(self) -> None:
        with self._lock:
            self._hold_armed = False
        self._release_all()

    def request(self, parts: dict[int, Message], what: str, *, on_part: PartCallback | None = None,
                combine: Callable[[], Any] | None = None, timeout: float | None = None,
                reroute: Reroute | None = None) -> Request:
        """Send one message per peer as one request; return its handle at once (see
        :meth:`open` and :meth:`send_part`)."""
        req = self.open(tuple(parts), what, on_part=on_part, combine=combine, timeout=timeout, reroute=reroute)
        for peer, msg in parts.items():
            if not self.send_part(req, peer, msg):
                break
        req.sent = True
        return req

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

    def _reroute(self, f: Flight, peer: int, cause: PSError | None) -> None:
        """Send the part of ``f`` meant for ``peer`` to the current owners of its keys (once:
        the caller claimed the part with :meth:`Flight.claim`)."""
        req = f.req
        with self._lock:
            original, hops = self.outbox.start_reroute(f, peer)
        if req.done():
            return
        if original is None or f.reroute is None:
            req.fail(cause or KeyRangeError(f"{req.what}: node {peer} does not own the keys"))
            return
        if hops > MAX_REROUTES:
            req.fail(KeyRangeError(f"{req.what}: sent on {MAX_REROUTES} times without reaching the keys' owner"
                                   + (f" ({cause})" if cause else "")))
            return
        self.count("reroutes")
        try:
            child = f.reroute(peer, original)
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

    def _on_moved(self, msg: Message, f: Flight) -> None:
        """``msg.sender`` does not own the keys of a part: adopt its newer key map, if it
        sent one, and send the part on (after a pause if the receiver's map is the older)."""
        try:
            moved = Moved.from_wire(msg.body)
            theirs = KeyMap.from_wire(moved.keymap) if moved.keymap is not None else None
            servers = [NodeInfo.from_wire(x) for x in moved.nodes]
        except ProtocolError as exc:
            f.req.fail(exc)
            return
        if f.reroute is None:  # a raw request: the caller sliced it and gets the answer
            f.req.fail(KeyRangeError(f"{f.req.what}: {moved.message}"))
            return
        if theirs is not None:
            with self._lock:
                self.members.update(servers, theirs, complete=False)
        keymap = self.members.keymap
        mine = keymap.epoch if keymap is not None else 0
        with self._lock:
            first = f.claim(msg.sender)
        if not first:
            return
        if theirs is not None and theirs.epoch < mine:  # the receiver has not heard of the change yet
            self.call_later(0.05, lambda: self._reroute(f, msg.sender, None))
        else:
            self._reroute(f, msg.sender, None)

    def _resend_due(self) -> None:
        with self._lock:
            due = self.outbox.due(time.monotonic(), self._resend_after)
        for peer, d in due:
            self.count("resends")
            try:
                self._send_frames(peer, d.frames, d.table)
            except PSError:
                pass  # the peer is gone; its death fails the request

    def _record_wait(self, seconds: float) -> None:
        self.count("wait_ns", int(seconds * 1e9))

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``. Thread-safe."""
        with self._count_lock:
            self.counters[name] += n

    def snapshot_counters(self) -> tuple[dict[str, int], dict[tuple[int, str], int], dict[tuple[int, str, str], list[int]]]:
        """Copies of the counters, per-table bytes and per-filter bytes, read together."""
        with self._count_lock:
            return (dict(self.counters), dict(self.table_bytes),
                    {k: list(v) for k, v in self.filter_bytes.items()})

    def pending_request(self, ts: int) -> Request | None:
        """The unfinished request with timestamp ``ts``, if any."""
        with self._lock:
            flight = self.outbox.get(ts)
        return flight.req if flight is not None else None

    def low_water(self) -> int:
        """The smallest timestamp of an unfinished request (0 if none): every request below
        it finished, so its parts are never sent again."""
        with self._lock:
            return self.outbox.low_water()

    def pending_requests(self) -> list[Request]:
        """Every unfinished request of this node."""
        with self._lock:
            return self.outbox.requests()

    def _forget(self, req: Request) -> None:
        with self._lock:
            flight = self.outbox.flights.get(req.ts)
            if flight is not None and self._unanswered:
                for peer in flight.peers:  # an ended request owes nothing (a cancelled held pull)
                    owed = self._unanswered.get(peer)
                    if owed:
                        owed.discard(req.ts)
            self.outbox.close(req.ts)

    def _fail_all(self, exc: PSError) -> None:
        with self._lock:
            pending = self.outbox.requests()
        for req in pending:
            req.fail(exc)

    # ------------------------------------------------------------------ registration
    def register(self, scheduler: str, body: dict[str, Any], timeout: float,
                 on_reply: Callable[[Message], None] | None = None) -> Message:
        """Join the cluster through the scheduler at ``scheduler``; return its reply.

        The node id, node table and key map are taken from the reply as it is received,
        and ``on_reply`` runs then too, before any later message is handled: requests that
        follow the reply (a table to create, a push) find the node ready.

        Raises
        ------
        ConnectError
            No scheduler answered within ``timeout`` seconds.
        """
        self.members.scheduler_address = scheduler
        self.connect(SCHEDULER_ID, scheduler)
        box: list[Message] = []

        def registered(reply: Message) -> None:
            answer = RegisterReply.from_wire(reply.body)
            self.id = answer.id
            self.set_nodes(*parse_nodes(answer))
            self._scheduler_seen = time.monotonic()
            if on_reply is not None:
                on_reply(reply)
            box.append(reply)

        req = self.request({SCHEDULER_ID: Message(Op.REGISTER, body=body)},
                           f"registration with the scheduler at {scheduler}", on_part=registered, timeout=timeout)
        try:
            req.wait()
        except RequestTimeout:
            raise ConnectError(
                f"no scheduler answered at {scheduler} within {timeout:g} s "
                f"(PS_CONNECT_TIMEOUT); check the address, or start one with "
                f"`paramserver scheduler`"
            ) from None
        return box[0]

    def _on_nodes(self, msg: Message) -> None:
        self.set_nodes(*parse_nodes(Nodes.from_wire(msg.body)))
        self.reply(msg)

    def _on_shutdown(self, msg: Message) -> None:
        order = Shutdown.from_wire(msg.body)
        self.reply(msg)
        self.abort(JobAborted(f"the job ended: {order.reason}", order.code))

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
        """Run ``fn`` on the node's loop every ``interval`` seconds. Thread-safe."""
        self._add_timer(interval, fn, interval)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` once on the node's loop after ``delay`` seconds. Thread-safe."""
        self._add_timer(delay, fn, 0.0)

    def _add_timer(self, delay: float, fn: Callable[[], None], interval: float) -> None:
        first = self.timers.add(time.monotonic(), delay, fn, interval)
        # The loop sleeps until its next timer: wake it only if this one comes first, and
        # not from the loop itself (it reads the timers again before it sleeps).
        if first and self._baton_owner != threading.get_ident():
            self.transport.wake()

    # ------------------------------------------------------------------ receiving
    def _loop(self) -> None:
        me = threading.get_ident()
        while self._running:
            # A caller receives for now, or did a moment ago (a synchronous loop comes back at
            # once): stay aside rather than take the baton back between its calls.
            if self._leaders or time.monotonic() - self._led_at < YIELD_S:
                time.sleep(YIELD_S)
                continue
            with self._baton:
                if not self._running:
                    break
                self._baton_owner = me
                try:
                    self._step(None)
                except Exception:  # nothing may stop this loop
                    log.exception("%s %d: loop step failed", self.role, self.id)
                finally:
                    self._baton_owner = None

    def drive(self, req: Request, limit: float) -> None:
        """Receive and dispatch on this thread until ``req`` is done or ``limit`` seconds
        passed (the waiting caller takes the baton, see the module docstring). While another
        caller holds the baton, this one waits for it in short slices, so it takes over as
        soon as it is free and returns as soon as its request is done. Returns at once on the
        receive thread (handlers and timers never wait on their own loop)."""
        if self._held:
            self._release_all()  # a waiting caller never waits for the hold timer
        me = threading.get_ident()
        deadline = time.monotonic() + limit
        thread = self._thread
        if not self._running or thread is None or thread.ident == me:
            return
        if self._baton_owner == me:  # a callback run by this leading caller waits: go on here
            while self._running and not req.done() and (left := deadline - time.monotonic()) > 0:
                self._step(min(left, LEAD_SLICE_S))
            return
        got = False
        try:
            with self._lock:
                self._leaders += 1
            while not req.done() and self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._baton.acquire(blocking=False):
                    got = True
                    break
                if self._baton_owner == thread.ident:
                    self.transport.wake()  # the receive thread steps aside at its next step
                got = self._baton.acquire(timeout=min(left, LEAD_SLICE_S))
                if got:
                    break
            if not got:
                return
            self._baton_owner = me
            while self._running and not req.done() and (left := deadline - time.monotonic()) > 0:
                # in slices: a request completed by another thread (a cancel) is seen soon
                self._step(min(left, LEAD_SLICE_S))
        finally:
            if got:
                self._baton_owner = None
                self._led_at = time.monotonic()
                self._baton.release()
            with self._lock:
                self._leaders -= 1

    def _step(self, limit: float | None) -> None:
        """Run due timers, then receive what has arrived (waiting at most until the next
        timer, or ``limit``) and handle it: up to DRAIN messages, whose replies leave as one
        batch per peer at the end. Called by the baton's holder only."""
        now = time.monotonic()
        for fn in self.timers.due(now):
            try:
                fn()
            except Exception:
                log.exception("%s %d: timer %r failed", self.role, self.id, fn)
        wait = self.timers.wait(time.monotonic())
        if limit is not None and limit < wait:
            wait = limit
        try:
            frames = self.transport.recv(wait)
        except Exception:
            if self._running:
                log.exception("%s %d: receive failed", self.role, self.id)
                time.sleep(0.05)
            return
        if frames is None:
            return
        if not self._batching:
            self._handle(frames)
            return
        outer = self._corked  # a callback of an outer step may wait and step again: re-entrant
        self._corked = {}
        try:
            self._handle(frames)
            stop = time.monotonic() + DRAIN_S
            for _ in range(DRAIN - 1):  # what else has arrived is handled before replies leave
                if time.monotonic() > stop:
                    break
                try:
                    more = self.transport.recv(0)
                except Exception:
                    break
                if more is None:
                    break
                self._handle(more)
        finally:
            out, self._corked = self._corked, outer
            self._flush(out)

    def _handle(self, frames: list[Any]) -> None:
        """Handle one transport message (a message, or a batch of them, each on its own)."""
        try:
            parts = batch.unpack(frames) if batch.is_batch(frames) else [frames]
        except ProtocolError as exc:
            self.count("messages_malformed")
            log.warning("%s %d: dropped a malformed batch: %s", self.role, self.id, exc)
            return
        for part in parts:
            try:
                self._on_frames(part)
            except Exception:  # nothing a peer sends may stop this loop, nor the rest of a batch
                log.exception("%s %d: error while handling a message", self.role, self.id)

    def _flush(self, out: dict[int, list[list[Any]]]) -> None:
        """Send the replies a step made: one message, or one batch, per peer."""
        for peer in list(out):
            self._flush_peer(peer, out.pop(peer))

    def _flush_peer(self, peer: int, msgs: list[list[Any]]) -> None:
        try:
            for i in range(0, len(msgs), batch.MAX_BATCH):
                chunk = msgs[i:i + batch.MAX_BATCH]
                frames = chunk[0] if len(chunk) == 1 else batch.pack(chunk)
                if peer not in self._connected:
                    self.ensure_link(peer)
                self.transport.send(peer, frames)  # counted as each reply was made
        except Exception as exc:  # a reply that cannot be delivered is dropped, as a single one is
            log.warning("%s %d: cannot answer node %d: %s", self.role, self.id, peer, exc)

    def _on_frames(self, frames: list[Any]) -> None:
        nbytes = sum(memoryview(f).nbytes for f in frames)
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            self._on_malformed(frames, exc)
            return
        with self._count_lock:
            counters = self.counters
            counters["messages_received"] += 1
            counters["bytes_received"] += nbytes
            if msg.table >= 0:
                self.table_bytes[(msg.table, "received")] += nbytes
        if self.config.verbose:
            log.debug("%s %d <- %d: %s", self.role, self.id, msg.sender, msg.describe())
        if msg.filters:
            try:
                msg = self._decode_filters(msg)
            except KeysMissing as exc:
                if not msg.response:
                    self.reply(msg, status=Status.RESEND_KEYS,
                               body=ResendKeys(message=str(exc), ksig=exc.sig).to_wire())
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
        self.count("messages_malformed")
        log.warning("%s %d: dropped a malformed message: %s", self.role, self.id, exc)
        try:  # answer if the header at least names a known sender of a request
            header, _ = decode_header(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
            sender, ts, flags = header[2], header[3], header[4]
            if type(sender) is int and type(ts) is int and ts >= 0 and flags == 0 and sender in self.members.nodes:
                self.reply_error(Message(Op.PING, sender=sender, ts=ts), exc, with_traceback=False)
        except Exception:
            pass

    def _on_response(self, msg: Message) -> None:
        peer = msg.sender
        with self._lock:
            verdict = self.outbox.answer(msg)
            owed = self._unanswered.get(peer)
            if owed:
                owed.discard(msg.ts)
            held = peer in self._held
        if held:
            self._release(peer)  # the peer answered: what waited for it leaves now
        kind, f = verdict.kind, verdict.flight
        if kind is VerdictKind.COMPLETE:
            assert f is not None
            try:
                if f.on_part is not None:
                    f.on_part(msg)
            except Exception as exc:
                f.req.fail(exc)
                return
            f.req.part_done(msg.sender)
        elif kind is VerdictKind.REPAIR:
            sig = msg.body.get("ksig")  # an unreadable signature only means: forget them all
            self._repair(msg.sender, f.req if f is not None else None, verdict.delivery,
                         sig if type(sig) is int else None)
        elif kind is VerdictKind.MOVED:
            assert f is not None
            self._on_moved(msg, f)
        elif kind is VerdictKind.FAIL:
            assert f is not None
            f.req.fail(error_from_body(msg.body, msg.sender, f.req.what))
        elif kind is VerdictKind.UNMATCHED and self.on_unmatched_response is not None:
            self.on_unmatched_response(msg)
        # IGNORE, or UNMATCHED without a taker: a late reply to a request that ended

    def _fail_response(self, msg: Message, exc: PSError) -> None:
        with self._lock:
            f = self.outbox.get(msg.ts)
        if f is not None:
            f.req.fail(exc)

    def _repair(self, peer: int, req: Request | None, d: Delivery | None, sig: int | None) -> None:
        """The peer lost a key list we sent by signature: send that part again with its keys
        (also when its request has ended: an ordered part must still arrive)."""
        if d is None or d.original is None:
            if req is not None:
                req.fail(ProtocolError(f"{req.what}: node {peer} asked for keys that were not sent by signature"))
            return
        for c in d.codecs:
            c.forget(peer, sig)
        msg = d.original
        frames = self._frames(peer, msg)
        self.count("key_repairs")
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
