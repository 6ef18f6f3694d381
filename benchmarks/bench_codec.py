"""Header codecs and framing: encode+decode time per message, and 1 frame against 3 over pyzmq.

Four message kinds, as the data path sends them (a table of width 1 for the small ones, of
width 256 for the 1 MiB push, as in bench_pushpull.py): a 1-key push (with ``rid`` and
``lw`` in its body), the 1-key pull reply (one value), the push acknowledgement (no body, no
array), a 1000-key push and a 1 MiB push (1024 keys of 1 KiB). For each, the time of
``decode(encode(msg))`` (frames copied to bytes in between, as a transport delivers them) for:

* ``msgpack15``: protocol version 1, frame 0 a msgpack list of 15 fields checked one by one in
  Python, one frame per array (a copy of the codec as it was, kept here as the baseline);
* ``msgspec15``: the same layout, packed and unpacked by msgspec with the field types and
  integer bounds declared on an array-like ``msgspec.Struct`` (checked in C);
* ``struct+msgspec``: ``paramserver.protocol`` as it is: a fixed ``struct`` header and array
  descriptors, msgpack (by msgspec, typed) only for filters and body, small arrays packed
  into frame 0;
* ``struct+msgpack``: the same with filters and body packed by msgpack and checked in Python.

Large arrays are handed to the decoder as memoryviews (a transport receives them into its own
buffers), small frames as bytes.

Then raw pyzmq over a DEALER -> ROUTER pair on 127.0.0.1 (one process, TCP): a 1-key push as
one frame (``struct+msgspec``) against three frames (``msgpack15``), synchronous round trips
(a 1-byte reply) and 2000 messages pipelined (sent, then received). Every figure is the
minimum over interleaved rounds.

Writes benchmarks/results/codec.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgpack
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).parent))
from _common import timed, write
from paramserver import ProtocolError
from paramserver.protocol import ALLOWED_DTYPES, Message, Op, Status, _codec, decode, encode

try:
    import msgspec
except ImportError:  # measured only where it is installed
    msgspec = None

_U64, _I63, _I31 = 1 << 64, 1 << 63, 1 << 31
_OPS = {int(o): o for o in Op}
_STATUSES = {int(s): s for s in Status}
_DT = {s: np.dtype(s) for s in ALLOWED_DTYPES}


# ---------------------------------------------------------------- protocol version 1 (baseline)
def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise ProtocolError(f"header field {name!r} must be an integer")
    if not lo <= value < hi:
        raise ProtocolError(f"header field {name!r}={value} is out of bounds [{lo}, {hi})")
    return value


def v1_encode(msg: Message) -> list[Any]:
    descr = []
    for a in msg.arrays:
        if a.dtype.str not in ALLOWED_DTYPES or a.ndim > 2:
            raise ProtocolError("cannot be sent")
        descr.append([a.dtype.str, list(a.shape)])
    rng = None if msg.key_range is None else [msg.key_range[0], msg.key_range[1] - 1]
    header = [1, int(msg.op), msg.sender, msg.ts, 1 if msg.response else 0, msg.table, msg.epoch, msg.clock,
              msg.seq, rng, [], int(msg.status), list(msg.filters), descr, msg.body]
    return [msgpack.packb(header, use_bin_type=True), *msg.arrays]


def _v1_rest(frames: Sequence[Any], op: int, sender: int, ts: int, flags: int, table: int, epoch: int, clock: int,
             seq: int, rng: Any, status: int, filters: list[str], descr: list[Any], body: dict[str, Any],
             checked: bool) -> Message:  # checked: msgspec15, which also builds arrays the faster way
    """The checks msgpack15 and msgspec15 share (msgspec15 has typed and bounded the integers)."""
    op_v, status_v = _OPS.get(op), _STATUSES.get(status)
    if op_v is None or status_v is None:
        raise ProtocolError("unknown op or status")
    if not checked:
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
            raise ProtocolError("range")
        lo, last = _int(rng[0], "range.lo", 0, _U64), _int(rng[1], "range.last", 0, _U64)
        if last < lo:
            raise ProtocolError("range empty")
        key_range = (lo, last + 1)
    if not checked:
        if type(filters) is not list or len(filters) > 16:
            raise ProtocolError("filters")
        for name in filters:
            if type(name) is not str or not 0 < len(name) <= 64:
                raise ProtocolError("filters")
        if type(body) is not dict:
            raise ProtocolError("body")
    if len(frames) - 1 != len(descr):
        raise ProtocolError("frames")
    arrays = []
    for i, (d, f) in enumerate(zip(descr, frames[1:], strict=True)):
        if type(d) is not list or len(d) != 2 or type(d[1]) is not list:
            raise ProtocolError("descriptor")
        dtype = _DT.get(d[0]) if type(d[0]) is str else None
        if dtype is None or len(d[1]) > 2:
            raise ProtocolError("dtype")
        count = 1
        for dim in d[1]:
            count *= _int(dim, f"arrays[{i}].shape", 0, _I63)
        if count * dtype.itemsize != memoryview(f).nbytes:
            raise ProtocolError("frame length")
        if checked:
            arrays.append(np.ndarray(tuple(d[1]), dtype, memoryview(f).toreadonly()))
        else:
            arrays.append(np.frombuffer(f, dtype=dtype).reshape(d[1]))
    return Message(op_v, sender, ts, bool(flags), table, epoch, clock, seq, key_range, status_v, tuple(filters), body,
                   arrays)


def v1_decode(frames: Sequence[Any]) -> Message:
    try:
        h = msgpack.unpackb(frames[0], raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"not msgpack: {exc}") from None
    if type(h) is not list or len(h) != 15 or h[0] != 1:
        raise ProtocolError("header")
    deps = h[10]
    if type(deps) is not list or len(deps) > 4096:
        raise ProtocolError("deps")
    for d in deps:
        _int(d, "deps[]", 0, _I63)
    if type(h[13]) is not list or len(h[13]) > 64:
        raise ProtocolError("arrays")
    return _v1_rest(frames, h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[11], h[12], h[13], h[14], False)


# ---------------------------------------------------------------- the same layout through msgspec
if msgspec is not None:
    from msgspec import Meta

    Int31 = Annotated[int, Meta(ge=-1, lt=_I31)]
    Int63 = Annotated[int, Meta(ge=0, le=_I63 - 1)]
    Name = Annotated[str, Meta(min_length=1, max_length=64)]

    class Header(msgspec.Struct, array_like=True):
        version: Annotated[int, Meta(ge=1, le=1)]
        op: int
        sender: Int31
        ts: Int63
        flags: Annotated[int, Meta(ge=0, le=1)]
        table: Int31
        epoch: Int63
        clock: Annotated[int, Meta(ge=-_I63, le=_I63 - 1)]
        seq: Int63
        range: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(min_length=2, max_length=2)] | None
        deps: Annotated[list[Int63], Meta(max_length=4096)]
        status: int
        filters: Annotated[list[Name], Meta(max_length=16)]
        arrays: Annotated[list[tuple[str, Annotated[list[Int63], Meta(max_length=2)]]], Meta(max_length=64)]
        body: dict[str, Any]

    _MS_DEC = msgspec.msgpack.Decoder(Header)
    _MS_ENC = msgspec.msgpack.Encoder()


def ms_encode(msg: Message) -> list[Any]:
    descr = []
    for a in msg.arrays:
        if a.dtype.str not in ALLOWED_DTYPES or a.ndim > 2:
            raise ProtocolError("cannot be sent")
        descr.append((a.dtype.str, list(a.shape)))
    rng = None if msg.key_range is None else [msg.key_range[0], msg.key_range[1] - 1]
    header = [1, int(msg.op), msg.sender, msg.ts, 1 if msg.response else 0, msg.table, msg.epoch, msg.clock,
              msg.seq, rng, [], int(msg.status), msg.filters, descr, msg.body]
    return [_MS_ENC.encode(header), *msg.arrays]


def ms_decode(frames: Sequence[Any]) -> Message:
    try:
        h = _MS_DEC.decode(frames[0])
    except msgspec.DecodeError as exc:  # ValidationError included: its text names the position
        raise ProtocolError(f"header: {exc}") from None
    return _v1_rest(frames, h.op, h.sender, h.ts, h.flags, h.table, h.epoch, h.clock, h.seq, h.range, h.status,
                    h.filters, [list(d) for d in h.arrays], h.body, True)


# ---------------------------------------------------------------- measurements
def kinds() -> dict[str, Message]:
    one_k = np.array([2**63 + 5], np.uint64)
    keys1000 = np.arange(1000, dtype=np.uint64) * np.uint64(977)
    keys1024 = np.arange(1024, dtype=np.uint64) * np.uint64((2**64 - 1) // 1024)
    return {
        "push_1key": Message(Op.PUSH, sender=9, ts=123456, table=0, epoch=3, seq=4567, body={"rid": 123456, "lw": 123400},
                             arrays=[one_k, np.ones((1, 1), np.float32)]),
        "pull_reply_1key": Message(Op.PULL, sender=1, ts=123457, response=True, table=0, epoch=3,
                                   arrays=[np.ones((1, 1), np.float32)]),
        "push_ack": Message(Op.PUSH, sender=1, ts=123456, response=True, table=0, epoch=3, seq=4567),
        "push_1000keys": Message(Op.PUSH, sender=9, ts=123458, table=0, epoch=3, seq=4568,
                                 body={"rid": 123458, "lw": 123400},
                                 arrays=[keys1000, np.ones((1000, 1), np.float32)]),
        "push_1MiB": Message(Op.PUSH, sender=9, ts=123459, table=1, epoch=3, seq=9, body={"rid": 123459, "lw": 123400},
                             arrays=[keys1024, np.ones((1024, 256), np.float32)]),
    }


def _msgpack_tail(filters: tuple[str, ...], body: dict[str, Any]) -> bytes:
    try:
        return bytes(msgpack.packb([filters, body], use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode the message body: {exc}") from exc


def _msgpack_untail(tail: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    try:
        t = msgpack.unpackb(tail, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"header field 'tail' is not valid msgpack: {exc}") from None
    if type(t) is not list or len(t) != 2:
        raise ProtocolError("tail")
    filters, body = t
    if type(filters) is not list or len(filters) > 16 or type(body) is not dict:
        raise ProtocolError("tail")
    for name in filters:
        if type(name) is not str or not 0 < len(name) <= 64:
            raise ProtocolError("filters")
    return tuple(filters), body


def _with_msgpack_tail(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with the struct codec's tail packed and checked by msgpack and Python instead."""
    def run(*args: Any, **kwargs: Any) -> Any:
        saved = _codec.pack_tail, _codec.unpack_tail
        _codec.pack_tail, _codec.unpack_tail = _msgpack_tail, _msgpack_untail  # type: ignore[assignment]
        try:
            return fn(*args, **kwargs)
        finally:
            _codec.pack_tail, _codec.unpack_tail = saved  # type: ignore[assignment]
    return run


def _received(frames: list[Any]) -> list[Any]:
    """Frames as a transport hands them over: small ones copied, large ones not."""
    return [f if isinstance(f, bytes) else memoryview(f) for f in frames]


def codec_times(quick: bool, rounds: int) -> dict[str, dict[str, float]]:
    codecs: dict[str, tuple[Callable[[Message], list[Any]], Callable[[Sequence[Any]], Message]]] = {
        "msgpack15": (v1_encode, v1_decode), "struct+msgpack": (encode, decode), "struct+msgspec": (encode, decode)}
    if msgspec is not None:
        codecs["msgspec15"] = (ms_encode, ms_decode)
    out: dict[str, dict[str, float]] = {kind: {name: float("inf") for name in codecs} for kind in kinds()}
    for _ in range(rounds):  # interleaved, the minimum of each kept
        for kind, msg in kinds().items():
            for name, (enc, dec) in codecs.items():
                def once(enc: Any = enc, dec: Any = dec, msg: Message = msg) -> None:
                    dec(_received(enc(msg)))
                check = dec(_received(enc(msg)))
                assert check.ts == msg.ts and len(check.arrays) == len(msg.arrays) and check.body == msg.body
                run = _with_msgpack_tail(timed) if name == "struct+msgpack" else timed
                out[kind][name] = min(out[kind][name], run(once, min_time=0.1 if quick else 0.3) * 1e6)
    return out


def zmq_frames(quick: bool, rounds: int) -> dict[str, float]:
    msg = kinds()["push_1key"]
    variants = {"1 frame": [memoryview(f).tobytes() for f in encode(msg)],
                "3 frames": [memoryview(f).tobytes() for f in v1_encode(msg)]}
    assert len(variants["1 frame"]) == 1 and len(variants["3 frames"]) == 3
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    out: dict[str, float] = {}
    try:
        dealer.send(b"hello")
        router.recv_multipart()
        n = 500 if quick else 2000
        for _ in range(rounds):  # interleaved: this machine's speed drifts
            for name, frames in variants.items():
                def sync(frames: list[bytes] = frames) -> None:
                    dealer.send_multipart(frames)
                    ident = router.recv_multipart(copy=False)[0]
                    router.send_multipart([ident, b"k"])
                    dealer.recv(copy=False)

                def pipelined(frames: list[bytes] = frames) -> None:
                    for _ in range(n):
                        dealer.send_multipart(frames)
                    for _ in range(n):
                        router.recv_multipart(copy=False)

                for key, fn, per in ((f"{name} sync round trip", sync, 1), (f"{name} pipelined", pipelined, n)):
                    t = timed(fn, min_time=0.1 if quick else 0.3) / per * 1e6
                    out[key] = min(out.get(key, float("inf")), t)
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()
    return out


def main() -> None:
    quick = "--quick" in sys.argv
    t0 = time.perf_counter()
    rounds = 3 if quick else 7
    codec = codec_times(quick, rounds)
    names = list(next(iter(codec.values())))
    print(f"encode+decode per message, us (min of {rounds} interleaved runs):")
    print(f"  {'message':18s}" + "".join(f"{n:>16s}" for n in names))
    for kind, row in codec.items():
        print(f"  {kind:18s}" + "".join(f"{row[n]:16.2f}" for n in names))
    frames = zmq_frames(quick, rounds)
    print("raw pyzmq DEALER -> ROUTER on 127.0.0.1, a 1-key push, us per message:")
    for name, v in frames.items():
        print(f"  {name:28s} {v:8.2f}")
    print(f"({time.perf_counter() - t0:.0f} s) wrote "
          f"{write('codec', {'codec_us': codec, 'zmq_us': frames, 'msgspec': getattr(msgspec, '__version__', None)})}")


if __name__ == "__main__":
    main()
