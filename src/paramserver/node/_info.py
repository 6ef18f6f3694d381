"""What the cluster knows of each node: id, role, address, host, process id, worker rank,
worker group and connection identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ProtocolError

__all__ = ["DEFAULT_GROUP", "SCHEDULER_ID", "NodeInfo"]

#: The scheduler is always node 0; servers and workers get ids from 1 upward.
SCHEDULER_ID = 0

ROLES = ("scheduler", "server", "worker", "client")

#: The worker group of a worker that names none (every worker of a job without groups).
DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member of the cluster. Immutable.

    ``identity`` is the routing identity of the connections the node opens, as the
    scheduler saw it on the node's REGISTER (``b""``: not recorded); receivers accept
    messages claiming this node's id only from it (node/_auth.py).
    """

    id: int
    role: str
    address: str
    host: str = ""
    pid: int = 0
    rank: int = -1
    #: The worker group (ranks are per group); DEFAULT_GROUP for every other role.
    group: str = DEFAULT_GROUP
    identity: bytes = b""

    def __str__(self) -> str:
        rank = f" rank {self.rank}" if self.role == "worker" and self.rank >= 0 else ""
        group = f" of group {self.group!r}" if self.group != DEFAULT_GROUP else ""
        return f"{self.role} {self.id}{rank}{group} (pid {self.pid} at {self.address})"

    def to_wire(self) -> list[Any]:
        """``[id, role, address, host, pid, rank]``, with the group appended when it is not
        the default one (so that a job without groups sends what it always sent) and the
        connection identity (bytes) when it is recorded."""
        wire: list[Any] = [self.id, self.role, self.address, self.host, self.pid, self.rank]
        if self.group != DEFAULT_GROUP:
            wire.append(self.group)
        if self.identity:
            wire.append(self.identity)
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> NodeInfo:
        try:
            nid, role, address, host, pid, rank, *rest = data
        except (TypeError, ValueError):
            raise ProtocolError("a node entry must be [id, role, address, host, pid, rank(, group)(, identity)]") from None
        if not (type(nid) is int and type(pid) is int and type(rank) is int):
            raise ProtocolError("node id, pid and rank must be integers")
        if role not in ROLES or not isinstance(address, str) or not isinstance(host, str):
            raise ProtocolError(f"malformed node entry {data!r}")
        group, identity = DEFAULT_GROUP, b""
        if rest and isinstance(rest[0], str):
            group, rest = rest[0], rest[1:]
            if not group:
                raise ProtocolError(f"malformed node entry {data!r}: the group must be one non-empty string")
        if rest:
            identity, rest = rest[0], rest[1:]
            if not isinstance(identity, bytes) or not 0 < len(identity) <= 255 or rest:
                raise ProtocolError(f"malformed node entry {data!r}: the group must be one non-empty string, "
                                    f"the identity at most 255 bytes")
        return cls(nid, role, address, host, pid, rank, group, identity)
