"""Run every benchmark (``make bench``); each prints its table and writes benchmarks/results/*.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = ["bench_codec.py", "bench_pushpull.py", "bench_server.py", "bench_index.py", "bench_bounded_delay.py",
           "bench_filters.py", "bench_logreg.py", "bench_lda.py", "bench_replication.py", "bench_groups.py",
           "bench_curve.py", "bench_torch.py", "bench_failover.py"]


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        quick = ("bench_codec.py", "bench_pushpull.py", "bench_filters.py", "bench_replication.py", "bench_groups.py",
                 "bench_curve.py", "bench_torch.py")
        args = extra if name in quick else []
        if subprocess.call([sys.executable, str(HERE / name), *args]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
