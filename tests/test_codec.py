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

dtypes = st.sampled_from(sorted(ALLOWED_DTYPES)).map(np.dtype)
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6)))
scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=10), st.booleans(), st.floats(allow_nan=False))
bodies = st.dictionaries(st.text(max_size=8), st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4)


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
        key_range=draw(st.none() | st.just((lo, hi))),
        deps=tuple(draw(st.lists(st.integers(0, 2**63 - 1), max_size=4))),
        status=draw(st.sampled_from(list(Status))),
        filters=tuple(draw(st.lists(st.text(min_size=1, max_size=8), max_size=3))),
        body=draw(bodies),
        arrays=draw(st.lists(arrays, max_size=3)),
    )


def _frames(msg: Message) -> list[bytes]:
    return [memoryview(f).tobytes() for f in encode(msg)]


@given(messages())
@settings(max_examples=300)
def test_round_trip_is_exact(msg: Message) -> None:
    out = decode(_frames(msg))
    for name in ("op", "sender", "ts", "response", "table", "epoch", "clock", "seq", "key_range", "deps", "status",
                 "filters", "body"):
        assert getattr(out, name) == getattr(msg, name), name
    assert len(out.arrays) == len(msg.arrays)
    for a, b in zip(out.arrays, msg.arrays, strict=True):
        assert a.dtype == b.dtype.newbyteorder("<") and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_arrays_are_zero_copy_views() -> None:
    keys = np.arange(10, dtype=np.uint64)
    frames = encode(Message(Op.PULL, arrays=[keys]))
    assert frames[1] is keys  # sent as is
    buf = bytearray(keys.tobytes())
    out = decode([frames[0], memoryview(buf)])
    buf[0] = 7
    assert out.arrays[0][0] == 7  # a view of the received buffer


def test_non_contiguous_and_big_endian_are_normalised() -> None:
    a = np.arange(20, dtype=">f8").reshape(4, 5)[:, ::2]
    out = decode(_frames(Message(Op.PUSH, arrays=[a])))
    assert out.arrays[0].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out.arrays[0], a)


@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
@settings(max_examples=500)
def test_garbage_is_a_protocol_error(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass


def _header(**over: object) -> list[object]:
    fields = dict(v=PROTOCOL_VERSION, op=int(Op.PUSH), sender=1, ts=1, flags=0, table=0, epoch=0, clock=0,
                  seq=0, range=None, deps=[], status=0, filters=[], arrays=[["<u8", [2]]], body={})
    fields.update(over)
    return list(fields.values())


@pytest.mark.parametrize(
    ("override", "frames_after", "message"),
    [
        ({"v": 99}, [np.zeros(2, np.uint64).tobytes()], "protocol version 99"),
        ({"op": 250}, [np.zeros(2, np.uint64).tobytes()], "unknown op"),
        ({"status": 9}, [np.zeros(2, np.uint64).tobytes()], "unknown status"),
        ({"sender": "x"}, [np.zeros(2, np.uint64).tobytes()], "'sender' must be an integer"),
        ({"ts": -1}, [np.zeros(2, np.uint64).tobytes()], "'ts'=-1 is out of bounds"),
        ({"flags": True}, [np.zeros(2, np.uint64).tobytes()], "'flags' must be an integer"),
        ({"range": [5, 4]}, [np.zeros(2, np.uint64).tobytes()], "'range' is empty"),
        ({"range": [-1, 3]}, [np.zeros(2, np.uint64).tobytes()], "out of bounds"),
        ({"deps": "x"}, [np.zeros(2, np.uint64).tobytes()], "'deps' must be a list"),
        ({"body": []}, [np.zeros(2, np.uint64).tobytes()], "'body' must be a map"),
        ({"arrays": [["O", [2]]]}, [b"x" * 16], "not allowed on the wire"),
        ({"arrays": [["<u8", [3]]]}, [np.zeros(2, np.uint64).tobytes()], "needs 24 bytes but its frame has 16"),
        ({"arrays": [["<u8", [2, 1, 1]]]}, [np.zeros(2, np.uint64).tobytes()], "dimensions"),
        ({"arrays": [["<u8", [-2]]]}, [np.zeros(2, np.uint64).tobytes()], "out of bounds"),
        ({}, [], "describes 1 arrays but 0 frames follow"),
    ],
)
def test_malformed_headers_are_rejected_with_reasons(override: dict[str, object], frames_after: list[bytes],
                                                     message: str) -> None:
    head = msgpack.packb(_header(**override), use_bin_type=True)
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace("[", r"\[")):
        decode([head, *frames_after])


def test_truncated_and_non_list_headers() -> None:
    head = msgpack.packb(_header(), use_bin_type=True)
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode([head[:-3]])
    with pytest.raises(ProtocolError, match="msgpack array of 15 fields"):
        decode([msgpack.packb({"op": 1})])
    with pytest.raises(ProtocolError, match="empty message"):
        decode([])


def test_unsendable_arrays_are_refused_at_encode() -> None:
    with pytest.raises(ProtocolError, match="cannot be sent"):
        encode(Message(Op.PUSH, arrays=[np.array(["a"], dtype=object)]))
    with pytest.raises(ProtocolError, match="3 dimensions"):
        encode(Message(Op.PUSH, arrays=[np.zeros((1, 1, 1))]))
