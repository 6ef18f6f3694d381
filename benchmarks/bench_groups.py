"""One group trains while another serves: the trainers' iteration rate with and without readers.

One cluster (2 servers). A training group of 2 workers runs synchronous iterations on a
table of KEYS float32 keys (bounded delay tau = 0 with server-side aggregation, the
strictest model: each iteration waits for both trainers): pull every key, push a gradient
for every key, advance. A reader group of READERS workers attaches to the same table
read-only and pulls every key in a loop, as a query service would.

The run alternates windows of equal length, trainers alone and trainers with the readers
pulling (A B A B ... A; the readers stay connected and idle in the windows alone). The
baseline is the trainers' mean rate in the windows alone, measured in the same run. A reader adds server load but never
counts in the table's clocks, so the trainers should slow down by about the share of the
servers' work the readers add, not more (before readers existed, a second process on a
tau = 0 table stalled the trainers for good). We report the trainers' iterations/s in each
window, the readers' pulls/s, the servers' share of keys served that went to readers, and
the slowdown beside that share. Writes benchmarks/results/groups.json.

Run it alone on the machine (``flock /tmp/cpu.lock``): it measures throughput.
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
from _common import write

TRAINERS = 2


def _trainer(address: str, keys_n: int, stop: Any, q: mp.Queue) -> None:  # type: ignore[type-arg]
    import paramserver as ps

    with ps.connect(address, group="train", group_workers=TRAINERS) as w:
        t = w.table("model", dtype="float32", tau=0, aggregate=True)
        keys = ps.spread(np.arange(keys_n))
        grad = np.full(keys_n, 1e-3, dtype=np.float32)
        w.barrier()
        stamps = []
        while not stop.is_set():
            with w.iteration():
                t.pull(keys)
                t.push(keys, grad)
            stamps.append(time.monotonic())
        w.wait_all()
        w.barrier()
        q.put({"role": "trainer", "rank": w.rank, "stamps": stamps, "keys": keys_n})


def _reader(address: str, keys_n: int, ready: Any, reading: Any, stop: Any, q: mp.Queue) -> None:  # type: ignore[type-arg]
    import paramserver as ps

    with ps.connect(address, group="serve") as w:
        t = w.table("model", dtype="float32", tau=0, aggregate=True, readonly=True)
        keys = ps.spread(np.arange(keys_n))
        t.pull(keys)
        ready.release()
        stamps = []
        while not stop.is_set():
            if reading.wait(0.01):  # the readers pull only in the windows "with readers"
                t.pull(keys)
                stamps.append(time.monotonic())
        q.put({"role": "reader", "stamps": stamps, "keys": keys_n})


def rate(stamps: list[float], lo: float, hi: float) -> float:
    """Events per second inside ``[lo, hi)``."""
    inside = [s for s in stamps if lo <= s < hi]
    return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 else 0.0


def run(keys_n: int, readers: int, window: float, rounds: int) -> dict[str, Any]:
    """Windows alone and with readers, alternating (A B A B ... A), in one cluster."""
    import paramserver as ps

    ctx = mp.get_context("spawn")
    with ps.LocalCluster(servers=2) as cluster:
        q = ctx.Queue()
        stop, reading = ctx.Event(), ctx.Event()
        ready = ctx.Semaphore(0)
        procs = [ctx.Process(target=_trainer, args=(cluster.address, keys_n, stop, q)) for _ in range(TRAINERS)]
        procs += [ctx.Process(target=_reader, args=(cluster.address, keys_n, ready, reading, stop, q))
                  for _ in range(readers)]
        for p in procs:
            p.start()
        for _ in range(readers):
            ready.acquire(timeout=120)
        time.sleep(2)  # warm-up
        windows: list[tuple[bool, float, float]] = []
        for i in range(2 * rounds + 1):
            with_readers = i % 2 == 1
            if with_readers:
                reading.set()
            lo = time.monotonic()
            time.sleep(window)
            windows.append((with_readers, lo + 0.2, time.monotonic()))  # skip the switch-over
            reading.clear()
        stop.set()
        results = [q.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
    trainers = [r["stamps"] for r in results if r["role"] == "trainer"]
    readers_st = [r["stamps"] for r in results if r["role"] == "reader"]

    def trainer_rate(w: tuple[bool, float, float]) -> float:
        return float(np.mean([rate(s, w[1], w[2]) for s in trainers]))

    alone = [trainer_rate(w) for w in windows if not w[0]]
    with_r = [trainer_rate(w) for w in windows if w[0]]
    reader_pulls = float(np.mean([sum(rate(s, w[1], w[2]) for s in readers_st) for w in windows if w[0]]))
    baseline, loaded = float(np.mean(alone)), float(np.mean(with_r))
    # keys the servers serve per second with readers: each trainer iteration pulls and
    # pushes every key; each reader pull reads every key
    trainer_keys = loaded * TRAINERS * 2 * keys_n
    reader_keys = reader_pulls * keys_n
    share = reader_keys / (trainer_keys + reader_keys) if trainer_keys + reader_keys else 0.0
    slowdown = 1 - loaded / baseline if baseline else 0.0
    return {"keys": keys_n, "readers": readers, "window_seconds": window, "alone_iter_per_s": alone,
            "with_readers_iter_per_s": with_r, "baseline_iter_per_s": baseline, "loaded_iter_per_s": loaded,
            "reader_pulls_per_s": reader_pulls, "reader_share_of_keys_served": share, "slowdown": slowdown,
            "slowdown_over_share": slowdown / share if share else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, nargs="*", default=[1_000, 100_000])
    ap.add_argument("--readers", type=int, default=1)
    ap.add_argument("--window", type=float, default=4.0, help="seconds of each measuring window")
    ap.add_argument("--rounds", type=int, default=3, help="windows with readers (between windows alone)")
    ap.add_argument("--quick", action="store_true", help="short windows, one size")
    args = ap.parse_args()
    if args.quick:
        args.keys, args.window, args.rounds = [10_000], 2.0, 2
    rows = []
    print(f"{'keys':>8} {'alone it/s':>11} {'with readers':>13} {'reader pulls/s':>15} {'reader share':>13} "
          f"{'slowdown':>9} {'slowdown/share':>15}")
    for k in args.keys:
        r = run(k, args.readers, args.window, args.rounds)
        rows.append(r)
        ratio = r["slowdown_over_share"]
        print(f"{k:>8} {r['baseline_iter_per_s']:11.1f} {r['loaded_iter_per_s']:13.1f} {r['reader_pulls_per_s']:15.1f} "
              f"{100 * r['reader_share_of_keys_served']:12.1f}% {100 * r['slowdown']:8.1f}% "
              f"{'-' if ratio is None else f'{ratio:15.2f}'}", flush=True)
    print(f"wrote {write('groups', {'rows': rows, 'trainers': TRAINERS})}")


if __name__ == "__main__":
    main()
