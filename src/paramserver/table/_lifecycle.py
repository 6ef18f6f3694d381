"""The life of a row on a server: admission of new ids, eviction of stale ones.

A table may declare (``Worker.table(..., admit_after=k, admit_prob=p, ttl=T, capacity=C)``):

* **admission by count** (``admit_after=k``): a key gets a trained row only from its k-th
  push on; the first k - 1 pushes are counted (in a candidate row, which holds the initial
  values) and their updates dropped.
* **admission by probability** (``admit_prob=p``): a key is admitted with probability p,
  decided once per key by a pure function of the key (``uniform01(key, seed)``, the one
  the seeded initial values use): every server, replica and restart decides alike. Pushes
  of a key not admitted are dropped and never take memory.
* **eviction by age** (``ttl=T``): a row untouched (not pushed) for more than T iterations
  is gone. A push at iteration ``c`` to a row last touched at ``t < c - T`` starts from the
  initial values again (lazily, so a row's fate depends only on the pushes to it and their
  iterations, the same on master and replica); the rows whose age exceeds T at the newest
  iteration seen are freed when that iteration first arrives.
* **eviction by capacity** (``capacity=C``): a server holds at most C rows of the table;
  when a push would exceed it, the least recently touched rows (oldest iteration first,
  then the earliest inserted) are freed down to 90% of C, so eviction costs O(1) per
  inserted row amortised. A server counts every row it stores, its replicas' ranges
  included.

The bookkeeping lives in two per-row state arrays next to the updater's (``_seen``: pushes
counted, ``_touched``: the iteration of the last push, -1 for none), so checkpoints,
migration and replication carry it like optimizer state. An evicted row reads as the initial
values. Pure and immutable: the :class:`~paramserver.table.Store` applies its decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InvalidArgument
from ._init import uniform01

__all__ = ["SEEN", "TOUCHED", "Lifecycle"]

SEEN = "_seen"
TOUCHED = "_touched"
_ADMIT_SEED = 0x5EED_AD317


@dataclass(frozen=True)
class Lifecycle:
    """Admission and eviction parameters of a table (all off by default)."""

    admit_after: int = 0
    admit_prob: float = 1.0
    ttl: int = 0
    capacity: int = 0

    def __post_init__(self) -> None:
        for name in ("admit_after", "ttl", "capacity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgument(f"{name} must be an int >= 0 (0: off), got {v!r}")
        p = self.admit_prob
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise InvalidArgument(f"admit_prob must be a number in (0, 1], got {p!r}")
        if self.capacity and self.capacity < 10:
            raise InvalidArgument(f"capacity must be 0 (unlimited) or at least 10 rows, got {self.capacity}")

    @property
    def active(self) -> bool:
        return bool(self.admit_after > 1 or self.admit_prob < 1 or self.ttl or self.capacity)

    def to_wire(self) -> dict[str, Any]:
        """The parameters that differ from the defaults."""
        out: dict[str, Any] = {}
        if self.admit_after > 1:
            out["admit_after"] = self.admit_after
        if self.admit_prob < 1:
            out["admit_prob"] = float(self.admit_prob)
        if self.ttl:
            out["ttl"] = self.ttl
        if self.capacity:
            out["capacity"] = self.capacity
        return out

    def layout(self) -> dict[str, tuple[int, np.dtype[Any], float]]:
        """The per-row state arrays the bookkeeping needs (none if everything is off)."""
        if not self.active:
            return {}
        return {SEEN: (1, np.dtype(np.int64), 0), TOUCHED: (1, np.dtype(np.int64), -1)}

    def admitted_by_chance(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` probability admission lets in (all if admit_prob is 1)."""
        if self.admit_prob >= 1:
            return np.ones(len(keys), dtype=bool)
        return np.asarray(uniform01(keys, 1, _ADMIT_SEED)[:, 0] < self.admit_prob)

    def expired(self, touched: np.ndarray, clock: int) -> np.ndarray:
        """Rows (their last-touched iterations) that are gone at iteration ``clock``."""
        if not self.ttl:
            return np.zeros(len(touched), dtype=bool)
        return np.asarray((touched >= 0) & (touched < clock - self.ttl))

    def counted(self, seen: np.ndarray) -> np.ndarray:
        """Rows whose push count (this push included) admits them."""
        return np.asarray(seen >= max(self.admit_after, 1))

    def over_capacity(self, rows: int) -> int:
        """How many rows to free when a server would hold ``rows`` (0: none)."""
        if not self.capacity or rows <= self.capacity:
            return 0
        return rows - (self.capacity * 9) // 10
