"""CountMin sketch of a word stream (the paper's third application).

``k`` rows of ``n`` counters live on the servers, spread over the key space by key
``spread(row * n + column)``. Workers hash each word of their share of the stream once per
row, count the hits of a batch locally, and push the counts; servers add them (``sum``, or
``saturating`` below a cap). A query pulls the word's ``k`` counters and takes the minimum,
which is never below the true count; with ``n = ceil(e / eps)`` and ``k = ceil(ln(1 /
delta))`` it is within ``eps * N`` of it for all but a fraction ``delta`` of the words.

The stream is 20 Newsgroups (every whitespace token, train and test: 5.0 M tokens) or a
text file with one document per line (``--data``). Run it with ``paramserver run sketch``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._config import Config
from .._errors import InvalidArgument
from ..data import atomic_writer, newsgroups_documents
from ..deploy import AdminClient
from ..placement import spread
from ..table import SaturatingSum
from ..worker import Table, Worker, connect

_SEEDS = spread(np.arange(1, 33, dtype=np.uint64))  # one hash seed per row, up to 32 rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a text file, one document per line (default: 20 Newsgroups)")
    p.add_argument("--eps", type=float, default=1e-4, help="error bound as a share of the stream (default 1e-4)")
    p.add_argument("--delta", type=float, default=0.01, help="share of words allowed past the bound (default 0.01)")
    p.add_argument("--batch", type=int, default=200_000, help="tokens per push (default 200,000)")
    p.add_argument("--cap", type=int, default=0, help="saturate counters at this value (0: plain sum)")


def stream(data: str | None) -> tuple[np.ndarray, list[str]]:
    """The token stream as word ids, and the vocabulary (cached as .npz for 20 Newsgroups)."""
    cache = Path(Config.from_env().data_path()) / "sketch-stream.npz"
    if not data and cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return z["ids"], list(z["vocab"])
    if data:
        with open(data, encoding="utf-8", errors="replace") as f:
            texts = f.read().split("\n")
    else:
        texts = newsgroups_documents("train")[0] + newsgroups_documents("test")[0]
    words = " ".join(texts).split()
    vocab, ids = np.unique(np.array(words, dtype=object), return_inverse=True)
    ids = ids.astype(np.int64)
    if not data:
        with atomic_writer(cache) as fh:
            np.savez(fh, ids=ids, vocab=np.array(vocab, dtype=str))
    return ids, list(vocab)


def prepare(args: argparse.Namespace) -> None:
    stream(args.data)


def shape(eps: float, delta: float) -> tuple[int, int]:
    """Rows and counters per row for the (eps, delta) guarantee.

    Raises
    ------
    InvalidArgument
        delta so small that it needs more than 32 rows.
    """
    rows = math.ceil(math.log(1 / delta))
    if rows > len(_SEEDS):
        raise InvalidArgument(f"delta={delta} needs {rows} rows; at most {len(_SEEDS)} are supported")
    return rows, math.ceil(math.e / eps)


def counter_keys(ids: np.ndarray, rows: int, n: int) -> np.ndarray:
    """The ``rows`` counter keys of each word id, shape (len(ids), rows)."""
    x = ids.astype(np.uint64)[:, None] ^ _SEEDS[None, :rows]
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0x7FB5D329728EA185)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x81DADEF4BC2DD44D)
    col = (x ^ (x >> np.uint64(33))) % np.uint64(n)
    return spread(np.arange(rows, dtype=np.uint64)[None, :] * np.uint64(n) + col)


def worker(args: argparse.Namespace) -> int:
    ids, vocab = stream(args.data)
    rows, n = shape(args.eps, args.delta)
    w = connect()
    updater = "sum" if not args.cap else SaturatingSum(cap=args.cap)
    table = w.table("countmin", dtype="int64", updater=updater)
    w.barrier()
    mine = np.array_split(ids, max(w.num_workers, 1))[w.rank]
    start = time.perf_counter()
    for lo in range(0, len(mine), args.batch):
        keys = counter_keys(mine[lo : lo + args.batch], rows, n).ravel()
        uniq, counts = np.unique(keys, return_counts=True)
        table.push(uniq, counts.astype(np.int64))
    w.wait_all()
    seconds = time.perf_counter() - start
    done = w.table("countmin_seconds", dtype="float64", updater="max")
    done.push([0], np.array([seconds])).wait()
    w.barrier()
    if w.rank == 0:
        report(table, done, ids, vocab, rows, n, args, w)
    w.barrier()
    w.close()
    return 0


def report(table: Table, done: Table, ids: np.ndarray, vocab: list[str], rows: int, n: int,
           args: argparse.Namespace, w: Worker) -> None:
    """Rank 0: query every distinct word and compare with the exact counts."""
    true = np.bincount(ids, minlength=len(vocab))
    keys = counter_keys(np.arange(len(vocab)), rows, n)
    estimate = table.pull(keys.ravel()).reshape(len(vocab), rows).min(axis=1)
    N = len(ids)
    error = estimate - true
    seconds = float(done.pull([0]).ravel()[0])
    with AdminClient(w.address) as admin:
        servers = len(admin.status()["servers"])
    result: dict[str, Any] = {
        "tokens": N, "distinct": len(vocab), "rows": rows, "counters_per_row": n, "eps": args.eps,
        "delta": args.delta, "never_below_true": bool((error >= 0).all()),
        "share_within_eps_n": float(np.mean(error <= args.eps * N)), "max_error": int(error.max()),
        "mean_error": float(error.mean()), "seconds": seconds, "inserts_per_second": N / seconds,
        "inserts_per_second_per_server": N / seconds / max(servers, 1), "servers": servers,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{N:,} tokens, {len(vocab):,} distinct words; sketch {rows} x {n:,} counters")
    print(f"every estimate >= the true count: {result['never_below_true']}; within eps*N = {args.eps * N:.0f} "
          f"for {100 * result['share_within_eps_n']:.2f}% of the words (guarantee: {100 * (1 - args.delta):.0f}%)")
    print(f"inserted in {seconds:.2f} s: {result['inserts_per_second']:,.0f} tokens/s, "
          f"{result['inserts_per_second_per_server']:,.0f} per server process")


if __name__ == "__main__":
    from ._runner import worker_main

    worker_main(sys.modules[__name__], "sketch")
