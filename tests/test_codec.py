"""The protocol codec: exact round trips, and every malformed input is a ProtocolError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from paramserver import ProtocolError
from paramserver.protocol import ALLOWED_DTYPES, PROTOCOL_VERSION, Message, Op, Status, decode, encode
from paramserver.protocol._codec import DESCRIPTOR, FIXED, INLINE_BYTES, WIRE_DTYPES

dtypes = st.sampled_from(sorted(ALLOWED_DTYPES)).map(np.dtype)
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6)))
scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=10), st.booleans(), st.floats(allow_nan=False))
bodies = st.dictionaries(st.text(max_size=8), st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4)
big = st.sampled_from(["<u8", "<f8", "|u1"]).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), st.integers(INLINE_BYTES // 8 - 2, INLINE_BYTES // 8 + 2)))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    lo = draw(st.integers(0, 2**64 - 1))
    hi = draw(st.integers(lo + 1, 2**64))
    return Message(
        op=draw(st.sampled_from(list(Op))),
        sender=draw(st.integers(-1, 2**31 - 1)),
        ts=draw(st.integers(0, 2**63 - 1)),
        response=draw(st.booleans()),
        table=draw(st.integers(-1, 1000)),
        epoch=draw(st.integers(0, 2**63 - 1)),
        clock=draw(st.integers(-(2**63), 2**63 - 1)),
        seq=draw(st.integers(0, 2**63 - 1)),
        key_range=draw(st.none() | st.just((lo, hi)) | st.just((lo, 2**64))),
        status=draw(st.sampled_from(list(Status))),
        filters=tuple(draw(st.lists(st.text(min_size=1, max_size=8), max_size=3))),
        body=draw(bodies),
        arrays=draw(st.lists(arrays | big, max_size=4)),
    )


def _frames(msg: Message) -> list[bytes]:
    return [memoryview(f).tobytes() for f in encode(msg)]


@given(messages())
@settings(max_examples=300, deadline=None)
def test_round_trip_is_exact(msg: Message) -> None:
    out = decode(_frames(msg))
    for name in ("op", "sender", "ts", "response", "table", "epoch", "clock", "seq", "key_range", "status",
                 "filters", "body"):
        assert getattr(out, name) == getattr(msg, name), name
    assert len(out.arrays) == len(msg.arrays)
    for a, b in zip(out.arrays, msg.arrays, strict=True):
        assert a.dtype == b.dtype.newbyteorder("<") and a.shape == b.shape
        assert not a.flags.writeable
        np.testing.assert_array_equal(a, b)


def test_keys_above_2_63_and_a_range_ending_at_2_64_round_trip() -> None:
    keys = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    out = decode(_frames(Message(Op.PULL_RANGE, key_range=(2**63, 2**64), arrays=[keys])))
    assert out.key_range == (2**63, 2**64) and out.arrays[0].tolist() == keys.tolist()


def test_small_messages_are_one_frame_and_large_arrays_their_own() -> None:
    keys = np.arange(3, dtype=np.uint64)
    vals = np.ones((3, 2), np.float32)
    assert len(encode(Message(Op.PUSH, arrays=[keys, vals]))) == 1
    assert len(encode(Message(Op.PING))) == 1
    large = np.ones(INLINE_BYTES // 8, np.float64)  # exactly the threshold: its own frame
    frames = encode(Message(Op.PUSH, arrays=[keys, large]))
    assert len(frames) == 2 and frames[1] is large  # sent as is
    # inline while the running total stays below the threshold
    halves = [np.ones(INLINE_BYTES // 16 - 8, np.float64) for _ in range(3)]
    assert len(encode(Message(Op.PUSH, arrays=halves))) == 2


def test_arrays_are_zero_copy_read_only_views() -> None:
    keys = np.arange(10, dtype=np.uint64)
    large = np.arange(INLINE_BYTES, dtype=np.uint8)
    frames = encode(Message(Op.PUSH, body={"rid": 1}, arrays=[keys, large]))
    head, buf = bytearray(memoryview(frames[0])), bytearray(large.tobytes())
    out = decode([memoryview(head), memoryview(buf)])
    assert not out.arrays[0].flags.writeable and not out.arrays[1].flags.writeable
    base = np.frombuffer(head, np.uint8).ctypes.data
    assert (out.arrays[0].ctypes.data - base) % 8 == 0  # aligned to 8 bytes in frame 0
    offset = out.arrays[0].ctypes.data - base
    head[offset] = 7
    buf[0] = 9
    assert out.arrays[0][0] == 7 and out.arrays[1][0] == 9  # views of the received buffers


def test_inline_arrays_start_at_multiples_of_8() -> None:
    arrs = [np.ones(3, np.uint8), np.ones(5, np.int16), np.ones((2, 3), np.float64), np.zeros(0, np.float32),
            np.ones(1, np.uint64)]
    head = bytearray(_frames(Message(Op.PUSH, body={"x": "abc"}, arrays=arrs))[0])
    out = decode([memoryview(head)])
    base = np.frombuffer(head, np.uint8).ctypes.data
    for a, b in zip(out.arrays, arrs, strict=True):
        np.testing.assert_array_equal(a, b)
        if a.size:
            assert (a.ctypes.data - base) % 8 == 0


def test_non_contiguous_and_big_endian_are_normalised() -> None:
    a = np.arange(20, dtype=">f8").reshape(4, 5)[:, ::2]
    out = decode(_frames(Message(Op.PUSH, arrays=[a])))
    assert out.arrays[0].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out.arrays[0], a)
    b = np.arange(INLINE_BYTES, dtype=">u8")[::2]  # large: its own frame, normalised too
    out = decode(_frames(Message(Op.PUSH, arrays=[b])))
    assert out.arrays[0].dtype == np.dtype("<u8")
    np.testing.assert_array_equal(out.arrays[0], b)


@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
@settings(max_examples=500)
def test_garbage_is_a_protocol_error(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass


@given(st.binary(min_size=FIXED.size - 2, max_size=200), st.lists(st.binary(max_size=64), max_size=2))
@settings(max_examples=500)
def test_garbage_after_a_valid_version_is_a_protocol_error(head: bytes, rest: list[bytes]) -> None:
    try:
        decode([bytes([PROTOCOL_VERSION]) + head, *rest])
    except ProtocolError:
        pass


_F = dict(v=PROTOCOL_VERSION, op=int(Op.PUSH), sender=1, ts=1, flags=0, table=0, epoch=0, clock=0, seq=0,
          status=0, has_range=0, lo=0, last=0, n=1, tail_len=0)
_KEYS = np.zeros(2, np.uint64).tobytes()


def _head(descr: list[tuple[int, ...]] | None = None, tail: bytes = b"", data: bytes = _KEYS, **over: int) -> bytes:
    """Frame 0 by hand: fixed fields (overridable), descriptors (default one inline <u8 [2]),
    the tail, then the inline data 8-aligned."""
    descr = [(WIRE_DTYPES.index("<u8"), 1, 1, 2, 0)] if descr is None else descr
    fields = {**_F, "n": len(descr), "tail_len": len(tail), **over}
    out = FIXED.pack(*fields.values()) + b"".join(DESCRIPTOR.pack(*d) for d in descr) + tail
    if data:
        out += bytes(-len(out) & 7) + data
    return out


def test_a_hand_built_frame_decodes() -> None:
    out = decode([_head(tail=msgpack.packb([["keys"], {"a": 1}]))])
    assert out.op == Op.PUSH and out.filters == ("keys",) and out.body == {"a": 1}
    assert out.arrays[0].tolist() == [0, 0]


_U8 = WIRE_DTYPES.index("<u8")


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([_head(v=99)], "protocol version 99"),
        ([_head(op=250)], "unknown op"),
        ([_head(status=9)], "unknown status"),
        ([_head(sender=-2)], "'sender'=-2 is out of bounds"),
        ([_head(ts=-1)], "'ts'=-1 is out of bounds"),
        ([_head(table=-5)], "'table'=-5 is out of bounds"),
        ([_head(epoch=-1)], "'epoch'=-1 is out of bounds"),
        ([_head(seq=-3)], "'seq'=-3 is out of bounds"),
        ([_head(flags=2)], "'flags'=2 is out of bounds"),
        ([_head(has_range=1, lo=5, last=4)], "'range' is empty"),
        ([_head(has_range=2)], "'range' is malformed"),
        ([_head(has_range=0, lo=3)], "'range' is malformed"),
        ([_head(n=65, descr=[])], "'arrays' counts 65"),
        ([_head(tail=msgpack.packb([[], []]))], "'body' is malformed: Expected `object`, got `array`"),
        ([_head(tail=msgpack.packb([[], {}])[:-1])], "'tail' is not valid msgpack"),
        ([_head(tail=msgpack.packb({"op": 1}))], "'tail' is malformed: Expected `array`"),
        ([_head(tail=msgpack.packb([[], {}, 1]))], "'tail' is malformed: Expected `array` of length 2"),
        ([_head(tail=msgpack.packb(["x", {}]))], "'filters' is malformed: Expected `array`, got `str`"),
        ([_head(tail=msgpack.packb([[""], {}]))], "'filters' is malformed: Expected `str` of length >= 1"),
        ([_head(tail=msgpack.packb([["a"] * 17, {}]))], "'filters' is malformed: Expected `array` of length <= 16"),
        ([_head(tail=msgpack.packb([[], {1: 2}]))], "'body' is malformed: Expected `str`, got `int`"),
        ([_head(tail=msgpack.packb([[], {}]) + b"x")], "'tail' is not valid msgpack"),
        ([_head(tail_len=2**24 + 1)], "'tail' of 16777217 bytes exceeds"),
        ([_head(descr=[(99, 1, 1, 2, 0)])], "dtype code 99 is not allowed on the wire"),
        ([_head(descr=[(_U8, 3, 1, 2, 0)])], "3 dimensions"),
        ([_head(descr=[(_U8, 1, 2, 2, 0)])], "inline flag 2"),
        ([_head(descr=[(_U8, 1, 1, 2, 1)])], "unused dimensions must be 0"),
        ([_head(descr=[(_U8, 2, 1, 2**63, 1)])], "dimension is out of bounds"),
        ([_head(descr=[(_U8, 1, 1, 3, 0)])], "needs 24 bytes at offset"),
        ([_head(descr=[(_U8, 1, 1, 1, 0)])], "frame 0 has 104 bytes but its header and inline arrays take 96"),
        ([_head(), b"x" * 16], "describes 0 arrays but 1 frames follow (besides 1 inline"),
        ([_head(descr=[(_U8, 1, 0, 2, 0)], data=b"")], "describes 1 arrays but 0 frames follow (besides 0 inline"),
        ([_head(descr=[(_U8, 1, 0, 3, 0)], data=b""), _KEYS], "needs 24 bytes but its frame has 16"),
        ([_head(descr=[], data=b"", tail_len=10)], "shorter than its header"),
    ],
)
def test_malformed_frames_are_rejected_with_reasons(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace("[", r"\[")):
        decode(frames)


def test_truncated_and_empty_messages() -> None:
    head = _head()
    with pytest.raises(ProtocolError, match="shorter than the 66-byte fixed header"):
        decode([head[:40]])
    with pytest.raises(ProtocolError, match="but frame 0 has 101"):
        decode([head[:-3]])
    with pytest.raises(ProtocolError, match="empty message"):
        decode([])


def test_unsendable_messages_are_refused_at_encode() -> None:
    with pytest.raises(ProtocolError, match="cannot be sent"):
        encode(Message(Op.PUSH, arrays=[np.array(["a"], dtype=object)]))
    with pytest.raises(ProtocolError, match="3 dimensions"):
        encode(Message(Op.PUSH, arrays=[np.zeros((1, 1, 1))]))
    with pytest.raises(ProtocolError, match="'ts'=-1 is out of bounds"):
        encode(Message(Op.PUSH, ts=-1))
    with pytest.raises(ProtocolError, match="'sender'=2147483648 is out of bounds"):
        encode(Message(Op.PUSH, sender=2**31))
    with pytest.raises(ProtocolError, match=r"'clock'=.* is out of bounds"):
        encode(Message(Op.PUSH, clock=2**63))
    with pytest.raises(ProtocolError, match="'range' is empty"):
        encode(Message(Op.PUSH, key_range=(5, 5)))
    with pytest.raises(ProtocolError, match="cannot encode the message body"):
        encode(Message(Op.PUSH, body={"x": object()}))
    with pytest.raises(ProtocolError, match="'sender' must be an integer, got NoneType"):
        encode(Message(Op.PUSH, sender=None))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="'epoch' must be an integer, got float"):
        encode(Message(Op.PUSH, epoch=1.5))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"'range\.last'=18446744073709551616 is out of bounds"):
        encode(Message(Op.PUSH, key_range=(0, 2**64 + 1)))
    with pytest.raises(ProtocolError, match="at most 64 arrays"):
        encode(Message(Op.PUSH, arrays=[np.zeros(1)] * 65))
