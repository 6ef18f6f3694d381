"""The storage of one table on one server: keys, values and per-key optimizer state.

Rows are dense: row ``r`` holds key ``keys[r]``, its values ``values[r]`` (``width`` of the
table's dtype) and its optimizer state ``state[name][r]``. A :class:`HashIndex` maps keys
to rows. Keys are inserted on first push with the table's initial values; a pull of an
absent key answers the initial values without inserting it. Arrays grow by doubling.

Every operation is vectorised over the keys of a request: the index is compiled, the
values are gathered and scattered with numpy fancy indexing, the updater is numpy.

Not thread-safe: the server calls a store from its receive thread only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InvalidArgument
from ..placement import in_ranges
from ..protocol import KEY_SPACE
from ._index import HashIndex
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
        self._layout = self.updater.state_layout(self.width, self.dtype)
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

    def push(self, keys: np.ndarray, update: np.ndarray) -> None:
        """Apply ``update`` (len(keys) x width) to distinct ``keys`` with the table's updater."""
        if update.shape != (len(keys), self.width):
            raise InvalidArgument(f"update of shape {update.shape} for {len(keys)} keys of width {self.width}")
        rows = self.rows_for_push(keys)
        self.updater.apply(self.values, self.state, rows, update)
        self.pushes += 1

    def pull(self, keys: np.ndarray) -> np.ndarray:
        """Values of ``keys`` (len(keys) x width); absent keys get their initial values."""
        rows, missing = self._index.lookup(keys)
        self.pulls += 1
        if not missing:
            found_all: np.ndarray = self.values[rows]  # fancy indexing: already a new array
            return found_all
        out = np.empty((len(keys), self.width), dtype=self.dtype)
        found = rows >= 0
        out[found] = self.values[rows[found]]
        out[~found] = self.init.values(keys[~found], self.width, self.dtype)
        return out

    def pull_range(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Every present key in ``[lo, hi)`` in ascending order, with its values."""
        n = len(self)
        keys = self.keys[:n]
        mask = keys >= np.uint64(lo)
        if hi < KEY_SPACE:
            mask &= keys < np.uint64(hi)
        rows = np.flatnonzero(mask)
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
