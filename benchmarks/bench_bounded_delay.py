"""Bounded delay on a real training job: the paper's Figure 13, on this machine.

Sparse logistic regression (20 Newsgroups, 926,435 features) by minibatch SGD with AdaGrad
on the servers; 2 servers and 4 workers; every iteration a worker pulls the weights of its
minibatch's features under bounded delay tau, computes the gradient, pushes it and
advances. Besides its computation each worker pauses 10 ms per iteration on average:
workers 0-2 for 0-20 ms at random, while worker 3 is the straggler slowed on purpose, with
no pause in most iterations but 80 ms in one of eight (like a machine with a noisy
neighbour). Bounded delay lets the others run ahead through its stalls.

For tau = 0, 1, 2, 4, 8, 16, each run lasts the same wall time; we report the time per
iteration, the workers' idle fraction (time blocked waiting / elapsed) and the training
objective (mean logistic loss on the whole training set) at the end. Writes
benchmarks/results/bounded_delay.json and bounded_delay.png.
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
from _common import RESULTS, run_workers, write

TAUS = [0, 1, 2, 4, 8, 16]
WORKERS = 4


def _worker(address: str, tau: int, seconds: float, batch: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    import scipy.sparse as sp
    from scipy.special import expit

    import paramserver as ps
    from paramserver.data import newsgroups_binary

    data = newsgroups_binary()
    with ps.connect(address) as w:
        X = data.X_train[w.rank :: WORKERS]
        y = data.y_train[w.rank :: WORKERS].astype(np.float64)
        table = w.table("weights", dtype="float32", updater=ps.AdaGrad(lr=0.1), consistency="bounded", tau=tau)
        rng = np.random.default_rng(w.rank)
        w.barrier()
        start = time.monotonic()
        wait0 = w.stats()["wait_seconds"]
        iterations = 0
        while time.monotonic() - start < seconds:
            rows = rng.integers(0, X.shape[0], batch)
            Xb = X[rows]
            cols, inverse = np.unique(Xb.indices, return_inverse=True)
            Xl = sp.csr_matrix((Xb.data, inverse, Xb.indptr), shape=(len(rows), len(cols)))
            keys = ps.spread(cols)
            wb = table.pull(keys).ravel().astype(np.float64)
            grad = Xl.T @ (expit(Xl @ wb) - y[rows]) / len(rows)
            pause = (0.08 if rng.random() < 1 / 8 else 0.0) if w.rank == WORKERS - 1 else rng.uniform(0, 0.02)
            time.sleep(pause)  # the rest of the "computation"
            table.push(keys, grad.astype(np.float32))
            w.advance()
            iterations += 1
        elapsed = time.monotonic() - start
        waited = w.stats()["wait_seconds"] - wait0
        w.wait_all()
        w.barrier()
        objective = None
        if w.rank == 0:
            weights = table.pull(ps.spread(np.arange(data.X_train.shape[1])), tau=10**9).ravel().astype(np.float64)
            margin = data.X_train @ weights
            objective = float(np.mean(np.logaddexp(0, margin) - data.y_train * margin))
        q.put({"rank": w.rank, "iterations": iterations, "elapsed": elapsed, "waited": waited,
               "objective": objective})
        w.barrier()


def run(tau: int, seconds: float, batch: int) -> dict[str, Any]:
    results = sorted(run_workers(_worker, (tau, seconds, batch), servers=2, workers=WORKERS), key=lambda r: r["rank"])
    its = [r["iterations"] for r in results]
    return {
        "tau": tau,
        "iterations": its,
        "seconds_per_iteration": float(np.mean([r["elapsed"] / r["iterations"] for r in results])),
        "idle_fraction": float(np.mean([r["waited"] / r["elapsed"] for r in results])),
        "idle_fraction_fast_workers": float(np.mean([r["waited"] / r["elapsed"] for r in results[:-1]])),
        "objective": results[0]["objective"],
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = [r["tau"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(taus, [1000 * r["seconds_per_iteration"] for r in rows], "o-")
    axes[0].set_ylabel("ms per iteration")
    axes[1].plot(taus, [100 * r["idle_fraction"] for r in rows], "o-")
    axes[1].set_ylabel("worker idle time (%)")
    axes[2].plot(taus, [r["objective"] for r in rows], "o-")
    axes[2].set_ylabel("training objective after a fixed time")
    for ax in axes:
        ax.set_xlabel("maximal delay tau")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(taus, [str(t) for t in taus])
        ax.grid(alpha=0.3)
    fig.suptitle("Bounded delay: 20 Newsgroups logistic regression, 2 servers, 4 workers (one slowed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0, help="wall time of each run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--taus", type=int, nargs="*", default=TAUS)
    args = ap.parse_args()
    from paramserver.data import newsgroups_binary

    newsgroups_binary()  # fetch and cache once, before the workers start
    rows = []
    print(f"{'tau':>4} {'ms/iter':>8} {'idle %':>7} {'idle % (fast)':>14} {'objective':>10}  iterations per worker")
    for tau in args.taus:
        r = run(tau, args.seconds, args.batch)
        rows.append(r)
        print(f"{tau:>4} {1000 * r['seconds_per_iteration']:8.1f} {100 * r['idle_fraction']:7.1f} "
              f"{100 * r['idle_fraction_fast_workers']:14.1f} {r['objective']:10.4f}  {r['iterations']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / "bounded_delay.png"
    plot(rows, png)
    print(f"wrote {write('bounded_delay', {'rows': rows, 'seconds': args.seconds})} and {png}")


if __name__ == "__main__":
    main()
