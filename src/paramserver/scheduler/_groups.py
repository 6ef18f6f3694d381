"""Worker groups and namespaces, as the scheduler keeps them (the paper's worker groups).

A *worker group* is a set of workers that run one application: one group trains while
another serves queries from the same tables. Each group has its own task scheduler state:
ranks 0..n-1, its ``"workers"`` barrier, its data shard sets (a :class:`ShardManager`), its
size and its end. Every worker belongs to exactly one group; a worker that names none is in
the default group (``DEFAULT_GROUP``), whose size is the job's ``DMLC_NUM_WORKER``, so a
job without groups behaves as it always did. A named group's size comes from its first
worker (``PS_GROUP_WORKERS``; 0: any number, workers come and go).

A group of fixed size *ends* when each of its workers said goodbye (or died where its shard
sets let the group survive that); a group that ended admits no new worker. The job (of fixed
size) ends once every group of fixed size ended and no worker of any group is left, so a
group that ends does not end the others.

A *namespace* is the part of a table's name before its first ``/`` (``"ctr/emb"`` is table
``emb`` of namespace ``ctr``); tables without one are in no namespace. Groups share a
namespace by naming its tables. :class:`Namespaces` holds, per namespace, the groups that
may write it (set once, by the first declaration that names them; absent: every group):
a worker of another group attaches to its tables read-only only.

Pure state, no I/O; not thread-safe (the scheduler's one receive thread).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .._errors import InvalidArgument, ReadOnlyError
from .._words import plural
from ..node import DEFAULT_GROUP
from ..protocol import Message
from ._shards import ShardManager

__all__ = ["DEFAULT_GROUP", "Group", "Namespaces", "check_group_name", "namespace_of"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_group_name(name: str) -> str:
    """``name`` as a group name ("" is the default group).

    Raises
    ------
    InvalidArgument
        Not 1 to 64 letters, digits, ``_``, ``.`` or ``-``.
    """
    if name == "":
        return DEFAULT_GROUP
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"invalid worker group name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
    return name


def namespace_of(table: str) -> str | None:
    """The namespace of the table named ``table`` (the part before its first ``/``), or None."""
    ns, sep, rest = table.partition("/")
    return ns if sep and ns and rest else None


@dataclass
class Group:
    """One worker group: its size, its live workers' ranks, who left, its barrier and shards.

    Invariants: a worker is in at most one of ``ranks`` (live: registered, not gone) and
    ``byes`` (gone: said goodbye, or died and counted as gone); ranks are distinct and,
    with a fixed size, below it; ``len(ranks) + len(byes) <= size`` when ``size`` > 0.
    """

    name: str
    size: int  # workers it expects; 0: any number
    shards: ShardManager
    ranks: dict[int, int] = field(default_factory=dict)
    byes: set[int] = field(default_factory=set)
    barrier: dict[int, Message] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """Every worker of a fixed-size group is gone."""
        return bool(self.size) and len(self.byes) >= self.size

    def expected(self) -> int:
        """Workers a barrier of this group waits for."""
        return self.size - len(self.byes) if self.size else len(self.ranks)

    def assign_rank(self, nid: int, wanted: int) -> int:
        """Give worker ``nid`` a rank (``wanted`` if it is free and valid, else the lowest free).

        Raises
        ------
        InvalidArgument
            A fixed-size group that has all its workers.
        """
        if self.size and len(self.ranks) + len(self.byes) >= self.size:
            what = "the job" if self.name == DEFAULT_GROUP else f"worker group {self.name!r}"
            setting = "DMLC_NUM_WORKER" if self.name == DEFAULT_GROUP else "PS_GROUP_WORKERS"
            raise InvalidArgument(f"{what} already has its {plural(self.size, 'worker')} ({setting}); this worker cannot join")
        taken = set(self.ranks.values())
        rank = wanted
        if rank < 0 or rank in taken or (self.size and rank >= self.size):
            rank = next(r for r in range(len(taken) + 1) if r not in taken)
        self.ranks[nid] = rank
        return rank

    def gone(self, nid: int, now: float) -> None:
        """Worker ``nid`` left (goodbye, or died counted as gone): its rank, barrier entry and
        running shards are released."""
        self.ranks.pop(nid, None)
        self.barrier.pop(nid, None)
        self.byes.add(nid)
        self.shards.worker_gone(nid, now)

    def status(self, now: float) -> dict[str, Any]:
        """How the group is doing, for ``paramserver status``."""
        return {"size": self.size, "workers": {str(n): r for n, r in sorted(self.ranks.items())},
                "finished": len(self.byes), "ended": self.ended, "shards": self.shards.status(now)}


@dataclass
class Namespaces:
    """Per namespace, the groups allowed to write it (absent: every group). See the module docstring."""

    writers: dict[str, list[str]] = field(default_factory=dict)

    def declare(self, table: str, group: str, readonly: bool, writers: list[str] | None) -> None:
        """A worker of ``group`` declares ``table`` (``readonly`` or not), maybe naming the
        namespace's ``writers``; check it may, and record the writers the first time.

        Raises
        ------
        InvalidArgument
            ``writers`` for a table without a namespace, malformed, or unlike the namespace's.
        ReadOnlyError
            A writable declaration by a group that may not write the namespace.
        """
        ns = namespace_of(table)
        if writers is not None:
            if ns is None:
                raise InvalidArgument(f"table {table!r} has no namespace ('ns/name'); writers= applies to namespaces")
            names = sorted({check_group_name(g) for g in writers})
            if not names:
                raise InvalidArgument(f"namespace {ns!r}: writers= needs at least one group")
            known = self.writers.get(ns)
            if known is None:
                if not readonly and group not in names:
                    raise InvalidArgument(f"namespace {ns!r}: group {group!r} would exclude itself from the "
                                          f"writers {names} it names; attach with readonly=True or include it")
                self.writers[ns] = names
            elif known != names:
                raise InvalidArgument(f"namespace {ns!r} is written by groups {known}; it was declared again "
                                      f"with writers {names}")
        allowed = self.writers.get(ns) if ns is not None else None
        if not readonly and allowed is not None and group not in allowed:
            raise ReadOnlyError(f"group {group!r} may not write namespace {ns!r} (its writers are {allowed}); "
                                f"attach to table {table!r} with readonly=True")

    def status(self) -> dict[str, Any]:
        return {ns: {"writers": list(w)} for ns, w in sorted(self.writers.items())}
