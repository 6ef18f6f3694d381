"""The applications on real data, against references nobody here wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import paramserver as ps
from helpers import run_app
from paramserver.apps import _reference
from paramserver.table import Store, TableSpec

pytestmark = [pytest.mark.cluster, pytest.mark.data]


def test_l1_logistic_regression_reaches_liblinear(fast_env: dict[str, str]) -> None:
    """DBPG on 20 Newsgroups, lambda = 1: within 1e-3 of scikit-learn's liblinear optimum."""
    pytest.importorskip("sklearn")
    ref = _reference.liblinear(1.0)
    assert ref is not None and abs(ref["objective"] - 1199.25) < 0.01  # the reference point
    out = run_app(["logreg", "--servers", "2", "--workers", "2", "--passes", "25", "--log-every", "5"], fast_env)
    assert out["relative_gap"] < 1e-3, out["objective"]
    assert abs(out["nnz"] - ref["nnz"]) < 0.1 * ref["nnz"]
    assert abs(out["test_accuracy"] - ref["test_accuracy"]) < 0.01
    assert 0.95 < out["test_auc"] <= 1
    # the filters did their job: KKT held back most gradient entries
    kkt = out["traffic"]["workers"]["filters"]["kkt"]
    assert kkt["sent_after"] < 0.2 * kkt["sent_before"]


def test_auc_matches_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(np.float64)
    score = np.round(rng.normal(size=500) + y, 1)  # with ties
    assert _reference.auc(score, y) == pytest.approx(metrics.roc_auc_score(y, score), abs=1e-12)


def test_l1_prox_is_the_soft_threshold_step() -> None:
    store = Store(TableSpec.create("w", width=2, dtype="float64", updater=ps.L1Prox(lam=1.0), aggregate=True))
    keys = np.array([1, 2, 3], dtype=np.uint64)
    store.push(keys, np.array([[-3.0, 1.0], [0.5, 1.0], [4.0, 2.0]]))  # z = 3, -0.5, -2; thresholds 1, 1, 0.5
    np.testing.assert_allclose(store.pull(keys), [[2.0, 0], [0.0, 0], [-1.5, 0]])


def test_logreg_on_a_libsvm_file_online(tmp_path: Path, fast_env: dict[str, str]) -> None:
    import scipy.sparse as sp

    from paramserver.data import save_libsvm

    rng = np.random.default_rng(1)
    X = sp.random(400, 50, density=0.2, random_state=2, format="csr")
    w_true = rng.normal(size=50)
    y = (X @ w_true > 0).astype(np.float64)
    save_libsvm(tmp_path / "train.svm", X, y)
    save_libsvm(tmp_path / "test.svm", X, y)
    out = run_app(["logreg", "--data", str(tmp_path / "train.svm"), "--test", str(tmp_path / "test.svm"),
                   "--algo", "ftrl", "--passes", "20", "--lam", "0.1", "--workers", "2", "--servers", "1"], fast_env)
    assert out["test_accuracy"] > 0.85
    out = run_app(["logreg", "--data", str(tmp_path / "train.svm"), "--test", str(tmp_path / "test.svm"),
                   "--passes", "40", "--blocks", "4", "--lam", "0.1", "--workers", "2", "--servers", "1"], fast_env)
    assert out["test_accuracy"] > 0.9


def test_countmin_sketch_on_the_20_newsgroups_stream(fast_env: dict[str, str]) -> None:
    out = run_app(["sketch", "--servers", "2", "--workers", "2"], fast_env)
    assert (out["tokens"], out["distinct"]) == (5_004_656, 93_864)
    assert out["never_below_true"] is True  # CountMin never underestimates
    assert out["share_within_eps_n"] >= 1 - out["delta"]
    assert out["rows"] == 5 and out["counters_per_row"] == 27_183


def test_saturating_counters_stop_at_their_cap() -> None:
    store = Store(TableSpec.create("c", dtype="int64", updater=ps.table.SaturatingSum(cap=10)))
    keys = np.array([7], dtype=np.uint64)
    for _ in range(4):
        store.push(keys, np.array([[4]]))
    assert store.pull(keys).ravel().tolist() == [10]


def test_logreg_stops_on_its_criterion_near_liblinear_on_data_it_was_not_tuned_on(
        tmp_path: Path, fast_env: dict[str, str]) -> None:
    """MovieLens-100k as click prediction (rating >= 4; one-hot user and item, 2,625 features),
    a data set the defaults were never tuned on: DBPG stops on its convergence criterion,
    long before --passes, within 1e-3 of liblinear's objective at lambda = 1 (the objective
    computed by the same function for both)."""
    import scipy.sparse as sp

    pytest.importorskip("sklearn")
    import sklearn
    from sklearn.linear_model import LogisticRegression

    from paramserver.data import movielens_100k, save_libsvm

    r = movielens_100k()
    n = len(r.user)
    cols = np.column_stack([r.user - 1, r.user.max() + r.item - 1]).ravel()
    X = sp.csr_matrix((np.ones(2 * n), (np.repeat(np.arange(n), 2), cols)), shape=(n, int(r.user.max() + r.item.max())))
    y = (r.rating >= 4).astype(np.float64)
    save_libsvm(tmp_path / "ml.svm", X, y)
    version = tuple(int(x) for x in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    clf = LogisticRegression(C=1.0, solver="liblinear", fit_intercept=False, tol=1e-6, max_iter=1000, **l1).fit(X, y)
    ref = _reference.objective(X, y, clf.coef_.ravel(), 1.0)
    out = run_app(["logreg", "--data", str(tmp_path / "ml.svm"), "--workers", "2", "--servers", "2"], fast_env)
    assert out["max_passes"] == 100 and 5 < out["passes"] < 60  # stopped by the criterion
    log = {e["pass"]: e["objective"] for e in out["log"]}
    p = out["passes"] - 2  # the decision: 5 passes lowered the objective by less than --tol
    assert log[p - 5] - log[p] < 1e-4 * log[p]
    assert -1e-6 < (out["objective"] - ref) / ref < 1e-3, (out["objective"], ref)


@pytest.mark.parametrize("blocks", [1, 7, 64])
def test_logreg_partition_matches_column_slicing(blocks: int) -> None:
    """The cut into feature blocks gives each block's keys in ascending order and
    exactly the rows' entries on those columns (empty columns dropped), as column slicing does."""
    import scipy.sparse as sp

    from paramserver.apps.logreg import partition
    from paramserver.placement import spread

    X = sp.random(300, 4000, density=0.01, random_state=3, format="csr")
    X = X[:, np.flatnonzero(np.arange(4000) % 11)]  # some columns stay empty below
    X = sp.hstack([X, sp.csr_matrix((300, 50))]).tocsr()
    got = partition(X, blocks)
    cols = np.flatnonzero(np.diff(X.tocsc().indptr))
    keys = spread(cols)
    order = np.argsort(keys)
    cols, keys = cols[order], keys[order]
    assert len(got) == blocks and sum(len(k) for k, _ in got) == len(cols) < X.shape[1]
    done = 0
    for b, (bkeys, Xb) in enumerate(got):
        assert np.all(bkeys >= np.uint64(b * (2**64 // blocks))) and np.all(np.diff(bkeys.astype(np.float64)) > 0)
        np.testing.assert_array_equal(bkeys, keys[done : done + len(bkeys)])
        expected = X.tocsc()[:, cols[done : done + len(bkeys)]].toarray()
        np.testing.assert_array_equal(Xb.toarray(), expected)
        done += len(bkeys)
