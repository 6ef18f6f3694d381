"""A fault-injecting transport wrapper: drops, duplicates and delays received messages.

Wraps any :class:`Transport` and, for each received message that ``affects(frames)``
selects, drops it with probability ``drop``, hands it over twice with probability ``dup``,
or holds it back for up to ``delay_s`` seconds with probability ``delay`` (so that it
arrives after later messages). It exercises resends, duplicate detection and reordering;
settings are PS_DROP_MSG, PS_DUP_MSG, PS_DELAY_MSG and PS_DELAY_MS.

Thread-safety: as for every Transport; :meth:`recv` (the only method with state of its own)
is called by one thread.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._base import NO_ORIGIN, Frames, Origin, Transport

__all__ = ["FaultyTransport"]


class FaultyTransport(Transport):
    """See the module docstring. Probabilities are fractions in [0, 1]."""

    def __init__(self, inner: Transport, *, drop: float = 0.0, dup: float = 0.0, delay: float = 0.0,
                 delay_s: float = 0.1, affects: Callable[[list[Any]], bool] | None = None,
                 seed: int | None = None) -> None:
        self.inner = inner
        self.drop, self.dup, self.delay, self.delay_s = drop, dup, delay, delay_s
        self.affects = affects or (lambda frames: True)
        self._rng = random.Random(seed)
        self._ready: deque[tuple[Origin, list[Any]]] = deque()
        self._held: list[tuple[float, int, tuple[Origin, list[Any]]]] = []
        self.origin = NO_ORIGIN
        self.identity = inner.identity
        self.keys = getattr(inner, "keys", None)
        self._seq = itertools.count()
        self.dropped = self.duplicated = self.delayed = 0

    @property
    def address(self) -> str:
        return self.inner.address


    def bind(self, host: str, port: int = 0) -> str:
        return self.inner.bind(host, port)

    def connect(self, peer: int, address: str, role: str = "") -> None:
        self.inner.connect(peer, address, role)

    def disconnect(self, peer: int) -> None:
        self.inner.disconnect(peer)

    def send(self, peer: int, frames: Frames) -> int:
        return self.inner.send(peer, frames)

    def lost(self) -> list[int]:
        return self.inner.lost()

    def wake(self) -> None:
        self.inner.wake()

    def close(self, linger: float = 1.0) -> None:
        self.inner.close(linger)

    def recv(self, timeout: float | None) -> list[Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._held and self._held[0][0] <= now:
                self._ready.append(heapq.heappop(self._held)[2])
            if self._ready:
                self.origin, ready = self._ready.popleft()
                return ready
            wait = None if deadline is None else max(0.0, deadline - now)
            if self._held:
                due = self._held[0][0] - now
                wait = due if wait is None else min(wait, due)
            frames = self.inner.recv(wait)
            if frames is None:
                if deadline is not None and time.monotonic() >= deadline and not (
                        self._held and self._held[0][0] <= time.monotonic()):
                    return None
                continue
            origin = self.inner.origin
            if not self.affects(frames):
                self.origin = origin
                return frames
            roll = self._rng.random()
            if roll < self.drop:
                self.dropped += 1
                continue
            frames = [memoryview(f).tobytes() for f in frames]  # own copies: held or handed twice
            if roll < self.drop + self.dup:
                self.duplicated += 1
                self._ready.append((origin, list(frames)))
            elif roll < self.drop + self.dup + self.delay:
                self.delayed += 1
                heapq.heappush(self._held, (now + self._rng.uniform(0, self.delay_s), next(self._seq), (origin, frames)))
                continue
            self.origin = origin
            return frames
