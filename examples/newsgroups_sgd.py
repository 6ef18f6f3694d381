"""Sparse logistic regression by asynchronous minibatch SGD on 20 Newsgroups (comp.* and sci.* vs the rest).

Each worker takes every W-th training document; per minibatch it pulls the weights of the
features its documents contain, computes the logistic-loss gradient, and pushes it; the
servers apply AdaGrad. Features are the 926,435 unigrams and bigrams of the training split,
spread over the key space with paramserver.spread so that every server gets its share.

Run it as a whole local job:

    paramserver launch -s 2 -w 2 -- python examples/newsgroups_sgd.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from tqdm import tqdm

import paramserver as ps
from paramserver.data import newsgroups_binary


def local_batch(X: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """The distinct feature ids of a minibatch and the minibatch over just those columns."""
    cols, inverse = np.unique(X.indices, return_inverse=True)
    return cols, sp.csr_matrix((X.data, inverse, X.indptr), shape=(X.shape[0], len(cols)))


def logistic_loss(margin: np.ndarray, y: np.ndarray) -> float:
    """Mean log-loss for labels y in {0, 1}."""
    return float(np.mean(np.logaddexp(0, margin) - y * margin))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args()

    data = newsgroups_binary()
    w = ps.connect()  # the address comes from the launcher's environment
    n_workers = max(w.num_workers, 1)
    X = data.X_train[w.rank :: n_workers]
    y = data.y_train[w.rank :: n_workers].astype(np.float64)
    n_features = data.X_train.shape[1]
    weights = w.table("weights", width=1, dtype="float32", updater=ps.AdaGrad(lr=args.lr))
    if w.rank == 0:
        print(f"{n_workers} workers, {data.X_train.shape[0]:,} training documents, {n_features:,} features")

    rng = np.random.default_rng(w.rank)
    batches = [np.arange(i, min(i + args.batch, X.shape[0])) for i in range(0, X.shape[0], args.batch)]
    bar = tqdm(total=args.epochs * len(batches), desc="training", unit="batch", disable=w.rank != 0)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses = []
        for rows in (batches[i] for i in rng.permutation(len(batches))):
            cols, Xb = local_batch(X[rows])
            keys = ps.spread(cols)
            wb = weights.pull(keys).ravel().astype(np.float64)
            margin = Xb @ wb
            losses.append(logistic_loss(margin, y[rows]))
            grad = Xb.T @ (expit(margin) - y[rows]) / len(rows)
            weights.push(keys, grad.astype(np.float32))  # asynchronous: no wait
            bar.update()
        bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.4f}")
    w.wait_all()
    bar.close()
    w.barrier()

    if w.rank == 0:
        weights_all = weights.pull(ps.spread(np.arange(n_features))).ravel().astype(np.float64)
        train_margin = data.X_train @ weights_all
        test_margin = data.X_test @ weights_all
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s")
        print(f"train log-loss  {logistic_loss(train_margin, data.y_train):.4f}, "
              f"accuracy {np.mean((train_margin > 0) == data.y_train):.4f}")
        print(f"test  log-loss  {logistic_loss(test_margin, data.y_test):.4f}, "
              f"accuracy {np.mean((test_margin > 0) == data.y_test):.4f}")
        print(f"non-zero weights {np.count_nonzero(weights_all):,} of {n_features:,}")
        stats = w.stats()["tables"]["weights"]
        print(f"worker 0 traffic: {stats['bytes_sent'] / 1e6:.1f} MB sent, {stats['bytes_received'] / 1e6:.1f} MB "
              f"received in {stats['pushes']} pushes and {stats['pulls']} pulls")
    w.close()


if __name__ == "__main__":
    main()
