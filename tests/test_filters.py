"""Filters: exact round trips, bounded and unbiased lossy filters, key-cache repair, held-back
mass delivered, and byte counters that equal the frames sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import paramserver as ps
from paramserver.filters import KKT, Compress, FixedPoint, KeyCache, RandomSkip, SignificantlyModified, ZeroSuppress
from paramserver.protocol import KEY_DTYPE, Message, Op, decode, encode, value_indices
from paramserver.testing import InProcessCluster
from paramserver.transport import MemoryTransport


def roundtrip(msg: Message, codecs: list[Any], decoders: list[Any] | None = None) -> Message:
    """Encode through the codecs and frames, then decode, as two nodes would."""
    msg.values_at = value_indices(msg)
    for c in sorted(codecs, key=lambda c: c.rank):
        msg = c.encode(7, msg)
    out = decode([memoryview(f).tobytes() for f in encode(msg)])
    by_name = {d.wire_name: d for d in (decoders or [])}
    for name in reversed(out.filters):
        dec = by_name.get(name) or ps.protocol.codec(name)
        out = dec.decode(7, out)
    return out


values = st.sampled_from(["<f4", "<f8", "<i8", "|u1"]).flatmap(
    lambda dt: hnp.arrays(dt, st.tuples(st.integers(0, 40), st.integers(1, 3)),
                          elements=hnp.from_dtype(np.dtype(dt), allow_nan=False, allow_infinity=False)
                          | st.just(0)))


@given(values, st.sampled_from(["snappy", "lz4", "zstd"]))
@settings(max_examples=150, deadline=None)
def test_lossless_filters_round_trip_exactly(vals: np.ndarray, alg: str) -> None:
    keys = np.arange(len(vals), dtype=KEY_DTYPE) * np.uint64(977)
    msg = Message(Op.PUSH, table=0, arrays=[keys.copy(), vals.copy()])
    out = roundtrip(msg, [ZeroSuppress(), Compress(alg, min_bytes=0)])
    np.testing.assert_array_equal(out.arrays[0], keys)
    np.testing.assert_array_equal(out.arrays[1], vals)
    assert out.arrays[1].dtype == vals.dtype and out.arrays[1].shape == vals.shape


def test_zero_suppression_and_compression_shrink_sparse_values() -> None:
    vals = np.zeros((1000, 4), np.float32)
    vals[::50] = 1.5
    msg = Message(Op.PUSH, table=0, arrays=[np.arange(1000, dtype=KEY_DTYPE), vals])
    msg.values_at = value_indices(msg)
    enc = ZeroSuppress().encode(1, msg)
    assert enc is not msg and enc.filters == ("zeros",)
    assert enc.nbytes() < 8000 + 16000 / 5
    assert msg.nbytes() == 8000 + 16000 and "zeros" not in msg.body  # the input is left as it was
    msg2 = Message(Op.PUSH, table=0, arrays=[np.arange(1000, dtype=KEY_DTYPE), vals.copy()])
    enc2 = Compress("lz4").encode(1, msg2)
    assert enc2 is not msg2 and enc2.nbytes() < (8000 + 16000) / 4


@pytest.mark.parametrize("make", [KeyCache, ZeroSuppress, lambda: FixedPoint(8, seed=0), lambda: Compress("zstd", 0)])
def test_codecs_return_new_messages_and_leave_their_input_alone(make: Any) -> None:
    vals = np.zeros((50, 2), np.float32)
    vals[::7] = 2.5
    keys = np.arange(50, dtype=KEY_DTYPE) * np.uint64(3)
    msg = Message(Op.PUSH, table=0, body={"rid": 4}, arrays=[keys, vals])
    msg.values_at = value_indices(msg)
    enc, dec = make(), make()
    snapshot = (list(msg.arrays), dict(msg.body), msg.filters, keys.copy(), vals.copy())
    for _ in range(2):  # the key cache sends the keys, then their signature
        out = enc.encode(7, msg)
        assert out is not msg and out.filters == (enc.wire_name,)
        assert [a is b for a, b in zip(msg.arrays, snapshot[0], strict=True)] == [True, True]
        assert (msg.body, msg.filters) == snapshot[1:3]
        np.testing.assert_array_equal(keys, snapshot[3])
        np.testing.assert_array_equal(vals, snapshot[4])
        received = decode([memoryview(f).tobytes() for f in encode(out)])
        kept = (list(received.arrays), dict(received.body))
        back = dec.decode(7, received)
        assert back is not received and (received.arrays, received.body) == kept
        assert back.body == {"rid": 4}
        np.testing.assert_array_equal(back.arrays[0], keys)
        assert back.arrays[1].shape == vals.shape


def test_a_codec_that_does_not_apply_returns_the_same_message() -> None:
    msg = Message(Op.PUSH, table=0, arrays=[np.arange(2, dtype=KEY_DTYPE), np.ones((2, 1), np.float32)])
    msg.values_at = value_indices(msg)
    assert KeyCache().encode(1, msg) is msg  # fewer keys than min_keys
    assert ZeroSuppress().encode(1, msg) is msg  # no zeros to drop
    assert Compress("lz4").encode(1, msg) is msg  # below min_bytes
    assert FixedPoint(32).encode(1, msg) is msg  # float32 is not wider than 32 bits


@pytest.mark.parametrize("bits", [8, 16])
def test_fixed_point_is_bounded_and_unbiased(bits: int) -> None:
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(200, 5)).astype(np.float32)
    lo, hi = float(vals.min()), float(vals.max())
    step = (hi - lo) / (2**bits - 1)
    fp = FixedPoint(bits, seed=1)
    outs = np.stack([roundtrip(Message(Op.PUSH, table=0, arrays=[np.arange(200, dtype=KEY_DTYPE), vals.copy()]),
                               [fp]).arrays[1] for _ in range(400)])
    assert outs.dtype == np.float32
    assert np.abs(outs - vals).max() <= step * 1.0001  # the stated error bound
    # unbiased: the mean of 400 decodings is within 5 standard errors of the truth everywhere,
    # and the errors average out across the 1000 values (no overall bias)
    z = (outs.astype(np.float64).mean(axis=0) - vals) / (step / 2 / np.sqrt(400))
    assert np.abs(z).max() < 5
    assert abs(z.mean()) < 0.2


def test_random_skip_is_unbiased_and_kkt_drops_what_it_is_told() -> None:
    rs = RandomSkip(0.25, seed=3)
    keys = np.arange(1000, dtype=KEY_DTYPE)
    vals = np.ones((1000, 1), np.float64)
    total = np.zeros(1000)
    for _ in range(400):
        k, v = rs.apply(keys, vals)
        total[k.astype(np.int64)] += v.ravel()
        assert np.all(v == 4.0)
    assert abs(total.mean() / 400 - 1.0) < 0.02  # each entry's expected value is kept
    kkt = KKT(lambda k, v: np.abs(v[:, 0]) <= 0.5)
    k, v = kkt.apply(keys[:4], np.array([[0.1], [0.9], [-0.4], [-2.0]]))
    assert k.tolist() == [1, 3] and v.ravel().tolist() == [0.9, -2.0]


def test_held_back_mass_is_delivered_and_the_sum_is_exact() -> None:
    rng = np.random.default_rng(5)
    with InProcessCluster(servers=2) as c:
        w = c.connect()
        sm = SignificantlyModified(threshold=10.0, decay=0.5, min_threshold=2.0)
        t = w.table("s", width=2, dtype="float64", filters=[sm])
        total: dict[int, np.ndarray] = {}
        for _ in range(30):
            keys = ps.spread(rng.integers(0, 50, 40))
            vals = rng.integers(-3, 4, size=(40, 2)).astype(np.float64)
            t.push(keys, vals)
            for k, v in zip(keys.tolist(), vals, strict=True):
                total[k] = total.get(k, 0) + v
            w.advance()
        sent = w.stats()["tables"]["s"]["filters"]["significant"]
        assert sent["sent_after"] < sent["sent_before"]  # it did hold entries back
        w.close()  # flushes what is held back
        with c.connect() as r:
            got = r.table("s", width=2, dtype="float64")
            keys = np.array(sorted(total), dtype=KEY_DTYPE)
            np.testing.assert_array_equal(got.pull(keys), np.array([total[int(k)] for k in keys]))
    assert sm.threshold == 2.0


def test_key_cache_travels_by_signature_and_repairs_misses() -> None:
    with InProcessCluster(servers=2) as c, c.connect() as w:
        cache = KeyCache()
        t = w.table("k", dtype="int64", filters=[cache, Compress("zstd")])
        keys = ps.spread(np.arange(5000))
        for _ in range(3):
            t.push(keys, np.ones(5000, np.int64)).wait()
        f = w.stats()["tables"]["k"]["filters"]["keys"]
        assert f["sent_after"] < f["sent_before"] * 0.7  # the 2nd and 3rd pushes sent no keys
        # every server forgets its key lists (as after a restart): the next push repairs itself
        for s in c.servers:
            s.node._decoders.clear()
        t.push(keys, np.ones(5000, np.int64)).wait()
        assert w._node.counters["key_repairs"] == 2
        np.testing.assert_array_equal(t.pull(keys).ravel(), np.full(5000, 4))
        # pulls use the cache too, and their replies come back compressed
        np.testing.assert_array_equal(t.pull(keys).ravel(), np.full(5000, 4))


def test_key_cache_eviction_on_the_receiver_is_repaired() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        small = KeyCache(capacity=2)
        c.servers[0].node._decoders["keys"] = small
        t = w.table("e", dtype="int64", filters=[KeyCache()])
        lists = [np.arange(10, dtype=KEY_DTYPE) + np.uint64(100 * i) for i in range(4)]
        for _ in range(3):
            for keys in lists:  # 4 lists through a cache of 2: every reuse misses
                t.push(keys, np.ones(10, np.int64)).wait()
        assert small.misses > 0 and w._node.counters["key_repairs"] == small.misses
        for keys in lists:
            np.testing.assert_array_equal(t.pull(keys).ravel(), np.full(10, 3))


class CountingTransport(MemoryTransport):
    """Records the length of every frame it sends."""

    sent_bytes = 0

    def send(self, peer: int, frames: Any) -> int:
        n = super().send(peer, frames)
        CountingTransport.sent_bytes += sum(len(memoryview(f).tobytes()) for f in frames)
        return n


def test_byte_counters_equal_the_frames_sent() -> None:
    with InProcessCluster(servers=2) as c:
        CountingTransport.sent_bytes = 0
        w = ps.worker.connect(c.address, config=c.config, transport=CountingTransport(c.hub))
        t = w.table("b", width=3, filters=[KeyCache(), ZeroSuppress(), FixedPoint(8), Compress("lz4", min_bytes=0)])
        rng = np.random.default_rng(0)
        for _ in range(10):
            vals = rng.normal(size=(300, 3)).astype(np.float32)
            vals[rng.random(300) < 0.7] = 0
            t.push(ps.spread(np.arange(300)), vals)
            t.pull(ps.spread(np.arange(300)))
        w.wait_all()
        st = w.stats()
        w.close()
        # every byte the transport sent, and nothing else, is counted
        assert CountingTransport.sent_bytes == w._node.counters["bytes_sent"]
        assert 0 < st["bytes_sent"] <= CountingTransport.sent_bytes
        # per filter: "before" is the data as the program sees it, "after" as it travels
        f = st["tables"]["b"]["filters"]
        for name in ("keys", "zeros", "fixed8", "lz4"):
            assert f[name]["sent_after"] < f[name]["sent_before"], name
        assert f["fixed8"]["received_after"] < f["fixed8"]["received_before"]  # replies came quantised


def test_malformed_filter_metadata_is_rejected_and_the_server_serves_on() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        t = w.table("m", dtype="float32")
        node = w._node
        server = node.keymap.master_of(1)  # type: ignore[union-attr]
        bad = Message(Op.PUSH, table=t.id, filters=("zeros",), body={"zeros": [[1, 2, [10**12]]]},
                      arrays=[np.array([1], dtype=KEY_DTYPE), np.ones(1, np.float32), np.zeros(1, np.uint32)])
        with pytest.raises(ps.ProtocolError, match="too large"):
            node.request({server: bad}, "bad push").wait(5)
        bomb = Message(Op.PUSH, table=t.id, filters=("zstd",), body={"zstd": [[1, "<f4", [1 << 30]]]},
                       arrays=[np.array([1], dtype=KEY_DTYPE), np.zeros(8, np.uint8)])
        with pytest.raises(ps.ProtocolError):
            node.request({server: bomb}, "bomb").wait(5)
        t.push([1], np.ones(1, np.float32)).wait()
        np.testing.assert_array_equal(t.pull([1]), [[1.0]])
