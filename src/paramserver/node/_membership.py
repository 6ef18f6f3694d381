"""What a node knows of the cluster: the node table, the cached key map, the scheduler's liveness.

:class:`Membership` is pure state, changed by one entry point, :meth:`Membership.update`,
whatever brought the news: the scheduler's registration answer, its ``NODES`` broadcast,
or a server's "moved" answer naming servers and a newer key map. The update returns what
the I/O shell must do about it (links to re-point, peers that are gone).

Invariants: the key map only moves forward (a map whose epoch is not above the cached one
is ignored, except an equal epoch from the scheduler's table, which is the same map); the
node table only moves forward too (a scheduler's table whose version is below the last one
taken is a delayed broadcast, and only its key map may still be news); a "moved" answer may
add servers to the table but never removes or changes a node.

Thread-safety: not thread-safe; the node runtime guards it with its lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..placement import KeyMap
from ..protocol import Nodes
from ._info import SCHEDULER_ID, NodeInfo

__all__ = ["Change", "Membership", "parse_nodes"]


@dataclass(frozen=True, slots=True)
class Change:
    """What an update changed: nodes that left (or were declared dead) and links whose
    address changed (node id -> new address)."""

    gone: frozenset[int]
    moved_links: tuple[tuple[int, str], ...]
    keymap_changed: bool


def parse_nodes(body: Nodes) -> tuple[list[NodeInfo], KeyMap | None, set[int], int]:
    """The node table, key map, dead nodes and version of a registration answer or ``NODES`` body.

    Raises
    ------
    ProtocolError
        A malformed node entry or key map.
    """
    nodes = [NodeInfo.from_wire(x) for x in body.nodes]
    keymap = KeyMap.from_wire(body.keymap) if body.keymap is not None else None
    return nodes, keymap, set(body.dead), body.table_version


class Membership:
    """The node table and key map of one node. See the module docstring."""

    __slots__ = ("keymap", "nodes", "scheduler_address", "version")

    def __init__(self) -> None:
        self.nodes: dict[int, NodeInfo] = {}
        self.keymap: KeyMap | None = None
        #: The scheduler's address, once known.
        self.scheduler_address = ""
        #: The version of the scheduler's table last taken (0: none, or unversioned).
        self.version = 0

    def update(self, nodes: Iterable[NodeInfo], keymap: KeyMap | None = None, dead: Iterable[int] = (),
               *, complete: bool = True, version: int = 0, restarted: bool = False) -> Change:
        """Take news of the cluster.

        ``complete``: ``nodes`` is the whole table (from the scheduler), so nodes missing
        from it are gone; otherwise (a "moved" answer) only servers it names that the table
        lacks are added. ``version``: the table's version (0: unversioned, always taken); a
        complete table below the last version taken is stale and only its key map is
        considered. ``restarted``: the table comes from a scheduler process that restarted
        (its versions start again).
        """
        old = self.nodes
        if restarted:
            self.version = 0
        if complete and version and version < self.version:
            stale = self.adopt(keymap) if keymap is not None else False
            return Change(frozenset(), (), stale)
        changed = self.adopt(keymap, allow_equal=complete) if keymap is not None else False
        if complete and version:
            self.version = version
        if not complete:
            for info in nodes:
                if info.role == "server" and info.id not in old:
                    old[info.id] = info
            return Change(frozenset(), (), changed)
        new = {n.id: n for n in nodes}
        moved = tuple((nid, info.address) for nid, info in new.items()
                      if nid in old and old[nid].address != info.address)
        self.nodes = new
        return Change(frozenset((set(old) - set(new)) | set(dead)), moved, changed)

    def adopt(self, keymap: KeyMap, *, allow_equal: bool = False) -> bool:
        """Use ``keymap`` if it is newer than the cached one; True if it was adopted."""
        cur = self.keymap
        if cur is not None and (keymap.epoch < cur.epoch or (keymap.epoch == cur.epoch and not allow_equal)):
            return False
        self.keymap = keymap
        return True

    def describe(self, node: int, own_address: str = "") -> str:
        """How error messages name ``node``."""
        info = self.nodes.get(node)
        if info is not None:
            return str(info)
        if node == SCHEDULER_ID:
            return f"the scheduler at {self.scheduler_address or own_address}"
        return f"node {node}"

    def gone_from_map(self, node: int) -> bool:
        """True if ``node`` masters or replicates nothing under the cached key map."""
        keymap = self.keymap
        return keymap is not None and node not in keymap.servers()
