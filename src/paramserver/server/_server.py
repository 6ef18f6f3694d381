"""The server role: tables of key ranges, updated by pushes and read by pulls.

A server holds one :class:`Store` per table for the key ranges it masters under the current
key map. Requests are checked strictly before anything is applied: keys must be uint64,
sorted, distinct and owned by this server; values must have the table's dtype and shape.
A bad request is answered with an error and changes nothing.

Ordered messages (pushes and clock ticks with a sequence number) go through the table's
:class:`TableSync`: applied once each, in the order each worker sent them; pulls are held
until read-your-writes and the table's consistency allow them (see ``_sync.py``).

Thread-safety: handlers run on the node's receive thread only; :meth:`Server.status` may
be called from there too. Nothing else touches the stores.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from .._errors import DTypeError, InvalidArgument, KeyRangeError, ProtocolError, PSError, TableError
from ..clock import Consistency
from ..node import Node, error_body
from ..placement import KEY_SPACE
from ..protocol import KEY_DTYPE, Message, Op, Status, get
from ..table import TableSpec
from ._checkpoint import Checkpoints
from ._store import Store
from ._sync import Channel, TableSync

__all__ = ["Server"]

log = logging.getLogger("paramserver.server")


def check_keys(keys: np.ndarray) -> None:
    """Keys of a request must be 1-D uint64, strictly increasing (sorted and distinct)."""
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        raise ProtocolError(f"keys must be a 1-D uint64 array, got {keys.dtype} of shape {keys.shape}")
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        raise ProtocolError("keys must be sorted and distinct")


class Server:
    """Handlers of a server node. Construct, then ``node.start(...)`` and register."""

    def __init__(self, node: Node, restore: str | None = None) -> None:
        self.node = node
        self.stores: dict[int, Store] = {}
        self.sync: dict[int, TableSync] = {}
        self.duplicates = 0
        self.done = threading.Event()
        self.exit_reason = ""
        node.on(Op.TABLE, self._on_table)
        node.on(Op.PUSH, self._on_push)
        node.on(Op.PULL, self._on_pull)
        node.on(Op.PULL_RANGE, self._on_pull_range)
        node.on(Op.STATUS, self._on_status)
        node.on(Op.CLOCK, self._on_ordered)
        node.on(Op.POLICY, self._on_policy)
        node.on_abort.append(self._on_abort)
        node.on_nodes_changed.append(self._on_nodes_changed)
        self.checkpoints = Checkpoints(self, restore)  # writes checkpoints; restores tables from `restore`
        node.on(Op.CHECKPOINT, self.checkpoints.on_request)

    # ------------------------------------------------------------------ tables
    def add_table(self, table_id: int, spec: TableSpec, policy: Consistency | None = None) -> None:
        """Create the store of a table (idempotent for an equal spec)."""
        store = self.stores.get(table_id)
        if store is not None:
            store.spec.check_compatible(spec)
            return
        spec.validate(import_user_code=True)
        store = Store(spec)
        self.checkpoints.restore(table_id, store)  # a server started with --restore loads its ranges
        self.stores[table_id] = store
        self.sync[table_id] = TableSync(policy or Consistency())
        log.info("server %d: table %d %r (%s, %s)", self.node.id, table_id, spec.name, spec.describe(),
                 self.sync[table_id].policy)

    def add_tables(self, tables: list[Any]) -> None:
        """Create tables from ``[[id, spec, policy], ...]`` (a registration reply)."""
        for entry in tables:
            if not (isinstance(entry, list) and len(entry) == 3 and type(entry[0]) is int):
                raise ProtocolError("a table entry must be [id, spec, policy]")
            self.add_table(entry[0], TableSpec.from_wire(entry[1]), Consistency.from_wire(entry[2]))

    def _store(self, msg: Message) -> Store:
        store = self.stores.get(msg.table)
        if store is None:
            raise TableError(f"table id {msg.table} is unknown on server {self.node.id}")
        return store

    def _check_owned(self, keys: np.ndarray) -> None:
        keymap = self.node.keymap
        if keymap is None:
            raise KeyRangeError(f"server {self.node.id} has no key map yet")
        if len(keys) == 0:
            return
        owners = keymap.slice(keys)
        if set(owners) != {self.node.id}:
            others = sorted(set(owners) - {self.node.id})
            raise KeyRangeError(
                f"server {self.node.id} received keys owned by node(s) {others} "
                f"(key map epoch {keymap.epoch}, request epoch {self.node.keymap.epoch if self.node.keymap else -1})"
            )

    # ------------------------------------------------------------------ handlers
    def _on_table(self, msg: Message) -> None:
        self.add_table(get(msg.body, "id", int), TableSpec.from_wire(get(msg.body, "spec", dict)),
                       Consistency.from_wire(get(msg.body, "policy", dict)))
        self.node.reply(msg)

    def _on_policy(self, msg: Message) -> None:
        sync = self._sync(msg)
        sync.policy = Consistency.from_wire(get(msg.body, "policy", dict))
        log.info("server %d: table %d is now %s", self.node.id, msg.table, sync.policy)
        self.node.reply(msg)
        self._aggregate(msg.table)
        self._release(msg.table)

    def _sync(self, msg: Message) -> TableSync:
        self._store(msg)
        return self.sync[msg.table]

    def _span(self, msg: Message) -> tuple[int, int]:
        """The key range a message covers: its header range, else all this server masters."""
        keymap = self.node.keymap
        if keymap is None:
            raise KeyRangeError(f"server {self.node.id} has no key map yet")
        if msg.key_range is None:
            return self._own_span()
        lo, hi = msg.key_range
        if not keymap.overlaps(self.node.id, lo, hi):
            raise KeyRangeError(f"server {self.node.id} owns no key of [{lo:#x}, {hi:#x})")
        return lo, hi

    def _own_span(self) -> tuple[int, int]:
        """The smallest range covering everything this server masters (all keys before a map)."""
        keymap = self.node.keymap
        if keymap is None or not keymap.ranges_of(self.node.id):
            return 0, KEY_SPACE
        return keymap.span_of(self.node.id)

    # ------------------------------------------------------------------ ordered messages
    def _on_push(self, msg: Message) -> None:
        self._on_ordered(msg)

    def _on_ordered(self, msg: Message) -> None:
        """A push or clock tick: apply it once, in its channel's order."""
        sync = self._sync(msg)
        try:
            lo, hi = self._span(msg)
        except PSError:
            if not msg.seq:
                raise
            # Consume the sequence number (with its error) so that the channel does not stall.
            lo, hi = self._own_span()
        if msg.seq == 0:  # not part of a channel: apply at once (errors answered by the runtime)
            self._apply(msg, None, lo, hi)
            self.node.reply(msg)
            return
        ch = sync.channel(msg.sender)
        done = ch.applied.min(lo, hi)
        if msg.seq <= done:  # a resend or a copy of a message already applied
            self.duplicates += 1
            error = ch.errors.get(msg.seq)
            if error is not None:
                self.node.reply(msg, status=Status.ERROR, body=error)
            else:
                self.node.reply(msg)
            return
        if msg.seq > done + 1:  # ahead of a gap: wait for the missing ones
            ch.waiting.setdefault(msg.seq, msg)
            return
        self._apply_in_order(ch, msg, lo, hi)
        while ch.waiting:
            nxt = ch.waiting.pop(ch.applied.min(lo, hi) + 1, None)
            if nxt is None:
                break
            self._apply_in_order(ch, nxt, lo, hi)
        self._aggregate(msg.table)
        self._release(msg.table)

    def _aggregate(self, table: int) -> None:
        """Apply, in order, the summed pushes of every iteration all live workers finished."""
        sync = self.sync.get(table)
        if sync is None or not sync.pending:
            return
        lo, hi = self._own_span()
        slowest = sync.slowest(lo, hi, self._live_workers())
        slowest = min(slowest, self.checkpoints.limit())  # sums after a pending checkpoint's cut wait for it
        store = self.stores[table]
        for iteration in sorted(t for t in sync.pending if t <= slowest):
            buffer = sync.pending.pop(iteration)
            keys, values = buffer.pull_range(0, KEY_SPACE)
            if len(keys):
                store.push(keys, values)

    def _apply_in_order(self, ch: Channel, msg: Message, lo: int, hi: int) -> None:
        try:
            self._span(msg)  # raises for a range this server does not own
            self._apply(msg, ch, lo, hi)
        except Exception as exc:
            body = error_body(exc, with_traceback=not isinstance(exc, PSError))
            ch.remember_error(msg.seq, body)
            self.node.reply(msg, status=Status.ERROR, body=body)
        else:
            self.node.reply(msg)
        finally:
            ch.applied.set(lo, hi, msg.seq)

    def _apply(self, msg: Message, ch: Channel | None, lo: int, hi: int) -> None:
        if msg.op == Op.CLOCK:
            if ch is not None:
                ch.iters.advance(lo, hi, msg.clock)
            return
        store = self._store(msg)
        if len(msg.arrays) != 2:
            raise ProtocolError(f"a push carries 2 arrays (keys, values), got {len(msg.arrays)}")
        keys, values = msg.arrays
        check_keys(keys)
        if values.dtype != store.dtype:
            raise DTypeError(f"table {store.spec.name!r} holds {store.dtype}, the push sent {values.dtype}")
        if values.ndim == 1 and store.width == 1:
            values = values.reshape(-1, 1)
        if values.shape != (len(keys), store.width):
            raise InvalidArgument(
                f"table {store.spec.name!r}: values of shape {values.shape} for {len(keys)} keys of width {store.width}"
            )
        self._check_owned(keys)
        if self.checkpoints.defer(msg, keys, values):  # after a pending checkpoint's cut: applied after it
            return
        if store.spec.aggregate:
            # Server-side aggregation: sum this iteration's pushes, apply them once complete.
            sync = self.sync[msg.table]
            buffer = sync.pending.get(msg.clock)
            if buffer is None:
                buffer = sync.pending[msg.clock] = Store(TableSpec.create(
                    f"{store.spec.name}@{msg.clock}", store.width, store.dtype, "sum"))
            buffer.push(keys, values)
        else:
            store.push(keys, values)

    # ------------------------------------------------------------------ pulls
    def _on_pull(self, msg: Message) -> None:
        self._store(msg)
        if len(msg.arrays) != 1:
            raise ProtocolError(f"a pull carries 1 array (keys), got {len(msg.arrays)}")
        check_keys(msg.arrays[0])
        self._check_owned(msg.arrays[0])
        self._pull_or_hold(msg)

    def _on_pull_range(self, msg: Message) -> None:
        self._store(msg)
        if msg.key_range is None:
            raise ProtocolError("a range pull needs a key range")
        self._span(msg)  # checks ownership
        self._pull_or_hold(msg)

    def _policy(self, msg: Message, sync: TableSync) -> Consistency:
        override = msg.body.get("consistency")
        return Consistency.from_wire(override) if override is not None else sync.policy

    def _live_workers(self) -> set[int]:
        return {n.id for n in self.node.nodes().values() if n.role == "worker"}

    def _pull_or_hold(self, msg: Message) -> None:
        sync = self.sync[msg.table]
        lo, hi = self._span(msg)
        policy = self._policy(msg, sync)
        live = self._live_workers() if policy.kind == "bounded" else set()
        if sync.ready(msg, lo, hi, live, policy):
            self._answer(msg)
        else:
            sync.held.setdefault((msg.sender, msg.ts), msg)

    def _answer(self, msg: Message) -> None:
        if self.checkpoints.hold_pull(msg):  # it must see its sender's pushes deferred by a checkpoint
            return
        store = self.stores[msg.table]
        try:
            names = msg.body.get("reply_filters", [])
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ProtocolError("reply_filters must be a list of filter names")
            codecs = tuple(self.node.encoder(n) for n in names)
            if msg.op == Op.PULL:
                self.node.reply(msg, arrays=[store.pull(msg.arrays[0])], codecs=codecs)
            else:
                assert msg.key_range is not None
                keys, values = store.pull_range(*msg.key_range)
                self.node.reply(msg, arrays=[keys, values], codecs=codecs)
        except Exception as exc:
            self.node.reply_error(msg, exc)

    def _release(self, table: int) -> None:
        """Answer the held pulls of ``table`` that may now be answered."""
        self.checkpoints.poll()  # held checkpoints whose cut is reached are written first
        sync = self.sync.get(table)
        if sync is None or not sync.held:
            return
        live = self._live_workers()
        for key, pull in list(sync.held.items()):
            plo, phi = self._span(pull)
            if sync.ready(pull, plo, phi, live, self._policy(pull, sync)):
                del sync.held[key]
                self._answer(pull)

    def _on_nodes_changed(self, gone: set[int]) -> None:
        for table, sync in self.sync.items():
            sync.forget(gone)
            self._aggregate(table)
            self._release(table)

    def status(self) -> dict[str, Any]:
        """Tables, key counts and bytes, and this process's memory."""
        import psutil

        keymap = self.node.keymap
        return {
            "id": self.node.id,
            "pid": os.getpid(),
            "rss": psutil.Process().memory_info().rss,
            "ranges": [[r.lo, r.hi - 1] for r in keymap.ranges_of(self.node.id)] if keymap else [],
            "tables": {
                str(tid): {"name": s.spec.name, "keys": len(s), "bytes": s.nbytes,
                           "pushes": s.pushes, "pulls": s.pulls,
                           "consistency": str(self.sync[tid].policy),
                           "bytes_sent": self.node.table_bytes.get((tid, "sent"), 0),
                           "bytes_received": self.node.table_bytes.get((tid, "received"), 0),
                           "held_pulls": len(self.sync[tid].held),
                           "clocks": {str(w): ch.iters.min() for w, ch in self.sync[tid].channels.items()}}
                for tid, s in self.stores.items()
            },
            "duplicates": self.duplicates,
            "checkpoints": self.checkpoints.status(),
            "filters": {f"{tid}/{direction}/{name}": {"before": b, "after": a}
                        for (tid, direction, name), (b, a) in dict(self.node.filter_bytes).items()},
            "counters": dict(self.node.counters),
        }

    def _on_status(self, msg: Message) -> None:
        self.node.reply(msg, body=self.status())

    def _on_abort(self, exc: PSError) -> None:
        self.exit_reason = str(exc)
        self.done.set()
