"""The scheduler's own requests that await an answer, and when to send them again.

The core (``_core.py``) sends requests as plain :class:`~._core.Send` actions (NODES
broadcasts, table creations, migrations, status gathers, pings, shutdowns) and matches the
answers by timestamp. When resends are on (PS_RESEND_TIMEOUT, or fault injection), the shell
keeps each such request here until the node answers it, leaves, or ``give_up`` seconds
passed (the core's own deadline for the exchange has then run out), and sends it again
every ``after`` seconds meanwhile; receivers answer a request that comes again from their
reply cache (node/_replies.py) without handling it twice.

Pure state (``now`` passed in); not thread-safe (the scheduler's loop uses it alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import Message

__all__ = ["Resends"]


@dataclass(slots=True)
class _Out:
    msg: Message
    due: float
    until: float


class Resends:
    """See the module docstring."""

    __slots__ = ("_out", "after", "give_up")

    def __init__(self, after: float, give_up: float) -> None:
        self.after = after
        self.give_up = give_up
        self._out: dict[tuple[int, int], _Out] = {}

    def sent(self, node: int, msg: Message, now: float) -> None:
        """The request ``msg`` left for ``node`` (a resend of it keeps its first deadline)."""
        key = (node, msg.ts)
        old = self._out.get(key)
        self._out[key] = _Out(msg, now + self.after, old.until if old is not None else now + self.give_up)

    def answered(self, node: int, ts: int) -> None:
        self._out.pop((node, ts), None)

    def gone(self, node: int) -> None:
        """``node`` left or died: nothing more goes to it."""
        for key in [k for k in self._out if k[0] == node]:
            del self._out[key]

    def due(self, now: float) -> list[tuple[int, Message]]:
        """The requests to send again now (each rescheduled ``after`` later); requests past
        their deadline are dropped."""
        out = []
        for key, o in list(self._out.items()):
            if now >= o.until:
                del self._out[key]
            elif now >= o.due:
                o.due = now + self.after
                out.append((key[0], o.msg))
        return out

    def __len__(self) -> int:
        return len(self._out)
