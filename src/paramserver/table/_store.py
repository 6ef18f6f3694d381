"""The storage of one table on one server: keys, values and per-key optimizer state.

Rows are dense: row ``r`` holds key ``keys[r]``, its values ``values[r]`` (``width`` of the
table's dtype) and its optimizer state ``state[name][r]``. A :class:`HashIndex` maps keys
to rows. Keys are inserted on first push with the table's initial values; a pull of an
absent key answers the initial values without inserting it. Arrays grow by doubling.

Every operation is vectorised over the keys of a request: the index is compiled, the
values are gathered and scattered with numpy fancy indexing, the updater is numpy.

A table that declares admission or eviction (``_lifecycle.py``) keeps two more state
arrays per row; eviction compacts the arrays (kept rows move down in order) and rebuilds
the index, O(rows) each time, amortised over many pushes.

Not thread-safe: the server calls a store from its receive thread only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InvalidArgument
from ..placement import in_ranges
from ..protocol import KEY_SPACE
from ._index import HashIndex
from ._lifecycle import SEEN, TOUCHED
from ._spec import TableSpec

__all__ = ["Store"]


class Store:
    """Keys, values and optimizer state of one table on one server."""

    def __init__(self, spec: TableSpec, capacity: int = 1024) -> None:
        self.spec = spec
        self.updater = spec.make_updater()
        self.init = spec.make_init()
        self.dtype = spec.np_dtype
        self.width = spec.width
        self._layout = spec.state_layout()
        self.life = spec.lifecycle
        #: The newest iteration a push carried (-1: none yet); ttl eviction counts from it.
        self.now = -1
        #: Rows freed by eviction, and pushed keys dropped by probability admission.
        self.evicted = 0
        self.dropped = 0
        self._index = HashIndex(capacity)
        self._cap = max(capacity, 16)
        self.keys = np.zeros(self._cap, dtype=np.uint64)
        self.values = np.zeros((self._cap, self.width), dtype=self.dtype)
        self.state: dict[str, np.ndarray] = {
            name: np.full((self._cap, cols), fill, dtype=dt) for name, (cols, dt, fill) in self._layout.items()
        }
        self.pushes = 0
        self.pulls = 0

    def __len__(self) -> int:
        return len(self._index)

    @property
    def layout(self) -> dict[str, tuple[int, np.dtype[Any], float]]:
        """The per-row state arrays: ``{name: (columns, dtype, initial value)}``."""
        return dict(self._layout)

    @property
    def nbytes(self) -> int:
        """Memory held: keys, values, state and index, in bytes (capacity, not just used)."""
        return int(self.keys.nbytes + self.values.nbytes + self._index.nbytes
                   + sum(a.nbytes for a in self.state.values()))

    def _grow(self, need: int) -> None:
        cap = self._cap
        while cap < need:
            cap *= 2
        n = len(self)
        keys = np.zeros(cap, dtype=np.uint64)
        keys[:n] = self.keys[:n]
        values = np.zeros((cap, self.width), dtype=self.dtype)
        values[:n] = self.values[:n]
        for name, (cols, dt, fill) in self._layout.items():
            arr = np.full((cap, cols), fill, dtype=dt)
            arr[:n] = self.state[name][:n]
            self.state[name] = arr
        self.keys, self.values, self._cap = keys, values, cap

    def rows_for_push(self, keys: np.ndarray) -> np.ndarray:
        """Rows of ``keys`` (distinct), inserting absent ones with their initial values."""
        n = len(self)
        if n + len(keys) > self._cap:
            self._grow(n + len(keys))
        rows = self._index.insert(keys, self.keys)
        n_after = len(self)
        if n_after > n:
            new = rows >= n
            new_rows = rows[new]
            new_keys = keys[new]
            self.keys[new_rows] = new_keys
            if not self.init.is_zero():
                self.values[new_rows] = self.init.values(new_keys, self.width, self.dtype)
        return rows

    def push(self, keys: np.ndarray, update: np.ndarray, clock: int = 0) -> None:
        """Apply ``update`` (len(keys) x width) to distinct ``keys`` with the table's updater;
        ``clock`` is the iteration of the push (for admission and eviction)."""
        if update.shape != (len(keys), self.width):
            raise InvalidArgument(f"update of shape {update.shape} for {len(keys)} keys of width {self.width}")
        self.pushes += 1
        if not self.life.active:
            rows = self.rows_for_push(keys)
            self.updater.apply(self.values, self.state, rows, update)
            return
        self._push_lifecycle(keys, update, int(clock))

    def _push_lifecycle(self, keys: np.ndarray, update: np.ndarray, clock: int) -> None:
        """A push to a table with admission or eviction (see ``_lifecycle.py``)."""
        life = self.life
        chance = life.admitted_by_chance(keys)
        if not chance.all():
            self.dropped += int(len(keys) - chance.sum())
            keys, update = keys[chance], update[chance]
        if life.capacity:
            rows, missing = self._index.lookup(keys)
            free = life.over_capacity(len(self) + missing)
            if free:
                self._evict_lru(free, rows[rows >= 0])
        rows = self.rows_for_push(keys)
        touched_all, seen_all = self.state[TOUCHED], self.state[SEEN]
        touched = touched_all[rows, 0]
        gone = life.expired(touched, clock)
        if gone.any():  # untouched for more than ttl iterations: the row starts again
            self._reset(rows[gone])
        seen = seen_all[rows, 0] + 1
        seen_all[rows, 0] = seen
        touched_all[rows, 0] = np.maximum(touched_all[rows, 0], clock)
        ok = life.counted(seen)
        if ok.all():
            self.updater.apply(self.values, self.state, rows, update)
        elif ok.any():
            self.updater.apply(self.values, self.state, rows[ok], update[ok])
        if clock > self.now:
            self.now = clock
            if life.ttl:
                n = len(self)
                expired = life.expired(touched_all[:n, 0], clock)
                if expired.any():
                    self._compact(~expired)

    def _reset(self, rows: np.ndarray) -> None:
        """Rows back to their initial values and state."""
        self.values[rows] = self.init.values(self.keys[rows], self.width, self.dtype)
        for name, (_, _, fill) in self._layout.items():
            self.state[name][rows] = fill

    def _evict_lru(self, count: int, protect: np.ndarray) -> None:
        """Free the ``count`` least recently touched rows (oldest iteration, then earliest
        inserted), never one of ``protect``."""
        n = len(self)
        touched = self.state[TOUCHED][:n, 0].copy()
        touched[protect] = np.iinfo(np.int64).max
        victims = np.argsort(touched, kind="stable")[:min(count, n - len(protect))]
        keep = np.ones(n, dtype=bool)
        keep[victims] = False
        self._compact(keep)

    def _compact(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` (over the present rows) is True, in order; the freed
        rows return to their blank state and the index is rebuilt."""
        n = len(self)
        idx = np.flatnonzero(keep)
        m = len(idx)
        self.keys[:m] = self.keys[idx]
        self.values[:m] = self.values[idx]
        self.keys[m:n] = 0
        self.values[m:n] = 0
        for name, (_, _, fill) in self._layout.items():
            arr = self.state[name]
            arr[:m] = arr[idx]
            arr[m:n] = fill
        self._index = HashIndex(self._cap)
        self._index.insert(self.keys[:m], self.keys)
        self.evicted += n - m

    def _live(self, rows: np.ndarray) -> np.ndarray:
        """Which present ``rows`` hold an admitted, unexpired row."""
        if not self.life.active:
            return np.ones(len(rows), dtype=bool)
        ok = self.life.counted(self.state[SEEN][rows, 0])
        return np.asarray(ok & ~self.life.expired(self.state[TOUCHED][rows, 0], self.now))

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` (len(keys) x width); absent keys get their initial values."""
        rows, missing = self._index.lookup(keys)
        self.pulls += 1
        if self.life.ttl:  # expired rows read as initial values
            present = np.flatnonzero(rows >= 0)
            old = present[self.life.expired(self.state[TOUCHED][rows[present], 0], self.now)]
            rows[old] = -1
            missing += len(old)
        if not missing:
            found_all: np.ndarray = self.values[rows]  # fancy indexing: already a new array
            return found_all
        out = np.empty((len(keys), self.width), dtype=self.dtype)
        found = rows >= 0
        out[found] = self.values[rows[found]]
        out[~found] = self.init.values(keys[~found], self.width, self.dtype)
        return out

    def pull_range(self, lo: int, hi: int, since: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every present key in ``[lo, hi)`` in ascending order, with its values; a table
        with admission or eviction leaves out candidates and expired rows, and with
        ``since`` answers only the rows pushed after iteration ``since`` (a delta)."""
        n = len(self)
        keys = self.keys[:n]
        mask = keys >= np.uint64(lo)
        if hi < KEY_SPACE:
            mask &= keys < np.uint64(hi)
        rows = np.flatnonzero(mask)
        if self.life.active:
            rows = rows[self._live(rows)]
            if since is not None:
                rows = rows[self.state[TOUCHED][rows, 0] > since]
        order = np.argsort(keys[rows], kind="stable")
        rows = rows[order]
        return keys[rows], self.values[rows]

    def load(self, keys: np.ndarray, values: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Set the values and optimizer state of distinct ``keys`` (inserting absent ones),
        as a checkpoint holds them; the updater is not applied. Vectorised.

        Raises
        ------
        InvalidArgument
            Arrays of another shape or dtype than the table's, or state arrays other than
            the updater's.
        """
        n = len(keys)
        if keys.dtype != np.uint64 or keys.ndim != 1:
            raise InvalidArgument(f"keys must be a 1-D uint64 array, got {keys.dtype} of shape {keys.shape}")
        if values.dtype != self.dtype or values.shape != (n, self.width):
            raise InvalidArgument(f"values of {values.dtype} and shape {values.shape} for {n} keys of a "
                                  f"{self.dtype} table of width {self.width}")
        if set(state) != set(self._layout):
            raise InvalidArgument(f"state arrays {sorted(state)}; the updater keeps {sorted(self._layout)}")
        for name, (cols, dt, _) in self._layout.items():
            if state[name].dtype != dt or state[name].shape != (n, cols):
                raise InvalidArgument(f"state {name!r} of {state[name].dtype} and shape {state[name].shape}; "
                                      f"expected {dt} and ({n}, {cols})")
        if n == 0:
            return
        rows = self.rows_for_push(keys)
        self.values[rows] = values
        for name, arr in state.items():
            self.state[name][rows] = arr
        if TOUCHED in state:  # ttl counts from the newest iteration the loaded rows saw
            self.now = max(self.now, int(state[TOUCHED].max()))

    def rows_in(self, ranges: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """Keys in ``ranges`` (sorted, disjoint ``[lo, hi)``), in row order, with their values
        and state: ``{"keys", "values", **state}``. Vectorised."""
        rows = np.flatnonzero(in_ranges(self.keys[:len(self)], ranges))
        return {"keys": self.keys[rows], "values": self.values[rows],
                **{name: arr[rows] for name, arr in self.state.items()}}

    def export(self) -> dict[str, Any]:
        """Every present key with its values and state, in row order (for status and tests)."""
        n = len(self)
        return {"keys": self.keys[:n].copy(), "values": self.values[:n].copy(),
                **{name: arr[:n].copy() for name, arr in self.state.items()}}
