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
