"""Known workloads shared by tests and the worker processes they start.

Run as a script, it is one worker: ``python workloads.py ADDRESS RANK ROUNDS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

WIDTH = 2
# A pool of keys across the whole 64-bit space, top half included, so rounds collide.
POOL = np.unique(np.concatenate([
    np.random.default_rng(0).integers(0, 2**64 - 1, size=1500, dtype=np.uint64, endpoint=True),
    np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1], dtype=np.uint64),
]))


def round_data(rank: int, rnd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys (unsorted, with duplicates), float32 values and int64 counts of one push."""
    rng = np.random.default_rng([rank, rnd])
    n = int(rng.integers(1, 400))
    keys = rng.choice(POOL, size=n, replace=True)
    values = rng.integers(-100, 100, size=(n, WIDTH)).astype(np.float32)
    counts = np.ones(n, dtype=np.int64)
    return keys, values, counts


def push_rounds(sums: Any, counts: Any, rank: int, lo: int, hi: int) -> None:
    """Push rounds ``lo`` to ``hi`` of ``rank`` to the sums and counts tables; wait for all."""
    reqs = []
    for rnd in range(lo, hi):
        keys, values, ones = round_data(rank, rnd)
        reqs += [sums.push(keys, values), counts.push(keys, ones)]
    for r in reqs:
        r.wait()


class Lockstep:
    """Workers that push one aggregating table ``g`` in lockstep: at iteration ``it`` worker
    ``i`` pushes ``1 + i + 10 * it`` to every key of POOL (width 2, float64), so after the
    iterations in ``its`` each key holds ``total(its)``."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers
        self.tables = [w.table("g", width=2, dtype="float64", aggregate=True) for w in workers]
        self.reqs: list[Any] = []

    def push(self, i: int, it: int) -> None:
        self.reqs.append(self.tables[i].push(POOL, np.full((len(POOL), 2), float(1 + i + 10 * it))))

    def advance(self) -> None:
        for w in self.workers:
            w.advance()

    def iterations(self, its: range) -> None:
        for it in its:
            for i in range(len(self.workers)):
                self.push(i, it)
            self.advance()

    def total(self, its: range) -> float:
        return sum(float(1 + i + 10 * it) for it in its for i in range(len(self.workers)))

    def check(self, its: range, timeout: float) -> None:
        """Every push answered, and every worker reads the exact total at every key."""
        for r in self.reqs:
            r.wait(timeout)
        for t in self.tables:
            np.testing.assert_array_equal(t.pull(POOL), np.full((len(POOL), 2), self.total(its)))


def expected(ranks: int, rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact final state: sorted present keys, their value sums and their counts."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for rank in range(ranks):
        for rnd in range(rounds):
            keys, values, _ = round_data(rank, rnd)
            order = np.argsort(keys, kind="stable")
            k, v = keys[order], values[order].astype(np.float64)
            uniq, start = np.unique(k, return_index=True)
            block = np.add.reduceat(v, start, axis=0)
            n = np.diff(np.append(start, len(k)))
            for key, row, c in zip(uniq.tolist(), block, n.tolist(), strict=True):
                sums[key] = sums.get(key, np.zeros(WIDTH)) + row
                counts[key] = counts.get(key, 0) + c
    keys = np.array(sorted(sums), dtype=np.uint64)
    return keys, np.array([sums[int(k)] for k in keys]), np.array([counts[int(k)] for k in keys])


def check_final_state(address: str, ranks: int, rounds: int) -> None:
    """Connect to the cluster at ``address`` and assert it holds exactly :func:`expected`."""
    import paramserver as ps

    keys, sums, counts = expected(ranks, rounds)
    with ps.connect(address) as w:
        np.testing.assert_array_equal(w.table("sums", width=WIDTH, dtype="float32").pull(keys),
                                      sums.astype(np.float32))
        np.testing.assert_array_equal(w.table("counts", width=1, dtype="int64").pull(keys).ravel(), counts)


def start_workers(address: str, ranks: int, rounds: int,
                  env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
    """Start ``ranks`` processes running this file as a worker (ranks 0 to ``ranks - 1``); ``env``
    is added to this environment (None: inherit it)."""
    return [subprocess.Popen([sys.executable, __file__, address, str(r), str(rounds)],
                             env=None if env is None else {**os.environ, **env}) for r in range(ranks)]


def sgd_problem() -> tuple[np.ndarray, np.ndarray]:
    """Least squares on a fixed random problem; worker `rank` holds rows rank::n."""
    rng = np.random.default_rng(42)
    A = rng.normal(size=(60, 8))
    b = A @ rng.normal(size=8) + 0.1 * rng.normal(size=60)
    return A, b


def main(address: str, rank: int, rounds: int) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import paramserver as ps

    with ps.connect(address) as w:
        sums = w.table("sums", width=WIDTH, dtype="float32")
        counts = w.table("counts", width=1, dtype="int64")
        reqs = []
        for rnd in range(rounds):
            keys, values, ones = round_data(rank, rnd)
            reqs.append(sums.push(keys, values))
            reqs.append(counts.push(keys, ones))
            if len(reqs) > 16:  # keep a bounded number in flight
                reqs.pop(0).wait()
        for r in reqs:
            r.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
