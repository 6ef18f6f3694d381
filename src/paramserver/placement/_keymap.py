"""Key ranges and the versioned key map: which server owns which part of the key space.

The key space is the 64-bit unsigned integers, ``[0, 2**64)``. A :class:`KeyMap` cuts it
into contiguous :class:`KeyRange` pieces, each with a master server and an ordered chain of
replicas, and carries an ``epoch`` that grows each time ownership changes. The scheduler
owns the map; every node caches it and puts its epoch in each request.

Invariants of a KeyMap: its ranges are sorted, disjoint, and cover the whole key space;
its epoch never decreases over a cluster's life. KeyMaps are immutable and thread-safe.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from .._errors import InvalidArgument, ProtocolError
from ..protocol import KEY_SPACE

__all__ = [
    "KEY_SPACE", "Assignment", "KeyMap", "KeyRange", "Split", "copy_plan", "extended", "in_ranges",
    "merge_adjacent", "positions", "ranges_from_wire", "ranges_to_wire",
]

_FEW_RANGES = 32  # KeyMap.split walks at most this many ranges in Python, else sorts per key
_NO_REPLICATED: dict[tuple[int, ...], tuple[KeyRange, ...]] = {}  # never mutated


@dataclass(frozen=True, slots=True, order=True)
class KeyRange:
    """The keys ``lo <= k < hi`` (``hi`` may be ``2**64``)."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi <= KEY_SPACE:
            raise InvalidArgument(f"invalid key range [{self.lo}, {self.hi})")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.lo <= key < self.hi

    def overlaps(self, other: KeyRange) -> bool:
        return self.lo < other.hi and other.lo < self.hi

    def __str__(self) -> str:
        return f"[{self.lo:#x}, {self.hi:#x})"


@dataclass(frozen=True, slots=True)
class Assignment:
    """One range of the key map: its master and its replica chain (master excluded)."""

    range: KeyRange
    master: int
    replicas: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Split:
    """The part of sorted keys (and of arrays aligned with them) that one server masters.

    ``pos`` selects the part in the original keys: a ``slice`` when the part is one
    contiguous run, then ``keys`` and ``arrays`` are views (no copy); otherwise a sorted
    int64 array of positions, then they are one gather each. Either way
    ``keys == original[pos]`` and ``arrays[i] == original_arrays[i][pos]``, ascending.
    """

    server: int
    pos: slice | np.ndarray
    keys: np.ndarray
    arrays: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.keys)


class KeyMap:
    """An immutable, versioned assignment of the whole key space to servers."""

    __slots__ = ("_bounds", "_chain_ids", "_chains", "_dense", "_entries", "_his", "_master_list", "_masters",
                 "_ranges", "_replicated", "_server_ids", "epoch")

    def __init__(self, epoch: int, entries: list[Assignment] | tuple[Assignment, ...]) -> None:
        entries = tuple(sorted(entries, key=lambda a: a.range.lo))
        if not entries:
            raise InvalidArgument("a key map needs at least one range")
        expect = 0
        for a in entries:
            if a.range.lo != expect:
                raise InvalidArgument(f"key map ranges must tile the key space; gap or overlap at {expect:#x}")
            expect = a.range.hi
        if expect != KEY_SPACE:
            raise InvalidArgument("key map ranges must reach 2**64")
        self.epoch = epoch
        self._entries = entries
        self._bounds = np.array([a.range.lo for a in entries[1:]], dtype=np.uint64)
        self._masters = np.array([a.master for a in entries], dtype=np.int64)
        self._master_list = [a.master for a in entries]
        # split(): each range's master as an index into _server_ids, small for a fast stable sort.
        self._server_ids = sorted(set(self._master_list))
        index = {node: i for i, node in enumerate(self._server_ids)}
        self._dense = np.array([index[m] for m in self._master_list],
                               dtype=np.int16 if len(index) < 2**15 else np.int64)
        self._ranges: dict[int, list[KeyRange]] = {}
        for a in entries:
            self._ranges.setdefault(a.master, []).append(a.range)
        self._his = {node: [r.hi for r in ranges] for node, ranges in self._ranges.items()}
        chain_index: dict[tuple[int, ...], int] = {}
        self._chain_ids = np.array([chain_index.setdefault(a.replicas, len(chain_index)) for a in entries],
                                   dtype=np.int64)
        self._chains = list(chain_index)
        # replicated_ranges(), precomputed (the map is immutable): {master: {chain: ranges}}.
        replicated: dict[int, dict[tuple[int, ...], list[KeyRange]]] = {}
        for a in entries:
            if a.replicas:
                replicated.setdefault(a.master, {}).setdefault(a.replicas, []).append(a.range)
        self._replicated = {m: {c: tuple(rs) for c, rs in by_chain.items()} for m, by_chain in replicated.items()}

    def __iter__(self) -> Iterator[Assignment]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyMap) and (self.epoch, self._entries) == (other.epoch, other._entries)

    def __hash__(self) -> int:
        return hash((self.epoch, self._entries))

    def __repr__(self) -> str:
        return f"KeyMap(epoch={self.epoch}, ranges={len(self._entries)}, servers={self.servers()})"

    def servers(self) -> list[int]:
        """Every node that masters or replicates a range, sorted."""
        nodes = {a.master for a in self._entries}
        for a in self._entries:
            nodes.update(a.replicas)
        return sorted(nodes)

    def ranges_of(self, node: int) -> list[KeyRange]:
        """The ranges ``node`` masters, sorted."""
        return list(self._ranges.get(node, ()))

    def overlaps(self, node: int, lo: int, hi: int) -> bool:
        """True if ``node`` masters at least one key of ``[lo, hi)`` (O(log ranges))."""
        ranges = self._ranges.get(node)
        if not ranges:
            return False
        i = bisect_right(self._his[node], lo)  # the first of its ranges that ends after lo
        return i < len(ranges) and ranges[i].lo < hi

    def span_of(self, node: int) -> tuple[int, int]:
        """The smallest ``[lo, hi)`` covering every range ``node`` masters (it must master one)."""
        ranges = self._ranges.get(node)
        if not ranges:
            raise InvalidArgument(f"node {node} masters no key range in epoch {self.epoch}")
        return ranges[0].lo, ranges[-1].hi

    def master_of(self, key: int) -> int:
        """The master of one key."""
        i = int(np.searchsorted(self._bounds, np.uint64(key), side="right"))
        return self._entries[i].master

    def owns(self, node: int, lo: int, hi: int) -> bool:
        """True if ``node`` masters every key of ``[lo, hi)``."""
        i = int(np.searchsorted(self._bounds, np.uint64(lo), side="right"))
        while i < len(self._entries):
            a = self._entries[i]
            if a.master != node:
                return False
            if a.range.hi >= hi:
                return True
            i += 1
        return False

    def _hits(self, keys: np.ndarray, labels: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """``(labels[i], start, stop)`` for each range ``i`` (in key order) that got at least
        one of the sorted ``keys``, ``keys[start:stop]`` being its keys. One ``np.searchsorted``."""
        n = len(keys)
        cuts = np.searchsorted(keys, self._bounds, side="left")
        starts = np.concatenate([[0], cuts])
        stops = np.concatenate([cuts, [n]])
        hit = np.flatnonzero(stops > starts)  # only the ranges that received keys
        return zip(labels[hit].tolist(), starts[hit].tolist(), stops[hit].tolist(), strict=True)

    def slice(self, keys: np.ndarray) -> dict[int, list[tuple[int, int]]]:
        """Split sorted keys by master: ``{node: [(start, stop), ...]}`` positions in ``keys``.

        ``keys`` must be sorted ascending (uint64). Only masters with at least one key
        appear; a master with several ranges gets one (start, stop) pair per range hit.
        Costs one ``np.searchsorted`` over the range bounds, O(ranges * log n).
        """
        if len(self._entries) == 1:
            n = len(keys)
            return {self._entries[0].master: [(0, n)]} if n else {}
        out: dict[int, list[tuple[int, int]]] = {}
        for node, a, b in self._hits(keys, self._masters):
            out.setdefault(node, []).append((a, b))
        return out

    def split(self, keys: np.ndarray, *arrays: np.ndarray) -> dict[int, Split]:
        """Split sorted keys, and ``arrays`` aligned with them (same first dimension), by master.

        ``keys`` must be a sorted (ascending) 1-D uint64 array. Returns ``{server: Split}``
        for each master with at least one key, in the order of its first key. A server's
        keys that form one contiguous run come as views with a ``slice``; otherwise as one
        gather with an int64 position array.

        Cost: one ``np.searchsorted``. With few ranges (at most ``_FEW_RANGES``), of the
        range bounds into the keys, then a Python pass over the ranges; with many (a ring),
        of the keys into the bounds, then a stable sort of the keys' server indices and a
        slice of it per server. No Python loop over keys.

        Raises
        ------
        InvalidArgument
            Keys that are not a 1-D uint64 array, or an array of another length.
        """
        n = len(keys)
        if keys.dtype != np.uint64 or keys.ndim != 1:
            raise InvalidArgument(f"keys to split must be a 1-D uint64 array, got {keys.ndim}-D {keys.dtype}")
        for a in arrays:
            if a.ndim < 1 or len(a) != n:
                raise InvalidArgument(f"an array of shape {a.shape} does not match {n} keys")
        if n == 0:
            return {}
        if len(self._entries) == 1:
            master = self._entries[0].master
            return {master: Split(master, slice(0, n), keys, arrays)}
        out: dict[int, Split] = {}
        if len(self._entries) <= _FEW_RANGES:
            stops = np.searchsorted(keys, self._bounds, side="left").tolist()
            stops.append(n)
            runs: dict[int, list[int]] = {}  # server -> [start, stop, start, stop, ...] of its runs
            start, prev = 0, None
            for master, stop in zip(self._master_list, stops, strict=True):
                if stop > start:  # neighbouring ranges that got keys are contiguous in keys
                    if master == prev:
                        runs[master][-1] = stop
                    else:
                        runs.setdefault(master, []).extend((start, stop))
                        prev = master
                    start = stop
            for server, r in runs.items():
                if len(r) == 2:
                    pos: slice | np.ndarray = slice(r[0], r[1])
                else:  # a Python loop over this server's few runs
                    pos = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(r[::2], r[1::2], strict=True)])
                out[server] = Split(server, pos, keys[pos], tuple(a[pos] for a in arrays))
            return out
        label = self._dense[np.searchsorted(self._bounds, keys, side="right")]  # each key's server index
        order = np.argsort(label, kind="stable")  # positions grouped by server, ascending in each
        cut = (np.flatnonzero(label[order[1:]] != label[order[:-1]]) + 1).tolist()
        groups = sorted(zip(order[[0, *cut]].tolist(), [0, *cut], [*cut, n], strict=True))
        for first, g0, g1 in groups:  # servers in the order of their first key
            server = self._server_ids[label[first]]
            if int(order[g1 - 1]) - first == g1 - g0 - 1:
                pos = slice(first, first + g1 - g0)
            else:
                pos = order[g0:g1].astype(np.int64, copy=False)
            out[server] = Split(server, pos, keys[pos], tuple(a[pos] for a in arrays))
        return out

    def masters(self, keys: np.ndarray) -> np.ndarray:
        """The master of each key (any order), as an int64 array (one ``np.searchsorted``)."""
        if len(self._entries) == 1:
            return np.full(len(keys), self._entries[0].master, dtype=np.int64)
        return self._masters[np.searchsorted(self._bounds, keys, side="right")]

    def chains(self, keys: np.ndarray) -> dict[tuple[int, ...], list[tuple[int, int]]]:
        """Split sorted keys by the replica chain of their range: ``{chain: [(start, stop)...]}``,
        one (start, stop) pair per range hit.

        Only non-empty chains appear (a range without replicas needs no forwarding). Like
        :meth:`slice`, one ``np.searchsorted`` over the range bounds.
        """
        if len(self._entries) == 1:
            n = len(keys)
            chain = self._entries[0].replicas
            return {chain: [(0, n)]} if n and chain else {}
        out: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for c, a, b in self._hits(keys, self._chain_ids):
            chain = self._chains[c]
            if chain:
                out.setdefault(chain, []).append((a, b))  # one piece per range: spans stay inside it
        return out

    def replicated_ranges(self, master: int) -> Mapping[tuple[int, ...], tuple[KeyRange, ...]]:
        """The ranges ``master`` masters that have replicas, grouped by their replica chain
        (chains in the order of their first range, ranges sorted).

        Precomputed when the map is built (O(1) per call); the result is shared: read it only.
        """
        return self._replicated.get(master, _NO_REPLICATED)

    def chain_of(self, key: int) -> tuple[int, ...]:
        """Master then replicas of the range holding ``key``."""
        i = int(np.searchsorted(self._bounds, np.uint64(key), side="right"))
        a = self._entries[i]
        return (a.master, *a.replicas)

    def without(self, dead: int, epoch: int) -> KeyMap:
        """The map after ``dead`` failed: in each range's chain the next live replica is
        promoted to master, and ``dead`` leaves every chain (fewer copies until they are
        restored). Raises :class:`InvalidArgument` if a range had no other copy."""
        entries = []
        for a in self._entries:
            chain = [n for n in (a.master, *a.replicas) if n != dead]
            if not chain:
                raise InvalidArgument(f"keys {a.range} were held only by node {dead}: no replica to promote")
            entries.append(Assignment(a.range, chain[0], tuple(chain[1:])))
        return KeyMap(epoch, merge_adjacent(entries))

    def slice_range(self, lo: int, hi: int) -> dict[int, list[KeyRange]]:
        """The masters of ``[lo, hi)`` and the sub-ranges each owns, in key order."""
        if not 0 <= lo < hi <= KEY_SPACE:
            raise InvalidArgument(f"invalid key range [{lo}, {hi}): need 0 <= lo < hi <= 2**64")
        out: dict[int, list[KeyRange]] = {}
        for a in self._entries:
            if a.range.hi <= lo or a.range.lo >= hi:
                continue
            out.setdefault(a.master, []).append(KeyRange(max(lo, a.range.lo), min(hi, a.range.hi)))
        return out

    def restored(self, replicas: int, servers: list[int], epoch: int) -> KeyMap:
        """This map with every chain grown back to ``replicas`` copies (fewer if fewer
        servers): a short chain gets the next servers after its master in id order."""
        live = sorted(servers)
        entries = []
        for a in self._entries:
            chain = [a.master, *a.replicas]
            start = bisect_right(live, a.master)
            for node in live[start:] + live[:start]:
                if len(chain) >= min(replicas, len(live)):
                    break
                if node not in chain:
                    chain.append(node)
            entries.append(Assignment(a.range, chain[0], tuple(chain[1:])))
        return KeyMap(epoch, merge_adjacent(entries))

    def replicas(self) -> int:
        """The smallest number of copies of any range (master included)."""
        return min(1 + len(a.replicas) for a in self._entries)

    # ---------------------------------------------------------------- wire form
    def to_wire(self) -> dict[str, Any]:
        """A msgpack-able form: ``{"epoch": e, "ranges": [[lo, last, master, [replicas]]...]}``."""
        return {
            "epoch": self.epoch,
            "ranges": [[a.range.lo, a.range.hi - 1, a.master, list(a.replicas)] for a in self._entries],
        }

    @classmethod
    def from_wire(cls, data: Any) -> KeyMap:
        """Inverse of :meth:`to_wire`; raises :class:`ProtocolError` on malformed data."""
        try:
            epoch = data["epoch"]
            if type(epoch) is not int or epoch < 0:
                raise ValueError("bad epoch")
            entries = []
            for lo, last, master, replicas in data["ranges"]:
                if not all(type(x) is int for x in (lo, last, master, *replicas)):
                    raise ValueError("non-integer field")
                entries.append(Assignment(KeyRange(lo, last + 1), master, tuple(replicas)))
            return cls(epoch, entries)
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ProtocolError(f"malformed key map: {exc}") from None


def merge_adjacent(entries: list[Assignment]) -> list[Assignment]:
    """``entries`` (sorted, contiguous) with every run of neighbouring ranges that have the
    same chain (master and replicas) joined into one range. Pure; the input is not changed."""
    out: list[Assignment] = []
    for a in entries:
        if out and out[-1].master == a.master and out[-1].replicas == a.replicas and out[-1].range.hi == a.range.lo:
            prev = out.pop()
            a = Assignment(KeyRange(prev.range.lo, a.range.hi), a.master, a.replicas)
        out.append(a)
    return out


def positions(pieces: list[tuple[int, int]]) -> np.ndarray:
    """The positions ``start, ..., stop - 1`` of every ``(start, stop)`` piece, concatenated
    (the pieces :meth:`KeyMap.slice` and :meth:`KeyMap.chains` return)."""
    if len(pieces) == 1:
        return np.arange(*pieces[0])
    return np.concatenate([np.arange(a, b) for a, b in pieces])


def ranges_to_wire(ranges: list[tuple[int, int]]) -> list[list[int]]:
    """``[(lo, hi), ...]`` as ``[[lo, last], ...]``: the last key included, so that ranges
    reaching 2**64 fit msgpack's 64-bit integers."""
    return [[lo, hi - 1] for lo, hi in ranges]


def ranges_from_wire(raw: Any) -> list[tuple[int, int]]:
    """Inverse of :func:`ranges_to_wire`, sorted; raises :class:`ProtocolError` on malformed data."""
    if not (isinstance(raw, list) and all(isinstance(r, list) and len(r) == 2 and type(r[0]) is int
                                          and type(r[1]) is int and 0 <= r[0] <= r[1] < KEY_SPACE for r in raw)):
        raise ProtocolError("key ranges must be a list of [lo, last] pairs of keys")
    return sorted((r[0], r[1] + 1) for r in raw)


def in_ranges(keys: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """A boolean mask: which of ``keys`` (uint64, any order) lie in one of ``ranges`` (sorted,
    disjoint ``[lo, hi)``, hi up to 2**64). One ``np.searchsorted``."""
    if not ranges:
        return np.zeros(len(keys), dtype=bool)
    los = np.array([r[0] for r in ranges], dtype=np.uint64)
    lasts = np.array([r[1] - 1 for r in ranges], dtype=np.uint64)
    i = np.searchsorted(los, keys, side="right") - 1
    return (i >= 0) & (keys <= lasts[np.maximum(i, 0)])


def copy_plan(old: KeyMap, new: KeyMap) -> dict[int, dict[int, list[tuple[int, int]]]]:
    """What must be copied to go from ``old`` to ``new``: ``{source: {target: [ranges]}}``.

    A range's data goes to every node that holds it in ``new`` (master or replica) and did
    not in ``old``, from its master in ``old``. Ranges are sorted, disjoint, merged.
    """
    cuts = sorted({a.range.lo for a in old} | {a.range.lo for a in new} | {KEY_SPACE})
    plan: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for lo, hi in pairwise(cuts):
        before = old.chain_of(lo)
        for target in new.chain_of(lo):
            if target not in before:
                ranges = plan.setdefault(before[0], {}).setdefault(target, [])
                if ranges and ranges[-1][1] == lo:
                    ranges[-1] = (ranges[-1][0], hi)
                else:
                    ranges.append((lo, hi))
    return plan


def extended(old: KeyMap, new: KeyMap, epoch: int) -> KeyMap:
    """The map between ``old`` and ``new`` during a migration: the masters of ``old``, each
    chain with the nodes that ``new`` adds to it placed right after the master (so that the
    master's copy and its later updates reach them in order, over one link)."""
    cuts = sorted({a.range.lo for a in old} | {a.range.lo for a in new} | {KEY_SPACE})
    entries = []
    for lo, hi in pairwise(cuts):
        before = old.chain_of(lo)
        added = tuple(n for n in new.chain_of(lo) if n not in before)
        entries.append(Assignment(KeyRange(lo, hi), before[0], added + before[1:]))
    return KeyMap(epoch, merge_adjacent(entries))
