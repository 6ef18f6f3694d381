"""Two hosts on one machine (network namespaces joined by a veth pair): keys across hosts.

Host A runs the scheduler and a server on its own address, host B a worker process. With
keys the job runs across the link with exact sums and a plaintext outsider on host B gets
nothing; without keys the scheduler refuses to listen on host A's address unless
PS_INSECURE=1. Needs root and iproute2 (``.ci/packages.txt``); skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SRC = str(Path(__file__).resolve().parents[1] / "src")
A_IP, B_IP = "10.212.0.1", "10.212.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) for a two-host test bed")
    tag = f"{os.getpid() % 100000}"
    a, b = f"ps12a{tag}", f"ps12b{tag}"
    va, vb = f"ps12x{tag}", f"ps12y{tag}"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
    except subprocess.CalledProcessError as exc:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip("link", "set", va, "netns", a)
        _ip("link", "set", vb, "netns", b)
        _ip("-n", a, "addr", "add", f"{A_IP}/24", "dev", va)
        _ip("-n", b, "addr", "add", f"{B_IP}/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PS_KEYS", "PS_INSECURE")}
    env.update({"PYTHONPATH": SRC, "PS_LOG_LEVEL": "WARNING", "PS_HEARTBEAT_INTERVAL": "0.2",
                "PS_HEARTBEAT_TIMEOUT": "5", "PS_CONNECT_TIMEOUT": "30", **extra})
    return env


def _in(ns: str, *cmd: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


WORKER = textwrap.dedent("""
    import faulthandler, sys, numpy as np, zmq, paramserver as ps
    faulthandler.dump_traceback_later(120, exit=True)  # a hang shows where, then fails
    from paramserver.protocol import Message, Op, Shutdown, encode
    address = sys.argv[1]
    with ps.connect(address) as w:
        t = w.table("s", dtype="int64")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)
        ctx = zmq.Context()
        out = ctx.socket(zmq.DEALER)  # a plaintext outsider on this host, aimed at the scheduler
        out.setsockopt(zmq.LINGER, 0)
        out.connect(address)
        stop = Message(Op.SHUTDOWN, sender=0, ts=1, body=Shutdown(reason="forged").to_wire())
        for _ in range(50):
            try:  # a DEALER whose handshakes all fail has no peer to queue for: never block on it
                out.send_multipart([bytes(memoryview(f)) for f in encode(stop)], zmq.NOBLOCK)
            except zmq.Again:
                pass
            t.push(keys, np.ones(2, dtype=np.int64)).wait()
        assert not out.poll(500), "the outsider got an answer"
        out.close(0); ctx.term()
        print(" ".join(map(str, t.pull(keys).ravel())), w._node.address, flush=True)
""")


def test_keys_carry_a_job_across_hosts_and_keyless_nodes_stay_on_loopback(hosts: tuple[str, str],
                                                                          tmp_path: Path) -> None:
    a, b = hosts
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "paramserver", "keygen", str(keys)], env=_env(), check=True,
                   capture_output=True, timeout=60)
    # without keys: refused on host A's address, allowed with PS_INSECURE=1
    refused = _in(a, sys.executable, "-m", "paramserver", "scheduler", "--host", A_IP, env=_env())
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "paramserver keygen" in err and "PS_KEYS" in err
    insecure = _in(a, sys.executable, "-m", "paramserver", "scheduler", "--host", A_IP, env=_env(PS_INSECURE="1"))
    try:
        assert insecure.stdout is not None
        assert insecure.stdout.readline().startswith(f"tcp://{A_IP}:")
    finally:
        insecure.kill()
        insecure.communicate(timeout=30)
    # with keys: scheduler and server on host A, a worker process on host B
    procs: list[subprocess.Popen[str]] = []
    try:
        sched = _in(a, sys.executable, "-m", "paramserver", "scheduler", "--host", A_IP, "--servers", "1",
                    "--keys", str(keys), env=_env())
        procs.append(sched)
        assert sched.stdout is not None
        address = sched.stdout.readline().strip()
        assert address.startswith(f"tcp://{A_IP}:"), sched.stderr.read() if sched.stderr else ""
        procs.append(_in(a, sys.executable, "-m", "paramserver", "server", "--scheduler", address, "--host", A_IP,
                         "--keys", str(keys), env=_env()))
        worker = _in(b, sys.executable, "-c", WORKER, address, env=_env(PS_KEYS=str(keys)))
        procs.append(worker)
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        *sums, worker_address = out.split()
        assert sums == ["50", "50"]
        assert worker_address.startswith(f"tcp://{B_IP}:")  # it really ran on host B
        shutdown = _in(a, sys.executable, "-m", "paramserver", "shutdown", address, "--keys", str(keys), env=_env())
        procs.append(shutdown)
        shutdown.communicate(timeout=60)
        assert shutdown.returncode == 0
        assert sched.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
