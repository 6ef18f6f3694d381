"""A job for the launcher tests: every worker pushes its rank+1 to the same keys; rank 0 checks.

Reads only the environment the launcher sets (no address given). Exit codes: 0 when the
sums are exact; FAIL_RANK (env) makes that rank exit with code 3 after the first barrier.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import paramserver as ps

w = ps.connect()
t = w.table("acc", dtype="int64")
keys = np.array([1, 2**62, 2**63 + 5, 2**64 - 1], dtype=np.uint64)
t.push(keys, np.full(4, w.rank + 1, dtype=np.int64)).wait()
w.barrier()
if os.environ.get("FAIL_RANK") == str(w.rank):
    sys.exit(3)
if os.environ.get("HANG_RANK") == str(w.rank):
    import time

    time.sleep(600)
w.barrier()
n = w.num_workers
if w.rank == 0:
    got = t.pull(keys).ravel().tolist()
    want = [n * (n + 1) // 2] * 4
    print(f"rank 0: sums {got}, expected {want}", flush=True)
    if got != want:
        sys.exit(1)
w.close()
