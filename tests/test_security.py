"""Only members talk to the cluster: sender binding, the authorisation table, keys, limits.

Real processes on 127.0.0.1. An outsider is a raw pyzmq DEALER that reaches the ports but
never registered (or holds no cluster key); what it sends must never be applied while a
job runs, and the job's sums must stay exact.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import zmq
import zmq.auth

import paramserver as ps
import workloads
from paramserver.deploy import AdminClient
from paramserver.protocol import CheckpointRequest, Drain, Message, Nodes, Op, PolicyRequest, Shutdown, encode
from paramserver.transport import ZmqTransport, write_keys

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
        try:  # a DEALER whose handshakes all fail (no key, a foreign key) has no peer: never block on it
            self.socks[address].send_multipart([bytes(memoryview(f)) for f in encode(msg)], zmq.NOBLOCK)
        except zmq.Again:
            pass

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
        # claims to be the scheduler itself, whose own entry has no connection to bind the claim to
        (sched, Message(Op.SHUTDOWN, sender=0, ts=11, body=stop)),
        (sched, Message(Op.DRAIN, sender=0, ts=12, body=Drain(node=servers[0]).to_wire())),
        (sched, Message(Op.HEARTBEAT, sender=0, ts=13, body={})),
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


# ---------------------------------------------------------------------------------- keys
@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("keys")
    out = subprocess.run([sys.executable, "-m", "paramserver", "keygen", str(d)], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "worker.key_secret" in out.stdout
    return str(d)


@pytest.fixture
def keyed(keydir: str, fast_env: dict[str, str]) -> Iterator[ps.LocalCluster]:
    with ps.LocalCluster(servers=2, env=fast_env, keys=keydir) as cluster:
        yield cluster


def test_keygen_writes_a_pair_per_role_with_private_secrets(keydir: str) -> None:
    for role in ("scheduler", "server", "worker", "admin"):
        public, secret = zmq.auth.load_certificate(os.path.join(keydir, f"{role}.key_secret"))
        assert secret is not None and zmq.auth.load_certificate(os.path.join(keydir, f"{role}.key"))[0] == public
        assert stat.S_IMODE(os.stat(os.path.join(keydir, f"{role}.key_secret")).st_mode) == 0o600
    again = subprocess.run([sys.executable, "-m", "paramserver", "keygen", keydir], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 1 and "--force" in again.stderr  # keys are never replaced by accident


def test_a_cluster_with_keys_runs_worker_processes_that_hold_only_the_worker_secret(
        keyed: ps.LocalCluster, keydir: str, tmp_path: Path) -> None:
    worker_host = tmp_path / "worker-keys"  # what a worker machine gets: public keys + worker.key_secret
    worker_host.mkdir(mode=0o700)
    for f in os.listdir(keydir):
        if f.endswith(".key") or f == "worker.key_secret":
            shutil.copy2(os.path.join(keydir, f), worker_host / f)
    procs = workloads.start_workers(keyed.address, 2, 20, env={"PS_KEYS": str(worker_host)})
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    keys, sums, counts = workloads.expected(2, 20)
    with ps.connect(keyed.address, keys=worker_host) as w:
        np.testing.assert_array_equal(w.table("sums", width=workloads.WIDTH, dtype="float32").pull(keys),
                                      sums.astype(np.float32))
        np.testing.assert_array_equal(w.table("counts", width=1, dtype="int64").pull(keys).ravel(), counts)
    for s in keyed.status()["servers"].values():
        assert s["counters"].get("messages_refused", 0) == 0  # the job's own traffic is never refused


def test_plaintext_and_foreign_key_clients_get_no_answer_from_any_port(keyed: ps.LocalCluster, keydir: str) -> None:
    with ps.connect(keyed.address, keys=keydir) as w:
        t = w.table("s", dtype="int64")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)
        t.push(keys, np.ones(2, dtype=np.int64)).wait()
        members = _members(keyed)
        ports = {role_addr[1]: role_addr[0] for role_addr in members.values()}
        ports[w._node.address] = "worker"  # the worker's own port too
        register = Message(Op.REGISTER, ts=1, body={"role": "client", "address": "tcp://127.0.0.1:1"})
        ping = Message(Op.PING, sender=0, ts=2)
        foreign_public, foreign_secret = zmq.curve_keypair()
        for address, role in ports.items():
            server_key = zmq.auth.load_certificate(os.path.join(keydir, f"{role}.key"))[0]
            for curve in (None, (server_key, foreign_public, foreign_secret)):
                outsider = Outsider([address], curve)
                try:
                    for _ in range(50):
                        outsider.send(address, register)
                        outsider.send(address, ping)
                    assert outsider.answers(500) == 0, (address, role, curve is not None)
                finally:
                    outsider.close()
        foreign = Path(keydir).parent / "foreign-keys"
        if not foreign.exists():
            write_keys(str(foreign))
        with pytest.raises(ps.ConnectError):  # an operator tool with the wrong keys is not let in either
            AdminClient(keyed.address, timeout=2.0, config=ps.Config.from_env(keys=str(foreign)))
        t.push(keys, np.ones(2, dtype=np.int64)).wait()
        np.testing.assert_array_equal(t.pull(keys).ravel(), [2, 2])
        status = keyed.status()
        assert len(status["servers"]) == 2
        for s in status["servers"].values():  # nothing got as far as the node: ZAP closed the connections
            assert s["counters"].get("messages_refused", 0) == 0 and s["counters"].get("messages_malformed", 0) == 0


def test_a_worker_key_cannot_send_server_or_scheduler_operations(keyed: ps.LocalCluster, keydir: str) -> None:
    with ps.connect(keyed.address, keys=keydir) as w:
        t = w.table("s", dtype="int64")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)
        members = _members(keyed)
        servers = sorted(n for n, (r, _) in members.items() if r == "server")
        node = w._node  # the worker's own, registered connection: only its key's role limits it
        stop = Shutdown(reason="a worker may not", code=0).to_wire()
        for sid in servers:
            node.send(sid, Message(Op.SHUTDOWN, ts=10**6, body=stop))
            node.send(sid, Message(Op.NODES, ts=10**6 + 1, body=Nodes(nodes=[], keymap=None, dead=servers).to_wire()))
            node.send(sid, Message(Op.REPLICATE, ts=10**6 + 2, table=t.id, arrays=[keys, np.ones(2, np.int64)]))
            node.send(sid, Message(Op.MIGRATE, ts=10**6 + 3, body={}))
        node.send(0, Message(Op.DRAIN, ts=10**6 + 4, body=Drain(node=servers[0]).to_wire()))
        node.send(0, Message(Op.SHUTDOWN, ts=10**6 + 5, body=stop))
        t.push(keys, np.ones(2, dtype=np.int64)).wait()
        status = _refusals_settled(keyed, set(servers), 4)
        for sid in servers:
            assert status["servers"][str(sid)]["counters"]["messages_refused"] == 4
        assert status["migrations"] == 0 and status["failovers"] == 0
        assert sorted(int(s) for s in status["servers"]) == servers
        np.testing.assert_array_equal(t.pull(keys).ravel(), [1, 1])
        # the worker key cannot register a server either
        server_key = zmq.auth.load_certificate(os.path.join(keydir, "scheduler.key"))[0]
        public, secret = zmq.auth.load_certificate(os.path.join(keydir, "worker.key_secret"))
        assert secret is not None
        outsider = Outsider([keyed.address], (server_key, public, secret))
        try:
            outsider.send(keyed.address, Message(Op.REGISTER, ts=1, body={"role": "server",
                                                                         "address": "tcp://127.0.0.1:9"}))
            outsider.answers(300)
        finally:
            outsider.close()
        assert len(_members(keyed)) == len(members)


# ---------------------------------------------------------------------- code and files
def test_updater_modules_outside_the_allowlist_are_never_imported(fast_env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "ps_side_effect.py").write_text(
        f"open({str(marker)!r}, 'w').write('the module ran')\n"
        "from paramserver.table import Sum as Nope\n")
    env = {**fast_env, "PYTHONPATH": os.pathsep.join([str(tmp_path), fast_env["PYTHONPATH"]])}
    with ps.LocalCluster(servers=2, env=env) as cluster, ps.connect(cluster.address) as w:
        with pytest.raises(ps.TableError, match=r"module 'ps_side_effect' is not allowed.*PS_UPDATER_MODULES"):
            w.table("evil", updater="ps_side_effect:Nope")
        with pytest.raises(ps.TableError, match=r"module 'this' is not allowed"):
            w.table("zen", updater="this:Nope")
        assert not marker.exists()  # refused before the import: its code never ran
        t = w.table("fine", dtype="float64", updater="user_updaters:Fussy")  # listed in PS_UPDATER_MODULES
        t.push([3], np.array([2.0])).wait()
        np.testing.assert_array_equal(t.pull([3]).ravel(), [2.0])


def test_the_updater_allowlist_matches_names_and_prefixes() -> None:
    from paramserver.table import check_user_code, parse_modules

    allowed = parse_modules(" mylib , corp.models. ")
    assert allowed == ("mylib", "corp.models.")
    for ok in ("sum", "paramserver.table:Sum", "mylib:U", "mylib.sub:U", "corp.models.ctr:U"):
        check_user_code(ok, allowed)
    for bad in ("mylibx:U", "corp.models:U", "corp:U", "os:system", "this:Nope"):
        with pytest.raises(ps.ConfigError, match="PS_UPDATER_MODULES"):
            check_user_code(bad, allowed)
    with pytest.raises(ps.ConfigError, match="PS_UPDATER_MODULES"):
        check_user_code("mylib:U", parse_modules(""))  # the default: paramserver's own modules only
    check_user_code("anything.at:All", parse_modules("*"))
    with pytest.raises(ps.ConfigError, match="not a module name"):
        parse_modules("ok, ../evil")


def test_servers_write_checkpoints_only_under_the_checkpoint_root(fast_env: dict[str, str], tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    env = {**fast_env, "PS_CHECKPOINT_ROOT": str(root)}
    with ps.LocalCluster(servers=2, env=env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("c", dtype="int64")
        t.push([1, 2**63 + 1], np.array([5, 7], dtype=np.int64)).wait()
        w.checkpoint(root / "ok")
        assert len(list((root / "ok").rglob("server-*.keys.npy"))) == 2
        for bad in (outside / "a", root / "link" / "b", f"{root}/../outside/c"):
            with pytest.raises(ps.PSError, match="outside PS_CHECKPOINT_ROOT"):
                w.checkpoint(bad)
        # a request that names the path itself, as a hostile member could, gets the same answer
        servers = sorted(n for n, (r, _) in _members(cluster).items() if r == "server")
        body = CheckpointRequest(path=f"{root}/../outside/d", iteration=-1, timeout=10.0, seqs=[]).to_wire()
        with pytest.raises(ps.PSError, match="outside PS_CHECKPOINT_ROOT"):
            w._node.request({servers[0]: Message(Op.CHECKPOINT, body=body)}, "raw checkpoint").wait(30)
        assert not list(outside.rglob("*.npy"))  # nothing was written outside the root
        np.testing.assert_array_equal(t.pull([1, 2**63 + 1]).ravel(), [5, 7])


def test_the_checkpoint_root_check_resolves_dot_dot_and_urls() -> None:
    from paramserver.checkpoint import confined

    assert confined("/data/ckpt/run1", "/data/ckpt") == "/data/ckpt/run1"
    assert confined("anything", "") == "anything"
    for bad in ("/data/ckpt/../etc", "/data/ckptx", "/etc", "s3://bucket/ckpt/run", "memory://x"):
        with pytest.raises(ps.CheckpointError, match="outside PS_CHECKPOINT_ROOT"):
            confined(bad, "/data/ckpt")
    assert confined("s3://bucket/ckpt/run", "s3://bucket/ckpt")
    for bad in ("s3://bucket/ckpt/../other", "s3://bucket/ckpt2/x", "gcs://bucket/ckpt/x", "/bucket/ckpt/x"):
        with pytest.raises(ps.CheckpointError, match="outside PS_CHECKPOINT_ROOT"):
            confined(bad, "s3://bucket/ckpt")


# ------------------------------------------------------------------------------ limits
def test_limits_on_message_bytes_keys_and_tables(fast_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"PS_MAX_MESSAGE_BYTES": str(1 << 20), "PS_MAX_KEYS": "1000", "PS_MAX_TABLES": "3"}
    for k, v in limits.items():
        monkeypatch.setenv(k, v)
    with ps.LocalCluster(servers=2, env={**fast_env, **limits}) as cluster, ps.connect(cluster.address) as w:
        t = w.table("v", width=4, dtype="float64")
        keys = np.arange(10, dtype=np.uint64)
        with pytest.raises(ps.InvalidArgument, match="PS_MAX_MESSAGE_BYTES"):  # refused before it leaves
            t.push(np.arange(60_000, dtype=np.uint64), np.ones((60_000, 4))).wait(30)
        servers = sorted(n for n, (r, _) in _members(cluster).items() if r == "server")
        addresses = [_members(cluster)[s][1] for s in servers]
        many = np.arange(1001, dtype=np.uint64)
        with pytest.raises(ps.InvalidArgument, match="PS_MAX_KEYS"):  # a hostile member's request is refused unread
            w._node.request({servers[0]: Message(Op.PULL, table=t.id, arrays=[many])}, "too many keys").wait(30)
        outsider = Outsider(addresses)
        try:
            for a in addresses:  # a frame over the limit cuts the connection; frames under it that add up
                outsider.socks[a].send(b"\x02" * (2 << 20))  # to more are dropped before decoding
                outsider.socks[a].send_multipart([b"\x02" * (600 << 10)] * 3)
            assert outsider.answers(300) == 0
        finally:
            outsider.close()
        w.table("a")
        w.table("b")
        with pytest.raises(ps.TableError, match="PS_MAX_TABLES"):
            w.table("c")
        t.push(keys, np.ones((10, 4))).wait()
        np.testing.assert_array_equal(t.pull(keys), np.ones((10, 4)))
        assert len(cluster.status()["servers"]) == 2


def test_a_forged_registration_answer_cannot_take_the_schedulers_place() -> None:
    """Outside its own registration a node never learns a new scheduler identity, even from a
    REGISTER answer that matches a pending request's timestamp (the fuzz test found this)."""
    from paramserver.node import Gate

    pending = {7}
    gate = Gate("worker", False, lambda n: None, lambda ts: ts in pending)
    forged = Message(Op.REGISTER, sender=0, ts=7, response=True, peer=b"outsider")
    assert not gate.admit(forged) and gate.scheduler_identity == b""
    gate.registering = True
    assert gate.admit(Message(Op.REGISTER, sender=0, ts=7, response=True, peer=b"scheduler"))
    assert gate.scheduler_identity == b"scheduler" and not gate.registering
    assert not gate.admit(Message(Op.SHUTDOWN, sender=0, ts=8, peer=b"outsider"))
    assert not gate.admit(forged)  # registration is over: the answer is not taken twice
    assert gate.admit(Message(Op.SHUTDOWN, sender=0, ts=9, peer=b"scheduler"))
    assert gate.refused == 3


def test_operator_commands_take_keys_and_need_the_admin_key(keyed: ps.LocalCluster, keydir: str,
                                                            tmp_path: Path) -> None:
    admin = tmp_path / "admin-keys"  # an operator's laptop: public keys + admin.key_secret
    admin.mkdir(mode=0o700)
    for f in os.listdir(keydir):
        if f.endswith(".key") or f == "admin.key_secret":
            shutil.copy2(os.path.join(keydir, f), admin / f)
    env = {k: v for k, v in os.environ.items() if k != "PS_KEYS"}
    ok = subprocess.run([sys.executable, "-m", "paramserver", "status", keyed.address, "--json", "--keys", str(admin)],
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["servers"]) == 2
    worker_only = tmp_path / "worker-keys"
    worker_only.mkdir(mode=0o700)
    for f in os.listdir(keydir):
        if f.endswith(".key") or f == "worker.key_secret":
            shutil.copy2(os.path.join(keydir, f), worker_only / f)
    no = subprocess.run([sys.executable, "-m", "paramserver", "shutdown", keyed.address, "--timeout", "3",
                         "--keys", str(worker_only)], env=env, capture_output=True, text=True, timeout=60)
    assert no.returncode == 1 and "admin.key_secret" in no.stderr  # a worker host cannot run operator tools
    plain = subprocess.run([sys.executable, "-m", "paramserver", "shutdown", keyed.address, "--timeout", "3"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 1 and "no scheduler answered" in plain.stderr
    assert len(keyed.status()["servers"]) == 2  # still running
