"""The checkpoint gate of a server: held checkpoint requests, their cut, deferred pushes.

A worker's CHECKPOINT request names a path and an iteration ``t``, the *cut*. The gate
holds it (without blocking, like a held pull) until

* every live worker of every table has finished iteration ``t`` on this server's key
  ranges (the tables' iteration clocks, ``TableSync.slowest``): a worker's clock tick for
  ``t`` follows all its pushes of iterations up to ``t``, and ordered messages are applied
  in order, so all those pushes have been applied;
* no summed iteration ``<= t`` of an aggregating table is still waiting to be applied;
* the requesting worker's pushes sent before the request are applied (read-your-writes:
  the request carries the last sequence number the worker sent on each table).

Then it takes, for every table, the rows this server masters under the current key map
(copies, never replicas) and asks the shell to write them (:class:`WriteCheckpoint`). While
a cut is pending, pushes of iterations after it (``msg.clock > t``) are acknowledged but
*deferred*: kept in arrival order and applied right after the cut is taken, so they never
leak into the checkpoint; a pull from a worker with deferred pushes on that table waits for
them (read-your-writes). A held request expires after its ``timeout`` (a :class:`Wake`
action, then ``tick(now)``). See docs/checkpoints.md for when the cut is exact.

The gate uses only the public API of :class:`ServerState`, which owns it. Not thread-safe:
driven by the state, on the server's receive thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import ProtocolError, RequestTimeout
from ..protocol import CheckpointRequest, Message
from ._actions import Action, Fail, Reply, TableRows, Wake, WriteCheckpoint
from ._sync import Pull

if TYPE_CHECKING:
    from ._state import ServerState

__all__ = ["CheckpointGate", "owned_rows"]

log = logging.getLogger("paramserver.server")

ANSWERS_KEPT = 256
NO_CUT = 1 << 62


def owned_rows(keys: np.ndarray, mastered: np.ndarray | None) -> np.ndarray:
    """Positions of the keys whose ``mastered`` mask is set (all of them for None), in
    ascending key order (equal keys in position order). One stable argsort."""
    rows = np.arange(len(keys)) if mastered is None else np.flatnonzero(mastered)
    return rows[np.argsort(keys[rows], kind="stable")]


@dataclasses.dataclass(slots=True)
class _Held:
    msg: Message
    path: str
    iteration: int
    seqs: list[list[int]]
    deadline: float


class CheckpointGate:
    """Held checkpoint requests and the pushes and pulls deferred by their cut."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.held: list[_Held] = []  # waiting for their cut, in arrival order
        self.deferred: list[Message] = []  # pushes after the pending cut, in arrival order
        self._deferred_by: Counter[tuple[int, int]] = Counter()  # (sender, table) -> deferred pushes
        self.pulls: list[Pull] = []  # pulls waiting for their sender's deferred pushes
        self._answers: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()  # for resent requests
        self._busy = False
        self.written = 0

    @property
    def cut(self) -> int | None:
        """The earliest iteration of a held checkpoint, or None when none is held."""
        return min(h.iteration for h in self.held) if self.held else None

    def limit(self) -> int:
        """The last iteration whose summed pushes may be applied now (aggregating tables)."""
        cut = self.cut
        return NO_CUT if cut is None else cut

    def on_request(self, msg: Message, now: float, out: list[Action]) -> None:
        """A CHECKPOINT request: hold it until its cut is reached (at once if it is)."""
        key = (msg.sender, msg.ts)
        if key in self._answers:  # a resend of a request already answered
            out.append(Reply(msg, body=self._answers[key]))
            return
        if any((h.msg.sender, h.msg.ts) == key for h in self.held):
            return  # a resend of a request still held
        body = CheckpointRequest.from_wire(msg.body)  # seqs: [[table, seq], ...]
        if body.iteration < -1:
            raise ProtocolError("a checkpoint's iteration must be >= -1")
        limit = body.timeout
        if limit is None or limit <= 0:
            raise ProtocolError("a checkpoint's timeout must be a number > 0")
        # The requester gives up after its timeout: stop holding (and deferring pushes) then too.
        self.held.append(_Held(msg, body.path, body.iteration, body.seqs, now + limit))
        out.append(Wake(now + limit))
        self.poll(out)

    def tick(self, now: float, out: list[Action]) -> None:
        """Expire the held requests whose timeout passed."""
        expired = [h for h in self.held if h.deadline <= now]
        if not expired:
            return
        self.held = [h for h in self.held if h.deadline > now]
        for h in expired:
            log.warning("server %d: checkpoint of iteration %d from node %d expired before its cut was reached",
                        self.state.id, h.iteration, h.msg.sender)
            out.append(Fail(h.msg, RequestTimeout(
                f"checkpoint of iteration {h.iteration}: not every live worker finished it in time"),
                with_traceback=False))
        self._replay(out)
        self.poll(out)

    def defer(self, msg: Message, keys: np.ndarray, values: np.ndarray) -> bool:
        """Keep a checked push of an iteration after the pending cut for later; True if kept."""
        if not self.held or msg.clock <= self.limit():
            return False
        self.deferred.append(dataclasses.replace(msg, arrays=[np.array(keys), np.array(values)], body={}))
        self._deferred_by[(msg.sender, msg.table)] += 1
        return True

    def hold_pull(self, pull: Pull) -> bool:
        """Hold a pull whose sender has deferred pushes on its table; True if held."""
        if not self._deferred_by or not self._deferred_by.get((pull.msg.sender, pull.msg.table)):
            return False
        self.pulls.append(pull)
        return True

    def _ready(self, h: _Held) -> bool:
        state = self.state
        for table, seq in h.seqs:
            if not state.caught_up(table, h.msg.sender, seq):
                return False
        lo, hi = state.own.span
        for sync in state.sync.values():
            if sync.channels and sync.slowest(lo, hi, state.workers) < h.iteration:
                return False
            if any(it <= h.iteration for it in sync.pending):
                return False
        return True

    def poll(self, out: list[Action]) -> None:
        """Take the held checkpoints whose cut is reached, then apply what waited for them."""
        if self._busy or not self.held:
            return
        self._busy = True
        try:
            while self.held:
                # Earliest cut first: the pushes deferred for it belong in any later one.
                cut = self.cut
                ready = [h for h in self.held if h.iteration == cut and self._ready(h)]
                if not ready:
                    break
                for h in ready:
                    self.held.remove(h)
                    out.append(self._snapshot(h))
                self._replay(out)
        finally:
            self._busy = False

    def _replay(self, out: list[Action]) -> None:
        """Apply the deferred pushes that are no longer after a pending cut, in order."""
        state = self.state
        limit = self.limit()
        keep = [m for m in self.deferred if m.clock > limit]
        todo = [m for m in self.deferred if m.clock <= limit]
        self.deferred = keep
        self._deferred_by = Counter((m.sender, m.table) for m in keep)
        tables = set()
        for m in todo:
            try:
                state.apply_checked(m, m.arrays[0], m.arrays[1])  # checked when it arrived
            except Exception:
                log.exception("server %d: a push deferred by a checkpoint failed", state.id)
            tables.add(m.table)
        for table in list(state.sync):  # sums held back by the cut, and the replayed ones
            state.aggregate(table, out)
        pulls, self.pulls = self.pulls, []
        for p in pulls:
            if not self.hold_pull(p):
                state.answer(p, out)
        for table in tables:
            state.release(table, out)

    def _snapshot(self, h: _Held) -> WriteCheckpoint:
        """The rows to write for held request ``h``: per table the keys mastered here, with their values,
        optimizer state and the workers' clocks (copies: later pushes do not change them)."""
        state = self.state
        own = state.own
        tables = []
        for tid, store in sorted(state.stores.items()):
            keys = store.keys[:len(store)]
            rows = owned_rows(keys, own.mastered(keys) if own.keymap is not None else None)
            tables.append(TableRows(
                tid, store.spec, store.keys[rows], store.values[rows],
                {s: store.state[s][rows] for s in sorted(store.state)},
                {str(w): ch.iters.min() for w, ch in sorted(state.sync[tid].channels.items())}))
        return WriteCheckpoint(h.msg, h.path, tables, list(own.ranges))

    def written_as(self, msg: Message, body: dict[str, Any]) -> None:
        """The checkpoint of ``msg`` was written: answer its resends with ``body``."""
        self.written += 1
        self._answers[(msg.sender, msg.ts)] = body
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)

    def forget(self, gone: set[int], out: list[Action]) -> None:
        """Requests of workers that left are dropped; a cut may now be reached."""
        if self.held and gone:
            before = len(self.held)
            self.held = [h for h in self.held if h.msg.sender not in gone]
            if len(self.held) != before:
                self._replay(out)
        self.pulls = [p for p in self.pulls if p.msg.sender not in gone]
        self.poll(out)

    def status(self) -> dict[str, Any]:
        """Figures for ``paramserver status``."""
        return {"held": len(self.held), "deferred_pushes": len(self.deferred), "written": self.written}
