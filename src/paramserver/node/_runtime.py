"""The node runtime: one per node, shared by every role; the I/O shell around pure state.

A :class:`Node` owns a transport and drives the pure parts of this layer:

* :class:`~._membership.Membership`: the node table and the cached key map;
* :class:`~._outbox.Outbox`: the requests in flight and what their replies mean;
* :class:`~._timers.Timers`: heartbeats, resends and the roles' periodic work;

through two helpers with I/O: :class:`~._loop.Loop` (who receives: the receive thread, or a
caller waiting for its own reply; draining and batched replies) and
:class:`~._links.Links` (outgoing links, counters, requests held to leave together).

It decodes each incoming message and either completes a pending request (a response) or
calls the handler registered for the message's op (a request). A handler that raises is
answered with an error reply carrying the traceback, and the node keeps serving; a
malformed message is logged and, where its header names a known sender, answered with a
``ProtocolError`` reply.

Thread-safety: :meth:`Node.send`, :meth:`Node.request`, :meth:`Node.call` and the
accessors may be used from any thread. Handlers, response callbacks and timers run one at
a time on the thread running the loop, so role code they touch needs no lock of its own
unless user threads touch it too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._config import Config
from .._errors import (
    ClosedError,
    InvalidArgument,
    JobAborted,
    KeyRangeError,
    NodeUnavailable,
    ProtocolError,
    PSError,
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
    Suspect,
    decode,
    decode_header,
)
from ..transport import FaultyTransport, Transport, ZmqTransport, load_keys
from ._auth import Gate, Known
from ._errors_wire import error_body, error_from_body
from ._info import SCHEDULER_ID, NodeInfo
from ._links import Links
from ._liveness import Heartbeats, register
from ._loop import Loop
from ._membership import Membership, parse_nodes
from ._outbox import MAX_REROUTES, Delivery, Flight, Outbox, PartCallback, Reroute, VerdictKind, is_ordered
from ._rejoin import SchedulerLink
from ._replies import Arrival, ReplyCache
from ._timers import Timers
from ._wirefilters import WireFilters

__all__ = ["Node", "Stamp", "process_info"]

log = logging.getLogger("paramserver.node")

Handler = Callable[[Message], None]

class Stamp(Protocol):
    """Numbers a part in its channel as it leaves (see :meth:`Node.send_part`)."""

    def take(self, peer: int, msg: Message) -> None:
        """Stamp ``msg`` for ``peer`` (it is about to be encoded and sent)."""

    def give_back(self, peer: int, msg: Message) -> None:
        """``msg`` could not leave after all: return its number if no later one was taken."""


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
        self.transport = transport if transport is not None else ZmqTransport(
            keys=load_keys(config.keys, role) if config.keys else None, insecure=config.insecure,
            max_message_bytes=config.max_message_bytes, rcvhwm=config.rcvhwm)
        #: Sender binding and the authorisation table (node/_auth.py).
        self.gate = Gate(role, getattr(self.transport, "keys", None) is not None, self._member,
                         lambda ts: self.outbox.get(ts) is not None)
        self.id = SCHEDULER_ID if role == "scheduler" else -1
        self.members = Membership()
        self.outbox = Outbox()
        #: Control requests seen and their answers: a resent one is answered again (_replies.py).
        self.replies = ReplyCache()
        self.timers = Timers()
        self._handlers: dict[Op, Handler] = {
            Op.PING: lambda m: self.reply(m),
            Op.NODES: self._on_nodes,
            Op.SHUTDOWN: self._on_shutdown,
        }
        self._lock = threading.RLock()
        self._ts = 0
        self._running = False
        self._aborted: PSError | None = None
        self.heartbeats = Heartbeats(self)
        #: The contact with the scheduler across its restarts: rejoins, scheduler-bound calls.
        self.scheduler = SchedulerLink(self)
        if config.faults:
            self.transport = FaultyTransport(
                self.transport, drop=config.drop_msg / 100, dup=config.dup_msg / 100,
                delay=config.delay_msg / 100, delay_s=config.delay_ms / 1000,
                seed=None if config.fault_seed < 0 else config.fault_seed)
        self.links = Links(self.transport, self.call_later)
        # Batches (corked replies, held requests) are off under fault injection, which judges
        # each message by its header.
        self.loop = Loop(f"paramserver-{role}-recv", self.transport, self.timers, handle=self._on_frames,
                         send=self._send_raw, before_wait=self.links.release_all, batching=not config.faults,
                         malformed=self._on_malformed_batch, lost=self._on_lost)
        self._resend_after = config.resend_after()
        self.filters = WireFilters(self.links.count_filter)
        self._decoders = self.filters.decoders  # the same dict (tests reach into it)

        #: Counters: messages and bytes sent and received, resends, reroutes, repairs...
        self.counters = self.links.counters
        self.table_bytes = self.links.table_bytes
        self.filter_bytes = self.links.filter_bytes
        #: Called with the nodes that are gone after the node table or key map changed.
        self.on_nodes_changed: list[Callable[[set[int]], None]] = []
        #: Called when the job ends (scheduler lost or shutdown).
        self.on_abort: list[Callable[[PSError], None]] = []
        #: Called with responses no pending request awaits.
        self.on_unmatched_response: Callable[[Message], None] | None = None
        #: Called on the loop with each peer whose established link broke (its process
        #: died or closed its endpoint); by default reported to the scheduler (Op.SUSPECT),
        #: which probes it. The scheduler's shell replaces it.
        self.on_link_lost: Callable[[int], None] = self._report_lost

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
        self.loop.start()
        return address

    def close(self, linger: float = 1.0) -> None:
        """Stop the loop, fail what is pending with :class:`ClosedError`, close."""
        self._running = False
        self.loop.stop()
        got = self.loop.exclusive(timeout=10)  # a leading caller stops at its next step
        try:
            self._fail_all(ClosedError(f"{self.role} {self.id} was closed"))
            self.transport.close(linger)
        finally:
            if got:
                self.loop.release()

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

    def set_nodes(self, nodes: list[NodeInfo], keymap: KeyMap | None, dead: set[int], version: int = 0,
                  *, restarted: bool = False) -> None:
        """Replace the node table (and key map, if given) unless ``version`` shows it is stale
        (:meth:`Membership.update`); fail requests awaiting ``dead``."""
        with self._lock:
            old = dict(self.members.nodes)
            change = self.members.update(nodes, keymap, dead, version=version, restarted=restarted)
        self.links.repoint(change.moved_links)
        self.scheduler.nodes_left({n: old[n] for n in change.gone if n in old})
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
        self.links.drop(node, close=node != SCHEDULER_ID)
        with self._lock:
            waiting = self.outbox.peer_gone(node)
            self.filters.forget(node)
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
    def connect(self, node: int, address: str, role: str = "") -> None:
        """Open the link to ``node`` at ``address`` (used before the node table knows it);
        ``role`` names the key it listens with (default: the scheduler's for node 0)."""
        self.links.connect(node, address, role or ("scheduler" if node == SCHEDULER_ID else ""))

    def _member(self, node: int) -> Known | None:
        return self.members.nodes.get(node)

    def ensure_link(self, node: int) -> None:
        """Open the link to ``node`` from the node table if it is not open yet.

        Raises
        ------
        NodeUnavailable
            ``node`` is not in the node table.
        """
        self.links.ensure(node, self.members.nodes.get(node))

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
        frames = self._frames(node, msg)
        if msg.response and msg.request_key is not None:
            self.replies.answered(msg.request_key, node, frames)
        nbytes = self._send_frames(node, frames, msg.table)
        if self.config.verbose:
            log.debug("%s %d -> %d: %s", self.role, self.id, node, msg.describe())
        return nbytes

    def _frames(self, peer: int, msg: Message) -> list[Any]:
        frames = self.filters.frames(peer, msg)
        limit = self.config.max_message_bytes
        if limit:
            nbytes = sum(memoryview(f).nbytes for f in frames)
            if nbytes > limit:
                raise InvalidArgument(f"{msg.describe()}: {nbytes:,} bytes exceed PS_MAX_MESSAGE_BYTES={limit:,}; "
                                      f"send fewer keys per request (or raise the limit on every node)")
        return frames

    def encoder(self, name: str) -> Codec:
        """A filter with default settings, to encode replies as a request asked."""
        return self.filters.encoder(name)

    def _send_frames(self, node: int, frames: list[Any], table: int) -> int:
        """Send encoded ``frames`` to ``node`` and count them; return the bytes sent. Replies
        the loop corked for ``node`` leave first (answers and requests keep their order)."""
        self.loop.uncork(node)
        self.ensure_link(node)
        return self.links.send(node, frames, table)

    def _send_raw(self, node: int, frames: list[Any]) -> None:
        """The loop's way out for corked replies (counted as they were made)."""
        self.ensure_link(node)
        self.transport.send(node, frames)

    def reply(self, request: Message, *, status: Status = Status.OK, body: dict[str, Any] | None = None,
              arrays: list[Any] | None = None, codecs: tuple[Codec, ...] = ()) -> None:
        """Answer ``request`` (through ``codecs``); a reply that cannot be delivered is logged and dropped."""
        try:
            msg = request.reply(status=status, body=body, arrays=arrays)
            msg.codecs = codecs
            if self.loop.batching and self.loop.holds():
                msg.sender = self.id
                frames = self._frames(request.sender, msg)
                if msg.request_key is not None:
                    self.replies.answered(msg.request_key, request.sender, frames)
                if self.loop.cork(request.sender, frames):  # leaves with the step's other replies
                    self.links.count_message("sent", sum(memoryview(f).nbytes for f in frames), msg.table)
                    return
                self._send_frames(request.sender, frames, msg.table)
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
                      driver=self.loop.drive)
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
            if coalesce and self.loop.batching and self.links.hold(req.ts, peer, frames, msg.table):
                return True
            self.loop.uncork(peer)  # (the link was opened above, before the part took a number)
            self.links.send(peer, frames, msg.table)
        except NodeUnavailable as exc:
            if flight is not None and reroute is not None and peer not in self.members.nodes:
                # the peer died while the part was leaving (its link closed under us): the
                # part goes to the new owners of its keys, as if it had been sent before
                with self._lock:
                    flight.sent.setdefault(peer, msg)
                    first = flight.claim(peer)
                if first:
                    self._reroute(flight, peer, exc)
                return not req.done()
            req.fail(exc)
            return False
        except PSError as exc:
            req.fail(exc)
            return False
        return True

    def request(self, parts: dict[int, Message], what: str, *, on_part: PartCallback | None = None,
                combine: Callable[[], Any] | None = None, timeout: float | None = None,
                reroute: Reroute | None = None) -> Request:
        """Send one message per peer as one request; return its handle at once (see
        :meth:`open` and :meth:`send_part`)."""
        req = self.open(tuple(parts), what, on_part=on_part, combine=combine, timeout=timeout, reroute=reroute)
        for peer, msg in parts.items():
            if not self.send_part(req, peer, msg, resend=True):
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

    def _on_lost(self, peers: list[int]) -> None:
        for peer in peers:
            self.on_link_lost(peer)

    def _report_lost(self, peer: int) -> None:
        """Tell the scheduler that the link to ``peer`` broke (a member, while the job runs)."""
        if self.id < 0 or peer == SCHEDULER_ID or peer not in self.members.nodes or self._aborted is not None:
            return
        log.info("%s %d: the connection to %s broke; telling the scheduler", self.role, self.id,
                 self.describe_peer(peer))
        body = Suspect(node=peer, why=f"seen by {self.role} {self.id}").to_wire()
        self.request({SCHEDULER_ID: Message(Op.SUSPECT, body=body)}, f"the report that node {peer} is lost",
                     timeout=self.config.scheduler_timeout)

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
        self.links.count("wait_ns", int(seconds * 1e9))

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``. Thread-safe."""
        self.links.count(name, n)

    def snapshot_counters(self) -> tuple[dict[str, int], dict[tuple[int, str], int], dict[tuple[int, str, str], list[int]]]:
        """Copies of the counters, per-table bytes and per-filter bytes, read together."""
        return self.links.snapshot()

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
            self.outbox.close(req.ts)
        if flight is not None:
            self.links.settled(req.ts, flight.peers)  # an ended request owes nothing (a cancelled pull)

    def _fail_all(self, exc: PSError) -> None:
        with self._lock:
            pending = self.outbox.requests()
        for req in pending:
            req.fail(exc)

    # ------------------------------------------------------------------ registration
    def register(self, scheduler: str, body: dict[str, Any], timeout: float,
                 on_reply: Callable[[Message], None] | None = None, *, limit: str = "PS_CONNECT_TIMEOUT",
                 quiet: bool = False) -> Message:
        """Join the cluster through the scheduler at ``scheduler``; return its reply (see
        :func:`~._liveness.register`: ``limit`` names the timeout in messages, ``quiet``
        leaves out the early warning that it waits).

        Raises
        ------
        ConnectError
            No scheduler answered, or the job did not start, within ``timeout`` seconds.
        """
        self.gate.registering = True  # the answer, and only it, tells whose connection is the scheduler's
        if self.role != "client":  # sent again if the scheduler goes silent: it knows the nonce
            body = {**body, "nonce": int.from_bytes(os.urandom(6), "big") or 1}
        try:
            reply = register(self, scheduler, body, timeout, on_reply, limit=limit, quiet=quiet)
        finally:
            self.gate.registering = False
        self.scheduler.registered(RegisterReply.from_wire(reply.body).incarnation)
        return reply

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
        self.heartbeats.start()

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
        if first and not self.loop.holds():
            self.transport.wake()

    # ------------------------------------------------------------------ receiving
    def _on_frames(self, frames: list[Any]) -> None:
        nbytes = sum(memoryview(f).nbytes for f in frames)
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            self._on_malformed(frames, exc)
            return
        self.links.count_message("received", nbytes, msg.table)
        origin = self.transport.origin
        msg.peer, msg.auth = origin.peer, origin.role
        self.gate.current_peer = origin.peer
        if not self.gate.admit(msg, msg.response or msg.op in self._handlers):
            self.links.count("messages_refused")
            return
        if self.config.verbose:
            log.debug("%s %d <- %d: %s", self.role, self.id, msg.sender, msg.describe())
        if msg.filters:
            try:
                msg = self.filters.decode(msg)
            except KeysMissing as exc:
                if not msg.response:
                    self.reply(msg, status=Status.RESEND_KEYS,
                               body=ResendKeys(message=str(exc), ksig=exc.sig).to_wire())
                return
            except ProtocolError as exc:
                self.gate.warn_once("filters", "%s %d: cannot decode the filters of %s: %s", self.role, self.id,
                                    msg.describe(), exc)
                if not msg.response:
                    self.reply_error(msg, exc, with_traceback=False)
                else:
                    self._fail_response(msg, exc)
                return
        if msg.response:
            self._on_response(msg)
        else:
            self._on_request(msg)

    def _on_malformed_batch(self) -> None:
        self.count("messages_malformed")
        self.gate.current_peer = self.transport.origin.peer
        self.gate.warn_once("batch", "%s %d: dropped a malformed batch", self.role, self.id)

    def _on_malformed(self, frames: list[Any], exc: ProtocolError) -> None:
        self.count("messages_malformed")
        self.gate.current_peer = self.transport.origin.peer
        self.gate.warn_once("malformed", "%s %d: dropped a malformed message: %s", self.role, self.id, exc)
        try:  # answer if the header at least names a known sender of a request
            header, _ = decode_header(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
            sender, ts, flags = header[2], header[3], header[4]
            member = self.gate.member(sender) if type(sender) is int else None
            if (type(ts) is int and ts >= 0 and flags == 0 and member is not None
                    and member.identity in (b"", self.transport.origin.peer)):
                self.reply_error(Message(Op.PING, sender=sender, ts=ts), exc, with_traceback=False)
        except Exception:
            pass

    def _on_response(self, msg: Message) -> None:
        with self._lock:
            verdict = self.outbox.answer(msg)
        if self.links.answered(msg.sender, msg.ts):
            self.links.release(msg.sender)  # the peer answered: what waited for it leaves now
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
        if msg.op < _FIRST_DATA_OP and msg.ts > 0:  # a control request may come again (a resend): answer it once
            key = (msg.peer, msg.sender, msg.ts)
            seen = self.replies.arrive(key)
            if seen is Arrival.BUSY:
                self.count("duplicates_dropped")
                return
            if seen is not Arrival.NEW:
                assert not isinstance(seen, Arrival)
                peer, frames = seen
                self.count("replies_resent")
                try:
                    self._send_frames(peer, frames, msg.table)
                except PSError:
                    pass  # the asker is gone
                return
            msg.request_key = key
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


#: Operations from here on are data operations, made exactly-once by other means (see _replies.py).
_FIRST_DATA_OP = Op.PUSH


def process_info() -> dict[str, Any]:
    """The fields of this process that a registration carries."""
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}
