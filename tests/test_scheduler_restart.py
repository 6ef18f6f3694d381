"""The scheduler is no single point of failure: SIGKILL it mid-job and the data path goes
on; restart it at the same address and it rebuilds the job from the nodes' reports (the job
ends normally, with exact sums); never restart it and only the calls that need it fail.

The workers (tests/scripts/restart_worker.py) and the test order their steps through files,
so that the kill falls at a known point of the job and nothing depends on timing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import paramserver as ps
from paramserver.protocol import Message, Op, Rejoin
from paramserver.scheduler import SchedulerCore

pytestmark = pytest.mark.cluster

SCRIPT = Path(__file__).parent / "scripts" / "restart_worker.py"


def _wait_files(d: Path, prefix: str, n: int, procs: list[subprocess.Popen[bytes]], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for _ in d.glob(f"{prefix}-*")) < n:
        for p in procs:
            assert p.poll() is None, f"a worker exited with {p.returncode} before step {prefix}"
        assert time.monotonic() < deadline, f"timed out waiting for step {prefix}"
        time.sleep(0.05)


def _workers(address: str, n: int, d: Path, mode: str, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, str(SCRIPT), address, str(r), str(n), str(d), mode], env=env)
            for r in range(n)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_sigkill_the_scheduler_mid_job_and_restart_it(fast_env: dict[str, str], tmp_path: Path,
                                                      replicas: int) -> None:
    workers = 3
    import os

    env = {**os.environ, **fast_env}
    cluster = ps.LocalCluster(servers=3, replicas=replicas, workers=workers, env=fast_env)
    try:
        procs = _workers(cluster.address, workers, tmp_path, "restart", env)
        _wait_files(tmp_path, "a", workers, procs)
        cluster.kill_scheduler()
        (tmp_path / "go").touch()
        _wait_files(tmp_path, "b", workers, procs)  # every push of the downtime was acknowledged
        cluster.restart_scheduler()
        codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0] * workers  # each worker checked the exact sums and every shard once
        sched = cluster._procs[0]
        assert sched.popen.wait(timeout=60) == 0  # the job ended normally: every worker said goodbye
        for s in cluster._servers:
            assert s.popen.wait(timeout=60) == 0
    finally:
        cluster.close()


def test_sigkill_the_scheduler_and_never_restart_it(fast_env: dict[str, str], tmp_path: Path) -> None:
    workers = 2
    import os

    env = {**os.environ, **fast_env}
    with ps.LocalCluster(servers=2, workers=workers, env=fast_env) as cluster:
        procs = _workers(cluster.address, workers, tmp_path, "never", env)
        _wait_files(tmp_path, "a", workers, procs)
        cluster.kill_scheduler()
        (tmp_path / "go").touch()
        codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0] * workers
        for r in range(workers):
            text = (tmp_path / f"c-{r}").read_text()
            assert "barrier of the workers" in text and f"the scheduler at {cluster.address}" in text, text
            assert "did not answer" in text and "--recover" in text, text
        for s in cluster._servers:
            assert s.poll() is None  # the servers serve on


# ---------------------------------------------------------------------------- the pure core
def _rejoin(nid: int, role: str, nodes: list[list[object]], **extra: object) -> Message:
    info = [nid, role, f"tcp://127.0.0.1:{9000 + nid}", "h", 100 + nid, -1 if role == "server" else nid - 3]
    body = Rejoin(info=info, incarnation=7, nodes=nodes, **extra).to_wire()  # type: ignore[arg-type]
    return Message(Op.REJOIN, sender=nid, body=body, peer=bytes([nid]) * 4)


def test_a_recovering_core_waits_for_every_member_then_takes_the_highest_epoch() -> None:
    from paramserver.placement import EvenSplit

    km1 = EvenSplit().assign([1, 2], epoch=3, replicas=1)
    km2 = EvenSplit().assign([1, 2], epoch=5, replicas=1)
    nodes = [[1, "server", "tcp://127.0.0.1:9001", "h", 101, -1], [2, "server", "tcp://127.0.0.1:9002", "h", 102, -1],
             [3, "worker", "tcp://127.0.0.1:9003", "h", 103, 0]]
    core = SchedulerCore(address="tcp://127.0.0.1:1", num_servers=2, num_workers=2, recover=True, incarnation=9)
    held = Message(Op.REGISTER, sender=-1, body={"role": "worker", "address": "tcp://127.0.0.1:9100"}, peer=b"new")
    assert core.handle(held, 0.1) == []  # a registration during the rebuild waits for it
    assert not [a for a in core.handle(_rejoin(1, "server", nodes, keymap=km1.to_wire()), 0.2)
                if getattr(a, "msg", None) is not None]
    core.handle(_rejoin(3, "worker", nodes, keymap=km1.to_wire(), num_workers=2, barriers={"workers": 4}), 0.3)
    assert core.rebuild is not None
    out = core.handle(_rejoin(2, "server", nodes, keymap=km2.to_wire()), 0.4)
    assert core.rebuild is None and core.keymap is not None and core.keymap.epoch == 5
    answered = sorted(a.node for a in out if getattr(a, "msg", None) is not None and a.msg.op == Op.REJOIN)
    assert answered == [1, 2, 3]
    assert core.nodes[3].identity == bytes([3]) * 4  # bound to the connection it rejoined from
    # the held registration was taken after the rebuild, with an id past every known one
    assert max(core.nodes) == 4 and core.nodes[4].address == "tcp://127.0.0.1:9100"
    # a barrier round the others passed before the restart is passed at once
    b = core.handle(Message(Op.BARRIER, sender=3, body={"group": "workers", "seq": 4}), 0.5)
    assert [(a.node, a.msg.body) for a in b] == [(3, {"round": 4})]


def test_a_member_that_never_rejoins_is_failed_over_at_the_deadline() -> None:
    from paramserver.placement import EvenSplit

    km = EvenSplit().assign([1, 2], epoch=2, replicas=2)
    nodes = [[1, "server", "tcp://127.0.0.1:9001", "h", 101, -1], [2, "server", "tcp://127.0.0.1:9002", "h", 102, -1]]
    core = SchedulerCore(address="tcp://127.0.0.1:1", num_servers=2, recover=True, replicas=2,
                         heartbeat_timeout=3, rebuild_timeout=6)
    core.handle(_rejoin(1, "server", nodes, keymap=km.to_wire()), 1.0)
    assert core.tick(5.0) == [] and core.rebuild is not None
    core.tick(6.5)
    assert core.rebuild is None and 2 not in core.nodes
    assert core.keymap is not None and core.keymap.servers() == [1] and core.failovers == 1
    assert np.all(core.keymap.masters(np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)) == 1)


def test_launch_restarts_a_killed_scheduler_and_the_job_ends_normally(fast_env: dict[str, str]) -> None:
    import os

    script = Path(__file__).parent / "scripts" / "kill_scheduler_worker.py"
    res = subprocess.run([sys.executable, "-m", "paramserver", "launch", "-s", "2", "-w", "2", "--", sys.executable,
                          str(script)], env={**os.environ, **fast_env}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "rank 0: exact" in res.stdout and "rank 1: exact" in res.stdout
    assert "the scheduler was killed (SIGKILL); restarting it" in res.stderr
    assert "done: 2 workers finished" in res.stderr


def test_a_restarted_schedulers_connection_is_taken_only_from_the_answer_to_a_rejoin() -> None:
    from paramserver.node import Gate

    pending = {7, 8}
    gate = Gate("worker", False, lambda n: None, lambda ts: ts in pending)
    gate.scheduler_identity = b"old"
    # the new scheduler's heartbeat answer, before this node rejoined: refused
    assert not gate.admit(Message(Op.HEARTBEAT, sender=0, ts=8, response=True, peer=b"new"))
    assert not gate.admit(Message(Op.REJOIN, sender=0, ts=7, response=True, peer=b"new"))  # not rejoining
    gate.rejoining = True
    assert not gate.admit(Message(Op.REJOIN, sender=0, ts=9, response=True, peer=b"new"))  # no such request
    assert not gate.admit(Message(Op.SHUTDOWN, sender=0, ts=1, peer=b"new"))  # a request, not the answer
    assert gate.admit(Message(Op.REJOIN, sender=0, ts=7, response=True, peer=b"new"))
    assert gate.scheduler_identity == b"new" and not gate.rejoining
    assert not gate.admit(Message(Op.SHUTDOWN, sender=0, ts=2, peer=b"old"))  # the old one is a stranger now
    assert gate.admit(Message(Op.SHUTDOWN, sender=0, ts=3, peer=b"new"))
    keyed = Gate("worker", True, lambda n: None, lambda ts: ts in pending)
    keyed.rejoining = True
    assert not keyed.admit(Message(Op.REJOIN, sender=0, ts=7, response=True, peer=b"x", auth="worker"))
    assert keyed.admit(Message(Op.REJOIN, sender=0, ts=7, response=True, peer=b"x", auth="scheduler"))


def test_a_registration_sent_again_makes_one_member() -> None:
    core = SchedulerCore(address="tcp://127.0.0.1:1", num_servers=1)
    body = {"role": "server", "address": "tcp://127.0.0.1:9001", "nonce": 42}
    core.handle(Message(Op.REGISTER, sender=-1, ts=1, body=body, peer=b"s"), 0.0)
    assert 1 in core.nodes and core.keymap is not None  # the round runs (no other server to tell)
    again = core.handle(Message(Op.REGISTER, sender=-1, ts=5, body=body, peer=b"s"), 0.1)
    assert sorted(core.nodes) == [0, 1]
    assert [(a.node, a.msg.ts, a.msg.body["id"]) for a in again if getattr(a, "msg", None) is not None] == [(1, 5, 1)]
    other = core.handle(Message(Op.REGISTER, sender=-1, ts=6, body=body, peer=b"t"), 0.2)  # another connection
    assert sorted(core.nodes) == [0, 1, 2] and other


def test_a_worker_that_registers_while_the_scheduler_is_down_joins_the_restarted_one(
        fast_env: dict[str, str]) -> None:
    import threading

    keys = np.arange(0, 2**64 - 1, 2**58, dtype=np.uint64)
    with ps.LocalCluster(servers=2, env=fast_env) as cluster:
        a = ps.connect(cluster.address)
        t = a.table("t", dtype="int64")
        t.push(keys, np.ones((len(keys), 1), dtype=np.int64)).wait()
        cluster.kill_scheduler()
        box: list[object] = []
        joiner = threading.Thread(target=lambda: box.append(ps.connect(cluster.address, timeout=120)))
        joiner.start()
        t.push(keys, np.ones((len(keys), 1), dtype=np.int64)).wait()  # the data path goes on
        cluster.restart_scheduler()
        joiner.join(150)
        assert box and isinstance(box[0], ps.Worker)
        b = box[0]
        try:
            workers = sorted(n[0] for n in cluster.status()["nodes"] if n[1] == "worker")
            assert workers == sorted([a.id, b.id]) and a.id != b.id  # one new member, no id taken twice
            tb = b.table("t", dtype="int64")  # the table the restarted scheduler learnt from the nodes
            assert tb.id == t.id
            tb.push(keys, np.ones((len(keys), 1), dtype=np.int64)).wait()
            np.testing.assert_array_equal(t.pull(keys).ravel(), np.full(len(keys), 3))
        finally:
            b.close()
            a.close()
