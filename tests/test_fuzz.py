"""Hostile input while a job runs: at least 100,000 hostile messages to each role's port.

An outsider (raw pyzmq DEALERs that never registered) sends random bytes, random msgpack,
valid headers with wrong bodies and ops, headers declaring huge shapes, bit-flipped and
truncated messages, wrong frame counts, batch envelopes, and frames over
PS_MAX_MESSAGE_BYTES to the scheduler, both servers and a worker, while worker processes
train. Every node must survive, serve on and end with exact sums; every hostile message
that fits the limit must be accounted for (malformed or refused, none applied); memory
must stay bounded. Frames are generated with numpy (fast), not with hypothesis shrinking.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
import numpy as np
import psutil
import pytest
import zmq

import paramserver as ps
import workloads
from paramserver.node import _batch as batch  # the envelope, to know how many parts a hostile batch has
from paramserver.protocol import Message, Op, Status, encode
from paramserver.protocol._codec import FIXED

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PER_PORT = 100_000
MAX_MESSAGE = 8 << 20


def _random_obj(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = int(rng.integers(0, 9 if depth < 3 else 6))
    if kind == 0:
        return int(rng.integers(-(2**63), 2**63 - 1))
    if kind == 1:
        return float(rng.normal())
    if kind == 2:
        return rng.bytes(int(rng.integers(0, 40))).decode("latin-1")
    if kind == 3:
        return rng.bytes(int(rng.integers(0, 40)))
    if kind == 4:
        return None
    if kind == 5:
        return bool(rng.integers(0, 2))
    if kind == 6:
        return [_random_obj(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    keys = ["role", "address", "nodes", "keymap", "dead", "reason", "code", "spec", "id", "name", "policy",
            "phase", "ranges", "path", "origins", "x"]
    return {str(rng.choice(keys)): _random_obj(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))}


class Hostile:
    """Generates hostile messages (lists of frames) and says how many node-level messages each is."""

    def __init__(self, seed: int, senders: list[int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.senders = [-1, 0, *senders, 2**31 - 1]
        self.ops = [int(o) for o in Op] + [0, 31, 36, 255]
        self.valid = [self._valid() for _ in range(64)]

    def _valid(self) -> list[bytes]:
        rng = self.rng
        arrays = [np.arange(int(rng.integers(0, 9)), dtype=np.uint64), rng.normal(size=(3, 2))][: int(rng.integers(0, 3))]
        msg = Message(Op(int(rng.choice([int(o) for o in Op]))), sender=int(rng.choice(self.senders)),
                      ts=int(rng.integers(0, 1000)), response=bool(rng.integers(0, 2)), table=int(rng.integers(-1, 4)),
                      epoch=int(rng.integers(0, 5)), status=Status(int(rng.integers(0, 4))),
                      body=_random_obj(rng, 2) if rng.random() < 0.5 else {}, arrays=arrays)
        if not isinstance(msg.body, dict):
            msg.body = {"x": msg.body}
        return [bytes(memoryview(f)) for f in encode(msg)]

    def message(self) -> list[bytes]:
        rng = self.rng
        kind = int(rng.integers(0, 9))
        if kind == 0:  # random bytes
            return [rng.bytes(int(rng.integers(0, 300)))]
        if kind == 1:  # random msgpack
            return [msgspec.msgpack.encode(_random_obj(rng))]
        if kind == 2:  # a valid header with a wrong body (op, sender, flags of our choosing)
            return self._valid()
        if kind == 3:  # huge declared shapes
            frames = self._valid()
            head = bytearray(frames[0])
            n = head[FIXED.size - 5]  # the array count, before the tail length
            if n:
                i = int(rng.integers(0, n))
                at = FIXED.size + 19 * i + 3
                head[at:at + 8] = int(rng.choice([2**31, 2**40, 2**62, 2**63 - 1])).to_bytes(8, "little")
            return [bytes(head), *frames[1:]]
        if kind == 4:  # bit flips
            frames = [bytearray(f) for f in self.valid[int(rng.integers(0, len(self.valid)))]]
            f = frames[0]
            for _ in range(int(rng.integers(1, 5))):
                if f:
                    f[int(rng.integers(0, len(f)))] ^= 1 << int(rng.integers(0, 8))
            return [bytes(x) for x in frames]
        if kind == 5:  # truncated
            frames = self.valid[int(rng.integers(0, len(self.valid)))]
            return [frames[0][: int(rng.integers(0, len(frames[0]) + 1))], *frames[1:]]
        if kind == 6:  # wrong frame counts
            frames = list(self.valid[int(rng.integers(0, len(self.valid)))])
            return frames + [rng.bytes(int(rng.integers(0, 64)))] * int(rng.integers(1, 4))
        if kind == 7:  # batch envelopes, well-formed or not, of hostile parts
            parts = [self.message() for _ in range(int(rng.integers(1, 4)))]
            frames = batch.pack(parts)
            if rng.random() < 0.5:
                head = bytearray(frames[0])
                head[int(rng.integers(3, len(head)))] ^= 0xFF
                frames[0] = bytes(head)
            return frames
        return [b""]  # an empty frame

    @staticmethod
    def parts(frames: list[bytes]) -> int:
        """How many messages the node handles (and counts) for this transport message."""
        if batch.is_batch(frames):
            try:
                return len(batch.unpack(frames))
            except ps.ProtocolError:
                return 1
        return 1


def _blast(address: str, gen: Hostile, n: int, oversized: int) -> int:
    """Send ``n`` hostile messages to ``address`` (plus ``oversized`` frames over the limit on a
    connection of their own); return how many node-level messages they make."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    big = ctx.socket(zmq.DEALER)
    for s in (sock, big):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(address)
    expect = 0
    try:
        for _ in range(n):
            frames = gen.message()
            expect += gen.parts(frames)
            sock.send_multipart(frames)
        blob = b"\x02" * (MAX_MESSAGE + 1)
        for _ in range(oversized):
            big.send(blob)
    finally:
        sock.close(linger=180_000)  # what is queued still leaves (the receiver's backpressure paces it)
        big.close(linger=0)
    return expect


def _accounted(counters: dict[str, int]) -> int:
    return counters.get("messages_malformed", 0) + counters.get("messages_refused", 0)


def _wait_accounted(read: Any, expect: int) -> int:
    deadline = time.monotonic() + 180
    got = read()
    while got < expect and time.monotonic() < deadline:
        time.sleep(0.2)
        got = read()
    return got


def _rss(pids: list[int]) -> dict[int, int]:
    return {p: psutil.Process(p).memory_info().rss for p in pids}


def test_a_hundred_thousand_hostile_messages_per_port_while_a_job_runs(fast_env: dict[str, str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**fast_env, "PS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}
    monkeypatch.setenv("PS_MAX_MESSAGE_BYTES", str(MAX_MESSAGE))  # this process's worker has the same limit
    with ps.LocalCluster(servers=2, env=env) as cluster, ps.connect(cluster.address) as w:
        nodes = cluster.status()["nodes"]
        servers = {n[0]: n[2] for n in nodes if n[1] == "server"}
        node_pids = [cluster.scheduler_pid, *cluster.server_pids]
        t = w.table("own", dtype="int64")
        keys = np.array([7, 2**63 + 7], dtype=np.uint64)
        t.push(keys, np.zeros(2, dtype=np.int64)).wait()
        before = _rss(node_pids)
        procs = workloads.start_workers(cluster.address, 2, 30, env=env)
        rounds = [0]
        stop = threading.Event()

        def train() -> None:  # this worker's own job, while its port is attacked too
            while not stop.is_set():
                t.push(keys, np.ones(2, dtype=np.int64)).wait()
                rounds[0] += 1

        trainer = threading.Thread(target=train, name="paramserver-test-trainer", daemon=True)
        trainer.start()
        targets: dict[str, tuple[str, int]] = {"scheduler": (cluster.address, 0), "worker": (w._node.address, 0)}
        for sid, addr in servers.items():
            targets[f"server {sid}"] = (addr, sid)
        expected: dict[str, int] = {}
        sent = {}
        started = time.monotonic()
        try:
            for i, (name, (addr, _)) in enumerate(sorted(targets.items())):
                gen = Hostile(1000 + i, [*servers, w.id])
                expected[name] = _blast(addr, gen, PER_PORT, oversized=10)
                sent[name] = PER_PORT
        finally:
            blasted = time.monotonic() - started
            stop.set()
            trainer.join(60)
        assert [p.wait(timeout=300) for p in procs] == [0, 0]  # the worker processes finished their job
        # every hostile message that fit the limit was seen and refused or dropped as malformed
        for sid in servers:
            name = f"server {sid}"
            got = _wait_accounted(lambda sid=sid: _accounted(cluster.status()["servers"][str(sid)]["counters"]),
                                  expected[name])
            assert got == expected[name], (name, got, expected[name])
        got = _wait_accounted(lambda: _accounted(dict(w._node.counters)), expected["worker"])
        assert got == expected["worker"]
        # exact sums: the worker processes' job and this worker's own pushes
        workloads.check_final_state(cluster.address, 2, 30)
        np.testing.assert_array_equal(t.pull(keys).ravel(), [rounds[0], rounds[0]])
        status = cluster.status()
        assert len(status["servers"]) == 2 and status["failovers"] == 0 and not status["migrating"]
        after = _rss(node_pids)
        growth = {p: (after[p] - before[p]) >> 20 for p in node_pids}
        print(f"\nfuzz: {sent} messages sent in {blasted:.1f} s (+10 oversized frames each); node-level "
              f"messages {expected}; this worker's rounds during the attack: {rounds[0]}; "
              f"RSS growth MiB by pid: {growth}")
        assert all(psutil.pid_exists(p) for p in node_pids)
        assert max(growth.values()) < 128, growth  # bounded: nothing hostile is kept
