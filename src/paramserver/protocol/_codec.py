"""Strict encoding and decoding of :class:`Message` to and from frames.

Wire layout (protocol version :data:`PROTOCOL_VERSION`), frame 0 a msgpack array::

    [version, op, sender, ts, flags, table, epoch, clock, seq, range, deps, status,
     filters, arrays, body]

``flags`` bit 0 marks a response; ``range`` is nil or ``[lo, last]`` (inclusive, so that the
whole 64-bit key space fits); ``arrays`` is a list of ``[dtype, [dims...]]``, one per
following frame. Frames 1..n are raw little-endian array bytes.

:func:`decode` checks everything (version, types, integer bounds, dtypes against a
whitelist, frame lengths against shapes, counts) and raises :class:`ProtocolError` on the
first problem; it never executes code from the wire (no pickle) and never crashes on
garbage. Decoded arrays are read-only zero-copy views of the frames.

Both functions are pure and thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from .._errors import ProtocolError
from ._message import KEY_SPACE, Message, Op, Status

__all__ = ["ALLOWED_DTYPES", "MAX_ARRAYS", "PROTOCOL_VERSION", "decode", "decode_header", "encode"]

PROTOCOL_VERSION = 1

#: dtypes that may travel, by their little-endian ``dtype.str``.
ALLOWED_DTYPES: frozenset[str] = frozenset(
    ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"]
)
MAX_ARRAYS = 64
MAX_NDIM = 2
MAX_HEADER_BYTES = 16 << 20
MAX_DEPS = 4096
MAX_FILTERS = 16
_I63 = 1 << 63
_I31 = 1 << 31
_OPS = {int(o): o for o in Op}
_STATUSES = {int(s): s for s in Status}
_DTYPES = {s: np.dtype(s) for s in ALLOWED_DTYPES}
_HEADER_LEN = 15


def _wire_array(a: np.ndarray) -> np.ndarray:
    """The array as it travels: C-contiguous and little-endian (a no-op when it already is)."""
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def encode(msg: Message) -> list[Any]:
    """Frames for ``msg``: a header ``bytes`` then the arrays themselves (no copy).

    Raises
    ------
    ProtocolError
        An array has a dtype that may not travel or more than two dimensions.
    """
    arrays = [_wire_array(a) for a in msg.arrays]
    descr = []
    for a in arrays:
        if a.dtype.str not in ALLOWED_DTYPES:
            raise ProtocolError(f"dtype {a.dtype} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
        if a.ndim > MAX_NDIM:
            raise ProtocolError(f"arrays of {a.ndim} dimensions cannot be sent (at most {MAX_NDIM})")
        descr.append([a.dtype.str, list(a.shape)])
    rng = None
    if msg.key_range is not None:
        rng = [msg.key_range[0], msg.key_range[1] - 1]
    header = [
        PROTOCOL_VERSION,
        int(msg.op),
        msg.sender,
        msg.ts,
        1 if msg.response else 0,
        msg.table,
        msg.epoch,
        msg.clock,
        msg.seq,
        rng,
        list(msg.deps),
        int(msg.status),
        list(msg.filters),
        descr,
        msg.body,
    ]
    try:
        head = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message header: {exc}") from exc
    return [head, *arrays]


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ProtocolError(f"header field {name!r} must be an integer, got {type(value).__name__}")
    if not lo <= value < hi:
        raise ProtocolError(f"header field {name!r}={value} is out of bounds [{lo}, {hi})")
    return value


def decode_header(raw: bytes | memoryview) -> tuple[list[Any], int]:
    """Unpack and check the header frame; return the raw field list and the array count."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if type(header) is not list or len(header) != _HEADER_LEN:
        raise ProtocolError(f"header must be a msgpack array of {_HEADER_LEN} fields")
    version = header[0]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this node speaks "
            f"{PROTOCOL_VERSION}); run the same paramserver version on every node"
        )
    descr = header[13]
    if type(descr) is not list or len(descr) > MAX_ARRAYS:
        raise ProtocolError(f"header field 'arrays' must be a list of at most {MAX_ARRAYS}")
    return header, len(descr)


def decode(frames: Sequence[Any]) -> Message:
    """Decode frames (bytes, memoryviews or zmq Frames) into a :class:`Message`.

    Raises
    ------
    ProtocolError
        Anything is malformed: the message says which field and why.
    """
    if len(frames) < 1:
        raise ProtocolError("empty message")
    bufs = [f.buffer if hasattr(f, "buffer") else f for f in frames]
    header, n_arrays = decode_header(bufs[0])
    if len(bufs) - 1 != n_arrays:
        raise ProtocolError(f"header describes {n_arrays} arrays but {len(bufs) - 1} frames follow")
    (_, op, sender, ts, flags, table, epoch, clock, seq, rng, deps, status, filters, descr, body) = header
    op_v = _OPS.get(op) if type(op) is int else None
    if op_v is None:
        raise ProtocolError(f"unknown op {op!r}")
    status_v = _STATUSES.get(status) if type(status) is int else None
    if status_v is None:
        raise ProtocolError(f"unknown status {status!r}")
    _int(sender, "sender", -1, _I31)
    _int(ts, "ts", 0, _I63)
    _int(flags, "flags", 0, 2)
    _int(table, "table", -1, _I31)
    _int(epoch, "epoch", 0, _I63)
    _int(clock, "clock", -_I63, _I63)
    _int(seq, "seq", 0, _I63)
    key_range = None
    if rng is not None:
        if type(rng) is not list or len(rng) != 2:
            raise ProtocolError("header field 'range' must be nil or [lo, last]")
        lo = _int(rng[0], "range.lo", 0, KEY_SPACE)
        last = _int(rng[1], "range.last", 0, KEY_SPACE)
        if last < lo:
            raise ProtocolError(f"header field 'range' is empty: lo={lo} > last={last}")
        key_range = (lo, last + 1)
    if type(deps) is not list or len(deps) > MAX_DEPS:
        raise ProtocolError(f"header field 'deps' must be a list of at most {MAX_DEPS} timestamps")
    for d in deps:
        _int(d, "deps[]", 0, _I63)
    if type(filters) is not list or len(filters) > MAX_FILTERS:
        raise ProtocolError(f"header field 'filters' must be a list of at most {MAX_FILTERS}")
    for name in filters:
        if type(name) is not str or not 0 < len(name) <= 64:
            raise ProtocolError("header field 'filters' must hold names of 1..64 characters")
    if type(body) is not dict:
        raise ProtocolError("header field 'body' must be a map")
    arrays: list[np.ndarray] = []
    for i, (d, buf) in enumerate(zip(descr, bufs[1:], strict=True)):
        if type(d) is not list or len(d) != 2 or type(d[1]) is not list:
            raise ProtocolError(f"array descriptor {i} must be [dtype, [dims...]]")
        dtype = _DTYPES.get(d[0]) if type(d[0]) is str else None
        if dtype is None:
            raise ProtocolError(f"array {i}: dtype {d[0]!r} is not allowed on the wire")
        shape = d[1]
        if len(shape) > MAX_NDIM:
            raise ProtocolError(f"array {i}: {len(shape)} dimensions (at most {MAX_NDIM})")
        count = 1
        for dim in shape:
            count *= _int(dim, f"arrays[{i}].shape", 0, _I63)
        nbytes = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
        if count * dtype.itemsize != nbytes:
            raise ProtocolError(
                f"array {i}: shape {tuple(shape)} of {dtype} needs {count * dtype.itemsize} "
                f"bytes but its frame has {nbytes}"
            )
        arrays.append(np.frombuffer(buf, dtype=dtype).reshape(shape))
    return Message(
        op=op_v,
        sender=sender,
        ts=ts,
        response=bool(flags & 1),
        table=table,
        epoch=epoch,
        clock=clock,
        seq=seq,
        key_range=key_range,
        deps=tuple(deps),
        status=status_v,
        filters=tuple(filters),
        body=body,
        arrays=arrays,
    )
