"""LDA topic model by collapsed Gibbs sampling on the parameter server (the paper's section 5.2).

The servers hold the shared counts in one table, ``lda.counts``: each word's ``K`` int32
counts per topic under key ``spread(word_id)``, and the ``K`` topic totals under the reserved
key ``spread(TOTALS)``. Each worker owns a contiguous run of documents (about ``1/W`` of the
tokens) and its tokens' topic assignments, which never leave the worker.

A sweep is cut into ``--blocks`` runs of documents. For each block the worker pulls the rows
of the block's words and the totals (one request per server), resamples the block's tokens
with the compiled kernel of :mod:`._gibbs` against its copy (it sees its own changes at once,
the others' as of its pull), and pushes the difference of the rows that changed. A sweep is
one iteration of the clock: the first pull of sweep ``t`` is ``bounded`` (it waits until every
worker finished sweep ``t - tau - 1``), the other blocks' pulls take what the servers have
(``eventual``), so blocks make the counts fresher without any waiting. The ``sum`` updater
applies every push exactly once, so at the end the servers hold exactly the counts of the
workers' assignments.

Quality per sweep, summed in table ``lda.stats``: the joint log-likelihood log p(w, z) (the
``lda`` package's), each worker adding its documents' part and the part of the words it is
the first worker to hold; every ``--eval-every`` sweeps, held-out perplexity by document
completion. Intermediate values use each worker's view of the counts; the final one is exact.
Rank 0 shows a progress bar and reports the curve, the top words of each topic and the
throughput (``--json``: one JSON object).

    paramserver run lda --data newsgroups --topics 20 --iters 100 --servers 2 --workers 2 --tau 1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .._errors import InvalidArgument
from ..placement import spread, unspread
from ..worker import Worker, connect
from . import _gibbs
from ._corpus import Corpus, load_corpus

__all__ = ["TOTALS", "add_arguments", "prepare", "worker"]

#: The id whose key ``spread(TOTALS)`` holds the topic totals (no word has an id this large).
TOTALS = 2**63
#: Rows of table ``lda.stats`` from this one on hold each worker's throughput (rows below: sweeps).
_SPEED = 2**62

I64 = npt.NDArray[np.int64]


def _df(text: str) -> float:
    """A document-frequency limit: an int counts documents, a float is a proportion."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``paramserver run lda``."""
    p.add_argument("--data", default="newsgroups",
                   help="'newsgroups' (default: 20 Newsgroups, test split held out), 'reuters' (LDA-C, 395 docs) "
                        "or a text file with one document per line, tokens separated by whitespace")
    p.add_argument("--topics", type=int, default=20, help="number of topics K (default 20)")
    p.add_argument("--iters", type=int, default=100, help="Gibbs sweeps (default 100)")
    p.add_argument("--tau", type=int, default=1, help="bounded delay between sweeps (default 1)")
    p.add_argument("--blocks", type=int, default=0,
                   help="pull and push N times per sweep (default: 1 with one worker, 4 with more)")
    p.add_argument("--alpha", type=float, default=0.1, help="document-topic prior (default 0.1)")
    p.add_argument("--eta", type=float, default=0.01, help="topic-word prior (default 0.01)")
    p.add_argument("--stop-words", default=None,
                   help="drop these words: 'english' (scikit-learn's), 'none' or a file of words; default "
                        "'english' for newsgroups, 'none' for a file and reuters (their tokens are used as given)")
    p.add_argument("--min-df", type=_df, default=None,
                   help="drop words in fewer documents (an int) or a smaller proportion of them (a float); default "
                        "5 for newsgroups, 1 (keep all) otherwise")
    p.add_argument("--max-df", type=_df, default=None,
                   help="drop words in more documents (an int) or a larger proportion of them (a float); default "
                        "0.5 for newsgroups, 1.0 (keep all) otherwise")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of the documents of a file (or reuters) held out to measure perplexity, not "
                        "trained on (default 0.1; 0: train on all); newsgroups holds out its test split")
    p.add_argument("--heldout-docs", type=int, default=1000, help="at most this many held-out documents (1000)")
    p.add_argument("--eval-every", type=int, default=10, help="held-out perplexity every N sweeps, 0: at the end")
    p.add_argument("--fold-in", type=int, default=20, help="sweeps of fold-in per held-out document (default 20)")
    p.add_argument("--top-words", type=int, default=10, help="words shown per topic (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--save", metavar="DIR", help="write each worker's assignments and the servers' counts here")
    p.add_argument("--plot", metavar="PNG", help="plot log-likelihood and perplexity against time (matplotlib)")


def _filters(args: argparse.Namespace) -> tuple[str, float, float]:
    """The vocabulary filters: as given, else the defaults of the data source (the built-in
    20 Newsgroups text is filtered as scikit-learn's examples do; a user's tokens are not)."""
    ng = args.data == "newsgroups"
    return (args.stop_words if args.stop_words is not None else "english" if ng else "none",
            args.min_df if args.min_df is not None else 5 if ng else 1,
            args.max_df if args.max_df is not None else 0.5 if ng else 1.0)


def _corpus(args: argparse.Namespace, notes: dict[str, Any] | None = None) -> tuple[Corpus, Corpus]:
    stop, min_df, max_df = _filters(args)
    return load_corpus(args.data, stop=stop, min_df=min_df, max_df=max_df, holdout=args.holdout,
                       heldout_docs=args.heldout_docs, seed=args.seed, notes=notes)


def describe_corpus(args: argparse.Namespace, train: Corpus, test: Corpus, notes: dict[str, Any]) -> list[str]:
    """What was done to the documents, in words: the tokens dropped and why (or that they
    are used as given), and the documents held out."""
    stop, min_df, max_df = _filters(args)
    lines = [f"lda: {train.n_docs:,} training documents, {train.n_tokens:,} tokens, {len(train.vocabulary):,} words"]
    dropped = notes.get("dropped", {})
    if not any(n for n, _ in dropped.values()):
        lines.append("lda: every token is used as given (--stop-words, --min-df and --max-df filter them)")
    else:
        why = {"stop": f"stop words (--stop-words {stop})", "rare": f"in fewer than {min_df} documents (--min-df)",
               "frequent": f"in more than {max_df} of the documents (--max-df)"}
        parts = [f"{n:,} {why[r]}, {t:,} tokens" for r, (n, t) in dropped.items() if n]
        words = sum(n for n, _ in dropped.values())
        tokens = sum(t for _, t in dropped.values())
        lines.append(f"lda: dropped {words:,} of {notes.get('words', 0):,} distinct words ({tokens:,} of "
                     f"{notes.get('tokens', 0):,} tokens): {'; '.join(parts)}; "
                     f"--stop-words none --min-df 1 --max-df 1.0 keeps every token")
    held = notes.get("heldout", test.n_docs)
    scored = f", {test.n_docs:,} of them scored (--heldout-docs)" if test.n_docs < held else ""
    if args.data == "newsgroups":
        lines.append(f"lda: the 20 Newsgroups test split ({held:,} documents{scored}) is held out to measure "
                     f"perplexity")
    elif held:
        lines.append(f"lda: {held:,} documents ({args.holdout:g} of them, --holdout{scored}) are held out to measure "
                     f"perplexity and not trained on; --holdout 0 trains on all")
    else:
        lines.append("lda: no document is held out (--holdout 0): no perplexity")
    return lines


def prepare(args: argparse.Namespace) -> None:
    """Check the options; fetch the data and build the corpus once, for every worker."""
    if args.topics < 2 or args.iters < 1 or args.tau < 0 or args.blocks < 0 or args.alpha <= 0 or args.eta <= 0:
        raise InvalidArgument("need --topics >= 2, --iters >= 1, --tau >= 0, --blocks >= 0, --alpha > 0, --eta > 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidArgument("--plot needs matplotlib (pip install matplotlib)") from None
    if args.save:
        pathlib.Path(args.save).mkdir(parents=True, exist_ok=True)
    notes: dict[str, Any] = {}
    train, test = _corpus(args, notes)
    if not args.json:
        print("\n".join(describe_corpus(args, train, test, notes)), file=sys.stderr)


def _shard_bounds(corpus: Corpus, workers: int) -> list[int]:
    """The shards' first documents, and ``n_docs``: worker ``r`` has documents ``bounds[r]:bounds[r + 1]``."""
    cuts = np.searchsorted(corpus.doc_ptr, np.arange(1, workers) * corpus.n_tokens / workers).tolist()
    return [0, *cuts, corpus.n_docs]


def _shard_docs(corpus: Corpus, rank: int, workers: int) -> I64:
    """Worker ``rank``'s documents: a contiguous run holding about ``1 / workers`` of the tokens."""
    bounds = _shard_bounds(corpus, workers)
    return np.arange(bounds[rank], bounds[rank + 1])


class _Shard:
    """A worker's documents, and the rows it keeps: its words and (``totals``) the topic totals.

    Rows are in key order, so ``keys`` is strictly increasing (pulls need no sorting);
    ``words`` holds each token's row, ``ids`` each row's word id (``TOTALS`` for the totals).
    """

    def __init__(self, corpus: Corpus, docs: I64, *, totals: bool) -> None:
        part = corpus.select(docs)
        ids = np.flatnonzero(np.bincount(part.words, minlength=len(corpus.vocabulary))).astype(np.uint64)
        ids = np.append(ids, np.uint64(TOTALS)) if totals else ids
        keys = spread(ids)
        order = np.argsort(keys)
        self.docs, self.ids, self.keys = docs, ids[order], keys[order]
        self.total_row = int(np.flatnonzero(self.ids == TOTALS)[0]) if totals else -1
        row = np.zeros(len(corpus.vocabulary), dtype=np.int32)
        words = np.flatnonzero(self.ids != TOTALS)
        row[self.ids[words].astype(np.int64)] = words
        self.words, self.doc_ptr, self.n_tokens = row[part.words], part.doc_ptr, len(part.words)

    def blocks(self, n: int) -> list[_Block]:
        """The documents cut into ``n`` runs of about equal numbers of tokens (some may be empty)."""
        ptr = self.doc_ptr
        cuts = np.searchsorted(ptr, np.linspace(0, ptr[-1], n + 1)[1:-1]).tolist()
        out = []
        for a, b in zip([0, *cuts], [*cuts, len(ptr) - 1], strict=True):
            used = np.bincount(self.words[ptr[a]:ptr[b]], minlength=len(self.keys)) > 0
            used[self.total_row] = True
            out.append(_Block(ptr[a:b + 1], np.flatnonzero(used)))
        return out


class _Block(NamedTuple):
    """A run of a shard's documents: their token offsets, and the rows they use (ascending)."""

    doc_ptr: I64
    rows: I64


class _Job:
    """One worker's part of the job: its shard, its copy of the counts, its tables."""

    def __init__(self, args: argparse.Namespace, w: Worker, train: Corpus, test: Corpus) -> None:
        self.args, self.w, self.K, self.V = args, w, args.topics, len(train.vocabulary)
        self.workers = max(w.num_workers, 1)
        self.blocks = args.blocks or (1 if self.workers == 1 else 4)
        self.train, self.vocabulary = train, train.vocabulary
        bounds = _shard_bounds(train, self.workers)
        self.shard = _Shard(train, np.arange(bounds[w.rank], bounds[w.rank + 1]), totals=True)
        self.test = _Shard(test, _shard_docs(test, w.rank, self.workers), totals=False)
        # The words' part of the log-likelihood: each word counted by the lowest rank holding it,
        # the rank whose shard (a contiguous run of documents) holds the word's first token.
        owner = np.full(self.V, self.workers)
        vocab_used, first = np.unique(train.words, return_index=True)
        owner[vocab_used] = np.searchsorted(train.doc_ptr[bounds], first, side="right") - 1
        words = np.flatnonzero(self.shard.ids != TOTALS)
        self.owned = words[owner[self.shard.ids[words].astype(np.int64)] == w.rank].astype(np.int64)
        bounded: dict[str, Any] = {"consistency": "bounded", "tau": args.tau}
        self.counts = w.table("lda.counts", width=self.K, dtype="int32", updater="sum", **bounded)
        self.stats = w.table("lda.stats", width=4, dtype="float64", updater="sum", **bounded)
        self.nwk = np.zeros((len(self.shard.keys), self.K), dtype=np.int32)
        self.nk = self.nwk[self.shard.total_row]  # a view: the kernel updates the totals in place
        self.lg_alpha, self.lg_beta = _gibbs.lgamma_table(args.alpha), _gibbs.lgamma_table(args.eta)
        self.eval_seconds = 0.0
        _gibbs.warm_up()

    def pull(self, rows: I64, **policy: Any) -> npt.NDArray[np.int32]:
        """Refresh this worker's copy of ``rows`` (``policy``: a consistency override); return the values pulled."""
        pulled: npt.NDArray[np.int32] = self.counts.pull(self.shard.keys[rows], **policy)
        self.nwk[rows] = pulled
        return pulled

    def loglik(self, doc_part: float) -> float:
        """This worker's part of log p(w, z): its documents, its owned words, and (rank 0) the totals."""
        ll = doc_part + _gibbs.word_loglik(self.nwk, self.owned, self.args.eta, self.lg_beta)
        return ll + (_gibbs.topic_loglik(self.nk, self.V, self.args.eta) if self.w.rank == 0 else 0.0)

    def heldout(self) -> tuple[float, int]:
        """Log-probability and number of this worker's scored held-out tokens (document completion)."""
        if not len(self.test.keys):
            return 0.0, 0
        start = time.perf_counter()
        phi = ((self.counts.pull(self.test.keys) + self.args.eta) / (self.nk + self.V * self.args.eta))
        logp, n = _gibbs.fold_in(self.test.words, self.test.doc_ptr, phi.astype(np.float32), self.args.alpha,
                                 self.args.fold_in)
        self.eval_seconds += time.perf_counter() - start
        return logp, n

    def report(self, sweep: int, doc_part: float, final: bool = False) -> None:
        """Push this worker's parts of sweep ``sweep``'s log-likelihood (and perplexity) to ``lda.stats``."""
        every = self.args.eval_every
        logp, n = self.heldout() if final or (every and sweep and sweep % every == 0) else (0.0, 0)
        self.stats.push([sweep], np.array([[self.loglik(doc_part), logp, n, 0.0]]))

    def run(self) -> int:
        args, w, shard = self.args, self.w, self.shard
        w.barrier()  # every worker counts in the bounded delay from the start
        _gibbs.seed(args.seed * 1_000_003 + w.rank)
        z = np.random.default_rng([args.seed, w.rank]).integers(0, self.K, shard.n_tokens).astype(np.int32)
        _gibbs.count(shard.words, z, self.nwk)
        self.nk[:] = self.nwk.sum(axis=0)
        self.counts.push(shard.keys, self.nwk)
        w.advance()
        blocks = shard.blocks(self.blocks)
        doc_parts = np.zeros(len(blocks))  # each block's part of the documents' log-likelihood
        doc_parts[0] = _gibbs.doc_loglik(shard.doc_ptr, z, self.K, args.alpha, self.lg_alpha)
        bar, times, sampling = self._bar(), [0.0], 0.0
        start = time.perf_counter()
        for t in range(1, args.iters + 1):  # each sweep is one iteration of the clock
            for b, block in enumerate(blocks):
                if b > 0:
                    policy: dict[str, Any] = {"consistency": "eventual"}  # the later blocks of a sweep never wait
                else:
                    policy = {"tau": 0} if t == 1 else {}  # sweep 1 starts from everyone's initial counts
                pulled = self.pull(block.rows, **policy)
                if b == 0:
                    self.report(t - 1, doc_parts.sum())
                t0 = time.perf_counter()
                doc_parts[b] = _gibbs.sweep(shard.words, block.doc_ptr, z, self.nwk, self.nk, args.alpha,
                                            args.eta, self.V, self.lg_alpha)
                sampling += time.perf_counter() - t0
                delta = self.nwk[block.rows] - pulled
                changed = np.flatnonzero(delta.any(axis=1))
                self.counts.push(shard.keys[block.rows[changed]], delta[changed])
            w.advance()
            times.append(time.perf_counter() - start - self.eval_seconds)
            self._progress(bar, t)
        loop = time.perf_counter() - start - self.eval_seconds
        w.wait_all()
        w.barrier()  # every push applied: the servers hold the final counts
        self.pull(np.arange(len(shard.keys)))
        self.report(args.iters, doc_parts.sum(), final=True)
        self.stats.push([_SPEED + w.rank], np.array([[shard.n_tokens, loop, sampling, w.stats()["resends"]]]))
        if args.save:
            np.savez(pathlib.Path(args.save) / f"worker-{w.rank}.npz", docs=shard.docs, doc_ptr=shard.doc_ptr,
                     words=shard.ids[shard.words].astype(np.int64), z=z)
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
        # Row s is pushed in iteration s + 1 and complete once every worker finished it. The clock
        # is now t + 1, so this pull waits for iteration t - tau: no longer than the next sweep's.
        done = t - self.args.tau - 1
        if done >= 0:
            ll, logp, n, _ = self.stats.pull([done])[0]
            bar.set_postfix_str(f"sweep {done}: log-lik {ll:.6g}" + (f", perplexity {np.exp(-logp / n):.0f}"
                                                                      if n else ""))
        bar.update(1)

    def _finish(self, times: list[float]) -> None:
        args, K = self.args, self.K
        q = self.stats.pull(np.arange(args.iters + 1))
        speed = self.stats.pull(_SPEED + np.arange(self.workers))
        keys, counts = self.counts.pull_range()
        ids = unspread(keys)
        totals = counts[ids == TOTALS][0]
        words, counts = ids[ids != TOTALS].astype(np.int64), counts[ids != TOTALS]
        if args.save:
            np.savez(pathlib.Path(args.save) / "servers.npz", words=words, counts=counts, topics=totals)
        history = [{"sweep": s, "seconds": round(times[s], 4), "loglikelihood": float(q[s, 0]),
                    "perplexity": float(np.exp(-q[s, 1] / q[s, 2])) if q[s, 2] else None}
                   for s in range(args.iters + 1)]
        top = np.argsort(-counts, axis=0, kind="stable")[:args.top_words]
        top_words = [[self.vocabulary[words[i]] for i in top[:, k] if counts[i, k] > 0] for k in range(K)]
        tokens, loop, sampling = speed[:, 0], speed[:, 1], speed[:, 2]
        rate = float(tokens.sum() * args.iters / loop.max())
        result = {
            "loglikelihood": history[-1]["loglikelihood"], "perplexity": history[-1]["perplexity"],
            "tokens": int(tokens.sum()), "tokens_per_second": rate, "tokens_per_second_per_worker": rate / self.workers,
            "sampling_tokens_per_second_per_worker": float(np.mean(tokens * args.iters / sampling)),
            "seconds": float(loop.max()), "documents": self.train.n_docs, "vocabulary": self.V,
            "heldout_tokens": int(q[-1, 2]), "topics": K, "iters": args.iters, "workers": self.workers,
            "blocks": self.blocks, "tau": args.tau, "alpha": args.alpha, "eta": args.eta,
            "resends": int(speed[:, 3].sum()), "top_words": top_words, "history": history,
        }
        if args.plot:
            _plot(history, args.plot)
        if args.json:
            print(json.dumps(result), flush=True)
            return
        print(f"LDA on {result['documents']:,} documents ({result['tokens']:,} tokens, {self.V:,} words): K={K}, "
              f"alpha={args.alpha}, eta={args.eta}; {self.workers} workers, {self.blocks} blocks, tau={args.tau}")
        print(f"{'sweep':>6} {'seconds':>8} {'log-likelihood':>16} {'perplexity':>11}")
        for h in history:
            if h["perplexity"] is not None or h["sweep"] in (0, 1):
                perp = f"{h['perplexity']:11.1f}" if h["perplexity"] is not None else ""
                print(f"{h['sweep']:>6} {h['seconds']:8.2f} {h['loglikelihood']:16.6g} {perp}")
        for k, top_k in enumerate(top_words):
            print(f"topic {k:>3}: {' '.join(top_k)}")
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
    with connect() as w:
        return _Job(args, w, train, test).run()


if __name__ == "__main__":
    from ._runner import worker_main

    worker_main(sys.modules[__name__], "lda")
