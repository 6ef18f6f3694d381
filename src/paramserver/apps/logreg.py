"""Sparse L1-regularised logistic regression: the delayed block proximal gradient method.

Minimises ``sum_i log(1 + exp(-y_i x_i.w)) + lam * ||w||_1`` (no intercept), the paper's
Algorithm 3. Features are cut into blocks of key ranges; iteration t works on block
``t mod B`` (every worker follows the same shuffled order). A worker at iteration t pulls
the weights of the block updated at iteration ``t - tau - 1`` (bounded delay guarantees
they are final) and updates its margins, computes the gradient ``g`` and the diagonal
curvature ``u`` of its data on block t, drops what the KKT filter says cannot move, and
pushes ``[g, u]``. The servers sum the pushes of each iteration and apply the proximal
(soft-threshold) step once (table updater ``l1_prox``, ``aggregate=True``).

It stops on a convergence criterion, not after a fixed count: every 5th pass is unfiltered
(no KKT filter), and once the objective after such a pass is less than ``--tol`` (relative)
below the one 5 passes before, rank 0 says so through a small table that every worker reads
at the same iteration; all then run one more unfiltered pass and stop. ``--passes`` is only
an upper bound. The objective is computed by rank 0 (every ``--log-every`` passes, which
must divide 5 for the criterion to apply; its time is not counted as training time). The
training time counts from when a worker is connected with its data in memory: the row
share, the cut into blocks and the table set-up are part of it.

``--algo ftrl`` trains the same model online instead: asynchronous minibatch FTRL-proximal,
for streaming data. Run it with ``paramserver run logreg [--data FILE.libsvm] ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from paramserver.filters import KKT, Compress, KeyCache, ZeroSuppress
from paramserver.placement import spread, unspread
from paramserver.table import FTRL, L1Prox
from paramserver.worker import Table, Worker, connect

from . import _reference


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="training data in libsvm format (default: 20 Newsgroups, binary task)")
    p.add_argument("--test", help="test data in libsvm format (with --data)")
    p.add_argument("--algo", choices=["dbpg", "ftrl"], default="dbpg")
    p.add_argument("--lam", type=float, default=1.0, help="L1 weight lambda (default 1)")
    p.add_argument("--blocks", type=int, default=64, help="feature blocks (default 64)")
    p.add_argument("--passes", type=int, default=100,
                   help="at most this many passes over all blocks (default 100; --tol usually stops sooner)")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="stop once 5 passes lower the objective by less than this fraction (default 1e-4; 0: "
                        "run all --passes)")
    p.add_argument("--tau", type=int, default=0, help="maximal delay in iterations (default 0)")
    p.add_argument("--damping", type=float, nargs=3, default=[2.0, 1.3, 5], metavar=("START", "END", "PASSES"),
                   help="curvature scale: START for the first PASSES passes, then END (default 2 1.3 5); "
                        "multiplied by 1 + tau")
    p.add_argument("--filters", default="kkt,keys,zeros,snappy",
                   help="comma list of kkt, keys, zeros, snappy, lz4, zstd, or none (default kkt,keys,zeros,snappy)")
    p.add_argument("--target", type=float, default=1e-3,
                   help="report the time until the objective is within this relative gap of liblinear's (default "
                        "1e-3; it does not stop the run)")
    p.add_argument("--plot", default="", help="write the objective against time to this PNG")
    p.add_argument("--log-every", type=int, default=1, metavar="N",
                   help="rank 0 computes the objective every N passes (0: only at the end)")


def prepare(args: argparse.Namespace) -> None:
    """Load (and cache) the data and the liblinear reference before the workers start."""
    _reference.load(args.data, args.test)
    if not args.data:
        _reference.liblinear(args.lam)


def _filters(names: str, workers: int, lam: float, w_local: dict[str, np.ndarray]) -> list[Any]:
    out: list[Any] = []
    for name in (n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"):
        if name == "kkt":
            # w_j == 0 and |g_j| <= lam / (2 workers): if every worker drops j, the summed
            # |g_j| <= lam / 2 and the step would leave w_j at 0 with room to spare. If only
            # some do, the server's partial sum misses at most lam / 2 (not lam, as with a
            # bound of lam / workers, whose wrong steps made the objective go up and down).
            out.append(KKT(lambda k, v: (w_local["block"] == 0) & (np.abs(v[:, 0]) <= lam / (2 * workers))))
        elif name == "keys":
            out.append(KeyCache())
        elif name == "zeros":
            out.append(ZeroSuppress())
        else:
            out.append(Compress(name))
    return out


def worker(args: argparse.Namespace) -> int:
    X, y, X_test, y_test = _reference.load(args.data, args.test)
    w = connect()
    start = time.perf_counter()  # the data is in memory: training time counts from here
    n_workers = max(w.num_workers, 1)
    X = X[w.rank :: n_workers] if n_workers > 1 else X
    y = 2.0 * y[w.rank :: n_workers] - 1.0  # labels in {-1, +1}
    train = dbpg if args.algo == "dbpg" else ftrl
    log, table = train(w, X, y, args, n_workers, start)
    w.wait_all()
    w.barrier()
    if w.rank == 0:
        report(w, table, args, log, X_test, y_test)
    w.barrier()
    w.close()
    return 0


def partition(X: sp.spmatrix, blocks: int) -> list[tuple[np.ndarray, sp.csr_matrix]]:
    """Cut the columns of ``X`` that hold data into ``blocks`` blocks of key ranges.

    Returns, per block, its keys (``spread`` of the column ids, ascending) and the CSR
    matrix of ``X``'s rows on those columns, in that key order (a block with no column is
    empty). One CSC conversion, then one column slice per block (scipy's compiled
    indexing; a single radix sort of the non-zeros by block measured no faster).
    """
    Xc = X.tocsc()
    cols = np.flatnonzero(np.diff(Xc.indptr))  # the features with data
    keys = spread(cols)
    order = np.argsort(keys)
    cols, keys = cols[order], keys[order]
    cuts = np.searchsorted(keys, (np.arange(1, blocks, dtype=np.float64) * (2.0**64 / blocks)).astype(np.uint64))
    return [(keys[a:b], Xc[:, cols[a:b]].tocsr()) for a, b in zip([0, *cuts], [*cuts, len(keys)], strict=True)]


def dbpg(w: Worker, X: sp.csr_matrix, y: np.ndarray, args: argparse.Namespace,
         n_workers: int, start: float) -> tuple[list[dict], Table]:
    """The delayed block proximal gradient method; returns the per-pass log (rank 0) and the table.

    ``start`` is when this worker had its data in memory: the log's seconds count from
    then (partitioning and table set-up included), less rank 0's objective evaluations.
    """
    B, lam, tau = args.blocks, args.lam, args.tau
    blocks = partition(X, B)  # the features this worker has data for, in B key ranges
    sq = [sp.csr_matrix((Xb.data**2, Xb.indices, Xb.indptr), shape=Xb.shape) for _, Xb in blocks]
    w_known = [np.zeros(len(k)) for k, _ in blocks]  # this worker's view of w, per block
    margins = np.zeros(X.shape[0])  # y_i * x_i.w as far as this worker knows
    view: dict[str, np.ndarray] = {}
    filters = _filters(args.filters, n_workers, lam, view)
    no_kkt = [f for f in filters if not isinstance(f, KKT)]
    table = w.table("logreg_w", width=2, dtype="float64", updater=L1Prox(lam=lam), aggregate=True,
                    consistency="bounded", tau=tau, filters=filters)
    # one small table for control: key p >= 1 sums the workers' loss after pass p, key 0 is
    # rank 0's "converged" (one table, so each iteration sends one clock tick fewer per server)
    control = w.table("logreg_control", dtype="float64")
    w.barrier()
    rng = np.random.default_rng(12345)  # the same block order on every worker
    schedule = rng.permutation(B)
    log: list[dict] = []
    paused = 0.0
    last = args.passes  # the pass after which to stop (brought forward when converged)
    bar = _progress(last * B, w.rank == 0)
    t = -1
    while t + 1 < last * B:
        t += 1
        if t == len(schedule):  # the next pass's block order
            schedule = np.concatenate([schedule, rng.permutation(B)])
        b = int(schedule[t])
        if t > tau:  # the block updated at t - tau - 1 is final now: bring the margins up to date
            _refresh(table, blocks, w_known, margins, y, int(schedule[t - tau - 1]))
        bkeys, Xb = blocks[b]
        q = expit(-margins)
        g = -(Xb.T @ (y * q))
        # stale margins (tau > 0) need a proportionally smaller step to stay stable
        damping = (1 + tau) * (args.damping[0] if t < args.damping[2] * B else args.damping[1])
        u = damping * (sq[b].T @ (q * (1 - q)))
        view["block"] = w_known[b]
        full = (t // B) % 5 == 4 or t >= (last - 1) * B  # every 5th pass and the last: no KKT
        table.push(bkeys, np.column_stack([g, u]), filters=no_kkt if full else None)
        end_of_pass = (t + 1) % B == 0
        if end_of_pass:  # this worker's part of the objective (margins up to t - tau)
            control.push([(t + 1) // B], np.array([np.logaddexp(0, -margins).sum()]))
        w.advance()
        bar.update()
        p = (t + 1) // B
        # Read at iteration t + 1, held until every worker finished t: every worker sees the
        # same decisions (rank 0 makes them at the iteration after a pass, so at most t).
        if (end_of_pass and args.tol > 0 and last == args.passes and p < last - 1
                and float(control.pull([0], tau=0).ravel()[0]) > 0):
            last = p + 1  # one more unfiltered pass, then stop
            bar.total = last * B
        if end_of_pass and w.rank == 0 and args.log_every and p % args.log_every == 0:
            t0 = time.perf_counter()  # logging time is not training time
            entry = _objective(w, table, control, p, lam, start + paused)
            paused += time.perf_counter() - t0
            log.append(entry)
            bar.set_postfix(objective=f"{entry['objective']:.3f}", nnz=entry["nnz"])
            if args.tol > 0 and last == args.passes and converged(log, args.tol):
                control.push([0], np.ones(1)).wait()
    bar.close()
    return log, table


def converged(log: list[dict], tol: float, window: int = 5) -> bool:
    """The convergence criterion: the objective after the latest unfiltered pass (a multiple
    of ``window``) is less than ``tol`` (relative) below the one ``window`` passes before."""
    by_pass = {e["pass"]: e["objective"] for e in log}
    p = log[-1]["pass"]
    if p % window or p - window not in by_pass:
        return False
    before, now = by_pass[p - window], by_pass[p]
    return bool(before - now < tol * abs(now))


def _refresh(table: Table, blocks: list, w_known: list, margins: np.ndarray, y: np.ndarray, b: int) -> None:
    bkeys, Xb = blocks[b]
    new = table.pull(bkeys)[:, 0]
    delta = new - w_known[b]
    if np.any(delta):
        margins += y * (Xb @ delta)
        w_known[b] = new


def _objective(w: Worker, table: Table, control: Table, p: int, lam: float, t0: float) -> dict[str, Any]:
    """Rank 0: the objective after pass p (every worker's loss part, plus lam * ||w||_1)."""
    total = float(control.pull([p], tau=0).ravel()[0])  # held until every worker finished this iteration
    _, values = table.pull_range(tau=10**9)
    weights = values[:, 0]
    return {"pass": p, "seconds": time.perf_counter() - t0, "objective": total + lam * float(np.abs(weights).sum()),
            "nnz": int(np.count_nonzero(weights))}


def ftrl(w: Worker, X: sp.csr_matrix, y: np.ndarray, args: argparse.Namespace,
         n_workers: int, start: float) -> tuple[list[dict], Table]:
    """Asynchronous minibatch FTRL-proximal (streaming): one pass per --passes."""
    Xr = X.tocsr()
    table = w.table("logreg_ftrl", dtype="float64", updater=FTRL(alpha=0.5, l1=args.lam / Xr.shape[0] * n_workers))
    w.barrier()
    rng = np.random.default_rng(w.rank)
    bar = _progress(args.passes * (Xr.shape[0] // 32 + 1), w.rank == 0)
    for _ in range(args.passes):
        for rows in np.array_split(rng.permutation(Xr.shape[0]), Xr.shape[0] // 32 + 1):
            Xb = Xr[rows]
            cols, inverse = np.unique(Xb.indices, return_inverse=True)
            local = sp.csr_matrix((Xb.data, inverse, Xb.indptr), shape=(len(rows), len(cols)))
            keys = spread(cols)
            wb = table.pull(keys).ravel()
            grad = local.T @ (-(y[rows]) * expit(-y[rows] * (local @ wb)))
            table.push(keys, grad)
            bar.update()
        w.advance()
    bar.close()
    return [], table


def report(w: Worker, table: Table, args: argparse.Namespace, log: list[dict], X_test: Any,
           y_test: Any) -> None:
    """Rank 0: the final objective, accuracy, AUC, non-zeros, traffic; JSON or a report."""
    traffic = {"workers": w.stats()["tables"][table.name], "servers": _server_traffic(w, table)}
    keys, values = table.pull_range(tau=10**9)
    n_features = _reference.n_features(args.data, args.test)
    weights = np.zeros(n_features)
    weights[unspread(keys).astype(np.int64)] = values[:, 0]
    X, y, _, _ = _reference.load(args.data, args.test)
    objective = _reference.objective(X, y, weights, args.lam)
    result: dict[str, Any] = {
        "objective": objective, "nnz": int(np.count_nonzero(weights)),
        "seconds": log[-1]["seconds"] if log else None, "passes": log[-1]["pass"] if log else args.passes,
        "max_passes": args.passes, "tol": args.tol, "workers": w.num_workers,
        "tau": args.tau, "log": log, "traffic": traffic,
    }
    if X_test is not None:
        margin = X_test @ weights
        result["test_accuracy"] = float(np.mean((margin > 0) == (y_test > 0)))
        result["test_auc"] = _reference.auc(margin, y_test)
    ref = _reference.liblinear(args.lam) if not args.data else None
    if ref:
        result["liblinear"] = ref
        result["relative_gap"] = (objective - ref["objective"]) / ref["objective"]
        if log:
            hit = [e["seconds"] for e in log if e["objective"] <= ref["objective"] * (1 + args.target)]
            result["seconds_to_target"] = hit[0] if hit else None
    if args.plot and log:
        _plot(log, ref, Path(args.plot))
        result["plot"] = args.plot
    if args.json:
        print(json.dumps(result, default=float))
        return
    print(f"objective {objective:.4f}  non-zeros {result['nnz']}  test accuracy {result.get('test_accuracy', 0):.4f}"
          f"  AUC {result.get('test_auc', 0):.4f}  ({result['passes']} passes, {result['seconds'] or 0:.1f} s)")
    if ref:
        print(f"liblinear  {ref['objective']:.4f}  non-zeros {ref['nnz']}  test accuracy {ref['test_accuracy']:.4f}"
              f"  ({ref['seconds']:.1f} s); relative gap {result['relative_gap']:.2e}")
    if args.plot and log:
        print(f"objective against time: {args.plot}")


def _server_traffic(w: Worker, table: Table) -> dict[str, int]:
    """Bytes the servers sent and received for ``table`` (from the cluster's status)."""
    from paramserver.deploy import AdminClient

    with AdminClient(w.address) as admin:
        servers = admin.status()["servers"].values()
    return {k: sum(s["tables"][str(table.id)][k] for s in servers if "tables" in s)
            for k in ("bytes_sent", "bytes_received")}


def _progress(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="block iterations", unit="it", disable=not show, file=sys.stderr)


def _plot(log: list[dict], ref: dict | None, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e["seconds"] for e in log], [e["objective"] for e in log], "o-", label="paramserver DBPG")
    if ref:
        ax.axhline(ref["objective"], color="gray", ls="--", label="liblinear optimum")
    ax.set_xlabel("seconds")
    ax.set_ylabel("objective")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    from ._runner import worker_main

    worker_main(sys.modules[__name__], "logreg")
