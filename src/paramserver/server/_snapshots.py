"""Snapshots of an aggregating table at its last finished iterations (an undo log).

A table that aggregates (``aggregate=True``) changes on a server only when a whole
iteration's sum is applied, in order of iterations, so between two sums the store holds the
table exactly as it is after one finished iteration. A table declared with ``snapshots=k``
keeps, for each of the last ``k`` iterations applied here, the rows that sum changed as they
were *before* it (their keys, sorted, and old values). The values of keys ``K`` after
iteration ``t`` are then the current values, with each key that a logged iteration ``s > t``
changed taking its old value from the earliest such ``s``: a few ``searchsorted`` calls
over at most ``k`` arrays, never a loop over keys.

Invariants: logged iterations ascend; every iteration this server applied after ``floor``
is logged, so a snapshot of any ``t >= floor`` (and ``t`` not after the last applied
iteration) is exact, and older ones are refused. A change of key ownership (a migration, a
failover) brings rows whose history was not logged here, so it clears the log and raises
``floor`` to the last iteration applied.

Not thread-safe: the server's receive thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Snapshots"]


@dataclass
class Snapshots:
    """The undo log of one table on one server. See the module docstring."""

    keep: int
    #: iteration -> (keys it changed, sorted; their values before it), oldest first.
    log: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: Snapshots of iterations >= floor can be answered (-1: the initial state too).
    floor: int = -1

    def record(self, iteration: int, keys: np.ndarray, before: np.ndarray) -> None:
        """Iteration ``iteration``'s sum is about to change ``keys`` (sorted), now ``before``."""
        if not self.keep:
            return
        self.log[iteration] = (keys, before)
        while len(self.log) > self.keep:
            oldest = next(iter(self.log))
            del self.log[oldest]
            self.floor = max(self.floor, oldest)

    def reset(self, applied: int) -> None:
        """Key ownership changed: forget the log; only snapshots from ``applied`` on are exact."""
        self.log.clear()
        self.floor = max(self.floor, applied)

    def kept(self, iteration: int) -> bool:
        """Can the table after ``iteration`` still be read here (once it is applied)?"""
        return iteration >= self.floor

    def read(self, keys: np.ndarray, values: np.ndarray, iteration: int) -> np.ndarray:
        """The values of ``keys`` (sorted, distinct; ``values`` their current values, changed
        in place) after ``iteration``, which :meth:`kept` accepts and which is applied."""
        for s in sorted((s for s in self.log if s > iteration), reverse=True):  # the earliest s wins
            changed, before = self.log[s]
            if not len(changed):
                continue
            pos = np.searchsorted(changed, keys)
            np.minimum(pos, len(changed) - 1, out=pos)
            hit = changed[pos] == keys
            if hit.any():
                values[hit] = before[pos[hit]]
        return values
