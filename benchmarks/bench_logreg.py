"""The applications on 20 Newsgroups: time to liblinear's objective, traffic (Figure 11), sketch rate.

1. L1 logistic regression (lambda = 1) by DBPG with 1 and 2 workers (2 servers): the time
   until the objective is within 1e-3 of liblinear's, beside liblinear's own time measured
   in this run (scikit-learn, one core).
2. Traffic of the same job with no filter, key caching, compression (zero suppression +
   Snappy), the KKT filter, and all together: bytes sent by a worker and by the servers,
   as reduction factors beside the paper's Figure 11; writes traffic.png.
3. The CountMin sketch's insert rate (tokens per second per server process).

Writes benchmarks/results/apps.json.
"""

from __future__ import annotations

import sys
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
    passes = "25"
    lib_seconds, lib_objective = liblinear_seconds()
    print(f"liblinear: {lib_seconds:.2f} s, objective {lib_objective:.4f}")
    timing = []
    for workers in (1, 2):
        out = run("logreg", "--workers", str(workers), "--servers", "2", "--passes", passes)
        timing.append({"workers": workers, "seconds_to_target": out["seconds_to_target"], "objective": out["objective"],
                       "relative_gap": out["relative_gap"], "total_seconds": out["seconds"]})
        ratio = out["seconds_to_target"] / lib_seconds if out["seconds_to_target"] else float("nan")
        print(f"DBPG {workers} worker(s): within 1e-3 after {out['seconds_to_target']:.2f} s ({ratio:.2f}x liblinear); "
              f"objective {out['objective']:.4f} after {passes} passes (gap {out['relative_gap']:.1e})", flush=True)
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
    print(f"wrote {write('apps', {'liblinear_seconds': lib_seconds, 'timing': timing, 'traffic': rows, 'kkt_removed': removed, 'sketch': sketch})} "
          f"and {RESULTS / 'traffic.png'}")


if __name__ == "__main__":
    main()
