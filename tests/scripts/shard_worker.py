"""A worker for the data-shard tests: processes row-range shards, one +1 push per shard.

Usage: shard_worker.py ADDRESS NAME OUTDIR N_SHARDS [--hold] [--wait-for FILE]

For each shard it gets, the worker writes OUTDIR/NAME.first (when it gets its first one),
then pushes +1 to key = shard index of the int64 ``sum`` table ``processed`` and prints
``done INDEX``. Once the set is finished it pulls keys 0..N_SHARDS-1, prints
``sums [...]`` and closes.

--hold      on the first shard, write OUTDIR/NAME.holding (the shard index) and block
            forever without pushing: the test kills this worker there.
--wait-for  on the first shard, before processing it, wait until FILE exists.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import paramserver as ps


def mark(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # the test never sees a half-written file


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("outdir", type=Path)
    p.add_argument("n_shards", type=int)
    p.add_argument("--hold", action="store_true")
    p.add_argument("--wait-for", type=Path)
    args = p.parse_args()

    w = ps.connect(args.address)
    t = w.table("processed", dtype="int64")
    first = True
    for shard in w.shards("train", ps.row_shards(10 * args.n_shards, args.n_shards)):
        if first:
            first = False
            mark(args.outdir / f"{args.name}.first", str(shard.index))
            if args.hold:
                mark(args.outdir / f"{args.name}.holding", str(shard.index))
                while True:
                    time.sleep(60)
            if args.wait_for is not None:
                deadline = time.monotonic() + 120
                while not args.wait_for.exists():
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{args.name}: {args.wait_for} never appeared")
                    time.sleep(0.02)
        start, stop = shard.data
        assert stop - start == 10
        t.push(np.array([shard.index], dtype=np.uint64), np.ones(1, dtype=np.int64)).wait()
        print(f"done {shard.index}", flush=True)
    sums = t.pull(np.arange(args.n_shards, dtype=np.uint64)).ravel().tolist()
    print(f"sums {sums}", flush=True)
    print(f"stats {w.stats()['shards']}", flush=True)
    w.close()


if __name__ == "__main__":
    main()
