"""The node's outgoing links: opening them, counting what leaves, and requests held to leave together.

:class:`Links` opens one transport link per peer it sends to (from the node table, or an
address given before the table knows the peer), counts messages and bytes (overall and per
table), and applies Nagle's rule to *coalescing* parts (worker data requests): while a peer
owes answers to earlier ones, a new part is held, and the held parts leave as one batch
when the peer answers (:meth:`Links.answered`), when a caller starts to wait
(:meth:`Links.release_all`), or after :data:`HOLD_S` (the node's timer). So 8 requests in
flight do not mean 8 messages, and a synchronous caller never waits (nothing is owed).

Invariants: a held part is never overtaken by a later part to the same peer (a part is held
while anything is held for its peer); what a peer owes is tracked by request timestamp, so
an answer, a finished request (a cancelled pull) or the peer's death settles it exactly;
a part is never held for a peer whose link is closed (it fails instead).

Thread-safety: every method may be called from any thread (one lock guards the links and
the held parts, another the counters).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import NodeUnavailable, PSError
from ..transport import Transport, key_role
from . import _batch as batch
from ._info import NodeInfo

__all__ = ["HOLD_S", "Links"]

log = logging.getLogger("paramserver.node")

#: The longest a coalescing part waits to leave with others to the same peer (seconds).
HOLD_S = 0.001

Frames = list[Any]


class Links:
    """Outgoing links and counters of one node. See the module docstring.

    ``arm(delay, fn)`` schedules ``fn`` on the node's loop (the hold timer).
    """

    def __init__(self, transport: Transport, arm: Callable[[float, Callable[[], None]], None]) -> None:
        self.transport = transport
        self._arm = arm
        self._lock = threading.Lock()
        self._connected: set[int] = set()
        self._roles: dict[int, str] = {}  # peer -> the role of the key it listens with
        self._held: dict[int, list[tuple[Frames, int]]] = {}
        self._owed: dict[int, set[int]] = {}  # peer -> ts of coalescing parts it owes an answer
        self._armed = False  # a release timer is pending
        self._count_lock = threading.Lock()
        self.counters: defaultdict[str, int] = defaultdict(int)
        #: (table, "sent"|"received") -> bytes.
        self.table_bytes: defaultdict[tuple[int, str], int] = defaultdict(int)
        #: (table, "sent"|"received", filter) -> [bytes before, bytes after] the filter.
        self.filter_bytes: defaultdict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])

    # ------------------------------------------------------------------ links
    def connect(self, node: int, address: str, role: str = "") -> None:
        """Open (or re-point) the link to ``node``, whose key (with CURVE) is ``role``'s."""
        with self._lock:
            role = role or self._roles.get(node, "")
            self.transport.connect(node, address, role)
            self._connected.add(node)
            self._roles[node] = role

    def repoint(self, moved: Iterable[tuple[int, str]]) -> None:
        """Re-point the open links of nodes whose address changed."""
        with self._lock:
            for node, address in moved:
                if node in self._connected:
                    self.transport.connect(node, address, self._roles.get(node, ""))

    def ensure(self, node: int, info: NodeInfo | None) -> None:
        """Open the link to ``node`` (from its node-table entry ``info``) unless it is open.

        Raises
        ------
        NodeUnavailable
            The link is not open and ``info`` is None (the peer is not in the node table).
        """
        if node in self._connected:
            return
        with self._lock:
            if node in self._connected:
                return
            if info is None:
                raise NodeUnavailable(f"node {node} is not in the node table (dead or never joined)")
            role = key_role(info.role)
            self.transport.connect(node, info.address, role)
            self._connected.add(node)
            self._roles[node] = role

    def drop(self, node: int, *, close: bool) -> None:
        """``node`` failed: forget what is held for it and what it owes; close its link if ``close``."""
        with self._lock:
            self._held.pop(node, None)
            self._owed.pop(node, None)
            if close and node in self._connected:
                self._connected.discard(node)
                self.transport.disconnect(node)

    def send(self, node: int, frames: Frames, table: int) -> int:
        """Send ``frames`` to ``node`` (its link open) and count them; return the bytes sent."""
        nbytes = self.transport.send(node, frames)
        self.count_message("sent", nbytes, table)
        return nbytes

    # ------------------------------------------------------------------ coalescing
    def hold(self, ts: int, peer: int, frames: Frames, table: int) -> bool:
        """Count part ``ts`` to ``peer`` as owed; True if it was held (the peer owes answers,
        or has held parts it must not overtake), False if the caller sends it now.

        Raises
        ------
        NodeUnavailable
            The link to ``peer`` was closed (it failed): the part must not wait for it.
        """
        with self._lock:
            if peer not in self._connected:
                raise NodeUnavailable(f"the connection to node {peer} was closed")
            owed = self._owed.setdefault(peer, set())
            q = self._held.get(peer)
            hold = bool(owed) or bool(q)
            owed.add(ts)
            if not hold:
                return False
            if q is None:
                q = self._held[peer] = []
            q.append((frames, table))
            arm = not self._armed
            self._armed = True
        if arm:
            self._arm(HOLD_S, self._timer)
        return True

    def answered(self, peer: int, ts: int) -> bool:
        """``peer`` answered ``ts``; True if parts are held for it (release them)."""
        with self._lock:
            owed = self._owed.get(peer)
            if owed:
                owed.discard(ts)
            return peer in self._held

    def settled(self, ts: int, peers: Iterable[int]) -> None:
        """Request ``ts`` ended: its peers owe nothing more for it."""
        if not self._owed:
            return
        with self._lock:
            for peer in peers:
                owed = self._owed.get(peer)
                if owed:
                    owed.discard(ts)

    def release(self, peer: int) -> None:
        """Send what is held for ``peer``, as one message or one batch."""
        with self._lock:
            q = self._held.pop(peer, None)
        if not q:
            return
        try:
            for i in range(0, len(q), batch.MAX_BATCH):
                chunk = q[i:i + batch.MAX_BATCH]
                frames = chunk[0][0] if len(chunk) == 1 else batch.pack([f for f, _ in chunk])
                self.transport.send(peer, frames)
                for f, table in chunk:
                    self.count_message("sent", sum(memoryview(x).nbytes for x in f), table)
        except PSError as exc:  # the peer is gone: its death fails or reroutes the requests
            log.debug("held requests to node %d not sent: %s", peer, exc)

    def release_all(self) -> None:
        """Send everything held (a caller is about to wait)."""
        if not self._held:
            return
        with self._lock:
            peers = list(self._held)
        for peer in peers:
            self.release(peer)

    def _timer(self) -> None:
        with self._lock:
            self._armed = False
        self.release_all()

    # ------------------------------------------------------------------ counters
    def count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[name] += n

    def count_message(self, direction: str, nbytes: int, table: int) -> None:
        """One message of ``nbytes`` ``direction`` ("sent" or "received"), of ``table`` if >= 0."""
        with self._count_lock:
            counters = self.counters
            counters["messages_" + direction] += 1
            counters["bytes_" + direction] += nbytes
            if table >= 0:
                self.table_bytes[(table, direction)] += nbytes

    def count_filter(self, table: int, direction: str, name: str, before: int, after: int) -> None:
        with self._count_lock:
            entry = self.filter_bytes[(table, direction, name)]
            entry[0] += before
            entry[1] += after

    def snapshot(self) -> tuple[dict[str, int], dict[tuple[int, str], int], dict[tuple[int, str, str], list[int]]]:
        """Copies of the counters, per-table bytes and per-filter bytes, read together."""
        with self._count_lock:
            return (dict(self.counters), dict(self.table_bytes),
                    {k: list(v) for k, v in self.filter_bytes.items()})
