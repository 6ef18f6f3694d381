"""PyTorch embedding tables on the servers against single-process PyTorch, in the same run.

The model is a small CTR model: ``FIELDS`` categorical ids per example summed by an
``EmbeddingBag`` of width ``DIM`` (``mode="sum"``), then an MLP (``DIM -> 64 -> 1``), logistic
loss; ids from a Zipf-like law over ``IDS`` distinct ids (hashed, no vocabulary). Every run
does the same steps at batch ``--batch`` (default 1024):

* **baseline**: one process, ``nn.EmbeddingBag(IDS, DIM, sparse=True)`` with
  ``torch.optim.Adagrad`` on its sparse gradients (the MLP with Adagrad too);
* **paramserver, 1 worker**: the same model with ``paramserver.torch.EmbeddingBag`` over an
  adagrad table on 2 servers, the MLP in a ``DenseParameters`` table; with and without the
  ``Prefetcher`` (the prefetch gain);
* **paramserver, 2 workers**: two worker processes, each at the same batch size; their
  examples/s added.

Reported: examples/s and the ratio to the baseline, rows pulled and pushed per second (one
row per distinct id of a batch). Goal: 1 worker >= 0.5x the baseline at batch 1024 on a
2-core machine. Writes benchmarks/results/torch.json. Run it alone on the machine
(``flock /tmp/cpu.lock``): it measures throughput.
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

IDS, FIELDS, DIM, HIDDEN, LR = 1_000_000, 16, 16, 64, 0.05


def batches(n: int, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` batches of (ids (batch, FIELDS) int64, labels float32); ids Zipf-like over IDS."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.minimum(rng.zipf(1.2, (batch, FIELDS)) - 1, IDS - 1).astype(np.int64)
        ids = (ids * 2654435761 + np.arange(FIELDS)[None, :]) % (1 << 62)  # hashed, spread out
        y = (rng.random(batch) < 0.3).astype(np.float32)
        out.append((ids, y))
    return out


def mlp(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1))


def baseline(data: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Single-process PyTorch: a dense index over the ids seen, sparse embedding gradients."""
    import torch

    torch.set_num_threads(1)
    torch.sparse.check_sparse_tensor_invariants.disable()
    # The table is indexed by position: map the hashed ids to 0..V-1 beforehand (not timed;
    # a single-process model needs a vocabulary, the table does not).
    vocab = np.unique(np.concatenate([x.ravel() for x, _ in data]))
    idx = [(torch.from_numpy(np.searchsorted(vocab, x)), torch.from_numpy(y)) for x, y in data]
    bag = torch.nn.EmbeddingBag(max(IDS, len(vocab)), DIM, mode="sum", sparse=True)
    top = mlp()
    opts = [torch.optim.Adagrad(bag.parameters(), lr=LR), torch.optim.Adagrad(top.parameters(), lr=LR)]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(x: Any, y: Any) -> None:
        for o in opts:
            o.zero_grad()
        loss_fn(top(bag(x)).squeeze(1), y).backward()
        for o in opts:
            o.step()

    step(*idx[0])
    start = time.perf_counter()
    for x, y in idx:
        step(x, y)
    seconds = time.perf_counter() - start
    return {"examples_per_second": sum(len(y) for _, y in data) / seconds, "seconds": seconds}


def ps_train(address: str, n: int, batch: int, prefetch: bool, tag: str, q: Any) -> None:
    """One worker: the same model with its embedding in a table (run as its own process)."""
    import torch

    import paramserver as ps
    from paramserver.torch import DenseParameters, EmbeddingBag, Prefetcher

    torch.set_num_threads(1)
    w = ps.connect(address)
    data = batches(n + 1, batch, seed=1 + w.rank)
    bag = EmbeddingBag(DIM, table=f"emb-{tag}", worker=w, mode="sum", optimizer=ps.AdaGrad(lr=LR),
                       init=ps.Normal(std=1.0))
    top = mlp()
    dense = DenseParameters(top.parameters(), table=f"mlp-{tag}", worker=w, optimizer=ps.AdaGrad(lr=LR))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]

    def step(x: Any, y: Any) -> None:
        dense.pull()
        top.zero_grad()
        loss_fn(top(bag(x)).squeeze(1), y).backward()
        dense.push()

    step(*tensors[0])  # warm-up: tables created, code compiled
    bag.flush()
    w.barrier()
    before = bag.stats
    loader: Any = Prefetcher(tensors[1:], lambda b: [(bag, b[0])]) if prefetch else tensors[1:]
    start = time.perf_counter()
    for x, y in loader:
        step(x, y)
    bag.flush()
    dense.flush()
    seconds = time.perf_counter() - start
    after = bag.stats
    w.barrier()
    w.close()
    q.put({"examples": n * batch, "seconds": seconds,
           "rows_pulled": after["rows_pulled"] - before["rows_pulled"],
           "rows_pushed": after["rows_pushed"] - before["rows_pushed"]})


def run_ps(workers: int, n: int, batch: int, prefetch: bool, tag: str) -> dict[str, float]:
    import paramserver as ps

    ctx = mp.get_context("spawn")
    with ps.LocalCluster(servers=2) as cluster:
        q = ctx.Queue()
        procs = [ctx.Process(target=ps_train, args=(cluster.address, n, batch, prefetch, tag, q))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        results = [q.get(timeout=900) for _ in procs]
        for p in procs:
            p.join(60)
    seconds = max(r["seconds"] for r in results)
    return {"examples_per_second": sum(r["examples"] for r in results) / seconds, "seconds": seconds,
            "rows_pulled_per_second": sum(r["rows_pulled"] for r in results) / seconds,
            "rows_pushed_per_second": sum(r["rows_pushed"] for r in results) / seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--quick", action="store_true", help="30 steps")
    args = p.parse_args()
    steps = 30 if args.quick else args.steps
    base = baseline(batches(steps, args.batch, seed=1))
    rows: dict[str, dict[str, float]] = {"single-process torch (sparse Adagrad)": base}
    rows["paramserver, 1 worker, no prefetch"] = run_ps(1, steps, args.batch, False, "a")
    rows["paramserver, 1 worker, prefetch"] = run_ps(1, steps, args.batch, True, "b")
    rows["paramserver, 2 workers, prefetch"] = run_ps(2, steps, args.batch, True, "c")
    print(f"batch {args.batch}, {steps} steps per worker, {FIELDS} ids per example, dim {DIM}, "
          f"2 servers, ids Zipf(1.2) over {IDS:,}")
    print(f"{'run':<40} {'examples/s':>11} {'x baseline':>10} {'rows pulled/s':>14} {'rows pushed/s':>14}")
    for name, r in rows.items():
        print(f"{name:<40} {r['examples_per_second']:>11,.0f} {r['examples_per_second'] / base['examples_per_second']:>10.2f} "
              f"{r.get('rows_pulled_per_second', 0):>14,.0f} {r.get('rows_pushed_per_second', 0):>14,.0f}")
    gain = (rows["paramserver, 1 worker, prefetch"]["examples_per_second"]
            / rows["paramserver, 1 worker, no prefetch"]["examples_per_second"])
    print(f"prefetch gain (1 worker): {gain:.2f}x")
    path = write("torch", {"batch": args.batch, "steps": steps, "ids": IDS, "fields": FIELDS, "dim": DIM,
                           "runs": rows, "prefetch_gain": gain})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
