"""The server's key index: numba hash index against sorted arrays with np.searchsorted.

For tables of 1 M and 10 M keys: lookups of existing keys (batches of 1,000 and 100,000,
sorted as workers send them) and inserts of new keys (batches of 100,000). The sorted-array
index keeps keys sorted and inserts with ``np.insert`` (what a sorted store must do); the
hash index is paramserver.table.HashIndex. Writes benchmarks/results/index.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import batch_rate, distinct_keys, write
from paramserver.table import HashIndex


class SortedIndex:
    """Keys kept sorted; rows in insertion order, found through an argsort permutation."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.rows = np.zeros(0, dtype=np.int64)

    def insert(self, keys: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, keys)
        hit = pos < len(self.keys)
        hit[hit] = self.keys[pos[hit]] == keys[hit]
        out = np.empty(len(keys), dtype=np.int64)
        out[hit] = self.rows[pos[hit]]
        new = ~hit
        n_new = int(new.sum())
        fresh = np.arange(len(self.rows), len(self.rows) + n_new, dtype=np.int64)
        out[new] = fresh
        self.keys = np.insert(self.keys, pos[new], keys[new])
        self.rows = np.insert(self.rows, pos[new], fresh)
        return out

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, keys)
        pos[pos >= len(self.keys)] = 0
        found = self.keys[pos] == keys
        return np.where(found, self.rows[pos], -1)


def main() -> None:
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    print(f"{'table':>6} {'op':<22} {'hash Mkeys/s':>13} {'sorted Mkeys/s':>15} {'hash/sorted':>12}")
    for size in (1_000_000, 10_000_000):
        keys = distinct_keys(rng, size)
        h, s = HashIndex(size), SortedIndex()
        h.insert(keys, keys)
        s.insert(np.sort(keys))
        for batch in (1_000, 100_000):
            batches = [np.sort(rng.choice(keys, batch, replace=False)) for _ in range(10)]
            rh = batch_rate(h.lookup, batches)
            rs = batch_rate(s.lookup, batches)
            results[f"{size}_lookup_{batch}"] = {"hash": rh, "sorted": rs}
            print(f"{size / 1e6:5.0f}M {'lookup, batch ' + str(batch):<22} {rh / 1e6:13.1f} {rs / 1e6:15.1f} "
                  f"{rh / rs:12.1f}")
        new = [np.sort(rng.integers(0, 2**64 - 1, 100_000, dtype=np.uint64, endpoint=True)) for _ in range(5)]
        all_keys = np.concatenate([keys, *new])
        rh = batch_rate(lambda b, h=h, k=all_keys: h.insert(b, k), new[1:])
        rs = batch_rate(s.insert, new[1:])
        results[f"{size}_insert_100000"] = {"hash": rh, "sorted": rs}
        print(f"{size / 1e6:5.0f}M {'insert new, batch 1e5':<22} {rh / 1e6:13.1f} {rs / 1e6:15.1f} {rh / rs:12.1f}")
    print(f"wrote {write('index', results)}")


if __name__ == "__main__":
    main()
