"""An in-memory transport for fast, deterministic unit tests of nodes in one process.

Addresses look like ``mem://N``; a :class:`MemoryHub` maps them to queues. Frames are
copied on send, as they would be by a real network, so a receiver never shares memory
with its sender. Each transport has a random identity that travels beside the frames, as
a ZeroMQ routing id does, and becomes the receiver's :attr:`Transport.origin`.

Thread-safety: as for every :class:`Transport`; the hub is guarded by a lock.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from typing import Any

from .._errors import NodeUnavailable
from ._base import NO_ORIGIN, Frames, Origin, Transport

__all__ = ["MemoryHub", "MemoryTransport"]

#: What travels through a hub queue: the sender's identity and the frames (empty: a wake-up).
_Item = tuple[bytes, list[bytes]]


class MemoryHub:
    """The shared 'network' of a group of :class:`MemoryTransport` objects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[_Item]] = {}
        self._ports = itertools.count(1)

    def bind(self) -> tuple[str, queue.SimpleQueue[_Item]]:
        with self._lock:
            address = f"mem://{next(self._ports)}"
            q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
            self._queues[address] = q
            return address, q

    def lookup(self, address: str) -> queue.SimpleQueue[_Item] | None:
        with self._lock:
            return self._queues.get(address)

    def unbind(self, address: str) -> None:
        with self._lock:
            self._queues.pop(address, None)


class MemoryTransport(Transport):
    """A :class:`Transport` over a :class:`MemoryHub`."""

    def __init__(self, hub: MemoryHub) -> None:
        self._hub = hub
        self._address = ""
        self._inbox: queue.SimpleQueue[_Item] | None = None
        self._links: dict[int, str] = {}
        self._lock = threading.Lock()
        self.identity = os.urandom(8)
        self.origin = NO_ORIGIN

    @property
    def address(self) -> str:
        return self._address

    def bind(self, host: str = "", port: int = 0) -> str:
        self._address, self._inbox = self._hub.bind()
        return self._address

    def connect(self, peer: int, address: str, role: str = "") -> None:
        with self._lock:
            self._links[peer] = address

    def disconnect(self, peer: int) -> None:
        with self._lock:
            self._links.pop(peer, None)

    def send(self, peer: int, frames: Frames) -> int:
        with self._lock:
            address = self._links.get(peer)
        if address is None:
            raise NodeUnavailable(f"no connection to node {peer}")
        copies = [memoryview(f).tobytes() for f in frames]
        q = self._hub.lookup(address)
        if q is not None:  # a closed peer drops messages silently, like a dead host
            q.put((self.identity, copies))
        return sum(len(c) for c in copies)

    def recv(self, timeout: float | None) -> list[Any] | None:
        assert self._inbox is not None, "bind() first"
        try:
            peer, frames = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if not frames:
            return None  # a wake-up
        self.origin = Origin(peer)
        return list(frames)

    def wake(self) -> None:
        if self._inbox is not None:
            self._inbox.put((b"", []))

    def close(self, linger: float = 1.0) -> None:
        if self._address:
            self._hub.unbind(self._address)
