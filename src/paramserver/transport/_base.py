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
from typing import Any

__all__ = ["COPY_THRESHOLD", "Frames", "Transport"]

#: One message: a sequence of buffers (bytes, memoryview, numpy arrays, zmq Frames).
Frames = Sequence[Any]

#: Frames smaller than this many bytes are copied by a transport (cheaper than tracking the
#: buffer); larger ones are sent from the caller's memory. The codec packs arrays below it
#: into the header frame.
COPY_THRESHOLD = 1 << 16


class Transport(ABC):
    """Abstract transport; see the module docstring for the thread-safety contract."""

    @property
    @abstractmethod
    def address(self) -> str:
        """The bound address peers connect to (valid after :meth:`bind`)."""

    @abstractmethod
    def bind(self, host: str, port: int = 0) -> str:
        """Bind the receiving endpoint (port 0 picks a free port); return its address."""

    @abstractmethod
    def connect(self, peer: int, address: str) -> None:
        """Open (or re-point) the outgoing link to ``peer``. Idempotent."""

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

    @abstractmethod
    def wake(self) -> None:
        """Make a :meth:`recv` blocked in another thread return ``None`` soon. Thread-safe."""

    @abstractmethod
    def close(self, linger: float = 1.0) -> None:
        """Close every socket; queued messages get ``linger`` seconds to leave."""
