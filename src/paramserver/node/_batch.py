"""Several messages to one peer as one transport message (a batch), and back.

A node that handles several requests in a row answers them with one batch per peer instead
of one message each: one send and one receive instead of many, for the same bytes. The
envelope is one leading frame, then the frames of every message in order::

    b"\\xc1PB" + uint16 count + count x uint16 (frames of each message), little-endian

``0xc1`` never begins a message (frame 0 starts with the protocol version, a small number),
so a batch is told from a single message by its first byte. :func:`unpack` checks the envelope
strictly (count, frame numbers against the frames that follow) and raises
:class:`ProtocolError`; the messages inside are decoded and checked one by one as usual.

Pure functions; thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from .._errors import ProtocolError

__all__ = ["MAX_BATCH", "is_batch", "pack", "unpack"]

MAGIC = b"\xc1PB"
#: The most messages one batch carries (the envelope's counts are uint16).
MAX_BATCH = 4096
_COUNT = struct.Struct("<H")


def _head(f: Any) -> memoryview:
    return memoryview(f.buffer if hasattr(f, "buffer") else f)  # a zmq Frame, or bytes / memoryview


def is_batch(frames: Sequence[Any]) -> bool:
    """True if ``frames`` is a batch envelope (by its first bytes)."""
    if not frames:
        return False
    head = _head(frames[0])
    return len(head) >= 5 and bytes(head[:3]) == MAGIC


def pack(messages: Sequence[Sequence[Any]]) -> list[Any]:
    """One transport message carrying ``messages`` (each a list of frames), in order."""
    if not 0 < len(messages) <= MAX_BATCH:
        raise ValueError(f"a batch carries 1..{MAX_BATCH} messages, got {len(messages)}")
    counts = [len(m) for m in messages]
    head = MAGIC + struct.pack(f"<H{len(counts)}H", len(counts), *counts)
    out: list[Any] = [head]
    for m in messages:
        out.extend(m)
    return out


def unpack(frames: Sequence[Any]) -> list[list[Any]]:
    """The messages of a batch envelope, each a list of frames.

    Raises
    ------
    ProtocolError
        The envelope is malformed or its counts do not match the frames that follow.
    """
    head = bytes(_head(frames[0]))
    if len(head) < 5 or head[:3] != MAGIC:
        raise ProtocolError("not a batch envelope")
    (n,) = _COUNT.unpack_from(head, 3)
    if not 0 < n <= MAX_BATCH or len(head) != 5 + 2 * n:
        raise ProtocolError(f"batch envelope of {len(head)} bytes does not describe {n} messages")
    counts = struct.unpack_from(f"<{n}H", head, 5)
    if 0 in counts or sum(counts) != len(frames) - 1:
        raise ProtocolError(f"batch envelope describes {sum(counts)} frames but {len(frames) - 1} follow")
    out = []
    pos = 1
    for c in counts:
        out.append(list(frames[pos:pos + c]))
        pos += c
    return out
