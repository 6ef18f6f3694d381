"""A complete PyTorch training script with its embedding table on the parameter server.

Run it as a job (every worker runs this same script):

    paramserver launch -s 2 -w 2 -- python examples/torch_embedding.py

Each example is a user id and a bag of up to 5 item ids (hashed 62-bit ids, no vocabulary);
the label comes from a hidden model. The embeddings live in one table, updated by adagrad on
the servers; the MLP on top is shared through a DenseParameters table. Rank 0 prints the
held-out AUC and exports the table (whole, then the rows changed in the last epoch).
"""

from __future__ import annotations

import numpy as np
import torch

import paramserver as ps
from paramserver.torch import DenseParameters, Embedding, EmbeddingBag, Prefetcher, export_table

DIM, EPOCHS, BATCH = 8, 3, 256


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 500, n), rng.integers(0, 2_000, (n, 5))
    logit = 2 * np.sin(u) + 2 * np.cos(i).mean(axis=1)  # the hidden model: a bias per user and item
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    users = u * 1_000_003 + 7  # any non-negative int64 ids: raw, offset or hashed
    items = (i + 1) * 998_244_353 % (1 << 62)
    return torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(y)


def main() -> None:
    w = ps.connect()  # the launcher's environment says where the scheduler is
    user = Embedding(DIM, table="emb", worker=w, optimizer=ps.AdaGrad(lr=0.1), init=ps.Normal(std=0.1), ttl=10)
    items = EmbeddingBag(DIM, table=user.table, mode="mean")  # the same table, another lookup
    torch.manual_seed(0)  # the same initial MLP on every worker
    mlp = torch.nn.Sequential(torch.nn.Linear(2 * DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    dense = DenseParameters(mlp.parameters(), table="mlp", worker=w, optimizer=ps.AdaGrad(lr=0.1))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def predict(u: torch.Tensor, it: torch.Tensor) -> torch.Tensor:
        return mlp(torch.cat([user(u), items(it)], dim=1)).squeeze(1)

    u, it, y = data(20_000, seed=1 + w.rank)  # this worker's share of the training data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(u, it, y), batch_size=BATCH, shuffle=True)
    for epoch in range(EPOCHS):
        for bu, bi, by in Prefetcher(loader, lambda b: [(user, b[0]), (items, b[1])]):
            dense.pull()  # the MLP as the servers have it
            mlp.zero_grad()
            loss_fn(predict(bu, bi), by).backward()  # the embeddings' gradients are pushed here
            dense.push()
        user.flush()
        dense.flush()
        w.advance()  # one iteration per epoch: ttl counts these, deltas are cut by them
        w.barrier()
        if w.rank == 0:
            dense.pull()
            tu, ti, ty = data(5_000, seed=99)
            with torch.no_grad():
                p = predict(tu, ti).numpy()
            pos, neg = p[ty.numpy() > 0.5], p[ty.numpy() < 0.5]
            auc = float((pos[:, None] > neg[None, :]).mean())
            print(f"epoch {epoch + 1}: held-out AUC {auc:.3f}, table stats {user.stats}")
    if w.rank == 0:
        n_all = export_table(user.table, "results/emb.safetensors")
        n_delta = export_table(user.table, "results/emb-delta.safetensors", since=EPOCHS - 2)
        print(f"exported {n_all:,} rows, {n_delta:,} changed in the last epoch")
    w.barrier()
    w.close()


if __name__ == "__main__":
    main()
