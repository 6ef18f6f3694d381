"""Messages that say what is really wrong: each message's text, from the scheduler's state
machine and from real processes (a job short of a server, a command that is not there, a
port in use, a scheduler that is not there or has exited, a worker that crashed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import paramserver as ps
from helpers import free_port, tick_probing
from paramserver.deploy import AdminClient
from paramserver.protocol import Message, Op
from paramserver.scheduler import Connect, Finish, SchedulerCore, Send

HERE = Path(__file__).parent
SCRIPT = str(HERE / "scripts" / "train_sum.py")


# ---------------------------------------------------------------- the scheduler's state machine
def sends(actions: list[Any], op: Op | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (op is None or a.msg.op == op)]


def register(core: SchedulerCore, role: str, now: float = 0.0) -> tuple[int, list[Any]]:
    msg = Message(Op.REGISTER, sender=-1, ts=1, body={"role": role, "address": "tcp://127.0.0.1:5000", "pid": 1,
                                                      "host": "h"})
    actions = core.handle(msg, now)
    return next(a for a in actions if isinstance(a, Connect)).node, actions


def make(num_servers: int = 2, num_workers: int = 0) -> SchedulerCore:
    return SchedulerCore(address="mem://0", num_servers=num_servers, num_workers=num_workers,
                         heartbeat_timeout=6.0, request_timeout=30.0)


def test_a_waiting_registration_is_told_what_the_job_waits_for() -> None:
    core = make(num_servers=2)
    s1, a1 = register(core, "server")
    w, a2 = register(core, "worker")
    assert [p.msg.body for p in sends(a1, Op.PING)] == [{"id": s1, "waiting": "waiting for 1 more server (1 of 2 registered)"}]
    assert [p.msg.body for p in sends(a2, Op.PING)] == [
        {"id": w, "waiting": "waiting for 1 more server (1 of 2 registered; 1 worker waiting)"}]
    assert core.waiting_for() == "waiting for 1 more server (1 of 2 registered; 1 worker waiting)"
    # every third of the heartbeat timeout both are told again, and their answers keep them alive
    out = tick_probing(core, 2.0)
    assert sorted(p.node for p in sends(out, Op.PING)) == [s1, w]
    for p in sends(out, Op.PING):
        assert core.handle(Message(Op.PING, sender=p.node, ts=p.msg.ts, response=True), 2.5) == []
    assert tick_probing(core, 7.0) and {s1, w} <= set(core.nodes)
    # once the job starts there is nothing to wait for, and no more pings
    s2, a3 = register(core, "server")
    assert not sends(a3, Op.PING) and core.waiting_for() == ""
    assert {r.node for r in sends(a3, Op.REGISTER)} == {s1, w, s2}


def test_a_waiting_node_that_stops_answering_is_forgotten_and_not_counted() -> None:
    core = make(num_servers=2)
    s1, _ = register(core, "server")
    w, _ = register(core, "worker")
    for t in (2.0, 4.0):  # the worker answers its pings, the server is dead
        for p in sends(tick_probing(core, t), Op.PING):
            if p.node == w:
                core.handle(Message(Op.PING, sender=w, ts=p.msg.ts, response=True), t)
    core.handle(Message(Op.PING, sender=w, ts=99, response=True), 6.0)
    tick_probing(core, 6.5)
    assert s1 not in core.nodes and w in core.nodes
    assert core.waiting_for() == "waiting for 2 more servers (0 of 2 registered; 1 worker waiting)"
    s2, _ = register(core, "server", 7.0)
    s3, a = register(core, "server", 7.0)
    assert {r.node for r in sends(a, Op.REGISTER)} == {w, s2, s3}
    assert sorted(core.keymap.servers()) == [s2, s3]  # type: ignore[union-attr]


def test_a_crash_reported_in_the_goodbye_ends_the_job_as_a_crash() -> None:
    core = make(num_servers=1, num_workers=2)
    register(core, "server")
    register(core, "worker")
    w2, a = register(core, "worker")
    for s in sends(a, Op.NODES):
        core.handle(Message(Op.NODES, sender=s.node, ts=s.msg.ts, response=True), 0)
    out = core.handle(Message(Op.BYE, sender=w2, ts=1, body={"error": "ValueError: boom", "code": 1}), 0)
    finish = next(x for x in out if isinstance(x, Finish))
    assert finish.code == 1
    assert finish.reason.startswith(f"worker {w2} rank 1 (pid 1 at tcp://127.0.0.1:5000) crashed: ValueError: boom "
                                    "(exit code 1); the job needs all 2 workers")
    assert "the job finished" not in finish.reason


def test_one_worker_finishing_reads_in_the_singular() -> None:
    core = make(num_servers=1, num_workers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    finish = next(x for x in core.handle(Message(Op.BYE, sender=w, ts=1), 0) if isinstance(x, Finish))
    assert finish.code == 0 and finish.reason == "the job finished: the worker is done"


# ---------------------------------------------------------------- real processes
@pytest.fixture
def marked_env(fast_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """An environment whose processes can all be found afterwards, to prove none is left."""
    marker = uuid.uuid4().hex
    env = {**os.environ, **fast_env, "PS_TEST_MARKER": marker}
    yield env
    deadline = time.monotonic() + 10
    while True:
        left = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("PS_TEST_MARKER") == marker:
                    left.append(p)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                p.kill()
            pytest.fail(f"processes left running: {[p.cmdline() for p in left]}")
        time.sleep(0.1)


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paramserver", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def node(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "paramserver", *args], env=env, stderr=subprocess.PIPE, text=True)


def scheduler(env: dict[str, str], tmp_path: Path, servers: int, workers: int = 0) -> tuple[subprocess.Popen[str], str]:
    path = tmp_path / f"addr-{uuid.uuid4().hex}"
    proc = node(["scheduler", "--port", "0", "--servers", str(servers), "--workers", str(workers),
                 "--address-file", str(path)], env)
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.05)
    return proc, path.read_text().strip()


def stop(*procs: subprocess.Popen[str]) -> str:
    """Stop the processes; their stderr, joined."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    text = []
    for p in procs:
        try:
            text.append(p.communicate(timeout=15)[1])
        except subprocess.TimeoutExpired:
            p.kill()
            text.append(p.communicate()[1])
    return "".join(text)


def server_ids(address: str) -> list[int]:
    with AdminClient(address, quiet=True) as admin:
        return [n[0] for n in admin.status()["nodes"] if n[1] == "server"]


@pytest.mark.cluster
def test_a_job_short_of_a_server_says_so_and_forgets_the_dead(marked_env: dict[str, str], tmp_path: Path) -> None:
    env = {**marked_env, "PS_LOG_LEVEL": "INFO"}
    sched, address = scheduler(env, tmp_path, servers=2)
    server = node(["server", "--scheduler", address], env)
    try:
        deadline = time.monotonic() + 60
        while not server_ids(address):  # the server registered: the job waits for the second one
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(ps.ConnectError) as info:
            ps.connect(address, timeout=2.0)
        assert str(info.value) == (
            f"the scheduler at {address} registered this worker but the job did not start within 2 s (the timeout "
            f"argument): waiting for 1 more server (1 of 2 registered; 1 worker waiting); start the missing nodes "
            f"(`paramserver server --scheduler {address.removeprefix('tcp://')}`), or give them more time")
        server.kill()
        server.wait()
        while server_ids(address):  # no answer to its pings for PS_HEARTBEAT_TIMEOUT: forgotten
            assert time.monotonic() < deadline + 60, "the dead server is still listed"
            time.sleep(0.2)
    finally:
        log = stop(sched, server)
    assert "; waiting for 1 more server (1 of 2 registered)" in log
    assert "it was waiting for the job to start and is forgotten; waiting for 2 more servers (0 of 2 registered" in log


@pytest.mark.cluster
def test_a_command_that_is_not_there_starts_nothing(marked_env: dict[str, str]) -> None:
    res = cli(["launch", "-s", "2", "-w", "1", "--", "pyhton-not-installed", "foo.py"], marked_env)
    assert res.returncode == 127
    assert res.stderr == ("paramserver launch: cannot run the workers' command: pyhton-not-installed: command not "
                          "found (not on PATH); nothing was started\n")
    res = cli(["launch", "-w", "1", "--", "./no/such/script.sh"], marked_env)
    assert res.returncode == 127 and "./no/such/script.sh: no such file; nothing was started" in res.stderr


@pytest.mark.cluster
def test_a_port_in_use_is_one_clear_line(marked_env: dict[str, str], cluster2: ps.LocalCluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        why = "the port is already in use (another node or program listens there); choose another port, or 0 for a free one"
        res = cli(["scheduler", "--port", str(port), "--servers", "1"], marked_env)
        assert res.returncode == 1
        assert res.stderr == f"paramserver scheduler: cannot listen at tcp://127.0.0.1:{port}: {why}\n"
        res = cli(["server", "--scheduler", cluster2.address, "--host", "127.0.0.1", "--port", str(port)], marked_env)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert res.stderr.strip().endswith(f"ERROR cannot listen at tcp://127.0.0.1:{port}: {why}")
        res = cli(["metrics", cluster2.address, "--serve", str(port)], marked_env)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert res.stderr.strip().splitlines()[-1] == (
            f"paramserver metrics: cannot serve metrics at http://127.0.0.1:{port}: the port is already in use; "
            f"choose another with --serve")


@pytest.mark.cluster
def test_no_scheduler_is_said_early_once_and_named_by_its_limit(marked_env: dict[str, str]) -> None:
    port = free_port()
    res = cli(["status", f"127.0.0.1:{port}", "--timeout", "2"], marked_env)
    assert res.returncode == 1
    assert res.stderr.count("waiting up to") == 1
    assert f"waiting up to 2 s (--timeout) for the scheduler at tcp://127.0.0.1:{port}: nothing listens there " \
           "(connection refused)" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"paramserver status: no scheduler answered at tcp://127.0.0.1:{port} within 2 s (--timeout): nothing "
        f"listens there (connection refused); start one with `paramserver scheduler`, or check the address (a "
        f"scheduler that ran there has exited)")


@pytest.mark.cluster
def test_a_scheduler_that_exits_during_a_call_is_reported_as_gone(marked_env: dict[str, str], tmp_path: Path) -> None:
    sched, address = scheduler(marked_env, tmp_path, servers=1)  # no server: a status gathers nothing, answers
    try:
        with AdminClient(address, timeout=60, limit="--timeout") as admin:
            admin.status()
            sched.kill()
            sched.wait()
            t0 = time.monotonic()
            with pytest.raises(ps.ConnectError) as info:
                admin.drain(5)
            assert time.monotonic() - t0 < 30  # found out by probing, not by waiting out the 60 s
    finally:
        stop(sched)
    assert str(info.value) == (f"draining server 5: the scheduler at {address} stopped answering; nothing listens "
                               f"there (connection refused): it has exited")


CRASH = """
import paramserver as ps
w = ps.connect()
w.barrier()
if w.rank == 1:
    raise ValueError("boom")
w.barrier()
"""


@pytest.mark.cluster
def test_a_crashed_worker_reads_as_a_crash_with_its_exit_code(marked_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    res = cli(["launch", "-s", "1", "-w", "2", "--", sys.executable, str(script)], marked_env)
    assert res.returncode == 1
    assert "ValueError: boom" in res.stderr  # the traceback of the script itself
    assert " rank 1 (pid " in res.stderr and ") crashed: ValueError: boom (exit code 1); the job needs all 2 workers" \
        in res.stderr
    assert "the job finished" not in res.stderr
    assert "exited with code 1; stopping the job" in res.stderr  # the other worker's job ended: it may be first


@pytest.mark.cluster
def test_launch_keeps_node_logs_out_and_counts_in_words(marked_env: dict[str, str]) -> None:
    env = {k: v for k, v in marked_env.items() if k != "PS_LOG_LEVEL"}
    res = cli(["launch", "-s", "1", "-w", "1", "--", sys.executable, SCRIPT], env)
    assert res.returncode == 0, res.stderr
    assert "rank 0: sums [1, 1, 1, 1], expected [1, 1, 1, 1]" in res.stdout
    assert " INFO " not in res.stderr and " INFO " not in res.stdout
    lines = res.stderr.splitlines()
    assert lines[0].startswith("paramserver launch: scheduler at tcp://127.0.0.1:")
    assert lines[0].endswith(f", 1 server, 1 worker running {sys.executable} {SCRIPT}")
    assert lines[-1] == "paramserver launch: done: 1 worker finished"


KILL_SERVER = """
import os, signal, sys, time
import paramserver as ps
from paramserver.deploy import AdminClient
w = ps.connect()
with AdminClient(w.address) as admin:
    nid, pid = next((n[0], n[4]) for n in admin.status()["nodes"] if n[1] == "server")
print(f"server node {nid} pid {pid}", flush=True)
os.kill(pid, signal.SIGKILL)
time.sleep(60)
"""


@pytest.mark.cluster
def test_launch_names_servers_by_their_node_id(marked_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "kill_server.py"
    script.write_text(KILL_SERVER)
    res = cli(["launch", "-s", "1", "-w", "1", "--", sys.executable, str(script)], marked_env)
    assert res.returncode == 1
    nid, pid = res.stdout.split()[2], res.stdout.split()[4]
    assert f"paramserver launch: server {nid} (pid {pid}) exited with code -9 while workers were running" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.cluster
def test_a_bounded_pull_timeout_names_the_worker_that_holds_the_clock_back(cluster2: ps.LocalCluster) -> None:
    import numpy as np

    keys = np.array([1, 2**63 + 1], dtype=np.uint64)  # on both servers
    with ps.connect(cluster2.address) as fast, ps.connect(cluster2.address) as slow:
        tf = fast.table("b", consistency="bounded", tau=0)
        ts = slow.table("b", consistency="bounded", tau=0)
        ts.push(keys, np.ones(2, np.float32)).wait()  # the slow worker pushes and never advances
        for _ in range(2):
            tf.push(keys, np.ones(2, np.float32)).wait()
            fast.advance()
        with pytest.raises(ps.RequestTimeout) as info:
            tf.pull(keys, timeout=2.0)
        text = str(info.value)
        assert text.startswith("pull from table 'b' at iteration 2 under bounded(tau=0) timed out after 2 s: it waits "
                               f"until every worker has finished iteration 1, and worker {slow.id} ")
        assert text.endswith("has finished only iteration -1. A worker holds the clock back when it stops calling "
                             "advance() (or `with w.iteration():`) while the others go on")
        assert f"worker {fast.id} " not in text
        slow.advance()
        slow.advance()
        assert tf.pull(keys, timeout=30).ravel().tolist() == [3.0, 3.0]


# ---------------------------------------------------------------- sharding helper (docs)
@pytest.mark.cluster
def test_rows_splits_a_fixed_job_by_rank(fast_env: dict[str, str]) -> None:
    with ps.LocalCluster(servers=1, workers=2, env=fast_env) as cluster:
        a, b = ps.connect(cluster.address), ps.connect(cluster.address)
        assert (a.num_workers, sorted([a.rank, b.rank])) == (2, [0, 1])
        first, second = (a, b) if a.rank == 0 else (b, a)
        assert list(first.rows(11, epochs=2)) == [slice(0, 6), slice(0, 6)]
        assert list(second.rows(11)) == [slice(6, 11)]
        a.close()
        b.close()


@pytest.mark.cluster
def test_rows_hands_out_every_row_once_in_a_dynamic_job(cluster2: ps.LocalCluster) -> None:
    with ps.connect(cluster2.address) as a, ps.connect(cluster2.address) as b:
        assert a.num_workers == 0  # X[a.rank::a.num_workers] would raise
        import threading

        got_a: list[slice] = []
        got_b: list[slice] = []
        mine = a.rows(1000, shards=10)
        got_a.append(next(mine))  # a holds one range while b takes the others
        other = threading.Thread(target=lambda: got_b.extend(b.rows(1000, shards=10)))
        other.start()
        got_a += list(mine)  # b's loop ends once a's range is done too
        other.join(60)
        assert not other.is_alive()
        covered = sorted((s.start, s.stop) for s in got_a + got_b)
        assert covered == [(i * 100, i * 100 + 100) for i in range(10)]
        assert len(got_a) >= 1 and len(got_b) >= 1
