"""LDA topic model by collapsed Gibbs sampling on the parameter server (the paper's section 5.2).

The servers hold the shared counts: table ``lda.word_topic`` has one key per word
(``spread(word_id)``) whose ``K`` int32 values are the word's counts per topic, and table
``lda.topic`` holds the ``K`` topic totals under key 0 (a table of its own: every worker
reads and writes that one row each sweep, and the totals are not a word). Each worker owns
every ``W``-th document and its tokens' topic assignments, which never leave the worker.

A sweep: pull the rows of the worker's words and the totals; resample every local token with
the compiled kernel of :mod:`._gibbs` against that copy (the worker sees its own changes at
once, the others' as of its pull); push the difference, only the rows that changed; advance
the clock. All tables are ``bounded`` with delay ``tau``: the pull of sweep ``t`` waits until
every worker finished sweep ``t - tau - 1``. Counts are integers and the ``sum`` updater
applies each push exactly once, so at the end the servers hold exactly the counts of the
workers' assignments.

Quality, per sweep: the joint log-likelihood log p(w, z) (the ``lda`` package's), summed in
table ``lda.quality`` from parts computed where the counts are (each worker: its documents,
and the words it is the first worker to hold); every ``--eval-every`` sweeps, held-out
perplexity by document completion. Intermediate values use each worker's view of the counts;
the final one is exact. Rank 0 shows a progress bar and reports the curve, the top words of
each topic and the throughput (``--json``: one JSON object).

    paramserver run lda --data newsgroups --stop-words english --min-df 5 --max-df 0.5 --topics 20 --iters 100
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

import paramserver as ps

from . import _gibbs
from ._corpus import Corpus, load_corpus

__all__ = ["add_arguments", "prepare", "worker"]


def _df(text: str) -> float:
    """A document-frequency limit: an int counts documents, a float is a proportion."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``paramserver run lda``."""
    p.add_argument("--data", required=True,
                   help="'newsgroups' (20 Newsgroups, test split held out), 'reuters' (LDA-C, 395 docs) or a "
                        "text file with one document per line, tokens separated by whitespace")
    p.add_argument("--topics", type=int, default=20, help="number of topics K (default 20)")
    p.add_argument("--iters", type=int, default=100, help="Gibbs sweeps (default 100)")
    p.add_argument("--tau", type=int, default=1, help="bounded delay between sweeps (default 1)")
    p.add_argument("--alpha", type=float, default=0.1, help="document-topic prior (default 0.1)")
    p.add_argument("--eta", type=float, default=0.01, help="topic-word prior (default 0.01)")
    p.add_argument("--stop-words", default="none", help="'none' (default), 'english' (scikit-learn's) or a file")
    p.add_argument("--min-df", type=_df, default=1, help="drop words in fewer documents (int) or proportion (float)")
    p.add_argument("--max-df", type=_df, default=1.0, help="drop words in more documents (int) or proportion (float)")
    p.add_argument("--holdout", type=float, default=0.1, help="fraction of documents held out (default 0.1)")
    p.add_argument("--heldout-docs", type=int, default=1000, help="at most this many held-out documents (1000)")
    p.add_argument("--eval-every", type=int, default=10, help="held-out perplexity every N sweeps, 0: at the end")
    p.add_argument("--fold-in", type=int, default=20, help="sweeps of fold-in per held-out document (default 20)")
    p.add_argument("--top-words", type=int, default=10, help="words shown per topic (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--save", metavar="DIR", help="write each worker's assignments and the servers' counts here")
    p.add_argument("--plot", metavar="PNG", help="plot log-likelihood and perplexity against time (matplotlib)")


def _corpus(args: argparse.Namespace) -> tuple[Corpus, Corpus]:
    return load_corpus(args.data, stop=args.stop_words, min_df=args.min_df, max_df=args.max_df,
                       holdout=args.holdout, heldout_docs=args.heldout_docs, seed=args.seed)


def prepare(args: argparse.Namespace) -> None:
    """Check the options; fetch the data and build the corpus once, for every worker."""
    if args.topics < 2 or args.iters < 1 or args.tau < 0 or args.alpha <= 0 or args.eta <= 0:
        raise ps.InvalidArgument("need --topics >= 2, --iters >= 1, --tau >= 0, --alpha > 0 and --eta > 0")
    train, test = _corpus(args)
    if not args.json:
        print(f"lda: {train.n_docs:,} documents, {train.n_tokens:,} tokens, {len(train.vocabulary):,} words; "
              f"{test.n_docs:,} held-out documents", file=sys.stderr)


class _Shard:
    """Documents ``rank::workers`` of a corpus, their words as rows in key order.

    ``keys`` (strictly increasing, so pulls need no sorting) are ``spread(word_ids)``;
    ``words`` holds each token's row number, ``word_ids`` each row's word.
    """

    def __init__(self, corpus: Corpus, rank: int, workers: int) -> None:
        self.docs = np.arange(rank, corpus.n_docs, workers)
        part = corpus.select(self.docs)
        ids = np.flatnonzero(np.bincount(part.words, minlength=len(corpus.vocabulary)))
        keys = ps.spread(ids)
        order = np.argsort(keys)
        self.word_ids, self.keys = ids[order], keys[order]
        row = np.zeros(len(corpus.vocabulary), dtype=np.int32)
        row[self.word_ids] = np.arange(len(ids), dtype=np.int32)
        self.words, self.doc_ptr = row[part.words], part.doc_ptr
        self.n_tokens = len(part.words)


def _owned_rows(corpus: Corpus, shard: _Shard, rank: int, workers: int) -> npt.NDArray[np.int64]:
    """Rows of the words this worker is the lowest rank to hold (each word counted once)."""
    owner = np.full(len(corpus.vocabulary), workers)
    for r in range(workers - 1, -1, -1):
        owner[corpus.select(np.arange(r, corpus.n_docs, workers)).words] = r
    return np.flatnonzero(owner[shard.word_ids] == rank).astype(np.int64)


class _Job:
    """One worker's part of the job: its shard, its copy of the counts, its tables."""

    def __init__(self, args: argparse.Namespace, w: ps.Worker, train: Corpus, test: Corpus) -> None:
        self.args, self.w, self.K, self.V = args, w, args.topics, len(train.vocabulary)
        self.workers = max(w.num_workers, 1)
        self.train, self.vocabulary = train, train.vocabulary
        self.shard = _Shard(train, w.rank, self.workers)
        self.test = _Shard(test, w.rank, self.workers)
        self.owned = _owned_rows(train, self.shard, w.rank, self.workers)
        bounded: dict[str, Any] = {"consistency": "bounded", "tau": args.tau}
        self.wt = w.table("lda.word_topic", width=self.K, dtype="int32", updater="sum", **bounded)
        self.tt = w.table("lda.topic", width=self.K, dtype="int32", updater="sum", **bounded)
        self.quality = w.table("lda.quality", width=3, dtype="float64", updater="sum", **bounded)
        self.speed = w.table("lda.speed", width=4, dtype="float64", updater="sum", **bounded)
        self.nwk = np.zeros((len(self.shard.keys), self.K), dtype=np.int32)
        self.nk = np.zeros((1, self.K), dtype=np.int32)
        self.lg_alpha, self.lg_beta = _gibbs.lgamma_table(args.alpha), _gibbs.lgamma_table(args.eta)
        self.eval_seconds = 0.0
        _gibbs.warm_up()

    def pull(self, tau: int | None = None) -> None:
        """Refresh this worker's copy of its rows and of the topic totals."""
        reqs = [self.wt.pull(self.shard.keys, out=self.nwk, tau=tau, block=False),
                self.tt.pull([0], out=self.nk, tau=tau, block=False)]
        for r in reqs:
            r.wait()

    def loglik(self, doc_part: float) -> float:
        """This worker's part of log p(w, z): its documents, its owned words, and (rank 0) the totals."""
        ll = doc_part + _gibbs.word_loglik(self.nwk, self.owned, self.args.eta, self.lg_beta)
        return ll + (_gibbs.topic_loglik(self.nk[0], self.V, self.args.eta) if self.w.rank == 0 else 0.0)

    def heldout(self) -> tuple[float, int]:
        """Log-probability and number of this worker's scored held-out tokens (document completion)."""
        start = time.perf_counter()
        if not len(self.test.keys):
            return 0.0, 0
        rows = self.wt.pull(self.test.keys)
        phi = ((rows + self.args.eta) / (self.nk[0] + self.V * self.args.eta)).astype(np.float32)
        logp, n = _gibbs.fold_in(self.test.words, self.test.doc_ptr, phi, self.args.alpha, self.args.fold_in)
        self.eval_seconds += time.perf_counter() - start
        return logp, n

    def report_quality(self, sweep: int, doc_part: float, final: bool = False) -> None:
        """Push this worker's parts of sweep ``sweep``'s log-likelihood (and perplexity) to ``lda.quality``."""
        every = self.args.eval_every
        logp, n = self.heldout() if final or (every and sweep and sweep % every == 0) else (0.0, 0)
        self.quality.push([sweep], np.array([[self.loglik(doc_part), logp, n]]))

    def run(self) -> int:
        args, w, shard = self.args, self.w, self.shard
        w.barrier()  # every worker counts in the bounded delay from the start
        _gibbs.seed(args.seed * 1_000_003 + w.rank)
        z = np.random.default_rng([args.seed, w.rank]).integers(0, self.K, shard.n_tokens).astype(np.int32)
        _gibbs.count(shard.words, z, self.nwk)
        self.nk[0] = self.nwk.sum(axis=0)
        doc_part = _gibbs.doc_loglik(shard.doc_ptr, z, self.K, args.alpha, self.lg_alpha)
        self.wt.push(shard.keys, self.nwk)
        self.tt.push([0], self.nk)
        w.advance()
        bar, times = self._bar(), [0.0]
        start = time.perf_counter()
        sampling = 0.0
        for t in range(1, args.iters + 1):
            self.pull(tau=0 if t == 1 else None)  # the first sweep starts from everyone's initial counts
            self.report_quality(t - 1, doc_part)
            before, nk_before = self.nwk.copy(), self.nk.copy()
            t0 = time.perf_counter()
            doc_part = _gibbs.sweep(shard.words, shard.doc_ptr, z, self.nwk, self.nk[0], args.alpha, args.eta,
                                    self.V, self.lg_alpha)
            sampling += time.perf_counter() - t0
            delta = self.nwk - before
            changed = np.flatnonzero(delta.any(axis=1))
            self.wt.push(shard.keys[changed], delta[changed])
            self.tt.push([0], self.nk - nk_before)
            w.advance()
            times.append(time.perf_counter() - start - self.eval_seconds)
            self._progress(bar, t)
        loop = time.perf_counter() - start - self.eval_seconds
        w.wait_all()
        w.barrier()  # every push applied: the servers hold the final counts
        self.pull()
        self.report_quality(args.iters, doc_part, final=True)
        self.speed.push([w.rank], np.array([[shard.n_tokens, loop, sampling, w.stats()["resends"]]]))
        if args.save:
            np.savez(pathlib.Path(args.save) / f"worker-{w.rank}.npz", docs=shard.docs, doc_ptr=shard.doc_ptr,
                     words=shard.word_ids[shard.words], z=z)
        w.wait_all()
        w.barrier()
        if bar is not None:
            bar.close()
        if w.rank == 0:
            self._finish(times)
        w.barrier()  # rank 0 has read the tables
        return 0

    # ------------------------------------------------------------------ rank 0
    def _bar(self) -> Any:
        if self.w.rank != 0 or self.args.json:
            return None
        from tqdm import tqdm

        return tqdm(total=self.args.iters, desc="lda", unit="sweep", file=sys.stderr, leave=False, disable=None)

    def _progress(self, bar: Any, t: int) -> None:
        """Advance the bar; show the log-likelihood of the last sweep every worker has reported."""
        if bar is None:
            return
        # Row s is complete once every worker finished iteration s + 1. The clock is now t + 1, so this
        # pull waits for iteration t - tau: no longer than the next sweep's pull will.
        done = t - self.args.tau - 1
        if done >= 0:
            ll, logp, n = self.quality.pull([done])[0]
            bar.set_postfix_str(f"sweep {done}: log-lik {ll:.6g}" + (f", perplexity {np.exp(-logp / n):.0f}"
                                                                      if n else ""))
        bar.update(1)

    def _finish(self, times: list[float]) -> None:
        args, K = self.args, self.K
        q = self.quality.pull(np.arange(args.iters + 1))
        speed = self.speed.pull(np.arange(self.workers))
        keys, counts = self.wt.pull_range()
        totals = self.tt.pull([0])[0]
        word_ids = ps.unspread(keys).astype(np.int64)
        if args.save:
            np.savez(pathlib.Path(args.save) / "servers.npz", words=word_ids, counts=counts, topics=totals)
        history = [{"sweep": s, "seconds": round(times[s], 4), "loglikelihood": float(q[s, 0]),
                    "perplexity": float(np.exp(-q[s, 1] / q[s, 2])) if q[s, 2] else None}
                   for s in range(args.iters + 1)]
        top = np.argsort(-counts, axis=0, kind="stable")[:args.top_words]
        top_words = [[self.vocabulary[word_ids[i]] for i in top[:, k] if counts[i, k] > 0] for k in range(K)]
        tokens, loop, sampling = speed[:, 0], speed[:, 1], speed[:, 2]
        rate = float(tokens.sum() * args.iters / loop.max())
        result = {
            "loglikelihood": history[-1]["loglikelihood"], "perplexity": history[-1]["perplexity"],
            "tokens": int(tokens.sum()), "tokens_per_second": rate, "tokens_per_second_per_worker": rate / self.workers,
            "sampling_tokens_per_second_per_worker": float(np.mean(tokens * args.iters / sampling)),
            "seconds": float(loop.max()), "documents": self.train.n_docs, "vocabulary": self.V,
            "heldout_tokens": int(q[-1, 2]), "topics": K, "iters": args.iters, "workers": self.workers,
            "tau": args.tau, "alpha": args.alpha, "eta": args.eta, "resends": int(speed[:, 3].sum()),
            "top_words": top_words, "history": history,
        }
        if args.plot:
            _plot(history, args.plot)
        if args.json:
            print(json.dumps(result), flush=True)
            return
        print(f"LDA on {result['documents']:,} documents ({result['tokens']:,} tokens, {self.V:,} words): K={K}, "
              f"alpha={args.alpha}, eta={args.eta}, {self.workers} workers, tau={args.tau}")
        print(f"{'sweep':>6} {'seconds':>8} {'log-likelihood':>16} {'perplexity':>11}")
        for h in history:
            if h["perplexity"] is not None or h["sweep"] in (0, 1):
                perp = f"{h['perplexity']:11.1f}" if h["perplexity"] is not None else ""
                print(f"{h['sweep']:>6} {h['seconds']:8.2f} {h['loglikelihood']:16.6g} {perp}")
        for k, words in enumerate(top_words):
            print(f"topic {k:>3}: {' '.join(words)}")
        print(f"{rate:,.0f} tokens/s ({rate / self.workers:,.0f} per worker; sampling alone "
              f"{result['sampling_tokens_per_second_per_worker']:,.0f} per worker)")


def _plot(history: list[dict[str, Any]], path: str) -> None:
    """Log-likelihood and held-out perplexity against training time, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot([h["seconds"] for h in history], [h["loglikelihood"] for h in history], marker=".")
    ax[0].set(xlabel="seconds", ylabel="log p(w, z)", title="training log-likelihood")
    evals = [h for h in history if h["perplexity"] is not None]
    ax[1].plot([h["seconds"] for h in evals], [h["perplexity"] for h in evals], marker="o")
    ax[1].set(xlabel="seconds", ylabel="perplexity", title="held-out perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def worker(args: argparse.Namespace) -> int:
    """The program of every worker process (rank 0 reports)."""
    train, test = _corpus(args)
    with ps.connect() as w:
        return _Job(args, w, train, test).run()


if __name__ == "__main__":
    from ._runner import worker_main

    worker_main(sys.modules[__name__], "lda")
