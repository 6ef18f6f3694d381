"""The node's loop: who receives, timers, draining, and replies that leave in batches.

The loop receives what reaches the node's endpoint, runs due timers, and hands each
message to the node. It runs on whichever thread holds the *baton*: normally the receive
thread this module starts, but a user thread that waits for one of its requests takes the
baton over (:meth:`Loop.drive`) and receives its own reply, which saves a thread hand-off
on every synchronous call. The receive thread steps aside while a caller leads, and for
:data:`YIELD_S` after one left (a synchronous loop comes straight back); a second waiting
caller waits for the baton in slices of :data:`LEAD_SLICE_S` and takes it when it is free.

One *step* handles what has arrived, up to :data:`DRAIN` messages or :data:`DRAIN_S`
seconds, before the replies it made (:meth:`Loop.cork`) leave: one message, or one batch
(``_batch.py``), per peer. A reply to a peer leaves before a request the step sends it
(:meth:`Loop.uncork`), so a peer sees answers and requests in the order they were made.

Invariants: handlers, callbacks and timers run one at a time, on the baton's holder;
nothing a peer sends and no error of a step stops the loop; corking is re-entrant (a
callback that waits on the leading thread runs nested steps with corks of their own).

Thread-safety: :meth:`drive`, :meth:`cork`, :meth:`uncork` and :meth:`holds` may be called
from any thread; :meth:`step` only by the baton's holder.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .._errors import ProtocolError
from ..clock import Request
from ..transport import Transport
from . import _batch as batch
from ._timers import Timers

__all__ = ["DRAIN", "DRAIN_S", "LEAD_SLICE_S", "YIELD_S", "Loop"]

log = logging.getLogger("paramserver.node")

#: How long the receive thread stays aside after a caller gave the baton back (seconds).
YIELD_S = 0.002
#: The most messages one step handles before the replies it made leave.
DRAIN = 64
#: The longest one step drains before the replies it made leave (seconds).
DRAIN_S = 0.005
#: A leading caller checks its request at least this often; a waiting one tries to lead.
LEAD_SLICE_S = 0.001

Frames = list[Any]


class Loop:
    """The loop of one node. See the module docstring.

    Parameters
    ----------
    name:
        The receive thread's name.
    transport, timers:
        The node's endpoint and timers.
    handle:
        Called with each message received (its frames; a batch is unpacked first).
    send:
        Sends frames to a peer (used to flush corked replies); may raise.
    before_wait:
        Called when a caller starts to wait (the node releases held requests).
    batching:
        Cork replies and drain (off under fault injection, which judges single messages).
    malformed:
        Called for each malformed batch envelope (the node counts them).
    lost:
        Called with the peers whose link broke (:meth:`Transport.lost`), after each receive.
    """

    def __init__(self, name: str, transport: Transport, timers: Timers, *, handle: Callable[[Frames], None],
                 send: Callable[[int, Frames], None], before_wait: Callable[[], None], batching: bool,
                 malformed: Callable[[], None] = lambda: None,
                 lost: Callable[[list[int]], None] = lambda peers: None) -> None:
        self.name = name
        self.transport = transport
        self.timers = timers
        self.batching = batching
        self._handle_one = handle
        self._send = send
        self._before_wait = before_wait
        self._malformed = malformed
        self._lost = lost
        self._thread: threading.Thread | None = None
        self.running = False
        self._baton = threading.Lock()
        self._owner: int | None = None  # thread id of the baton's holder
        self._leaders = 0  # callers leading or waiting to
        self._leaders_lock = threading.Lock()
        self._led_at = 0.0  # when a caller last gave the baton back
        self._corked: dict[int, list[Frames]] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.running = True
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the receive thread (a leading caller stops at its next step)."""
        self.running = False
        self.transport.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def holds(self) -> bool:
        """True if this thread holds the baton (it runs the loop now)."""
        return self._owner == threading.get_ident()

    def exclusive(self, timeout: float) -> bool:
        """Take the baton for work outside the loop (closing); False if this thread holds it
        already or it could not be had in ``timeout`` seconds. Release with :meth:`release`."""
        if self.holds():
            return False
        return self._baton.acquire(timeout=timeout)

    def release(self) -> None:
        self._baton.release()

    def _run(self) -> None:
        me = threading.get_ident()
        while self.running:
            if self._leaders or time.monotonic() - self._led_at < YIELD_S:
                time.sleep(YIELD_S)
                continue
            with self._baton:
                if not self.running:
                    break
                self._owner = me
                try:
                    self.step(None)
                except Exception:  # nothing may stop this loop
                    log.exception("%s: loop step failed", self.name)
                finally:
                    self._owner = None

    # ------------------------------------------------------------------ callers
    def drive(self, req: Request, limit: float) -> None:
        """Receive and dispatch on this thread until ``req`` is done or ``limit`` seconds
        passed; returns at once on the receive thread (handlers and timers never wait on
        their own loop). The request's own wait covers whatever is left."""
        self._before_wait()
        me = threading.get_ident()
        deadline = time.monotonic() + limit
        thread = self._thread
        if not self.running or thread is None or thread.ident == me:
            return
        if self._owner == me:  # a callback run by this leading caller waits: go on here
            while self.running and not req.done() and (left := deadline - time.monotonic()) > 0:
                self.step(min(left, LEAD_SLICE_S))
            return
        got = False
        try:
            with self._leaders_lock:
                self._leaders += 1
            while not req.done() and self.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._baton.acquire(blocking=False):
                    got = True
                    break
                if self._owner == thread.ident:
                    self.transport.wake()  # the receive thread steps aside at its next step
                got = self._baton.acquire(timeout=min(left, LEAD_SLICE_S))
                if got:
                    break
            if not got:
                return
            self._owner = me
            while self.running and not req.done() and (left := deadline - time.monotonic()) > 0:
                # in slices: a request completed by another thread (a cancel) is seen soon
                self.step(min(left, LEAD_SLICE_S))
        finally:
            if got:
                self._owner = None
                self._led_at = time.monotonic()
                self._baton.release()
            with self._leaders_lock:
                self._leaders -= 1

    # ------------------------------------------------------------------ replies
    def cork(self, peer: int, frames: Frames) -> bool:
        """Keep a reply to ``peer`` until the end of the step; False (send it now) unless this
        thread runs a step that corks."""
        corked = self._corked
        if corked is None or self._owner != threading.get_ident():
            return False
        corked.setdefault(peer, []).append(frames)
        return True

    def uncork(self, peer: int) -> None:
        """Send the replies corked for ``peer`` now (a request to it is about to leave)."""
        corked = self._corked
        if corked and peer in corked and self._owner == threading.get_ident():
            self._flush_peer(peer, corked.pop(peer))

    # ------------------------------------------------------------------ steps
    def step(self, limit: float | None) -> None:
        """Run due timers, then receive what has arrived (waiting at most until the next
        timer, or ``limit``) and handle it. Called by the baton's holder only."""
        now = time.monotonic()
        for fn in self.timers.due(now):
            try:
                fn()
            except Exception:
                log.exception("%s: timer %r failed", self.name, fn)
        wait = self.timers.wait(time.monotonic())
        if limit is not None and limit < wait:
            wait = limit
        try:
            frames = self.transport.recv(wait)
        except Exception:
            if self.running:
                log.exception("%s: receive failed", self.name)
                time.sleep(0.05)
            return
        lost = self.transport.lost()
        if lost:
            try:
                self._lost(lost)
            except Exception:
                log.exception("%s: handling lost links failed", self.name)
        if frames is None:
            return
        if not self.batching:
            self._handle(frames)
            return
        outer = self._corked
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
            for peer in list(out):
                self._flush_peer(peer, out.pop(peer))

    def _handle(self, frames: Frames) -> None:
        """Handle one transport message (a message, or a batch of them, each on its own)."""
        try:
            parts = batch.unpack(frames) if batch.is_batch(frames) else [frames]
        except ProtocolError as exc:
            self._malformed()
            log.debug("%s: dropped a malformed batch: %s", self.name, exc)  # (the node logs it once per peer)
            return
        for part in parts:
            try:
                self._handle_one(part)
            except Exception:  # nothing a peer sends may stop this loop, nor the rest of a batch
                log.exception("%s: error while handling a message", self.name)

    def _flush_peer(self, peer: int, msgs: list[Frames]) -> None:
        try:
            for i in range(0, len(msgs), batch.MAX_BATCH):
                chunk = msgs[i:i + batch.MAX_BATCH]
                self._send(peer, chunk[0] if len(chunk) == 1 else batch.pack(chunk))
        except Exception as exc:  # a reply that cannot be delivered is dropped, as a single one is
            log.warning("%s: cannot answer node %d: %s", self.name, peer, exc)
