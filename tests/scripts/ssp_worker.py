"""A worker of the consistency tests: iterations of pull / push / advance, with a schedule log.

Usage: ssp_worker.py MODE ITERATIONS OUTFILE
MODE "schedule": bounded delay, random pauses, writes (rank, t, start, finish) rows.
MODE "sgd": synchronous least squares with tau = 0; rank 0 writes the final weights.
MODE "eventual": rank 1 stalls after iteration 0 until rank 0 has finished (a file says so).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for workloads
import paramserver as ps
from workloads import sgd_problem

mode, iterations, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
w = ps.connect()
rank, n = w.rank, w.num_workers

if mode == "schedule":
    t_ = w.table("m", width=4, dtype="float64", consistency="bounded", tau=int(os.environ["TAU"]))
    w.barrier()
    keys = ps.spread(np.arange(32))
    rng = np.random.default_rng(rank)
    rows = []
    for t in range(iterations):
        t_.pull(keys)  # held until every worker finished iteration t - tau - 1
        start = time.monotonic()
        time.sleep(float(rng.uniform(0, 0.02)) * (3 if rank == 0 else 1))  # rank 0 is slower
        t_.push(keys, np.ones((32, 4)))
        finish = time.monotonic()
        rows.append([rank, t, start, finish])
        w.advance()
    w.wait_all()
    out.with_suffix(f".{rank}.json").write_text(json.dumps({"rows": rows, "stats": w.stats()}))
    w.barrier()
elif mode == "sgd":
    A, b = sgd_problem()
    A, b = A[rank::n], b[rank::n]
    lr = float(os.environ["LR"])
    t_ = w.table("x", width=1, dtype="float64", updater="sgd", updater_args={"lr": lr}, consistency="bounded",
                 tau=0, aggregate=True)
    w.barrier()
    keys = np.arange(8, dtype=np.uint64)
    for _ in range(iterations):
        with w.iteration():
            x = t_.pull(keys).ravel()
            t_.push(keys, A.T @ (A @ x - b))  # gradient of 0.5 * ||A x - b||^2 on this shard
    w.wait_all()
    w.barrier()
    if rank == 0:
        out.write_text(json.dumps(t_.pull(keys).ravel().tolist()))
elif mode == "eventual":
    t_ = w.table("e", dtype="float64")
    w.barrier()
    done = out.with_suffix(".fast_done")
    rows = []
    for t in range(iterations):
        t_.pull([1])
        start = time.monotonic()
        t_.push([1], np.ones(1))
        rows.append([rank, t, start, time.monotonic()])
        w.advance()
        if rank == 1 and t == 0:
            while not done.exists():  # stall until the fast worker has finished every iteration
                time.sleep(0.01)
    if rank == 0:
        done.write_text("")
    w.wait_all()
    out.with_suffix(f".{rank}.json").write_text(json.dumps({"rows": rows, "stats": w.stats()}))
    w.barrier()
w.close()
