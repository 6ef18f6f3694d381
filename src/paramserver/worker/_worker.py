"""The worker role: the user's process joined to the cluster.

:func:`connect` registers this process with the scheduler and returns a :class:`Worker`,
through which the user declares tables and pushes and pulls. A worker is a node of its own
(one bound socket, one receive thread); its requests are asynchronous and complete on the
receive thread.

Thread-safety: a Worker and its Tables may be used from several user threads at once.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from .._config import Config, parse_address
from .._errors import InvalidArgument, ProtocolError, PSError
from ..clock import Consistency
from ..node import DEFAULT_GROUP, Node, choose_host, process_info
from ..protocol import Barrier, Bye, Message, Op, PolicyRequest, PolicyUpdate, RegisterReply, TableDeclare, TableReply
from ..table import Initializer, TableSpec, Updater
from ..transport import Transport
from ._checkpoint import Periodic, request_checkpoint
from ._roles import NODE_ROLES, become_node
from ._session import Session, wait_result
from ._shards import Shard, iterate_shards, row_shards
from ._table import Table

__all__ = ["Worker", "connect", "open_workers"]

log = logging.getLogger("paramserver.worker")

_open: weakref.WeakSet[Worker] = weakref.WeakSet()


def open_workers() -> list[Worker]:
    """Workers of this process that are not closed yet."""
    return [w for w in list(_open) if not w.closed]


def _crash() -> Bye:
    """The goodbye of a program that is ending: a crash if an exception ended it (the
    interpreter keeps the uncaught exception in ``sys.last_value`` before exit handlers run)."""
    exc = getattr(sys, "last_value", None)
    if isinstance(exc, BaseException) and not isinstance(exc, SystemExit):
        return Bye(error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                   code=130 if isinstance(exc, KeyboardInterrupt) else 1)
    return Bye()


@atexit.register
def _close_at_exit() -> None:
    """A program that ends without ``close()`` still says goodbye (and flushes held-back
    updates), so that its job ends cleanly instead of waiting for a missing heartbeat; a
    program that an exception ended says that it crashed, and with what."""
    bye = _crash()
    for w in open_workers():
        try:
            w._close(2.0, bye)
        except Exception:  # the interpreter is going away; nothing else to do
            pass


class Worker:
    """A worker node in this process. Create it with :func:`connect`.

    Attributes
    ----------
    id:
        The node id the scheduler gave it.
    rank:
        Its rank among the workers of its group, 0-based: in a fixed job the launcher's
        PS_WORKER_RANK (``0 <= rank < num_workers``, unique); in a dynamic job the lowest rank
        free when it joined (a rank of a worker that left is given again), so ranks need not
        be dense.
    num_workers:
        Workers in its group (the job's, for the default group: DMLC_NUM_WORKER, ``paramserver
        launch -w``), or 0 if it has no fixed number (``LocalCluster()`` without ``workers``).
        Split data with :meth:`rows` or :meth:`shards`, which work in both.
    group:
        The worker group it belongs to (``"default"`` unless it named one; docs/groups.md).
    address:
        The scheduler's address.
    """

    def __init__(self, node: Node, reply: Message, address: str) -> None:
        self._node = node
        self.address = address
        self.id = node.id
        answer = RegisterReply.from_wire(reply.body)
        if answer.rank is None or answer.num_workers is None:
            raise ProtocolError("the scheduler's registration answer names no rank for this worker")
        self.rank = answer.rank
        self.num_workers = answer.num_workers
        self.group = answer.group or DEFAULT_GROUP
        self._tables: dict[str, Table] = {}
        self._by_id: dict[int, Table] = {}
        self._lock = threading.Lock()
        self._session = Session(node)
        self._clock_lock = threading.Lock()  # one advance at a time
        self._started = time.monotonic()
        # the registration wait (for every server to join) is not idle time of the job
        self._wait_ns_at_start = node.counters.get("wait_ns", 0)
        self._shards_done: Counter[str] = Counter()  # shard set -> shards this worker finished
        self._periodic = Periodic(self._session, self.rank, node.config)
        self._process = psutil.Process()  # this process's memory, in heartbeat reports
        node.on(Op.POLICY, self._on_policy)
        node.heartbeats.body = self._heartbeat
        #: What a restarted scheduler learns from this worker (node/_rejoin.py): declarations,
        #: shard progress per set ({set, shards, epochs, done, running}), barrier rounds passed.
        self._declared: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        self._rounds: dict[str, int] = {}
        node.scheduler.report = self._rejoin_report
        _open.add(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"connected to {self.address}"
        group = f" group={self.group!r}" if self.group != DEFAULT_GROUP else ""
        return f"<Worker id={self.id} rank={self.rank}{group} {state}>"

    @property
    def closed(self) -> bool:
        return self._session.closed

    @property
    def requests(self) -> int:
        """Requests this worker has sent."""
        return self._session.requests

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        self._session.check_open()

    def _on_policy(self, msg: Message) -> None:
        policy = Consistency.from_wire(PolicyUpdate.from_wire(msg.body).policy)
        table = self._by_id.get(msg.table)
        if table is not None:
            table.policy = policy
        self._node.reply(msg)

    # ------------------------------------------------------------------ API
    def table(
        self,
        name: str,
        width: int = 1,
        dtype: Any = "float32",
        updater: str | Updater | type[Updater] = "sum",
        init: str | Initializer = "zeros",
        *,
        updater_args: dict[str, Any] | None = None,
        init_args: dict[str, Any] | None = None,
        consistency: str | Consistency | None = None,
        tau: int | None = None,
        aggregate: bool = False,
        snapshots: int = 0,
        filters: list[Any] | None = None,
        readonly: bool = False,
        writers: Sequence[str] | None = None,
        admit_after: int = 0,
        admit_prob: float = 1.0,
        ttl: int = 0,
        capacity: int = 0,
        timeout: float | None = None,
    ) -> Table:
        """Declare the table ``name`` (or attach to it if it exists with the same spec).

        Parameters
        ----------
        name:
            The table's name, shared by every worker.
        width:
            Values per key (1 for a weight vector, d for d-dimensional embeddings).
        dtype:
            Value dtype: float16/32/64 or a (u)int8/16/32/64.
        updater:
            How servers apply pushes: ``"sum"`` (default), ``"assign"``, ``"sgd"``,
            ``"adagrad"``, ``"adam"``, ``"ftrl"``, ``"max"``, ``"min"``, an
            :class:`Updater` object (``paramserver.SGD(lr=0.1)``) or ``"pkg.module:Name"``.
        init:
            Values of keys never pushed: ``"zeros"`` (default), ``"normal"``,
            ``"uniform"``, ``"constant"``, or an initializer object
            (``paramserver.Normal(std=0.01, seed=1)``).
        updater_args, init_args:
            Keyword parameters when ``updater`` / ``init`` are given by name.
        consistency, tau:
            The table's consistency model: ``"eventual"`` (default), ``"sequential"``, or
            ``"bounded"`` with delay ``tau`` (``tau=`` alone means bounded). It applies when
            this declaration creates the table; an existing table keeps its model (see
            :meth:`set_consistency`).
        aggregate:
            If True, the servers sum the pushes of each iteration and apply the sum once,
            with the updater, when every live worker has finished that iteration (the
            paper's server-side aggregation): with ``tau=0`` this is exact bulk synchronous
            training. Without it, each push is applied on arrival and a bounded-delay pull
            may already see pushes newer than it waited for.
        snapshots:
            With ``aggregate=True``: the servers keep the table as it was after each of the
            last ``snapshots`` finished iterations, and ``pull(keys, snapshot=t)`` reads it
            after iteration ``t`` (the same cut on every server), e.g. for a reader that
            serves a model consistent across keys while training goes on.
        filters:
            This worker's filters for the table (``paramserver.filters``): push filters
            (significantly-modified, random skip, KKT) and wire filters (key caching, zero
            suppression, fixed-point, compression; value filters also apply to the
            servers' replies to this worker's pulls).
        readonly:
            Attach only to read the table: this worker never counts in its clocks,
            aggregation or bounded delay (it sends no clock ticks), its pushes are refused
            (:class:`ReadOnlyError`, here and on the servers), and its pulls read with
            eventual consistency unless a call asks for another model.
        writers:
            For a table in a namespace (``"ns/name"``): the worker groups that may write
            the namespace, fixed by the first declaration that names them; a worker of
            another group may then attach to its tables with ``readonly=True`` only.
        admit_after, admit_prob:
            Admission of new keys on the servers: a key gets a trained row from its
            ``admit_after``-th push on (earlier pushes are counted and dropped), and only
            with probability ``admit_prob`` (decided once per key, the same everywhere).
        ttl, capacity:
            Eviction on the servers: a row untouched for more than ``ttl`` iterations is
            gone (reads as the initial values); a server holds at most ``capacity`` rows of
            the table, freeing the least recently touched first (docs/torch.md, "Row lifecycle").

        Raises
        ------
        TableError
            The table exists with another spec.
        ReadOnlyError
            A writable declaration in a namespace this worker's group may not write.
        DTypeError, InvalidArgument, ConfigError
            The spec is invalid (checked before anything is sent).
        """
        spec = TableSpec.create(name, width, dtype, updater, init, updater_args, init_args, aggregate, snapshots,
                                admit_after=admit_after, admit_prob=admit_prob, ttl=ttl, capacity=capacity)
        policy = Consistency.of(consistency, tau) or Consistency()
        self._check_open()
        with self._lock:
            existing = self._tables.get(name)
        if not isinstance(readonly, bool):
            raise InvalidArgument(f"readonly must be True or False, got {readonly!r}")
        if isinstance(writers, str):
            raise InvalidArgument("writers must be a list of group names, not a string")
        if existing is not None:
            existing.spec.check_compatible(spec)
            if existing.readonly != readonly:
                raise InvalidArgument(f"table {name!r} is attached {'read-only' if existing.readonly else 'writable'} "
                                      f"by this worker already")
            return existing
        body = TableDeclare(spec=spec.to_wire(), policy=policy.to_wire(), readonly=readonly,
                            writers=list(writers) if writers is not None else None).to_wire()
        reply = self._node.scheduler.call(Op.TABLE, body, f"declaring table {name!r}", timeout)
        declared = TableReply.from_wire(reply.body)
        with self._lock:
            self._declared[name] = {**body, "id": declared.id}
        table = Table(self._session, declared.id, spec, Consistency.from_wire(declared.policy), filters,
                      readonly=readonly)
        with self._lock:
            if name in self._tables:
                return self._tables[name]
            self._tables[name] = table
            self._by_id[table.id] = table
        if not readonly:
            # Join the table's channels on every server: from now on this worker's clock counts
            # in the table's aggregation status (bounded delay waits for it). A reader never does.
            table.tick(self.clock - 1, wait=True)
        return table

    def barrier(self, group: str = "workers", *, timeout: float | None = None) -> None:
        """Block until every worker (or every node of ``group``) has called barrier.

        Parameters
        ----------
        group:
            ``"workers"`` (default) or ``"all"`` (workers and servers).
        timeout:
            Seconds to wait at most (PS_TIMEOUT if None).
        """
        self._check_open()
        key = ("workers" if self.group == DEFAULT_GROUP else f"workers/{self.group}") if group == "workers" else group
        seq = self._rounds[key] + 1 if key in self._rounds else 0
        reply = self._node.scheduler.call(Op.BARRIER, Barrier(group=group, seq=seq).to_wire(),
                                          f"barrier of the {group}", timeout)
        passed = reply.body.get("round")
        if type(passed) is int:
            with self._lock:
                self._rounds[key] = passed

    def shards(self, name: str, shards: Sequence[Any], *, epochs: int = 1,
               timeout: float | None = None) -> Iterator[Shard]:
        """Iterate over the data shards the scheduler hands to this worker (docs/shards.md).

        ``for shard in w.shards("train", files): process(shard.data)``. Every worker of the
        job declares the same ``shards`` list (file paths, ``[start, stop]`` row ranges
        from :func:`paramserver.row_shards`, any str/number/list/dict); each shard of each
        of the ``epochs`` passes is processed by exactly one worker. A shard is done when
        the loop asks for the next one, after this worker's requests in flight finished;
        leaving the loop early gives the held shard back. The shards of a worker that dies
        or closes go to the others; a worker that joins late gets the shards left. The
        loop ends once every shard is done, waiting meanwhile if others hold the last ones.

        Raises
        ------
        InvalidArgument
            Bad arguments, or another worker declared ``name`` with a different list.
        """
        def call(body: dict[str, Any]) -> dict[str, Any]:
            self._check_open()
            reply = self._node.scheduler.call(Op.TASK, body, f"shard set {name!r}", timeout).body
            self._track_task(body, reply)
            return reply

        def done(shard: Shard) -> None:
            with self._lock:
                self._shards_done[shard.set] += 1

        return iterate_shards(call, self.wait_all, name, shards, epochs=epochs, on_done=done)

    def rows(self, n_rows: int, *, name: str = "rows", shards: int = 0, epochs: int = 1,
             timeout: float | None = None) -> Iterator[slice]:
        """This worker's share of rows ``0..n_rows``, as slices: ``for s in w.rows(len(y)):
        train(X[s], y[s])``. Works in fixed and in dynamic jobs.

        * Fixed job (:attr:`num_workers` > 0: ``paramserver launch``, DMLC_NUM_WORKER): the
          contiguous block ``row_shards(n_rows, num_workers)[rank]``, once per epoch, with no
          message to the scheduler. The blocks of all ranks cover every row exactly once.
        * Dynamic job (:attr:`num_workers` == 0, where ``X[rank::num_workers]`` would fail):
          the ranges of ``row_shards(n_rows, shards or 16)`` handed out by the scheduler
          (:meth:`shards` with set ``name``), so every row is processed exactly once per
          epoch however many workers come, go or die.

        Every worker must call it with the same ``n_rows``, ``name``, ``shards`` and ``epochs``.
        """
        if self.num_workers > 0:
            start, stop = row_shards(n_rows, self.num_workers)[self.rank]
            for _ in range(epochs):
                yield slice(start, stop)
            return
        for shard in self.shards(name, row_shards(n_rows, shards or 16), epochs=epochs, timeout=timeout):
            start, stop = shard.data
            yield slice(int(start), int(stop))

    def wait(self, ts: int, timeout: float | None = None) -> None:
        """Wait for this worker's request with timestamp ``ts``; return at once if it is done."""
        req = self._node.pending_request(ts)
        if req is not None:
            req.wait(timeout)

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every request of this worker that is still in flight (periodic
        checkpoints included)."""
        for table in list(self._tables.values()):
            for req in table.in_flight():
                req.wait(timeout)
        for req in self._periodic.pending():
            req.wait(timeout)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, path: str | os.PathLike[str], *, iteration: int | None = None, block: bool = True,
                   timeout: float | None = None) -> Any:
        """Write every server's master ranges of every table to ``path`` at a consistent cut.

        ``path`` is a directory (created if needed; must be reachable by the servers under
        the same name, e.g. on the same machine or a shared file system) or an fsspec URL.
        The cut is ``iteration`` (default ``clock - 1``, the last iteration this worker
        finished): each server writes once every live worker has finished that iteration
        on its ranges and this worker's pushes sent before the call are applied; pushes of
        later iterations that reach a server after the request are applied after the write.
        With ``w.advance(); if w.rank == 0: w.checkpoint(path); w.barrier()`` in every
        worker the checkpoint holds exactly the pushes of iterations ``<= iteration``; see
        docs/checkpoints.md for the layout and the guarantees under each consistency model.

        Returns the manifest (a dict, also written as ``path/manifest.json``), or with
        ``block=False`` a :class:`Request` whose ``result()`` is the manifest.

        Raises
        ------
        InvalidArgument
            ``iteration`` not finished by this worker yet (it would wait for itself).
        CheckpointError
            A server or this worker could not write its files.
        RequestTimeout
            Not every live worker reached the iteration in time (PS_TIMEOUT if None).
        """
        self._check_open()
        req = request_checkpoint(self._session, path, self.clock - 1 if iteration is None else iteration, timeout)
        return wait_result(req, timeout) if block else req

    def set_clock(self, iteration: int) -> None:
        """Start counting iterations at ``iteration`` instead of 0, e.g. to resume from a
        checkpoint (``checkpoint.read_manifest(path)["iteration"] + 1``). Call it before
        declaring any table, in every worker.

        Raises
        ------
        InvalidArgument
            A table is already declared, or ``iteration`` is not an int >= 0.
        """
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise InvalidArgument(f"iteration must be an int >= 0, got {iteration!r}")
        with self._clock_lock, self._session.iteration_lock:
            if self._tables:
                raise InvalidArgument("set_clock() must be called before the first table is declared")
            self._session.clock = iteration

    # ------------------------------------------------------------------ iterations
    @property
    def clock(self) -> int:
        """The current iteration of this worker (0 at the start); requests belong to it."""
        return self._session.clock

    def advance(self) -> int:
        """Finish the current iteration: tell the servers of every table, start the next one.

        Returns at once (the clock ticks are asynchronous, sent after this iteration's
        pushes); returns the new iteration number.
        """
        self._check_open()
        session = self._session
        with self._clock_lock:
            with session.iteration_lock:  # requests issued from now on belong to the next iteration
                completed = session.clock
                session.clock = completed + 1
            tables = list(self._tables.values())
            self._periodic.on_advance(completed)  # before the ticks: the servers learn the cut first
            for table in tables:
                if not table.readonly:  # a reader sends no ticks: it never counts in the clocks
                    table.advance(completed)
            return completed + 1

    @contextlib.contextmanager
    def iteration(self) -> Iterator[int]:
        """``with w.iteration() as t:`` runs one iteration and calls :meth:`advance` at the end."""
        yield self.clock
        self.advance()

    def set_consistency(self, table: str, consistency: str | Consistency | None = None, *,
                        tau: int | None = None, timeout: float | None = None) -> Consistency:
        """Change the consistency model of ``table`` for every node, while the job runs.

        Returns when every server and worker has the new model.
        """
        policy = Consistency.of(consistency, tau)
        if policy is None:
            raise InvalidArgument("give consistency= and/or tau=")
        self._check_open()
        self._node.scheduler.call(Op.POLICY, PolicyRequest(name=table, policy=policy.to_wire()).to_wire(),
                                  f"changing the consistency of table {table!r}", timeout)
        t = self._tables.get(table)
        if t is not None:
            t.policy = policy
        return policy

    def _track_task(self, body: dict[str, Any], reply: dict[str, Any]) -> None:
        """Keep this worker's view of a shard set's progress (for a restarted scheduler)."""
        with self._lock:
            name = body.get("set")
            if not isinstance(name, str):
                return
            entry = self._tasks.get(name)
            if body.get("shards") is not None and (
                    entry is None or entry["shards"] != body["shards"] or entry["epochs"] != body.get("epochs", 1)):
                entry = self._tasks[name] = {"set": name, "shards": body["shards"], "epochs": body.get("epochs", 1),
                                             "done": [], "running": []}
            if entry is None:
                return
            done = body.get("done")
            if type(done) is int and done in entry["running"]:
                entry["running"].remove(done)
                if not body.get("release"):
                    entry["done"].append(done)
            task = reply.get("task")
            if reply.get("state") == "task" and type(task) is int:
                entry["running"].append(task)

    def _rejoin_report(self) -> dict[str, Any]:
        """This worker's REJOIN fields (runs on the node's loop; copies under the lock)."""
        with self._lock:
            tables = []
            for t in self._tables.values():
                wire = [t.id, t.spec.to_wire(), t.policy.to_wire()]
                if t.readonly:
                    wire.append([self.id])
                tables.append(wire)
            return {"tables": tables, "num_workers": self.num_workers, "declared": list(self._declared.values()),
                    "shards": [{**e, "done": list(e["done"]), "running": list(e["running"])} for e in self._tasks.values()],
                    "barriers": dict(self._rounds)}

    def stats(self) -> dict[str, Any]:
        """Counters: requests, messages and bytes, overall and per table.

        Byte counts are the lengths of the frames sent and received, headers included.
        """
        return {**self._report(), "in_flight": sum(len(t.in_flight()) for t in self._tables.values())}

    def _heartbeat(self) -> dict[str, Any]:
        """The body of this worker's heartbeats: its :meth:`stats` but requests in flight
        (it runs on the node's loop, so it takes no table's lock), its checkpoints and its
        process's resident memory."""
        try:
            report = self._report()
            report["rss"] = self._process.memory_info().rss
        except Exception:  # a report must never stop the heartbeats
            log.exception("worker %d: could not build its heartbeat report", self.id)
            return {}
        report["checkpoints"] = self._session.checkpoints
        report["checkpoint_iteration"] = self._session.checkpoint_iteration
        return {"report": report}

    def _report(self) -> dict[str, Any]:
        """What :meth:`stats` and the heartbeats share; reads no lock a user thread may hold."""
        counters, table_bytes, filter_bytes = self._node.snapshot_counters()
        tables = {}
        for name, t in list(self._tables.items()):
            filters: dict[str, dict[str, int]] = {}
            for fname, (before, after) in list(t.push_filter_bytes.items()):
                filters[fname] = {"sent_before": before, "sent_after": after}
            for (tid, direction, fname), (before, after) in filter_bytes.items():
                if tid == t.id:
                    entry = filters.setdefault(fname, {})
                    entry[f"{direction}_before"] = before
                    entry[f"{direction}_after"] = after
            tables[name] = {
                "filters": filters,
                "id": t.id,
                "pushes": t.pushes,
                "pulls": t.pulls,
                "keys_pushed": t.keys_pushed,
                "keys_pulled": t.keys_pulled,
                "bytes_sent": table_bytes.get((t.id, "sent"), 0),
                "bytes_received": table_bytes.get((t.id, "received"), 0),
            }
        elapsed = time.monotonic() - self._started
        wait = (counters.get("wait_ns", 0) - self._wait_ns_at_start) / 1e9
        return {
            "node": self.id,
            "rank": self.rank,
            "iteration": self.clock,
            "requests": self.requests,
            "resends": counters.get("resends", 0),
            "reroutes": counters.get("reroutes", 0),
            "seconds": elapsed,
            "wait_seconds": wait,
            "idle_fraction": wait / elapsed if elapsed > 0 else 0.0,
            "messages_sent": counters.get("messages_sent", 0),
            "messages_received": counters.get("messages_received", 0),
            "bytes_sent": counters.get("bytes_sent", 0),
            "bytes_received": counters.get("bytes_received", 0),
            "tables": tables,
            "shards": dict(self._shards_done),
        }

    def close(self, timeout: float = 5.0) -> None:
        """Say goodbye to the scheduler and close. Idempotent.

        Requests still in flight fail with :class:`ClosedError`; call :meth:`wait_all`
        first to let them finish.
        """
        self._close(timeout, Bye())

    def _close(self, timeout: float, bye: Bye) -> None:
        """:meth:`close`, with the goodbye ``bye`` (which may report a crash)."""
        if self.closed:
            return
        if self._node.aborted is None:
            try:  # what push filters held back is delivered, not lost
                for table in list(self._tables.values()):
                    for req in table.flush():
                        req.wait(timeout)
            except PSError as exc:
                log.warning("worker %d: could not flush held-back updates: %s", self.id, exc)
            for req in self._periodic.pending():  # a periodic checkpoint under way is completed
                try:
                    req.wait(timeout)
                except PSError as exc:
                    log.warning("worker %d: periodic checkpoint not completed: %s", self.id, exc)
        self._session.closed = True
        node = self._node
        if node.aborted is None:
            try:
                node.scheduler.call(Op.BYE, bye.to_wire(), "goodbye", timeout)
            except PSError as exc:
                log.debug("worker %d: goodbye not acknowledged: %s", self.id, exc)
        node.close(linger=1.0)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None and not session.closed:
            try:
                self._node.close(linger=0)
            except Exception:
                pass


def connect(address: str | None = None, *, timeout: float | None = None,
            config: Config | None = None, transport: Transport | None = None,
            group: str | None = None, group_workers: int | None = None,
            keys: str | os.PathLike[str] | None = None) -> Worker:
    """Join the cluster whose scheduler is at ``address`` as a worker.

    Parameters
    ----------
    address:
        ``host:port`` or ``tcp://host:port``; if None, read from the environment
        (PS_SCHEDULER, or DMLC_PS_ROOT_URI and DMLC_PS_ROOT_PORT, as set by the launcher).
    timeout:
        Seconds to wait for the scheduler (PS_CONNECT_TIMEOUT if None). A registration that
        waits (no scheduler yet, or a job still waiting for its servers) logs one warning
        after a few seconds that says what it waits for.
    group:
        The worker group to join (PS_GROUP if None; empty: the default group). Ranks,
        ``barrier()``, data shards and the end are per group (docs/groups.md).
    group_workers:
        The size of a named group (PS_GROUP_WORKERS if None; 0: any number of workers).
    keys:
        The cluster's key directory (PS_KEYS if None; see ``paramserver keygen``); this
        host needs its ``*.key`` files and ``worker.key_secret``.

    Under ``DMLC_ROLE=scheduler`` or ``DMLC_ROLE=server`` (ps-lite's launchers start the same
    script in every role) this call does not return: the process becomes that node and
    exits with the job's code when the job ends (docs/deploy.md).

    Raises
    ------
    ConnectError
        No scheduler answered in time, or the job did not start in time; the message names
        the address and, if the scheduler answered, what the job waits for.
    ConfigError
        No address given and none in the environment.
    """
    cfg = config or Config.from_env()
    if keys is not None:
        cfg = dataclasses.replace(cfg, keys=os.fspath(keys))
    if cfg.role in NODE_ROLES and transport is None:
        become_node(cfg, parse_address(address) if address else None)
    addr = parse_address(address) if address else cfg.scheduler_address()
    name = cfg.group if group is None else group
    size = cfg.group_workers if group_workers is None else group_workers
    if not isinstance(name, str):
        raise InvalidArgument(f"group must be a string, got {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"group_workers must be an int >= 0, got {size!r}")
    named = {"group": name, "group_workers": size} if name not in ("", DEFAULT_GROUP) else {}
    node = Node("worker", cfg, transport)
    node.start(cfg.bind_host() or choose_host(addr), cfg.port)
    try:
        reply = node.register(
            addr,
            {"role": "worker", "address": node.address, "rank": cfg.worker_rank, **named, **process_info()},
            timeout=cfg.connect_timeout if timeout is None else timeout,
            limit="PS_CONNECT_TIMEOUT" if timeout is None else "the timeout argument",
        )
    except BaseException:
        node.close(linger=0)
        raise
    node.start_heartbeats()
    return Worker(node, reply, addr)
