"""The replica side of chain replication: applying what a master (or an earlier link of
its chain) applied, passing it on, and answering once the tail has it.

A replicated push is applied with the same exactly-once records as on a master (by request
id, ``TableSync.fresh``/``note``); an aggregated iteration's sum once per origin
(``agg_seen``); a clock tick advances the worker's range clock (idempotent). Keys come from
a master, which checked their order: here only the O(1) checks a store needs to stay sound.

Fencing: a REPLICATE sliced under an older key map by a server that the current map no
longer holds (declared dead, e.g. cut off by a partition, or drained) is refused with a
:class:`KeyRangeError` and changes nothing. A partitioned master that comes back after the
cluster moved on keeps its old map until it learns that it is dead; whatever it still sends
down its old chains is stale and must not be applied twice (the workers have sent those
pushes again to the new masters). ``fenced`` counts the refusals (in the server's status).

Uses only the public API of :class:`ServerState`. Not thread-safe: the server's receive
thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._errors import KeyRangeError, ProtocolError
from ..placement import ranges_from_wire
from ..protocol import KEY_DTYPE, Message, ReplicateAgg, ReplicatePush, replicate_from_wire
from ..table import Store
from ._actions import Action, Reply

if TYPE_CHECKING:
    from ._state import ServerState

__all__ = ["Replica"]


class Replica:
    """Handles ``Op.REPLICATE`` for the state it belongs to."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.fenced = 0  # stale replication refused (see the module's docstring)

    def check_fence(self, msg: Message) -> None:
        """Raise :class:`KeyRangeError` if ``msg`` comes from a stale master: sliced under an
        older key map than this server's by a server the current map no longer holds."""
        keymap = self.state.keymap
        if keymap is None or msg.epoch >= keymap.epoch or msg.sender in keymap.servers():
            return
        self.fenced += 1
        raise KeyRangeError(f"server {self.state.id} refuses replication from server {msg.sender} sliced in "
                            f"key map epoch {msg.epoch}: the cluster is at epoch {keymap.epoch} and server "
                            f"{msg.sender} is no longer in it (it was declared dead or drained)")

    def on_request(self, msg: Message, now: float, out: list[Action]) -> None:
        """Apply what a master applied (or an earlier link of its chain passed on), pass it
        down the chain, and answer once the tail has it."""
        state = self.state
        self.check_fence(msg)
        store = state.store_of(msg)
        sync = state.sync[msg.table]
        body = replicate_from_wire(msg.body)  # its kind, worker, origins and chain, checked
        if isinstance(body, ReplicateAgg):
            keys, values = _replica_arrays(msg, store)
            state.migrations.drop_standby(msg.table, msg.clock, keys)  # handed-over sums now in it
            if not sync.agg_duplicate(body.origins, msg.clock):
                store.push(keys, values, msg.clock)
                for o, _ in body.origins:
                    sync.agg_seen[o] = max(sync.agg_seen.get(o, -1), msg.clock)
        elif isinstance(body, ReplicatePush):
            keys, values = _replica_arrays(msg, store)
            rid = body.rid  # -1: a push outside any channel, never sent again
            fresh = sync.fresh(body.worker, rid, keys, body.again) if rid >= 0 else None
            if fresh is None:
                store.push(keys, values, msg.clock)
            elif fresh.any():
                store.push(keys[fresh], values[fresh], msg.clock)
            if rid >= 0:
                sync.note(body.worker, rid, keys, body.lw, body.again)
        else:  # a clock tick: advancing a clock is idempotent, a second copy changes nothing
            ch = sync.channel(body.worker)
            for lo, hi in ranges_from_wire(body.ranges):
                ch.iters.advance(lo, hi, msg.clock)
        if not body.chain:
            out.append(Reply(msg))
            return
        token = state.send_replica(body.chain, msg.table, msg.clock, list(msg.arrays), body, out)
        state.when_all([token], [Reply(msg)], out)


def _replica_arrays(msg: Message, store: Store) -> tuple[np.ndarray, np.ndarray]:
    """The keys and values of a replicated push. Their order was checked by the master
    (a server): here only what a store needs to stay sound, in O(1)."""
    if len(msg.arrays) != 2:
        raise ProtocolError("a replicated push carries 2 arrays (keys, values)")
    keys, values = msg.arrays
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        raise ProtocolError("a replicated push has keys that are not a 1-D uint64 array")
    if values.dtype != store.dtype or values.shape != (len(keys), store.width):
        raise ProtocolError("a replicated push has values of the wrong dtype or shape")
    return keys, values
