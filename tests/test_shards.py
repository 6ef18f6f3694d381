"""Worker management: data shards handed to workers, reassigned when a worker dies.

The state machine (no sockets), the scheduler core's hooks, the worker API over an
in-process cluster, and real worker processes: one killed mid-job, one joining late.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paramserver as ps
from helpers import tick_probing
from paramserver import InvalidArgument, ProtocolError
from paramserver.cli._status import format_status
from paramserver.protocol import Message, Op, Status
from paramserver.scheduler import Finish, SchedulerCore
from paramserver.scheduler._shards import ShardManager
from paramserver.testing import InProcessCluster
from test_scheduler_core import ack_all, make, register, sends

HERE = Path(__file__).parent
SCRIPT = str(HERE / "scripts" / "shard_worker.py")
FILES = ["a.txt", "b.txt", "c.txt"]


def ask(m: ShardManager, worker: int, done: int | None = None, *, declare: list[Any] | None = None,
        epochs: int = 1, now: float = 0.0, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"set": "train", "done": done, **extra}
    if declare is not None:
        body.update(shards=declare, epochs=epochs)
    return m.on_task(worker, body, now)


# ====================================================================== state machine
def test_tasks_go_out_in_order_and_the_set_finishes_when_all_are_done() -> None:
    m = ShardManager()
    r = ask(m, 1, declare=FILES)
    assert (r["state"], r["task"], r["shard"], r["epoch"]) == ("task", 0, 0, 0)
    assert ask(m, 2, declare=FILES)["task"] == 1
    assert ask(m, 1, done=0)["task"] == 2
    # nothing pending but tasks 1 and 2 still run: wait (one of them may die)
    r = ask(m, 1)
    assert r["state"] == "wait" and r["progress"] == {"total": 3, "done": 1, "running": 2, "pending": 0}
    assert ask(m, 2, done=1)["state"] == "wait"
    assert ask(m, 1, done=2)["state"] == "finished"
    assert ask(m, 2)["state"] == "finished"
    st = m.status(5.0)["train"]
    assert st["done"] == 3 and st["done_by"] == {"1": 2, "2": 1} and st["reassigned"] == 0


def test_epochs_repeat_the_list_in_order() -> None:
    m = ShardManager()
    got = []
    r = ask(m, 1, declare=["x", "y"], epochs=2)
    while r["state"] == "task":
        got.append((r["shard"], r["epoch"]))
        r = ask(m, 1, done=r["task"])
    assert got == [(0, 0), (1, 0), (0, 1), (1, 1)] and r["state"] == "finished"


def test_a_dead_workers_shard_goes_to_the_next_worker_first() -> None:
    m = ShardManager()
    assert ask(m, 1, declare=FILES, now=1.0)["task"] == 0
    assert ask(m, 2, declare=FILES, now=2.0)["task"] == 1
    assert m.status(3.0)["train"]["running_on"] == {"0": [1, 2.0], "1": [2, 1.0]}
    assert m.worker_gone(1, 3.0) == [("train", 0)]
    assert ask(m, 2, done=1)["task"] == 0  # given back: before task 2, never handed out
    assert ask(m, 2, done=0)["task"] == 2
    assert ask(m, 2, done=2)["state"] == "finished"
    st = m.status(4.0)["train"]
    assert st["reassigned"] == 1 and st["done_by"] == {"2": 3}


def test_a_late_worker_gets_the_pending_shards() -> None:
    m = ShardManager()
    assert ask(m, 1, declare=FILES)["task"] == 0
    assert ask(m, 9, declare=FILES)["task"] == 1  # joins later: simply asks
    assert ask(m, 1, done=0)["task"] == 2


def test_done_counts_once_and_only_from_the_holder() -> None:
    m = ShardManager()
    ask(m, 1, declare=FILES)
    ask(m, 2, declare=FILES)
    assert ask(m, 1, done=0)["task"] == 2
    assert ask(m, 1, done=0)["state"] == "wait"  # a repeated report is ignored
    assert m.status(0)["train"]["done"] == 1
    with pytest.raises(InvalidArgument, match="task 1 of shard set 'train' is not held by node 1: it is held by node 2"):
        ask(m, 1, done=1)
    with pytest.raises(InvalidArgument, match="has no task 7"):
        ask(m, 1, done=7)
    m.worker_gone(2, 0)
    with pytest.raises(InvalidArgument, match="it is pending"):
        ask(m, 2, done=1)
    assert m.status(0)["train"]["done"] == 1


def test_release_gives_a_shard_back_unfinished() -> None:
    m = ShardManager()
    ask(m, 1, declare=FILES)
    assert ask(m, 1, done=0, release=True)["state"] == "released"
    assert ask(m, 2, declare=FILES)["task"] == 0
    assert m.status(0)["train"]["reassigned"] == 0  # given back on purpose, not lost
    with pytest.raises(ProtocolError, match="names the task"):
        ask(m, 2, release=True)


def test_declarations_must_match_and_sets_must_exist() -> None:
    m = ShardManager()
    with pytest.raises(InvalidArgument, match="no shard set named 'train'"):
        ask(m, 1)
    with pytest.raises(InvalidArgument, match="list of shards is empty"):
        ask(m, 1, declare=[])
    with pytest.raises(InvalidArgument, match="epochs must be >= 1"):
        ask(m, 1, declare=FILES, epochs=0)
    ask(m, 1, declare=FILES)
    with pytest.raises(InvalidArgument, match=r"declared with 3 shards and 1 epochs; this declaration \(2 shards"):
        ask(m, 2, declare=FILES[:2])
    with pytest.raises(InvalidArgument, match="differs"):
        ask(m, 2, declare=FILES, epochs=2)
    with pytest.raises(InvalidArgument, match="differs"):
        ask(m, 2, declare=["a.txt", "b.txt", "C.txt"])
    with pytest.raises(ProtocolError, match="'done' must be int"):
        ask(m, 1, done="0")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="lacks the field 'set'"):
        m.on_task(1, {}, 0)


def test_worker_failure_policy() -> None:
    with pytest.raises(InvalidArgument):
        ShardManager("retry")
    assert not ShardManager("auto").job_survives_worker_death()
    m = ShardManager("auto")
    ask(m, 1, declare=FILES)
    assert m.job_survives_worker_death()
    assert not ShardManager("abort").job_survives_worker_death()
    assert ShardManager("continue").job_survives_worker_death()


# ====================================================================== scheduler core hooks
def task(core: SchedulerCore, worker: int, body: dict[str, Any], now: float = 0.0, ts: int = 1) -> Any:
    out = core.handle(Message(Op.TASK, sender=worker, ts=ts, body={"set": "train", **body}), now)
    assert [s.node for s in sends(out)] == [worker]
    return sends(out)[0].msg


def fixed_job(workers: int = 3, **kwargs: Any) -> tuple[SchedulerCore, int, list[int]]:
    core = SchedulerCore(address="mem://0", num_servers=1, num_workers=workers, heartbeat_timeout=5.0,
                         request_timeout=30.0, **kwargs)
    s, _ = register(core, "server")
    ws = []
    for _ in range(workers):
        w, a = register(core, "worker")
        ack_all(core, a, Op.NODES)
        ws.append(w)
    return core, s, ws


def beat(core: SchedulerCore, nodes: list[int], now: float) -> None:
    for n in nodes:
        core.handle(Message(Op.HEARTBEAT, sender=n, ts=99), now)


def test_fixed_job_survives_a_dead_worker_that_used_shards_and_ends_when_the_rest_leave() -> None:
    core, s, (w1, w2, w3) = fixed_job()
    assert task(core, w1, {"shards": FILES}).body["task"] == 0
    assert task(core, w2, {"shards": FILES}).body["task"] == 1
    assert core.handle(Message(Op.BARRIER, sender=w2, ts=7, body={}), 1.0) == []
    beat(core, [s, w2, w3], 9.0)
    out = tick_probing(core, 9.5)  # w1 silent for 9.5 s > 5: dead, holding task 0
    assert not any(isinstance(x, Finish) for x in out)
    assert sends(out, Op.BARRIER) == []  # w3 still counts
    out = core.handle(Message(Op.BARRIER, sender=w3, ts=8, body={}), 9.6)
    assert sorted(r.node for r in sends(out, Op.BARRIER)) == [w2, w3]  # w1 no longer counts
    assert task(core, w3, {"shards": FILES}, 9.7).body["task"] == 0  # w1's shard, first in line
    assert task(core, w2, {"done": 1}, 9.8).body["task"] == 2
    # the status reply carries the shards section
    out = core.handle(Message(Op.STATUS, sender=w2, ts=3), 9.9)
    out = ack_all(core, out, Op.STATUS, 9.9)
    sh = sends(out, Op.STATUS)[0].msg.body["shards"]["train"]
    assert sh["reassigned"] == 1 and sh["running"] == 2 and sh["done_by"] == {str(w2): 1}
    text = format_status(sends(out, Op.STATUS)[0].msg.body)
    assert (f"shard set 'train': 3 shards x 1 epochs; 1/3 done, 2 running, 0 pending, 1 reassigned "
            f"(done by node {w2}: 1)") in text
    assert not any(isinstance(x, Finish) for x in core.handle(Message(Op.BYE, sender=w2, ts=4), 10.0))
    # w2 left holding task 2: it goes to w3
    assert task(core, w3, {"done": 0}, 10.1).body["task"] == 2
    assert task(core, w3, {"done": 2}, 10.2).body["state"] == "finished"
    out = core.handle(Message(Op.BYE, sender=w3, ts=5), 10.3)
    finish = next(x for x in out if isinstance(x, Finish))
    assert finish.code == 0


def test_fixed_job_without_shards_still_aborts_on_a_dead_worker() -> None:
    core, s, (_, w2) = fixed_job(2)
    beat(core, [s, w2], 9.0)
    finish = next(x for x in tick_probing(core, 9.5) if isinstance(x, Finish))
    assert finish.code == 1 and "needs all 2 workers" in finish.reason


@pytest.mark.parametrize(("policy", "survives"), [("abort", False), ("continue", True)])
def test_worker_failure_setting_overrides_auto(policy: str, survives: bool) -> None:
    core, s, (w1, w2) = fixed_job(2, worker_failure=policy)
    task(core, w1, {"shards": FILES})
    beat(core, [s, w2], 9.0)
    out = tick_probing(core, 9.5)
    assert any(isinstance(x, Finish) for x in out) != survives


def test_the_last_worker_dying_ends_the_job_with_an_error() -> None:
    core, s, (w1,) = fixed_job(1)
    task(core, w1, {"shards": FILES})
    beat(core, [s], 9.0)
    finish = next(x for x in tick_probing(core, 9.5) if isinstance(x, Finish))
    assert finish.code == 1 and "no worker is left" in finish.reason


def test_bad_task_requests_get_error_replies_and_the_scheduler_serves_on() -> None:
    core = make(num_servers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    c, _ = register(core, "client")
    for body, why in [({"done": 3}, "no shard set named 'train'"), ({"shards": "abc"}, "must be list"),
                      ({"shards": FILES, "done": [1]}, "'done' must be int")]:
        reply = task(core, w, body)
        assert reply.status == Status.ERROR and why in reply.body["message"], reply.body
    reply = task(core, c, {"shards": FILES})
    assert reply.status == Status.ERROR and "only workers" in reply.body["message"]
    assert task(core, w, {"shards": FILES}).body["task"] == 0


# ====================================================================== worker API (in-process)
def test_row_shards() -> None:
    assert ps.row_shards(10, 3) == [[0, 4], [4, 7], [7, 10]]
    assert ps.row_shards(2, 3) == [[0, 1], [1, 2], [2, 2]]
    assert ps.row_shards(0, 1) == [[0, 0]]
    with pytest.raises(InvalidArgument):
        ps.row_shards(5, 0)
    with pytest.raises(InvalidArgument):
        ps.row_shards(5.0, 2)  # type: ignore[arg-type]


def test_workers_share_a_set_in_process() -> None:
    shards = ps.row_shards(100, 8)
    with InProcessCluster(servers=1) as cluster:
        w1, w2 = cluster.connect(), cluster.connect()
        t = w1.table("n", dtype="int64")
        # bad arguments fail before anything is sent
        with pytest.raises(InvalidArgument, match="use str"):
            w1.shards("s", [Path("a")])
        with pytest.raises(InvalidArgument, match="list of shard descriptions"):
            w1.shards("s", "abc")
        with pytest.raises(InvalidArgument, match="epochs"):
            w1.shards("s", shards, epochs=0)
        # leaving the loop early gives the held shard back
        for first in w1.shards("s", shards, epochs=2):
            assert (first.index, first.epoch, first.data) == (0, 0, [0, 13])
            break
        with pytest.raises(InvalidArgument, match="differs"):
            next(iter(w2.shards("s", shards[:4])))
        seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

        def run(name: str, w: ps.Worker) -> None:
            for shard in w.shards("s", [tuple(r) for r in shards], epochs=2):  # tuples travel as lists
                t_w = w.table("n", dtype="int64")
                t_w.push([shard.task], np.ones(1, dtype=np.int64))  # waited for before the report
                seen[name].append((shard.index, shard.epoch))

        threads = [threading.Thread(target=run, args=("a", w1)), threading.Thread(target=run, args=("b", w2))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        both = sorted(seen["a"] + seen["b"])
        assert both == sorted((i, e) for i in range(8) for e in range(2))
        np.testing.assert_array_equal(t.pull(np.arange(16, dtype=np.uint64)).ravel(), np.ones(16))
        assert w1.stats()["shards"]["s"] + w2.stats()["shards"]["s"] == 16
        # a finished set ends at once for anyone
        assert list(w2.shards("s", shards, epochs=2)) == []
        w1.close()
        w2.close()


# ====================================================================== real processes
def _wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, f"a worker exited early with code {p.returncode}"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout:g} s"
        time.sleep(0.02)
    return path.read_text()


def _worker(address: str, name: str, out: Path, n: int, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, SCRIPT, address, name, str(out), str(n), *flags],
                            stdout=subprocess.PIPE, text=True)


def _done(stdout: str) -> list[int]:
    return [int(x) for x in re.findall(r"^done (\d+)$", stdout, re.M)]


@pytest.mark.cluster
def test_killed_worker_shard_is_reassigned_and_every_shard_is_processed_once(
        fast_env: dict[str, str], tmp_path: Path) -> None:
    """A fixed job of 3 workers; one is killed while it holds a shard, before pushing for it."""
    n = 12
    with ps.LocalCluster(servers=2, workers=3, env=fast_env) as cluster:
        victim = _worker(cluster.address, "victim", tmp_path, n, "--hold")
        others: list[subprocess.Popen[str]] = []
        try:
            held = int(_wait_for(tmp_path / "victim.holding", [victim]))
            others = [_worker(cluster.address, name, tmp_path, n) for name in ("a", "b")]
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
            outs = [p.communicate(timeout=240)[0] for p in others]
        finally:
            for p in [victim, *others]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert [p.returncode for p in others] == [0, 0], outs
        done = [_done(o) for o in outs]
        assert sorted(done[0] + done[1]) == list(range(n))  # each shard processed exactly once
        assert held in done[0] + done[1]  # the victim's shard was done by another worker
        for o in outs:  # both saw the finished table: one push per shard, no more, no less
            assert f"sums {[1] * n}" in o
        # the job ended by itself: the survivors said goodbye, the dead worker counted as gone
        assert cluster._procs[0].popen.wait(timeout=30) == 0


@pytest.mark.cluster
def test_a_worker_that_joins_late_gets_work(fast_env: dict[str, str], tmp_path: Path) -> None:
    n = 6
    with ps.LocalCluster(servers=1, env=fast_env) as cluster:  # dynamic number of workers
        # the first worker holds shard 0 until the second has a shard: the late one must get work
        first = _worker(cluster.address, "first", tmp_path, n, "--wait-for", str(tmp_path / "late.first"))
        late: subprocess.Popen[str] | None = None
        try:
            assert _wait_for(tmp_path / "first.first", [first]) == "0"
            late = _worker(cluster.address, "late", tmp_path, n)
            outs = [p.communicate(timeout=240)[0] for p in (first, late)]
        finally:
            for p in [first, late]:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        assert [first.returncode, late.returncode] == [0, 0], outs
        done = [_done(o) for o in outs]
        assert done[0][0] == 0 and done[1] and sorted(done[0] + done[1]) == list(range(n))
        sh = cluster.status()["shards"]["train"]
        assert sh["done"] == sh["total"] == n and len(sh["done_by"]) == 2 and sh["reassigned"] == 0
        with ps.connect(cluster.address) as w:
            got = w.table("processed", dtype="int64").pull(np.arange(n, dtype=np.uint64)).ravel()
            assert got.tolist() == [1] * n
