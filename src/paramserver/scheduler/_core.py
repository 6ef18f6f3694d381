"""The scheduler's logic as a pure state machine: messages and clock ticks in, actions out.

:class:`SchedulerCore` holds membership (the node table, heartbeats, worker ranks), the
server manager's key map, the table registry, barriers, and the end of the job. It never
touches a socket: :meth:`SchedulerCore.handle` and :meth:`SchedulerCore.tick` return
:class:`Send` / :class:`Connect` / :class:`Disconnect` / :class:`Finish` actions that the
I/O shell (``_process.py``) carries out, so the unit tests drive it with plain messages.

Rules it enforces:

* Registration replies wait until the expected servers (DMLC_NUM_SERVER) have registered
  and the key map exists. Meanwhile every waiting node gets a PING that says what the job
  waits for ("waiting for 1 more server"), at once and then every third of the heartbeat
  timeout; one that stops answering is forgotten (a dead node is not listed, a dead
  server not counted). A node joining later is announced to the servers first (an
  ``Op.NODES`` round, acknowledged), so a server always knows a worker before the worker
  can send it a request.
* Workers belong to worker groups (``_groups.py``; one default group unless they name
  one): ranks, ``"workers"`` barriers, data shards and the end are per group.
* With a fixed number of workers (DMLC_NUM_WORKER > 0) the job ends when every worker has
  said goodbye (every group of fixed size ended and no worker of any group is left). A
  goodbye that reports a crash (its program raised) counts as the death of the worker,
  with the worker's exit code. The
  death of a worker of a fixed-size group ends it with an error naming the worker, unless
  the group hands out data shards (PS_WORKER_FAILURE, ``_shards.py``): then the dead
  worker's shards go to the others. With a dynamic number (0), workers come and go and the
  job ends on a shutdown request.
* A worker that attaches to a table read-only is a *reader* of it: the servers learn so
  (a TABLE round) before it is answered, and refuse its pushes and clock ticks; a group
  not among a namespace's writers attaches to its tables read-only only.
* Failure detection (``_detector.py``): a node whose link broke (reported by a peer with
  ``Op.SUSPECT``, or seen by the scheduler's own links) or that is silent for the heartbeat
  timeout is probed (a :class:`~._detector.Probe` action: a TCP connection to its address);
  a failed probe declares it dead, a late heartbeat alone never does.
* The death of a server promotes the next replica of each range it held (a new key map,
  epoch + 1, broadcast to every node); without a copy of some range the job ends.
* Every outstanding exchange (a broadcast, a table creation, a status gather) has a
  deadline, so nothing waits forever on a silent node.

Not thread-safe: the shell calls it from one thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import InvalidArgument, JobAborted, ProtocolError, PSError, TableError
from .._version import __version__
from .._words import plural
from ..clock import Consistency
from ..node import DEFAULT_GROUP, SCHEDULER_ID, NodeInfo, error_body
from ..placement import EvenSplit, KeyMap, Placement, copy_plan, extended, ranges_to_wire
from ..protocol import (
    Barrier,
    Bye,
    ClusterStatus,
    Drain,
    DrainReply,
    ErrorReply,
    Heartbeat,
    Message,
    MigrateCopy,
    MigrateSwitch,
    Nodes,
    Op,
    Ping,
    PolicyRequest,
    PolicyUpdate,
    RegisterReply,
    RegisterRequest,
    Rejoin,
    RejoinReply,
    Shutdown,
    Status,
    Suspect,
    TableCreate,
    TableDeclare,
    TableReply,
)
from ..table import TableSpec
from ._detector import Detector, Probe
from ._groups import Group, Namespaces, check_group_name
from ._rebuild import Rebuild, group_key
from ._shards import ShardManager
from ._timeline import Timeline

__all__ = ["Action", "Connect", "Disconnect", "Finish", "Probe", "SchedulerCore", "Send"]

log = logging.getLogger("paramserver.scheduler")

#: The keys a node of each role may register with (CURVE): operators use the admin or scheduler key.
_KEYS_OF: dict[str, tuple[str, ...]] = {"server": ("server",), "worker": ("worker",), "client": ("admin", "scheduler")}


_TOMBSTONES = 1024  # nodes declared dead that the scheduler remembers (see SchedulerCore.declared_dead)


@dataclass
class Send:
    node: int
    msg: Message


@dataclass
class Connect:
    node: int
    address: str
    role: str = ""  # the role of the key the node listens with (CURVE)


@dataclass
class Disconnect:
    node: int


@dataclass
class Finish:
    """The job is over: exit with ``code`` after the sends before this action."""

    code: int
    reason: str


Action = Send | Connect | Disconnect | Finish | Probe


@dataclass
class _Gather:
    """An exchange with several nodes: requests out, one reply (or failure) from each.

    Each node it was sent to is in exactly one of ``awaiting``, ``replies`` (it answered)
    and ``errors`` (it died or missed the deadline); :meth:`finish` runs once, when
    ``awaiting`` is empty.
    """

    awaiting: set[int]
    deadline: float
    on_done: Callable[[_Gather], list[Action]]
    replies: dict[int, Message] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    ended: float = 0.0  # when the last reply (or failure, or the deadline) came

    def failures(self) -> dict[int, str]:
        """``{node: why}`` for every node that answered with an error or did not answer."""
        failed = {n: _reason(r) for n, r in self.replies.items() if r.status != Status.OK}
        failed.update(self.errors)
        return failed

    def finish(self, now: float) -> list[Action]:
        """The exchange is over at ``now``: run its callback (the caller has unregistered it)."""
        self.ended = now
        return self.on_done(self)


@dataclass
class _Table:
    id: int
    spec: TableSpec
    policy: Consistency = field(default_factory=Consistency)
    ready: bool = False
    waiters: list[Message] = field(default_factory=list)
    readers: set[int] = field(default_factory=set)  # workers attached read-only (the servers know them)

    def to_wire(self) -> list[Any]:
        """``[id, spec, policy]``, and the readers if any (the table list of a registration)."""
        wire = [self.id, self.spec.to_wire(), self.policy.to_wire()]
        if self.readers:
            wire.append(sorted(self.readers))
        return wire


GROUPS = ("workers", "servers", "all")

#: How many times a migration is planned again after a party died during its copy phase.
MIGRATION_TRIES = 3


def _error_of(reply: Message) -> ErrorReply:
    """The error a reply that is not OK carries (its fields at their defaults if mistyped)."""
    try:
        return ErrorReply.from_wire(reply.body)
    except ProtocolError:
        return ErrorReply(message=f"an unreadable error reply: {reply.body!r}")


def _reason(reply: Message) -> str:
    """Why a reply is not OK, in words."""
    return _error_of(reply).message


def _declares_readonly(msg: Message) -> bool:
    """Does the TABLE declaration ``msg`` (checked when it came) attach read-only?"""
    return TableDeclare.from_wire(msg.body).readonly


def _valid_address(address: str) -> bool:
    if address.startswith("mem://"):
        return address[6:].isdigit()
    if not address.startswith("tcp://"):
        return False
    host, sep, port = address[6:].rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class SchedulerCore:
    """See the module docstring."""

    def __init__(
        self,
        *,
        address: str,
        num_servers: int,
        num_workers: int = 0,
        replicas: int = 1,
        heartbeat_timeout: float = 10.0,
        probe_timeout: float = 0.5,
        hung_timeout: float = 30.0,
        request_timeout: float = 60.0,
        placement: Placement | None = None,
        now: float = 0.0,
        worker_failure: str = "auto",
        max_tables: int = 1024,
        incarnation: int = 1,
        recover: bool = False,
        rebuild_timeout: float | None = None,
    ) -> None:
        if num_servers < 1:
            raise InvalidArgument("a cluster needs at least one server (DMLC_NUM_SERVER >= 1)")
        self.address = address
        self.num_servers = num_servers
        self.num_workers = num_workers
        self.replicas = replicas
        self.heartbeat_timeout = heartbeat_timeout
        #: Which nodes to probe and which are dead (``_detector.py``).
        self.detector = Detector(heartbeat_timeout, probe_timeout, hung_timeout)
        self.request_timeout = request_timeout
        self.placement = placement or EvenSplit()
        #: The most tables the cluster may declare (PS_MAX_TABLES).
        self.max_tables = max_tables
        self.started = now
        self.nodes: dict[int, NodeInfo] = {SCHEDULER_ID: NodeInfo(SCHEDULER_ID, "scheduler", address)}
        self.last_seen: dict[int, float] = {}
        #: Nodes declared dead: id -> (role, address), to tell one that comes back (a healed
        #: partition) that it is no longer a member; the oldest are forgotten past _TOMBSTONES.
        self.declared_dead: dict[int, tuple[str, str]] = {}
        self._told_dead: set[int] = set()  # the ones of them already warned about
        self.keymap: KeyMap | None = None
        self.finished = False
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)  # every request the core sends has its own timestamp (reply caches key by it)
        self._versions = itertools.count(1)  # each node table sent has a higher version (stale ones are ignored)
        self._waiting_regs: list[tuple[NodeInfo, Message]] = []
        self._round_busy = False
        self._gathers: dict[int, _Gather] = {}
        self._barriers: dict[str, dict[int, Message]] = {"servers": {}, "all": {}}  # "workers": per group
        self._rounds: dict[str, int] = {}  # barrier rounds released, by group_key / "servers" / "all"
        self._tables: dict[str, _Table] = {}
        self._table_ids = itertools.count(0)
        self._answered: set[int] = set()
        self._draining: set[int] = set()
        #: Completed key-map migrations (joins, drains, restored replicas).
        self.migrations = 0
        #: Servers lost and replaced by their replicas so far.
        self.failovers = 0
        self._worker_failure = worker_failure
        #: Worker groups by name (``_groups.py``); the default group's size is DMLC_NUM_WORKER.
        self.groups: dict[str, Group] = {DEFAULT_GROUP: Group(DEFAULT_GROUP, num_workers, ShardManager(worker_failure))}
        self.shards = self.groups[DEFAULT_GROUP].shards  # data shards of the default group (_shards.py)
        self.namespaces = Namespaces()  # who may write each namespace
        #: Key-map changes run one at a time: (name, build the target map, then) queued here.
        self._migrating = False
        #: (name, target map, then, tries: attempts ended by the death of a party)
        self._migrations: list[tuple[str, Callable[[], KeyMap], Callable[[bool, str], list[Action]], int]] = []
        self._epoch = 0  # the highest epoch handed out (a failure during a migration skips past it)
        self._pinged: dict[int, float] = {}  # waiting registrations: when each was last told why
        self._warned_waiting = False
        #: Heartbeat reports and the timeline of joins, failures, drains, checkpoints (_timeline.py).
        self.timeline = Timeline(now)
        #: This scheduler process among those that ran the job (nodes that see it change rejoin).
        self.incarnation = incarnation
        #: How long a rebuild waits for the nodes' reports (``_rebuild.py``).
        self.rebuild_timeout = rebuild_timeout if rebuild_timeout is not None else 2 * heartbeat_timeout
        #: The rebuild under way, if any: registrations wait in ``_held`` until it ends.
        self.rebuild: Rebuild | None = Rebuild(now + self.rebuild_timeout) if recover else None
        self._held: list[Message] = []
        self._nonces: dict[int, int] = {}  # registration nonce -> node id (a REGISTER sent again)
        self._latest: dict[int, Message] = {}  # a waiting registration's REGISTER, sent again

    # ================================================================= helpers
    def _members(self, role: str) -> list[int]:
        """Nodes of ``role`` that registered (answered or not)."""
        return sorted(n.id for n in self.nodes.values() if n.role == role)

    def _joined(self, role: str) -> list[int]:
        """Nodes of ``role`` whose registration was answered: they know their id and can reply."""
        return [n for n in self._members(role) if n in self._answered]

    def _nodes_body(self, dead: list[int] | None = None) -> Nodes:
        return Nodes(nodes=[n.to_wire() for n in self.nodes.values() if n.role in ("scheduler", "server", "worker")],
                     keymap=self.keymap.to_wire() if self.keymap else None, dead=dead or [],
                     table_version=next(self._versions))

    def _request(self, nodes: list[int], make: Callable[[int], Message], now: float,
                 on_done: Callable[[_Gather], list[Action]]) -> list[Action]:
        ts = next(self._ts)
        gather = _Gather(set(nodes), now + self.request_timeout, on_done)
        if not nodes:
            return gather.finish(now)
        self._gathers[ts] = gather
        out: list[Action] = []
        for nid in nodes:
            msg = make(nid)
            msg.ts = ts
            out.append(Send(nid, msg))
        return out

    def _table_list(self) -> list[list[Any]]:
        """The ready tables as they travel: ``[[id, spec, policy]...]``."""
        return [t.to_wire() for t in self._tables.values() if t.ready]

    @staticmethod
    def _error(msg: Message, exc: PSError) -> Send:
        return Send(msg.sender, msg.reply(status=Status.ERROR, body=error_body(exc, with_traceback=False)))

    def _expected(self, group: str) -> int:
        """Nodes the barrier ``"servers"`` or ``"all"`` waits for (``"workers"`` is per group)."""
        servers = len(self._members("server"))
        return servers if group == "servers" else servers + sum(g.expected() for g in self.groups.values())

    def _group_of(self, nid: int) -> Group:
        """The group of worker ``nid`` (a member)."""
        return self.groups[self.nodes[nid].group]

    def _job_done(self) -> bool:
        """A fixed-size job is over: every group of fixed size ended and no worker is left."""
        return bool(self.num_workers) and all(g.ended for g in self.groups.values() if g.size) \
            and not any(g.ranks for g in self.groups.values())

    def _finished_message(self) -> str:
        named = [g for g in self.groups.values() if g.name != DEFAULT_GROUP]
        if not named:
            done = "the worker is" if self.num_workers == 1 else f"all {self.num_workers} workers are"
            return f"the job finished: {done} done"
        return "the job finished: every worker group is done (" + ", ".join(
            f"{g.name}: {len(g.byes)} workers" for g in self.groups.values()) + ")"

    def waiting_for(self) -> str:
        """What the job waits for before it starts, in words ("" once it has started)."""
        if self.keymap is not None:
            return ""
        have = len(self._members("server"))
        missing = self.num_servers - have
        workers = len(self._members("worker"))
        return (f"waiting for {missing} more {'server' if missing == 1 else 'servers'} "
                f"({have} of {self.num_servers} registered"
                + (f"; {plural(workers, 'worker')} waiting)" if workers else ")"))

    def _ping_waiting(self, now: float, nodes: list[int] | None = None) -> list[Action]:
        """Tell waiting registrations (all, or ``nodes``) what the job waits for; the PING's
        answer also shows that the node is still alive."""
        text = self.waiting_for()
        if not text:
            return []
        out: list[Action] = []
        for info, _ in self._waiting_regs:
            if nodes is None or info.id in nodes:
                self._pinged[info.id] = now
                out.append(Send(info.id, Message(Op.PING, ts=next(self._ts),
                                                 body=Ping(id=info.id, waiting=text).to_wire())))
        return out

    def _waiting_died(self, nid: int, reason: str) -> list[Action]:
        """A node whose registration was never answered stopped answering: forget it (it
        never took part, so nothing else changes)."""
        info = self._forget(nid)
        self._waiting_regs = [(i, m) for i, m in self._waiting_regs if i.id != nid]
        self._pinged.pop(nid, None)
        if info is not None and info.role == "worker" and info.group in self.groups:
            self.groups[info.group].ranks.pop(nid, None)  # its rank is free again; it never left
        if info is not None:
            log.warning("%s; it was waiting for the job to start and is forgotten; %s", reason,
                        self.waiting_for() or "the job can start")
        return [Disconnect(nid)]

    # ================================================================= entry points
    def handle(self, msg: Message, now: float) -> list[Action]:
        """Process one message from the network."""
        if msg.response:
            return self._on_response(msg, now)
        if msg.sender in self.last_seen:
            self.last_seen[msg.sender] = now
        handler: Callable[[Message, float], list[Action]] | None = {
            Op.REGISTER: self._on_register,
            Op.HEARTBEAT: self._on_heartbeat,
            Op.BARRIER: self._on_barrier,
            Op.TABLE: self._on_table,
            Op.BYE: self._on_bye,
            Op.SHUTDOWN: self._on_shutdown,
            Op.STATUS: self._on_status,
            Op.POLICY: self._on_policy,
            Op.PING: self._on_heartbeat,
            Op.DRAIN: self._on_drain,
            Op.TASK: self._on_task,
            Op.SUSPECT: self._on_suspect,
        }.get(msg.op)
        if msg.op == Op.REJOIN:
            return self._on_rejoin(msg, now)
        if handler is None:
            return [self._error(msg, ProtocolError(f"the scheduler does not handle {msg.op.name} requests"))]
        if self.rebuild is not None:
            if msg.op == Op.REGISTER:  # answered once the cluster's state is rebuilt
                self._held.append(msg)
                return []
            if msg.sender not in self.nodes:
                return []  # a rejoining node's heartbeat: it is answered once the rebuild ends
        if msg.op != Op.REGISTER and msg.sender not in self.nodes:
            return self._not_a_member(msg)
        try:
            return handler(msg, now)
        except PSError as exc:
            if msg.op == Op.REGISTER:
                raise
            return [self._error(msg, exc)]

    def tick(self, now: float) -> list[Action]:
        """Check heartbeats and deadlines; call about every heartbeat interval."""
        if self.rebuild is not None:
            return self._end_rebuild(now) if now >= self.rebuild.deadline else []
        out: list[Action] = []
        for nid in list(self.last_seen):
            # A node heartbeats once its registration is answered, so it is timed from then:
            # the answer may wait seconds for a round that waits on a dying server, and may
            # come in this very loop (a failure ends the round), so read its time afresh.
            seen = self.last_seen.get(nid)
            info = self.nodes.get(nid)
            # a waiting registration that was told why it waits answers pings: it is timed too
            if seen is None or info is None or (nid not in self._answered and nid not in self._pinged):
                continue
            verdict = self.detector.check(nid, info.address, now - seen, now)
            if isinstance(verdict, Probe):
                out.append(verdict)
            elif verdict:
                out += self._declare_dead(nid, f"{info} died: {verdict}", now)
        if self.keymap is None and self._waiting_regs:
            due = [i.id for i, _ in self._waiting_regs if now - self._pinged.get(i.id, now) >= self.heartbeat_timeout / 3]
            out += self._ping_waiting(now, due)
            if not self._warned_waiting and now - self.started > 2 * self.heartbeat_timeout:
                self._warned_waiting = True
                log.warning("the job has not started after %.0f s: %s", now - self.started, self.waiting_for())
        for ts, g in list(self._gathers.items()):
            if now > g.deadline and ts in self._gathers:
                del self._gathers[ts]
                for nid in g.awaiting:
                    g.errors[nid] = f"no answer within {self.request_timeout:g} s"
                g.awaiting.clear()
                out += g.finish(now)
        return out

    def shutdown(self, reason: str, code: int = 0) -> list[Action]:
        """End the job: tell every node to exit, then finish."""
        if self.finished:
            return []
        self.finished = True
        out: list[Action] = []
        for nid, info in self.nodes.items():
            if info.role in ("server", "worker"):
                out.append(Send(nid, Message(Op.SHUTDOWN, ts=next(self._ts),
                                             body=Shutdown(reason=reason, code=code).to_wire())))
        out.append(Finish(code, reason))
        return out

    def suspect(self, nid: int, why: str, now: float) -> list[Action]:
        """The link to member ``nid`` broke (``why``): probe it, unless a probe runs."""
        info = self.nodes.get(nid)
        if info is None or nid not in self.last_seen or self.finished:
            return []  # not (or no longer) a member that heartbeats, or the job is ending: nothing to detect
        probe = self.detector.suspect(nid, info.address, why, now)
        return [probe] if probe is not None else []

    def probed(self, nid: int, error: str, now: float) -> list[Action]:
        """The probe of ``nid`` ended (``error`` "" if its address accepted a connection)."""
        why = self.detector.probed(nid, error, now)
        info = self.nodes.get(nid)
        if why is None or info is None:
            return []
        return self._declare_dead(nid, f"{info} died: {why}", now)

    def _declare_dead(self, nid: int, reason: str, now: float) -> list[Action]:
        if nid in self._answered:
            return self.node_failed(nid, reason, now)
        if nid in self._pinged:  # waiting for the job to start: forgotten, nothing else changes
            return self._waiting_died(nid, reason)
        return []

    def _on_suspect(self, msg: Message, now: float) -> list[Action]:
        """A member reports that its link to another broke."""
        report = Suspect.from_wire(msg.body)
        why = f"its link from {self.nodes[msg.sender]} broke" + (f" ({report.why})" if report.why else "")
        return [Send(msg.sender, msg.reply()), *self.suspect(report.node, why, now)]

    def _not_a_member(self, msg: Message) -> list[Action]:
        """The answer to a request from a node that is not a member. One declared dead that
        speaks again (its partition healed: it is a stale master or worker) is told so over
        a link opened for that one answer, so that it exits instead of going on alone."""
        dead = self.declared_dead.get(msg.sender)
        if dead is None:
            return [self._error(msg, JobAborted(
                f"node {msg.sender} is not a member of this cluster (declared dead or never registered)"))]
        role, address = dead
        if msg.sender not in self._told_dead:  # (once: it speaks at every heartbeat until the answer arrives)
            self._told_dead.add(msg.sender)
            log.warning("%s %d at %s speaks again after it was declared dead; telling it to exit", role, msg.sender,
                        address)
        return [Connect(msg.sender, address, role), self._error(msg, JobAborted(
            f"{role} {msg.sender} is not a member of this cluster: it was declared dead (no heartbeat within "
            f"PS_HEARTBEAT_TIMEOUT, e.g. behind a network partition) and the cluster went on without it")),
            Disconnect(msg.sender)]

    def node_failed(self, nid: int, reason: str, now: float) -> list[Action]:
        """A node died (or was unreachable for too long)."""
        info = self._forget(nid)
        if info is None:
            return []
        self.declared_dead[nid] = (info.role, info.address)
        while len(self.declared_dead) > _TOMBSTONES:
            old = next(iter(self.declared_dead))
            del self.declared_dead[old]
            self._told_dead.discard(old)
        log.warning("%s", reason)
        self.timeline.add(now, "failure", nid, reason)
        out: list[Action] = [Disconnect(nid)]
        for ts, g in list(self._gathers.items()):
            if nid in g.awaiting:
                g.awaiting.discard(nid)
                g.errors[nid] = reason
                if not g.awaiting:
                    del self._gathers[ts]
                    out += g.finish(now)
        for waiting in self._barriers.values():
            waiting.pop(nid, None)
        if info.role == "server":
            return out + self._server_failed(nid, reason, now) + self._next_migration(now)
        if info.role == "worker":
            group = self.groups[info.group]
            # the shards it held go to the next worker of its group that asks
            if group.size and not group.shards.job_survives_worker_death():
                group.shards.worker_gone(nid, now)
                needs = f"all {group.size} workers" + ("" if group.name == DEFAULT_GROUP else f" of group {group.name!r}")
                return out + self.shutdown(f"{reason}; the job needs {needs}", code=1)
            group.gone(nid, now)  # PS_WORKER_FAILURE: the group goes on without it, counted as gone
            if self._job_done():
                return out + self.shutdown(f"{reason}; no worker is left", code=1)
            if group.ended:
                log.warning("worker group %r ended: no worker of it is left", group.name)
            out += self._broadcast_nodes(now, dead=[nid])
            out += self._check_barriers()
        return out

    def _server_failed(self, nid: int, reason: str, now: float) -> list[Action]:
        """Promote the next replica of each range the dead server held and broadcast the
        new map (epoch + 1); end the job if some range had no other copy."""
        if self.keymap is None:
            return []  # died before the key map existed: it held nothing
        if nid not in self.keymap.servers():  # it held nothing (yet): the others forget it
            return self._broadcast_nodes(now, dead=[nid])
        try:
            self.keymap = self.keymap.without(nid, self._next_epoch())
        except InvalidArgument as exc:
            return self.shutdown(f"{reason}; the job cannot go on: {exc} (start it with replicas >= 2 "
                                 f"to survive server failures)", code=1)
        log.warning("server %d failed; promoted its replicas: %r", nid, self.keymap)
        self.failovers += 1
        self.timeline.add(now, "failover", nid, f"the replicas of server {nid} took over its ranges "
                          f"(key map epoch {self.keymap.epoch})")
        out = self._broadcast_nodes(now, dead=[nid])
        if self.replicas > 1:  # copy the ranges that lost a copy to another live server
            out += self.migrate("restore replicas", self._restored, lambda ok, why: [], now)
        return out

    # ================================================================= migrations
    def _next_epoch(self) -> int:
        self._epoch = max(self._epoch, self.keymap.epoch if self.keymap else 0) + 1
        return self._epoch

    def _servers_in_map(self) -> list[int]:
        return [s for s in self._joined("server") if s not in self._draining]

    def _restored(self) -> KeyMap:
        assert self.keymap is not None
        return self.keymap.restored(self.replicas, self._servers_in_map(), self.keymap.epoch)

    def _placed(self) -> KeyMap:
        servers = self._servers_in_map()
        replicas = min(self.replicas, len(servers))
        return self.placement.assign(servers, self.keymap.epoch if self.keymap else 0, replicas)

    def migrate(self, name: str, target: Callable[[], KeyMap],
                then: Callable[[bool, str], list[Action]], now: float) -> list[Action]:
        """Move the key map to ``target()`` (computed when its turn comes) by the two-phase
        migration of ``server/_migrate.py``; call ``then(ok, why)`` at the end. One at a time."""
        self._migrations.append((name, target, then, 0))
        return self._next_migration(now)

    def _next_migration(self, now: float) -> list[Action]:
        if self._migrating or not self._migrations or self.keymap is None or self.finished:
            return []
        name, make, then, tries = self._migrations.pop(0)
        old = self.keymap
        try:
            new = make()
        except InvalidArgument as exc:
            return then(False, str(exc)) + self._next_migration(now)
        if new == old:  # targets carry the current epoch: equal maps move nothing
            return then(True, "nothing to move") + self._next_migration(now)
        mid = extended(old, new, self._next_epoch())
        new = KeyMap(self._next_epoch(), list(new))
        plan = copy_plan(old, new)
        self._migrating = True
        log.info("migration (%s): %r -> %r, copying from %s", name, old, new, sorted(plan))

        def copied(g: _Gather) -> list[Action]:
            failed = g.failures()
            self._migrating = False
            dead = sorted({n for n in failed if n not in self.nodes} | {s for s in new.servers() if s not in self.nodes})
            out: list[Action] = []
            if (failed or dead) and not self.finished and self.keymap is old:
                # Roll back: the sources adopted `mid`; a map of a higher epoch without the
                # extension (the failover's, or this one) takes their chains back.
                self.keymap = KeyMap(self._next_epoch(), list(old))
                out += self._broadcast_nodes(g.ended)
            if dead and not self.finished and set(failed) <= set(dead) and tries < MIGRATION_TRIES:
                # a party died during the copy: plan again from the map without it (once it is
                # failed over: node_failed starts the next migration after promoting its replicas)
                log.warning("migration (%s): %s died while copying; it is planned again after the failover", name,
                            ", ".join(f"server {n}" for n in dead))
                self._migrations.insert(0, (name, make, then, tries + 1))
                waiting = self.keymap is not None and any(n in self.keymap.servers() for n in dead)
                return out + ([] if waiting else self._next_migration(g.ended))
            if failed or dead or self.finished:
                why = "; ".join([f"server {n}: {e}" for n, e in sorted(failed.items())]
                                + [f"server {n} died" for n in dead if n not in failed]) or "the job ended"
                log.warning("migration (%s) failed: %s", name, why)
                return out + then(False, why) + self._next_migration(g.ended)
            if self.keymap is not old:  # a failure changed the map meanwhile: plan again
                self._migrations.insert(0, (name, make, then, tries))
                return self._next_migration(g.ended)
            # Phase 2, switch: the map is `new` from here on (a failure now is handled from it).
            # Every server of either map adopts it and answers once the updates it applied
            # before have reached their whole chains; only then is the map broadcast.
            self.keymap = new
            self._migrating = True
            holders = set(old.servers()) | set(new.servers())
            body = MigrateSwitch(keymap=new.to_wire()).to_wire()
            return self._request([s for s in self._joined("server") if s in holders],
                                 lambda nid: Message(Op.MIGRATE, body=body), g.ended, switched)

        def switched(g: _Gather) -> list[Action]:
            self._migrating = False
            failed = g.failures()
            if failed:  # the map stands: servers adopted it or failed (and failed over from it)
                log.warning("migration (%s): switching failed on %s", name,
                            "; ".join(f"server {n}: {e}" for n, e in sorted(failed.items())))
            self.migrations += 1
            log.info("migration (%s) done: %r", name, self.keymap)
            self.timeline.add(g.ended, "migration", -1, f"{name}: key map epoch {self.keymap.epoch if self.keymap else 0}")
            return self._broadcast_nodes(g.ended) + then(True, "") + self._next_migration(g.ended)

        wire = mid.to_wire()

        def copy(nid: int) -> Message:
            entries = [[t, ranges_to_wire(ranges)] for t, ranges in sorted(plan[nid].items())]
            return Message(Op.MIGRATE, body=MigrateCopy(keymap=wire, plan=entries).to_wire())

        return self._request(sorted(plan), copy, now, copied)

    def _on_drain(self, msg: Message, now: float) -> list[Action]:
        """Move every range off a server, then stop it; answered when it is done."""
        node = Drain.from_wire(msg.body).node
        info = self.nodes.get(node)
        if info is None or info.role != "server":
            raise InvalidArgument(f"node {node} is not a server of this cluster")
        left = [s for s in self._servers_in_map() if s != node]
        if not left:
            raise InvalidArgument("cannot drain the last server")
        self._draining.add(node)

        def then(ok: bool, why: str) -> list[Action]:
            self._draining.discard(node)
            if not ok:
                return [self._error(msg, InvalidArgument(f"draining server {node} failed: {why}"))]
            self._forget(node)
            log.info("server %d drained; it holds no keys and stops", node)
            self.timeline.add(now, "drain", node, f"server {node} was drained and stops")
            bye = Shutdown(reason="this server was drained", code=0)
            reply = DrainReply(keymap=self.keymap.to_wire() if self.keymap else None)
            return [Send(node, Message(Op.SHUTDOWN, ts=next(self._ts), body=bye.to_wire())),
                    Send(msg.sender, msg.reply(body=reply.to_wire())),
                    *self._broadcast_nodes(now, dead=[node])]

        return self.migrate(f"drain server {node}", self._placed, then, now)

    # ================================================================= rejoin and rebuild
    def _fresh(self) -> bool:
        """Nothing registered yet: this scheduler may be one restarted without ``--recover``."""
        return self.keymap is None and not self._waiting_regs and not self._answered \
            and not any(n.role in ("server", "worker") for n in self.nodes.values())

    def _rejoin_answer(self, nid: int, msg: Message) -> Send:
        nodes = self._nodes_body()
        body = RejoinReply(incarnation=self.incarnation, nodes=nodes.nodes, keymap=nodes.keymap,
                           table_version=nodes.table_version)
        return Send(nid, msg.reply(body=body.to_wire()))

    def _on_rejoin(self, msg: Message, now: float) -> list[Action]:
        """A node that lost the scheduler reports what it knows (``_rebuild.py``)."""
        try:
            report = Rejoin.from_wire(msg.body)
            info = NodeInfo.from_wire(report.info)
        except ProtocolError as exc:
            log.warning("ignored a malformed REJOIN: %s", exc)
            return []
        member = self.nodes.get(info.id)
        if self.rebuild is None and member is not None and member.role == info.role \
                and member.identity in (b"", msg.peer):
            return [self._rejoin_answer(info.id, msg)]  # it lost contact with this scheduler only
        if self.rebuild is None and self._fresh() and not self.finished:
            log.warning("a node rejoins a scheduler that knows no job: rebuilding the cluster's state from the "
                        "nodes' reports (for at most %g s)", self.rebuild_timeout)
            self.rebuild = Rebuild(now + self.rebuild_timeout)
        out: list[Action] = [Connect(info.id, info.address, msg.auth or info.role)]
        if self.rebuild is None:
            why = JobAborted(
                f"{info} is not a member of this cluster: it was declared dead while it had no contact with the "
                f"scheduler, or this scheduler runs another job (restart a scheduler with `paramserver "
                f"scheduler --recover` to rebuild a running job)")
            msg.sender = info.id
            return [*out, self._error(msg, why), Disconnect(info.id)]
        try:
            self.rebuild.add(msg, report)
        except PSError as exc:
            msg.sender = info.id
            return [*out, self._error(msg, exc), Disconnect(info.id)]
        msg.sender = info.id
        if self.rebuild.complete():
            return out + self._end_rebuild(now)
        return out

    def _end_rebuild(self, now: float) -> list[Action]:
        """Take the state the reports add up to, answer them, then the held registrations."""
        rb, self.rebuild = self.rebuild, None
        held, self._held = self._held, []
        assert rb is not None
        out: list[Action] = []
        if rb.reports:
            try:
                out += self._rebuilt(rb, now)
            except PSError as exc:
                return self.shutdown(f"the restarted scheduler cannot rebuild the job from its nodes' reports: {exc}",
                                     code=1)
        else:
            log.info("no node rejoined within %g s: this scheduler starts a new job", self.rebuild_timeout)
        for m in held:
            out += self.handle(m, now)
        return out

    def _rebuilt(self, rb: Rebuild, now: float) -> list[Action]:
        r = rb.result()
        self.nodes.update(r.nodes)
        for nid in r.nodes:
            self._answered.add(nid)
            self.last_seen[nid] = now
        self.keymap = r.keymap
        self._epoch = max(self._epoch, r.keymap.epoch if r.keymap else 0)
        self._ids = itertools.count(r.max_id + 1)
        for name, (tid, spec, policy, readers) in r.tables.items():
            self._tables[name] = _Table(tid, spec, Consistency.from_wire(policy), ready=True, readers=readers)
        self._table_ids = itertools.count(max((t.id for t in self._tables.values()), default=-1) + 1)
        for name, size in r.group_sizes.items():
            if name not in self.groups:
                self.groups[name] = Group(name, size, ShardManager(self._worker_failure))
        for nid, info in [*r.nodes.items(), *r.missing.items()]:
            if info.role == "worker" and info.group in self.groups:
                self.groups[info.group].ranks[nid] = info.rank
        for nid, info in r.departed.items():
            if info.role == "worker" and info.group in self.groups:
                self.groups[info.group].byes.add(nid)
        for gname, sets in r.shards.items():
            for name, progress in sets.items():
                self.groups[gname].shards.restore(name, progress.shards, progress.epochs, progress.done,
                                                  progress.running, now)
        for gname, body in r.declared:
            try:
                decl = TableDeclare.from_wire(body)
                self.namespaces.declare(TableSpec.from_wire(decl.spec).name, gname, decl.readonly, decl.writers)
            except PSError as exc:
                log.warning("a rejoining worker's table declaration was not taken again: %s", exc)
        self._rounds.update(r.barriers)
        log.warning("rebuilt the cluster from %s: %r, %s%s", f"{len(r.nodes)} nodes' reports", self.keymap,
                    plural(len(self._tables), "table"),
                    f"; {plural(len(r.missing), 'node')} did not report: {sorted(r.missing)}" if r.missing else "")
        self.timeline.add(now, "rebuild", -1, f"the scheduler restarted and rebuilt the cluster from "
                          f"{plural(len(r.nodes), 'node')} (key map epoch {r.keymap.epoch if r.keymap else 0})")
        out: list[Action] = [self._rejoin_answer(nid, m) for nid, (_, _, m) in sorted(rb.reports.items())]
        for nid, info in sorted(r.missing.items()):
            self.nodes[nid] = info
            self._answered.add(nid)
            out += self.node_failed(nid, f"{info} did not rejoin the restarted scheduler within "
                                         f"{self.rebuild_timeout:g} s", now)
        if not self.finished and self._job_done():
            out += self.shutdown(self._finished_message())
        return out

    # ================================================================= membership
    def _on_register(self, msg: Message, now: float) -> list[Action]:
        req = RegisterRequest.from_wire(msg.body)
        role, address = req.role, req.address
        if role not in ("server", "worker", "client"):
            raise ProtocolError(f"cannot register a node of role {role!r}")
        if not _valid_address(address):
            raise ProtocolError(f"cannot register a node at {address!r}: not tcp://host:port")
        if msg.auth and msg.auth not in _KEYS_OF.get(role, ()):
            raise ProtocolError(f"a node with the {msg.auth} key cannot register as a {role}")
        again = self._nonces.get(req.nonce) if req.nonce else None
        if again is not None and again in self.nodes and self.nodes[again].identity == msg.peer:
            # the same registration sent again (no answer came): never a second member
            msg.sender = again
            if again in self._answered or self.nodes[again].role == "client":
                return [self._register_answer(self.nodes[again], msg)]
            self._latest[again] = msg  # answered when its round comes
            return []
        nid = next(self._ids)
        if req.nonce:
            self._nonces[req.nonce] = nid
        info = NodeInfo(nid, role, address, req.host, req.pid, req.rank, identity=msg.peer)
        out: list[Action] = [Connect(nid, address, msg.auth or role)]
        msg.sender = nid  # replies go to the new id
        try:
            if self.finished:
                raise JobAborted("the job is shutting down")
            if role == "worker":
                info = self._assign_rank(info, req)
        except PSError as exc:
            out += [self._error(msg, exc), Disconnect(nid)]
            return out
        self.nodes[nid] = info
        if role == "client":  # operators' tools: answered at once, never announced
            out.append(self._register_answer(info, msg))
            return out
        self.last_seen[nid] = now
        self._waiting_regs.append((info, msg))
        out += self._next_round(now)
        waiting = self.waiting_for()
        log.info("registered %s%s", info, f"; {waiting}" if waiting else "")
        return out + self._ping_waiting(now, [nid])

    def _assign_rank(self, info: NodeInfo, req: RegisterRequest) -> NodeInfo:
        """The worker's group (created by its first worker, with the size it names) and rank."""
        name = check_group_name(req.group)
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group(name, req.group_workers, ShardManager(self._worker_failure))
            log.info("worker group %r (%s)", name, f"{group.size} workers" if group.size else "any number of workers")
        elif name != DEFAULT_GROUP and req.group_workers and req.group_workers != group.size:
            raise InvalidArgument(f"worker group {name!r} has {group.size or 'any number of'} workers; this worker "
                                  f"says {req.group_workers} (PS_GROUP_WORKERS)")
        rank = group.assign_rank(info.id, info.rank)
        return dataclasses.replace(info, rank=rank, group=name)

    def _next_round(self, now: float) -> list[Action]:
        """Answer waiting registrations once servers know of the new nodes."""
        if self._round_busy or not self._waiting_regs:
            return []
        late = self.keymap is not None
        if self.keymap is None:
            servers = self._members("server")
            if len(servers) < self.num_servers:
                return []
            self.keymap = self.placement.assign(servers, epoch=self._next_epoch(), replicas=self.replicas)
            self._pinged.clear()
            log.info("%s registered; %r", "the server" if len(servers) == 1 else f"all {len(servers)} servers",
                     self.keymap)
        batch, self._waiting_regs = self._waiting_regs, []
        new = {info.id for info, _ in batch}
        old_servers = [s for s in self._joined("server") if s not in new]
        self._round_busy = True

        def done(g: _Gather) -> list[Action]:
            self._round_busy = False
            out: list[Action] = []
            joined = False
            for info, reg in batch:
                if info.id not in self.nodes:
                    continue  # died meanwhile
                joined |= info.role == "server" and late
                reg = self._latest.pop(info.id, reg)  # the node sent it again meanwhile
                out.append(self._register_answer(info, reg))
                self._answered.add(info.id)
                self.last_seen[info.id] = g.ended  # its heartbeats start now
                self.timeline.add(g.ended, "join", info.id, f"{info} joined")
            if joined:  # a server joined a running cluster: give it its share of the ranges
                out += self.migrate("server joined", self._placed, lambda ok, why: [], now)
            return out + self._next_round(now) + self._check_barriers()

        body = self._nodes_body().to_wire()
        return self._request(old_servers, lambda nid: Message(Op.NODES, body=body), now, done)

    def _register_answer(self, info: NodeInfo, reg: Message) -> Send:
        """The answer to ``info``'s registration ``reg``."""
        nodes = self._nodes_body()
        if info.role == "client":
            body = RegisterReply(id=info.id, nodes=nodes.nodes, keymap=nodes.keymap, incarnation=self.incarnation,
                                 table_version=nodes.table_version)
        else:
            size = self.groups[info.group].size if info.role == "worker" else self.num_workers
            body = RegisterReply(id=info.id, rank=info.rank, num_workers=size, tables=self._table_list(),
                                 nodes=nodes.nodes, keymap=nodes.keymap, table_version=nodes.table_version,
                                 group=info.group if info.group != DEFAULT_GROUP else "", incarnation=self.incarnation)
        return Send(info.id, reg.reply(body=body.to_wire()))

    def _broadcast_nodes(self, now: float, dead: list[int] | None = None) -> list[Action]:
        body = self._nodes_body(dead).to_wire()
        targets = [n for n in self.nodes if n in self._answered]
        return self._request(targets, lambda nid: Message(Op.NODES, body=body), now, lambda g: [])

    def _forget(self, nid: int) -> NodeInfo | None:
        """Drop ``nid`` from the membership (node table, heartbeats, answered); its info,
        or None if it was not a member."""
        self.last_seen.pop(nid, None)
        self.detector.forget(nid)
        self._answered.discard(nid)
        self.timeline.forget(nid)
        return self.nodes.pop(nid, None)

    def _on_heartbeat(self, msg: Message, now: float) -> list[Action]:
        """HEARTBEAT and PING: an empty reply (``handle`` has already noted the sender alive);
        a heartbeat's report is kept for STATUS (a malformed one is answered with an error)."""
        if msg.op == Op.HEARTBEAT:
            report = Heartbeat.from_wire(msg.body).report
            if report is not None:
                self.timeline.report(msg.sender, report, now, str(self.nodes[msg.sender]))
        return [Send(msg.sender, msg.reply())]

    def _on_bye(self, msg: Message, now: float) -> list[Action]:
        info = self.nodes[msg.sender]  # handle() lets only members through
        try:
            bye = Bye.from_wire(msg.body)
        except ProtocolError:
            bye = Bye()
        self._forget(msg.sender)
        out: list[Action] = [Send(msg.sender, msg.reply()), Disconnect(msg.sender)]
        if info.role != "worker":
            return out
        group = self.groups[info.group]
        for waiting in self._barriers.values():
            waiting.pop(msg.sender, None)
        if bye.error:
            code = bye.code or 1
            crash = f"{info} crashed: {bye.error} (exit code {code})"
            log.error("%s", crash)
            if group.size and not group.shards.job_survives_worker_death():
                group.shards.worker_gone(msg.sender, now)
                needs = f"all {plural(group.size, 'worker')}" + (
                    "" if group.name == DEFAULT_GROUP else f" of group {group.name!r}")
                return out + self.shutdown(f"{crash}; the job needs {needs}", code=code)
            group.gone(msg.sender, now)  # PS_WORKER_FAILURE: the group goes on without it
            if self._job_done():
                return out + self.shutdown(f"{crash}; no worker is left", code=code)
            return out + self._broadcast_nodes(now, dead=[msg.sender]) + self._check_barriers()
        group.gone(msg.sender, now)  # shards it held unfinished go to the others of its group
        log.info("%s finished", info)
        self.timeline.add(now, "finish", msg.sender, f"{info} finished")
        if self._job_done():
            return out + self.shutdown(self._finished_message())
        if group.ended:
            log.info("worker group %r finished: all its %d workers are done", group.name, group.size)
        return out + self._broadcast_nodes(now, dead=[msg.sender]) + self._check_barriers()

    def _on_task(self, msg: Message, now: float) -> list[Action]:
        """A worker reports a finished data shard and asks for the next (``_shards.py``)."""
        if self.nodes[msg.sender].role != "worker":
            raise InvalidArgument("only workers process data shards")
        shards = self._group_of(msg.sender).shards  # each group has its own shard sets
        return [Send(msg.sender, msg.reply(body=shards.on_task(msg.sender, msg.body, now)))]

    def _on_shutdown(self, msg: Message, now: float) -> list[Action]:
        req = Shutdown.from_wire(msg.body)
        return [Send(msg.sender, msg.reply()), *self.shutdown(req.reason, req.code)]

    # ================================================================= barriers
    def _on_barrier(self, msg: Message, now: float) -> list[Action]:
        req = Barrier.from_wire(msg.body)
        group = req.group
        if group not in GROUPS:
            raise InvalidArgument(f"unknown barrier group {group!r}; use one of {list(GROUPS)}")
        role = self.nodes[msg.sender].role
        if group != "all" and group != role + "s":
            raise InvalidArgument(f"a {role} cannot enter a barrier of the {group}")
        key = group_key(self.nodes[msg.sender].group) if group == "workers" else group
        if 0 < req.seq <= self._rounds.get(key, 0):
            # a round the others passed before this scheduler restarted: the caller passes it too
            return [Send(msg.sender, msg.reply(body={"round": req.seq}))]
        if group == "workers":  # the workers of the caller's group
            self._group_of(msg.sender).barrier[msg.sender] = msg
        else:
            self._barriers[group][msg.sender] = msg
        return self._check_barriers()

    def _check_barriers(self) -> list[Action]:
        out: list[Action] = []
        rounds = [(name, w, self._expected(name)) for name, w in self._barriers.items()]
        rounds += [(group_key(g.name), g.barrier, g.expected()) for g in self.groups.values()]
        for key, waiting, expected in rounds:
            if waiting and len(waiting) >= expected:
                self._rounds[key] = self._rounds.get(key, 0) + 1
                for nid, m in waiting.items():
                    out.append(Send(nid, m.reply(body={"round": self._rounds[key]})))
                waiting.clear()
        return out

    # ================================================================= tables
    def _on_table(self, msg: Message, now: float) -> list[Action]:
        req = TableDeclare.from_wire(msg.body)
        spec = TableSpec.from_wire(req.spec)
        info = self.nodes[msg.sender]
        if info.role != "worker":
            raise InvalidArgument("only workers declare tables")
        table = self._tables.get(spec.name)
        if table is not None:
            table.spec.check_compatible(spec)
        self.namespaces.declare(spec.name, info.group, req.readonly, req.writers)
        if table is not None:
            if not table.ready:
                table.waiters.append(msg)
                return []
            if req.readonly and msg.sender not in table.readers:
                return self._add_readers(table, [msg], now)
            return [Send(msg.sender, msg.reply(body=TableReply(id=table.id, policy=table.policy.to_wire()).to_wire()))]
        if len(self._tables) >= self.max_tables:
            raise TableError(f"cannot declare table {spec.name!r}: the cluster has its {self.max_tables} tables "
                             f"(PS_MAX_TABLES)")
        policy = Consistency.from_wire(req.policy) if req.policy is not None else Consistency()
        table = _Table(next(self._table_ids), spec, policy, waiters=[msg])
        if req.readonly:
            table.readers.add(msg.sender)
        self._tables[spec.name] = table
        body = TableCreate(id=table.id, spec=spec.to_wire(), policy=policy.to_wire(),
                           readers=sorted(table.readers)).to_wire()

        def done(g: _Gather) -> list[Action]:
            waiters, table.waiters = table.waiters, []
            if g.errors or any(r.status != Status.OK for r in g.replies.values()):
                del self._tables[spec.name]
                why = "; ".join(f"server {n}: {e}" for n, e in g.errors.items())
                failed = [r for r in g.replies.values() if r.status != Status.OK]
                if failed:
                    r = failed[0]
                    err = _error_of(r)
                    why = f"server {r.sender}: {err.type}: {err.message}"
                exc = TableError(f"table {spec.name!r} could not be created: {why}")
                return [self._error(w, exc) for w in waiters]
            table.ready = True
            log.info("table %d %r (%s, %s)", table.id, spec.name, spec.describe(), table.policy)
            answer = TableReply(id=table.id, policy=table.policy.to_wire()).to_wire()
            # readers that came while it was being created: the servers learn them first
            late = [w for w in waiters if w.sender not in table.readers and _declares_readonly(w)]
            out = [Send(w.sender, w.reply(body=answer)) for w in waiters if w not in late]
            return out + (self._add_readers(table, late, g.ended) if late else [])

        return self._request(self._joined("server"), lambda nid: Message(Op.TABLE, body=body), now, done)

    def _add_readers(self, table: _Table, declarations: list[Message], now: float) -> list[Action]:
        """Tell every server that the senders of ``declarations`` read ``table`` only (a
        TABLE round with its readers), then answer them: a reader's push can never reach a
        server that would count it."""
        table.readers.update(m.sender for m in declarations if m.sender in self.nodes)
        body = TableCreate(id=table.id, spec=table.spec.to_wire(), policy=table.policy.to_wire(),
                           readers=sorted(table.readers)).to_wire()

        def done(g: _Gather) -> list[Action]:
            failed = g.failures()
            if failed:
                why = "; ".join(f"server {n}: {e}" for n, e in sorted(failed.items()))
                exc = TableError(f"table {table.spec.name!r}: not every server took the new reader: {why}")
                return [self._error(m, exc) for m in declarations]
            answer = TableReply(id=table.id, policy=table.policy.to_wire()).to_wire()
            return [Send(m.sender, m.reply(body=answer)) for m in declarations]

        return self._request(self._joined("server"), lambda nid: Message(Op.TABLE, body=body), now, done)

    def _on_policy(self, msg: Message, now: float) -> list[Action]:
        """Change a table's consistency while the job runs; answered once every node has it."""
        req = PolicyRequest.from_wire(msg.body)
        name = req.name
        table = self._tables.get(name)
        if table is None or not table.ready:
            raise TableError(f"no table named {name!r}; declare it with Worker.table() first")
        table.policy = Consistency.from_wire(req.policy)
        log.info("table %d %r is now %s", table.id, name, table.policy)
        body = PolicyUpdate(policy=table.policy.to_wire()).to_wire()
        targets = self._joined("server") + self._joined("worker")

        def done(g: _Gather) -> list[Action]:
            failed = g.failures()
            if failed:
                why = "; ".join(f"node {n}: {e}" for n, e in sorted(failed.items()))
                return [self._error(msg, TableError(f"table {name!r}: not every node took the new model: {why}"))]
            return [Send(msg.sender, msg.reply(body=body))]

        return self._request(targets, lambda nid: Message(Op.POLICY, table=table.id, body=body), now, done)

    # ================================================================= status
    def _on_status(self, msg: Message, now: float) -> list[Action]:
        def done(g: _Gather) -> list[Action]:
            servers: dict[str, Any] = {}
            for nid, r in g.replies.items():
                servers[str(nid)] = r.body if r.status == Status.OK else {"error": _reason(r)}
            for nid, e in g.errors.items():
                servers[str(nid)] = {"error": e}
            nodes = self._nodes_body()
            body = ClusterStatus(
                nodes=[[x for x in n if not isinstance(x, bytes)] for n in nodes.nodes],  # identities stay inside
                keymap=nodes.keymap,
                last_seen={str(n): round(now - t, 3) for n, t in self.last_seen.items()},
                tables=self._table_list(),
                servers=servers,
                num_servers=self.num_servers,
                num_workers=self.num_workers,
                uptime=round(now - self.started, 3),
                failovers=self.failovers,
                migrations=self.migrations,
                migrating=self._migrating or bool(self._migrations),
                shards=self.shards.status(now),
                groups={name: g.status(now) for name, g in sorted(self.groups.items())},
                namespaces=self.namespaces.status(),
                reports=self.timeline.reports(now),
                events=self.timeline.to_wire(),
                version=__version__,
            )
            return [Send(msg.sender, msg.reply(body=body.to_wire()))]

        return self._request(self._joined("server"), lambda nid: Message(Op.STATUS), now, done)

    # ================================================================= replies
    def _on_response(self, msg: Message, now: float) -> list[Action]:
        if msg.sender in self.last_seen:  # also the answers to the pings of waiting nodes
            self.last_seen[msg.sender] = now
        g = self._gathers.get(msg.ts)
        if g is None or msg.sender not in g.awaiting:
            return []
        g.awaiting.discard(msg.sender)
        g.replies[msg.sender] = msg
        if g.awaiting:
            return []
        del self._gathers[msg.ts]
        return g.finish(now)

