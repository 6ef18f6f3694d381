"""LDA-C corpora, and the small Reuters corpus of the ``lda 3.0.2`` wheel.

The LDA-C format (Blei's lda-c) has one document per line::

    N id:count id:count ...

where ``N`` is the number of distinct terms in the document and each ``id`` is a 0-based
index into the vocabulary. The Reuters corpus (``lda/tests/reuters.ldac``) has 395
documents over a vocabulary of 4,258 words (``reuters.tokens``, one word per line) and
one title per document (``reuters.titles``); the wheel is fetched once into the cache.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .._errors import InvalidArgument
from ._fetch import fetch_files

__all__ = ["LdacCorpus", "load_ldac", "reuters_ldac"]

_PACKAGE = "lda"
_VERSION = "3.0.2"
_FILES = ["lda/tests/reuters.ldac", "lda/tests/reuters.tokens", "lda/tests/reuters.titles"]

Document = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]


class LdacCorpus(NamedTuple):
    """A bag-of-words corpus: per document the distinct word ids and their counts.

    ``documents[d] == (word_ids, counts)``, two int64 arrays of equal length; word ids
    index ``vocabulary``. ``titles`` holds one title per document (may be empty).
    """

    documents: list[Document]
    vocabulary: list[str]
    titles: list[str]

    def to_csr(self) -> sp.csr_matrix:
        """The document-term count matrix, shape ``(len(documents), len(vocabulary))``."""
        n_words = len(self.vocabulary)
        if not n_words and self.documents:
            n_words = 1 + max((int(ids.max()) for ids, _ in self.documents if len(ids)), default=-1)
        lengths = np.array([len(ids) for ids, _ in self.documents], dtype=np.int64)
        indptr = np.zeros(len(self.documents) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if self.documents:
            indices = np.concatenate([ids for ids, _ in self.documents])
            data = np.concatenate([counts for _, counts in self.documents])
        else:
            indices = data = np.zeros(0, dtype=np.int64)
        mat = sp.csr_matrix((data, indices, indptr), shape=(len(self.documents), n_words))
        mat.sum_duplicates()
        return mat


def load_ldac(path: str | os.PathLike[str]) -> list[Document]:
    """Read an LDA-C file.

    Parameters
    ----------
    path:
        The file; blank lines are skipped.

    Returns
    -------
    list of (word_ids, counts)
        One pair of int64 arrays per document, in file order.

    Raises
    ------
    InvalidArgument
        A line is malformed (not ``N id:count ...``, a negative id or count, or ``N`` not
        equal to the number of pairs); the message gives the line number.
    """
    documents: list[Document] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                n_terms = int(parts[0])
                raw = np.array([p.split(":") for p in parts[1:]], dtype=np.int64)
                if len(parts) > 1 and (raw.ndim != 2 or raw.shape[1] != 2):
                    raise ValueError("each term must be id:count")
                pairs = raw.reshape(-1, 2)
            except ValueError as exc:
                raise InvalidArgument(f"{path}, line {lineno}: not an LDA-C line 'N id:count ...' ({exc})") from None
            if n_terms != len(pairs) or (pairs < 0).any():
                raise InvalidArgument(
                    f"{path}, line {lineno}: declares {n_terms} terms but has {len(pairs)} "
                    "id:count pairs, or a negative id or count"
                )
            documents.append((pairs[:, 0].copy(), pairs[:, 1].copy()))
    return documents


def reuters_ldac() -> LdacCorpus:
    """The Reuters corpus of the ``lda`` package: 395 documents, a 4,258-word vocabulary.

    Returns
    -------
    LdacCorpus
        ``(documents, vocabulary, titles)``; ``corpus.to_csr()`` gives the 395 x 4,258
        count matrix that ``lda.datasets.load_reuters()`` returns (as a dense array).

    Raises
    ------
    ConfigError
        The wheel could not be fetched.
    """
    ldac, tokens, titles = fetch_files(_PACKAGE, _VERSION, _FILES)
    vocabulary = tokens.read_text(encoding="utf-8").splitlines()
    title_lines = titles.read_text(encoding="utf-8").splitlines()
    return LdacCorpus(load_ldac(ldac), vocabulary, title_lines)
