"""A restarted scheduler rebuilds the cluster's state from what its nodes report.

A scheduler keeps its state in memory only: membership, the key map, the table registry,
consistency models, worker groups and data-shard progress. When its process dies, servers
and workers go on pushing and pulling (the data path never touches it) and, once it has been
silent for PS_HEARTBEAT_TIMEOUT, each sends ``Op.REJOIN`` to the scheduler's address every
heartbeat interval, carrying what it knows (:class:`~paramserver.protocol.Rejoin`). A new
scheduler process there (``paramserver scheduler --recover``, or restarted by
``paramserver launch``) collects those reports in a :class:`Rebuild` until every member some
report names has reported, or a deadline passes, and then takes the state they add up to
(:meth:`Rebuild.result`):

* the members: every reporting node, with the connection identity its REJOIN came from
  (the only way a node's new scheduler learns it; node/_auth.py);
* the key map with the highest epoch (a migration or failover that reached some servers
  only is carried on from the furthest one);
* the tables (``[id, spec, policy, readers]``; every report must agree on a table's id and
  spec) and namespaces' writers from the workers' declarations;
* worker groups: size, ranks of live workers, and the workers that left (from ``departed``);
* data shards: per group and set, the tasks done and running, by worker;
* barriers: per group, the most any worker passed.

Members named but not reported by the deadline died while the scheduler was away; the core
treats them as failed (a server's replicas take over).

Pure: no sockets, no clock of its own. Not thread-safe (the scheduler's one receive thread).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .._errors import ProtocolError, TableError
from ..node import DEFAULT_GROUP, SCHEDULER_ID, NodeInfo
from ..placement import KeyMap
from ..protocol import Message, Rejoin
from ..table import TableSpec

__all__ = ["Rebuild", "Rebuilt", "ShardProgress"]

log = logging.getLogger("paramserver.scheduler")


@dataclass
class ShardProgress:
    """One shard set of one group as the workers report it."""

    shards: list[Any]
    epochs: int
    done: dict[int, int] = field(default_factory=dict)  # task -> the worker that finished it
    running: dict[int, int] = field(default_factory=dict)  # task -> the worker that holds it


@dataclass
class Rebuilt:
    """The state the reports add up to (see the module docstring)."""

    nodes: dict[int, NodeInfo]
    missing: dict[int, NodeInfo]  # named by some report, never reported
    keymap: KeyMap | None
    tables: dict[str, tuple[int, TableSpec, list[Any], set[int]]]  # name -> id, spec, policy wire, readers
    declared: list[tuple[str, dict[str, Any]]]  # (group, TableDeclare body) in report order
    group_sizes: dict[str, int]
    departed: dict[int, NodeInfo]
    shards: dict[str, dict[str, ShardProgress]]  # group -> set -> progress
    barriers: dict[str, int]  # "workers/<group>", "all", "servers" -> passed
    max_id: int


class Rebuild:
    """Collects REJOIN reports until every named member reported or ``deadline``.

    Invariant: ``reports`` holds one report per node id (the latest), each with the
    REJOIN message to answer once the rebuild is over.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.reports: dict[int, tuple[NodeInfo, Rejoin, Message]] = {}
        self.named: dict[int, NodeInfo] = {}
        self.departed: dict[int, NodeInfo] = {}

    def add(self, msg: Message, report: Rejoin) -> NodeInfo:
        """Take one node's report; return its entry (with the identity it came from).

        Raises
        ------
        ProtocolError
            A malformed entry, or a node claiming another role than its key's.
        """
        info = NodeInfo.from_wire(report.info)
        if info.role not in ("server", "worker") or info.id <= SCHEDULER_ID:
            raise ProtocolError(f"only servers and workers rejoin, not {info.role} {info.id}")
        if msg.auth and msg.auth != info.role:
            raise ProtocolError(f"a node with the {msg.auth} key cannot rejoin as a {info.role}")
        info = NodeInfo(info.id, info.role, info.address, info.host, info.pid, info.rank, info.group, msg.peer)
        self.reports[info.id] = (info, report, msg)
        for wire in report.nodes:
            other = NodeInfo.from_wire(wire)
            if other.role in ("server", "worker"):
                self.named.setdefault(other.id, other)
        for wire in report.departed:
            other = NodeInfo.from_wire(wire)
            self.departed[other.id] = other
        return info

    def complete(self) -> bool:
        """Every member some report names (and that did not leave) has reported."""
        return all(nid in self.reports or nid in self.departed for nid in self.named)

    def waiting_for(self) -> list[int]:
        return sorted(n for n in self.named if n not in self.reports and n not in self.departed)

    def result(self) -> Rebuilt:
        """The rebuilt state (call once, at the end).

        Raises
        ------
        TableError
            Two reports disagree on a table's id or spec.
        """
        nodes = {nid: info for nid, (info, _, _) in self.reports.items()}
        keymap: KeyMap | None = None
        tables: dict[str, tuple[int, TableSpec, list[Any], set[int]]] = {}
        declared: list[tuple[str, dict[str, Any]]] = []
        sizes: dict[str, int] = {}
        shards: dict[str, dict[str, ShardProgress]] = {}
        barriers: dict[str, int] = {}
        for info, report, _ in self.reports.values():
            if report.keymap is not None:
                km = KeyMap.from_wire(report.keymap)
                if keymap is None or km.epoch > keymap.epoch:
                    keymap = km
            for entry in report.tables:
                self._table(tables, entry)
            if info.role == "worker":
                sizes.setdefault(info.group, report.num_workers)
                declared += [(info.group, d) for d in report.declared]
                for progress in report.shards:
                    self._shards(shards.setdefault(info.group, {}), info.id, progress)
                for name, passed in report.barriers.items():
                    if type(passed) is int:
                        barriers[name] = max(barriers.get(name, 0), passed)
        for d in self.departed.values():
            if d.role == "worker":
                sizes.setdefault(d.group, 0)
        ids = [*nodes, *self.named, *self.departed, *(keymap.servers() if keymap else [])]
        missing = {nid: i for nid, i in self.named.items() if nid not in nodes and nid not in self.departed}
        return Rebuilt(nodes, missing, keymap, tables, declared, sizes,
                       {n: d for n, d in self.departed.items() if n not in nodes}, shards, barriers,
                       max(ids, default=0))

    @staticmethod
    def _table(tables: dict[str, tuple[int, TableSpec, list[Any], set[int]]], entry: Any) -> None:
        if not isinstance(entry, list) or len(entry) not in (3, 4) or type(entry[0]) is not int:
            raise ProtocolError("a table entry must be [id, spec, policy] or [id, spec, policy, readers]")
        spec = TableSpec.from_wire(entry[1])
        readers = set(entry[3]) if len(entry) == 4 and isinstance(entry[3], list) else set()
        known = tables.get(spec.name)
        if known is None:
            tables[spec.name] = (entry[0], spec, entry[2], readers)
            return
        if known[0] != entry[0]:
            raise TableError(f"the nodes' reports disagree on the id of table {spec.name!r} ({known[0]}, {entry[0]})")
        known[1].check_compatible(spec)
        known[3].update(readers)

    @staticmethod
    def _shards(sets: dict[str, ShardProgress], worker: int, entry: dict[str, Any]) -> None:
        name, shards, epochs = entry.get("set"), entry.get("shards"), entry.get("epochs")
        done, running = entry.get("done", []), entry.get("running", [])
        if not (isinstance(name, str) and isinstance(shards, list) and type(epochs) is int
                and isinstance(done, list) and isinstance(running, list)
                and all(type(t) is int for t in [*done, *running])):
            raise ProtocolError("a shard report is {set, shards, epochs, done, running}")
        progress = sets.setdefault(name, ShardProgress(shards, epochs))
        if progress.shards != shards or progress.epochs != epochs:
            log.warning("shard set %r is reported with two different declarations; keeping the first", name)
            return
        for t in done:
            progress.done.setdefault(t, worker)
        for t in running:
            progress.running.setdefault(t, worker)


def group_key(group: str) -> str:
    """The barrier counter's name of a group's ``"workers"`` barrier."""
    return "workers" if group == DEFAULT_GROUP else f"workers/{group}"
