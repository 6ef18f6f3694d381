"""The applications on 20 Newsgroups: time to liblinear's objective, traffic (Figure 11), sketch rate.

1. L1 logistic regression (lambda = 1) by DBPG with 1 and 2 workers (2 servers): the time
   until the objective is within 1e-3 of liblinear's, beside liblinear's own time measured
   in the same round (scikit-learn, one core), and their ratio. What is timed, on both sides:
   from the training data in memory to the objective within 1e-3. liblinear: ``fit`` on the
   CSR matrix (its own conversion of the data included). paramserver: on rank 0, from the
   moment its worker is connected with the data in memory: its row share, the cut into
   feature blocks, table set-up, the barrier with the other workers and the block
   iterations, until the objective rank 0 computes after a pass is within 1e-3 (those
   objective evaluations are the measurement and not counted). Also shown: each side's
   whole wall time, from a fresh process (imports, data load, for paramserver the
   scheduler, servers and workers too) until the job ends; the paramserver job runs on to
   its own convergence criterion, so that column includes the passes after the target.
   ``--only timing --repeat 3`` runs just this part three times and prints the medians.
2. Traffic of the same job with no filter, key caching, compression (zero suppression +
   Snappy), the KKT filter, and all together: bytes sent by a worker and by the servers,
   as reduction factors beside the paper's Figure 11; writes traffic.png.
3. The CountMin sketch's insert rate (tokens per second per server process).

Writes benchmarks/results/apps.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, run_app, write

PAPER = {"key caching": (2.0, 2.0), "compression": (6.0, 20.0), "KKT": (None, None), "all": (12.0, 40.0)}
CONFIGS = {"none": "none", "key caching": "keys", "compression": "zeros,snappy", "KKT": "kkt",
           "all": "kkt,keys,zeros,snappy"}


def run(app: str, *args: str) -> dict[str, Any]:
    return run_app(app, *args, env={"PS_LOG_LEVEL": "WARNING"}, timeout=1800)


def liblinear_seconds() -> tuple[float, float]:
    """liblinear's time and objective for lambda = 1, measured now (not the cached reference)."""
    import warnings

    warnings.simplefilter("ignore")
    from paramserver.apps import _reference

    ref = _reference.fit_liblinear(1.0)
    return ref["seconds"], ref["objective"]


def liblinear_wall_seconds() -> float:
    """Wall time of a fresh process that imports scikit-learn, loads the data and fits liblinear."""
    code = "from paramserver.apps import _reference as r; r.fit_liblinear(1.0)"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def timing_round() -> dict[str, Any]:
    """One round: liblinear, then DBPG with 1 and 2 workers (2 servers, default options)."""
    lib_seconds, lib_objective = liblinear_seconds()
    out: dict[str, Any] = {"liblinear": {"seconds": lib_seconds, "objective": lib_objective,
                                         "wall_seconds": liblinear_wall_seconds()}}
    for workers in (1, 2):
        start = time.perf_counter()
        job = run("logreg", "--workers", str(workers), "--servers", "2")
        wall = time.perf_counter() - start
        target = lib_objective * (1 + 1e-3)
        hit = next((e for e in job["log"] if e["objective"] <= target), None)
        out[f"{workers} worker"] = {
            "seconds_to_target": hit["seconds"] if hit else None, "pass_at_target": hit["pass"] if hit else None,
            "objective_at_target": hit["objective"] if hit else None, "wall_seconds": wall,
            "passes": job["passes"], "objective": job["objective"], "relative_gap": job["relative_gap"],
            "ratio": hit["seconds"] / lib_seconds if hit else None}
    return out


def print_timing(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Print each round and the medians; return the medians."""
    print("time from the data in memory to an objective within 1e-3 of liblinear's (lambda = 1, 20 Newsgroups);\n"
          "wall: a fresh process to the job's end (imports, data load, all processes; DBPG runs on to its criterion)")
    print(f"{'round':>5} {'liblinear s':>11} {'1 worker s':>10} {'ratio':>6} {'2 workers s':>11} {'ratio':>6}  "
          f"{'wall: liblinear':>15} {'1 worker':>8} {'2 workers':>9}")

    def row(name: str, r: dict[str, Any]) -> None:
        one, two = r["1 worker"], r["2 worker"]
        print(f"{name:>5} {r['liblinear']['seconds']:11.2f} {one['seconds_to_target'] or float('nan'):10.2f} "
              f"{one['ratio'] or float('nan'):5.2f}x {two['seconds_to_target'] or float('nan'):11.2f} "
              f"{two['ratio'] or float('nan'):5.2f}x  {r['liblinear']['wall_seconds']:15.2f} "
              f"{one['wall_seconds']:8.2f} {two['wall_seconds']:9.2f}")

    for i, r in enumerate(rounds, 1):
        row(str(i), r)

    def med(side: str, key: str) -> float:
        vals = [r[side][key] for r in rounds]
        return float("nan") if None in vals else statistics.median(vals)

    median = {side: {k: med(side, k) for k in rounds[0][side]} for side in rounds[0]}
    if len(rounds) > 1:
        row("med", median)
    last = rounds[-1]
    print(f"objectives: liblinear {last['liblinear']['objective']:.4f}; DBPG at the target "
          + ", ".join(f"{w} {last[f'{w} worker']['objective_at_target'] or float('nan'):.4f} "
                      f"(pass {last[f'{w} worker']['pass_at_target']})" for w in (1, 2))
          + "; after the criterion stopped "
          + ", ".join(f"{w} {last[f'{w} worker']['objective']:.4f} ({last[f'{w} worker']['passes']} passes, "
                      f"gap {last[f'{w} worker']['relative_gap']:.1e})" for w in (1, 2)), flush=True)
    return median


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["filter"] for r in rows if r["filter"] != "none"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(x - 0.2, [r["worker_reduction"] for r in rows if r["filter"] != "none"], 0.4, label="worker")
    ax.bar(x + 0.2, [r["server_reduction"] for r in rows if r["filter"] != "none"], 0.4, label="servers")
    for i, n in enumerate(names):
        for off, val in ((-0.2, PAPER[n][0]), (0.2, PAPER[n][1])):
            if val:
                ax.plot([i + off - 0.18, i + off + 0.18], [val, val], "k--", lw=1)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("bytes sent: reduction vs no filter")
    ax.set_title("Traffic of L1 logistic regression on 20 Newsgroups (dashes: the paper's Figure 11)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["all", "timing"], default="all", help="timing: only part 1")
    p.add_argument("--repeat", type=int, default=1, help="rounds of part 1; the medians are printed too")
    opts = p.parse_args()
    rounds = [timing_round() for _ in range(opts.repeat)]
    median = print_timing(rounds)
    timing = {"rounds": rounds, "median": median}
    if opts.only == "timing":
        print(f"wrote {write('apps_timing', timing)}")
        return
    passes = "25"
    rows: list[dict[str, Any]] = []
    for name, filters in CONFIGS.items():
        out = run("logreg", "--workers", "2", "--servers", "2", "--passes", passes, "--filters", filters,
                  "--log-every", "0")
        t = out["traffic"]
        rows.append({"filter": name, "worker_sent": t["workers"]["bytes_sent"], "server_sent": t["servers"]["bytes_sent"],
                     "objective": out["objective"], "kkt": t["workers"]["filters"].get("kkt")})
    base = rows[0]
    print(f"{'filter':<12} {'worker MB':>10} {'reduction':>10} {'paper':>6} {'servers MB':>11} {'reduction':>10} "
          f"{'paper':>6}  objective")
    for r in rows:
        r["worker_reduction"] = base["worker_sent"] / r["worker_sent"]
        r["server_reduction"] = base["server_sent"] / r["server_sent"]
        pw, psv = PAPER.get(r["filter"], (None, None))
        print(f"{r['filter']:<12} {r['worker_sent'] / 1e6:10.1f} {r['worker_reduction']:9.1f}x "
              f"{(f'{pw:.0f}x' if pw else '-'):>6} {r['server_sent'] / 1e6:11.2f} {r['server_reduction']:9.1f}x "
              f"{(f'{psv:.0f}x' if psv else '-'):>6}  {r['objective']:.4f}")
    kkt = next(r for r in rows if r["filter"] == "KKT")["kkt"]
    removed = 1 - kkt["sent_after"] / kkt["sent_before"]
    print(f"KKT filter: {100 * removed:.1f}% of the gradient entries (bytes) not sent in filtered passes (paper: >93%)")
    sketch = run("sketch", "--workers", "2", "--servers", "2")
    print(f"CountMin: {sketch['inserts_per_second']:,.0f} tokens/s, {sketch['inserts_per_second_per_server']:,.0f} per "
          f"server process (paper: about 1.15 M per core); all estimates >= truth: {sketch['never_below_true']}")
    RESULTS.mkdir(exist_ok=True)
    plot(rows, RESULTS / "traffic.png")
    print(f"wrote {write('apps', {'timing': timing, 'traffic': rows, 'kkt_removed': removed, 'sketch': sketch})} "
          f"and {RESULTS / 'traffic.png'}")


if __name__ == "__main__":
    main()
