"""Click-through prediction with PyTorch embedding tables on the servers (DeepFM-style).

Every example is a few categorical fields (ids); the model is a DeepFM: a first-order weight
per id (an ``EmbeddingBag`` of width 1, summed over the fields), a ``dim``-wide embedding per
id (``Embedding``) whose pairwise dot products form the factorisation-machine term, and an
MLP over the concatenated embeddings. The embedding rows live in two tables updated by
``adagrad`` on the servers (``paramserver.torch``); the MLP's parameters are shared through
a third table (``DenseParameters``), also adagrad, so every worker trains one model.
Workers train asynchronously (eventual consistency) on their share of the training set,
prefetching the rows of the next batch while the current one computes.

``--data movielens`` (default): MovieLens-100k, fields user, item and hour-of-week of the
rating, a rating >= 4 is a click (55.4% positives); 20% of the ratings (a fixed random
split) are held out. Rank 0 reports AUC and log loss on them after every epoch and, unless
``--no-reference``, trains the same model in one process with plain PyTorch
(``nn.Embedding(sparse=True)``, ``torch.optim.Adagrad``) for comparison.

``--data synthetic``: ``--fields`` fields of hashed ids drawn from ``--ids`` distinct ids
(tens of millions), so that the tables outgrow any one worker: ``--memory-cap MB`` caps
every worker's address space (``RLIMIT_AS``) below the tables' size; rank 0 then shows that
a single-process ``nn.Embedding`` of the same rows cannot even be allocated under that cap.

Run it with ``paramserver run ctr [--workers N] [--epochs E] [--plot FILE.png]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ..data import movielens_100k
from ..deploy import AdminClient
from ..placement import spread
from ..table import AdaGrad, Normal, Zeros
from ..worker import Worker, connect

_FIELD_SHIFT = 40  # id = field << 40 | value: the fields' ids never collide


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=["movielens", "synthetic"], default="movielens")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training set (default 5)")
    p.add_argument("--batch", type=int, default=256, help="examples per step and worker (default 256)")
    p.add_argument("--dim", type=int, default=16, help="embedding width (default 16)")
    p.add_argument("--hidden", type=int, default=64, help="MLP hidden units (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="adagrad learning rate, embeddings and MLP (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="split, initial values and shuffling (default 0)")
    p.add_argument("--no-reference", action="store_true", help="skip the single-process PyTorch reference")
    p.add_argument("--no-prefetch", action="store_true", help="pull each batch's rows only when it runs")
    p.add_argument("--plot", default="", help="write the held-out AUC per epoch to this PNG")
    p.add_argument("--ids", type=int, default=20_000_000, help="synthetic: distinct ids (default 20,000,000)")
    p.add_argument("--fields", type=int, default=8, help="synthetic: fields per example (default 8)")
    p.add_argument("--examples", type=int, default=1_000_000, help="synthetic: training examples (default 1,000,000)")
    p.add_argument("--memory-cap", type=int, default=0,
                   help="cap each worker's address space at this many MB (RLIMIT_AS; 0: no cap)")


def prepare(args: argparse.Namespace) -> None:
    if args.data == "movielens":
        movielens_100k()


# ---------------------------------------------------------------------------- data
def movielens(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train ids, train labels, test ids, test labels): fields user, item, hour of the week."""
    r = movielens_100k()
    hour = (r.timestamp // 3600) % (24 * 7)
    ids = np.stack([r.user, r.item | (1 << _FIELD_SHIFT), hour | (2 << _FIELD_SHIFT)], axis=1).astype(np.int64)
    y = (r.rating >= 4).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return ids[order[:cut]], y[order[:cut]], ids[order[cut:]], y[order[cut:]]


def synthetic(n: int, fields: int, n_ids: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of ``fields`` hashed ids from ``n_ids`` distinct ones per field, and
    labels from a hidden model: half the fields draw from 1,000 frequent ids that carry the
    signal, half from the whole id space (the long tail)."""
    rng = np.random.default_rng(seed)
    head = fields // 2
    raw = np.empty((n, fields), dtype=np.int64)
    raw[:, :head] = rng.integers(0, 1000, (n, head))
    raw[:, head:] = rng.integers(0, n_ids // max(fields, 1), (n, fields - head))
    ids = raw | (np.arange(fields, dtype=np.int64) << _FIELD_SHIFT)[None, :]
    weight = (spread(ids[:, :head]) >> np.uint64(11)).astype(np.float64) / 2.0**53 - 0.5  # a weight per frequent id
    logit = 4.0 * weight.sum(axis=1)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return ids, y


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half), by ranks."""
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---------------------------------------------------------------------------- model
def deepfm(first: Any, emb: Any, mlp: Any, x: Any) -> Any:
    """The DeepFM logit of ids ``x`` (B, F), given the two lookups and the MLP."""
    e = emb(x)  # (B, F, dim)
    s = e.sum(dim=1)
    fm = 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1)
    return first(x).squeeze(1) + fm + mlp(e.flatten(1)).squeeze(1)


def make_mlp(fields: int, dim: int, hidden: int, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)  # the same initial MLP on every worker and in the reference
    return torch.nn.Sequential(torch.nn.Linear(fields * dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


def evaluate(predict: Any, ids: np.ndarray, y: np.ndarray, batch: int = 8192) -> dict[str, float]:
    import torch

    with torch.no_grad():
        p = np.concatenate([torch.sigmoid(predict(torch.from_numpy(ids[i:i + batch]))).numpy()
                            for i in range(0, len(ids), batch)])
    return {"auc": auc(y, p), "log_loss": log_loss(y, p)}


def reference(args: argparse.Namespace, train: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray]) -> list[dict[str, float]]:
    """The same model and optimizer in one process with plain PyTorch (sparse embeddings),
    from the same initial values; the held-out metrics after each epoch."""
    import torch

    torch.sparse.check_sparse_tensor_invariants.disable()  # type: ignore[no-untyped-call]  # the embeddings' own sparse gradients: valid
    x, y = train
    vocab, index = np.unique(np.concatenate([x.ravel(), test[0].ravel()]), return_inverse=True)
    xi = index[:x.size].reshape(x.shape)
    ti = index[x.size:].reshape(test[0].shape)
    keys = spread(vocab)
    emb = torch.nn.Embedding(len(vocab), args.dim, sparse=True)
    first = torch.nn.EmbeddingBag(len(vocab), 1, mode="sum", sparse=True)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(Normal(std=0.01, seed=args.seed).values(keys, args.dim, np.dtype("float32"))))
        first.weight.zero_()
    mlp = make_mlp(x.shape[1], args.dim, args.hidden, args.seed)
    sparse_opt = torch.optim.Adagrad([*emb.parameters(), *first.parameters()], lr=args.lr)
    dense_opt = torch.optim.Adagrad(mlp.parameters(), lr=args.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    log = []
    for epoch in range(args.epochs):
        order = np.random.default_rng(args.seed + 1000 * epoch).permutation(len(y))
        for i in range(0, len(y), args.batch):
            b = order[i:i + args.batch]
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            loss_fn(deepfm(first, emb, mlp, torch.from_numpy(xi[b])), torch.from_numpy(y[b])).backward()
            sparse_opt.step()
            dense_opt.step()
        log.append({"epoch": epoch + 1, **evaluate(lambda t: deepfm(first, emb, mlp, t), ti, test[1])})
    return log


# ---------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> int:
    if args.memory_cap:
        cap = args.memory_cap << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    from ..torch import DenseParameters, Embedding, EmbeddingBag, Prefetcher

    torch.set_num_threads(1)  # one core per process: the servers need the others
    w = connect()
    # rank 0's status client starts its threads now: near a memory cap a new thread may not fit later
    admin = AdminClient(w.address) if w.rank == 0 else None
    if args.data == "movielens":
        x, y, tx, ty = movielens(args.seed)
    else:
        x, y = synthetic(args.examples // max(w.num_workers, 1), args.fields, args.ids, args.seed + 7 * w.rank)
        tx, ty = synthetic(20_000, args.fields, args.ids, args.seed + 99_991)
    fields = x.shape[1]
    opt = AdaGrad(lr=args.lr)
    emb = Embedding(args.dim, table="ctr/emb", worker=w, optimizer=opt, init=Normal(std=0.01, seed=args.seed))
    first = EmbeddingBag(1, table="ctr/first", worker=w, mode="sum", optimizer=opt, init=Zeros())
    mlp = make_mlp(fields, args.dim, args.hidden, args.seed)
    dense = DenseParameters(mlp.parameters(), table="ctr/mlp", worker=w, optimizer=opt, width=256)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    mine = np.arange(len(y)) if args.data == "synthetic" else np.arange(w.rank, len(y), max(w.num_workers, 1))
    steps = -(-len(mine) // args.batch)
    bar = _progress(args.epochs * steps, w.rank == 0)
    log: list[dict[str, Any]] = []
    train_seconds = 0.0
    w.barrier()
    for epoch in range(args.epochs):
        start = time.perf_counter()
        order = mine[np.random.default_rng(args.seed + 1000 * epoch + w.rank).permutation(len(mine))]
        batches = [(torch.from_numpy(x[order[i:i + args.batch]]), torch.from_numpy(y[order[i:i + args.batch]]))
                   for i in range(0, len(order), args.batch)]
        loader: Any = batches if args.no_prefetch else Prefetcher(batches, lambda b: [(emb, b[0]), (first, b[0])])
        for xb, yb in loader:
            dense.pull()
            mlp.zero_grad()
            loss_fn(deepfm(first, emb, mlp, xb), yb).backward()
            dense.push()
            bar.update(1)
        emb.flush()
        first.flush()
        dense.flush()
        train_seconds += time.perf_counter() - start
        w.barrier()
        if w.rank == 0:
            dense.pull()
            log.append({"epoch": epoch + 1, "seconds": train_seconds,
                        **evaluate(lambda t: deepfm(first, emb, mlp, t), tx, ty)})
            bar.set_postfix(auc=f"{log[-1]['auc']:.4f}")
        w.barrier()
    bar.close()
    if w.rank == 0:
        assert admin is not None
        with admin:
            report(args, w, admin, log, (x, y), (tx, ty), emb.stats, train_seconds)
    w.barrier()
    w.close()
    return 0


def _table_bytes(admin: AdminClient) -> int:
    status = admin.status()
    servers = status["servers"]
    reports = servers.values() if isinstance(servers, dict) else servers
    total = 0
    for s in reports:
        tables = (s.get("report") or s).get("tables", {})
        total += sum(t["bytes"] for t in tables.values() if t["name"].startswith("ctr/"))
    return total


def report(args: argparse.Namespace, w: Worker, admin: AdminClient, log: list[dict[str, Any]], train: tuple[np.ndarray, np.ndarray],
           test: tuple[np.ndarray, np.ndarray], stats: dict[str, int], seconds: float) -> None:
    """Rank 0: the held-out metrics, the reference's, the rows moved, the memory."""
    result: dict[str, Any] = {
        "data": args.data, "workers": w.num_workers, "epochs": args.epochs, "log": log,
        "auc": log[-1]["auc"], "log_loss": log[-1]["log_loss"], "seconds": seconds,
        "examples_per_second": args.epochs * len(train[1]) * (w.num_workers if args.data == "synthetic" else 1)
        / max(seconds, 1e-9),
        "rows_pulled": stats["rows_pulled"], "rows_pushed": stats["rows_pushed"],
        "positives": float(np.mean(np.concatenate([train[1], test[1]]))), "table_bytes": _table_bytes(admin),
    }
    if args.data == "movielens" and not args.no_reference:
        start = time.perf_counter()
        ref = reference(args, train, test)
        result.update(reference_log=ref, reference_auc=ref[-1]["auc"], reference_log_loss=ref[-1]["log_loss"],
                      reference_seconds=time.perf_counter() - start)
    if args.memory_cap:
        result["memory_cap"] = args.memory_cap << 20
        result["single_process_fits"] = _single_process_fits(args)
    if args.plot:
        _plot(result, Path(args.plot))
        result["plot"] = args.plot
    if args.json:
        print(json.dumps(result, default=float))
        return
    print(f"{args.data}: {len(train[1]):,} training examples, {w.num_workers} worker(s), {args.epochs} epochs "
          f"in {seconds:.1f} s ({result['examples_per_second']:,.0f} examples/s)")
    print(f"held out: AUC {result['auc']:.4f}, log loss {result['log_loss']:.4f}")
    if "reference_auc" in result:
        print(f"single-process PyTorch, same model: AUC {result['reference_auc']:.4f}, "
              f"log loss {result['reference_log_loss']:.4f} ({result['reference_seconds']:.1f} s)")
    print(f"rows pulled {stats['rows_pulled']:,}, pushed {stats['rows_pushed']:,}; "
          f"tables on the servers: {result['table_bytes'] / 2**20:,.0f} MB")
    if args.memory_cap:
        print(f"each worker capped at {args.memory_cap:,} MB of address space; a single-process nn.Embedding "
              f"of the same rows {'fits' if result['single_process_fits'] else 'cannot be allocated'} under it")
    if args.plot:
        print(f"AUC per epoch: {args.plot}")


def _single_process_fits(args: argparse.Namespace) -> bool:
    """Can this (capped) process allocate the rows of the synthetic tables as one torch model
    would (embedding, first-order weights and their adagrad state)?"""
    import torch

    try:
        weight = torch.empty(args.ids, args.dim + 1)
        state = torch.empty(args.ids, args.dim + 1)
        del weight, state
        return True
    except (RuntimeError, MemoryError):
        return False


def _progress(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="ctr steps", unit="step", disable=not show, file=sys.stderr)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e["epoch"] for e in result["log"]], [e["auc"] for e in result["log"]], "o-",
            label=f"paramserver, {result['workers']} worker(s)")
    if "reference_log" in result:
        ax.plot([e["epoch"] for e in result["reference_log"]], [e["auc"] for e in result["reference_log"]], "s--",
                label="single-process PyTorch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out AUC")
    ax.set_title(f"DeepFM on {result['data']}")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    from ._runner import worker_main

    worker_main(sys.modules[__name__], "ctr")
