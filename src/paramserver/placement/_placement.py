"""Placement policies: how the server manager turns a set of servers into a key map.

:class:`Placement` is the interface the scheduler calls; :class:`EvenSplit` cuts the key
space into equal contiguous ranges, one per server, in the order of their node ids (the
scheme of ps-lite). Policies are pure functions of their inputs and thread-safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from .._errors import InvalidArgument
from ._keymap import KEY_SPACE, Assignment, KeyMap, KeyRange

__all__ = ["EvenSplit", "Placement"]


class Placement(ABC):
    """Builds the key map for a set of live servers."""

    @abstractmethod
    def assign(self, servers: Sequence[int], epoch: int, replicas: int = 1) -> KeyMap:
        """A key map of ``epoch`` over ``servers``, each range with ``replicas - 1`` copies."""


class EvenSplit(Placement):
    """Equal contiguous ranges, one per server; replicas are the next servers in id order."""

    def assign(self, servers: Sequence[int], epoch: int, replicas: int = 1) -> KeyMap:
        nodes = sorted(servers)
        if not nodes:
            raise InvalidArgument("cannot place keys on zero servers")
        if not 1 <= replicas <= len(nodes):
            raise InvalidArgument(f"replicas={replicas} needs between 1 and {len(nodes)} servers")
        n = len(nodes)
        entries = []
        for i, node in enumerate(nodes):
            lo = KEY_SPACE * i // n
            hi = KEY_SPACE * (i + 1) // n
            chain = tuple(nodes[(i + j) % n] for j in range(1, replicas))
            entries.append(Assignment(KeyRange(lo, hi), node, chain))
        return KeyMap(epoch, entries)
