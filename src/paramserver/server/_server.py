"""The server role: tables of key ranges, updated by pushes and read by pulls.

A server holds one :class:`Store` per table for the key ranges it masters under the current
key map. Requests are checked strictly before anything is applied: keys must be uint64,
sorted, distinct and owned by this server; values must have the table's dtype and shape.
A bad request is answered with an error and changes nothing.

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
from ..node import Node
from ..protocol import KEY_DTYPE, Message, Op, get
from ..table import TableSpec
from ._store import Store

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

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stores: dict[int, Store] = {}
        self.done = threading.Event()
        self.exit_reason = ""
        node.on(Op.TABLE, self._on_table)
        node.on(Op.PUSH, self._on_push)
        node.on(Op.PULL, self._on_pull)
        node.on(Op.PULL_RANGE, self._on_pull_range)
        node.on(Op.STATUS, self._on_status)
        node.on_abort.append(self._on_abort)

    # ------------------------------------------------------------------ tables
    def add_table(self, table_id: int, spec: TableSpec) -> None:
        """Create the store of a table (idempotent for an equal spec)."""
        store = self.stores.get(table_id)
        if store is not None:
            store.spec.check_compatible(spec)
            return
        spec.validate(import_user_code=True)
        self.stores[table_id] = Store(spec)
        log.info("server %d: table %d %r (%s)", self.node.id, table_id, spec.name, spec.describe())

    def add_tables(self, tables: list[Any]) -> None:
        for entry in tables:
            if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int):
                raise ProtocolError("a table entry must be [id, spec]")
            self.add_table(entry[0], TableSpec.from_wire(entry[1]))

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
        self.add_table(get(msg.body, "id", int), TableSpec.from_wire(get(msg.body, "spec", dict)))
        self.node.reply(msg)

    def _on_push(self, msg: Message) -> None:
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
        store.push(keys, values)
        self.node.reply(msg)

    def _on_pull(self, msg: Message) -> None:
        store = self._store(msg)
        if len(msg.arrays) != 1:
            raise ProtocolError(f"a pull carries 1 array (keys), got {len(msg.arrays)}")
        keys = msg.arrays[0]
        check_keys(keys)
        self._check_owned(keys)
        self.node.reply(msg, arrays=[store.pull(keys)])

    def _on_pull_range(self, msg: Message) -> None:
        store = self._store(msg)
        if msg.key_range is None:
            raise ProtocolError("a range pull needs a key range")
        lo, hi = msg.key_range
        keymap = self.node.keymap
        if keymap is None or not keymap.owns(self.node.id, lo, hi):
            raise KeyRangeError(f"server {self.node.id} does not own all of [{lo:#x}, {hi:#x})")
        keys, values = store.pull_range(lo, hi)
        self.node.reply(msg, arrays=[keys, values])

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
                           "pushes": s.pushes, "pulls": s.pulls}
                for tid, s in self.stores.items()
            },
            "counters": dict(self.node.counters),
        }

    def _on_status(self, msg: Message) -> None:
        self.node.reply(msg, body=self.status())

    def _on_abort(self, exc: PSError) -> None:
        self.exit_reason = str(exc)
        self.done.set()
