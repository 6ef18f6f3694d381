"""Push and pull throughput and rates on local clusters, against raw pyzmq in the same run.

Measures, with the baseline (raw pyzmq DEALER/ROUTER between two processes, S bytes out and
a 1-byte reply) measured in this same run:

* synchronous push and pull of float32 values of 4 KiB to 64 MiB (MB/s), on 1 server + 1
  worker, and the aggregate of 2 worker processes on 2 servers;
* 1-key and 1000-key pushes, synchronous and with 8 requests in flight (ops/s, keys/s).

Values travel in a table of width 256 (1 KiB per key), so keys are under 1% of the bytes.
Run: ``python benchmarks/bench_pushpull.py [--quick]``; writes benchmarks/results/pushpull.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import RawZmq, fmt_bytes, run_workers, timed, write

WIDTH = 256
SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]


def _payload(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = max(1, size // (4 * WIDTH))
    # spread keys over the whole key space so that every server gets its share
    keys = (np.arange(n, dtype=np.uint64) * np.uint64((2**64 - 1) // n))
    return keys, np.ones((n, WIDTH), dtype=np.float32)


def _min_time(size: int, quick: bool) -> float:
    return (0.3 if quick else 1.0) if size < (16 << 20) else (0.5 if quick else 2.0)


def bench_baseline(quick: bool) -> dict[str, Any]:
    raw = RawZmq()
    out: dict[str, Any] = {"MBps": {}, "small_rtt_per_s": 0.0}
    try:
        for size in SIZES:
            buf = np.ones(size // 4, dtype=np.float32)
            dt = timed(lambda b=buf: raw.roundtrip(b), min_time=_min_time(size, quick))
            out["MBps"][str(size)] = size / dt / 1e6
        small = np.ones(3, dtype=np.uint64)  # about a 1-key push: 8-byte key + value + header
        out["small_rtt_per_s"] = 1 / timed(lambda: raw.roundtrip(small), min_time=1.0 if not quick else 0.3)
        out["small_pipelined8_per_s"] = 8 / timed(lambda: raw.pipelined(small, 8), min_time=1.0 if not quick else 0.3)
    finally:
        raw.close()
    return out


def bench_cluster_single(address: str, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"push_MBps": {}, "pull_MBps": {}}
    with ps.connect(address) as w:
        t = w.table("bench", width=WIDTH, dtype="float32")
        for size in SIZES:
            keys, vals = _payload(size)
            dt = timed(lambda k=keys, v=vals: t.push(k, v).wait(), min_time=_min_time(size, quick))
            out["push_MBps"][str(size)] = vals.nbytes / dt / 1e6
            outbuf = np.empty_like(vals)
            dt = timed(lambda k=keys, o=outbuf: t.pull(k, out=o), min_time=_min_time(size, quick))
            out["pull_MBps"][str(size)] = vals.nbytes / dt / 1e6
        one = w.table("one", width=1, dtype="float32")
        k1, v1 = np.array([12345], dtype=np.uint64), np.ones(1, dtype=np.float32)
        mt = 0.3 if quick else 1.5
        out["push1_sync_per_s"] = 1 / timed(lambda: one.push(k1, v1).wait(), min_time=mt)

        def inflight(keys: np.ndarray, vals: np.ndarray, depth: int = 8, n: int = 400) -> float:
            start = time.perf_counter()
            window: list[Any] = []
            for _ in range(n):
                window.append(one.push(keys, vals))
                if len(window) >= depth:
                    window.pop(0).wait()
            for r in window:
                r.wait()
            return n / (time.perf_counter() - start)

        inflight(k1, v1, n=100)
        out["push1_inflight8_per_s"] = max(inflight(k1, v1, n=1000 if not quick else 300) for _ in range(3))
        k1000 = np.unique(np.random.default_rng(0).integers(0, 2**64 - 1, 1200, dtype=np.uint64, endpoint=True))[:1000]
        v1000 = np.ones(1000, dtype=np.float32)
        out["push1000_sync_keys_per_s"] = 1000 / timed(lambda: one.push(k1000, v1000).wait(), min_time=mt)
        out["push1000_inflight8_keys_per_s"] = 1000 * max(inflight(k1000, v1000, n=500 if not quick else 150)
                                                          for _ in range(3))
        out["pull1_sync_per_s"] = 1 / timed(lambda: one.pull(k1), min_time=mt)
    return out


def _phase_rates(w: ps.Worker, sizes: list[int], seconds: float) -> dict[str, float]:
    """Run every phase for ``seconds`` each, in step with the other workers (barriers)."""
    t = w.table("bench2", width=WIDTH, dtype="float32")
    one = w.table("one2", width=1, dtype="float32")
    rng = np.random.default_rng(w.rank)
    out: dict[str, float] = {}

    def run(name: str, fn: Any, amount: float) -> None:
        fn()
        w.barrier()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            n += 1
        out[name] = n * amount / (time.perf_counter() - start)
        w.barrier()

    for size in sizes:
        keys, vals = _payload(size)
        keys = keys + np.uint64(w.rank)  # each worker its own keys
        buf = np.empty_like(vals)
        run(f"push_MBps_{size}", lambda k=keys, v=vals: t.push(k, v).wait(), vals.nbytes / 1e6)
        run(f"pull_MBps_{size}", lambda k=keys, b=buf: t.pull(k, out=b), vals.nbytes / 1e6)
    k1 = np.array([2**63 * w.rank + 11], dtype=np.uint64)
    v1 = np.ones(1, dtype=np.float32)
    run("push1_sync_per_s", lambda: one.push(k1, v1).wait(), 1)

    def eight(keys: np.ndarray, vals: np.ndarray) -> None:
        reqs = [one.push(keys, vals) for _ in range(8)]
        for r in reqs:
            r.wait()

    run("push1_inflight8_per_s", lambda: eight(k1, v1), 8)
    k1000 = np.unique(rng.integers(0, 2**64 - 1, 1200, dtype=np.uint64, endpoint=True))[:1000]
    v1000 = np.ones(1000, dtype=np.float32)
    run("push1000_sync_keys_per_s", lambda: one.push(k1000, v1000).wait(), 1000)
    run("push1000_inflight8_keys_per_s", lambda: eight(k1000, v1000), 8000)
    return out


def _worker_proc(address: str, sizes: list[int], seconds: float, q: mp.Queue) -> None:  # type: ignore[type-arg]
    with ps.connect(address) as w:
        q.put(_phase_rates(w, sizes, seconds))


def bench_cluster_two(quick: bool) -> dict[str, Any]:
    """2 servers and 2 worker processes running the same phases at once; rates summed."""
    results = run_workers(_worker_proc, (SIZES, 0.5 if quick else 1.5), servers=2, workers=2)
    return {name: sum(r[name] for r in results) for name in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    args = ap.parse_args()
    base = bench_baseline(args.quick)
    with ps.LocalCluster(servers=1) as cluster:
        single = bench_cluster_single(cluster.address, args.quick)
    two = bench_cluster_two(args.quick)
    rows = []
    print(f"{'size':>8} {'raw zmq MB/s':>13} {'push 1+1':>10} {'ratio':>6} {'pull 1+1':>10} "
          f"{'push 2+2':>10} {'pull 2+2':>10}")
    for size in SIZES:
        s = str(size)
        ratio = single["push_MBps"][s] / base["MBps"][s]
        rows.append({"size": size, "raw": base["MBps"][s], "push": single["push_MBps"][s], "ratio": ratio,
                     "pull": single["pull_MBps"][s], "push_2x2": two[f"push_MBps_{size}"],
                     "pull_2x2": two[f"pull_MBps_{size}"]})
        print(f"{fmt_bytes(size):>8} {base['MBps'][s]:13.0f} {single['push_MBps'][s]:10.0f} {ratio:6.2f} "
              f"{single['pull_MBps'][s]:10.0f} {two[f'push_MBps_{size}']:10.0f} {two[f'pull_MBps_{size}']:10.0f}")
    r1 = single["push1_sync_per_s"] / base["small_rtt_per_s"]
    r8 = single["push1_inflight8_per_s"] / single["push1_sync_per_s"]
    print(f"raw zmq small round trips/s:       {base['small_rtt_per_s']:10.0f}  (8 in flight: {base['small_pipelined8_per_s']:.0f})")
    print(f"1-key push, sync /s:               {single['push1_sync_per_s']:10.0f}  ratio to raw {r1:.2f} (target >= 0.55)")
    print(f"1-key push, 8 in flight /s:        {single['push1_inflight8_per_s']:10.0f}  ratio to sync {r8:.2f} (target >= 2)")
    print(f"1-key pull, sync /s:               {single['pull1_sync_per_s']:10.0f}")
    print(f"1000-key push, sync keys/s:        {single['push1000_sync_keys_per_s']:10.0f}")
    print(f"1000-key push, 8 in flight keys/s: {single['push1000_inflight8_keys_per_s']:10.0f}")
    print("2 servers + 2 workers (sum of both workers):")
    print(f"  1-key push sync /s {two['push1_sync_per_s']:.0f}, 8 in flight /s {two['push1_inflight8_per_s']:.0f}; "
          f"1000-key push sync keys/s {two['push1000_sync_keys_per_s']:.0f}, "
          f"8 in flight keys/s {two['push1000_inflight8_keys_per_s']:.0f}")
    path = write("pushpull", {"baseline": base, "single": single, "two": two, "rows": rows,
                              "ratios": {"push1_sync_vs_raw": r1, "push1_inflight8_vs_sync": r8}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
