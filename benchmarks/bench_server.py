"""The server's update rate into a table already holding 10 M keys (keys/s per server process).

Two measurements, with batches of 100,000 existing keys (sorted, as workers send them) of a
float32 width-1 table with the ``sum`` updater:

* ``store``: the server's update path alone in this process (Store.push: index lookup and
  the updater), which is what one server process can sustain;
* ``cluster``: end to end, one worker pushing to one server process of a LocalCluster with
  4 requests in flight, counted at the worker (network, decoding and checks included).

Writes benchmarks/results/server.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import batch_rate, distinct_keys, write
from paramserver.table import Store, TableSpec

N_KEYS = 10_000_000
BATCH = 100_000


def store_rate(keys: np.ndarray, rng: np.random.Generator) -> float:
    store = Store(TableSpec.create("t", dtype="float32"))
    for chunk in np.array_split(keys, 100):
        store.push(np.sort(chunk), np.ones((len(chunk), 1), np.float32))
    batches = [np.sort(rng.choice(keys, BATCH, replace=False)) for _ in range(30)]
    ones = np.ones((BATCH, 1), np.float32)
    return batch_rate(lambda b: store.push(b, ones), batches)


def cluster_rate(keys: np.ndarray, rng: np.random.Generator) -> float:
    with ps.LocalCluster(servers=1) as cluster, ps.connect(cluster.address) as w:
        t = w.table("t", dtype="float32")
        reqs = [t.push(np.sort(chunk), np.ones(len(chunk), np.float32)) for chunk in np.array_split(keys, 100)]
        for r in reqs:
            r.wait()
        batches = [np.sort(rng.choice(keys, BATCH, replace=False)) for _ in range(30)]
        ones = np.ones(BATCH, np.float32)
        t.push(batches[0], ones).wait()
        start = time.perf_counter()
        window: list[Any] = []
        for b in batches:
            window.append(t.push(b, ones))
            if len(window) >= 4:
                window.pop(0).wait()
        for r in window:
            r.wait()
        return len(batches) * BATCH / (time.perf_counter() - start)


def main() -> None:
    rng = np.random.default_rng(0)
    keys = distinct_keys(rng, N_KEYS)
    s = store_rate(keys, rng)
    c = cluster_rate(keys, rng)
    print(f"server update into a 10 M-key table, batches of {BATCH}:")
    print(f"  store (update path of one server process): {s / 1e6:6.1f} M keys/s  (target >= 10)")
    print(f"  cluster (1 worker -> 1 server, end to end): {c / 1e6:6.1f} M keys/s")
    print(f"wrote {write('server', {'store_keys_per_s': s, 'cluster_keys_per_s': c, 'batch': BATCH})}")


if __name__ == "__main__":
    main()
