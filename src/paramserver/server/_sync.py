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

Across owners (chain replication, failover) a message is known by its *origins*: the
``(server, sequence number)`` pairs under which it was sent before. ``seen`` records, per
origin server and worker, the last number applied here (forwarded by that server as master
of a chain this server belongs to); a part that a worker sends on to a promoted replica is
skipped if one of its origins was already applied. Tables that aggregate replicate whole
iterations, so they record the last iteration replicated per origin instead (``agg_seen``).

A pull waits (held, without blocking the server) until the channel has applied what the
same worker pushed before it (read-your-writes) and, under bounded delay, until every live
worker has finished iteration ``t - tau - 1``.

Not thread-safe: used on the server's receive thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..clock import Consistency, RangeClock
from ..protocol import Message

__all__ = ["Channel", "TableSync"]

MAX_ERRORS_KEPT = 4096


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
    held: dict[tuple[int, int], Message] = field(default_factory=dict)  # (sender, ts) -> pull
    #: For tables that aggregate: iteration -> the sum of its pushes, not applied yet.
    pending: dict[int, Any] = field(default_factory=dict)
    #: For tables that aggregate with replicas: iteration -> pushes answered once it is replicated.
    acks: dict[int, list[Message]] = field(default_factory=dict)
    #: The last iteration this server aggregated and applied as master (-1: none).
    agg_done: int = -1
    #: (origin server, worker) -> on each key range, the last sequence number of that origin
    #: applied here (a push's keys may reach a replica by several chains, so per range).
    seen: dict[tuple[int, int], RangeClock] = field(default_factory=dict)
    #: origin server -> last aggregated iteration of that origin applied here.
    agg_seen: dict[int, int] = field(default_factory=dict)

    def duplicate(self, worker: int, origins: list[tuple[int, int]], spans: list[tuple[int, int]],
                  iteration: int, aggregate: bool, keys: np.ndarray | None = None) -> bool:
        """Was a message with these origins already applied here (through a replica chain)?
        A push is judged by its ``keys`` (each must have been applied under the origin), a
        tick by its ``spans`` (``[lo, hi)`` pieces)."""
        if aggregate:
            return any(self.agg_seen.get(o, -1) >= iteration for o, _ in origins)
        for o, q in origins:
            rc = self.seen.get((o, worker))
            if rc is None:
                continue
            if keys is not None:
                if len(keys) and bool(np.all(rc.times(keys) >= q)):
                    return True
            elif spans and all(rc.min(lo, hi) >= q for lo, hi in spans):
                return True
        return False

    def record(self, worker: int, origins: list[tuple[int, int]], spans: list[tuple[int, int]]) -> None:
        for o, q in origins:
            rc = self.seen.get((o, worker))
            if rc is None:
                rc = self.seen[(o, worker)] = RangeClock()
            for lo, hi in spans:
                rc.advance(lo, hi, q)

    def channel(self, worker: int) -> Channel:
        ch = self.channels.get(worker)
        if ch is None:
            ch = self.channels[worker] = Channel()
        return ch

    def slowest(self, lo: int, hi: int, live: set[int]) -> int:
        """The smallest iteration finished on ``[lo, hi)`` by the live workers of this table
        (everything, once no worker of the table is left: nobody else can contribute)."""
        times = [ch.iters.min(lo, hi) for w, ch in self.channels.items() if w in live]
        if times:
            return min(times)
        return -1 if not self.channels and not self.pending else 1 << 62

    def ready(self, pull: Message, lo: int, hi: int, live: set[int], policy: Consistency) -> bool:
        """May ``pull`` be answered now (read-your-writes and bounded delay)?"""
        ch = self.channels.get(pull.sender)
        if pull.seq and (ch is None or ch.done < pull.seq):
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
