"""The server role's I/O shell: the node's messages into :class:`ServerState`, its actions
out through the node.

A server holds one :class:`Store` per table for the key ranges it masters under the current
key map. All the logic (checks, ordering, exactly-once, replication plans, aggregation,
held pulls, the checkpoint gate, migrations) is the pure state machine of ``_state.py``;
this shell registers one handler per op with the node, passes each request to
``ServerState.handle(msg, now)`` and performs the actions it returns, in order: replies,
requests to other servers (whose ends it feeds back with ``ServerState.answered``), key-map
adoption, wake-ups and checkpoint files.

Thread-safety: everything runs on the node's receive thread (handlers, request callbacks,
timers); :meth:`Server.status` may be called from there too. Nothing else touches the state.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

from .._errors import CheckpointError, InvalidArgument, PSError
from ..clock import Consistency, RangeClock, Request
from ..node import Node
from ..placement import ranges_to_wire
from ..protocol import Message, Op, Status, StatusRequest
from ..table import Store, TableSpec, parse_modules
from ._actions import Action, Adopt, Call, Fail, Moved, Reply, Wake, WriteCheckpoint
from ._checkpoint import Restorer, write_checkpoint
from ._crashpoint import CrashPoint
from ._state import ServerState
from ._sync import TableSync

__all__ = ["Server"]

log = logging.getLogger("paramserver.server")

#: Requests whose first array is a key list (PS_MAX_KEYS bounds it before any work is done).
_KEYED = frozenset({Op.PUSH, Op.PULL, Op.REPLICATE, Op.MIGRATE})

_OPS = (Op.TABLE, Op.PUSH, Op.PULL, Op.PULL_RANGE, Op.CLOCK, Op.POLICY, Op.REPLICATE, Op.CHECKPOINT, Op.MIGRATE)


class Server:
    """Handlers of a server node. Construct, then ``node.start(...)`` and register."""

    def __init__(self, node: Node, restore: str | None = None) -> None:
        self.node = node
        #: The checkpoint tables are restored from (read now: a bad path fails at start-up).
        self.restorer = Restorer(restore, node.config.checkpoint_root) if restore else None
        self.state = ServerState(node.id, restore=self.restorer.restore if self.restorer else None,
                                 user_modules=parse_modules(node.config.updater_modules))
        self.done = threading.Event()
        #: The test hook PS_CRASH_AT (``_crashpoint.py``); None when it is off (every job but a
        #: failure test), so the request path pays nothing for it.
        self.crash = CrashPoint(node.config.crash_at, node.config.crash_once) if node.config.crash_at else None
        self.exit_reason = ""
        self._sync_node()
        for op in _OPS:
            node.on(op, self._on_request)
        node.on(Op.STATUS, self._on_status)
        node.on_abort.append(self._on_abort)
        node.on_nodes_changed.append(self._on_nodes_changed)
        node.scheduler.report = self._rejoin_report
        self._perform: dict[type, Any] = {
            Reply: self._reply, Moved: self._moved, Fail: self._fail, Call: self._call, Adopt: self._adopt,
            Wake: self._wake, WriteCheckpoint: self._write,
        }

    # ------------------------------------------------------------------ views for tests and tools
    @property
    def stores(self) -> dict[int, Store]:
        """Table id -> its store on this server."""
        return self.state.stores

    @property
    def sync(self) -> dict[int, TableSync]:
        """Table id -> its channels, records and held pulls on this server."""
        return self.state.sync

    def add_table(self, table_id: int, spec: TableSpec, policy: Consistency | None = None) -> None:
        """Create the store of a table (idempotent for an equal spec)."""
        self._sync_node()
        self.state.add_table(table_id, spec, policy)

    def add_tables(self, tables: list[Any]) -> None:
        """Create tables from ``[[id, spec, policy], ...]`` (a registration reply)."""
        self._sync_node()
        self.state.add_tables(tables)

    def _rejoin_report(self) -> dict[str, Any]:
        """What a restarted scheduler learns from this server: its tables, their consistency
        models and readers (node/_rejoin.py)."""
        state = self.state
        return {"tables": [[tid, store.spec.to_wire(), state.sync[tid].policy.to_wire(), sorted(state.sync[tid].readers)]
                           for tid, store in sorted(state.stores.items())]}

    # ------------------------------------------------------------------ events in
    def _sync_node(self) -> None:
        node, state = self.node, self.state
        if node.keymap is not state.keymap or node.id != state.id:
            state.set_keymap(node.keymap, node.id)

    def _on_request(self, msg: Message) -> None:
        node, state = self.node, self.state
        if msg.op in _KEYED and msg.arrays and len(msg.arrays[0]) > node.config.max_keys:
            raise InvalidArgument(f"{msg.op.name} of {len(msg.arrays[0]):,} keys: a message carries at most "
                                  f"{node.config.max_keys:,} (PS_MAX_KEYS); send fewer keys per request")
        if node.keymap is not state.keymap or node.id != state.id:
            state.set_keymap(node.keymap, node.id)
        crash = self.crash
        if crash is None:
            self._run(state.handle(msg, time.monotonic()))
            return
        crash.check(msg, "before", state.id, state.keymap)
        self._run(state.handle(msg, time.monotonic()))
        crash.check(msg, "after", state.id, state.keymap)

    def _on_nodes_changed(self, gone: set[int]) -> None:
        self._sync_node()
        nodes = self.node.nodes().values()
        workers = frozenset(n.id for n in nodes if n.role == "worker")
        self.state.servers = frozenset(n.id for n in nodes if n.role == "server")
        self._run(self.state.nodes_changed(workers, gone))

    def _answered(self, token: int, req: Request) -> None:
        self._sync_node()
        self._run(self.state.answered(token, req.exception(timeout=0), req.what))

    def _tick(self) -> None:
        self._sync_node()
        self._run(self.state.tick(time.monotonic()))

    # ------------------------------------------------------------------ actions out
    def _run(self, actions: list[Action]) -> None:
        perform = self._perform
        for a in actions:
            perform[type(a)](a)

    def _reply(self, a: Reply) -> None:
        if not a.filters:
            self.node.reply(a.msg, status=a.status, body=a.body, arrays=a.arrays)
            return
        try:
            codecs = tuple(self.node.encoder(n) for n in a.filters)
        except Exception as exc:
            self.node.reply_error(a.msg, exc)
            return
        self.node.reply(a.msg, status=a.status, body=a.body, arrays=a.arrays, codecs=codecs)

    def _moved(self, a: Moved) -> None:
        # the addresses of the map's servers: one may have joined after the sender's node table
        a.body["nodes"] = [n.to_wire() for n in self.node.nodes().values() if n.id in a.holders]
        self.node.reply(a.msg, status=Status.MOVED, body=a.body)

    def _fail(self, a: Fail) -> None:
        self.node.reply_error(a.msg, a.exc, with_traceback=a.with_traceback)

    def _call(self, a: Call) -> None:
        req = self.node.request({a.node: a.msg}, a.what)
        req.add_done_callback(functools.partial(self._answered, a.token))

    def _adopt(self, a: Adopt) -> None:
        self.node.adopt_keymap(a.keymap)

    def _wake(self, a: Wake) -> None:
        self.node.call_later(max(0.0, a.at - time.monotonic()), self._tick)

    def _write(self, a: WriteCheckpoint) -> None:
        try:
            body = write_checkpoint(a, self.node.id, self.node.config.checkpoint_root).to_wire()
        except Exception as exc:
            err = exc if isinstance(exc, PSError) else CheckpointError(f"writing the checkpoint failed: {exc!r}")
            log.warning("server %d: checkpoint to %r failed: %s", self.node.id, a.path, err)
            self.node.reply_error(a.msg, err, with_traceback=not isinstance(exc, PSError))
            return
        self.state.checkpoint_written(a.msg, body)
        self.node.reply(a.msg, body=body)

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Tables, key counts and bytes, and this process's memory."""
        import psutil

        node, state = self.node, self.state
        checkpoints = state.gate.status()
        if self.restorer is not None:
            checkpoints.update(self.restorer.status())
        return {
            "id": node.id,
            "pid": os.getpid(),
            "rss": psutil.Process().memory_info().rss,
            "ranges": ranges_to_wire(state.own.ranges),
            "tables": {
                str(tid): {"name": s.spec.name, "keys": state.master_keys(tid), "stored_keys": len(s),
                           "bytes": s.nbytes, "pushes": s.pushes, "pulls": s.pulls,
                           "consistency": str(state.sync[tid].policy),
                           "bytes_sent": node.table_bytes.get((tid, "sent"), 0),
                           "bytes_received": node.table_bytes.get((tid, "received"), 0),
                           "held_pulls": len(state.sync[tid].held),
                           "clocks": {str(w): _finished(ch.iters, state.own.ranges)
                                      for w, ch in state.sync[tid].channels.items()}}
                for tid, s in state.stores.items()
            },
            "duplicates": state.duplicates,
            "moved": state.moved,
            "fenced": state.replica.fenced,
            "replicated": dict(state.replicated),
            "replicated_bytes": state.replicated_bytes,
            "migrations": state.migrations.status(),
            "checkpoints": checkpoints,
            "filters": {f"{tid}/{direction}/{name}": {"before": b, "after": a}
                        for (tid, direction, name), (b, a) in dict(node.filter_bytes).items()},
            "counters": dict(node.counters),
        }

    def _on_status(self, msg: Message) -> None:
        try:
            StatusRequest.from_wire(msg.body)
        except PSError as exc:
            self.node.reply_error(msg, exc, with_traceback=False)
            return
        self.node.reply(msg, body=self.status())

    def _on_abort(self, exc: PSError) -> None:
        self.exit_reason = str(exc)
        self.done.set()


def _finished(iters: RangeClock, ranges: list[tuple[int, int]]) -> int:
    """The iteration a worker has finished on every range this server masters (its clock
    elsewhere in the key space is not kept here)."""
    return min((iters.min(lo, hi) for lo, hi in ranges), default=iters.min())
