"""``paramserver run ctr``: DeepFM on MovieLens-100k with embedding tables on the servers,
against the same model trained in one process with plain PyTorch, and its metrics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):
    import torch  # noqa: F401  (CI installs paramserver[torch]: a missing torch fails here)
else:
    pytest.importorskip("torch")

from helpers import run_app
from paramserver.apps import ctr

pytestmark = [pytest.mark.cluster, pytest.mark.data, pytest.mark.slow]


def test_two_async_workers_reach_single_process_torch_auc(fast_env: dict[str, str], tmp_path: Path) -> None:
    plot = tmp_path / "auc.png"
    out = run_app(["ctr", "--workers", "2", "--servers", "2", "--epochs", "3", "--plot", str(plot)], fast_env)
    assert out["workers"] == 2 and len(out["log"]) == 3 and len(out["reference_log"]) == 3
    assert abs(out["positives"] - 0.554) < 0.001  # rating >= 4 is a click
    assert out["reference_auc"] > 0.77  # the model learns: chance is 0.5
    assert abs(out["auc"] - out["reference_auc"]) < 0.005
    assert abs(out["log_loss"] - out["reference_log_loss"]) < 0.005
    assert out["rows_pushed"] > 0 and plot.stat().st_size > 0


def test_auc_and_log_loss_are_the_textbook_ones() -> None:
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.4).astype(np.float32)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    p[:50] = 0.5  # ties count half
    assert ctr.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ctr.log_loss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-6)


def test_movielens_split_and_fields() -> None:
    x, y, tx, ty = ctr.movielens(0)
    assert x.shape == (80_000, 3) and tx.shape == (20_000, 3)
    assert len(np.unique(x[:, 0])) <= 943 and (x[:, 1] >> 40 == 1).all() and (x[:, 2] >> 40 == 2).all()
    assert float(np.concatenate([y, ty]).mean()) == pytest.approx(0.55375)


def test_synthetic_hashed_ids_under_a_worker_memory_cap(fast_env: dict[str, str]) -> None:
    """Each worker's address space capped at 1.8 GB: the job trains on 200 M possible ids,
    where one process cannot even allocate the rows of a torch embedding of them."""
    out = run_app(["ctr", "--data", "synthetic", "--workers", "2", "--servers", "2", "--epochs", "1",
                   "--ids", "200000000", "--examples", "40000", "--memory-cap", "1800"], fast_env)
    assert out["memory_cap"] == 1800 << 20
    assert out["single_process_fits"] is False
    assert out["rows_pushed"] > 100_000  # about 4 new long-tail rows per example
    assert out["auc"] > 0.7  # the frequent ids carry the signal
