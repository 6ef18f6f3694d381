"""Strict encoding and decoding of :class:`Message` to and from frames.

Wire layout (protocol version :data:`PROTOCOL_VERSION`; docs/protocol.md has the table).
Frame 0 is, in this order:

1. the fixed header, :data:`FIXED` (``struct`` format ``<BBiqBiqqqBBQQBI``, 66 bytes):
   version, op, sender, ts, flags, table, epoch, clock, seq, status, has_range, range lo,
   range last, number of arrays, length of the tail;
2. one array descriptor per array, :data:`DESCRIPTOR` (``<BBBQQ``, 19 bytes): dtype code
   (an index into :data:`WIRE_DTYPES`), number of dimensions (0..2), inline flag, two
   dimensions (unused ones 0);
3. the tail, present only when the message has filters or a body: the msgpack array
   ``[filters, body]``;
4. the bytes of the inline arrays, each starting at the next multiple of 8 bytes from the
   start of the frame (zero-sized arrays take no room).

Arrays are inline while their running total stays below :data:`INLINE_BYTES` (the
transport's copy threshold): a small message is one frame. Every other array is a frame of
its own, in order after frame 0, sent without a copy.

:func:`decode` checks everything (version, integer bounds, dtypes against a whitelist,
array bytes against shapes, frame counts and the exact length of frame 0) and raises
:class:`ProtocolError` naming the field on the first problem; it never executes code from
the wire (no pickle) and never crashes on garbage. Decoded arrays are read-only zero-copy
views of the frames.

Both functions are pure and thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from .._errors import ProtocolError
from ..transport import COPY_THRESHOLD
from ._message import Message, Op, Status

__all__ = ["ALLOWED_DTYPES", "DESCRIPTOR", "FIXED", "INLINE_BYTES", "MAX_ARRAYS", "PROTOCOL_VERSION",
           "WIRE_DTYPES", "decode", "decode_header", "encode"]

PROTOCOL_VERSION = 2

#: dtypes that may travel, by their little-endian ``dtype.str``; the wire names them by index.
WIRE_DTYPES: tuple[str, ...] = ("|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8")
ALLOWED_DTYPES: frozenset[str] = frozenset(WIRE_DTYPES)
#: version, op, sender, ts, flags, table, epoch, clock, seq, status, has_range, lo, last,
#: n_arrays, tail_len. The first five keep the positions of protocol version 1.
FIXED = struct.Struct("<BBiqBiqqqBBQQBI")
#: dtype code, ndim, inline, dim0, dim1.
DESCRIPTOR = struct.Struct("<BBBQQ")
#: Arrays are packed into frame 0 while their running total stays below this.
INLINE_BYTES = COPY_THRESHOLD
MAX_ARRAYS = 64
MAX_NDIM = 2
MAX_HEADER_BYTES = 16 << 20
MAX_FILTERS = 16
_I63 = 1 << 63
_I31 = 1 << 31
_OPS = {int(o): o for o in Op}
_STATUSES = {int(s): s for s in Status}
_CODES = {s: i for i, s in enumerate(WIRE_DTYPES)}
_DTYPES = tuple(np.dtype(s) for s in WIRE_DTYPES)
_FIXED_SIZE = FIXED.size
_DESCR_SIZE = DESCRIPTOR.size
_PACK = msgpack.Packer(use_bin_type=True, autoreset=True)
_PADS = tuple(bytes(n) for n in range(8))
_EMPTY: tuple[str, ...] = ()

#: (name, lo, hi) of the integer fields of the fixed header, by position, for messages.
_BOUNDS = (("sender", 2, -1, _I31), ("ts", 3, 0, _I63), ("table", 5, -1, _I31), ("epoch", 6, 0, _I63),
           ("clock", 7, -_I63, _I63), ("seq", 8, 0, _I63))


def _wire_array(a: np.ndarray) -> np.ndarray:
    """The array as it travels: C-contiguous and little-endian (a no-op when it already is)."""
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        a = a.astype(a.dtype.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if type(value) is not int:
        raise ProtocolError(f"header field {name!r} must be an integer, got {type(value).__name__}")
    if not lo <= value < hi:
        raise ProtocolError(f"header field {name!r}={value} is out of bounds [{lo}, {hi})")


def encode(msg: Message) -> list[Any]:
    """Frames for ``msg``: frame 0 (header and inline arrays), then the large arrays themselves
    (no copy).

    Raises
    ------
    ProtocolError
        A header field is out of its bounds, an array has a dtype that may not travel or more
        than two dimensions, or the body cannot be packed.
    """
    arrays = msg.arrays
    if len(arrays) > MAX_ARRAYS:
        raise ProtocolError(f"a message carries at most {MAX_ARRAYS} arrays, not {len(arrays)}")
    if len(msg.filters) > MAX_FILTERS:
        raise ProtocolError(f"header field 'filters' holds at most {MAX_FILTERS} names")
    descr: list[bytes] = []
    inline: list[np.ndarray] = []
    frames: list[Any] = [b""]
    budget = INLINE_BYTES
    for a in arrays:
        a = _wire_array(a)
        code = _CODES.get(a.dtype.str)
        if code is None:
            raise ProtocolError(f"dtype {a.dtype} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
        shape = a.shape
        ndim = len(shape)
        if ndim > MAX_NDIM:
            raise ProtocolError(f"arrays of {ndim} dimensions cannot be sent (at most {MAX_NDIM})")
        size = a.nbytes
        here = size < budget
        if here:
            budget -= size + 8
            if size:
                inline.append(a)
        else:
            frames.append(a)
        descr.append(DESCRIPTOR.pack(code, ndim, here, shape[0] if ndim else 0, shape[1] if ndim == 2 else 0))
    tail = b""
    if msg.filters or msg.body:
        try:
            tail = _PACK.pack([msg.filters, msg.body])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"cannot encode the message body: {exc}") from exc
    rng = msg.key_range
    fields = (PROTOCOL_VERSION, int(msg.op), msg.sender, msg.ts, 1 if msg.response else 0, msg.table, msg.epoch,
              msg.clock, msg.seq, int(msg.status), 0 if rng is None else 1, 0 if rng is None else rng[0],
              0 if rng is None else rng[1] - 1, len(arrays), len(tail))
    if (msg.sender < -1 or msg.ts < 0 or msg.table < -1 or msg.epoch < 0 or msg.seq < 0
            or (rng is not None and rng[1] <= rng[0])):
        _check_fields(fields)
    try:
        head = FIXED.pack(*fields)
    except struct.error as exc:
        _check_fields(fields)
        raise ProtocolError(f"cannot encode message header: {exc}") from None
    if not inline:
        frames[0] = b"".join((head, *descr, tail))
        return frames
    parts: list[Any] = [head, *descr, tail]
    pos = _FIXED_SIZE + _DESCR_SIZE * len(descr) + len(tail)
    for a in inline:
        pad = -pos & 7
        parts.append(_PADS[pad])
        parts.append(a.data if a.ndim else a.reshape(1).data)
        pos += pad + a.nbytes
    frames[0] = b"".join(parts)
    return frames


def _check_fields(fields: tuple[Any, ...]) -> None:
    """Raise a ProtocolError naming the first integer field of ``fields`` out of its bounds."""
    for name, i, lo, hi in _BOUNDS:
        _check_int(fields[i], name, lo, hi)
    if fields[10]:
        _check_int(fields[11], "range.lo", 0, 1 << 64)
        _check_int(fields[12], "range.last", 0, 1 << 64)
        if fields[12] < fields[11]:
            raise ProtocolError(f"header field 'range' is empty: lo={fields[11]} > last={fields[12]}")


def decode_header(raw: Any) -> tuple[tuple[Any, ...], int]:
    """The fixed header of frame 0 as a tuple (see :data:`FIXED`; position 1 is the op, 2 the
    sender, 3 the ts, 4 the flags) and the number of arrays; only its size and version are
    checked.

    Raises
    ------
    ProtocolError
        The frame is shorter than the fixed header or of another protocol version.
    """
    size = memoryview(raw).nbytes
    if size < _FIXED_SIZE:
        raise ProtocolError(f"frame 0 of {size} bytes is shorter than the {_FIXED_SIZE}-byte fixed header")
    fields = FIXED.unpack_from(raw)
    if fields[0] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {fields[0]!r} is not supported (this node speaks "
            f"{PROTOCOL_VERSION}); run the same paramserver version on every node"
        )
    return fields, fields[13]


def _tail(raw: Any, start: int, length: int) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Unpack and check ``[filters, body]``."""
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header field 'tail' of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        tail = msgpack.unpackb(memoryview(raw)[start:start + length], raw=False, use_list=True,
                               strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header field 'tail' is not valid msgpack: {exc}") from None
    if type(tail) is not list or len(tail) != 2:
        raise ProtocolError("header field 'tail' must be the msgpack array [filters, body]")
    filters, body = tail
    if type(filters) is not list or len(filters) > MAX_FILTERS:
        raise ProtocolError(f"header field 'filters' must be a list of at most {MAX_FILTERS}")
    for name in filters:
        if type(name) is not str or not 0 < len(name) <= 64:
            raise ProtocolError("header field 'filters' must hold names of 1..64 characters")
    if type(body) is not dict:
        raise ProtocolError("header field 'body' must be a map")
    return tuple(filters), body


def decode(frames: Sequence[Any]) -> Message:
    """Decode frames (bytes, memoryviews or zmq Frames) into a :class:`Message`.

    Raises
    ------
    ProtocolError
        Anything is malformed: the message says which field and why.
    """
    if len(frames) < 1:
        raise ProtocolError("empty message")
    raw = frames[0]
    if hasattr(raw, "buffer"):
        raw = raw.buffer
    fields, n_arrays = decode_header(raw)
    (_, op, sender, ts, flags, table, epoch, clock, seq, status, has_range, lo, last, _, tail_len) = fields
    op_v = _OPS.get(op)
    if op_v is None:
        raise ProtocolError(f"unknown op {op!r}")
    status_v = _STATUSES.get(status)
    if status_v is None:
        raise ProtocolError(f"unknown status {status!r}")
    if sender < -1 or ts < 0 or table < -1 or epoch < 0 or seq < 0:
        _check_fields(fields)
    if flags > 1:
        raise ProtocolError(f"header field 'flags'={flags} is out of bounds [0, 2)")
    key_range = None
    if has_range == 1:
        if last < lo:
            raise ProtocolError(f"header field 'range' is empty: lo={lo} > last={last}")
        key_range = (lo, last + 1)
    elif has_range != 0 or lo or last:
        raise ProtocolError(f"header field 'range' is malformed: has_range={has_range}, lo={lo}, last={last}")
    if n_arrays > MAX_ARRAYS:
        raise ProtocolError(f"header field 'arrays' counts {n_arrays} arrays (at most {MAX_ARRAYS})")
    size = memoryview(raw).nbytes
    pos = _FIXED_SIZE + _DESCR_SIZE * n_arrays
    if pos + tail_len > size:
        raise ProtocolError(f"frame 0 of {size} bytes is shorter than its header ({pos + tail_len} bytes)")
    arrays: list[np.ndarray] = []
    specs = []
    extra = 1
    for i in range(n_arrays):
        code, ndim, here, d0, d1 = DESCRIPTOR.unpack_from(raw, _FIXED_SIZE + _DESCR_SIZE * i)
        if code >= len(_DTYPES):
            raise ProtocolError(f"array {i}: dtype code {code} is not allowed on the wire")
        if ndim > MAX_NDIM:
            raise ProtocolError(f"array {i}: {ndim} dimensions (at most {MAX_NDIM})")
        if here > 1:
            raise ProtocolError(f"array {i}: inline flag {here} is not 0 or 1")
        if (ndim < 2 and d1) or (ndim < 1 and d0):
            raise ProtocolError(f"array {i}: unused dimensions must be 0")
        if d0 >= _I63 or d1 >= _I63:
            raise ProtocolError(f"array {i}: a dimension is out of bounds [0, {_I63})")
        specs.append((_DTYPES[code], (d0, d1)[:ndim], here))
        if not here:
            extra += 1
    if extra != len(frames):
        raise ProtocolError(f"header describes {extra - 1} arrays but {len(frames) - 1} frames follow "
                            f"(besides {n_arrays - extra + 1} inline in frame 0)")
    filters, body = _tail(raw, pos, tail_len) if tail_len else (_EMPTY, {})
    pos += tail_len
    j = 1
    for i, (dtype, shape, here) in enumerate(specs):
        count = 1
        for dim in shape:
            count *= dim
        nbytes = count * dtype.itemsize
        if here:
            if nbytes:
                pos += -pos & 7
                if pos + nbytes > size:
                    raise ProtocolError(f"array {i}: shape {shape} of {dtype} needs {nbytes} bytes at offset "
                                        f"{pos} but frame 0 has {size}")
                a = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
                pos += nbytes
            else:
                a = np.empty(0, dtype=dtype)
        else:
            buf = frames[j]
            if hasattr(buf, "buffer"):
                buf = buf.buffer
            j += 1
            got = memoryview(buf).nbytes
            if nbytes != got:
                raise ProtocolError(f"array {i}: shape {shape} of {dtype} needs {nbytes} bytes but its frame "
                                    f"has {got}")
            a = np.frombuffer(buf, dtype=dtype)
        if len(shape) != 1:
            a = a.reshape(shape)
        if a.flags.writeable:
            a.flags.writeable = False
        arrays.append(a)
    if pos != size:
        raise ProtocolError(f"frame 0 has {size} bytes but its header and inline arrays take {pos}")
    return Message(op_v, sender, ts, flags == 1, table, epoch, clock, seq, key_range, status_v, filters, body,
                   arrays)
