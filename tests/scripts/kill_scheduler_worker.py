"""A worker of ``paramserver launch`` whose rank 0 SIGKILLs the launcher's scheduler mid-job
(tests/test_scheduler_restart.py): launch restarts it, and the job ends normally.

Every worker pushes rounds [0, 20) of the known workload and passes a barrier; rank 0 then
kills the scheduler (its sibling process) and waits until it is gone; every worker pushes
rounds [20, 40) (the scheduler is dead or being restarted: the data path needs none),
passes a barrier (which needs the restarted scheduler), checks the exact sums and closes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import paramserver as ps
import workloads


def main() -> int:
    rank = int(os.environ["PS_WORKER_RANK"])
    n = int(os.environ["DMLC_NUM_WORKER"])
    with ps.connect() as w:
        sums = w.table("sums", width=workloads.WIDTH, dtype="float32")
        counts = w.table("counts", width=1, dtype="int64")

        workloads.push_rounds(sums, counts, rank, 0, 20)
        w.barrier()
        if rank == 0:
            sched = [p for p in psutil.Process(os.getppid()).children() if "scheduler" in p.cmdline()]
            assert len(sched) == 1, sched
            sched[0].kill()
            sched[0].wait(30)
        workloads.push_rounds(sums, counts, rank, 20, 40)
        w.barrier()
        keys, want, c = workloads.expected(n, 40)
        np.testing.assert_array_equal(sums.pull(keys), want.astype(np.float32))
        np.testing.assert_array_equal(counts.pull(keys).ravel(), c)
        w.barrier()
    print(f"rank {rank}: exact", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
