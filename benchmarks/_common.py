"""Helpers shared by the benchmarks: timing loops, the raw pyzmq baseline, jobs and worker processes, result files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], Any], *, min_time: float = 1.0, min_reps: int = 3, max_reps: int = 100_000) -> float:
    """Seconds per call of ``fn``: repeat until ``min_time`` passed (after one warm-up call)."""
    fn()
    reps = 0
    start = time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
        if (elapsed >= min_time and reps >= min_reps) or reps >= max_reps:
            return elapsed / reps


def batch_rate(fn: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> float:
    """Keys per second of ``fn`` over ``batches`` (after one warm-up call on the first batch)."""
    fn(batches[0])
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def distinct_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random uint64 keys over the whole key space, in random order."""
    keys = np.unique(rng.integers(0, 2**64 - 1, int(n * 1.01), dtype=np.uint64, endpoint=True))[:n]
    rng.shuffle(keys)
    return keys


def run_app(app: str, *args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """``paramserver run APP ARGS --json`` (``env`` added to this environment): the job's JSON result."""
    cmd = [sys.executable, "-m", "paramserver", "run", app, *args, "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env} if env else None,
                         timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def run_workers(target: Callable[..., None], args: tuple[Any, ...], *, servers: int, workers: int) -> list[Any]:
    """On a LocalCluster, ``workers`` spawned processes each run ``target(address, *args, queue)``
    and put one result on the queue: the results, in the order they arrived."""
    import paramserver as ps

    ctx = mp.get_context("spawn")
    with ps.LocalCluster(servers=servers, workers=workers) as cluster:
        q = ctx.Queue()
        procs = [ctx.Process(target=target, args=(cluster.address, *args, q)) for _ in range(workers)]
        for p in procs:
            p.start()
        results = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
    return results


def _echo_server(port_q: mp.Queue) -> None:  # type: ignore[type-arg]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_q.put(port)
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"quit":
            break
        sock.send_multipart([frames[0], b"k"])
    sock.close(0)
    ctx.term()


class RawZmq:
    """The baseline: raw pyzmq DEALER/ROUTER between two processes, S bytes out, 1 byte back."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        self.proc = ctx.Process(target=_echo_server, args=(q,), daemon=True)
        self.proc.start()
        port = q.get(timeout=30)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def roundtrip(self, payload: Any) -> None:
        self.sock.send(payload, copy=False)
        self.sock.recv()

    def pipelined(self, payload: Any, depth: int) -> None:
        for _ in range(depth):
            self.sock.send(payload, copy=False)
        for _ in range(depth):
            self.sock.recv()

    def close(self) -> None:
        self.sock.send(b"quit")
        self.proc.join(10)
        self.sock.close(0)
        self.ctx.term()


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **data}, indent=2))
    return path


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:g} {unit}"
        n //= 1024
    return f"{n} TiB"
