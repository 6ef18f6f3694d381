"""Worker management, the paper's task scheduler: data shards handed out to workers.

A *shard set* is a named list of shard descriptions (file paths, ``[start, stop)`` row
ranges, any msgpack value) to be processed ``epochs`` times. Each (epoch, shard) pair is a
*task*, numbered ``epoch * len(shards) + index``. Workers ask for tasks with ``Op.TASK``;
:class:`ShardManager` answers with the next pending task, ``wait`` (nothing pending, but
tasks are still running on live workers: one of them may die) or ``finished`` (every task
done). A worker reports a task done in the request that asks for its next one.

This module is a pure state machine like :class:`SchedulerCore`: no sockets, no clock of
its own (``now`` is passed in). The core calls :meth:`ShardManager.on_task` for each TASK
request and :meth:`ShardManager.worker_gone` when a worker dies or says goodbye.

Invariants:

* Every task is in exactly one state: pending (in the set's ``pending`` heap), running
  (``worker`` is the node that holds it, ``since`` when it got it) or done (``worker`` is
  the node that finished it).
* A task becomes done at most once, and only on a report from the worker that holds it;
  a repeated report of a task already done by the same worker is ignored. So every task is
  completed exactly once, however workers die, leave, join or repeat themselves.
* Pending tasks are handed out lowest number first, so a task given back by a dead worker
  goes before the tasks never handed out, and epoch e before epoch e + 1.
* A set is ``finished`` only when every task is done; while any task runs, idle workers
  are told to ``wait`` (and ask again) so that they can take over if its holder dies.

Not thread-safe: the scheduler calls it from its one receive thread.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .._config import WORKER_FAILURE_POLICIES
from .._errors import InvalidArgument, ProtocolError
from ..protocol import TaskReply, TaskRequest

__all__ = ["WORKER_FAILURE_POLICIES", "ShardManager", "ShardSet"]

log = logging.getLogger("paramserver.scheduler")

PENDING, RUNNING, DONE = "pending", "running", "done"


@dataclass
class _Task:
    state: str = PENDING
    worker: int = -1  # the holder while running, the finisher once done
    since: float = 0.0  # when it was handed out (read only while running)


@dataclass
class ShardSet:
    """One named shard set and the state of each of its tasks. See the module docstring."""

    name: str
    shards: list[Any]
    epochs: int
    tasks: list[_Task] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # a heap of task numbers
    done_by: Counter[int] = field(default_factory=Counter)  # worker -> tasks it finished
    reassigned: int = 0  # tasks given back by workers that died or left holding them
    n_done: int = 0

    def __post_init__(self) -> None:
        total = len(self.shards) * self.epochs
        self.tasks = [_Task() for _ in range(total)]
        self.pending = list(range(total))  # sorted, hence already a heap

    @property
    def total(self) -> int:
        return len(self.tasks)

    @property
    def finished(self) -> bool:
        return self.n_done == self.total

    def running(self) -> list[int]:
        return [i for i, t in enumerate(self.tasks) if t.state == RUNNING]

    def progress(self) -> dict[str, int]:
        pending = len(self.pending)
        return {"total": self.total, "done": self.n_done, "running": self.total - self.n_done - pending,
                "pending": pending}

    def task_body(self, task: int) -> TaskReply:
        """The reply that hands ``task`` out: its number, shard index and epoch."""
        n = len(self.shards)
        return TaskReply(state="task", task=task, shard=task % n, epoch=task // n, progress=self.progress())

    def give_back(self, task: int) -> None:
        """Return a running task to the pending heap."""
        t = self.tasks[task]
        t.state, t.worker, t.since = PENDING, -1, 0.0
        heapq.heappush(self.pending, task)


class ShardManager:
    """Every shard set of the job; see the module docstring.

    Parameters
    ----------
    worker_failure:
        ``"auto"``, ``"abort"`` or ``"continue"``: whether a fixed-size job survives the
        death of a worker (:meth:`job_survives_worker_death`).
    """

    def __init__(self, worker_failure: str = "auto") -> None:
        if worker_failure not in WORKER_FAILURE_POLICIES:
            raise InvalidArgument(f"worker_failure must be one of {WORKER_FAILURE_POLICIES}, got {worker_failure!r}")
        self.worker_failure = worker_failure
        self.sets: dict[str, ShardSet] = {}

    # ------------------------------------------------------------------ policy
    def job_survives_worker_death(self) -> bool:
        """True if a fixed-size job goes on when one of its workers dies.

        ``continue``: always; ``abort``: never; ``auto``: if shard sets are in use, since
        the dead worker's shards then go to the others and nothing is lost.
        """
        if self.worker_failure == "auto":
            return bool(self.sets)
        return self.worker_failure == "continue"

    # ------------------------------------------------------------------ requests
    def on_task(self, worker: int, body: dict[str, Any], now: float) -> dict[str, Any]:
        """Handle one TASK request of ``worker``; return the reply body.

        Request body (:class:`TaskRequest` on the wire): ``set`` (name); ``shards`` and ``epochs`` to declare the set (the
        first request of each iteration over it); ``done`` (a task number or None): the
        task this worker finished; ``release`` (bool): give ``done`` back unfinished
        instead, and ask for nothing.

        Reply body (:class:`TaskReply` on the wire): ``state`` is ``"task"`` (with ``task``, ``shard``, ``epoch``),
        ``"wait"``, ``"finished"`` or ``"released"``; ``progress`` counts the set's tasks.

        Raises
        ------
        ProtocolError
            A field is missing or of the wrong type.
        InvalidArgument
            Unknown set, a declaration that differs from the first one, a task number out
            of range, or a report about a task this worker does not hold.
        """
        req = TaskRequest.from_wire(body)
        name = req.set
        if req.shards is not None:
            sset = self._declare(name, req.shards, req.epochs)
        else:
            found = self.sets.get(name)
            if found is None:
                raise InvalidArgument(f"no shard set named {name!r}: declare it first (Worker.shards(name, shards))")
            sset = found
        done, release = req.done, req.release
        if done is not None:
            if release:
                self._release(sset, worker, done)
                return TaskReply(state="released", progress=sset.progress()).to_wire()
            self._complete(sset, worker, done)
        elif release:
            raise ProtocolError("a release names the task given back in 'done'")
        return self._next(sset, worker, now).to_wire()

    def _declare(self, name: str, shards: list[Any], epochs: int) -> ShardSet:
        if not shards:
            raise InvalidArgument(f"shard set {name!r}: the list of shards is empty")
        if epochs < 1:
            raise InvalidArgument(f"shard set {name!r}: epochs must be >= 1, got {epochs}")
        sset = self.sets.get(name)
        if sset is None:
            sset = self.sets[name] = ShardSet(name, shards, epochs)
            log.info("shard set %r: %d shards x %d epochs", name, len(shards), epochs)
            return sset
        if sset.epochs != epochs or sset.shards != shards:
            raise InvalidArgument(
                f"shard set {name!r} was declared with {len(sset.shards)} shards and {sset.epochs} epochs; "
                f"this declaration ({len(shards)} shards, {epochs} epochs) differs: every worker must "
                f"declare the same list of shards (or use another name)")
        return sset

    def _held(self, sset: ShardSet, worker: int, task: int) -> _Task | None:
        """The task, if ``worker`` holds it; None if it already finished it (a repeat)."""
        if not 0 <= task < sset.total:
            raise InvalidArgument(f"shard set {sset.name!r} has no task {task} (it has {sset.total})")
        t = sset.tasks[task]
        if t.worker == worker and t.state in (RUNNING, DONE):
            return t if t.state == RUNNING else None
        holder = f"done by node {t.worker}" if t.state == DONE else (
            f"held by node {t.worker}" if t.state == RUNNING else "pending")
        raise InvalidArgument(f"task {task} of shard set {sset.name!r} is not held by node {worker}: it is {holder}")

    def _complete(self, sset: ShardSet, worker: int, task: int) -> None:
        t = self._held(sset, worker, task)
        if t is None:
            log.debug("shard set %r: task %d reported done again by node %d; ignored", sset.name, task, worker)
            return
        t.state = DONE
        sset.n_done += 1
        sset.done_by[worker] += 1
        if sset.finished:
            log.info("shard set %r: all %d tasks done", sset.name, sset.total)

    def _release(self, sset: ShardSet, worker: int, task: int) -> None:
        if self._held(sset, worker, task) is not None:
            sset.give_back(task)

    def _next(self, sset: ShardSet, worker: int, now: float) -> TaskReply:
        if sset.pending:
            task = heapq.heappop(sset.pending)
            t = sset.tasks[task]
            t.state, t.worker, t.since = RUNNING, worker, now
            return sset.task_body(task)
        if sset.finished:
            return TaskReply(state="finished", progress=sset.progress())
        return TaskReply(state="wait", progress=sset.progress())

    def restore(self, name: str, shards: list[Any], epochs: int, done: dict[int, int], running: dict[int, int],
                now: float) -> None:
        """A restarted scheduler takes set ``name`` back as its workers report it: tasks
        ``done`` (task -> the worker that finished it) and ``running`` (task -> holder);
        every other task is pending. Task numbers out of range are ignored."""
        sset = self._declare(name, shards, epochs)
        for task, worker in done.items():
            if 0 <= task < sset.total and sset.tasks[task].state != DONE:
                sset.tasks[task] = _Task(DONE, worker)
                sset.n_done += 1
                sset.done_by[worker] += 1
        for task, worker in running.items():
            if 0 <= task < sset.total and sset.tasks[task].state == PENDING:
                sset.tasks[task] = _Task(RUNNING, worker, now)
        sset.pending = [t for t, task in enumerate(sset.tasks) if task.state == PENDING]  # sorted: a heap
        log.info("shard set %r restored: %s", name, sset.progress())

    # ------------------------------------------------------------------ membership
    def worker_gone(self, worker: int, now: float) -> list[tuple[str, int]]:
        """``worker`` died or left: the tasks it held go back to pending, first in line.

        Returns the (set, task) pairs given back. Tasks it finished stay done.
        """
        back: list[tuple[str, int]] = []
        for sset in self.sets.values():
            for task, t in enumerate(sset.tasks):
                if t.state == RUNNING and t.worker == worker:
                    sset.give_back(task)
                    sset.reassigned += 1
                    back.append((sset.name, task))
        if back:
            log.warning("node %d left holding %s; given to the next worker that asks",
                        worker, ", ".join(f"task {task} of {name!r}" for name, task in back))
        return back

    # ------------------------------------------------------------------ status
    def status(self, now: float) -> dict[str, Any]:
        """Per set: shard and task counts, running tasks (holder, seconds), tasks per worker."""
        out: dict[str, Any] = {}
        for name, sset in self.sets.items():
            out[name] = {
                "shards": len(sset.shards),
                "epochs": sset.epochs,
                **sset.progress(),
                "reassigned": sset.reassigned,
                "running_on": {str(i): [sset.tasks[i].worker, round(now - sset.tasks[i].since, 3)]
                               for i in sset.running()},
                "done_by": {str(w): n for w, n in sorted(sset.done_by.items())},
            }
        return out
