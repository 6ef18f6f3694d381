"""LDA by collapsed Gibbs sampling: ``paramserver run lda`` against the ``lda`` package.

The issue's reference: the ``lda`` package (Cython collapsed Gibbs, one core) on the 20
Newsgroups training split with scikit-learn's English stop words removed, min_df = 5,
max_df = 0.5 (21,392 words, 1.40 M tokens), its default priors alpha = 0.1, eta = 0.01,
100 sweeps, K = 20 and K = 100. Both sides get the same corpus (checked: our vocabulary
and counts equal scikit-learn's ``CountVectorizer``), priors and number of sweeps.

* ``lda`` package: ``LDA._initialize`` (its Python loop over tokens, not timed), then the
  sweeps exactly as ``LDA.fit`` runs them (shuffle its random numbers, ``_sample_topics``);
  only the sweeps are timed, and the log-likelihood is computed off the clock every
  ``--ll-every`` sweeps and at the end.
* ours: ``paramserver run lda --json`` with 1 and 2 workers (``--servers`` servers), the
  held-out evaluation only at the end. ``tokens/s per worker`` is the job's training
  throughput (pull + sample + push + clock, every sweep) divided by the workers;
  ``sampling`` is the kernel alone.

The final log-likelihood varies from seed to seed by about 0.15% on either side (the chain
settles in different modes), more than the differences between the systems, so every
configuration runs ``--seeds`` times and the table shows the mean and standard deviation.
Prints a table, writes benchmarks/results/lda.json and lda.png (log-likelihood against time,
first seed). Usage: ``python benchmarks/bench_lda.py [--iters 100] [--topics 20 100]
[--workers 1 2] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, run_app, write

ALPHA, ETA = 0.1, 0.01
VOCAB = ["--stop-words", "english", "--min-df", "5", "--max-df", "0.5"]  # the defaults, spelt out


def reference(n_topics: int, iters: int, ll_every: int, seed: int) -> dict[str, Any]:
    """The lda package on the issue's corpus; only its sweeps are timed."""
    import lda
    import lda.utils
    from sklearn.feature_extraction.text import CountVectorizer

    from paramserver.data import newsgroups_documents

    logging.getLogger("lda").setLevel(logging.WARNING)
    X = CountVectorizer(stop_words="english", min_df=5, max_df=0.5).fit_transform(newsgroups_documents("train")[0])
    model = lda.LDA(n_topics=n_topics, n_iter=iters, alpha=ALPHA, eta=ETA, random_state=seed)
    start = time.perf_counter()
    model._initialize(X)
    init = time.perf_counter() - start
    random_state = lda.utils.check_random_state(model.random_state)
    rands = model._rands.copy()
    history = [{"sweep": 0, "seconds": 0.0, "loglikelihood": model.loglikelihood()}]
    sampling = 0.0
    for it in range(1, iters + 1):
        t0 = time.perf_counter()
        random_state.shuffle(rands)  # as LDA.fit does before every sweep
        model._sample_topics(rands)
        sampling += time.perf_counter() - t0
        if it % ll_every == 0 or it == iters:
            history.append({"sweep": it, "seconds": sampling, "loglikelihood": model.loglikelihood()})
    tokens = int(X.sum())
    return {"system": "lda package", "topics": n_topics, "workers": 1, "vocabulary": X.shape[1], "tokens": tokens,
            "iters": iters, "loglikelihood": history[-1]["loglikelihood"], "seconds": sampling,
            "init_seconds": init, "tokens_per_second_per_worker": tokens * iters / sampling,
            "sampling_tokens_per_second_per_worker": tokens * iters / sampling, "history": history}


def ours(n_topics: int, iters: int, workers: int, servers: int, tau: int, seed: int) -> dict[str, Any]:
    """``paramserver run lda`` on the same corpus."""
    out = run_app("lda", "--data", "newsgroups", *VOCAB, "--topics", str(n_topics), "--iters", str(iters),
                  "--workers", str(workers), "--servers", str(servers), "--tau", str(tau), "--alpha", str(ALPHA),
                  "--eta", str(ETA), "--eval-every", "0", "--seed", str(seed))
    out.pop("top_words")
    return {"system": f"paramserver, {workers} worker{'s' if workers > 1 else ''}", **out}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["topics"] for r in rows})
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for r in (r for r in rows if r["topics"] == k):
            h = r["history"]
            ax.plot([p["seconds"] for p in h], [p["loglikelihood"] for p in h], marker="." if len(h) < 30 else None,
                     label=f"{r['system']} ({r['tokens_per_second_per_worker'] / 1e6:.1f} M tokens/s/worker)")
        ax.set(title=f"20 Newsgroups, K = {k}", xlabel="seconds of training (sweeps, with their communication)", ylabel="log p(w, z)")
        lls = [p["loglikelihood"] for r in rows if r["topics"] == k for p in r["history"][1:]]
        ax.set_ylim(min(lls), max(lls) + 0.02 * (max(lls) - min(lls)))
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over several seeds: means (and the spread of the log-likelihood)."""
    lls = np.array([r["loglikelihood"] for r in runs])
    first = runs[0]
    return {"system": first["system"], "topics": first["topics"], "workers": first["workers"],
            "blocks": first.get("blocks", 1), "seeds": len(runs), "loglikelihood": float(lls.mean()),
            "loglikelihood_sd": float(lls.std(ddof=1)) if len(runs) > 1 else 0.0,
            "loglikelihoods": lls.tolist(),
            **{key: float(np.mean([r[key] for r in runs])) for key in
               ("tokens_per_second_per_worker", "sampling_tokens_per_second_per_worker", "seconds")},
            "history": first["history"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=100, help="sweeps (default 100, as the issue)")
    p.add_argument("--topics", type=int, nargs="+", default=[20, 100])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--servers", type=int, default=1, help="server processes of our jobs (default 1)")
    p.add_argument("--tau", type=int, default=1)
    p.add_argument("--seeds", type=int, default=3, help="runs of each configuration (seeds 1..N; default 3)")
    p.add_argument("--ll-every", type=int, default=5, help="log-likelihood of the lda package every N sweeps")
    args = p.parse_args()

    rows, runs = [], []
    for k in args.topics:  # the systems take turns, so that a change in the machine's load hits them alike
        by_system: dict[str, list[dict[str, Any]]] = {}
        for seed in range(1, args.seeds + 1):
            for r in [reference(k, args.iters, args.ll_every, seed),
                      *(ours(k, args.iters, w, args.servers, args.tau, seed) for w in args.workers)]:
                print(f"  K={k} seed={seed} {r['system']}: log-likelihood {r['loglikelihood']:.6g}, "
                      f"{r['tokens_per_second_per_worker'] / 1e6:.2f} M tokens/s per worker", flush=True)
                by_system.setdefault(r["system"], []).append(r)
                runs.append({key: v for key, v in r.items() if key != "history"})
        rows += [summarise(v) for v in by_system.values()]
    ref = {r["topics"]: r for r in rows if r["system"] == "lda package"}
    print(f"\n20 Newsgroups train: {runs[0]['tokens']:,} tokens, {runs[0]['vocabulary']:,} words; alpha={ALPHA}, "
          f"eta={ETA}, {args.iters} sweeps, {args.seeds} seed(s); ours: {args.servers} server(s), tau={args.tau}")
    print(f"{'K':>4} {'system':<24} {'log-likelihood (sd)':>24} {'vs lda':>8} {'tokens/s/worker':>16} "
          f"{'speed-up':>9} {'sampling/worker':>16}")
    for r in rows:
        base = ref[r["topics"]]
        print(f"{r['topics']:>4} {r['system']:<24} {r['loglikelihood']:15.6g} ({r['loglikelihood_sd']:6.0f}) "
              f"{r['loglikelihood'] - base['loglikelihood']:+8.0f} {r['tokens_per_second_per_worker'] / 1e6:13.2f} M "
              f"{r['tokens_per_second_per_worker'] / base['tokens_per_second_per_worker']:8.2f}x "
              f"{r['sampling_tokens_per_second_per_worker'] / 1e6:13.2f} M")
    path = write("lda", {"iters": args.iters, "servers": args.servers, "tau": args.tau, "alpha": ALPHA, "eta": ETA,
                         "seeds": args.seeds, "results": rows, "runs": runs})
    plot(rows, RESULTS / "lda.png")
    print(f"wrote {path} and {RESULTS / 'lda.png'}")


if __name__ == "__main__":
    main()
