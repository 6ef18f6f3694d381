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
   ``[filters, body]`` (packed and checked by msgspec);
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
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from .._errors import ProtocolError
from ..transport import COPY_THRESHOLD
from ._message import KEY_SPACE, Message, Op, Status

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
#: The tail: filter names, then the body (a map with str keys), typed so that msgspec checks
#: it in C while it decodes.
_Tail = tuple[Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=MAX_FILTERS)],
              dict[str, Any]]
_TAIL_FIELDS = {"`$[0]": "filters", "`$[1]": "body"}  # where msgspec says the error is
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Tail)
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


def _heads(n: int) -> struct.Struct:
    """The fixed header followed by ``n`` descriptors, as one struct."""
    return struct.Struct(FIXED.format + DESCRIPTOR.format[1:] * n)


_HEADS = tuple(_heads(n) for n in range(MAX_ARRAYS + 1))
_DESCRS = tuple(struct.Struct("<" + DESCRIPTOR.format[1:] * n) for n in range(MAX_ARRAYS + 1))
_CODE_OF = {np.dtype(s): i for i, s in enumerate(WIRE_DTYPES)}  # native little-endian dtypes


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
    n = len(arrays)
    if n > MAX_ARRAYS:
        raise ProtocolError(f"a message carries at most {MAX_ARRAYS} arrays, not {n}")
    filters, body = msg.filters, msg.body
    if len(filters) > MAX_FILTERS:
        raise ProtocolError(f"header field 'filters' holds at most {MAX_FILTERS} names")
    tail = pack_tail(filters, body) if filters or body else b""
    rng = msg.key_range
    try:
        values: list[Any] = [PROTOCOL_VERSION, int(msg.op), msg.sender, msg.ts, 1 if msg.response else 0, msg.table,
                             msg.epoch, msg.clock, msg.seq, int(msg.status), 0 if rng is None else 1,
                             0 if rng is None else rng[0], 0 if rng is None else rng[1] - 1, n, len(tail)]
        bad = (msg.sender < -1 or msg.ts < 0 or msg.table < -1 or msg.epoch < 0 or msg.seq < 0
               or (rng is not None and rng[1] <= rng[0]))
    except (TypeError, ValueError, IndexError):
        bad = True
    if bad:
        _check_message(msg)
    frames: list[Any] = [b""]
    inline: list[np.ndarray] = []
    budget = INLINE_BYTES
    for a in arrays:
        code = _CODE_OF.get(a.dtype)
        if code is None or not a.flags.c_contiguous:
            a = _wire_array(a)
            code = _CODES.get(a.dtype.str)
            if code is None:
                raise ProtocolError(f"dtype {a.dtype} cannot be sent; allowed: {sorted(ALLOWED_DTYPES)}")
        shape = a.shape
        ndim = len(shape)
        size = a.nbytes
        if ndim == 1:
            values += (code, 1, size < budget, shape[0], 0)
        elif ndim == 2:
            values += (code, 2, size < budget, shape[0], shape[1])
        elif ndim == 0:
            values += (code, 0, size < budget, 0, 0)
        else:
            raise ProtocolError(f"arrays of {ndim} dimensions cannot be sent (at most {MAX_NDIM})")
        if size < budget:
            budget -= size + 8
            if size:
                inline.append(a)
        else:
            frames.append(a)
    try:
        head = _HEADS[n].pack(*values)
    except struct.error as exc:
        _check_message(msg)
        raise ProtocolError(f"cannot encode message header: {exc}") from None
    if not inline:
        frames[0] = head + tail if tail else head
        return frames
    parts: list[Any] = [head, tail]
    pos = len(head) + len(tail)
    for a in inline:
        pad = -pos & 7
        parts.append(_PADS[pad])
        parts.append(a.data if a.ndim else a.reshape(1).data)
        pos += pad + a.nbytes
    frames[0] = b"".join(parts)
    return frames


def _check_message(msg: Message) -> None:
    """Raise a ProtocolError naming the first header field of ``msg`` that cannot be sent."""
    rng = msg.key_range
    if rng is not None and not (isinstance(rng, tuple) and len(rng) == 2):
        raise ProtocolError(f"header field 'range' must be None or (lo, hi), got {rng!r}")
    _check_int(int(msg.op) if isinstance(msg.op, Op) else msg.op, "op", 0, 256)
    _check_int(int(msg.status) if isinstance(msg.status, Status) else msg.status, "status", 0, 256)
    _check_fields((PROTOCOL_VERSION, msg.op, msg.sender, msg.ts, msg.response, msg.table, msg.epoch, msg.clock,
                   msg.seq, msg.status, 0 if rng is None else 1, 0 if rng is None else rng[0],
                   0 if rng is None else _minus_one(rng[1])))


def _minus_one(value: Any) -> Any:
    return value - 1 if type(value) is int else value


def _check_fields(fields: tuple[Any, ...]) -> None:
    """Raise a ProtocolError naming the first integer field of ``fields`` out of its bounds."""
    for name, i, lo, hi in _BOUNDS:
        _check_int(fields[i], name, lo, hi)
    if fields[10]:
        _check_int(fields[11], "range.lo", 0, KEY_SPACE)
        _check_int(fields[12], "range.last", 0, KEY_SPACE)
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


def pack_tail(filters: tuple[str, ...], body: dict[str, Any]) -> bytes:
    """The tail of frame 0: msgpack ``[filters, body]``.

    Raises
    ------
    ProtocolError
        The body holds something msgpack cannot carry.
    """
    try:
        return _ENCODER.encode((filters, body))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise ProtocolError(f"cannot encode the message body: {exc}") from None


def unpack_tail(tail: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Unpack and check the tail ``[filters, body]`` (a buffer of exactly its bytes).

    Raises
    ------
    ProtocolError
        It is not msgpack, or not a list of at most 16 names of 1..64 characters followed by
        a map with str keys.
    """
    try:
        filters, body = _DECODER.decode(tail)
    except msgspec.ValidationError as exc:
        name = next((v for k, v in _TAIL_FIELDS.items() if k in str(exc)), "tail")
        raise ProtocolError(f"header field {name!r} is malformed: {exc}") from None
    except Exception as exc:  # msgspec.DecodeError and anything else garbage may raise
        raise ProtocolError(f"header field 'tail' is not valid msgpack: {exc}") from None
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
    view = memoryview(raw)
    if not view.readonly:
        view = view.toreadonly()  # the arrays are views of it: read-only
    size = view.nbytes
    if size < _FIXED_SIZE:
        raise ProtocolError(f"frame 0 of {size} bytes is shorter than the {_FIXED_SIZE}-byte fixed header")
    fields = FIXED.unpack_from(view)
    (version, op, sender, ts, flags, table, epoch, clock, seq, status, has_range, lo, last, n_arrays,
     tail_len) = fields
    if version != PROTOCOL_VERSION:
        decode_header(view)  # raises, naming the version
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
    if tail_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header field 'tail' of {tail_len} bytes exceeds {MAX_HEADER_BYTES}")
    pos = _FIXED_SIZE + _DESCR_SIZE * n_arrays
    if pos + tail_len > size:
        raise ProtocolError(f"frame 0 of {size} bytes is shorter than its header ({pos + tail_len} bytes)")
    filters, body = unpack_tail(view[pos:pos + tail_len]) if tail_len else (_EMPTY, {})
    pos += tail_len
    arrays: list[np.ndarray] = []
    if n_arrays:
        descr = _DESCRS[n_arrays].unpack_from(view, _FIXED_SIZE)
        j = 1
        for i in range(n_arrays):
            code, ndim, here, d0, d1 = descr[5 * i:5 * i + 5]
            if code >= len(_DTYPES):
                raise ProtocolError(f"array {i}: dtype code {code} is not allowed on the wire")
            if ndim == 1 and not d1:
                shape: tuple[int, ...] = (d0,)
            elif ndim == 2:
                shape = (d0, d1)
            elif ndim == 0 and not d0 and not d1:
                shape = ()
            elif ndim > MAX_NDIM:
                raise ProtocolError(f"array {i}: {ndim} dimensions (at most {MAX_NDIM})")
            else:
                raise ProtocolError(f"array {i}: unused dimensions must be 0")
            if d0 >= _I63 or d1 >= _I63:
                raise ProtocolError(f"array {i}: a dimension is out of bounds [0, {_I63})")
            dtype = _DTYPES[code]
            nbytes = (d0 if ndim else 1) * (d1 if ndim == 2 else 1) * dtype.itemsize
            if here == 1:
                if nbytes:
                    pos += -pos & 7
                    if pos + nbytes > size:
                        raise ProtocolError(f"array {i}: shape {shape} of {dtype} needs {nbytes} bytes at offset "
                                            f"{pos} but frame 0 has {size}")
                    arrays.append(np.ndarray(shape, dtype, view, pos))
                    pos += nbytes
                else:
                    a = np.empty(shape, dtype)
                    a.flags.writeable = False
                    arrays.append(a)
            elif here == 0:
                if j >= len(frames):
                    _count_frames(frames, descr, n_arrays)
                buf = frames[j]
                if hasattr(buf, "buffer"):
                    buf = buf.buffer
                j += 1
                mv = memoryview(buf)
                if not mv.readonly:
                    mv = mv.toreadonly()
                if nbytes != mv.nbytes:
                    raise ProtocolError(f"array {i}: shape {shape} of {dtype} needs {nbytes} bytes but its frame "
                                        f"has {mv.nbytes}")
                arrays.append(np.ndarray(shape, dtype, mv))
            else:
                raise ProtocolError(f"array {i}: inline flag {here} is not 0 or 1")
        if j != len(frames):
            _count_frames(frames, descr, n_arrays)
    elif len(frames) != 1:
        _count_frames(frames, (), 0)
    if pos != size:
        raise ProtocolError(f"frame 0 has {size} bytes but its header and inline arrays take {pos}")
    return Message(op_v, sender, ts, flags == 1, table, epoch, clock, seq, key_range, status_v, filters, body,
                   arrays)


def _count_frames(frames: Sequence[Any], descr: tuple[Any, ...], n: int) -> None:
    """Raise the ProtocolError for a frame count that does not match the descriptors."""
    inline = sum(1 for i in range(n) if descr[5 * i + 2] == 1)
    raise ProtocolError(f"header describes {n - inline} arrays but {len(frames) - 1} frames follow "
                        f"(besides {inline} inline in frame 0)")
