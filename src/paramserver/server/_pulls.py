"""Pulls on a server: checked, answered from the store, or held until they may be.

A pull (keys) or range pull (key ranges) is checked once (the table, its keys' form, that
this server masters them, else "moved"), then held without blocking until read-your-writes
(the sender's ordered messages up to the pull's ``seq`` are applied) and the table's
consistency (bounded delay: every live worker finished iteration ``t - tau - 1``) allow it,
and until the checkpoint gate has applied the sender's deferred pushes. A range pull
answers only the keys this server masters (a store also holds replicas).

Uses only the public API of :class:`ServerState`. Not thread-safe: the server's receive
thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import InvalidArgument, ProtocolError, TableError
from ..clock import Consistency
from ..placement import in_ranges, ranges_from_wire
from ..protocol import Message, Op, PullBody, PullRangeBody
from ._actions import Action, Fail, Reply
from ._owned import check_keys
from ._sync import Pull, TableSync

if TYPE_CHECKING:
    from ._state import ServerState

__all__ = ["Pulls"]


def _policy(pull: Pull, sync: TableSync) -> Consistency:
    return pull.policy if pull.policy is not None else sync.policy


class Pulls:
    """Handles ``Op.PULL`` and ``Op.PULL_RANGE`` for the state it belongs to."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def on_pull(self, msg: Message, now: float, out: list[Action]) -> None:
        state = self.state
        state.store_of(msg)
        body = PullBody.from_wire(msg.body)
        if len(msg.arrays) != 1:
            raise ProtocolError(f"a pull carries 1 array (keys), got {len(msg.arrays)}")
        check_keys(msg.arrays[0])
        snapshot = body.snapshot
        if snapshot is not None:
            store = state.stores[msg.table]
            if not store.spec.snapshots:
                raise InvalidArgument(f"table {store.spec.name!r} keeps no snapshots; declare it with "
                                      f"aggregate=True, snapshots=N to read it at a finished iteration")
            if snapshot < -1:
                raise InvalidArgument(f"snapshot must be an iteration >= -1, got {snapshot}")
        self._pull(Pull(msg, tuple(body.reply_filters), _override(body), [], snapshot), out)

    def on_pull_range(self, msg: Message, now: float, out: list[Action]) -> None:
        """A range pull: its ``ranges`` body field (``[lo, last]`` pairs, last included, so
        that 2**64 - 1 fits msgpack), else its header's key range."""
        state = self.state
        state.store_of(msg)
        body = PullRangeBody.from_wire(msg.body)
        if msg.key_range is None:
            raise ProtocolError("a range pull needs a key range")
        if body.snapshot is not None:
            raise InvalidArgument("snapshot= applies to pull(keys), not to range pulls")
        if body.ranges is None:
            ranges = [msg.key_range]
        else:
            ranges = ranges_from_wire(body.ranges)
            if not ranges:
                raise ProtocolError("a range pull needs at least one range")
        if body.since is not None and not state.stores[msg.table].spec.lifecycle.active:
            raise InvalidArgument(f"table {state.stores[msg.table].spec.name!r} keeps no push iterations per row; "
                                  f"a delta (since=) needs a table declared with ttl=, capacity=, admit_after= or "
                                  f"admit_prob=")
        self._pull(Pull(msg, tuple(body.reply_filters), _override(body), ranges, since=body.since), out)

    def _pull(self, pull: Pull, out: list[Action]) -> None:
        state = self.state
        msg = pull.msg
        if state.where(msg, pull.ranges) is None:
            out.append(state.moved_answer(msg))
            return
        sync = state.sync[msg.table]
        if self._ready(pull, sync):
            self.answer(pull, out)
        else:
            sync.held.setdefault((msg.sender, msg.ts), pull)

    def _ready(self, pull: Pull, sync: TableSync) -> bool:
        """Read-your-writes and the consistency model allow ``pull``; for a snapshot read,
        its iteration is applied here."""
        state = self.state
        lo, hi = state.span(pull.msg)
        if not sync.ready(pull.msg, lo, hi, state.workers, _policy(pull, sync)):
            return False
        return pull.snapshot is None or sync.finished(pull.snapshot, *state.own.span, state.workers)

    def answer(self, pull: Pull, out: list[Action]) -> None:
        """Answer a checked pull that may be answered now (unless the checkpoint gate holds
        it for its sender's deferred pushes)."""
        state = self.state
        if state.gate.hold_pull(pull):  # it must see its sender's pushes deferred by a checkpoint
            return
        msg = pull.msg
        store = state.stores[msg.table]
        try:
            if msg.op == Op.PULL and pull.snapshot is not None:
                snaps = state.sync[msg.table].snapshots
                if not snaps.kept(pull.snapshot):
                    raise TableError(f"table {store.spec.name!r}: iteration {pull.snapshot} is no longer kept on "
                                     f"server {state.id} (it keeps iterations from {snaps.floor} on; the table keeps "
                                     f"the last {store.spec.snapshots}); read a later one")
                values = snaps.read(msg.arrays[0], store.pull(msg.arrays[0]), pull.snapshot)
                out.append(Reply(msg, arrays=[values], filters=pull.filters))
            elif msg.op == Op.PULL:
                out.append(Reply(msg, arrays=[store.pull(msg.arrays[0])], filters=pull.filters))
            else:
                assert msg.key_range is not None
                keys, values = store.pull_range(*msg.key_range, since=pull.since)
                keep = state.own.mastered(keys)
                if len(pull.ranges) > 1:  # the key range spans them all: keep the keys inside one of them
                    keep &= in_ranges(keys, pull.ranges)
                if not bool(keep.all()):
                    keys, values = keys[keep], values[keep]
                out.append(Reply(msg, arrays=[keys, values], filters=pull.filters))
        except Exception as exc:
            out.append(Fail(msg, exc))

    def release(self, table: int, out: list[Action]) -> None:
        """Answer the held pulls of ``table`` that may now be answered."""
        state = self.state
        state.gate.poll(out)  # held checkpoints whose cut is reached are taken first
        sync = state.sync.get(table)
        if sync is None or not sync.held:
            return
        epoch = state.own.epoch
        for key, pull in list(sync.held.items()):
            msg = pull.msg
            if msg.epoch != epoch and state.where(msg, pull.ranges) is None:  # its keys left while it waited
                del sync.held[key]
                out.append(state.moved_answer(msg))  # (another epoch: never a KeyRangeError)
                continue
            if self._ready(pull, sync):
                del sync.held[key]
                self.answer(pull, out)


def _override(body: PullBody) -> Consistency | None:
    """The per-call consistency a pull asks for (None: the table's)."""
    return Consistency.from_wire(body.consistency) if body.consistency is not None else None
