"""The server's logic as a pure state machine: requests and events in, actions out.

:class:`ServerState` holds one :class:`Store` and one :class:`TableSync` per table, and the
replication requests in flight. :meth:`ServerState.handle` takes a request and returns the
:mod:`actions <paramserver.server._actions>` that answer it; the other events are the end
of a request it sent (:meth:`~ServerState.answered`), a change of the node table
(:meth:`~ServerState.nodes_changed`) or key map (:meth:`~ServerState.set_keymap`), and the
clock (:meth:`~ServerState.tick`). It never touches a socket, a thread or a clock (``now``
is passed in), so the unit tests drive it with plain messages (tests/test_server_state.py).

Rules it enforces:

* A request is checked once, before anything is applied: the table is known; a push
  carries keys and values, a pull keys; keys are 1-D uint64, sorted and distinct; values
  have the table's dtype and shape; this server masters every key (by range, on the sorted
  keys: :class:`Ownership`). A bad request is answered with an error (ProtocolError,
  TableError, DTypeError, InvalidArgument) and changes nothing; a request sliced under
  another key map is answered "moved" with this server's map, one that names the current
  epoch and still reaches the wrong server is a KeyRangeError.
* Ordered messages (pushes and clock ticks with a sequence number) are applied once each,
  in the order their worker sent them; a resend or copy is answered as the first time; one
  ahead of a gap waits. Parts of a push sent again to a new owner apply only the keys not
  applied here yet (``TableSync.fresh``). See ``_sync.py``.
* Replication: what a master applied goes down each range's replica chain
  (:meth:`Ownership.chain_plan`, ``Op.REPLICATE`` to the chain's head, which passes it on);
  the push is answered once every chain's tail has it. Tables that aggregate sum an
  iteration's pushes, apply and replicate the sum once every live worker finished it.
* Pulls are held (without blocking) until read-your-writes and the table's consistency
  allow them; the checkpoint gate (``_cut.py``) and migrations (``_migrate.py``) use only
  the public methods of this class.

Dispatch is by a handler table (op -> method). Not thread-safe: the shell calls it from
the node's receive thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
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
    ReadOnlyError,
    TableError,
)
from ..clock import Consistency
from ..node import error_body
from ..placement import KEY_SPACE, KeyMap, ranges_to_wire
from ..protocol import (
    ClockBody,
    Message,
    Op,
    PolicyUpdate,
    PushBody,
    ReplicateAgg,
    ReplicateClock,
    ReplicatePush,
    Status,
    TableCreate,
)
from ..protocol import Moved as MovedBody
from ..table import Store, TableSpec, check_user_code
from ._actions import Action, Adopt, Call, Fail, Moved, Reply
from ._cut import CheckpointGate
from ._migrate import Migrations
from ._owned import Ownership, check_keys
from ._pulls import Pulls
from ._replica import Replica
from ._snapshots import Snapshots
from ._sync import Channel, Pull, TableSync

__all__ = ["ServerState"]

log = logging.getLogger("paramserver.server")

#: How a new table is filled from a checkpoint being restored: (table id, store, ownership).
Restore = Callable[[int, Store, Ownership], None]
Handler = Callable[[Message, float, list[Action]], None]
Replicate = ReplicatePush | ReplicateAgg | ReplicateClock
_QUIET = (NodeUnavailable, JobAborted, ClosedError)  # a replica that died: the chain shrank


@dataclass(slots=True)
class _Wait:
    """Actions to emit once ``left`` more requests have ended."""

    left: int
    then: list[Action] = field(default_factory=list)


class ServerState:
    """See the module docstring. ``restore`` fills each new table from a checkpoint."""

    def __init__(self, node: int, *, restore: Restore | None = None,
                 user_modules: tuple[str, ...] | None = None) -> None:
        self.id = node
        #: The modules user updaters and initialisers may be imported from (None: any; table/_allow.py).
        self.user_modules = user_modules
        self.keymap: KeyMap | None = None
        #: The ranges this server masters under :attr:`keymap`.
        self.own = Ownership(None, node)
        #: The live workers (ids), for aggregation and bounded delay.
        self.workers: frozenset[int] = frozenset()
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
        self._restore = restore
        self._tokens = 0
        self._waits: dict[int, list[_Wait]] = {}  # request token -> what waits for its end
        self._replicating: set[int] = set()  # tokens of replication requests not answered yet
        #: token -> (chain, table, clock, arrays, body) of each replication in flight, to send
        #: it on to the rest of the chain if its head dies.
        self._chains: dict[int, tuple[list[int], int, int, list[np.ndarray], Replicate]] = {}
        self.gate = CheckpointGate(self)
        self.migrations = Migrations(self)
        self.pulls = Pulls(self)
        self.replica = Replica(self)
        self._handlers: dict[Op, Handler] = {
            Op.PUSH: self._on_ordered, Op.CLOCK: self._on_ordered, Op.PULL: self.pulls.on_pull,
            Op.PULL_RANGE: self.pulls.on_pull_range, Op.REPLICATE: self.replica.on_request, Op.TABLE: self._on_table,
            Op.POLICY: self._on_policy, Op.CHECKPOINT: self.gate.on_request, Op.MIGRATE: self.migrations.on_request,
        }

    # ------------------------------------------------------------------ events
    def handle(self, msg: Message, now: float) -> list[Action]:
        """The actions answering request ``msg`` (an exception becomes an error reply)."""
        out: list[Action] = []
        handler = self._handlers.get(msg.op)
        if handler is None:
            out.append(Fail(msg, ProtocolError(f"a server does not handle {msg.op.name} requests"), False))
            return out
        try:
            handler(msg, now, out)
        except PSError as exc:
            out.append(Fail(msg, exc, not isinstance(exc, ProtocolError)))
        except Exception as exc:
            log.warning("server %d: handler for %s raised %r", self.id, msg.op.name, exc)
            out.append(Fail(msg, exc))
        return out

    def answered(self, token: int, error: BaseException | None = None, what: str = "") -> list[Action]:
        """A request this state sent (:class:`Call` ``token``) ended, with ``error`` if it
        failed. A replication whose head died goes on to the rest of its chain (what waited
        for it waits for that: an update is acknowledged only once every live link has it;
        the links that had it already from the dead head apply it once, by its records);
        with no link left the update is as safe as it gets, and what waited for it goes on."""
        if error is not None and not isinstance(error, _QUIET):
            log.warning("server %d: %s failed: %s", self.id, what or f"request {token}", error)
        self._replicating.discard(token)
        out: list[Action] = []
        sent = self._chains.pop(token, None)
        if sent is not None and isinstance(error, NodeUnavailable) and len(sent[0]) > 1:
            chain, table, clock, arrays, body = sent
            if not (isinstance(body, ReplicatePush) and body.rid < 0):  # else it could apply twice
                if isinstance(body, ReplicatePush):
                    body.again = True  # compared with every key applied there
                again = self.send_replica(chain[1:], table, clock, arrays, body, out)
                self._waits[again] = self._waits.pop(token, [])
                return out
        for w in self._waits.pop(token, ()):
            w.left -= 1
            if w.left == 0:
                out.extend(w.then)
        return out

    def set_keymap(self, keymap: KeyMap | None, node: int | None = None) -> None:
        """Use ``keymap`` (the node's key map changed), and ``node`` as this server's id if
        given (the id is known once the server registered)."""
        if keymap is not self.keymap or (node is not None and node != self.id):
            moved = (keymap.epoch if keymap else 0) != (self.keymap.epoch if self.keymap else 0)
            self.id = self.id if node is None else node
            self.keymap = keymap
            self.own = Ownership(keymap, self.id)
            if moved:  # ranges may come whose history is not logged here
                for sync in self.sync.values():
                    sync.snapshots.reset(sync.agg_done)

    def adopt_keymap(self, keymap: KeyMap, out: list[Action]) -> None:
        """Use ``keymap`` if it is newer than the current one, and make it the node's."""
        if self.keymap is None or keymap.epoch > self.keymap.epoch:
            self.set_keymap(keymap)
            out.append(Adopt(keymap))

    def nodes_changed(self, workers: frozenset[int], gone: set[int]) -> list[Action]:
        """The node table changed: ``workers`` are the live workers, ``gone`` left."""
        self.workers = workers
        out: list[Action] = []
        self.refresh(gone, out)
        self.gate.forget(gone, out)
        return out

    def tick(self, now: float) -> list[Action]:
        """Time passed: held checkpoints whose timeout is over are answered with an error."""
        out: list[Action] = []
        self.gate.tick(now, out)
        return out

    def checkpoint_written(self, msg: Message, body: dict[str, Any]) -> None:
        """The shell wrote the checkpoint asked by ``msg`` (its answer is ``body``, a
        ``CheckpointReply`` in wire form)."""
        self.gate.written_as(msg, body)

    def refresh(self, gone: set[int], out: list[Action]) -> None:
        """After a change of the key map or node table: hand sums over, forget the workers
        that left, apply the iterations and answer the pulls that may go on now."""
        self.migrations.hand_over_pending(out)
        self.migrations.promote_standby()  # sums handed over for keys this server masters now
        for table, sync in self.sync.items():
            sync.forget(gone)
            self.aggregate(table, out)
            self.release(table, out)

    # ------------------------------------------------------------------ requests sent
    def call(self, node: int, msg: Message, what: str, out: list[Action]) -> int:
        """Send ``msg`` to ``node`` as a request; return its token."""
        self._tokens += 1
        self._waits[self._tokens] = []
        out.append(Call(node, msg, what, self._tokens))
        return self._tokens

    def pending(self, token: int) -> bool:
        """True while the request :meth:`call` sent as ``token`` has not ended."""
        return token in self._waits

    def when_all(self, tokens: list[int], then: list[Action], out: list[Action]) -> None:
        """Emit ``then`` once every request of ``tokens`` ended, failed or not (at once if none)."""
        live = [t for t in tokens if t in self._waits]
        if not live:
            out.extend(then)
            return
        w = _Wait(len(live), then)
        for t in live:
            self._waits[t].append(w)

    def replicating(self) -> list[int]:
        """The replication requests this server sent that are not answered yet (tokens)."""
        return list(self._replicating)

    def send_replica(self, chain: tuple[int, ...] | list[int], table: int, clock: int, arrays: list[np.ndarray],
                     body: Replicate, out: list[Action]) -> int:
        """Send ``body`` (with ``arrays``) as a REPLICATE of ``table`` at ``clock`` to the head
        of ``chain``; it passes it on to the rest and answers once the tail has it. Sets
        ``body.chain`` to the rest of the chain (the body may be sent on again after)."""
        body.chain = list(chain[1:])
        msg = Message(Op.REPLICATE, table=table, clock=clock, epoch=self.own.epoch, arrays=arrays,
                      body=body.to_wire())
        assert body.TAG is not None
        self.replicated[body.TAG[1]] += 1
        self.replicated_bytes += sum(a.nbytes for a in arrays)
        token = self.call(chain[0], msg, f"replication to server {chain[0]}", out)
        self._replicating.add(token)
        self._chains[token] = (list(chain), table, clock, arrays, body)
        return token

    # ------------------------------------------------------------------ tables
    def add_table(self, table_id: int, spec: TableSpec, policy: Consistency | None = None) -> None:
        """Create the store of a table (idempotent for an equal spec)."""
        store = self.stores.get(table_id)
        if store is not None:
            store.spec.check_compatible(spec)
            return
        check_user_code(spec.updater, self.user_modules, "updater")  # before anything is imported
        check_user_code(spec.init, self.user_modules, "initialiser")
        spec.validate(import_user_code=True)
        store = Store(spec)
        if self._restore is not None:
            self._restore(table_id, store, self.own)  # a server started with --restore loads its ranges
        self.stores[table_id] = store
        self.sync[table_id] = TableSync(policy or Consistency(), snapshots=Snapshots(spec.snapshots))
        log.info("server %d: table %d %r (%s, %s)", self.id, table_id, spec.name, spec.describe(),
                 self.sync[table_id].policy)

    def add_tables(self, tables: list[Any]) -> None:
        """Create tables from ``[[id, spec, policy(, readers)], ...]`` (a registration reply)."""
        for entry in tables:
            if not (isinstance(entry, list) and len(entry) in (3, 4) and type(entry[0]) is int):
                raise ProtocolError("a table entry must be [id, spec, policy] or [id, spec, policy, readers]")
            self.add_table(entry[0], TableSpec.from_wire(entry[1]), Consistency.from_wire(entry[2]))
            if len(entry) == 4:
                self.add_readers(entry[0], entry[3])

    def add_readers(self, table_id: int, readers: Any) -> None:
        """Workers ``readers`` attached to table ``table_id`` read-only: their pushes and
        clock ticks are refused from now on (they never count in its clocks)."""
        if not (isinstance(readers, list) and all(type(r) is int for r in readers)):
            raise ProtocolError("a table's readers must be a list of node ids")
        self.sync[table_id].readers.update(readers)

    def store_of(self, msg: Message) -> Store:
        """The store of ``msg``'s table; :class:`TableError` if the table is unknown here."""
        store = self.stores.get(msg.table)
        if store is None:
            raise TableError(f"table id {msg.table} is unknown on server {self.id}")
        return store

    def caught_up(self, table: int, sender: int, seq: int) -> bool:
        """Read-your-writes: has ``table`` applied ``sender``'s ordered messages up to ``seq``?"""
        sync = self.sync.get(table)
        return sync is None or sync.caught_up(sender, seq)

    def _on_table(self, msg: Message, now: float, out: list[Action]) -> None:
        body = TableCreate.from_wire(msg.body)
        self.add_table(body.id, TableSpec.from_wire(body.spec), Consistency.from_wire(body.policy))
        self.add_readers(body.id, body.readers)
        out.append(Reply(msg))

    def _on_policy(self, msg: Message, now: float, out: list[Action]) -> None:
        self.store_of(msg)
        policy = Consistency.from_wire(PolicyUpdate.from_wire(msg.body).policy)
        sync = self.sync[msg.table]
        sync.policy = policy
        log.info("server %d: table %d is now %s", self.id, msg.table, sync.policy)
        out.append(Reply(msg))
        self.aggregate(msg.table, out)
        self.release(msg.table, out)

    # ------------------------------------------------------------------ ownership
    def where(self, msg: Message, ranges: list[tuple[int, int]] | None = None) -> int | None:
        """For a checked push or pull: the range of this server holding its keys (see
        :meth:`Ownership.range_of`); for a tick or range pull (its ``ranges``), 0 if this
        server masters its ranges, else None."""
        own = self.own
        if own.keymap is None:
            return None
        if msg.op == Op.PUSH or msg.op == Op.PULL:
            return own.range_of(msg.arrays[0])
        if msg.op == Op.PULL_RANGE:
            return 0 if all(own.owns(lo, hi) for lo, hi in ranges or ()) else None
        lo, hi = msg.key_range if msg.key_range is not None else (0, KEY_SPACE)
        return 0 if own.overlaps(lo, hi) else None

    def moved_answer(self, msg: Message) -> Moved:
        """The "moved" answer to ``msg``, which this server does not own; raises
        :class:`KeyRangeError` if ``msg`` names the current epoch (a wrong server, not a stale map)."""
        keymap = self.keymap
        epoch = self.own.epoch
        if msg.epoch == epoch:
            raise KeyRangeError(f"server {self.id} does not own the keys of this {msg.op.name.lower()} "
                                f"(key map epoch {epoch})")
        self.moved += 1
        body = MovedBody(message=f"server {self.id} does not own these keys in epoch {epoch} "
                                 f"(the request was sliced in epoch {msg.epoch})",
                         epoch=epoch, keymap=keymap.to_wire() if keymap is not None else None, nodes=[])
        return Moved(msg, body.to_wire(), frozenset(keymap.servers()) if keymap is not None else frozenset())

    def span(self, msg: Message) -> tuple[int, int]:
        """The key range a message covers: its header range, else all this server masters."""
        if self.keymap is None:
            raise KeyRangeError(f"server {self.id} has no key map yet")
        if msg.key_range is None:
            return self.own.span
        lo, hi = msg.key_range
        if not self.own.overlaps(lo, hi):
            raise KeyRangeError(f"server {self.id} owns no key of [{lo:#x}, {hi:#x})")
        return lo, hi

    # ------------------------------------------------------------------ ordered messages
    def _check_push(self, msg: Message, store: Store) -> tuple[np.ndarray, np.ndarray]:
        """The keys and values of a push, checked (values reshaped to (len(keys), width))."""
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
        return keys, values

    def _on_ordered(self, msg: Message, now: float, out: list[Action]) -> None:
        """A push or clock tick: apply it once, in its channel's order."""
        store = self.store_of(msg)
        sync = self.sync[msg.table]
        if msg.sender in sync.readers:  # refused before it opens a channel: a reader never counts
            what = "push to" if msg.op == Op.PUSH else "clock tick of"
            raise ReadOnlyError(f"worker {msg.sender} attached to table {store.spec.name!r} read-only; "
                                f"its {what} the table is refused")
        if msg.seq == 0:  # not part of a channel: apply at once (errors answered by handle)
            self._apply(msg, store, sync, None, out)
            return
        ch = sync.channel(msg.sender)
        if msg.seq <= ch.done:  # a resend or a copy of a message already handled
            self.duplicates += 1
            answer = ch.errors.get(msg.seq)
            if answer is not None:  # (a "moved" body holds the nodes the shell added the first time)
                out.append(Reply(msg, status=Status(answer[0]), body=answer[1]))
            elif msg.op == Op.PUSH and msg.clock > sync.agg_done and msg.clock in sync.acks:
                sync.acks[msg.clock].append(msg)  # answered with the original, once replicated
            else:
                out.append(Reply(msg))
            return
        if msg.seq > ch.done + 1:  # ahead of a gap: wait for the missing ones
            ch.waiting.setdefault(msg.seq, msg)
            return
        self._apply(msg, store, sync, ch, out)
        while ch.waiting:
            nxt = ch.waiting.pop(ch.done + 1, None)
            if nxt is None:
                break
            self._apply(nxt, store, sync, ch, out)
        if sync.pending or sync.acks:
            self.aggregate(msg.table, out)
        if sync.held or self.gate.held:
            self.release(msg.table, out)

    def _apply(self, msg: Message, store: Store, sync: TableSync, ch: Channel | None, out: list[Action]) -> None:
        """Check, apply and replicate one push or tick (the next of channel ``ch``, or of no
        channel); answer it (after the replicas have it) and consume its sequence number.
        In a channel, an error is remembered so that a resend gets the same answer."""
        try:
            push = msg.op == Op.PUSH
            body: PushBody | ClockBody
            if push:
                body = PushBody.from_wire(msg.body)
                keys, values = self._check_push(msg, store)
            else:
                body = ClockBody.from_wire(msg.body)
            where = self.where(msg)
            if where is None:
                moved = self.moved_answer(msg)
                if ch is not None:
                    ch.remember_error(msg.seq, Status.MOVED, moved.body)
                out.append(moved)
                return
            origins = [(o[0], o[1]) for o in body.origins] if body.origins else []
            aggregate = push and store.spec.aggregate
            if not push:  # a clock tick
                if ch is not None:
                    lo, hi = msg.key_range if msg.key_range is not None else self.own.span
                    ch.iters.advance(lo, hi, msg.clock)
                self._reply_after(self._forward_tick(msg, [*origins, (self.id, msg.seq)] if ch else origins, out),
                                  msg, out)
                return
            if aggregate:
                if ch is not None and origins and sync.agg_duplicate(origins, msg.clock):
                    self.duplicates += 1  # its iteration was applied through a replica chain
                    out.append(Reply(msg))
                    return
                self.apply_checked(msg, keys, values)
                if ch is not None and self.own.replicated:
                    sync.acks.setdefault(msg.clock, []).append(msg)  # answered once the sum is replicated
                else:
                    out.append(Reply(msg))
                return
            ident: tuple[int, int, bool] | None = None
            if ch is not None:
                assert isinstance(body, PushBody)
                again = body.rid is not None  # a part sent again names the request it belongs to
                rid = body.rid if body.rid is not None else msg.ts
                lw = body.lw
                # a part sent again (to a new owner) applies only the keys not applied here yet
                fresh = sync.fresh(msg.sender, rid, keys, again)
                if fresh is not None:
                    self.duplicates += 1
                    if not fresh.any():
                        out.append(Reply(msg))
                        return
                    self.apply_checked(msg, keys[fresh], values[fresh])
                else:
                    self.apply_checked(msg, keys, values)
                sync.note(msg.sender, rid, keys, lw, again)
                ident = (rid, lw, again)
                origins.append((self.id, msg.seq))
            else:
                self.apply_checked(msg, keys, values)
            self._reply_after(self._forward_push(msg, keys, values, where, origins, ident, out), msg, out)
        except Exception as exc:
            if ch is None:
                raise
            error = error_body(exc, with_traceback=not isinstance(exc, PSError))
            ch.remember_error(msg.seq, Status.ERROR, error)
            out.append(Reply(msg, status=Status.ERROR, body=error))
        finally:
            if ch is not None:
                ch.done = msg.seq

    def _reply_after(self, tokens: list[int], msg: Message, out: list[Action]) -> None:
        if tokens:
            self.when_all(tokens, [Reply(msg)], out)
        else:
            out.append(Reply(msg))

    def apply_checked(self, msg: Message, keys: np.ndarray, values: np.ndarray) -> None:
        """Apply a checked push (``values`` of shape (len(keys), width)): deferred instead if
        its iteration is after a pending checkpoint's cut; summed into its iteration's pending
        buffer if the table aggregates."""
        if self.gate.held and self.gate.defer(msg, keys, values):  # applied after the cut
            return
        store = self.stores[msg.table]
        if store.spec.aggregate:
            # Server-side aggregation: sum this iteration's pushes, apply them once complete.
            self.sync[msg.table].buffer(msg.clock, store).push(keys, values)
        else:
            store.push(keys, values, msg.clock)

    def aggregate(self, table: int, out: list[Action]) -> None:
        """Apply, in order, the summed pushes of every iteration all live workers finished,
        then replicate each sum once (replication after aggregation)."""
        sync = self.sync.get(table)
        if sync is None or not (sync.pending or sync.acks) or not self.own.mastering:
            return
        lo, hi = self.own.span
        slowest = min(sync.slowest(lo, hi, self.workers), self.gate.limit())  # sums after a cut wait for it
        store = self.stores[table]
        for iteration in sorted(t for t in set(sync.pending) | set(sync.acks) if t <= slowest):
            buffer = sync.pending.pop(iteration, None)
            sync.agg_done = max(sync.agg_done, iteration)
            waiting = sync.acks.pop(iteration, [])
            tokens: list[int] = []
            if buffer is not None:
                keys, values = buffer.pull_range(0, KEY_SPACE)
                if len(keys):
                    if sync.snapshots.keep:  # the rows as they were after the previous iteration
                        sync.snapshots.record(iteration, keys, store.pull(keys))
                    store.push(keys, values, iteration)
                    body = ReplicateAgg(worker=-1, origins=[[self.id, iteration]], chain=[])
                    tokens = self._replicate_rows(table, iteration, keys, values, self.own.range_of(keys), body, out)
            self.when_all(tokens, [Reply(m) for m in waiting], out)

    # ------------------------------------------------------------------ chain replication
    def _forward_push(self, msg: Message, keys: np.ndarray, values: np.ndarray, where: int,
                      origins: list[tuple[int, int]], ident: tuple[int, int, bool] | None,
                      out: list[Action]) -> list[int]:
        """Send a push applied here to the replicas of its ranges; return the tokens.

        ``ident``: for a push of a worker's channel, its request id, the worker's low-water
        mark and whether it is a part sent again (see TableSync.fresh), so that its replicas
        record its keys too; None for a push outside any channel."""
        if not self.own.replicated:
            return []
        wire_origins = [list(o) for o in origins]
        if ident is None:
            body = ReplicatePush(worker=msg.sender, origins=wire_origins, chain=[])
        else:
            body = ReplicatePush(worker=msg.sender, origins=wire_origins, chain=[], rid=ident[0], lw=ident[1],
                                 again=ident[2])
        return self._replicate_rows(msg.table, msg.clock, keys, values, where, body, out)

    def _replicate_rows(self, table: int, clock: int, keys: np.ndarray, values: np.ndarray, where: int | None,
                        body: ReplicatePush | ReplicateAgg, out: list[Action]) -> list[int]:
        tokens = []
        for chain, idx in self.own.chain_plan(keys, -1 if where is None else where):
            arrays = [keys, values] if idx is None else [keys[idx], values[idx]]
            tokens.append(self.send_replica(chain, table, clock, arrays, body, out))
        return tokens

    def _forward_tick(self, msg: Message, origins: list[tuple[int, int]], out: list[Action]) -> list[int]:
        """Send a clock tick to the replicas of the ranges it covers; return the tokens."""
        lo, hi = msg.key_range if msg.key_range is not None else (0, KEY_SPACE)
        tokens = []
        for chain, hit in self.own.tick_plan(lo, hi):
            body = ReplicateClock(ranges=ranges_to_wire(hit), worker=msg.sender, origins=[list(o) for o in origins],
                                  chain=[])
            tokens.append(self.send_replica(chain, msg.table, msg.clock, [], body, out))
        return tokens

    # ------------------------------------------------------------------ pulls
    def answer(self, pull: Pull, out: list[Action]) -> None:
        """Answer a checked pull that may be answered now (see :meth:`Pulls.answer`)."""
        self.pulls.answer(pull, out)

    def release(self, table: int, out: list[Action]) -> None:
        """Answer the held pulls of ``table`` that may now be answered."""
        self.pulls.release(table, out)

    # ------------------------------------------------------------------ status
    def master_keys(self, table: int) -> int:
        """How many keys of ``table`` this server masters (the rest are replicas)."""
        store = self.stores[table]
        keys = store.keys[:len(store)]
        if self.keymap is None:
            return len(keys)
        return int(np.count_nonzero(self.own.mastered(keys)))
