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

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import (
    ClosedError,
    DTypeError,
    InvalidArgument,
    JobAborted,
    KeyRangeError,
    NodeUnavailable,
    ProtocolError,
    PSError,
    TableError,
)
from ..clock import Consistency, Request
from ..node import Node, error_body
from ..placement import KEY_SPACE, in_ranges, positions, ranges_from_wire, ranges_to_wire
from ..protocol import KEY_DTYPE, Message, Op, Status, get
from ..table import Store, TableSpec
from ._checkpoint import Checkpoints
from ._migrate import Migrations
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
        #: Requests answered "moved" (sliced under another key map).
        self.moved = 0
        #: Replication messages sent (as master or as a link of a chain), by kind:
        #: "push" (one worker's push), "agg" (an iteration's sum), "clock" (a tick).
        self.replicated: dict[str, int] = {"push": 0, "agg": 0, "clock": 0}
        #: Bytes of replicated keys and values sent.
        self.replicated_bytes = 0
        self._replicating: set[Request] = set()  # replication requests not answered yet
        self.done = threading.Event()
        self.exit_reason = ""
        node.on(Op.TABLE, self._on_table)
        node.on(Op.PUSH, self._on_ordered)
        node.on(Op.PULL, self._on_pull)
        node.on(Op.PULL_RANGE, self._on_pull_range)
        node.on(Op.STATUS, self._on_status)
        node.on(Op.CLOCK, self._on_ordered)
        node.on(Op.POLICY, self._on_policy)
        node.on(Op.REPLICATE, self._on_replicate)
        self.migrations = Migrations(self)
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

    # ------------------------------------------------------------------ ownership
    def _not_mine(self, msg: Message) -> bool:
        """True if this server does not master every key (or, for a tick, any range) of ``msg``."""
        keymap = self.node.keymap
        if keymap is None:
            return True
        if msg.op == Op.PUSH or msg.op == Op.PULL:
            keys = msg.arrays[0] if msg.arrays else None
            if keys is None or keys.dtype != KEY_DTYPE or keys.ndim != 1:
                return False  # malformed: the checks that follow say so
            return bool(len(keys)) and not bool(np.all(keymap.masters(keys) == self.node.id))
        if msg.op == Op.PULL_RANGE:
            return not all(keymap.owns(self.node.id, lo, hi) for lo, hi in self._ranges(msg))
        lo, hi = msg.key_range if msg.key_range is not None else (0, KEY_SPACE)
        return not keymap.overlaps(self.node.id, lo, hi)

    def _moved(self, msg: Message) -> dict[str, Any] | None:
        """The body of a "moved" answer if ``msg`` was sliced under another key map and this
        server does not own its keys; None if it does. Raises :class:`KeyRangeError` for a
        message that names the current epoch and still reaches the wrong server."""
        if not self._not_mine(msg):
            return None
        keymap = self.node.keymap
        epoch = keymap.epoch if keymap is not None else 0
        if msg.epoch == epoch:
            raise KeyRangeError(f"server {self.node.id} does not own the keys of this {msg.op.name.lower()} "
                                f"(key map epoch {epoch})")
        self.moved += 1
        holders = set(keymap.servers()) if keymap is not None else set()
        return {"message": f"server {self.node.id} does not own these keys in epoch {epoch} "
                           f"(the request was sliced in epoch {msg.epoch})",
                "epoch": epoch, "keymap": keymap.to_wire() if keymap is not None else None,
                # the addresses of the map's servers: one may have joined after the sender's node table
                "nodes": [n.to_wire() for n in self.node.nodes().values() if n.id in holders]}

    @staticmethod
    def _origins(msg: Message) -> list[tuple[int, int]]:
        raw = msg.body.get("origins", [])
        if not (isinstance(raw, list) and all(isinstance(o, list) and len(o) == 2 and type(o[0]) is int
                                              and type(o[1]) is int for o in raw)):
            raise ProtocolError("origins must be a list of [server, seq] pairs")
        return [(o[0], o[1]) for o in raw]

    # ------------------------------------------------------------------ ordered messages
    def _on_ordered(self, msg: Message) -> None:
        """A push or clock tick: apply it once, in its channel's order."""
        sync = self._sync(msg)
        if msg.seq == 0:  # not part of a channel: apply at once (errors answered by the runtime)
            moved = self._moved(msg)
            if moved is not None:
                self.node.reply(msg, status=Status.MOVED, body=moved)
                return
            self._apply(msg, None)
            aggregate = self.stores[msg.table].spec.aggregate and msg.op == Op.PUSH
            self._when_all([] if aggregate else self._forward(msg, self._origins(msg)), lambda: self.node.reply(msg))
            return
        ch = sync.channel(msg.sender)
        if msg.seq <= ch.done:  # a resend or a copy of a message already handled
            self.duplicates += 1
            answer = ch.errors.get(msg.seq)
            if answer is not None:
                self.node.reply(msg, status=Status(answer[0]), body=answer[1])
            elif msg.op == Op.PUSH and msg.clock > sync.agg_done and msg.clock in sync.acks:
                sync.acks[msg.clock].append(msg)  # answered with the original, once replicated
            else:
                self.node.reply(msg)
            return
        if msg.seq > ch.done + 1:  # ahead of a gap: wait for the missing ones
            ch.waiting.setdefault(msg.seq, msg)
            return
        self._apply_in_order(ch, msg)
        while ch.waiting:
            nxt = ch.waiting.pop(ch.done + 1, None)
            if nxt is None:
                break
            self._apply_in_order(ch, nxt)
        self._aggregate(msg.table)
        self._release(msg.table)

    def _aggregate(self, table: int) -> None:
        """Apply, in order, the summed pushes of every iteration all live workers finished,
        then replicate each sum once (replication after aggregation)."""
        sync = self.sync.get(table)
        if sync is None or not (sync.pending or sync.acks):
            return
        keymap = self.node.keymap
        if keymap is None or not keymap.ranges_of(self.node.id):
            return
        lo, hi = self._own_span()
        slowest = sync.slowest(lo, hi, self._live_workers())
        slowest = min(slowest, self.checkpoints.limit())  # sums after a pending checkpoint's cut wait for it
        store = self.stores[table]
        for iteration in sorted(t for t in set(sync.pending) | set(sync.acks) if t <= slowest):
            buffer = sync.pending.pop(iteration, None)
            keys, values = buffer.pull_range(0, KEY_SPACE) if buffer is not None else (None, None)
            sync.agg_done = max(sync.agg_done, iteration)
            waiting = sync.acks.pop(iteration, [])
            forwards: list[Request] = []
            if keys is not None and values is not None and len(keys):
                store.push(keys, values)
                forwards = self._forward_push(table, keys, values, {"kind": "agg", "worker": -1,
                                                                    "origins": [[self.node.id, iteration]]},
                                              iteration)
            self._when_all(forwards, functools.partial(self._reply_all, waiting))

    def _reply_all(self, msgs: list[Message]) -> None:
        """Answer each of ``msgs`` with an empty success reply, in order."""
        for m in msgs:
            self.node.reply(m)

    def _apply_in_order(self, ch: Channel, msg: Message) -> None:
        """Handle the next message of a channel: "moved", duplicate, or apply and replicate;
        answer it (after the replicas have it) and consume its sequence number."""
        sync = self.sync[msg.table]
        store = self.stores[msg.table]
        try:
            moved = self._moved(msg)
            if moved is not None:
                ch.remember_error(msg.seq, Status.MOVED, moved)
                self.node.reply(msg, status=Status.MOVED, body=moved)
                return
            origins = self._origins(msg)
            aggregate = store.spec.aggregate and msg.op == Op.PUSH
            if aggregate and origins and sync.agg_duplicate(origins, msg.clock):
                self.duplicates += 1  # its iteration was applied through a replica chain
                self.node.reply(msg)
                return
            push = msg.op == Op.PUSH and not aggregate  # a push applied (and replicated) as it comes
            fresh = None
            rid, again = 0, False
            if push and msg.arrays:  # (a malformed push without arrays is refused by _apply)
                # a part sent again (to a new owner) applies only the keys not applied here yet
                rid, again = self._rid(msg), "rid" in msg.body
                fresh = sync.fresh(msg.sender, rid, msg.arrays[0], again)
                if fresh is not None:
                    self.duplicates += 1
                    if not fresh.any():
                        self.node.reply(msg)
                        return
            self._apply(msg, ch, fresh)
            if aggregate and self._replicated():
                sync.acks.setdefault(msg.clock, []).append(msg)  # answered once the sum is replicated
                return
            forwards: list[Request] = []
            if push:  # applied, so it had its arrays and rid, again are parsed
                lw = self._low_water(msg)  # parsed after applying, as a malformed one is answered then
                sync.note(msg.sender, rid, msg.arrays[0], lw, again)
                forwards = self._forward(msg, [*origins, (self.node.id, msg.seq)], (rid, lw, again))
            elif not aggregate:
                forwards = self._forward(msg, [*origins, (self.node.id, msg.seq)])
            self._when_all(forwards, lambda: self.node.reply(msg))
        except Exception as exc:
            body = error_body(exc, with_traceback=not isinstance(exc, PSError))
            ch.remember_error(msg.seq, Status.ERROR, body)
            self.node.reply(msg, status=Status.ERROR, body=body)
        finally:
            ch.done = msg.seq

    @staticmethod
    def _rid(msg: Message) -> int:
        """The request id of a push: the worker's timestamp of the push it is a part of."""
        rid = msg.body.get("rid", msg.ts)
        if type(rid) is not int:
            raise ProtocolError("a push's request id (rid) must be an integer")
        return rid

    @staticmethod
    def _low_water(msg: Message) -> int:
        """The sender's low-water mark: it finished every request with a smaller id."""
        lw = msg.body.get("lw", 0)
        if type(lw) is not int:
            raise ProtocolError("a push's low-water mark (lw) must be an integer")
        return lw

    def _replicated(self) -> bool:
        keymap = self.node.keymap
        return keymap is not None and any(a.replicas for a in keymap if a.master == self.node.id)

    def _apply(self, msg: Message, ch: Channel | None, fresh: np.ndarray | None = None) -> None:
        """Apply a push (only its ``fresh`` keys, if given) or a tick, after checking it."""
        if msg.op == Op.CLOCK:
            if ch is not None:
                lo, hi = msg.key_range if msg.key_range is not None else self._own_span()
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
            msg.arrays[1] = values
        if values.shape != (len(keys), store.width):
            raise InvalidArgument(
                f"table {store.spec.name!r}: values of shape {values.shape} for {len(keys)} keys of width {store.width}"
            )
        self._apply_checked(msg, keys, values, fresh)

    def _apply_checked(self, msg: Message, keys: np.ndarray, values: np.ndarray,
                       fresh: np.ndarray | None = None) -> None:
        """Apply a push already checked by :meth:`_apply` (its ``keys`` and ``values``, the
        latter of shape (len(keys), width)): only its ``fresh`` keys, if given; deferred
        instead if its iteration is after a pending checkpoint's cut; summed into its
        iteration's pending buffer if the table aggregates."""
        if fresh is not None:
            keys, values = keys[fresh], values[fresh]
        if self.checkpoints.defer(msg, keys, values):  # after a pending checkpoint's cut: applied after it
            return
        store = self.stores[msg.table]
        if store.spec.aggregate:
            # Server-side aggregation: sum this iteration's pushes, apply them once complete.
            self.sync[msg.table].buffer(msg.clock, store).push(keys, values)
        else:
            store.push(keys, values)

    # ------------------------------------------------------------------ chain replication
    def _forward(self, msg: Message, origins: list[tuple[int, int]],
                 ident: tuple[int, int, bool] | None = None) -> list[Request]:
        """Send what ``msg`` applied to the replicas of its ranges; return the requests.

        ``ident``: for a push of a worker's channel, its request id, the worker's low-water
        mark and whether it is a part sent again (see TableSync.fresh), so that its replicas
        record its keys too; None for a push outside any channel (and for ticks)."""
        body: dict[str, Any] = {"worker": msg.sender, "origins": [list(o) for o in origins]}
        if msg.op == Op.PUSH:
            if ident is not None:
                body["rid"], body["lw"], body["again"] = ident
            return self._forward_push(msg.table, msg.arrays[0], msg.arrays[1], {"kind": "push", **body}, msg.clock)
        keymap = self.node.keymap
        if keymap is None:
            return []
        lo, hi = msg.key_range if msg.key_range is not None else (0, KEY_SPACE)
        out = []
        for chain, ranges in keymap.replicated_ranges(self.node.id).items():
            hit = [(max(r.lo, lo), min(r.hi, hi)) for r in ranges if r.lo < hi and lo < r.hi]
            if hit:
                out.append(self._send_replica(chain, Message(Op.REPLICATE, table=msg.table, clock=msg.clock, body={
                    "kind": "clock", "ranges": ranges_to_wire(hit), **body})))
        return out

    def _forward_push(self, table: int, keys: np.ndarray, values: np.ndarray, body: dict[str, Any],
                      clock: int) -> list[Request]:
        keymap = self.node.keymap
        if keymap is None:
            return []
        out = []
        for chain, pieces in keymap.chains(keys).items():
            idx = positions(pieces)
            out.append(self._send_replica(chain, Message(Op.REPLICATE, table=table, clock=clock,
                                                         arrays=[keys[idx], values[idx]], body=dict(body))))
        return out

    def _send_replica(self, chain: tuple[int, ...] | list[int], msg: Message) -> Request:
        """Send ``msg`` to the head of ``chain``; it passes it on to the rest and answers
        once the tail has it."""
        msg.body["chain"] = list(chain[1:])
        keymap = self.node.keymap
        msg.epoch = keymap.epoch if keymap is not None else 0
        kind = msg.body.get("kind")
        if isinstance(kind, str) and kind in self.replicated:
            self.replicated[kind] += 1
        self.replicated_bytes += sum(a.nbytes for a in msg.arrays)
        req = self.node.request({chain[0]: msg}, f"replication to server {chain[0]}")
        self._replicating.add(req)
        req.add_done_callback(self._replicating.discard)
        return req

    def replicating(self) -> list[Request]:
        """The replication requests this server sent that are not answered yet."""
        return list(self._replicating)

    def _when_all(self, reqs: list[Request], then: Callable[[], None]) -> None:
        """Run ``then`` (on the receive thread) once every request finished, failed or not:
        a replica that died is no longer in the chain, so the update is as safe as it gets."""
        if not reqs:
            then()
            return
        left = [len(reqs)]

        def one(r: Request) -> None:
            exc = r.exception(timeout=0)
            if exc is not None and not isinstance(exc, (NodeUnavailable, JobAborted, ClosedError)):
                log.warning("server %d: %s failed: %s", self.node.id, r.what, exc)
            left[0] -= 1
            if left[0] == 0:
                then()

        for r in reqs:
            r.add_done_callback(one)

    def _on_replicate(self, msg: Message) -> None:
        """Apply what a master applied (or an earlier link of its chain passed on), pass it
        down the chain, and answer once the tail has it."""
        sync = self._sync(msg)
        store = self.stores[msg.table]
        kind = get(msg.body, "kind", str)
        worker = get(msg.body, "worker", int)
        origins = self._origins(msg)
        chain = get(msg.body, "chain", list)
        if not all(type(n) is int for n in chain):
            raise ProtocolError("a replication's chain must list node ids")
        if kind == "agg":
            if not sync.agg_duplicate(origins, msg.clock):
                keys, values = self._replica_arrays(msg, store)
                store.push(keys, values)
                for o, _ in origins:
                    sync.agg_seen[o] = max(sync.agg_seen.get(o, -1), msg.clock)
        elif kind == "push":
            keys, values = self._replica_arrays(msg, store)
            rid = get(msg.body, "rid", int, -1)  # -1: a push outside any channel, never sent again
            again = get(msg.body, "again", bool, False)
            fresh = sync.fresh(worker, rid, keys, again) if rid >= 0 else None
            if fresh is None:
                store.push(keys, values)
            elif fresh.any():
                store.push(keys[fresh], values[fresh])
            if rid >= 0:
                sync.note(worker, rid, keys, get(msg.body, "lw", int, 0), again)
        elif kind == "clock":  # advancing a clock is idempotent: a second copy changes nothing
            ch = sync.channel(worker)
            for lo, hi in ranges_from_wire(get(msg.body, "ranges", list)):
                ch.iters.advance(lo, hi, msg.clock)
        else:
            raise ProtocolError(f"unknown replication kind {kind!r}")
        if not chain:
            self.node.reply(msg)
            return
        onward = Message(Op.REPLICATE, table=msg.table, clock=msg.clock, arrays=list(msg.arrays),
                         body=dict(msg.body))  # _send_replica sets its own "chain"
        self._when_all([self._send_replica(chain, onward)], lambda: self.node.reply(msg))

    @staticmethod
    def _replica_arrays(msg: Message, store: Store) -> tuple[np.ndarray, np.ndarray]:
        if len(msg.arrays) != 2:
            raise ProtocolError("a replicated push carries 2 arrays (keys, values)")
        keys, values = msg.arrays
        check_keys(keys)
        if values.dtype != store.dtype or values.shape != (len(keys), store.width):
            raise ProtocolError("a replicated push has values of the wrong dtype or shape")
        return keys, values

    # ------------------------------------------------------------------ pulls
    def _on_pull(self, msg: Message) -> None:
        self._store(msg)
        if len(msg.arrays) != 1:
            raise ProtocolError(f"a pull carries 1 array (keys), got {len(msg.arrays)}")
        check_keys(msg.arrays[0])
        moved = self._moved(msg)
        if moved is not None:
            self.node.reply(msg, status=Status.MOVED, body=moved)
            return
        self._pull_or_hold(msg)

    def _on_pull_range(self, msg: Message) -> None:
        self._store(msg)
        if msg.key_range is None:
            raise ProtocolError("a range pull needs a key range")
        self._ranges(msg)  # checks the form
        moved = self._moved(msg)
        if moved is not None:
            self.node.reply(msg, status=Status.MOVED, body=moved)
            return
        self._pull_or_hold(msg)  # checks ownership of its key range first (_span)

    @staticmethod
    def _ranges(msg: Message) -> list[tuple[int, int]]:
        """The ranges a range pull asks for: its ``ranges`` body field (``[lo, last]`` pairs,
        last included, so that 2**64 - 1 fits msgpack), else its key range."""
        raw = msg.body.get("ranges")
        if raw is None:
            assert msg.key_range is not None
            return [msg.key_range]
        ranges = ranges_from_wire(raw)
        if not ranges:
            raise ProtocolError("a range pull needs at least one range")
        return ranges

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
                keep = self._mastered(keys, self._ranges(msg))
                if keep is not None:
                    keys, values = keys[keep], values[keep]
                self.node.reply(msg, arrays=[keys, values], codecs=codecs)
        except Exception as exc:
            self.node.reply_error(msg, exc)

    def _mastered(self, keys: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray | None:
        """Which of ``keys`` (sorted) lie in ``ranges`` and are mastered here (a store also
        holds replicated keys); None when all of them are."""
        keymap = self.node.keymap
        keep = keymap.masters(keys) == self.node.id if keymap is not None else np.ones(len(keys), dtype=bool)
        if len(ranges) > 1:  # the key range spans them all: keep the keys inside one of them
            keep &= in_ranges(keys, sorted(ranges))
        return None if bool(keep.all()) else keep

    def _release(self, table: int) -> None:
        """Answer the held pulls of ``table`` that may now be answered."""
        self.checkpoints.poll()  # held checkpoints whose cut is reached are written first
        sync = self.sync.get(table)
        if sync is None or not sync.held:
            return
        live = self._live_workers()
        for key, pull in list(sync.held.items()):
            moved = self._moved(pull) if pull.epoch != (self.node.keymap.epoch if self.node.keymap else 0) else None
            if moved is not None:  # its keys left this server while it waited
                del sync.held[key]
                self.node.reply(pull, status=Status.MOVED, body=moved)
                continue
            plo, phi = self._span(pull)
            if sync.ready(pull, plo, phi, live, self._policy(pull, sync)):
                del sync.held[key]
                self._answer(pull)

    def _on_nodes_changed(self, gone: set[int]) -> None:
        self.migrations.hand_over_pending()
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
            "ranges": ranges_to_wire([(r.lo, r.hi) for r in keymap.ranges_of(self.node.id)]) if keymap else [],
            "tables": {
                str(tid): {"name": s.spec.name, "keys": self._master_keys(s), "stored_keys": len(s), "bytes": s.nbytes,
                           "pushes": s.pushes, "pulls": s.pulls,
                           "consistency": str(self.sync[tid].policy),
                           "bytes_sent": self.node.table_bytes.get((tid, "sent"), 0),
                           "bytes_received": self.node.table_bytes.get((tid, "received"), 0),
                           "held_pulls": len(self.sync[tid].held),
                           "clocks": {str(w): ch.iters.min() for w, ch in self.sync[tid].channels.items()}}
                for tid, s in self.stores.items()
            },
            "duplicates": self.duplicates,
            "moved": self.moved,
            "replicated": dict(self.replicated),
            "replicated_bytes": self.replicated_bytes,
            "migrations": self.migrations.status(),
            "checkpoints": self.checkpoints.status(),
            "filters": {f"{tid}/{direction}/{name}": {"before": b, "after": a}
                        for (tid, direction, name), (b, a) in dict(self.node.filter_bytes).items()},
            "counters": dict(self.node.counters),
        }

    def _master_keys(self, store: Store) -> int:
        """How many keys of ``store`` this server masters (the rest are replicas)."""
        keymap = self.node.keymap
        if keymap is None:
            return len(store)
        return int(np.count_nonzero(keymap.masters(store.keys[:len(store)]) == self.node.id))

    def _on_status(self, msg: Message) -> None:
        self.node.reply(msg, body=self.status())

    def _on_abort(self, exc: PSError) -> None:
        self.exit_reason = str(exc)
        self.done.set()
