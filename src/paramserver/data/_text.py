"""Tokenising text and building binary n-gram bag-of-words matrices, without scikit-learn.

:func:`binary_ngrams` reproduces ``sklearn.feature_extraction.text.CountVectorizer(
binary=True, ngram_range=...)`` with its other defaults exactly: text is lower-cased,
tokens are the matches of ``(?u)\\b\\w\\w+\\b``, a bigram is two consecutive tokens joined
by one space, the vocabulary is every n-gram of the training documents sorted by code
point, and other documents are encoded with that vocabulary (unknown n-grams dropped).
Only unigrams and bigrams are supported (``ngram_range`` within ``(1, 2)``).

How it stays fast: one ``re.findall`` per document, one dict look-up per token (token
ids), then everything else in numpy: a bigram is the integer ``U + a * U + b`` for token
ids ``a``, ``b`` and ``U`` distinct tokens, so de-duplication and vocabulary look-ups are
sorts and binary searches over int64 arrays. Only the final vocabulary is turned back into
strings, once, to sort it alphabetically.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .._errors import InvalidArgument
from ._fetch import progress

__all__ = ["TOKEN_PATTERN", "binary_ngrams", "check_ngram_range", "tokenize"]

#: scikit-learn's default token pattern: runs of two or more word characters.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

_I64 = npt.NDArray[np.int64]


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and return its tokens (matches of :data:`TOKEN_PATTERN`)."""
    return _TOKEN_RE.findall(text.lower())


def _unique(values: _I64) -> _I64:
    """Sorted distinct values (a plain sort: faster here than numpy 2's hash-based unique)."""
    out = np.sort(values)
    if len(out) > 1:
        keep = np.empty(len(out), dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out


def check_ngram_range(ngram_range: tuple[int, int]) -> tuple[int, int]:
    """``(lo, hi)`` as ints if the n-gram range is supported ((1, 1), (1, 2) or (2, 2)), else
    :class:`InvalidArgument`. Pure."""
    lo, hi = (int(v) for v in ngram_range)
    if not 1 <= lo <= hi <= 2:
        raise InvalidArgument(f"ngram_range {tuple(ngram_range)!r} is not supported; use (1, 1), (1, 2) or (2, 2)")
    return lo, hi


def _token_ids(docs: Sequence[str], lookup: dict[str, int], *, grow: bool, desc: str) -> tuple[_I64, _I64]:
    """Token ids of every document, flattened, and each token's document number.

    With ``grow`` new tokens are added to ``lookup``; without it they get id -1.
    """
    flat: list[int] = []
    lengths = np.zeros(len(docs), dtype=np.int64)
    for i, doc in enumerate(progress(docs, desc=desc, unit="doc")):
        toks = _TOKEN_RE.findall(doc.lower())
        if grow:
            flat.extend([lookup.setdefault(t, len(lookup)) for t in toks])
        else:
            get = lookup.get
            flat.extend([get(t, -1) for t in toks])
        lengths[i] = len(toks)
    ids = np.array(flat, dtype=np.int64)
    doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    return ids, doc_of


def _ngram_keys(ids: _I64, doc_of: _I64, n_tokens: int, lo: int, hi: int) -> tuple[_I64, _I64]:
    """The distinct ``(document, n-gram key)`` pairs, sorted by document then key.

    Unigram keys are token ids in ``[0, U)``; bigram keys are ``U + a * U + b``. Tokens
    with id -1 (unknown) form no n-gram.
    """
    u = n_tokens
    keys: list[_I64] = []
    docs: list[_I64] = []
    if lo == 1:
        known = ids >= 0
        keys.append(ids[known])
        docs.append(doc_of[known])
    if hi == 2 and len(ids) > 1:
        a, b = ids[:-1], ids[1:]
        ok = (doc_of[:-1] == doc_of[1:]) & (a >= 0) & (b >= 0)
        keys.append(u + a[ok] * u + b[ok])
        docs.append(doc_of[:-1][ok])
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    span = u + u * u if hi == 2 else max(u, 1)
    n_docs = int(doc.max()) + 1 if len(doc) else 1
    if n_docs * span < 2**62:
        code = _unique(doc * span + key)
        return code // span, code % span
    pairs = np.unique(np.stack([doc, key], axis=1), axis=0)  # pragma: no cover - huge inputs
    return pairs[:, 0].copy(), pairs[:, 1].copy()  # pragma: no cover


def _to_csr(doc: _I64, col: _I64, n_docs: int, n_cols: int, dtype: npt.DTypeLike) -> sp.csr_matrix:
    """A binary CSR matrix with ones at ``(doc, col)``; ``doc`` is sorted, pairs distinct."""
    code = np.sort(doc * n_cols + col)  # n_docs * n_cols < 2**63 for any real corpus
    indices = (code % max(n_cols, 1)).astype(np.int32 if n_cols < 2**31 else np.int64)
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc, minlength=n_docs), out=indptr[1:])
    if indptr[-1] < 2**31:
        indptr = indptr.astype(np.int32)
    data = np.ones(len(indices), dtype=dtype)
    mat = sp.csr_matrix((data, indices, indptr), shape=(n_docs, n_cols))
    mat.has_sorted_indices = True
    return mat


def binary_ngrams(
    train: Sequence[str],
    test: Sequence[str] = (),
    ngram_range: tuple[int, int] = (1, 2),
    *,
    dtype: npt.DTypeLike = np.float64,
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[str]]:
    """Binary n-gram bag-of-words matrices, as scikit-learn's ``CountVectorizer(binary=True)``.

    Parameters
    ----------
    train:
        Documents the vocabulary is fitted on.
    test:
        Documents encoded with the training vocabulary (n-grams not in it are dropped).
    ngram_range:
        ``(min_n, max_n)``, within ``(1, 2)``.
    dtype:
        Dtype of the stored ones.

    Returns
    -------
    X_train : scipy.sparse.csr_matrix, shape (len(train), n_features)
    X_test : scipy.sparse.csr_matrix, shape (len(test), n_features)
        Ones where a document contains an n-gram; column indices sorted in each row.
    vocabulary : list of str
        ``n_features`` n-grams sorted by code point; column ``j`` is ``vocabulary[j]``.

    Raises
    ------
    InvalidArgument
        ``ngram_range`` is outside ``(1, 2)``.
    """
    lo, hi = check_ngram_range(ngram_range)
    lookup: dict[str, int] = {}
    ids, doc_of = _token_ids(train, lookup, grow=True, desc="tokenising train")
    u = len(lookup)
    doc, key = _ngram_keys(ids, doc_of, u, lo, hi)

    feature_keys = _unique(key)
    words = list(lookup)  # insertion order is id order
    names = [words[k] if k < u else f"{words[(k - u) // u]} {words[(k - u) % u]}" for k in feature_keys.tolist()]
    order = sorted(range(len(names)), key=names.__getitem__)
    vocabulary = [names[i] for i in order]
    col_of = np.empty(len(order), dtype=np.int64)
    col_of[np.array(order, dtype=np.int64)] = np.arange(len(order), dtype=np.int64)
    n_cols = len(vocabulary)
    x_train = _to_csr(doc, col_of[np.searchsorted(feature_keys, key)], len(train), n_cols, dtype)

    ids, doc_of = _token_ids(test, lookup, grow=False, desc="tokenising test")
    doc, key = _ngram_keys(ids, doc_of, u, lo, hi)
    pos = np.searchsorted(feature_keys, key)
    found = pos < len(feature_keys)
    found[found] = feature_keys[pos[found]] == key[found]
    x_test = _to_csr(doc[found], col_of[pos[found]], len(test), n_cols, dtype)
    return x_train, x_test, vocabulary
