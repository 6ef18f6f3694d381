"""What the cluster knows of each node: id, role, address, host, process id and connection identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ProtocolError

__all__ = ["SCHEDULER_ID", "NodeInfo"]

#: The scheduler is always node 0; servers and workers get ids from 1 upward.
SCHEDULER_ID = 0

ROLES = ("scheduler", "server", "worker", "client")


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
    identity: bytes = b""

    def __str__(self) -> str:
        rank = f" rank {self.rank}" if self.role == "worker" and self.rank >= 0 else ""
        return f"{self.role} {self.id}{rank} (pid {self.pid} at {self.address})"

    def to_wire(self) -> list[Any]:
        return [self.id, self.role, self.address, self.host, self.pid, self.rank, self.identity]

    @classmethod
    def from_wire(cls, data: Any) -> NodeInfo:
        try:
            nid, role, address, host, pid, rank, *rest = data
        except (TypeError, ValueError):
            raise ProtocolError("a node entry must be [id, role, address, host, pid, rank, identity]") from None
        identity = rest[0] if len(rest) == 1 else b""
        if len(rest) > 1 or not isinstance(identity, bytes) or len(identity) > 255:
            raise ProtocolError("a node entry's identity must be at most 255 bytes")
        if not (type(nid) is int and type(pid) is int and type(rank) is int):
            raise ProtocolError("node id, pid and rank must be integers")
        if role not in ROLES or not isinstance(address, str) or not isinstance(host, str):
            raise ProtocolError(f"malformed node entry {data!r}")
        return cls(nid, role, address, host, pid, rank, identity)
