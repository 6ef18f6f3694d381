"""Typed bodies of the data path: PUSH, PULL, PULL_RANGE, CLOCK, and the server-to-server
REPLICATE, MIGRATE and CHECKPOINT messages.

Key ranges travel as ``[lo, last]`` pairs (last included, so that 2**64 - 1 fits msgpack);
``origins`` as ``[server, seq]`` pairs (the masters a replicated update came through).
REPLICATE and MIGRATE bodies come in kinds told apart by a tag field (``kind``, ``phase``):
:func:`replicate_from_wire` and :func:`migrate_from_wire` pick the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._errors import ProtocolError
from ._body import OMIT, Body

__all__ = [
    "CheckpointReply", "CheckpointRequest", "ClockBody", "MigrateCopy", "MigrateCopyReply", "MigrateLoad",
    "MigrateSums", "MigrateSwitch", "PullBody", "PullRangeBody", "PushBody", "ReplicateAgg", "ReplicateClock",
    "ReplicatePush", "migrate_from_wire", "replicate_from_wire",
]


def _pairs(value: list[list[Any]], name: str) -> None:
    if value and any(len(p) != 2 for p in value):
        raise ProtocolError(f"message body field {name!r} must be a list of pairs")


@dataclass(slots=True, kw_only=True)
class PushBody(Body):
    """PUSH, worker -> server: ``rid`` the request id (the push's timestamp when left out),
    ``lw`` the worker's low-water mark, ``origins`` the masters a forwarded push came through."""

    rid: int | None = field(default=None, metadata=OMIT)
    lw: int = field(default=0, metadata=OMIT)
    origins: list[list[int]] = field(default_factory=list, metadata=OMIT)

    def __post_init__(self) -> None:
        _pairs(self.origins, "origins")

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> PushBody:
        """As :meth:`Body.from_wire`, with a fast path for the usual push of a worker's channel
        (at most ``rid`` and ``lw``, both ints): it is read once per push on the server."""
        if type(body) is dict and "origins" not in body:
            rid = body.get("rid")
            lw = body.get("lw", 0)
            if (rid is None or type(rid) is int) and type(lw) is int:
                push = object.__new__(cls)  # the fields set directly: nothing left to check
                push.rid, push.lw, push.origins = rid, lw, []
                return push
        return Body.from_wire.__func__(cls, body)  # type: ignore[attr-defined, no-any-return]


@dataclass(slots=True, kw_only=True)
class PullBody(Body):
    """PULL, worker -> server: wire filters for the reply's values, a per-call consistency
    model (``Consistency.to_wire()``; None: the table's) and, for a table that keeps
    snapshots, the finished iteration to read the values at (None: the current values)."""

    reply_filters: list[str] = field(default_factory=list, metadata=OMIT)
    consistency: dict[str, Any] | None = field(default=None, metadata=OMIT)
    snapshot: int | None = field(default=None, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class PullRangeBody(PullBody):
    """PULL_RANGE, worker -> server: the ranges to read (None: the header's key range) and,
    for a delta, the iteration after which the rows must have been pushed (None: all rows)."""

    ranges: list[list[int]] | None = field(default=None, metadata=OMIT)
    since: int | None = field(default=None, metadata=OMIT)

    def __post_init__(self) -> None:
        if self.ranges is not None:
            _pairs(self.ranges, "ranges")


@dataclass(slots=True, kw_only=True)
class ClockBody(Body):
    """CLOCK, worker -> server (the iteration and range are in the header)."""

    origins: list[list[int]] = field(default_factory=list, metadata=OMIT)

    def __post_init__(self) -> None:
        _pairs(self.origins, "origins")


@dataclass(slots=True, kw_only=True)
class _Replicate(Body):
    worker: int
    origins: list[list[int]]
    chain: list[int]

    def __post_init__(self) -> None:
        _pairs(self.origins, "origins")


@dataclass(slots=True, kw_only=True)
class ReplicatePush(_Replicate):
    """REPLICATE of one worker's push (keys and values in the arrays): ``rid``, ``lw`` and
    ``again`` identify it in the worker's channel (``rid`` -1: outside any channel)."""

    TAG: ClassVar[tuple[str, str] | None] = ("kind", "push")
    rid: int = field(default=-1, metadata=OMIT)
    lw: int = field(default=0, metadata=OMIT)
    again: bool = False


@dataclass(slots=True, kw_only=True)
class ReplicateAgg(_Replicate):
    """REPLICATE of an iteration's aggregated sum (iteration in the header's clock)."""

    TAG: ClassVar[tuple[str, str] | None] = ("kind", "agg")


@dataclass(slots=True, kw_only=True)
class ReplicateClock(_Replicate):
    """REPLICATE of a clock tick on ``ranges``."""

    TAG: ClassVar[tuple[str, str] | None] = ("kind", "clock")
    ranges: list[list[int]]

    def __post_init__(self) -> None:
        _pairs(self.origins, "origins")
        _pairs(self.ranges, "ranges")


_REPLICATES: dict[Any, type[_Replicate]] = {"push": ReplicatePush, "agg": ReplicateAgg, "clock": ReplicateClock}


def replicate_from_wire(body: dict[str, Any]) -> ReplicatePush | ReplicateAgg | ReplicateClock:
    """The REPLICATE body of its ``kind``.

    Raises
    ------
    ProtocolError
        Unknown kind, or a field missing or mistyped.
    """
    kind = body.get("kind") if type(body) is dict else None
    cls = _REPLICATES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown replication kind {kind!r}")
    return cls.from_wire(body)  # type: ignore[return-value]


@dataclass(slots=True, kw_only=True)
class MigrateCopy(Body):
    """MIGRATE, scheduler -> source server: adopt the intermediate ``keymap`` and copy the
    ranges of ``plan`` (``[[target, ranges]...]``) to their targets."""

    TAG: ClassVar[tuple[str, str] | None] = ("phase", "copy")
    keymap: dict[str, Any]
    plan: list[list[Any]]

    def __post_init__(self) -> None:
        _pairs(self.plan, "plan")


@dataclass(slots=True, kw_only=True)
class MigrateCopyReply(Body):
    """The answer to a copy: the keys this server has sent by migrations so far."""

    keys: int


@dataclass(slots=True, kw_only=True)
class MigrateSwitch(Body):
    """MIGRATE, scheduler -> server: adopt the final ``keymap``."""

    TAG: ClassVar[tuple[str, str] | None] = ("phase", "switch")
    keymap: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class MigrateLoad(Body):
    """MIGRATE, source -> target server: rows of ``ranges`` (arrays: keys, values, one per
    ``state`` name, 4 of applied keys) and each worker's finished iteration (``iters``,
    ``[[worker, iteration]...]``)."""

    TAG: ClassVar[tuple[str, str] | None] = ("phase", "load")
    ranges: list[list[int]]
    state: list[str]
    iters: list[list[int]]

    def __post_init__(self) -> None:
        _pairs(self.ranges, "ranges")
        _pairs(self.iters, "iters")


@dataclass(slots=True, kw_only=True)
class MigrateSums(Body):
    """MIGRATE, old -> new master: the partial sums of iteration ``pending`` (keys, values)."""

    TAG: ClassVar[tuple[str, str] | None] = ("phase", "load")
    pending: int


def migrate_from_wire(body: dict[str, Any]) -> MigrateCopy | MigrateSwitch | MigrateLoad | MigrateSums:
    """The MIGRATE body of its ``phase`` (a load with ``pending`` is a hand-over of sums).

    Raises
    ------
    ProtocolError
        Unknown phase, or a field missing or mistyped.
    """
    phase = body.get("phase") if type(body) is dict else None
    if phase == "copy":
        return MigrateCopy.from_wire(body)
    if phase == "switch":
        return MigrateSwitch.from_wire(body)
    if phase == "load":
        return MigrateSums.from_wire(body) if body.get("pending") is not None else MigrateLoad.from_wire(body)
    raise ProtocolError(f"unknown migration phase {phase!r}")


@dataclass(slots=True, kw_only=True)
class CheckpointRequest(Body):
    """CHECKPOINT, worker -> server: write the master ranges to ``path`` at the cut after
    ``iteration`` (-1: now), within ``timeout`` seconds (None: no limit), once the pushes
    numbered up to ``seqs`` (``[[table, seq]...]``) arrived."""

    path: str
    iteration: int
    timeout: float | None = None
    seqs: list[list[int]] = field(default_factory=list, metadata=OMIT)

    def __post_init__(self) -> None:
        _pairs(self.seqs, "seqs")


@dataclass(slots=True, kw_only=True)
class CheckpointReply(Body):
    """The answer to CHECKPOINT: the ranges written and, by table name, what the manifest
    needs (``{id, spec, count, files, clocks}``)."""

    ranges: list[list[int]]
    tables: dict[str, Any]
