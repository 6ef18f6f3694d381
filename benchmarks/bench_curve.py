"""The cost of CURVE: push throughput with and without keys, in the same run.

One LocalCluster without keys and one with keys (``paramserver keygen``), 1 server + 1
worker each, the same pushes on both, interleaved (plain, CURVE, plain, CURVE...) so
that a change of machine load hits both alike:

* 1-key synchronous pushes (pushes/s: latency-bound);
* 1 MiB and 16 MiB pushes of float32 values (MB/s: encryption-bound).

The baseline is the cluster without keys, measured in this run; the table shows CURVE as
a fraction of it. Run: ``python benchmarks/bench_curve.py [--quick]``; writes
benchmarks/results/curve.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import fmt_bytes, timed, write
from paramserver.transport import write_keys

WIDTH = 256
SIZES = [1 << 20, 16 << 20]


def _payload(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, size // (4 * WIDTH))
    return np.arange(n, dtype=np.uint64) * np.uint64(1000), np.ones((n, WIDTH), dtype=np.float32)


def _measure(worker: ps.Worker, quick: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    one = worker.table("one", width=1, dtype="float32")
    k1, v1 = np.array([12345], dtype=np.uint64), np.ones(1, dtype=np.float32)
    out["push1_sync_per_s"] = 1 / timed(lambda: one.push(k1, v1).wait(), min_time=0.3 if quick else 1.5)
    t = worker.table("big", width=WIDTH, dtype="float32")
    for size in SIZES:
        keys, vals = _payload(size)
        dt = timed(lambda k=keys, v=vals: t.push(k, v).wait(), min_time=(0.3 if quick else 1.0) * (1 + size // (16 << 20)))
        out[f"push_MBps_{size}"] = vals.nbytes / dt / 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter timing loops")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode (the best is kept)")
    args = p.parse_args()
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as keydir:
        write_keys(keydir)
        with ps.LocalCluster(servers=1) as plain, ps.LocalCluster(servers=1, keys=keydir) as curve, \
                ps.connect(plain.address) as wp, ps.connect(curve.address, keys=keydir) as wc:
            runs: dict[str, list[dict[str, float]]] = {"plain": [], "curve": []}
            for _ in range(rounds):
                runs["plain"].append(_measure(wp, args.quick))
                runs["curve"].append(_measure(wc, args.quick))
    best = {mode: {k: max(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}
    rows = [("1-key push, synchronous", "push1_sync_per_s", "pushes/s")] + [
        (f"{fmt_bytes(s)} push", f"push_MBps_{s}", "MB/s") for s in SIZES]
    print(f"{'':<26}{'no keys (baseline)':>20}{'CURVE':>14}{'CURVE / baseline':>18}")
    table: dict[str, Any] = {}
    for label, key, unit in rows:
        a, b = best["plain"][key], best["curve"][key]
        table[key] = {"plain": a, "curve": b, "ratio": b / a}
        print(f"{label:<26}{a:>14,.0f} {unit:<6}{b:>10,.0f}{b / a:>17.2f}x")
    path = write("curve", {"rounds": rounds, "best": best, "runs": runs, "table": table})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
