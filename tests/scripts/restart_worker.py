"""A worker that lives through the death of its scheduler (tests/test_scheduler_restart.py).

``python restart_worker.py ADDRESS RANK WORKERS DIR MODE``; MODE is ``restart`` (the test
restarts the scheduler) or ``never`` (it does not). Files in DIR order the steps with the
test, so nothing depends on timing:

1. push rounds [0, A) of the known workload, pass a barrier, take 2 data shards of set
   "s" and hold a third, write ``a-RANK``; wait for ``go`` (the test has SIGKILLed the
   scheduler meanwhile);
2. push rounds [A, B) and check the pushed sums by pulling them back: the data path needs no
   scheduler; write ``b-RANK``;
3. ``restart``: a barrier (it waits for the restarted scheduler), finish the shard set (every
   shard once, across the workers), declare a new table, another barrier, check the final
   state exactly and close. ``never``: a barrier with a short timeout must fail with
   ``SchedulerUnavailable`` naming the scheduler; write ``c-RANK`` with the message.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import paramserver as ps
import workloads

A, B, SHARDS = 20, 40, 12


def wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.02)


def check(sums: ps.Table, counts: ps.Table, workers: int, rounds: int) -> None:
    keys, want, n = workloads.expected(workers, rounds)
    np.testing.assert_array_equal(sums.pull(keys), want.astype(np.float32))
    np.testing.assert_array_equal(counts.pull(keys).ravel(), n)


def process(shard: ps.Shard, done: ps.Table) -> None:
    done.push(np.array([shard.index], dtype=np.uint64), np.ones((1, 1), dtype=np.int64)).wait()


def main(address: str, rank: int, workers: int, where: str, mode: str) -> int:
    d = Path(where)
    w = ps.connect(address)
    sums = w.table("sums", width=workloads.WIDTH, dtype="float32")
    counts = w.table("counts", width=1, dtype="int64")
    done = w.table("shards_done", width=1, dtype="int64")
    workloads.push_rounds(sums, counts, rank, 0, A)
    w.barrier()
    shards = iter(w.shards("s", list(range(SHARDS))))
    for _ in range(2):
        process(next(shards), done)
    held = next(shards)  # running on this worker when the scheduler dies
    (d / f"a-{rank}").touch()
    wait_for(d / "go")

    workloads.push_rounds(sums, counts, rank, A, B)  # the scheduler is dead: pushes and pulls go on
    keys, _, _ = workloads.round_data(rank, B - 1)
    assert sums.pull(keys).shape == (len(keys), workloads.WIDTH)
    (d / f"b-{rank}").touch()

    if mode == "never":
        try:
            w.barrier(timeout=3)
        except ps.SchedulerUnavailable as exc:
            (d / f"c-{rank}").write_text(str(exc))
        else:
            (d / f"c-{rank}").write_text("the barrier passed without a scheduler")
        w.close(timeout=1)
        return 0

    w.barrier()  # waits for the restarted scheduler
    process(held, done)
    for shard in shards:
        process(shard, done)
    late = w.table("declared_after_restart", width=1, dtype="int64")
    late.push(np.array([rank], dtype=np.uint64), np.ones((1, 1), dtype=np.int64)).wait()
    w.barrier()
    check(sums, counts, workers, B)
    np.testing.assert_array_equal(done.pull(np.arange(SHARDS, dtype=np.uint64)).ravel(), np.ones(SHARDS))
    np.testing.assert_array_equal(late.pull(np.arange(workers, dtype=np.uint64)).ravel(), np.ones(workers))
    w.barrier()  # nobody closes before everyone checked
    w.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PS_LOG_LEVEL", "WARNING")
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
