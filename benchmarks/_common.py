"""Helpers shared by the benchmarks: timing loops, the raw pyzmq baseline, result files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
