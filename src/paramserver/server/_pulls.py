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

from .._errors import ProtocolError
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
        self._pull(Pull(msg, tuple(body.reply_filters), _override(body), []), out)

    def on_pull_range(self, msg: Message, now: float, out: list[Action]) -> None:
        """A range pull: its ``ranges`` body field (``[lo, last]`` pairs, last included, so
        that 2**64 - 1 fits msgpack), else its header's key range."""
        state = self.state
        state.store_of(msg)
        body = PullRangeBody.from_wire(msg.body)
        if msg.key_range is None:
            raise ProtocolError("a range pull needs a key range")
        if body.ranges is None:
            ranges = [msg.key_range]
        else:
            ranges = ranges_from_wire(body.ranges)
            if not ranges:
                raise ProtocolError("a range pull needs at least one range")
        self._pull(Pull(msg, tuple(body.reply_filters), _override(body), ranges), out)

    def _pull(self, pull: Pull, out: list[Action]) -> None:
        state = self.state
        msg = pull.msg
        if state.where(msg, pull.ranges) is None:
            out.append(state.moved_answer(msg))
            return
        sync = state.sync[msg.table]
        lo, hi = state.span(msg)
        if sync.ready(msg, lo, hi, state.workers, _policy(pull, sync)):
            self.answer(pull, out)
        else:
            sync.held.setdefault((msg.sender, msg.ts), pull)

    def answer(self, pull: Pull, out: list[Action]) -> None:
        """Answer a checked pull that may be answered now (unless the checkpoint gate holds
        it for its sender's deferred pushes)."""
        state = self.state
        if state.gate.hold_pull(pull):  # it must see its sender's pushes deferred by a checkpoint
            return
        msg = pull.msg
        store = state.stores[msg.table]
        try:
            if msg.op == Op.PULL:
                out.append(Reply(msg, arrays=[store.pull(msg.arrays[0])], filters=pull.filters))
            else:
                assert msg.key_range is not None
                keys, values = store.pull_range(*msg.key_range)
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
            lo, hi = state.span(msg)
            if sync.ready(msg, lo, hi, state.workers, _policy(pull, sync)):
                del sync.held[key]
                self.answer(pull, out)


def _override(body: PullBody) -> Consistency | None:
    """The per-call consistency a pull asks for (None: the table's)."""
    return Consistency.from_wire(body.consistency) if body.consistency is not None else None
