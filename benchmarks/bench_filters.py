"""Filters on a stream of sparse gradient pushes shaped like 20 Newsgroups logistic regression.

The stream: 40 fixed minibatches (so key lists repeat, as over epochs), each the distinct
features of 64 documents drawn from a Zipf law over 926,435 features (about 3,000 keys),
with float32 gradients of which 60% are exactly zero (what the KKT step leaves). For each
filter, against no filter in the same run:

* bytes on the wire per push (all frames, headers included) and the reduction factor;
* encode + decode time per MB of original payload (in this process);
* end-to-end push throughput through a LocalCluster of 1 server (pushes/s, 4 in flight).

Writes benchmarks/results/filters.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import write
from paramserver.filters import (
    Compress,
    FixedPoint,
    KeyCache,
    RandomSkip,
    SignificantlyModified,
    ZeroSuppress,
)
from paramserver.protocol import Message, Op, decode, encode, value_indices

N_FEATURES = 926_435


def stream(n_batches: int = 40, docs: int = 64, words: int = 150) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n_batches):
        ids = np.unique(np.minimum(rng.zipf(1.3, size=docs * words), N_FEATURES) - 1)
        keys = np.sort(ps.spread(ids))
        grad = rng.normal(scale=0.05, size=(len(keys), 1)).astype(np.float32)
        grad[rng.random(len(keys)) < 0.6] = 0
        batches.append((keys, grad))
    return batches


CONFIGS: dict[str, Callable[[], list[Any]]] = {
    "none": lambda: [],
    "key caching": lambda: [KeyCache()],
    "zero suppression": lambda: [ZeroSuppress()],
    "fixed-point 8": lambda: [FixedPoint(8, seed=0)],
    "fixed-point 16": lambda: [FixedPoint(16, seed=0)],
    "snappy": lambda: [Compress("snappy")],
    "lz4": lambda: [Compress("lz4")],
    "zstd": lambda: [Compress("zstd")],
    "keys+zeros+lz4": lambda: [KeyCache(), ZeroSuppress(), Compress("lz4")],
    "keys+zeros+fixed8+lz4": lambda: [KeyCache(), ZeroSuppress(), FixedPoint(8, seed=0), Compress("lz4")],
    "significantly-modified": lambda: [SignificantlyModified(threshold=0.05)],
    "random skip q=0.25": lambda: [RandomSkip(0.25, seed=0)],
}


def wire_and_cost(batches: list[tuple[np.ndarray, np.ndarray]], make: Callable[[], list[Any]],
                  rounds: int = 5) -> tuple[float, float]:
    """Mean bytes per push on the wire, and encode+decode seconds per MB of original payload."""
    filters = make()
    push = [f for f in filters if isinstance(f, ps.table.PushFilter)]
    codecs = sorted((f for f in filters if not isinstance(f, ps.table.PushFilter)), key=lambda c: c.rank)
    decoders = {c.wire_name: ps.protocol.codec(c.wire_name) for c in codecs}
    total_bytes = 0
    original = 0
    start = time.perf_counter()
    n = 0
    for _ in range(rounds):
        for keys, grad in batches:
            original += keys.nbytes + grad.nbytes
            k, v = keys, grad
            for f in push:
                k, v = f.apply(k, v)
            msg = Message(Op.PUSH, table=0, arrays=[k, v])
            msg.values_at = value_indices(msg)
            for c in codecs:
                msg = c.encode(1, msg)
            frames = encode(msg)
            total_bytes += sum(memoryview(f).nbytes for f in frames)
            out = decode([memoryview(f).tobytes() for f in frames])
            for name in reversed(out.filters):
                out = decoders[name].decode(1, out)
            n += 1
    elapsed = time.perf_counter() - start
    return total_bytes / n, elapsed / (original / 1e6)


def throughput(address: str, batches: list[tuple[np.ndarray, np.ndarray]], make: Callable[[], list[Any]],
               seconds: float, name: str) -> float:
    with ps.connect(address) as w:
        t = w.table(f"t_{name}", dtype="float32", filters=make())
        for keys, grad in batches[:4]:
            t.push(keys, grad).wait()
        n, window, start = 0, [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            keys, grad = batches[n % len(batches)]
            window.append(t.push(keys, grad))
            if len(window) >= 4:
                window.pop(0).wait()
            n += 1
        for r in window:
            r.wait()
        return n / (time.perf_counter() - start)


def main() -> None:
    quick = "--quick" in sys.argv
    batches = stream()
    mean_keys = np.mean([len(k) for k, _ in batches])
    rows = []
    print(f"stream: {len(batches)} minibatches, {mean_keys:.0f} keys each on average")
    print(f"{'filter':<24} {'bytes/push':>11} {'reduction':>10} {'ms/MB enc+dec':>14} {'pushes/s':>9} {'vs none':>8}")
    with ps.LocalCluster(servers=1) as cluster:
        base_bytes = base_rate = 0.0
        for name, make in CONFIGS.items():
            per_push, cost = wire_and_cost(batches, make)
            rate = throughput(cluster.address, batches, make, 1.0 if quick else 3.0, name.replace(" ", "_"))
            if name == "none":
                base_bytes, base_rate = per_push, rate
            rows.append({"filter": name, "bytes_per_push": per_push, "reduction": base_bytes / per_push,
                         "seconds_per_MB": cost, "pushes_per_s": rate, "throughput_vs_none": rate / base_rate})
            print(f"{name:<24} {per_push:11.0f} {base_bytes / per_push:9.1f}x {1000 * cost:14.2f} {rate:9.0f} "
                  f"{rate / base_rate:7.2f}x", flush=True)
    print(f"wrote {write('filters', {'rows': rows, 'mean_keys_per_push': float(mean_keys)})}")


if __name__ == "__main__":
    main()
