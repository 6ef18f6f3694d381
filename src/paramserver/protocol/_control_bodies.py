"""Typed bodies of the control operations (op < 32) and of the status-bearing replies.

One slotted dataclass per op and direction; field names are the wire names (docs/protocol.md).
Values that upper layers own travel in their wire form and are converted by their users: a
node table entry is ``NodeInfo.to_wire()`` (a list), a key map ``KeyMap.to_wire()`` (a map), a
table spec ``TableSpec.to_wire()``, a consistency policy ``Consistency.to_wire()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._body import OMIT, Body

__all__ = [
    "Barrier", "Bye", "ClusterStatus", "Drain", "DrainReply", "ErrorReply", "Heartbeat", "Moved", "Nodes", "Ping",
    "PolicyRequest", "PolicyUpdate", "RegisterReply", "RegisterRequest", "ResendKeys", "Shutdown", "StatusRequest",
    "Suspect", "TableCreate", "TableDeclare", "TableReply", "TaskReply", "TaskRequest",
]


@dataclass(slots=True, kw_only=True)
class RegisterRequest(Body):
    """REGISTER, node -> scheduler: who joins (``rank`` -1: any worker rank); a worker names
    its ``group`` ("": the default group) and, for a named group, the group's size
    (``group_workers``, 0: any number; the first member of a group fixes it)."""

    role: str
    address: str
    host: str = ""
    pid: int = 0
    rank: int = field(default=-1, metadata=OMIT)
    group: str = field(default="", metadata=OMIT)
    group_workers: int = field(default=0, metadata=OMIT)
    #: A random number the node draws once: a REGISTER sent again (its scheduler restarted
    #: before answering) is known by it and never makes a second member.
    nonce: int = field(default=0, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class Nodes(Body):
    """NODES, scheduler -> every node: the node table (``NodeInfo`` wire lists), the key map
    (None before the first server joined) and the nodes that died or left.

    ``table_version`` grows with every table one scheduler process sends: a broadcast that was
    delayed on the network and arrives after a newer one is known by it and ignored."""

    nodes: list[list[Any]]
    keymap: dict[str, Any] | None = None
    dead: list[int] = field(default_factory=list, metadata=OMIT)
    table_version: int = field(default=0, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class RegisterReply(Nodes):
    """The answer to REGISTER: the new id and the node table; for servers and workers also the
    worker rank, the number of workers and the tables made so far (``[[id, spec, policy]...]``)."""

    id: int
    rank: int | None = field(default=None, metadata=OMIT)
    num_workers: int | None = field(default=None, metadata=OMIT)
    tables: list[list[Any]] | None = field(default=None, metadata=OMIT)
    group: str = field(default="", metadata=OMIT)
    incarnation: int = field(default=0, metadata=OMIT)  # which scheduler process answered


@dataclass(slots=True, kw_only=True)
class Rejoin(Body):
    """REJOIN, server or worker -> a scheduler that may have restarted: what this node knows.

    ``info`` is the node's own entry (``NodeInfo`` wire list), ``incarnation`` the scheduler
    process it knew (from its registration or last rejoin), ``nodes`` its node table,
    ``keymap`` its key map (the epoch inside), ``departed`` the workers it saw leave
    (``NodeInfo`` wire lists), ``tables`` the tables it holds (``[id, spec, policy(,
    readers)]``, as a registration lists them); a worker adds its group's size
    (``num_workers``), its table declarations (``declared``: ``TableDeclare`` bodies with
    the table's ``id``), its data-shard progress (``shards``: per set ``{set, shards,
    epochs, done, running}``, task numbers) and the barriers it passed (``barriers``:
    group -> count)."""

    info: list[Any]
    incarnation: int
    nodes: list[list[Any]]
    keymap: dict[str, Any] | None = None
    departed: list[list[Any]] = field(default_factory=list, metadata=OMIT)
    tables: list[list[Any]] = field(default_factory=list, metadata=OMIT)
    num_workers: int = field(default=0, metadata=OMIT)
    declared: list[dict[str, Any]] = field(default_factory=list, metadata=OMIT)
    shards: list[dict[str, Any]] = field(default_factory=list, metadata=OMIT)
    barriers: dict[str, Any] = field(default_factory=dict, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class RejoinReply(Nodes):
    """The answer to REJOIN: the scheduler's ``incarnation`` and the (rebuilt) node table and
    key map."""

    incarnation: int


@dataclass(slots=True, kw_only=True)
class Heartbeat(Body):
    """HEARTBEAT, node -> scheduler: alive, with the node's own figures (``report``: a worker's
    iteration, idle share, requests and bytes per table; None sends nothing). Its reply is empty."""

    report: dict[str, Any] | None = field(default=None, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class Bye(Body):
    """BYE, worker -> scheduler: this worker is finished. ``error`` (empty: it ended well)
    says why its program crashed, ``code`` is the exit code it ends with."""

    error: str = field(default="", metadata=OMIT)
    code: int = field(default=0, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class Ping(Body):
    """PING: a liveness probe, answered at once. From the scheduler to a node whose
    registration waits for the job to start, ``id`` is the id the node will have (its answer
    carries it) and ``waiting`` says in words what the job waits for."""

    id: int = field(default=-1, metadata=OMIT)
    waiting: str = field(default="", metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class StatusRequest(Body):
    """STATUS request (client -> scheduler, scheduler -> servers). Carries nothing."""


@dataclass(slots=True, kw_only=True)
class Barrier(Body):
    """BARRIER, node -> scheduler: wait for ``group`` ("workers", "servers" or "all").
    ``seq`` is the round the caller expects to pass: one past the ``round`` of the last
    barrier of that group it passed (0 before its first): a scheduler that restarted
    answers at once a round the others passed already. The reply carries ``round``."""

    group: str = "workers"
    seq: int = field(default=0, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class TableDeclare(Body):
    """TABLE, worker -> scheduler: declare a table (``policy`` None: the default model);
    ``readonly``: the worker only reads it (it never counts in the table's clocks, and the
    servers refuse its pushes); ``writers``: the worker groups that may write the table's
    namespace (given by the namespace's first declaration that names them; None: unchanged)."""

    spec: dict[str, Any]
    policy: dict[str, Any] | None = None
    readonly: bool = field(default=False, metadata=OMIT)
    writers: list[str] | None = field(default=None, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class TableReply(Body):
    """The answer to a TABLE declaration: the table's id and consistency policy."""

    id: int
    policy: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class TableCreate(Body):
    """TABLE, scheduler -> server: add the table (or, when it exists, add ``readers``: the
    workers that attached to it read-only, whose pushes and clock ticks it refuses)."""

    id: int
    spec: dict[str, Any]
    policy: dict[str, Any]
    readers: list[int] = field(default_factory=list, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class Shutdown(Body):
    """SHUTDOWN: anyone -> scheduler (end the job), scheduler -> node (exit now)."""

    reason: str = "shutdown requested"
    code: int = 0


@dataclass(slots=True, kw_only=True)
class PolicyRequest(Body):
    """POLICY, worker or client -> scheduler: change table ``name``'s consistency."""

    name: str
    policy: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class PolicyUpdate(Body):
    """POLICY, scheduler -> servers and workers (table id in the header), and the answer to a
    :class:`PolicyRequest`: the table's new policy."""

    policy: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class TaskRequest(Body):
    """TASK, worker -> scheduler: ``shards`` and ``epochs`` declare set ``set`` (the first
    request of each pass over it); ``done`` names the task finished (or None); ``release``
    gives ``done`` back unfinished instead."""

    set: str
    shards: list[Any] | None = field(default=None, metadata=OMIT)
    epochs: int = field(default=1, metadata=OMIT)
    done: int | None = None
    release: bool = field(default=False, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class TaskReply(Body):
    """The answer to TASK: ``state`` task (with ``task``, ``shard``, ``epoch``), wait,
    finished or released; ``progress`` counts the set's tasks."""

    state: str
    progress: dict[str, Any]
    task: int | None = field(default=None, metadata=OMIT)
    shard: int | None = field(default=None, metadata=OMIT)
    epoch: int | None = field(default=None, metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class Drain(Body):
    """DRAIN, client -> scheduler: move every range off server ``node``, then stop it."""

    node: int


@dataclass(slots=True, kw_only=True)
class Suspect(Body):
    """SUSPECT, node -> scheduler: the established link to ``node`` broke (``why``, in
    words); the scheduler probes it and declares it dead if the probe fails. Its reply is empty."""

    node: int
    why: str = field(default="", metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class DrainReply(Body):
    """The answer to DRAIN: the key map without the drained server."""

    keymap: dict[str, Any] | None


@dataclass(slots=True, kw_only=True)
class ClusterStatus(Nodes):
    """The scheduler's answer to STATUS: membership, tables, each server's own report (or
    ``{"error": ...}``) by id, counters, the shard sets, the workers' heartbeat reports and
    the timeline of joins, failures, failovers, drains and checkpoints."""

    last_seen: dict[str, Any]
    tables: list[list[Any]]
    servers: dict[str, Any]
    num_servers: int
    num_workers: int
    uptime: float
    failovers: int
    migrations: int
    migrating: bool
    shards: dict[str, Any]
    groups: dict[str, Any] = field(default_factory=dict, metadata=OMIT)
    namespaces: dict[str, Any] = field(default_factory=dict, metadata=OMIT)
    #: Node id -> the last heartbeat ``report`` of that node (workers), with its age in seconds.
    reports: dict[str, Any] = field(default_factory=dict, metadata=OMIT)
    #: The scheduler's timeline, oldest first: ``[seconds since start, kind, node id or -1, text]``.
    events: list[list[Any]] = field(default_factory=list, metadata=OMIT)
    #: The scheduler's paramserver version (``paramserver doctor`` compares it with its own).
    version: str = field(default="", metadata=OMIT)


@dataclass(slots=True, kw_only=True)
class ErrorReply(Body):
    """The body of a reply of status ERROR: the exception's type name, message and traceback."""

    type: str = "Exception"
    message: str = ""
    traceback: str = ""


@dataclass(slots=True, kw_only=True)
class Moved(Body):
    """The body of a reply of status MOVED: the receiver's key map epoch and map, and the
    node table entries of the map's servers (one may have joined after the sender's table)."""

    message: str
    epoch: int
    keymap: dict[str, Any] | None
    nodes: list[list[Any]]


@dataclass(slots=True, kw_only=True)
class ResendKeys(Body):
    """The body of a reply of status RESEND_KEYS: the signature of the key list not cached."""

    message: str
    ksig: int
