"""Compiled kernels of collapsed Gibbs sampling for LDA (numba).

Notation: ``K`` topics, word-topic counts ``nwk`` (one row of ``K`` int32 per word, the rows
a worker pulled), topic totals ``nk``, document-topic counts ``ndk`` and priors ``alpha``
(documents) and ``beta`` (words; the ``lda`` package calls it ``eta``), ``V`` words.

:func:`sweep` resamples every token of a shard once, document by document, from

    p(z = k | rest)  ∝  (nwk[w, k] + beta) * (ndk[k] + alpha) / (nk[k] + V * beta)

It keeps ``1 / (nk[k] + V beta)`` per topic (two divisions per token instead of ``K``) and
the current document's counts in a length-``K`` vector rebuilt from the assignments, so no
document-topic matrix exists. The ``K`` products are computed in float32 with fast-math so
that LLVM vectorises them (SIMD), then a linear scan subtracts them from a uniform draw to
pick the topic. On 20 Newsgroups (1.4 M tokens, one core) this samples 3.5x (K = 20) to 5x
(K = 100) as many tokens per second as the ``lda`` package's Cython loop, which divides per
topic and bisects a cumulative array (``benchmarks/bench_lda.py``); building the cumulative
array and bisecting it here measured 20% slower than the scan.

The joint log-likelihood is the ``lda`` package's ``_loglikelihood``, split so that each
part is computed where its counts live (the sum of the three is log p(w, z)):

* words: ``sum_{w,k} [lgamma(nwk + beta) - lgamma(beta)]`` over rows (:func:`word_loglik`);
* topics: ``K lgamma(V beta) - sum_k lgamma(nk + V beta)`` (:func:`topic_loglik`);
* documents: ``sum_d [lgamma(K alpha) - lgamma(K alpha + n_d) + sum_k (lgamma(ndk + alpha) -
  lgamma(alpha))]``, returned by :func:`sweep` for the state it leaves (:func:`doc_loglik`
  for any state).

``lgamma(n + a) - lgamma(a)`` for small integer ``n`` comes from a table (:func:`lgamma_table`).
Random numbers come from numba's per-process generator: :func:`seed` seeds it.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

__all__ = ["count", "doc_loglik", "fold_in", "lgamma_table", "seed", "sweep", "topic_loglik", "warm_up", "word_loglik"]

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


def lgamma_table(a: float, size: int = 1 << 16) -> F64:
    """``table[n] = lgamma(n + a) - lgamma(a)`` for ``n < size`` (``table[0] == 0``)."""
    return np.asarray(gammaln(np.arange(size) + a) - gammaln(a), dtype=np.float64)


@nb.njit(cache=True, fastmath=True, inline="always")
def _draw(p: npt.NDArray[np.float32], total: np.float32) -> int:  # pragma: no cover - compiled
    """A topic drawn with probability proportional to ``p`` (which sums to ``total``)."""
    u = np.float32(np.random.random()) * total
    new = 0
    while new < p.shape[0] - 1:
        u -= p[new]
        if u < 0:
            break
        new += 1
    return new


@nb.njit(cache=True, inline="always")
def _lg(table: F64, n: int, a: float) -> float:
    return table[n] if n < table.shape[0] else math.lgamma(n + a) - math.lgamma(a)


@nb.njit(cache=True)
def seed(value: int) -> None:
    """Seed the generator of the sampling kernels (one per process)."""
    np.random.seed(value)


@nb.njit(cache=True)
def count(words: I32, z: I32, nwk: I32) -> None:
    """Add one to ``nwk[words[i], z[i]]`` for every token ``i``."""
    for i in range(words.shape[0]):
        nwk[words[i], z[i]] += 1


@nb.njit(cache=True)
def _doc_part(ndk: I32, n_d: int, alpha: float, lg_alpha: F64) -> float:
    k_alpha = ndk.shape[0] * alpha
    ll = math.lgamma(k_alpha) - math.lgamma(k_alpha + n_d)
    for k in range(ndk.shape[0]):
        ll += _lg(lg_alpha, ndk[k], alpha)
    return ll


@nb.njit(cache=True)
def doc_loglik(doc_ptr: I64, z: I32, n_topics: int, alpha: float, lg_alpha: F64) -> float:
    """The documents' part of log p(w, z) for assignments ``z``."""
    ndk = np.zeros(n_topics, dtype=np.int32)
    ll = 0.0
    for d in range(doc_ptr.shape[0] - 1):
        ndk[:] = 0
        for i in range(doc_ptr[d], doc_ptr[d + 1]):
            ndk[z[i]] += 1
        ll += _doc_part(ndk, doc_ptr[d + 1] - doc_ptr[d], alpha, lg_alpha)
    return ll


@nb.njit(cache=True)
def word_loglik(nwk: I32, rows: I64, beta: float, lg_beta: F64) -> float:
    """The words' part of log p(w, z) over the rows ``rows`` of ``nwk``."""
    ll = 0.0
    for r in rows:
        for k in range(nwk.shape[1]):
            n = nwk[r, k]
            if n > 0:
                ll += _lg(lg_beta, n, beta)
    return ll


def topic_loglik(nk: npt.ArrayLike, n_words: int, beta: float) -> float:
    """The topic totals' part of log p(w, z): ``K lgamma(V beta) - sum_k lgamma(nk + V beta)``."""
    totals = np.asarray(nk, dtype=np.float64)
    return float(len(totals) * gammaln(n_words * beta) - gammaln(totals + n_words * beta).sum())


@nb.njit(cache=True, fastmath=True)
def sweep(words: I32, doc_ptr: I64, z: I32, nwk: I32, nk: I32, alpha: float, beta: float, n_words: int,
          lg_alpha: F64) -> float:
    """Resample every token once; update ``z``, ``nwk`` and ``nk`` in place.

    Parameters
    ----------
    words, doc_ptr:
        The shard: row numbers into ``nwk`` of each token, document offsets.
    z:
        Topic of each token.
    nwk, nk:
        Word-topic counts (rows of this shard's words) and topic totals, as this worker
        sees them; they must count the shard's own assignments.
    alpha, beta:
        Dirichlet priors of documents and words.
    n_words:
        Vocabulary size ``V``.
    lg_alpha:
        ``lgamma_table(alpha)``.

    Returns
    -------
    float
        The documents' part of log p(w, z) after the sweep.
    """
    n_topics = nk.shape[0]
    a32, b32 = np.float32(alpha), np.float32(beta)
    vbeta = n_words * beta
    inv = np.empty(n_topics, dtype=np.float32)
    for k in range(n_topics):
        inv[k] = 1.0 / (nk[k] + vbeta)
    ndk = np.zeros(n_topics, dtype=np.int32)
    p = np.empty(n_topics, dtype=np.float32)
    ll = 0.0
    for d in range(doc_ptr.shape[0] - 1):
        start, end = doc_ptr[d], doc_ptr[d + 1]
        ndk[:] = 0
        for i in range(start, end):
            ndk[z[i]] += 1
        for i in range(start, end):
            w, old = words[i], z[i]
            nwk[w, old] -= 1
            ndk[old] -= 1
            nk[old] -= 1
            inv[old] = 1.0 / (nk[old] + vbeta)
            total = np.float32(0.0)
            for k in range(n_topics):  # vectorised
                q = (nwk[w, k] + b32) * (ndk[k] + a32) * inv[k]
                p[k] = q
                total += q
            new = _draw(p, total)
            z[i] = new
            nwk[w, new] += 1
            ndk[new] += 1
            nk[new] += 1
            inv[new] = 1.0 / (nk[new] + vbeta)
        ll += _doc_part(ndk, end - start, alpha, lg_alpha)
    return ll


@nb.njit(cache=True, fastmath=True)
def fold_in(words: I32, doc_ptr: I64, phi: npt.NDArray[np.float32], alpha: float, iters: int) -> tuple[float, int]:
    """Held-out log-likelihood by document completion, with the topics ``phi`` fixed.

    In each document the tokens at even positions are observed: their topics are sampled
    ``iters`` times from ``phi[w, k] * (ndk[k] + alpha)``; the tokens at odd positions are
    scored by ``log sum_k theta_k phi[w, k]`` with ``theta = (ndk + alpha) / (n + K alpha)``.

    Returns
    -------
    (float, int)
        Sum of the scored tokens' log-probabilities, and their number.
    """
    n_topics = phi.shape[1]
    a32 = np.float32(alpha)
    ndk = np.zeros(n_topics, dtype=np.int32)
    p = np.empty(n_topics, dtype=np.float32)
    z = np.empty(0, dtype=np.int32)
    logp, scored = 0.0, 0
    for d in range(doc_ptr.shape[0] - 1):
        start, end = doc_ptr[d], doc_ptr[d + 1]
        obs = words[start:end:2]
        if end - start < 2:
            continue
        if z.shape[0] < obs.shape[0]:
            z = np.empty(obs.shape[0], dtype=np.int32)
        ndk[:] = 0
        for i in range(obs.shape[0]):
            z[i] = np.random.randint(0, n_topics)
            ndk[z[i]] += 1
        for _ in range(iters):
            for i in range(obs.shape[0]):
                ndk[z[i]] -= 1
                total = np.float32(0.0)
                for k in range(n_topics):
                    q = phi[obs[i], k] * (ndk[k] + a32)
                    p[k] = q
                    total += q
                new = _draw(p, total)
                z[i] = new
                ndk[new] += 1
        norm = 1.0 / (obs.shape[0] + n_topics * alpha)
        for i in range(start + 1, end, 2):
            s = 0.0
            for k in range(n_topics):
                s += (ndk[k] + alpha) * norm * phi[words[i], k]
            logp += math.log(s)
            scored += 1
    return logp, scored


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel now, so that no sweep is timed with it."""
    i32, i64 = np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64)
    table = lgamma_table(0.1, 2)
    counts = np.zeros((0, 2), dtype=np.int32)
    count(i32, i32, counts)
    doc_loglik(i64, i32, 2, 0.1, table)
    word_loglik(counts, np.zeros(0, dtype=np.int64), 0.1, table)
    sweep(i32, i64, i32, counts, np.ones(2, dtype=np.int32), 0.1, 0.1, 1, table)
    fold_in(i32, i64, np.zeros((0, 2), dtype=np.float32), 0.1, 1)
