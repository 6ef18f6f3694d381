"""The ZeroMQ transport: one bound ROUTER per node, one DEALER per peer.

This is ps-lite's Van in Python: every message travels one way, from the sender's DEALER
for that peer to the receiver's ROUTER, and a reply is a message the other way. The ROUTER
prepends the sending socket's identity, which :meth:`ZmqTransport.recv` drops: the sender
is named inside the message header.

Frames of at least :data:`COPY_THRESHOLD` (64 KiB) bytes are handed to ZeroMQ with
``copy=False``: sent from the caller's memory and received into buffers that numpy wraps
without copying. Smaller frames (a header frame with small arrays packed into it) are
copied, which is cheaper than tracking their buffers.

Thread-safety: each DEALER has its own lock, so :meth:`send` may be called from any
thread; the ROUTER is used only by the thread that calls :meth:`recv`.
"""

from __future__ import annotations

import errno
import math
import os
import threading
from typing import Any

import zmq

from .._errors import ConnectError, NodeUnavailable
from ._base import COPY_THRESHOLD, Frames, Transport

__all__ = ["ZmqTransport"]

_SNDMORE = int(zmq.SNDMORE)


class _Link:
    __slots__ = ("address", "lock", "socket")

    def __init__(self, socket: zmq.Socket[Any], address: str) -> None:
        self.socket = socket
        self.address = address
        self.lock = threading.Lock()


class ZmqTransport(Transport):
    """ZeroMQ over TCP. See the module docstring."""

    def __init__(self) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self._router: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.RCVHWM, 0)
        self._router.setsockopt(zmq.LINGER, 0)
        self._wake_addr = f"inproc://wake-{os.urandom(6).hex()}"
        self._wake_rx: zmq.Socket[Any] = self._ctx.socket(zmq.PULL)
        self._wake_rx.bind(self._wake_addr)
        self._wake_tx: zmq.Socket[Any] = self._ctx.socket(zmq.PUSH)
        self._wake_tx.connect(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._wake_rx, zmq.POLLIN)
        self._links: dict[int, _Link] = {}
        self._links_lock = threading.Lock()
        self._address = ""
        self._identity = os.urandom(8)
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    def bind(self, host: str, port: int = 0) -> str:
        try:
            if port:
                self._router.bind(f"tcp://{host}:{port}")
            else:
                port = self._router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as exc:
            why = ("the port is already in use (another node or program listens there); choose another "
                   "port, or 0 for a free one" if exc.errno == errno.EADDRINUSE else exc.strerror)
            raise ConnectError(f"cannot listen at tcp://{host}:{port}: {why}") from None
        self._address = f"tcp://{host}:{port}"
        return self._address

    def connect(self, peer: int, address: str) -> None:
        with self._links_lock:
            link = self._links.get(peer)
            if link is not None:
                if link.address == address:
                    return
                self._close_link(link, linger=0)
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self._identity)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.connect(address)
            self._links[peer] = _Link(sock, address)

    def disconnect(self, peer: int) -> None:
        with self._links_lock:
            link = self._links.pop(peer, None)
            if link is not None:
                self._close_link(link, linger=1.0)  # let a last reply leave

    @staticmethod
    def _close_link(link: _Link, linger: float) -> None:
        with link.lock:
            link.socket.close(linger=int(linger * 1000))

    def send(self, peer: int, frames: Frames) -> int:
        link = self._links.get(peer)
        if link is None:
            raise NodeUnavailable(f"no connection to node {peer}")
        sizes = [memoryview(f).nbytes for f in frames]
        last = len(frames) - 1
        with link.lock:
            sock = link.socket
            if sock.closed:
                raise NodeUnavailable(f"the connection to node {peer} was closed")
            # Small frames are copied (cheaper than tracking a buffer); large ones are not.
            for i, f in enumerate(frames):
                sock.send(f, _SNDMORE if i < last else 0, copy=sizes[i] < COPY_THRESHOLD)
        return sum(sizes)

    def recv(self, timeout: float | None) -> list[Any] | None:
        # a positive wait rounds up: below 1 ms it must not become a busy poll of 0 ms
        ms = None if timeout is None else (0 if timeout <= 0 else math.ceil(timeout * 1000))
        ready = self._poller.poll(ms)
        if not ready:
            return None
        if len(ready) > 1 or ready[0][0] is self._wake_rx:
            while self._wake_rx.poll(0):
                self._wake_rx.recv()
            if not any(sock is self._router for sock, _ in ready):
                return None
        frames = self._router.recv_multipart(copy=False)
        return frames[1:]  # drop the routing identity

    def wake(self) -> None:
        with self._wake_lock:
            if not self._closed:
                self._wake_tx.send(b"", zmq.NOBLOCK)

    def close(self, linger: float = 1.0) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        with self._links_lock:
            links = list(self._links.values())
            self._links.clear()
        for link in links:
            self._close_link(link, linger)
        with self._wake_lock:
            self._wake_tx.close(linger=0)
        self._wake_rx.close(linger=0)
        self._router.close(linger=0)
        self._ctx.term()
