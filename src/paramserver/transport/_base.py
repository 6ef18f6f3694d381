"""The transport interface: frames in and out between numbered nodes.

A transport gives a node one bound endpoint that receives every message sent to it, and
one outgoing link per peer it has connected to. It moves frames (lists of buffers) and
knows nothing of their meaning.

Thread-safety contract shared by all implementations: :meth:`Transport.send`,
:meth:`Transport.connect` and :meth:`Transport.disconnect` may be called from any thread;
:meth:`Transport.recv` is called by one thread only (the node's receive loop);
:meth:`Transport.close` may be called from any thread, once the receive loop has stopped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COPY_THRESHOLD", "NO_ORIGIN", "Frames", "Origin", "Transport"]

#: One message: a sequence of buffers (bytes, memoryview, numpy arrays, zmq Frames).
Frames = Sequence[Any]

#: Frames smaller than this many bytes are copied by a transport (cheaper than tracking the
#: buffer); larger ones are sent from the caller's memory. The codec packs arrays below it
#: into the header frame.
COPY_THRESHOLD = 1 << 16


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a received message came from, as the transport (not the message) says.

    ``peer`` is the sending connection's identity (its ZeroMQ routing id: random per
    process, the same on every link the process opens); ``role`` is the role of the CURVE
    key that authenticated the connection ("" when the transport runs without keys).
    Neither can be set by what a peer writes into a message header.
    """

    peer: bytes = b""
    role: str = ""


#: The origin of a message whose sender the transport cannot tell.
NO_ORIGIN = Origin()


class Transport(ABC):
    """Abstract transport; see the module docstring for the thread-safety contract."""

    #: The :class:`Origin` of the message the last :meth:`recv` returned (read it on the
    #: receiving thread, before the next :meth:`recv`).
    origin: Origin = NO_ORIGIN
    #: This transport's own connection identity (what receivers see as ``Origin.peer``).
    identity: bytes = b""

    @property
    @abstractmethod
    def address(self) -> str:
        """The bound address peers connect to (valid after :meth:`bind`)."""

    @abstractmethod
    def bind(self, host: str, port: int = 0) -> str:
        """Bind the receiving endpoint (port 0 picks a free port); return its address."""

    @abstractmethod
    def connect(self, peer: int, address: str, role: str = "") -> None:
        """Open (or re-point) the outgoing link to ``peer``. Idempotent.

        ``role`` names the key ``peer`` listens with (``scheduler``, ``server``, ``worker``,
        ``admin``); a transport with CURVE keys needs it to authenticate the peer, others
        ignore it.
        """

    @abstractmethod
    def disconnect(self, peer: int) -> None:
        """Close the outgoing link to ``peer`` and drop what is queued for it. Idempotent."""

    @abstractmethod
    def send(self, peer: int, frames: Frames) -> int:
        """Queue one message for ``peer``; return the bytes queued.

        Buffers are not copied when large: the caller must leave them unchanged until the
        request they belong to is answered.

        Raises
        ------
        NodeUnavailable
            No link to ``peer`` is open.
        """

    @abstractmethod
    def recv(self, timeout: float | None) -> list[Any] | None:
        """The frames of the next message, or ``None`` when ``timeout`` seconds pass first."""

    def lost(self) -> list[int]:
        """The peers whose established link broke since the last call (their process died
        or closed its endpoint), each once per break; called by the receiving thread after
        :meth:`recv`. A transport that cannot tell returns ``[]`` (heartbeats then find it)."""
        return []

    @abstractmethod
    def wake(self) -> None:
        """Make a :meth:`recv` blocked in another thread return ``None`` soon. Thread-safe."""

    @abstractmethod
    def close(self, linger: float = 1.0) -> None:
        """Close every socket; queued messages get ``linger`` seconds to leave."""
