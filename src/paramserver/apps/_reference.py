"""Data, objective and the liblinear reference for the logistic-regression application.

The reference is scikit-learn's liblinear L1 logistic regression (C = 1/lambda, no
intercept, tol = 1e-6) on the 20 Newsgroups binary task: computed once, cached as JSON in
the data folder, and used to judge how close the parameter server gets. scikit-learn is
needed only for that (it is a dev dependency); without it the reference is skipped.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._config import Config
from ..data import atomic_writer, load_libsvm, newsgroups_binary

__all__ = ["auc", "fit_liblinear", "liblinear", "load", "n_features", "objective"]


@functools.lru_cache(maxsize=2)
def load(data: str | None, test: str | None) -> tuple[sp.csr_matrix, np.ndarray, Any, Any]:
    """Training rows and 0/1 labels, and the test set (or None): 20 Newsgroups by default."""
    if not data:
        d = newsgroups_binary()
        return d.X_train, d.y_train.astype(np.float64), d.X_test, d.y_test.astype(np.float64)
    X, y = load_libsvm(data)
    if test:
        Xt, yt = load_libsvm(test, n_features=X.shape[1])
        return X, np.asarray(y, np.float64), Xt, np.asarray(yt, np.float64)
    return X, np.asarray(y, np.float64), None, None


def n_features(data: str | None, test: str | None) -> int:
    X, _, Xt, _ = load(data, test)
    return int(max(X.shape[1], Xt.shape[1] if Xt is not None else 0))


def objective(X: sp.csr_matrix, y01: np.ndarray, w: np.ndarray, lam: float) -> float:
    """``sum_i log(1 + exp(-y_i x_i.w)) + lam * ||w||_1`` with labels in {0, 1}."""
    margin = (2 * y01 - 1) * (X @ w[: X.shape[1]])
    return float(np.logaddexp(0, -margin).sum() + lam * np.abs(w).sum())


def auc(score: np.ndarray, y01: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic; ties count half)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    # average ranks of ties
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = y01 > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else 0.0


def fit_liblinear(lam: float) -> dict[str, Any]:
    """Fit liblinear on 20 Newsgroups now (not cached): objective, nnz, test accuracy and AUC, seconds.

    Raises
    ------
    ImportError
        scikit-learn is not installed.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    X, y, Xt, yt = load(None, None)
    version = tuple(int(x) for x in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}  # the l1 spelling changed in 1.8
    start = time.perf_counter()
    clf = LogisticRegression(C=1.0 / lam, solver="liblinear", fit_intercept=False, tol=1e-6, max_iter=1000, **l1)
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    w = clf.coef_.ravel()
    return {"objective": objective(X, y, w, lam), "nnz": int(np.count_nonzero(w)),
            "test_accuracy": float(clf.score(Xt, yt)), "test_auc": auc(Xt @ w, yt), "seconds": seconds}


def liblinear(lam: float) -> dict[str, Any] | None:
    """The liblinear solution on 20 Newsgroups (cached): objective, nnz, test accuracy, seconds.

    None without scikit-learn.
    """
    path = Config.from_env().data_path() + f"/logreg-liblinear-lam{lam:g}.json"
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        pass
    try:
        ref = fit_liblinear(lam)
    except ImportError:
        return None
    with atomic_writer(pathlib.Path(path), "w") as f:
        json.dump(ref, f)
    return ref
