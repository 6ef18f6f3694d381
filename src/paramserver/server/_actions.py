"""What the server's state machine asks its I/O shell to do.

:class:`~paramserver.server.ServerState` never touches a socket, a thread or a clock: it
returns these small records and the shell (``_server.py``) carries them out in order, through
the node. Requests the state sends (:class:`Call`) are known by a token; the shell feeds
their outcome back with ``ServerState.answered(token, error)``.

Immutable by convention: the shell reads them once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..placement import KeyMap
from ..protocol import Message, Status

__all__ = ["Action", "Adopt", "Call", "Fail", "Moved", "Reply", "Wake", "WriteCheckpoint"]


@dataclass(slots=True)
class Reply:
    """Answer ``msg``; ``filters`` names the wire filters the request asked for (reply_filters)."""

    msg: Message
    status: Status = Status.OK
    body: dict[str, Any] | None = None
    arrays: list[np.ndarray] | None = None
    filters: tuple[str, ...] = ()


@dataclass(slots=True)
class Moved:
    """Answer ``msg`` "moved" with ``body``; the shell adds (in place, so that a remembered
    answer gets them too) the addresses of the nodes ``holders`` under ``"nodes"``."""

    msg: Message
    body: dict[str, Any]
    holders: frozenset[int]


@dataclass(slots=True)
class Fail:
    """Answer ``msg`` with an error reply describing ``exc``."""

    msg: Message
    exc: BaseException
    with_traceback: bool = True


@dataclass(slots=True)
class Call:
    """Send ``msg`` to ``node`` as a request; report its end as ``answered(token, error)``."""

    node: int
    msg: Message
    what: str
    token: int


@dataclass(slots=True)
class Adopt:
    """Make ``keymap`` the node's key map (the state already uses it)."""

    keymap: KeyMap


@dataclass(slots=True)
class Wake:
    """Call ``ServerState.tick(now)`` once ``now >= at`` (same clock as the ``now`` passed in)."""

    at: float


@dataclass(slots=True)
class TableRows:
    """The rows of one table a checkpoint writes (copies, taken at the cut)."""

    id: int
    spec: Any  # TableSpec
    keys: np.ndarray
    values: np.ndarray
    state: dict[str, np.ndarray]
    clocks: dict[str, int]


@dataclass(slots=True)
class WriteCheckpoint:
    """Write ``tables`` (this server's master rows at the cut) under ``path``, then answer
    ``msg`` with the files written (and report it with ``ServerState.checkpoint_written``)."""

    msg: Message
    path: str
    tables: list[TableRows]
    ranges: list[tuple[int, int]] = field(default_factory=list)


Action = Reply | Moved | Fail | Call | Adopt | Wake | WriteCheckpoint
