"""Only members talk to the cluster: sender binding, the authorisation table, keys, limits.

Real processes on 127.0.0.1. An outsider is a raw pyzmq DEALER that reaches the ports but
never registered (or holds no cluster key); what it sends must never be applied while a
job runs, and the job's sums must stay exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil
import pytest
import zmq

import paramserver as ps
from paramserver.protocol import Drain, Message, Nodes, Op, PolicyRequest, Shutdown, encode
from paramserver.transport import ZmqTransport

pytestmark = pytest.mark.cluster


def _members(cluster: ps.LocalCluster) -> dict[int, tuple[str, str]]:
    """node id -> (role, address) from the scheduler's status."""
    return {n[0]: (n[1], n[2]) for n in cluster.status()["nodes"]}


class Outsider:
    """A raw DEALER per target address, with a routing identity of its own."""

    def __init__(self, addresses: list[str], curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket[Any]] = {}
        for a in addresses:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            if curve is not None:
                server_key, public, secret = curve
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_key, public, secret
            s.connect(a)
            self.socks[a] = s

    def send(self, address: str, msg: Message) -> None:
        self.socks[address].send_multipart([bytes(memoryview(f)) for f in encode(msg)])

    def answers(self, timeout_ms: int) -> int:
        """How many messages came back to any socket within ``timeout_ms``."""
        poller = zmq.Poller()
        for s in self.socks.values():
            poller.register(s, zmq.POLLIN)
        got = 0
        while poller.poll(timeout_ms):
            for s in self.socks.values():
                while s.poll(0):
                    s.recv_multipart()
                    got += 1
        return got

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)
        self.ctx.term()


def _forged(members: dict[int, tuple[str, str]], worker_id: int, table: int) -> list[tuple[str, Message]]:
    """Control and data messages an outsider might forge, each to the port it would hit."""
    servers = sorted(n for n, (r, _) in members.items() if r == "server")
    sched = members[0][1]
    stop = Shutdown(reason="forged", code=0).to_wire()
    keys = np.array([1, 2**63 + 1], dtype=np.uint64)
    out: list[tuple[str, Message]] = []
    for i, s in enumerate(servers):
        addr = members[s][1]
        other = servers[(i + 1) % len(servers)]
        out += [
            (addr, Message(Op.SHUTDOWN, sender=0, ts=1, body=stop)),
            (addr, Message(Op.NODES, sender=0, ts=2, body=Nodes(nodes=[], keymap=None, dead=servers).to_wire())),
            (addr, Message(Op.REPLICATE, sender=other, ts=3, table=table, arrays=[keys, np.ones(2, np.int64)])),
            (addr, Message(Op.MIGRATE, sender=0, ts=4, body={})),
            (addr, Message(Op.PUSH, sender=worker_id, ts=5, table=table, arrays=[keys, np.full(2, 1000, np.int64)])),
            (addr, Message(Op.SHUTDOWN, sender=-1, ts=6, body=stop)),
        ]
    out += [
        (sched, Message(Op.SHUTDOWN, sender=worker_id, ts=7, body=stop)),
        (sched, Message(Op.DRAIN, sender=worker_id, ts=8, body=Drain(node=servers[0]).to_wire())),
        (sched, Message(Op.SHUTDOWN, sender=servers[0], ts=9, body=stop)),
        (sched, Message(Op.POLICY, sender=worker_id, ts=10, body=PolicyRequest(name="s", policy=["eventual", 0]).to_wire())),
    ]
    return out


def test_forged_control_messages_from_an_unregistered_peer_are_refused_while_a_job_runs(
        cluster2: ps.LocalCluster) -> None:
    rounds = 40
    with ps.connect(cluster2.address) as w:
        t = w.table("s", dtype="int64")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)
        members = _members(cluster2)
        forged = _forged(members, w.id, t.id)
        outsider = Outsider(sorted({a for a, _ in forged}))
        try:
            for _ in range(rounds):
                for addr, msg in forged:
                    outsider.send(addr, msg)
                t.push(keys, np.ones(2, dtype=np.int64)).wait()
            np.testing.assert_array_equal(t.pull(keys).ravel(), [rounds, rounds])
            assert outsider.answers(200) == 0  # refused messages are never answered
        finally:
            outsider.close()
        servers = {n for n, (r, _) in members.items() if r == "server"}
        status = _refusals_settled(cluster2, servers, rounds * 6)  # 6 forged messages per server and round
        assert status["failovers"] == 0 and not status["migrating"]
        assert {int(k) for k in status["servers"]} == servers
        for sid in servers:
            assert status["servers"][str(sid)]["counters"]["messages_refused"] == rounds * 6
        assert all(psutil.pid_exists(p) for p in cluster2.server_pids)
        np.testing.assert_array_equal(t.pull(keys).ravel(), [rounds, rounds])  # still serving, still exact


def _refusals_settled(cluster: ps.LocalCluster, servers: set[int], expect: int) -> dict[str, Any]:
    """The status once every server counted ``expect`` refusals (the outsider's last messages
    may still be on their way when the job's own requests are answered)."""
    deadline = time.monotonic() + 60
    while True:
        status = cluster.status()
        counts = [status["servers"].get(str(s), {}).get("counters", {}).get("messages_refused", 0) for s in servers]
        if all(c >= expect for c in counts) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_without_keys_a_node_refuses_to_listen_beyond_loopback() -> None:
    tr = ZmqTransport()
    try:
        with pytest.raises(ps.ConfigError, match=r"paramserver keygen.*PS_KEYS"):
            tr.bind("0.0.0.0")
    finally:
        tr.close(0)
    tr = ZmqTransport(insecure=True)
    try:
        assert tr.bind("0.0.0.0").startswith("tcp://0.0.0.0:")
    finally:
        tr.close(0)


def test_the_scheduler_command_refuses_a_public_address_without_keys() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PS_KEYS", "PS_INSECURE")}
    proc = subprocess.run([sys.executable, "-m", "paramserver", "scheduler", "--host", "0.0.0.0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "paramserver keygen" in proc.stderr and "PS_KEYS" in proc.stderr and "PS_INSECURE=1" in proc.stderr
