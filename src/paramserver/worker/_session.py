"""A worker's session with the cluster: how its requests leave.

:class:`Session` is what tables and checkpoints talk to. It owns:

* the worker's iteration (``clock``) and the lock under which a request reads it and is
  registered with its table, so that a clock tick never overtakes a push of its iteration;
* the channel sequence numbers: per (table, server), ordered messages (pushes, clock
  ticks) are numbered 1, 2, 3... as they leave, and other requests carry the last number
  sent (read-your-writes); a server applies a channel's messages once each, in order;
* the low-water mark a push carries (the oldest request still in flight), read once per
  request;
* dependencies (execute-after-finished): a request leaves once every request it depends on
  has finished, and fails with the first dependency's error;
* the one path by which parts travel again: a part whose server answered "moved" or left
  the key map is re-sliced by its table and sent, through :meth:`Session.request`, as a
  child request whose completion completes that part.

Invariants: a sequence number is taken only by a part that leaves (a part rerouted before
leaving takes none), so a channel never has a gap that no message fills; nothing is sent
while a table's lock is held.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import ClosedError, InvalidArgument, RequestTimeout
from ..clock import Request
from ..node import Node, PartCallback, Reroute
from ..placement import KeyMap
from ..protocol import Message, Op

__all__ = ["Session", "wait_result"]


def wait_result(req: Request, timeout: float | None) -> Any:
    """The result of a blocking call; on a timeout the request is cancelled (no late writes)."""
    try:
        return req.result(timeout)
    except RequestTimeout:
        req.cancel("was cancelled after its wait timed out")
        raise


class Session:
    """The request side of one worker. See the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: The worker's current iteration; read and changed under :attr:`iteration_lock`.
        self.clock = 0
        #: Held while a request reads the iteration and joins its table's in-flight list,
        #: and while the iteration advances. Never held while sending.
        self.iteration_lock = threading.Lock()
        self.closed = False
        self.requests = 0
        #: Checkpoints whose manifest this worker wrote, and the iteration of the last one.
        self.checkpoints = 0
        self.checkpoint_iteration = -1
        self._seq: dict[tuple[int, int], int] = {}  # (table, server) -> last ordered number sent
        self._seq_lock = threading.Lock()

    # ------------------------------------------------------------------ state
    def check_open(self) -> None:
        """Raise if the worker is closed or the job has ended."""
        if self.closed:
            raise ClosedError("the worker is closed; connect again with paramserver.connect()")
        aborted = self.node.aborted
        if aborted is not None:
            raise aborted

    def keymap(self) -> KeyMap:
        """The cached key map (checks the session is open)."""
        self.check_open()
        keymap = self.node.keymap
        assert keymap is not None, "registered workers always have a key map"
        return keymap

    def last_seqs(self, server: int) -> list[list[int]]:
        """``[[table, seq], ...]``: the last ordered number sent to ``server`` per table."""
        with self._seq_lock:
            return [[table, seq] for (table, srv), seq in sorted(self._seq.items()) if srv == server]

    def resolve(self, deps: Any) -> list[Request]:
        """Dependencies given as requests or timestamps -> the unfinished requests.

        Raises
        ------
        InvalidArgument
            An entry is neither a Request nor an int timestamp.
        """
        if deps is None:
            return []
        out = []
        for d in deps if isinstance(deps, (list, tuple, set)) else [deps]:
            if isinstance(d, Request):
                out.append(d)
            elif isinstance(d, int) and not isinstance(d, bool):
                req = self.node.pending_request(d)
                if req is not None:
                    out.append(req)
            else:
                raise InvalidArgument(f"deps must be requests or timestamps, got {d!r}")
        return out

    # ------------------------------------------------------------------ requests
    def open(self, parts: dict[int, Message], what: str, *, on_part: PartCallback | None = None,
             combine: Callable[[], Any] | None = None, timeout: float | None = None,
             reroute: Reroute | None = None) -> Request:
        """A request awaiting a part from each server of ``parts``; send it with :meth:`launch`."""
        self.check_open()
        with self._seq_lock:
            self.requests += 1
        return self.node.open(tuple(parts), what, on_part=on_part, combine=combine, timeout=timeout,
                              reroute=reroute)

    def launch(self, req: Request, parts: dict[int, Message], *, table: int = -1, ordered: bool = False,
               after: Sequence[Request] = ()) -> None:
        """Send ``parts`` of ``req`` once every request of ``after`` has finished (at once if
        none); a failed dependency fails ``req`` with the same error."""
        for dep in after:
            if dep.done() and dep.exception(timeout=0) is not None:
                req.fail(dep.exception(timeout=0))  # type: ignore[arg-type]
                return
        blockers = [d for d in after if not d.done()]
        if not blockers:
            self._send(req, parts, table, ordered)
            return
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
                self._send(req, parts, table, ordered)

        for dep in blockers:
            dep.add_done_callback(dependency_done)

    def request(self, parts: dict[int, Message], what: str, *, table: int = -1, ordered: bool = False,
                on_part: PartCallback | None = None, combine: Callable[[], Any] | None = None,
                timeout: float | None = None, reroute: Reroute | None = None) -> Request:
        """Open and send at once (no dependencies): control requests and parts sent on."""
        req = self.open(parts, what, on_part=on_part, combine=combine, timeout=timeout, reroute=reroute)
        self._send(req, parts, table, ordered)
        return req

    def _send(self, req: Request, parts: dict[int, Message], table: int, ordered: bool) -> None:
        stamp = _ChannelStamp(self, table, ordered)
        for server, msg in parts.items():
            if not self.node.send_part(req, server, msg, resend=True, stamp=stamp, coalesce=table >= 0):
                break
        req.sent = True

    def take_seq(self, table: int, server: int, ordered: bool) -> int:
        """The number a part to ``server`` of ``table`` carries: the next one of its channel if
        ``ordered``, else the last one taken (what the part must see, read-your-writes)."""
        key = (table, server)
        with self._seq_lock:
            if ordered:
                seq = self._seq[key] = self._seq.get(key, 0) + 1
                return seq
            return self._seq.get(key, 0)

    def give_back_seq(self, table: int, server: int, seq: int) -> None:
        """Return ``seq`` of a part that could not leave, if it is still the channel's last."""
        key = (table, server)
        with self._seq_lock:
            if self._seq.get(key) == seq:
                self._seq[key] = seq - 1


class _ChannelStamp:
    """Stamps the parts of one request as they leave: channel numbers and, on pushes, the
    low-water mark (read once per request: an earlier mark is still a true one)."""

    __slots__ = ("low_water", "ordered", "session", "table")

    def __init__(self, session: Session, table: int, ordered: bool) -> None:
        self.session = session
        self.table = table
        self.ordered = ordered
        self.low_water = -1

    def take(self, peer: int, msg: Message) -> None:
        if msg.op == Op.PUSH:  # servers keep which keys of the pushes in flight they applied
            if self.low_water < 0:
                self.low_water = self.session.node.low_water()
            msg.body["lw"] = self.low_water
        if self.table >= 0:
            msg.seq = self.session.take_seq(self.table, peer, self.ordered)

    def give_back(self, peer: int, msg: Message) -> None:
        if self.table >= 0 and self.ordered:
            self.session.give_back_seq(self.table, peer, msg.seq)
            msg.seq = 0
