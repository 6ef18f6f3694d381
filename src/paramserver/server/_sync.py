"""Per-table synchronisation state on a server: ordered channels, clocks, held pulls.

Every worker has one *channel* per table to this server. Its ordered messages (pushes and
clock ticks) carry sequence numbers 1, 2, 3... in the order the worker sent them. The
channel keeps:

* ``done``: the last sequence number handled. A message whose number is not above it is a
  duplicate (a resend, or a copy): it is answered again as the first time and not applied,
  so every push is applied exactly once. A message that arrives ahead of a gap waits until
  the gap is filled, so pushes apply in the order they were issued.
* ``iters``: a range vector clock, on each key range the last iteration the worker finished
  (-1 before any). The minimum over live workers is the aggregation status that bounded
  delay needs: "has every live worker pushed iteration t for range R". Replicas keep it
  too, from the ticks their master forwards, so a promoted replica knows it at once.

Across owners (chain replication, failover, migration) a push is known by its *request
id*: the worker's timestamp of the push it belongs to, kept when a part is sliced again and
sent to new owners. ``applied`` records, per worker and request id, the keys applied here
(by the worker's own part, or forwarded down a chain, or copied by a migration), so a part
sent again applies only the keys not applied yet: each key of a push is applied exactly
once, whichever ways its pieces travelled. A worker's messages carry its *low-water mark*
(the oldest request it has not finished); records below it are dropped, so the record holds
the requests in flight only. Tables that aggregate replicate whole iterations, so they
record the last iteration replicated per origin server instead (``agg_seen``).

A pull waits (held, without blocking the server) until the channel has applied what the
same worker pushed before it (read-your-writes) and, under bounded delay, until every live
worker has finished iteration ``t - tau - 1``. It is held as a :class:`Pull`: the request
and what its body asked for, parsed once when it was checked.

Not thread-safe: used on the server's receive thread only.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import ProtocolError
from ..clock import Consistency, RangeClock
from ..placement import in_ranges
from ..protocol import Message
from ..table import Store, TableSpec
from ._snapshots import Snapshots

__all__ = ["Channel", "Pull", "TableSync"]

MAX_ERRORS_KEPT = 4096


@dataclass(slots=True)
class Pull:
    """A checked pull or range pull: ``msg``, the wire filters of its reply, its per-call
    consistency (None: the table's, read when it is answered), for a range pull the ranges
    it asks for (``[lo, hi)`` pairs, none empty), and for a snapshot read the iteration
    (None: the current values)."""

    msg: Message
    filters: tuple[str, ...]
    policy: Consistency | None
    ranges: list[tuple[int, int]]
    snapshot: int | None = None
    #: For a range pull of a delta: only rows pushed after this iteration.
    since: int | None = None


@dataclass
class Channel:
    """One worker's ordered messages on one table of this server."""

    done: int = 0
    iters: RangeClock = field(default_factory=lambda: RangeClock(-1))
    waiting: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def remember_error(self, seq: int, status: int, body: dict[str, Any]) -> None:
        """Keep the answer (error or "moved") of a handled message, so that a resend gets
        the same answer."""
        self.errors[seq] = (status, body)
        if len(self.errors) > MAX_ERRORS_KEPT:
            del self.errors[min(self.errors)]


@dataclass
class TableSync:
    """Channels, consistency policy and held pulls of one table on one server."""

    policy: Consistency = field(default_factory=Consistency)
    channels: dict[int, Channel] = field(default_factory=dict)
    held: dict[tuple[int, int], Pull] = field(default_factory=dict)  # (sender, ts) -> pull
    #: For tables that aggregate: iteration -> the sum of its pushes, not applied yet.
    pending: dict[int, Store] = field(default_factory=dict)
    #: For tables that aggregate: iteration -> partial sums handed over by a migration for keys
    #: this server holds but does not master (yet): taken into ``pending`` if it becomes their
    #: master, dropped once their master replicates the iteration's sum (server/_migrate.py).
    standby: dict[int, Store] = field(default_factory=dict)
    #: For tables that aggregate with replicas: iteration -> pushes answered once it is replicated.
    acks: dict[int, list[Message]] = field(default_factory=dict)
    #: The last iteration this server aggregated and applied as master (-1: none).
    agg_done: int = -1
    #: worker -> {request id -> (keys applied from first sends, keys applied from parts sent
    #: again)}, lists of sorted arrays; see the module docstring.
    applied: dict[int, dict[int, tuple[list[np.ndarray], list[np.ndarray]]]] = field(default_factory=dict)
    #: worker -> the highest low-water mark it sent (records below it are gone).
    low_water: dict[int, int] = field(default_factory=dict)
    #: origin server -> last aggregated iteration of that origin applied here.
    agg_seen: dict[int, int] = field(default_factory=dict)
    #: Workers attached read-only: their pushes and ticks are refused, so they never have a
    #: channel and never count in ``slowest`` (aggregation, bounded delay, checkpoint cuts).
    readers: set[int] = field(default_factory=set)
    #: The undo log behind snapshot reads of a table that aggregates (``_snapshots.py``).
    snapshots: Snapshots = field(default_factory=lambda: Snapshots(0))

    def fresh(self, worker: int, rid: int, keys: np.ndarray, again: bool) -> np.ndarray | None:
        """Which of ``keys`` of request ``rid`` of ``worker`` are not applied here yet: a
        boolean mask, or None if all of them are fresh (the usual case, found without a search).

        The parts of one request's first send hold disjoint keys, so a first-send piece
        (``again`` False) is compared only with keys applied from parts sent again; a part
        sent again (re-sliced for new owners) is compared with everything applied."""
        rec = self.applied.get(worker, {}).get(rid)
        if rec is None:
            return None
        against = rec[0] + rec[1] if again else rec[1]
        if not against:
            return None
        done = against[0] if len(against) == 1 else np.concatenate(against)
        return ~np.isin(keys, done)

    def note(self, worker: int, rid: int, keys: np.ndarray, low_water: int = 0, again: bool = False) -> None:
        """Record that ``keys`` of request ``rid`` of ``worker`` are applied here (``again``:
        from a part sent again); drop the records the worker's ``low_water`` mark says it
        will never send again."""
        if low_water > self.low_water.get(worker, 0):
            self.low_water[worker] = low_water
            mine = self.applied.get(worker)
            if mine:
                for r in [r for r in mine if r < low_water]:
                    del mine[r]
        if rid < self.low_water.get(worker, 0) or not len(keys):
            return
        self.applied.setdefault(worker, {}).setdefault(rid, ([], []))[1 if again else 0].append(keys)

    def keys_applied(self, worker: int, rid: int) -> np.ndarray:
        """Every key of request ``rid`` of ``worker`` applied here, sorted (for tests and status)."""
        first, again = self.applied.get(worker, {}).get(rid, ([], []))
        parts = first + again
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)

    def applied_in(self, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """The records of keys in ``ranges`` (sorted, disjoint ``[lo, hi)``), as four arrays for
        a migration: workers, request ids, key counts (int64) and the keys (uint64)."""
        workers, rids, counts, keys = [], [], [], []
        for w, mine in self.applied.items():
            for rid in mine:
                ks = self.keys_applied(w, rid)
                pick = ks[in_ranges(ks, ranges)]
                if len(pick):
                    workers.append(w)
                    rids.append(rid)
                    counts.append(len(pick))
                    keys.append(pick)
        return [np.array(workers, dtype=np.int64), np.array(rids, dtype=np.int64),
                np.array(counts, dtype=np.int64),
                np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)]

    def load_applied(self, arrays: list[np.ndarray]) -> None:
        """Merge records sent by :meth:`applied_in` (kept as sent again: every later piece of
        those requests is compared with them)."""
        workers, rids, counts, keys = arrays
        if any(a.dtype != np.int64 or a.ndim != 1 for a in (workers, rids, counts)) or keys.dtype != np.uint64:
            raise ProtocolError("applied-key records are 1-D int64 workers, ids and counts, and uint64 keys")
        if not (len(workers) == len(rids) == len(counts)) or int(counts.sum()) != len(keys):
            raise ProtocolError("applied-key records whose counts do not match their keys")
        ends = np.cumsum(counts)
        for w, rid, end, n in zip(workers.tolist(), rids.tolist(), ends.tolist(), counts.tolist(), strict=True):
            self.note(w, rid, keys[end - n:end], again=True)

    def buffer(self, iteration: int, store: Store) -> Store:
        """The pending sum of ``iteration`` for the aggregating table held in ``store``
        (created empty, with the table's width and dtype and a "sum" updater, if absent)."""
        buffer = self.pending.get(iteration)
        if buffer is None:
            buffer = self.pending[iteration] = Store(TableSpec.create(
                f"{store.spec.name}@{iteration}", store.width, store.dtype, "sum"))
        return buffer

    def agg_duplicate(self, origins: Sequence[Sequence[int]], iteration: int) -> bool:
        """Was this iteration's sum already applied here under one of ``origins``?"""
        return any(self.agg_seen.get(o, -1) >= iteration for o, _ in origins)

    def channel(self, worker: int) -> Channel:
        ch = self.channels.get(worker)
        if ch is None:
            ch = self.channels[worker] = Channel()
        return ch

    def slowest(self, lo: int, hi: int, live: Set[int]) -> int:
        """The smallest iteration finished on ``[lo, hi)`` by the live workers of this table
        (everything, once no worker of the table is left: nobody else can contribute)."""
        times = [ch.iters.min(lo, hi) for w, ch in self.channels.items() if w in live]
        if times:
            return min(times)
        return -1 if not self.channels and not self.pending else 1 << 62

    def caught_up(self, sender: int, seq: int) -> bool:
        """Read-your-writes: has the channel of ``sender`` handled its messages up to ``seq``
        (always true for ``seq`` 0, a request that follows no ordered message, and for a
        reader, whose ordered messages are all refused)?"""
        if not seq or sender in self.readers:
            return True
        ch = self.channels.get(sender)
        return ch is not None and ch.done >= seq

    def finished(self, iteration: int, lo: int, hi: int, live: Set[int]) -> bool:
        """Is the aggregating table's ``iteration`` applied here on ``[lo, hi)``: no sum of
        it or before it pending, and every live writer finished it (or, once none is left,
        it is not after the last iteration applied)?"""
        if any(i <= iteration for i in self.pending):
            return False
        return iteration <= self.agg_done or self.slowest(lo, hi, live) >= iteration

    def ready(self, pull: Message, lo: int, hi: int, live: Set[int], policy: Consistency) -> bool:
        """May ``pull`` be answered now (read-your-writes and bounded delay)?"""
        if not self.caught_up(pull.sender, pull.seq):
            return False
        if policy.kind != "bounded":
            return True
        return policy.pull_ready(pull.clock, self.slowest(lo, hi, live))

    def forget(self, workers: set[int]) -> None:
        """Drop the channels and held pulls of workers that left."""
        for w in workers:
            self.channels.pop(w, None)
        for key in [k for k in self.held if k[0] in workers]:
            del self.held[key]
