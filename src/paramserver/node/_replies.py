"""The reply cache: a request that arrives again is answered again, never handled twice.

Control requests (op < 32: registration, heartbeats, barriers, tables, shards, nodes,
migrations, replication...) are resent by their sender when no answer came in time (the
answer or the request was lost). The receiver keys each request by (connection identity,
sender id, timestamp) and remembers, for the last :data:`CAPACITY` keys, whether it is
still being handled or what its answer was:

==================  ===========================================================
arrival             answer
==================  ===========================================================
a new key           ``NEW``: handle it (and remember it as in progress)
in progress         ``BUSY``: drop it (the answer leaves when the handler sends it)
answered            the answer's peer and frames: send them again
==================  ===========================================================

Data requests are not kept here: pushes and clock ticks are applied exactly once by their
channel sequence numbers (server/_sync.py) and pulls are idempotent.

Invariants: at most :data:`CAPACITY` keys are kept (the oldest go first); a key's answer
is recorded only for a key that arrived (:meth:`ReplyCache.answered` of an unknown key
does nothing). Pure state; not thread-safe (the node's loop uses it alone).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

__all__ = ["CAPACITY", "Arrival", "ReplyCache", "RequestKey"]

#: Requests remembered per node; a resend comes within seconds, after a few hundred others at most.
CAPACITY = 2048

#: (connection identity, sender id as received, timestamp)
RequestKey = tuple[bytes, int, int]


class Arrival(enum.Enum):
    NEW = 0
    BUSY = 1


class ReplyCache:
    """See the module docstring."""

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[RequestKey, tuple[int, list[Any]] | None] = OrderedDict()

    def arrive(self, key: RequestKey) -> Arrival | tuple[int, list[Any]]:
        """A request with ``key`` arrived: NEW, BUSY, or the (peer, frames) of its answer."""
        if key in self._entries:
            entry = self._entries[key]
            return Arrival.BUSY if entry is None else entry
        self._entries[key] = None
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return Arrival.NEW

    def answered(self, key: RequestKey, peer: int, frames: list[Any]) -> None:
        """The request ``key`` was answered with ``frames`` sent to ``peer``."""
        if key in self._entries:
            self._entries[key] = (peer, frames)

    def __len__(self) -> int:
        return len(self._entries)
