"""Layer 1, the transport: frames between numbered nodes (ZeroMQ, or in memory for tests)."""

from ._base import COPY_THRESHOLD, Frames, Transport
from ._faults import FaultyTransport
from ._memory import MemoryHub, MemoryTransport
from ._zmq import ZmqTransport

__all__ = ["COPY_THRESHOLD", "FaultyTransport", "Frames", "MemoryHub", "MemoryTransport", "Transport", "ZmqTransport"]
