"""Request handles: the caller's view of an asynchronous task (a push, a pull, a control call).

A request is created with the set of peers it awaits a part from; each reply marks one
part finished, and the request completes when every part has, or fails at the first error.
Waiting always has a limit: a wait that runs out raises :class:`RequestTimeout` naming the
peers that did not answer.

Thread-safety: every method may be called from any thread. Replies are delivered by the
thread that runs the node's loop: its receive thread, or a user thread that waits for one
of its requests and meanwhile receives for the node (see ``node/_runtime.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import RequestTimeout

__all__ = ["Request"]

log = logging.getLogger("paramserver.request")

_UNSET: Any = object()


class Request:
    """Handle of one asynchronous request.

    Attributes
    ----------
    ts:
        The request's timestamp: unique and increasing within its node.
    what:
        A short description used in error messages ("push to table 'w'").
    """

    __slots__ = (
        "_callbacks",
        "_combine",
        "_default_timeout",
        "_done",
        "_driver",
        "_exc",
        "_lock",
        "_on_wait",
        "_peer_names",
        "_pending",
        "_result",
        "_signal",
        "finished",
        "sent",
        "started",
        "ts",
        "what",
    )

    def __init__(
        self,
        ts: int,
        what: str,
        peers: Iterable[int],
        *,
        default_timeout: float,
        peer_names: Callable[[int], str] = str,
        combine: Callable[[], Any] | None = None,
        on_wait: Callable[[float], None] | None = None,
        driver: Callable[[Request, float], None] | None = None,
    ) -> None:
        self.ts = ts
        self.what = what
        self._pending = set(peers)
        self._lock = threading.Lock()
        # Held until the request finishes; a waiter acquires and at once releases it.
        self._signal = threading.Lock()
        self._signal.acquire()
        self._done = False
        self._result: Any = _UNSET
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Request], None]] = []
        self._default_timeout = default_timeout
        self._peer_names = peer_names
        self._combine = combine
        self._on_wait = on_wait
        #: ``driver(request, limit)``: lets a waiting thread receive for the node (may be None).
        self._driver = driver
        self.started = time.monotonic()
        self.finished = 0.0
        #: True once every part has left (dependencies may delay that).
        self.sent = False
        if not self._pending:  # nothing to wait for (a pull of no keys): done, with its result
            self._finish(self._combine() if self._combine is not None else None, None)

    # ----------------------------------------------------------------- caller side
    def done(self) -> bool:
        """True once the request finished, successfully or not."""
        return self._done

    def wait(self, timeout: float | None = None) -> None:
        """Block until the request finishes; raise its error if it failed.

        Parameters
        ----------
        timeout:
            Seconds to wait at most; ``None`` uses the node's default (PS_TIMEOUT).

        Raises
        ------
        RequestTimeout
            The limit passed first; the message names the peers still awaited.
        PSError
            The request failed (RemoteError, NodeUnavailable, JobAborted, ...).
        """
        self._wait_done(timeout)
        if self._exc is not None:
            raise self._exc

    def _wait_done(self, timeout: float | None) -> None:
        if self._done:
            return
        limit = self._default_timeout if timeout is None else timeout
        start = time.monotonic()
        remaining = limit
        if self._driver is not None and limit > 0:
            # The node may let this thread receive its own reply instead of waking it from
            # the receive thread; it returns when the request is done, the limit passed, or
            # it cannot (another thread receives), and the wait below covers the rest.
            self._driver(self, limit)
            remaining = limit - (time.monotonic() - start)
        got = self._signal.acquire(timeout=min(max(remaining, 0.0), threading.TIMEOUT_MAX))
        if self._on_wait is not None:
            self._on_wait(time.monotonic() - start)
        if got:
            self._signal.release()
        else:
            with self._lock:
                waiting = ", ".join(self._peer_names(p) for p in sorted(self._pending))
            raise RequestTimeout(
                f"{self.what} (ts={self.ts}) timed out after {limit:g} s, still waiting for "
                f"{waiting or 'local work'}; raise the timeout (argument or PS_TIMEOUT) if "
                f"the work is legitimately slow"
            )

    def result(self, timeout: float | None = None) -> Any:
        """Wait (as :meth:`wait`) and return the request's value (the pulled array for a pull)."""
        self.wait(timeout)
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait and return the request's error, or ``None`` if it succeeded.

        Raises
        ------
        RequestTimeout
            The request did not finish within ``timeout``.
        """
        self._wait_done(timeout)
        return self._exc

    def add_done_callback(self, fn: Callable[[Request], None]) -> None:
        """Call ``fn(request)`` when it finishes (at once if it already has).

        Callbacks run in the thread that completes the request: the one running the node's
        loop, which is the receive thread or a user thread waiting for a request of its own.
        Keep them short and never block in them (a callback waiting for a reply that arrived
        in the same batch as its own waits until its timeout).
        """
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    def __repr__(self) -> str:
        state = "done" if self.done() else f"waiting for {sorted(self._pending)}"
        return f"<Request ts={self.ts} {self.what}: {state}>"

    # ------------------------------------------------------------ completion side
    def part_done(self, peer: int) -> None:
        """Mark the part from ``peer`` finished; complete the request after the last."""
        with self._lock:
            if self._done:
                return
            self._pending.discard(peer)
            if self._pending:
                return
        try:
            result = self._combine() if self._combine is not None else None
        except Exception as exc:  # a reply that cannot be combined fails the request, nothing more
            self._finish(None, exc)
            return
        self._finish(result, None)

    def fail(self, exc: BaseException) -> None:
        """Fail the request with ``exc`` (the first failure wins)."""
        self._finish(None, exc)

    def awaits(self, peer: int) -> bool:
        """True if a part from ``peer`` is still outstanding."""
        with self._lock:
            return peer in self._pending

    def _finish(self, result: Any, exc: BaseException | None) -> None:
        with self._lock:
            if self._done:
                return
            self._result = result
            self._exc = exc
            self.finished = time.monotonic()
            self._done = True
            self._signal.release()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a user callback must not take the receive thread down
                log.exception("done-callback %r of %r raised", fn, self)

    def cancel(self, reason: str = "cancelled") -> None:
        """Give up on the request: it fails with :class:`RequestTimeout` and late replies
        are ignored (they no longer write into a caller's ``out=`` buffer)."""
        self._finish(None, RequestTimeout(f"{self.what} (ts={self.ts}) {reason}"))

