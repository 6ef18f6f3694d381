"""Layer 1, the transport: frames between numbered nodes (ZeroMQ, or in memory for tests)."""

from ._base import COPY_THRESHOLD, NO_ORIGIN, Frames, Origin, Transport
from ._curve import KEY_ROLES, CurveKeys, check_bind, is_loopback, key_role, load_keys, write_keys
from ._faults import FaultyTransport
from ._memory import MemoryHub, MemoryTransport
from ._zmq import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_RCVHWM, ZmqTransport

__all__ = [
    "COPY_THRESHOLD",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RCVHWM",
    "KEY_ROLES",
    "NO_ORIGIN",
    "CurveKeys",
    "FaultyTransport",
    "Frames",
    "MemoryHub",
    "MemoryTransport",
    "Origin",
    "Transport",
    "ZmqTransport",
    "check_bind",
    "is_loopback",
    "key_role",
    "load_keys",
    "write_keys",
]
