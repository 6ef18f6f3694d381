"""Corpora for topic models: documents as integer word ids over a built vocabulary.

A :class:`Corpus` is two flat arrays, document-major: ``words`` holds every token's word id
and document ``d`` is ``words[doc_ptr[d]:doc_ptr[d + 1]]``. It is built from token lists:

* :func:`read_lines`: a text file with one document per line, whitespace-separated tokens;
* :func:`ldac_tokens`: an LDA-C corpus (``paramserver.data.reuters_ldac``), words repeated;
* ``paramserver.data.newsgroups_tokens``: 20 Newsgroups, tokenised like scikit-learn.

:func:`build_vocabulary` keeps the words that are not stop words and whose document
frequency lies within ``[min_df, max_df]``, exactly as scikit-learn's ``CountVectorizer``
(an int is a number of documents, a float a proportion of them), and sorts them by code
point, so word ids equal scikit-learn's column numbers. :func:`encode` maps tokens to ids
and drops the others. One dict look-up per token; everything after it is numpy.

:func:`load_corpus` builds the training and held-out corpora of a data source once and caches
them in ``<PS_DATA_DIR>/lda/`` (``.npz``), so that every worker of a job loads the same arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .. import data
from .._config import Config
from .._errors import InvalidArgument
from ..data import atomic_writer

__all__ = ["ENGLISH_STOP_WORDS", "Corpus", "build_vocabulary", "encode", "ldac_tokens", "load_corpus", "read_lines",
           "stop_words"]

#: scikit-learn's English stop words (``sklearn.feature_extraction.text.ENGLISH_STOP_WORDS``, BSD-3), 318 words.
ENGLISH_STOP_WORDS = frozenset(["a", "about", "above", "across", "after", "afterwards", "again", "against", "all", "almost", "alone", "along", "already", "also", "although", "always", "am", "among", "amongst", "amoungst", "amount", "an", "and", "another", "any", "anyhow", "anyone", "anything", "anyway", "anywhere", "are", "around", "as", "at", "back", "be", "became", "because", "become", "becomes", "becoming", "been", "before", "beforehand", "behind", "being", "below", "beside", "besides", "between", "beyond", "bill", "both", "bottom", "but", "by", "call", "can", "cannot", "cant", "co", "con", "could", "couldnt", "cry", "de", "describe", "detail", "do", "done", "down", "due", "during", "each", "eg", "eight", "either", "eleven", "else", "elsewhere", "empty", "enough", "etc", "even", "ever", "every", "everyone", "everything", "everywhere", "except", "few", "fifteen", "fifty", "fill", "find", "fire", "first", "five", "for", "former", "formerly", "forty", "found", "four", "from", "front", "full", "further", "get", "give", "go", "had", "has", "hasnt", "have", "he", "hence", "her", "here", "hereafter", "hereby", "herein", "hereupon", "hers", "herself", "him", "himself", "his", "how", "however", "hundred", "i", "ie", "if", "in", "inc", "indeed", "interest", "into", "is", "it", "its", "itself", "keep", "last", "latter", "latterly", "least", "less", "ltd", "made", "many", "may", "me", "meanwhile", "might", "mill", "mine", "more", "moreover", "most", "mostly", "move", "much", "must", "my", "myself", "name", "namely", "neither", "never", "nevertheless", "next", "nine", "no", "nobody", "none", "noone", "nor", "not", "nothing", "now", "nowhere", "of", "off", "often", "on", "once", "one", "only", "onto", "or", "other", "others", "otherwise", "our", "ours", "ourselves", "out", "over", "own", "part", "per", "perhaps", "please", "put", "rather", "re", "same", "see", "seem", "seemed", "seeming", "seems", "serious", "several", "she", "should", "show", "side", "since", "sincere", "six", "sixty", "so", "some", "somehow", "someone", "something", "sometime", "sometimes", "somewhere", "still", "such", "system", "take", "ten", "than", "that", "the", "their", "them", "themselves", "then", "thence", "there", "thereafter", "thereby", "therefore", "therein", "thereupon", "these", "they", "thick", "thin", "third", "this", "those", "though", "three", "through", "throughout", "thru", "thus", "to", "together", "too", "top", "toward", "towards", "twelve", "twenty", "two", "un", "under", "until", "up", "upon", "us", "very", "via", "was", "we", "well", "were", "what", "whatever", "when", "whence", "whenever", "where", "whereafter", "whereas", "whereby", "wherein", "whereupon", "wherever", "whether", "which", "while", "whither", "who", "whoever", "whole", "whom", "whose", "why", "will", "with", "within", "without", "would", "yet", "you", "your", "yours", "yourself", "yourselves"])

_FORMAT = 2  # bump when the cached layout changes
Tokens = Sequence[Sequence[str]]


@dataclass(frozen=True)
class Corpus:
    """Documents as word ids, document-major.

    Attributes
    ----------
    words:
        int32 word id of every token; document ``d`` is ``words[doc_ptr[d]:doc_ptr[d + 1]]``.
    doc_ptr:
        int64 offsets, ``len(doc_ptr) == n_docs + 1``, ``doc_ptr[0] == 0``.
    vocabulary:
        ``vocabulary[i]`` is the word of id ``i``.
    """

    words: npt.NDArray[np.int32]
    doc_ptr: npt.NDArray[np.int64]
    vocabulary: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.doc_ptr) - 1

    @property
    def n_tokens(self) -> int:
        return len(self.words)

    def select(self, docs: npt.ArrayLike) -> Corpus:
        """The documents ``docs`` (indices, in the given order) as a corpus of their own."""
        idx = np.asarray(docs, dtype=np.int64)
        starts, ends = self.doc_ptr[idx], self.doc_ptr[idx + 1]
        ptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=ptr[1:])
        # token positions of the selected documents: one arange per document, vectorised
        pos = np.repeat(starts - ptr[:-1], ends - starts) + np.arange(ptr[-1])
        return Corpus(self.words[pos], ptr, self.vocabulary)

    def to_csr(self) -> sp.csr_matrix:
        """The document-term count matrix, ``(n_docs, len(vocabulary))``, int64."""
        rows = np.repeat(np.arange(self.n_docs), np.diff(self.doc_ptr))
        mat = sp.csr_matrix((np.ones(self.n_tokens, dtype=np.int64), (rows, self.words)),
                            shape=(self.n_docs, len(self.vocabulary)))
        mat.sum_duplicates()
        return mat


def read_lines(path: str | os.PathLike[str]) -> list[list[str]]:
    """Documents of a text file: one per line, tokens separated by whitespace (a blank line is an empty document)."""
    with open(path, encoding="utf-8") as fh:
        return [line.split() for line in fh]


def ldac_tokens(corpus: data.LdacCorpus) -> list[list[str]]:
    """The documents of an LDA-C corpus as token lists (each word repeated by its count)."""
    vocab = np.array(corpus.vocabulary, dtype=object)
    return [list(np.repeat(vocab[ids], counts)) for ids, counts in corpus.documents]


def stop_words(spec: str) -> frozenset[str]:
    """``"none"``, ``"english"`` (scikit-learn's list) or a file with one word per line."""
    if spec == "none":
        return frozenset()
    if spec == "english":
        return ENGLISH_STOP_WORDS
    try:
        return frozenset(pathlib.Path(spec).read_text(encoding="utf-8").split())
    except OSError as exc:
        raise InvalidArgument(f"stop words must be 'none', 'english' or a readable file: {exc}") from None


def _count_limit(df: float, n_docs: int, name: str) -> float:
    if isinstance(df, (int, np.integer)) and not isinstance(df, bool):
        if df < 0:
            raise InvalidArgument(f"{name} must be >= 0, got {df}")
        return float(df)
    if not 0.0 <= df <= 1.0:
        raise InvalidArgument(f"{name} as a proportion must be within [0, 1], got {df}")
    return float(df) * n_docs


def _token_ids(docs: Tokens, lookup: dict[str, int], *, grow: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Flat token ids (-1: unknown when not growing) and the document offsets."""
    flat: list[int] = []
    ptr = np.zeros(len(docs) + 1, dtype=np.int64)
    get = lookup.get
    for i, toks in enumerate(docs):
        flat.extend([lookup.setdefault(t, len(lookup)) for t in toks] if grow else [get(t, -1) for t in toks])
        ptr[i + 1] = len(flat)
    return np.array(flat, dtype=np.int64), ptr


def build_vocabulary(docs: Tokens, *, stop: Collection[str] = (), min_df: float = 1, max_df: float = 1.0,
                     dropped: dict[str, list[int]] | None = None) -> list[str]:
    """The sorted vocabulary of ``docs``, as scikit-learn's ``CountVectorizer`` builds it.

    Parameters
    ----------
    docs:
        Token lists, one per document.
    stop:
        Words to leave out.
    min_df, max_df:
        Keep words found in at least ``min_df`` and at most ``max_df`` documents; an int
        counts documents, a float in [0, 1] is a proportion of ``len(docs)``.
    dropped:
        If given, filled with ``[distinct words, tokens]`` dropped for each reason: ``"stop"``
        (a stop word), ``"rare"`` (below ``min_df``), ``"frequent"`` (above ``max_df``); a
        word counts for the first reason that applies.

    Returns
    -------
    list of str
        The kept words, sorted by code point.

    Raises
    ------
    InvalidArgument
        A limit is out of range, or ``max_df`` allows fewer documents than ``min_df``.
    """
    lo, hi = _count_limit(min_df, len(docs), "min_df"), _count_limit(max_df, len(docs), "max_df")
    if hi < lo:
        raise InvalidArgument(f"max_df={max_df} corresponds to fewer documents than min_df={min_df}")
    lookup: dict[str, int] = {}
    ids, ptr = _token_ids(docs, lookup, grow=True)
    n = len(lookup)
    doc_of = np.repeat(np.arange(len(docs), dtype=np.int64), np.diff(ptr))
    pairs = np.sort(doc_of * max(n, 1) + ids)  # (document, word) codes; a sort beats np.unique's hashing here
    first = np.ones(len(pairs), dtype=bool)
    np.not_equal(pairs[1:], pairs[:-1], out=first[1:])
    df = np.bincount(pairs[first] % max(n, 1), minlength=n)
    words = np.array(list(lookup), dtype=object)
    is_stop = np.array([w in stop for w in words], dtype=bool) if stop else np.zeros(n, dtype=bool)
    rare, frequent = ~is_stop & (df < lo), ~is_stop & (df >= lo) & (df > hi)
    keep = ~is_stop & ~rare & ~frequent
    if dropped is not None:  # [distinct words, tokens] dropped for each reason (each word once: the first)
        tf = np.bincount(ids, minlength=n)
        for reason, mask in (("stop", is_stop), ("rare", rare), ("frequent", frequent)):
            dropped[reason] = [int(mask.sum()), int(tf[mask].sum())]
    return sorted(words[keep].tolist())


def encode(docs: Tokens, vocabulary: list[str]) -> Corpus:
    """Map each document's tokens to their ids in ``vocabulary``; tokens not in it are dropped."""
    lookup = {w: i for i, w in enumerate(vocabulary)}
    ids, ptr = _token_ids(docs, lookup, grow=False)
    known = ids >= 0
    kept = np.zeros(len(ids) + 1, dtype=np.int64)  # kept[i]: known tokens before position i
    np.cumsum(known, out=kept[1:])
    return Corpus(ids[known].astype(np.int32), kept[ptr], vocabulary)


def _source(data_spec: str, holdout: float, seed: int) -> tuple[Tokens, Tokens]:
    """Training and held-out token lists of a data source."""
    if data_spec == "newsgroups":
        return data.newsgroups_tokens("train"), data.newsgroups_tokens("test")
    docs: list[list[str]] = ldac_tokens(data.reuters_ldac()) if data_spec == "reuters" else read_lines(data_spec)
    perm = np.random.default_rng(seed).permutation(len(docs))
    n_out = round(holdout * len(docs))
    return [docs[i] for i in np.sort(perm[n_out:])], [docs[i] for i in np.sort(perm[:n_out])]


def _cache_path(key: dict[str, object]) -> pathlib.Path:
    if key["data"] not in ("newsgroups", "reuters"):
        p = pathlib.Path(str(key["data"]))
        if not p.is_file():
            raise InvalidArgument(f"--data: {p} is not a file (nor 'newsgroups' or 'reuters')")
        st = p.stat()
        key = {**key, "data": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return pathlib.Path(Config.from_env().data_path()) / "lda" / f"corpus-{digest}.npz"


def load_corpus(data_spec: str, *, stop: str = "none", min_df: float = 1, max_df: float = 1.0,
                holdout: float = 0.1, heldout_docs: int = 1000, seed: int = 0,
                use_cache: bool = True, notes: dict[str, Any] | None = None) -> tuple[Corpus, Corpus]:
    """The training and held-out corpora of a data source, built once and cached.

    Parameters
    ----------
    data_spec:
        ``"newsgroups"`` (20 Newsgroups: the training split, and the test split held out),
        ``"reuters"`` (the 395-document Reuters LDA-C corpus) or a text file with one
        document per line.
    stop, min_df, max_df:
        Vocabulary options (:func:`stop_words`, :func:`build_vocabulary`), fitted on the
        training documents only.
    holdout:
        Fraction of the documents held out (not for ``"newsgroups"``, which has a test split).
    heldout_docs:
        Keep at most this many held-out documents (a seeded random subset).
    seed:
        Seed of the held-out split.
    use_cache:
        Read and write the cache (``<PS_DATA_DIR>/lda/corpus-<hash>.npz``).
    notes:
        If given, filled with what was done to the documents, for a report: ``dropped``
        (``build_vocabulary``'s), ``words`` and ``tokens`` (distinct words and tokens of the
        training documents before the vocabulary), ``heldout`` (documents held out before
        the ``heldout_docs`` limit).

    Returns
    -------
    (Corpus, Corpus)
        Training and held-out documents over the same vocabulary.
    """
    if not 0.0 <= holdout < 1.0:
        raise InvalidArgument(f"holdout must be within [0, 1), got {holdout}")
    key: dict[str, object] = {"data": data_spec, "stop": stop, "min_df": min_df, "max_df": max_df,
                              "holdout": holdout, "heldout_docs": heldout_docs, "seed": seed, "format": _FORMAT}
    path = _cache_path(key)
    if use_cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            vocab = z["vocabulary"].tobytes().decode("utf-8").split("\n") if int(z["n_words"]) else []
            if notes is not None:
                notes.update(json.loads(z["notes"].tobytes().decode("utf-8")))
            return (Corpus(z["train_words"], z["train_ptr"], vocab), Corpus(z["test_words"], z["test_ptr"], vocab))
    train_docs, test_docs = _source(data_spec, holdout, seed)
    dropped: dict[str, list[int]] = {}
    vocab = build_vocabulary(train_docs, stop=stop_words(stop), min_df=min_df, max_df=max_df, dropped=dropped)
    train, test = encode(train_docs, vocab), encode(test_docs, vocab)
    found = {"dropped": dropped, "tokens": sum(len(d) for d in train_docs),
             "words": len(vocab) + sum(n for n, _ in dropped.values()), "heldout": len(test_docs)}
    if notes is not None:
        notes.update(found)
    if test.n_docs > heldout_docs:
        keep = np.sort(np.random.default_rng(seed).permutation(test.n_docs)[:heldout_docs])
        test = test.select(keep)
    if use_cache:
        with atomic_writer(path) as fh:  # atomic: workers building at once all succeed
            np.savez(fh, train_words=train.words, train_ptr=train.doc_ptr, test_words=test.words,
                     test_ptr=test.doc_ptr, n_words=np.int64(len(vocab)),
                     notes=np.frombuffer(json.dumps(found).encode("utf-8"), dtype=np.uint8),
                     vocabulary=np.frombuffer("\n".join(vocab).encode("utf-8"), dtype=np.uint8))
    return train, test
