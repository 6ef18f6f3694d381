"""A hash index from uint64 keys to row numbers, compiled with numba.

Open addressing with linear probing in one ``(size, 2)`` uint64 array: column 0 holds the
key, column 1 the row number plus one (0 marks an empty slot, so every 64-bit key, 0
included, is a valid key). Key and row share a cache line, so a lookup in a table far
larger than the CPU cache costs about one memory access. The load factor stays at or
below one half. Lookups and inserts are loops compiled by numba (``nogil``), O(1) per key.

benchmarks/bench_index.py measures this index against sorted arrays with
``np.searchsorted``; the hash index wins at every size measured (see docs/architecture.md).

Not thread-safe: a store serialises access to its index.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["HashIndex"]

_MIN_SIZE = 1024


@numba.njit(cache=True, nogil=True, inline="always")
def _slot_of(key: np.uint64, mask: np.uint64) -> np.uint64:
    # Fibonacci hashing on the mixed key: cheap and spreads sequential keys.
    x = key ^ (key >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    return x & mask


@numba.njit(cache=True, nogil=True)
def _lookup(table: np.ndarray, keys: np.ndarray, out: np.ndarray) -> int:
    mask = np.uint64(table.shape[0] - 1)
    missing = 0
    for i in range(keys.shape[0]):
        k = keys[i]
        h = _slot_of(k, mask)
        while True:
            row = table[h, 1]
            if row == 0:
                out[i] = -1
                missing += 1
                break
            if table[h, 0] == k:
                out[i] = np.int64(row) - 1
                break
            h = (h + np.uint64(1)) & mask
    return missing


@numba.njit(cache=True, nogil=True)
def _insert(table: np.ndarray, keys: np.ndarray, out: np.ndarray, next_row: int) -> int:
    mask = np.uint64(table.shape[0] - 1)
    for i in range(keys.shape[0]):
        k = keys[i]
        h = _slot_of(k, mask)
        while True:
            row = table[h, 1]
            if row == 0:
                table[h, 0] = k
                table[h, 1] = np.uint64(next_row + 1)
                out[i] = next_row
                next_row += 1
                break
            if table[h, 0] == k:
                out[i] = np.int64(row) - 1
                break
            h = (h + np.uint64(1)) & mask
    return next_row


class HashIndex:
    """Maps keys to dense row numbers ``0..len-1`` in order of first insertion."""

    __slots__ = ("_n", "_table")

    def __init__(self, capacity: int = 0) -> None:
        self._table = np.zeros((self._size_for(capacity), 2), dtype=np.uint64)
        self._n = 0

    @staticmethod
    def _size_for(n: int) -> int:
        size = _MIN_SIZE
        while size < 2 * n:
            size *= 2
        return size

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """Row numbers of ``keys`` (-1 where absent) and the count of absent keys."""
        out = np.empty(len(keys), dtype=np.int64)
        missing = _lookup(self._table, keys, out)
        return out, int(missing)

    def insert(self, keys: np.ndarray, all_keys: np.ndarray) -> np.ndarray:
        """Row numbers of ``keys``, giving new keys the next free rows.

        ``all_keys`` must hold the key of every existing row (``all_keys[row]``); it is
        read only when the index grows and has to be rebuilt.
        """
        if 2 * (self._n + len(keys)) > self._table.shape[0]:
            self._rebuild(self._n + len(keys), all_keys[: self._n])
        out = np.empty(len(keys), dtype=np.int64)
        self._n = int(_insert(self._table, keys, out, self._n))
        return out

    def _rebuild(self, need: int, existing: np.ndarray) -> None:
        table = np.zeros((self._size_for(need), 2), dtype=np.uint64)
        scratch = np.empty(len(existing), dtype=np.int64)
        _insert(table, existing, scratch, 0)
        self._table = table
