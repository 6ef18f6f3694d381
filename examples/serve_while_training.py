"""One group trains while another serves: queries answered from the live model.

The paper's worker groups (docs/groups.md): a local cluster of 2 servers; a training group
of 2 worker processes fits logistic regression on 20 Newsgroups (comp.* and sci.* against
the rest) by synchronous minibatch SGD, on a table that aggregates each iteration's
gradients (tau = 0) and keeps its last snapshots; a query group of 1 worker process
attaches to the same table read-only and answers "queries" (the test documents, a batch at
a time) from the live model, so its accuracy climbs while training goes on. The reader
never slows the trainers' clocks: it sends no clock ticks and pulls with eventual
consistency. At the end it reads the table at the trainers' last iteration (a snapshot,
the same cut on both servers) and scores every test document with it.

    python examples/serve_while_training.py [--iterations 300] [--batch 128]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

import paramserver as ps
from paramserver.data import newsgroups_binary

TRAINERS = 2
TABLE = dict(name="lr/weights", dtype="float32", updater="sgd", updater_args={"lr": 0.5}, tau=0, aggregate=True,
             snapshots=8)


def local(X: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """The distinct feature ids of some documents and the documents over just those columns."""
    cols, inverse = np.unique(X.indices, return_inverse=True)
    return cols, sp.csr_matrix((X.data, inverse, X.indptr), shape=(X.shape[0], len(cols)))


def train(address: str, iterations: int, batch: int, q: mp.Queue) -> None:  # type: ignore[type-arg]
    """A worker of the training group: synchronous minibatch SGD on its shard."""
    data = newsgroups_binary()
    with ps.connect(address, group="train", group_workers=TRAINERS) as w:
        X, y = data.X_train[w.rank :: TRAINERS], data.y_train[w.rank :: TRAINERS].astype(np.float64)
        weights = w.table(**TABLE, writers=["train"])  # the namespace "lr" is written by this group only
        rng = np.random.default_rng(w.rank)
        w.barrier()
        start = time.monotonic()
        for _ in range(iterations):
            with w.iteration():
                rows = rng.integers(0, X.shape[0], batch)
                cols, Xb = local(X[rows])
                keys = ps.spread(cols)
                margin = Xb @ weights.pull(keys).ravel().astype(np.float64)
                grad = Xb.T @ (expit(margin) - y[rows]) / (batch * TRAINERS)  # summed over the group
                weights.push(keys, grad.astype(np.float32))
        w.wait_all()
        q.put(("trained", w.rank, iterations, time.monotonic() - start))
        w.barrier()


def serve(address: str, iterations: int, batch: int, trained: Any, q: mp.Queue) -> None:  # type: ignore[type-arg]
    """The query group: answer batches of test documents from the live model."""
    data = newsgroups_binary()
    with ps.connect(address, group="serve") as w:
        weights = w.table(**TABLE, readonly=True)
        rng = np.random.default_rng(0)
        answered = 0
        start = time.monotonic()
        while not trained.is_set():  # queries from the live model while the trainers train
            rows = rng.integers(0, data.X_test.shape[0], batch)
            cols, Xb = local(data.X_test[rows])
            margin = Xb @ weights.pull(ps.spread(cols)).ravel().astype(np.float64)
            answered += batch
            accuracy = float(np.mean((margin > 0) == data.y_test[rows]))
            q.put(("query", answered, time.monotonic() - start, accuracy))
        # every test document, scored with the table exactly after the last iteration
        cols, Xt = local(data.X_test)
        final = weights.pull(ps.spread(cols), snapshot=iterations - 1).ravel().astype(np.float64)
        q.put(("final", float(np.mean(((Xt @ final) > 0) == data.y_test)), data.X_test.shape[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    newsgroups_binary()  # fetched and cached once, before the workers start
    ctx = mp.get_context("spawn")
    with ps.LocalCluster(servers=2) as cluster:
        q, done = ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=train, args=(cluster.address, args.iterations, args.batch, q))
                 for _ in range(TRAINERS)]
        procs.append(ctx.Process(target=serve, args=(cluster.address, args.iterations, args.batch, done, q)))
        for p in procs:
            p.start()
        trained: list[Any] = []
        last_print = 0.0
        while True:
            msg = q.get(timeout=600)
            if msg[0] == "query" and msg[2] - last_print >= 1.0:
                last_print = msg[2]
                print(f"{msg[2]:6.1f} s  queries answered {msg[1]:7,}  accuracy of the last batch {msg[3]:.3f}",
                      flush=True)
            elif msg[0] == "trained":
                trained.append(msg)
                print(f"trainer {msg[1]}: {msg[2]} iterations in {msg[3]:.1f} s ({msg[2] / msg[3]:.1f} it/s)")
                if len(trained) == TRAINERS:
                    done.set()
            elif msg[0] == "final":
                print(f"snapshot after iteration {args.iterations - 1}: test accuracy {msg[1]:.4f} "
                      f"on {msg[2]:,} documents")
                break
        for p in procs:
            p.join(60)


if __name__ == "__main__":
    main()
