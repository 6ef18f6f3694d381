"""The in-memory transport under the real scheduler, servers and workers, all in one process."""

from __future__ import annotations

import numpy as np
import pytest

import paramserver as ps
from paramserver.testing import InProcessCluster


def test_push_pull_and_barrier_over_memory() -> None:
    with InProcessCluster(servers=3) as cluster:
        assert cluster.address.startswith("mem://")
        with cluster.connect() as a, cluster.connect() as b:
            ta, tb = a.table("w", width=2, dtype="int64"), b.table("w", width=2, dtype="int64")
            keys = ps.spread(np.arange(1000))
            ta.push(keys, np.ones((1000, 2), dtype=np.int64)).wait()
            tb.push(keys[::-1].copy(), np.full((1000, 2), 2, dtype=np.int64)).wait()
            np.testing.assert_array_equal(ta.pull(keys), np.full((1000, 2), 3))
            rk, _ = tb.pull_range(0, 2**64)
            np.testing.assert_array_equal(rk, np.sort(keys))
            per_server = [len(s.stores[ta.id]) for s in cluster.servers]
            assert sum(per_server) == 1000 and min(per_server) > 250


def test_handler_errors_and_shutdown_over_memory() -> None:
    with InProcessCluster(servers=1) as cluster:
        w = cluster.connect()
        t = w.table("f", dtype="float64", updater="sgd", updater_args={"lr": 1.0})
        t.push([1], np.array([2.0])).wait()
        np.testing.assert_array_equal(t.pull([1]).ravel(), [-2.0])
    # the cluster is closed: the worker learns the job ended
    with pytest.raises((ps.JobAborted, ps.ClosedError)):
        t.push([1], np.array([1.0])).wait(5)
    w.close()
