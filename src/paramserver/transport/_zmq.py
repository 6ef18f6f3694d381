"""The ZeroMQ transport: one bound ROUTER per node, one DEALER per peer.

This is ps-lite's Van in Python: every message travels one way, from the sender's DEALER
for that peer to the receiver's ROUTER, and a reply is a message the other way. The ROUTER
prepends the sending socket's identity, which :meth:`ZmqTransport.recv` drops: the sender
is named inside the message header.

Frames of at least :data:`COPY_THRESHOLD` (64 KiB) bytes are handed to ZeroMQ with
``copy=False``: sent from the caller's memory and received into buffers that numpy wraps
without copying. Smaller frames (a header frame with small arrays packed into it) are
copied, which is cheaper than tracking their buffers.

With :class:`~._curve.CurveKeys` every socket runs CURVE: the ROUTER is a CURVE server
with the node's role key, and a :class:`~._curve.RoleAuthenticator` on the context admits
only the cluster's role keys; each DEALER authenticates the peer by the public key of the
role it was connected with. :attr:`ZmqTransport.origin` then carries the role of the key
that authenticated the last message's connection (its ZAP User-Id). Without keys,
:meth:`ZmqTransport.bind` refuses addresses other than loopback unless ``insecure``.

Limits: a received message (all its frames) of more than ``max_message_bytes`` is dropped
before it is decoded (ZeroMQ's MAXMSGSIZE already cuts a connection that sends a larger
frame), and the ROUTER queues at most ``rcvhwm`` messages per connection: a sender that
outruns this node waits on TCP (backpressure) instead of filling this node's memory.

Each DEALER has a ZeroMQ socket monitor watching for ``EVENT_DISCONNECTED``: an
established connection to the peer broke (the peer's process died, its host reset the
connection, or it closed its endpoint). :meth:`ZmqTransport.recv` reads the monitors with
the ROUTER and :meth:`ZmqTransport.lost` hands out the peers whose link broke, at once,
without waiting for a timeout. Failed connection attempts (nothing listens yet) are not
reported: only a connection that existed and broke.

Thread-safety: each DEALER has its own lock, so :meth:`send` may be called from any
thread; the ROUTER and the monitors are used only by the thread that calls :meth:`recv`
(a link opened on another thread hands its monitor over through a list under the links'
lock).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from .._errors import ConfigError, ConnectError, NodeUnavailable
from ._base import COPY_THRESHOLD, NO_ORIGIN, Frames, Origin, Transport
from ._curve import ZAP_DOMAIN, CurveKeys, RoleAuthenticator, check_bind

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_RCVHWM", "ZmqTransport"]

log = logging.getLogger("paramserver.transport")

#: The default of PS_MAX_MESSAGE_BYTES: the largest message a node accepts.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
#: The default of PS_RCVHWM: messages queued per incoming connection before backpressure.
DEFAULT_RCVHWM = 1000

_SNDMORE = int(zmq.SNDMORE)


class _Link:
    __slots__ = ("address", "lock", "monitor", "peer", "socket")

    def __init__(self, socket: zmq.Socket[Any], address: str, peer: int, monitor: zmq.Socket[Any]) -> None:
        self.socket = socket
        self.address = address
        self.peer = peer
        self.monitor = monitor
        self.lock = threading.Lock()


class ZmqTransport(Transport):
    """ZeroMQ over TCP. See the module docstring.

    Parameters
    ----------
    keys:
        This node's CURVE keys (None: plain TCP, loopback only unless ``insecure``).
    insecure:
        Allow binding non-loopback addresses without keys (PS_INSECURE).
    max_message_bytes:
        The largest message accepted (PS_MAX_MESSAGE_BYTES); 0 for no limit.
    rcvhwm:
        Messages queued per incoming connection (PS_RCVHWM); 0 for no limit.
    """

    def __init__(self, *, keys: CurveKeys | None = None, insecure: bool = False,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, rcvhwm: int = DEFAULT_RCVHWM) -> None:
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self.keys = keys
        self.insecure = insecure
        self.max_message_bytes = max_message_bytes
        self._auth: RoleAuthenticator | None = None
        if keys is not None:
            self._auth = RoleAuthenticator(self._ctx, keys)
            self._auth.start()
        self._router: zmq.Socket[Any] = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.RCVHWM, rcvhwm)
        self._router.setsockopt(zmq.LINGER, 0)
        if max_message_bytes:
            self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if keys is not None:
            self._router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
            self._router.setsockopt(zmq.CURVE_SERVER, 1)
            self._router.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            self._router.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
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
        # monitors: handed to the receiving thread (new ones, closed links) under _links_lock
        self._monitors_new: list[_Link] = []
        self._monitors_old: list[zmq.Socket[Any]] = []
        self._watching: dict[zmq.Socket[Any], _Link] = {}
        self._lost: list[int] = []
        self._address = ""
        self.identity = os.urandom(16)
        self.origin = NO_ORIGIN
        #: Messages dropped because they were larger than ``max_message_bytes``.
        self.oversized = 0
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    def bind(self, host: str, port: int = 0) -> str:
        check_bind(host, self.keys, self.insecure)
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

    def connect(self, peer: int, address: str, role: str = "") -> None:
        keys = self.keys
        if keys is not None and not role:
            raise ConfigError(f"a CURVE link to node {peer} at {address} needs the role of its key")
        server_key = keys.public_of(role) if keys is not None else b""
        with self._links_lock:
            link = self._links.get(peer)
            if link is not None:
                if link.address == address:
                    return
                self._close_link(link, linger=0)
            sock = self._ctx.socket(zmq.DEALER)
            if keys is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self.identity)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(address)
            link = self._links[peer] = _Link(sock, address, peer, monitor)
            self._monitors_new.append(link)
        self.wake()  # the receiving thread starts watching the new link

    def disconnect(self, peer: int) -> None:
        with self._links_lock:
            link = self._links.pop(peer, None)
            if link is not None:
                self._close_link(link, linger=1.0)  # let a last reply leave

    def _close_link(self, link: _Link, linger: float) -> None:
        """Close ``link`` (the caller holds the links' lock); its monitor is closed by the
        receiving thread."""
        with link.lock:
            # Stop the monitor first: a monitored socket that closes after its monitor's
            # reader did would block ZeroMQ's I/O thread on the monitor's last event.
            try:
                link.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            link.socket.close(linger=int(linger * 1000))
        if link in self._monitors_new:
            self._monitors_new.remove(link)
        self._monitors_old.append(link.monitor)

    def _sync_monitors(self) -> None:
        """Start watching new links' monitors and close those of closed links (receiving thread)."""
        with self._links_lock:
            new, self._monitors_new = self._monitors_new, []
            old, self._monitors_old = self._monitors_old, []
        for link in new:
            self._watching[link.monitor] = link
            self._poller.register(link.monitor, zmq.POLLIN)
        for monitor in old:
            if self._watching.pop(monitor, None) is not None:
                self._poller.unregister(monitor)
            monitor.close(linger=0)

    def _read_monitor(self, monitor: zmq.Socket[Any]) -> None:
        link = self._watching.get(monitor)
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            if link is None:
                continue
            try:
                event = parse_monitor_message(frames)["event"]
            except (RuntimeError, ValueError):  # not a monitor event: skip it
                continue
            if event == zmq.EVENT_DISCONNECTED and self._links.get(link.peer) is link:
                self._lost.append(link.peer)

    def lost(self) -> list[int]:
        lost, self._lost = self._lost, []
        return lost

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
        if self._monitors_new or self._monitors_old:
            self._sync_monitors()
        ready = self._poller.poll(ms)
        if not ready:
            return None
        if len(ready) > 1 or ready[0][0] is not self._router:
            routed = False
            for sock, _ in ready:
                if sock is self._router:
                    routed = True
                elif sock is self._wake_rx:
                    while self._wake_rx.poll(0):
                        self._wake_rx.recv()
                else:
                    self._read_monitor(sock)
            if not routed:
                return None
        frames = self._router.recv_multipart(copy=False)
        if len(frames) < 2:
            return None
        if self.max_message_bytes and sum(len(f) for f in frames) > self.max_message_bytes:
            self.oversized += 1
            log.warning("dropped a message of %d bytes (PS_MAX_MESSAGE_BYTES=%d)",
                        sum(len(f) for f in frames), self.max_message_bytes)
            return None
        role = ""
        if self.keys is not None:
            try:
                role = str(frames[1].get("User-Id"))
            except zmq.ZMQError:  # no ZAP answer attached: not an authenticated message
                return None
        self.origin = Origin(frames[0].bytes, role)
        return frames[1:]  # the routing identity is the origin

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
            monitors = [*self._monitors_old, *self._watching]
            self._monitors_old, self._monitors_new = [], []
            self._watching = {}
        for monitor in set(monitors):
            monitor.close(linger=0)
        with self._wake_lock:
            self._wake_tx.close(linger=0)
        self._wake_rx.close(linger=0)
        self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
