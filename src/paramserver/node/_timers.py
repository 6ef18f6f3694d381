"""Timers of a node: one-shot and periodic callbacks, kept in a heap and fed the time.

:class:`Timers` never reads a clock and never runs anything itself: :meth:`Timers.due`
is given ``now`` and returns the callbacks whose time has come (rescheduling periodic
ones), and :meth:`Timers.wait` says how long the caller may sleep before the next one.
The node's receive loop (or a caller driving it, see ``_runtime.py``) runs what is due.

Invariants: a periodic timer runs at most once per :meth:`due` call and is rescheduled
to ``when + interval``, or to ``now + interval`` when that is already past, so a stalled
loop never makes it fire in a burst;
timers due at the same time run in the order they were added.

Thread-safety: :meth:`add` may be called from any thread (it is guarded by a lock);
:meth:`due` and :meth:`wait` too.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Timers"]

#: The longest a receive loop sleeps when no timer is due sooner (seconds).
MAX_WAIT = 1.0


@dataclass(slots=True)
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None]
    interval: float  # 0 for one-shot

    def __lt__(self, other: _Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


class Timers:
    """A heap of timers. See the module docstring."""

    __slots__ = ("_heap", "_lock", "_seq")

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def add(self, now: float, delay: float, fn: Callable[[], None], interval: float = 0.0) -> bool:
        """Run ``fn`` at ``now + delay``, then every ``interval`` seconds if it is positive.
        True if it is now the first timer due (a sleeping loop must wake to honour it)."""
        timer = _Timer(now + delay, next(self._seq), fn, interval)
        with self._lock:
            heapq.heappush(self._heap, timer)
            return self._heap[0] is timer

    def due(self, now: float) -> list[Callable[[], None]]:
        """The callbacks due at ``now``, in time order; periodic ones are rescheduled."""
        heap = self._heap
        if not heap or heap[0].when > now:  # the usual case, read without the lock
            return []
        out: list[Callable[[], None]] = []
        with self._lock:
            heap = self._heap
            again: list[_Timer] = []
            while heap and heap[0].when <= now:
                timer = heapq.heappop(heap)
                out.append(timer.fn)
                if timer.interval:
                    nxt = timer.when + timer.interval
                    timer.when = nxt if nxt > now else now + timer.interval
                    again.append(timer)
            for timer in again:
                heapq.heappush(heap, timer)
        return out

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the next timer (at most :data:`MAX_WAIT`, at least 0)."""
        with self._lock:
            if not self._heap:
                return MAX_WAIT
            return max(0.0, min(MAX_WAIT, self._heap[0].when - now))

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)
