"""The key ranges one server masters under one key map, for checks by range.

:class:`Ownership` is built once per key map (it is immutable, like the map) and answers,
for the sorted keys of a request, "does this server master all of them, and in which of its
ranges" with two comparisons of Python ints when the keys lie in one range (the usual case),
else one ``np.searchsorted`` against the server's own ranges. The same answer gives the
replication plan: the replica chain of that range.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from .._errors import ProtocolError
from ..placement import KEY_SPACE, KeyMap, in_ranges, positions
from ..protocol import KEY_DTYPE

__all__ = ["SPANNING", "Ownership", "check_keys"]

#: ``range_of``: the keys are all mastered here but lie in several ranges.
SPANNING = -1


def check_keys(keys: np.ndarray) -> None:
    """Keys of a request must be 1-D uint64, strictly increasing (sorted and distinct)."""
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        raise ProtocolError(f"keys must be a 1-D uint64 array, got {keys.dtype} of shape {keys.shape}")
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise ProtocolError("keys must be sorted and distinct")


class Ownership:
    """The ranges ``node`` masters under ``keymap`` (none without a map). Immutable."""

    __slots__ = ("_chains", "_his", "_lasts", "_lo_arr", "_los", "epoch", "keymap", "mastering", "node", "ranges",
                 "replicated", "span")

    def __init__(self, keymap: KeyMap | None, node: int) -> None:
        self.keymap = keymap
        self.node = node
        self.epoch = keymap.epoch if keymap is not None else 0
        chains: list[tuple[int, ...]] = []
        ranges: list[tuple[int, int]] = []
        for a in keymap if keymap is not None else ():
            if a.master == node:
                ranges.append((a.range.lo, a.range.hi))
                chains.append(a.replicas)
        self.ranges = ranges
        self._chains = chains
        self._los = [lo for lo, _ in ranges]
        self._his = [hi for _, hi in ranges]
        self._lo_arr = np.array(self._los, dtype=np.uint64)
        self._lasts = np.array([hi - 1 for hi in self._his], dtype=np.uint64)
        #: True if this node masters at least one range.
        self.mastering = bool(ranges)
        #: True if one of its ranges has replicas.
        self.replicated = any(chains)
        #: The smallest range covering everything it masters (all keys when it masters none).
        self.span = (ranges[0][0], ranges[-1][1]) if ranges else (0, KEY_SPACE)

    def range_of(self, keys: np.ndarray) -> int | None:
        """For sorted, distinct uint64 ``keys``: the index of the one range of this node that
        holds them all, :data:`SPANNING` if they are all mastered here over several ranges
        (or there are none), None if some key is not mastered here."""
        n = len(keys)
        if not n:
            return SPANNING
        if not self._los:
            return None
        first = int(keys[0])
        r = bisect_right(self._los, first) - 1
        if r >= 0 and int(keys[n - 1]) < self._his[r]:
            return r
        if n == 1 or len(self._los) == 1:
            return None  # one key outside its range, or keys beyond the only range
        i = np.searchsorted(self._lo_arr, keys, side="right") - 1
        ok = (i >= 0) & (keys <= self._lasts[np.maximum(i, 0)])
        return SPANNING if bool(ok.all()) else None

    def owns(self, lo: int, hi: int) -> bool:
        """True if this node masters every key of ``[lo, hi)``."""
        return self.keymap is not None and self.keymap.owns(self.node, lo, hi)

    def overlaps(self, lo: int, hi: int) -> bool:
        """True if this node masters at least one key of ``[lo, hi)``."""
        return self.keymap is not None and self.keymap.overlaps(self.node, lo, hi)

    def mastered(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (any order) this node masters: a boolean mask."""
        return in_ranges(keys, self.ranges)

    def chain_plan(self, keys: np.ndarray, where: int) -> list[tuple[tuple[int, ...], np.ndarray | None]]:
        """Which replica chains get which of ``keys`` (mastered here, ``where`` from
        :meth:`range_of`): ``[(chain, positions or None for all of them), ...]``, chains
        without replicas left out."""
        if where >= 0:
            chain = self._chains[where]
            return [(chain, None)] if chain else []
        if self.keymap is None or not self.replicated:
            return []
        return [(chain, positions(pieces)) for chain, pieces in self.keymap.chains(keys).items()]

    def tick_plan(self, lo: int, hi: int) -> list[tuple[tuple[int, ...], list[tuple[int, int]]]]:
        """Which replica chains get a clock tick on ``[lo, hi)``, and for which sub-ranges."""
        if self.keymap is None or not self.replicated:
            return []
        out = []
        for chain, ranges in self.keymap.replicated_ranges(self.node).items():
            hit = [(max(r.lo, lo), min(r.hi, hi)) for r in ranges if r.lo < hi and lo < r.hi]
            if hit:
                out.append((chain, hit))
        return out
