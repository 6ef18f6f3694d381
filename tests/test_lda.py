"""LDA: corpus building against scikit-learn, the sampler against the exact posterior, the
log-likelihood against the ``lda`` package, and a whole job on the Reuters corpus with lost,
duplicated and delayed messages whose server counts must equal the workers' assignments."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from scipy.special import gammaln

from helpers import run_app
from paramserver import InvalidArgument, data, spread
from paramserver.apps import _gibbs
from paramserver.apps._corpus import ENGLISH_STOP_WORDS, Corpus, build_vocabulary, encode, load_corpus, read_lines
from paramserver.apps.lda import TOTALS, _Shard, _shard_docs


def joint_loglik(words: np.ndarray, doc_ptr: np.ndarray, z: np.ndarray, n_topics: int, n_words: int,
                 alpha: float, beta: float) -> float:
    """log p(w, z) of LDA with symmetric priors, written independently of the kernels."""
    docs = np.repeat(np.arange(len(doc_ptr) - 1), np.diff(doc_ptr))
    nwk = np.bincount(words * n_topics + z, minlength=n_words * n_topics).reshape(n_words, n_topics)
    ndk = np.bincount(docs * n_topics + z, minlength=(len(doc_ptr) - 1) * n_topics).reshape(-1, n_topics)
    ll = n_topics * gammaln(n_words * beta) - gammaln(nwk.sum(0) + n_words * beta).sum()
    ll += (gammaln(nwk + beta) - gammaln(beta)).sum()
    ll += (gammaln(n_topics * alpha) - gammaln(ndk.sum(1) + n_topics * alpha)).sum()
    return float(ll + (gammaln(ndk + alpha) - gammaln(alpha)).sum())


def kernel_loglik(corpus: Corpus, z: np.ndarray, n_topics: int, alpha: float, beta: float) -> float:
    """log p(w, z) from the kernels' three parts, all words owned by one worker."""
    V = len(corpus.vocabulary)
    nwk = np.zeros((V, n_topics), dtype=np.int32)
    _gibbs.count(corpus.words, z, nwk)
    return (_gibbs.doc_loglik(corpus.doc_ptr, z, n_topics, alpha, _gibbs.lgamma_table(alpha))
            + _gibbs.word_loglik(nwk, np.arange(V), beta, _gibbs.lgamma_table(beta))
            + _gibbs.topic_loglik(nwk.sum(0), V, beta))


#: The command line's vocabulary options that keep every word (its defaults are the issue's reference).
NO_FILTER = ["--stop-words", "none", "--min-df", "1", "--max-df", "1.0"]


@pytest.fixture(scope="module")
def reuters() -> Corpus:
    return load_corpus("reuters", holdout=0.0)[0]


# --------------------------------------------------------------------------- corpus


def test_stop_words_are_scikit_learns() -> None:
    text = pytest.importorskip("sklearn.feature_extraction.text")
    assert frozenset(text.ENGLISH_STOP_WORDS) == ENGLISH_STOP_WORDS


@pytest.mark.data
@pytest.mark.parametrize(("min_df", "max_df"), [(5, 0.5), (2, 40), (0.01, 1.0)])
def test_vocabulary_and_counts_equal_scikit_learn(min_df: float, max_df: float) -> None:
    """The same vocabulary, word ids and counts as CountVectorizer, on 3,000 newsgroups documents."""
    text = pytest.importorskip("sklearn.feature_extraction.text")
    texts = data.newsgroups_documents("train")[0][::3][:3000]
    cv = text.CountVectorizer(stop_words="english", min_df=min_df, max_df=max_df)
    X = cv.fit_transform(texts)
    docs = [data.tokenize(t) for t in texts]
    vocab = build_vocabulary(docs, stop=ENGLISH_STOP_WORDS, min_df=min_df, max_df=max_df)
    assert vocab == cv.get_feature_names_out().tolist()
    corpus = encode(docs, vocab)
    assert (corpus.to_csr() != X).nnz == 0
    assert corpus.n_tokens == X.sum()


def test_text_file_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("y x x the\n\nz y\nthe x z z\ny y\n", encoding="utf-8")
    docs = read_lines(path)
    assert docs == [["y", "x", "x", "the"], [], ["z", "y"], ["the", "x", "z", "z"], ["y", "y"]]
    assert build_vocabulary(docs) == ["the", "x", "y", "z"]
    assert build_vocabulary(docs, stop=ENGLISH_STOP_WORDS, min_df=2, max_df=2) == ["x", "z"]  # y in 3 of 5
    assert build_vocabulary(docs, min_df=0.5) == ["y"]  # at least 2.5 documents
    corpus = encode(docs, ["x", "z"])
    assert corpus.words.tolist() == [0, 0, 1, 0, 1, 1]
    assert corpus.doc_ptr.tolist() == [0, 2, 2, 3, 6, 6]
    part = corpus.select([3, 0])
    assert (part.words.tolist(), part.doc_ptr.tolist()) == ([0, 1, 1, 0, 0], [0, 3, 5])
    with pytest.raises(InvalidArgument):
        build_vocabulary(docs, min_df=3, max_df=2)
    with pytest.raises(InvalidArgument):
        build_vocabulary(docs, max_df=1.5)

    monkeypatch.setenv("PS_DATA_DIR", str(tmp_path / "cache"))
    train, test = load_corpus(str(path), holdout=0.4, seed=3)
    assert (train.n_docs, test.n_docs) == (3, 2)
    assert set(np.array(train.vocabulary)[train.words]) == set(train.vocabulary)  # built on training documents
    cached = list((tmp_path / "cache" / "lda").glob("corpus-*.npz"))
    assert len(cached) == 1
    again = load_corpus(str(path), holdout=0.4, seed=3)
    for a, b in zip((train, test), again, strict=True):
        assert a.vocabulary == b.vocabulary and a.words.tolist() == b.words.tolist()
        assert a.doc_ptr.tolist() == b.doc_ptr.tolist()
    with pytest.raises(InvalidArgument):
        load_corpus(str(tmp_path / "missing.txt"))


# --------------------------------------------------------------------------- kernels


def test_loglikelihood_equals_lda_package(reuters: Corpus) -> None:
    """The kernels' log p(w, z) is the lda package's _loglikelihood, and the formula written out."""
    K, alpha, beta = 10, 0.1, 0.01
    z = np.random.default_rng(0).integers(0, K, reuters.n_tokens).astype(np.int32)
    ours = kernel_loglik(reuters, z, K, alpha, beta)
    V = len(reuters.vocabulary)
    assert ours == pytest.approx(joint_loglik(reuters.words, reuters.doc_ptr, z, K, V, alpha, beta), rel=1e-12)
    lda = pytest.importorskip("lda._lda")
    docs = np.repeat(np.arange(reuters.n_docs), np.diff(reuters.doc_ptr))
    nzw = np.zeros((K, V), dtype=np.intc, order="F")
    np.add.at(nzw, (z, reuters.words), 1)
    ndz = np.zeros((reuters.n_docs, K), dtype=np.intc)
    np.add.at(ndz, (docs, z), 1)
    ref = lda._loglikelihood(nzw, ndz, nzw.sum(1).astype(np.intc), ndz.sum(1).astype(np.intc), alpha, beta)
    assert ours == pytest.approx(ref, rel=1e-12)


def test_sweeps_raise_the_loglikelihood_and_keep_counts(reuters: Corpus) -> None:
    K, alpha, beta, V = 10, 0.1, 0.01, len(reuters.vocabulary)
    z = np.random.default_rng(1).integers(0, K, reuters.n_tokens).astype(np.int32)
    nwk = np.zeros((V, K), dtype=np.int32)
    _gibbs.count(reuters.words, z, nwk)
    nk = nwk.sum(0).astype(np.int32)
    _gibbs.seed(1)
    lls = [kernel_loglik(reuters, z, K, alpha, beta)]
    for _ in range(30):
        doc_part = _gibbs.sweep(reuters.words, reuters.doc_ptr, z, nwk, nk, alpha, beta, V, _gibbs.lgamma_table(alpha))
        lls.append(kernel_loglik(reuters, z, K, alpha, beta))
    assert doc_part == pytest.approx(_gibbs.doc_loglik(reuters.doc_ptr, z, K, alpha, _gibbs.lgamma_table(alpha)))
    assert lls[-1] > lls[10] > lls[1] > lls[0]
    expected = np.zeros_like(nwk)
    np.add.at(expected, (reuters.words, z), 1)
    assert np.array_equal(nwk, expected) and np.array_equal(nk, expected.sum(0))


def test_sampler_draws_from_the_exact_posterior() -> None:
    """On 4 tokens and 2 topics the chain's state frequencies match p(z | w) by enumeration."""
    words = np.array([0, 1, 0, 1], dtype=np.int32)
    doc_ptr = np.array([0, 2, 4], dtype=np.int64)
    K, V, alpha, beta = 2, 2, 0.5, 0.3
    states = np.array(list(product(range(K), repeat=4)), dtype=np.int32)
    logp = np.array([joint_loglik(words, doc_ptr, s, K, V, alpha, beta) for s in states])
    exact = np.exp(logp - logp.max())
    exact /= exact.sum()
    z = np.zeros(4, dtype=np.int32)
    nwk = np.zeros((V, K), dtype=np.int32)
    _gibbs.count(words, z, nwk)
    nk = nwk.sum(0).astype(np.int32)
    _gibbs.seed(7)
    seen = np.zeros(len(states))
    table = _gibbs.lgamma_table(alpha)
    for _ in range(60_000):
        _gibbs.sweep(words, doc_ptr, z, nwk, nk, alpha, beta, V, table)
        seen[int((z * K ** np.arange(3, -1, -1)).sum())] += 1
    assert 0.5 * np.abs(seen / seen.sum() - exact).sum() < 0.015  # total variation


def test_fold_in_perplexity_of_uniform_topics_is_the_vocabulary_size(reuters: Corpus) -> None:
    V = len(reuters.vocabulary)
    phi = np.full((V, 5), 1.0 / V, dtype=np.float32)
    logp, n = _gibbs.fold_in(reuters.words, reuters.doc_ptr, phi, 0.1, 3)
    assert n == sum((e - s) // 2 for s, e in zip(reuters.doc_ptr[:-1], reuters.doc_ptr[1:], strict=True))
    assert np.exp(-logp / n) == pytest.approx(V, rel=1e-5)


# --------------------------------------------------------------------------- the job


@pytest.mark.cluster
@pytest.mark.data
def test_job_counts_on_servers_equal_the_assignments(tmp_path: Path, fast_env: dict[str, str]) -> None:
    """2 servers, 2 workers, 5% of messages lost, duplicated, delayed: no delta lost or doubled."""
    faults = {"PS_DROP_MSG": "5", "PS_DUP_MSG": "5", "PS_DELAY_MSG": "5", "PS_DELAY_MS": "30",
              "PS_RESEND_TIMEOUT": "0.15", "PS_FAULT_SEED": "11"}
    K, iters = 8, 30
    out = run_app(["lda", "--data", "reuters", *NO_FILTER, "--topics", str(K), "--iters", str(iters), "--tau", "1",
                   "--eval-every", "10", "--servers", "2", "--workers", "2", "--save", str(tmp_path)],
                  {**fast_env, **faults}, timeout=120)

    train, test = load_corpus("reuters")
    V = len(train.vocabulary)
    parts = [np.load(tmp_path / f"worker-{r}.npz") for r in range(2)]
    assert sorted(np.concatenate([p["docs"] for p in parts]).tolist()) == list(range(train.n_docs))
    assert out["tokens"] == sum(len(p["z"]) for p in parts) == train.n_tokens
    implied = sum(np.bincount(p["words"] * K + p["z"], minlength=V * K).reshape(V, K) for p in parts)
    servers = np.load(tmp_path / "servers.npz")
    held = np.zeros((V, K), dtype=np.int64)
    held[servers["words"]] = servers["counts"]
    assert np.array_equal(held, implied)  # exactly: no lost or doubled delta
    assert np.array_equal(servers["topics"], implied.sum(0))

    # the reported final log-likelihood is log p(w, z) of the assignments, as the lda package computes it
    ptr = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(p["doc_ptr"]) for p in parts]))])
    words, z = (np.concatenate([p[name] for p in parts]) for name in ("words", "z"))
    assert out["loglikelihood"] == pytest.approx(joint_loglik(words, ptr, z, K, V, 0.1, 0.01), rel=1e-10)

    lls = [h["loglikelihood"] for h in out["history"]]
    assert len(lls) == iters + 1
    assert lls[-1] > lls[10] > lls[1] > lls[0]
    perplexities = [h["perplexity"] for h in out["history"] if h["perplexity"] is not None]
    assert len(perplexities) == 3 and 1 < perplexities[-1] < perplexities[0] < V
    assert out["heldout_tokens"] == sum((e - s) // 2 for s, e in zip(test.doc_ptr[:-1], test.doc_ptr[1:], strict=True))
    assert len(out["top_words"]) == K and all(len(t) == 10 for t in out["top_words"])
    assert out["tokens_per_second"] > 0
    assert out["resends"] > 0  # the faults were there


def test_shards_are_contiguous_balanced_and_in_key_order(reuters: Corpus) -> None:
    shards = [_shard_docs(reuters, r, 3) for r in range(3)]
    assert np.concatenate(shards).tolist() == list(range(reuters.n_docs))
    tokens = [reuters.select(d).n_tokens for d in shards]
    assert max(tokens) - min(tokens) < 2 * np.diff(reuters.doc_ptr).max()
    shard = _Shard(reuters, shards[1], totals=True)
    assert (np.diff(shard.keys.astype(np.float64)) > 0).all() and np.array_equal(shard.keys, spread(shard.ids))
    assert shard.ids[shard.total_row] == TOTALS
    assert np.array_equal(shard.ids[shard.words], reuters.select(shards[1]).words)
    blocks = shard.blocks(4)
    assert [b.doc_ptr[0] for b in blocks] == [0, *(b.doc_ptr[-1] for b in blocks[:-1])]
    assert blocks[-1].doc_ptr[-1] == shard.n_tokens
    for b in blocks:
        used = np.unique(shard.words[b.doc_ptr[0]:b.doc_ptr[-1]])
        assert b.rows.tolist() == sorted({*used.tolist(), shard.total_row})


@pytest.mark.cluster
def test_two_planted_topics_from_a_text_file(tmp_path: Path, fast_env: dict[str, str]) -> None:
    """Documents drawn from two disjoint word sets: K = 2 separates them; report and plot."""
    rng = np.random.default_rng(0)
    sets = [[f"alpha{i}" for i in range(8)], [f"beta{i}" for i in range(8)]]
    lines = [" ".join(rng.choice(sets[d % 2], 30)) for d in range(200)]
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "paramserver", "run", "lda", "--data", str(tmp_path / "docs.txt"), *NO_FILTER,
           "--topics", "2", "--iters", "20", "--top-words", "8", "--servers", "1", "--workers", "1",
           "--plot", str(tmp_path / "lda.png")]
    env = {**os.environ, **fast_env, "PS_DATA_DIR": str(tmp_path / "cache")}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    topics = [line.split(":", 1)[1].split() for line in res.stdout.splitlines() if line.startswith("topic")]
    assert sorted(sorted(t) for t in topics) == [sorted(sets[0]), sorted(sets[1])]
    assert "tokens/s" in res.stdout and (tmp_path / "lda.png").stat().st_size > 10_000


@pytest.mark.cluster
def test_a_users_tokens_are_used_as_given_and_the_held_out_documents_are_named(
        tmp_path: Path, fast_env: dict[str, str]) -> None:
    """``--data FILE`` keeps every token unless asked to filter, and says so; asked to
    filter, it says what it dropped and why; either way it says what it held out."""
    lines = [f"the cat {'sat' if d % 2 else 'ran'} on the mat w{d}" for d in range(20)]
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**os.environ, **fast_env, "PS_DATA_DIR": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "paramserver", "run", "lda", "--data", str(tmp_path / "docs.txt"), "--topics", "2",
            "--iters", "2", "--servers", "1", "--workers", "1", "--holdout", "0.2"]
    res = subprocess.run(base, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr.splitlines()
    # 16 training documents of 7 tokens; words: the cat sat ran on mat and 16 of the 20 w<d>
    assert "lda: 16 training documents, 112 tokens, 22 words" in err
    assert "lda: every token is used as given (--stop-words, --min-df and --max-df filter them)" in err
    assert ("lda: 4 documents (0.2 of them, --holdout) are held out to measure perplexity and not trained on; "
            "--holdout 0 trains on all") in err
    res = subprocess.run([*base, "--stop-words", "english", "--min-df", "2"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    # "the" and "on" are stop words (32 + 16 tokens); each w<d> is in 1 document (16 tokens)
    assert ("lda: dropped 18 of 22 distinct words (64 of 112 tokens): 2 stop words (--stop-words english), 48 "
            "tokens; 16 in fewer than 2 documents (--min-df), 16 tokens; --stop-words none --min-df 1 --max-df 1.0 "
            "keeps every token") in res.stderr.splitlines()
    assert "lda: 16 training documents, 48 tokens, 4 words" in res.stderr.splitlines()
