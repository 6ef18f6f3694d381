"""What the scheduler tells observers beyond membership: the nodes' heartbeat reports and a
timeline of what happened to the cluster.

:class:`Timeline` is pure state owned by :class:`SchedulerCore`: fed ``now`` (the core's
clock) and the events the core sees (a node joined, died, finished or was drained; a server
failed over; a key-map migration ended; a heartbeat reported a new checkpoint), it keeps the
last :data:`MAX_EVENTS` events and the last report of every member, for ``STATUS``
(``ClusterStatus.events`` and ``ClusterStatus.reports``), where the dashboard and
``paramserver metrics`` read them.

Invariants: events are in the order they were added, their times (seconds since the
scheduler started) never decrease, and a node has a report only while it is a member
(:meth:`forget` drops it).

Not thread-safe: the core calls it from one thread.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["EVENT_KINDS", "MAX_EVENTS", "Timeline"]

#: Events kept; older ones are dropped first.
MAX_EVENTS = 500

#: The kinds of events, as they appear in ``ClusterStatus.events``.
EVENT_KINDS = ("join", "failure", "failover", "finish", "drain", "migration", "checkpoint", "rebuild")


class Timeline:
    """Events and heartbeat reports; see the module docstring."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.events: deque[list[Any]] = deque(maxlen=MAX_EVENTS)
        self._reports: dict[int, tuple[float, dict[str, Any]]] = {}

    def add(self, now: float, kind: str, node: int, text: str) -> None:
        """Record that ``kind`` happened to ``node`` (-1: the cluster) at ``now``."""
        assert kind in EVENT_KINDS, kind
        t = round(max(now - self.started, self.events[-1][0] if self.events else 0.0), 3)
        self.events.append([t, kind, node, text])

    def report(self, node: int, report: dict[str, Any], now: float, what: str) -> None:
        """The heartbeat of ``node`` (described as ``what``) carried ``report``.

        A worker's report counts the checkpoints it wrote (``checkpoints``, with the last
        one's ``checkpoint_iteration``); a count above the previous report's is a checkpoint
        event.
        """
        before = self._reports.get(node)
        written = report.get("checkpoints")
        was = before[1].get("checkpoints") if before else 0
        if type(written) is int and written > (was if type(was) is int else 0):
            it = report.get("checkpoint_iteration")
            self.add(now, "checkpoint", node, f"{what} wrote a checkpoint" + (
                f" of iteration {it}" if isinstance(it, int) else ""))
        self._reports[node] = (now, report)

    def forget(self, node: int) -> None:
        """``node`` is no longer a member: its report goes."""
        self._reports.pop(node, None)

    def reports(self, now: float) -> dict[str, Any]:
        """Node id (a string) -> its last report, with ``age``: seconds since it came."""
        return {str(n): {**r, "age": round(now - t, 3)} for n, (t, r) in sorted(self._reports.items())}

    def to_wire(self) -> list[list[Any]]:
        """The events, oldest first (copies)."""
        return [list(e) for e in self.events]
