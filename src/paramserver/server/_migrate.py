"""Moving key ranges between servers: a server joins, is drained, or a replica is restored.

The scheduler drives a migration from key map ``old`` to ``new`` in two phases:

1. *Copy.* Each master of a range that gains holders gets ``Op.MIGRATE {phase: "copy",
   keymap: mid, plan}``, where ``mid`` keeps the masters of ``old`` but puts the new holders
   of each range right after its master in the chain. The master adopts ``mid`` and, in
   the same handler (so no update slips between), sends a snapshot of the planned ranges
   (keys, values, optimizer state, per-worker iteration clocks, applied-key records) to
   each new holder (``phase: "load"``). Every update it applies from then on is forwarded
   down the extended chain, over the same link as the snapshot, so each new holder applies
   it after the snapshot: by the time the loads are acknowledged, the new holders are exact
   replicas. It answers the scheduler then.
2. *Switch.* The scheduler sends ``{phase: "switch", keymap: new}`` (a higher epoch) to
   every server of either map. Each adopts ``new``, hands the sums of unfinished iterations
   (tables that aggregate) it holds for keys it no longer masters to their new masters
   (``phase: "load"``, ``pending``), and answers once every replication it sent before is
   acknowledged: every push it applied has then reached the end of its chain and was
   acknowledged to its worker, so no worker sends it again to a new master. Then the
   scheduler broadcasts ``new``. Old masters answer "moved" for ranges they lost; workers
   send those requests on to the new masters.

Sums handed over go to the new master of their keys and to every replica of them in the new
map (``MigrateSums``): a holder that does not master them (yet) keeps them as *standby*
(``TableSync.standby``), takes them into the iteration's pending sum once it masters the keys
(it adopted the new map, or was promoted by a failover), and drops them once their master
replicates that iteration's sum (which holds them). The pushes waiting on them are answered
only once every holder has them, so their sums survive the death of any one of them.

A party that dies during a migration: its replicas take over as in any failover, and a
replication whose head died goes on to the rest of its chain (``ServerState.answered``), so
the chains stay exact; the scheduler plans a copy phase that lost a party again from the
failover map, and a switch stands (the map it installs is failed over like any other).

Snapshots carry, besides the rows, the table's records of which keys the pushes still in
flight applied (``TableSync.applied_in``), so a part sent again to a new holder applies
only the keys the snapshot does not hold yet.

Pure, like the state it belongs to: it uses only the public API of :class:`ServerState`
and returns actions. Not thread-safe: driven on the server's receive thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._errors import ProtocolError
from ..placement import KEY_SPACE, KeyMap, ranges_from_wire, ranges_to_wire
from ..protocol import (
    Message,
    MigrateCopy,
    MigrateCopyReply,
    MigrateLoad,
    MigrateSums,
    MigrateSwitch,
    Op,
    migrate_from_wire,
)
from ..table import Store, TableSpec
from ._actions import Action, Reply

if TYPE_CHECKING:
    from ._state import ServerState
    from ._sync import TableSync

__all__ = ["Migrations"]

log = logging.getLogger("paramserver.server")


class Migrations:
    """The server's side of migrations (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        #: Keys sent and loaded by migrations, for status.
        self.sent_keys = 0
        self.loaded_keys = 0
        self._epoch = 0  # the key map epoch of the last hand-over check
        self._handing: set[int] = set()  # hand-overs of sums not acknowledged yet (tokens)

    def on_request(self, msg: Message, now: float, out: list[Action]) -> None:
        """An ``Op.MIGRATE`` request, dispatched by its phase (its body parsed once here)."""
        body = migrate_from_wire(msg.body)
        if isinstance(body, MigrateCopy):
            self._copy(msg, body, out)
        elif isinstance(body, MigrateSwitch):
            self._switch(msg, body, out)
        elif isinstance(body, MigrateSums):
            self._load_sums(msg, body, out)
        else:
            self._load(msg, body, out)

    # ------------------------------------------------------------------ source side
    def _copy(self, msg: Message, body: MigrateCopy, out: list[Action]) -> None:
        state = self.state
        mid = KeyMap.from_wire(body.keymap)
        plan: list[tuple[int, list[tuple[int, int]]]] = []
        for entry in body.plan:
            if type(entry[0]) is not int:
                raise ProtocolError("a migration plan lists [target, ranges] pairs")
            plan.append((entry[0], ranges_from_wire(entry[1])))
        state.adopt_keymap(mid, out)  # from now on updates are forwarded to the new holders too
        tokens = [self._send_rows(target, tid, store, ranges, out)
                  for target, ranges in plan for tid, store in state.stores.items()]
        state.when_all(tokens, [Reply(msg, body=MigrateCopyReply(keys=self.sent_keys).to_wire())], out)

    def _switch(self, msg: Message, body: MigrateSwitch, out: list[Action]) -> None:
        """Adopt the final map, then answer once every update applied before has reached the
        end of its chain: after that no update of a range that left this server is in flight,
        and every push it applied was acknowledged to its worker (so none is sent again to the
        range's new master, which would apply it twice). Sums handed over must have arrived
        too: the pushes waiting on them are answered then, before this server may stop."""
        state = self.state
        state.adopt_keymap(KeyMap.from_wire(body.keymap), out)
        state.refresh(set(), out)  # hand over unfinished sums, answer held pulls "moved"
        self._handing = {t for t in self._handing if state.pending(t)}
        state.when_all(state.replicating() + list(self._handing), [Reply(msg)], out)

    def _send_rows(self, target: int, tid: int, store: Store, ranges: list[tuple[int, int]],
                   out: list[Action]) -> int:
        rows = store.rows_in(ranges)
        names = sorted(store.state)
        sync = self.state.sync[tid]
        iters = []
        for worker, ch in sync.channels.items():
            done = min(ch.iters.min(lo, hi) for lo, hi in ranges)
            if done >= 0:
                iters.append([worker, done])
        self.sent_keys += len(rows["keys"])
        body = MigrateLoad(ranges=ranges_to_wire(ranges), state=names, iters=iters)
        # and which keys the pushes still in flight applied, so that none is applied twice there
        msg = Message(Op.MIGRATE, table=tid, arrays=[rows["keys"], rows["values"], *[rows[n] for n in names],
                                                     *sync.applied_in(ranges)], body=body.to_wire())
        return self.state.call(target, msg, f"migration of table {tid} to server {target}", out)

    def hand_over_pending(self, out: list[Action]) -> None:
        """After a key map change: send the partial sums of unfinished iterations this server
        holds for keys it no longer masters to their new masters."""
        state = self.state
        keymap = state.keymap
        if keymap is None or keymap.epoch == self._epoch:
            return  # the node table changed, not the key map
        self._epoch = keymap.epoch
        left = not state.own.mastering
        for tid, sync in state.sync.items():
            tokens: list[int] = []
            for iteration, buffer in list(sync.pending.items()):
                keys, values = buffer.pull_range(0, KEY_SPACE)
                if not len(keys):
                    continue
                owners = keymap.masters(keys)
                mine = owners == state.id
                if bool(mine.all()):
                    continue
                for owner in np.unique(owners[~mine]).tolist():
                    pick = owners == owner
                    k, v = keys[pick], values[pick]
                    # to the new master and to every replica of the keys: the sums survive
                    # the death of any one of them before the iteration is applied
                    parts = [(int(owner), k, v)]
                    for chain, spans in keymap.chains(k).items():
                        idx = np.concatenate([np.arange(a, b) for a, b in spans])
                        parts += [(h, k[idx], v[idx]) for h in chain]
                    for holder, hk, hv in parts:
                        if holder == state.id:  # this server replicates them from now on
                            self._standby(sync, tid, iteration, hk, hv)
                            continue
                        token = state.call(holder, Message(
                            Op.MIGRATE, table=tid, arrays=[hk, hv], body=MigrateSums(pending=iteration).to_wire()),
                            f"hand-over of table {tid} sums to server {holder}", out)
                        self._handing.add(token)
                        tokens.append(token)
                kept = Store(buffer.spec)
                if bool(mine.any()):
                    kept.push(keys[mine], values[mine])
                sync.pending[iteration] = kept
            if left and sync.acks:
                # This server masters nothing any more: it will never apply these iterations, so
                # the pushes waiting for them are answered once their sums are with the new
                # masters (answered, their workers do not send them again, which would count
                # them twice there).
                waiting = [m for ms in sync.acks.values() for m in ms]
                sync.acks.clear()
                state.when_all(tokens, [Reply(m) for m in waiting], out)

    # ------------------------------------------------------------------ target side
    def _load_sums(self, msg: Message, body: MigrateSums, out: list[Action]) -> None:
        """Sums handed over: the keys this server masters join the iteration's pending sum,
        the others wait as standby (it holds them as a replica, or masters them once it
        adopts the new map)."""
        state = self.state
        state.store_of(msg)
        if len(msg.arrays) != 2:
            raise ProtocolError("a hand-over of sums names its iteration and carries keys and values")
        keys, values = np.ascontiguousarray(msg.arrays[0]), np.ascontiguousarray(msg.arrays[1])
        self._standby(state.sync[msg.table], msg.table, body.pending, keys, values)
        self.promote_standby()
        out.append(Reply(msg))

    def _standby(self, sync: TableSync, tid: int, iteration: int, keys: np.ndarray, values: np.ndarray) -> None:
        keymap = self.state.keymap
        if sync.agg_seen and keymap is not None and len(keys):
            # keys whose master replicated this iteration's sum here already: the sums are in it
            masters = keymap.masters(keys)
            late = np.zeros(len(keys), dtype=bool)
            for m in np.unique(masters).tolist():
                if m != self.state.id and sync.agg_seen.get(int(m), -1) >= iteration:
                    late |= masters == m
            keys, values = keys[~late], values[~late]
            if not len(keys):
                return
        buffer = sync.standby.get(iteration)
        if buffer is None:
            spec = self.state.stores[tid].spec
            buffer = sync.standby[iteration] = Store(TableSpec.create(
                f"{spec.name}@{iteration}", spec.width, spec.dtype, "sum"))
        buffer.push(keys, values)

    def promote_standby(self) -> None:
        """Standby sums of keys this server masters now join their iteration's pending sum."""
        state = self.state
        keymap = state.keymap
        for tid, sync in state.sync.items():
            for iteration, buffer in list(sync.standby.items()):
                keys, values = buffer.pull_range(0, KEY_SPACE)
                mine = keymap.masters(keys) == state.id if keymap is not None else np.ones(len(keys), dtype=bool)
                if not bool(mine.any()):
                    continue
                sync.buffer(iteration, state.stores[tid]).push(keys[mine], values[mine])
                self._keep(sync, iteration, buffer, keys[~mine], values[~mine])

    def drop_standby(self, table: int, iteration: int, keys: np.ndarray) -> None:
        """The master of ``keys`` replicated the sum of ``iteration``: the standby sums of
        those keys, of that iteration and before, are in it."""
        sync = self.state.sync.get(table)
        if sync is None or not sync.standby:
            return
        for it, buffer in list(sync.standby.items()):
            if it <= iteration:
                held, values = buffer.pull_range(0, KEY_SPACE)
                keep = ~np.isin(held, keys)
                if not bool(keep.all()):
                    self._keep(sync, it, buffer, held[keep], values[keep])

    @staticmethod
    def _keep(sync: TableSync, iteration: int, buffer: Store, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            del sync.standby[iteration]
            return
        kept = Store(buffer.spec)
        kept.push(keys, values)
        sync.standby[iteration] = kept

    def _load(self, msg: Message, body: MigrateLoad, out: list[Action]) -> None:
        state = self.state
        store = state.store_of(msg)
        sync = state.sync[msg.table]
        names = body.state
        if len(msg.arrays) != 2 + len(names) + 4:
            raise ProtocolError("a migration carries keys, values, one array per state and 4 of applied keys")
        keys, values = msg.arrays[0], msg.arrays[1]
        arrays = msg.arrays[2:2 + len(names)]
        store.load(np.ascontiguousarray(keys), np.ascontiguousarray(values),
                   {n: np.ascontiguousarray(a) for n, a in zip(names, arrays, strict=True)})
        sync.load_applied([np.ascontiguousarray(a) for a in msg.arrays[2 + len(names):]])
        ranges = ranges_from_wire(body.ranges)
        for worker, done in body.iters:
            ch = sync.channel(worker)
            for lo, hi in ranges:
                ch.iters.advance(lo, hi, done)
        self.loaded_keys += len(keys)
        out.append(Reply(msg))

    def status(self) -> dict[str, int]:
        return {"sent_keys": self.sent_keys, "loaded_keys": self.loaded_keys}
