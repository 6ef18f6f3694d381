"""Range vector clocks (the paper, section 3): one time per key range, not per key.

A :class:`RangeClock` assigns an integer time to every key of ``[0, 2**64)`` as a sorted list
of ranges. Setting time ``t`` on ``[lo, hi)`` splits each overlapping range into at most
three pieces and gives only the overlap ``t``; adjacent ranges with equal times then merge,
so the memory is O(distinct ranges), never O(keys). Queries give the minimum or maximum
time over a range.

A node keeps one clock per peer (a "vector" of them): servers keep, per table and per
worker, the last push applied and the last iteration completed on each range.

Not thread-safe: each clock belongs to one thread (a server's receive thread).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from .._errors import InvalidArgument, ProtocolError
from ..protocol import KEY_SPACE

__all__ = ["RangeClock"]


def _check(lo: int, hi: int) -> None:
    if not 0 <= lo < hi <= KEY_SPACE:
        raise InvalidArgument(f"invalid key range [{lo}, {hi}): need 0 <= lo < hi <= 2**64")


class RangeClock:
    """Times over the key space, kept as ranges ``[starts[i], starts[i+1])`` with ``times[i]``.

    Invariants: ``starts[0] == 0``; starts strictly increase; adjacent times differ.
    """

    __slots__ = ("_starts", "_times")

    def __init__(self, time: int = 0) -> None:
        self._starts: list[int] = [0]
        self._times: list[int] = [time]

    def __len__(self) -> int:
        """The number of ranges."""
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """``(lo, hi, time)`` for every range, in key order."""
        ends = [*self._starts[1:], KEY_SPACE]
        return iter(zip(self._starts, ends, self._times, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeClock) and (self._starts, self._times) == (other._starts, other._times)

    def __repr__(self) -> str:
        parts = ", ".join(f"[{lo:#x},{hi:#x}):{t}" for lo, hi, t in self)
        return f"RangeClock({parts})"

    def get(self, key: int) -> int:
        """The time of one key."""
        return self._times[bisect_right(self._starts, key) - 1]

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices of the first and last ranges overlapping ``[lo, hi)``."""
        return bisect_right(self._starts, lo) - 1, bisect_right(self._starts, hi - 1) - 1

    def min(self, lo: int = 0, hi: int = KEY_SPACE) -> int:
        """The smallest time of any key in ``[lo, hi)``."""
        _check(lo, hi)
        i, j = self._span(lo, hi)
        return min(self._times[i : j + 1])

    def max(self, lo: int = 0, hi: int = KEY_SPACE) -> int:
        """The largest time of any key in ``[lo, hi)``."""
        _check(lo, hi)
        i, j = self._span(lo, hi)
        return max(self._times[i : j + 1])

    def set(self, lo: int, hi: int, time: int) -> None:
        """Give every key of ``[lo, hi)`` the time ``time``."""
        _check(lo, hi)
        i, j = self._span(lo, hi)
        after = self._times[j]  # the time of keys from hi on, inside range j
        starts: list[int] = []
        times: list[int] = []
        if self._starts[i] < lo:  # keep the left piece of range i
            starts.append(self._starts[i])
            times.append(self._times[i])
        starts.append(lo)
        times.append(time)
        next_start = self._starts[j + 1] if j + 1 < len(self._starts) else KEY_SPACE
        if hi < next_start:  # keep the right piece of range j
            starts.append(hi)
            times.append(after)
        self._starts[i : j + 1] = starts
        self._times[i : j + 1] = times
        self._merge(max(i - 1, 0), i + len(starts) + 1)

    def advance(self, lo: int, hi: int, time: int) -> None:
        """Raise every key of ``[lo, hi)`` to at least ``time`` (times never go back)."""
        _check(lo, hi)
        i, j = self._span(lo, hi)
        if min(self._times[i : j + 1]) >= time:
            return
        if max(self._times[i : j + 1]) <= time:
            self.set(lo, hi, time)
            return
        for rlo, rhi, t in list(self):  # mixed: only the ranges below time move
            if rhi <= lo or rlo >= hi or t >= time:
                continue
            self.set(max(lo, rlo), min(hi, rhi), time)

    def _merge(self, a: int, b: int) -> None:
        """Merge equal neighbours among ranges a..b (bounds clipped)."""
        k = max(a, 1)
        end = min(b, len(self._starts) - 1)
        while k <= end and k < len(self._starts):
            if self._times[k] == self._times[k - 1]:
                del self._starts[k]
                del self._times[k]
                end -= 1
            else:
                k += 1

    # ------------------------------------------------------------------ wire
    def to_wire(self) -> list[list[int]]:
        """``[[start, time], ...]``: msgpack-able, for replication and checkpoints."""
        return [[s, t] for s, t in zip(self._starts, self._times, strict=True)]

    @classmethod
    def from_wire(cls, data: Any) -> RangeClock:
        """Inverse of :meth:`to_wire`; raises :class:`ProtocolError` when malformed."""
        try:
            starts = [int(s) for s, _ in data]
            times = [int(t) for _, t in data]
        except (TypeError, ValueError):
            raise ProtocolError("a range clock must be a list of [start, time] pairs") from None
        if not starts or starts[0] != 0 or any(b <= a for a, b in pairwise(starts)) \
                or starts[-1] >= KEY_SPACE:
            raise ProtocolError("range clock starts must begin at 0 and increase within [0, 2**64)")
        clock = cls()
        clock._starts, clock._times = starts, times
        clock._merge(1, len(starts))
        return clock
