"""Regressions: the receive thread survives bad callbacks and replies; late or duplicated
replies change nothing; dependencies and clock ticks keep their promises."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import paramserver as ps
from paramserver.clock import Request
from paramserver.protocol._codec import decode_header
from paramserver.testing import InProcessCluster
from paramserver.transport import FaultyTransport, MemoryTransport
from paramserver.worker import connect


def _recv_thread_alive() -> bool:
    return any(t.name == "paramserver-worker-recv" and t.is_alive() for t in threading.enumerate())


def test_a_raising_callback_does_not_stop_the_receive_thread() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        t = w.table("w")
        req = t.pull([1], block=False)
        req.add_done_callback(lambda r: 1 / 0)
        req.wait(5)
        assert _recv_thread_alive()
        np.testing.assert_array_equal(t.pull([1]), [[0.0]])


def test_duplicated_range_replies_are_counted_once() -> None:
    def range_reply(frames: list[object]) -> bool:
        h, _ = decode_header(memoryview(frames[0]).tobytes())  # type: ignore[arg-type]
        return h[1] == 34 and h[4] == 1

    with InProcessCluster(servers=2) as c:
        tr = FaultyTransport(MemoryTransport(c.hub), dup=1.0, affects=range_reply, seed=1)
        with connect(c.address, config=c.config, transport=tr) as w:
            t = w.table("w")
            t.push([1, 2**63 + 1], np.array([10, 20], np.float32)).wait()
            keys, vals = t.pull_range()
            assert keys.tolist() == [1, 2**63 + 1] and vals.ravel().tolist() == [10.0, 20.0]
            assert tr.duplicated == 2


def test_a_clock_tick_follows_a_push_held_by_its_dependency() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as a, c.connect() as b:
        ta = a.table("w", consistency="bounded", tau=0, aggregate=True)
        tb = b.table("w", consistency="bounded", tau=0, aggregate=True)
        gate = Request(10**9, "gate", [0], default_timeout=5)
        pushed = ta.push([5], np.ones(1, np.float32), deps=[gate])  # iteration 0, held back
        a.advance()
        tb.push([5], np.ones(1, np.float32))
        b.advance()
        held = tb.pull([5], block=False)  # iteration 1 must see both iteration-0 pushes
        tb.pull([5], tau=100)  # a round trip to the server
        assert not held.done()
        gate.part_done(0)
        pushed.wait(5)
        np.testing.assert_array_equal(held.result(5), [[2.0]])


def test_an_already_failed_dependency_fails_the_request() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        t = w.table("w")
        failed = Request(10**9, "failed", [0], default_timeout=1)
        failed.fail(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            t.push([1], np.ones(1, np.float32), deps=[failed]).wait(5)
        np.testing.assert_array_equal(t.pull([1]), [[0.0]])


def test_a_timed_out_blocking_pull_never_writes_later() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as a, c.connect() as b:
        ta = a.table("w", consistency="bounded", tau=0)
        tb = b.table("w", consistency="bounded", tau=0)
        ta.push([3], np.full(1, 7, np.float32)).wait()
        a.advance()
        out = np.zeros((1, 1), np.float32)
        with pytest.raises(ps.RequestTimeout):
            ta.pull([3], out=out, timeout=0.3)  # held: b has not finished iteration 0
        out[:] = -1
        b.advance()  # releases the held pull; its reply arrives and is ignored
        tb.pull([3], tau=100)
        ta.pull([3], tau=100)  # both workers' round trips are done
        assert out.ravel().tolist() == [-1.0]
        assert not a._node.pending_requests()


@pytest.mark.parametrize("updater", ["adam", "adagrad", "ftrl"])
def test_float16_optimizers_compute_without_nans(updater: str) -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        t = w.table("h", width=2, dtype="float16", updater=updater)
        t.push([1], np.array([[0.5, 0.0]], np.float16)).wait()
        got = t.pull([1])
        assert np.isfinite(got).all() and got[0, 1] == 0


def test_a_key_cache_miss_is_repaired_even_after_its_request_failed() -> None:
    """An ordered part must arrive: a repair may not be dropped because another part failed."""
    from paramserver.filters import KeyCache

    with InProcessCluster(servers=2) as c, c.connect() as w:
        t = w.table("f", dtype="float64", updater="user_updaters:Fussy", filters=[KeyCache(min_keys=1)])
        keymap = w._node.keymap
        assert keymap is not None
        a_keys = np.array([1, 2, 3], dtype=np.uint64)  # first half of the key space
        b_keys = np.array([2**63 + 1, 2**63 + 2, 2**63 + 3], dtype=np.uint64)
        keys = np.concatenate([a_keys, b_keys])
        t.push(keys, np.ones(6)).wait(5)
        b = next(s for s in c.servers if s.node.id == keymap.master_of(2**63 + 1))
        b.node._decoders.clear()  # server B forgets the key list
        with pytest.raises(ps.RemoteError, match="refuses"):
            t.push(keys, np.array([-1.0, -1, -1, 1, 1, 1])).wait(5)  # A refuses; B asks for the keys
        t.push(keys, np.ones(6)).wait(5)  # B's channel must not be stuck behind the repaired push
        np.testing.assert_array_equal(t.pull(b_keys).ravel(), [3.0, 3.0, 3.0])
        np.testing.assert_array_equal(t.pull(a_keys).ravel(), [2.0, 2.0, 2.0])


def test_significantly_modified_takes_back_what_a_failed_push_carried() -> None:
    from paramserver.filters import SignificantlyModified

    with InProcessCluster(servers=1) as c, c.connect() as w:
        sm = SignificantlyModified(threshold=0.5)
        t = w.table("s", dtype="float64", updater="user_updaters:Fussy", filters=[sm])
        t.push([7], np.array([0.3])).wait(5)  # held back
        with pytest.raises(ps.RemoteError):
            t.push([7], np.array([-1.0])).wait(5)  # -0.7 leaves, is refused, comes back
        t.push([7], np.array([2.0])).wait(5)  # 1.3 leaves and is applied
        np.testing.assert_array_equal(t.pull([7]).ravel(), [1.3])


def test_saturating_counters_do_not_wrap_around() -> None:
    with InProcessCluster(servers=1) as c, c.connect() as w:
        big = w.table("i32", dtype="int32", updater=ps.table.SaturatingSum(cap=2**40))
        small = w.table("u8", dtype="uint8", updater=ps.table.SaturatingSum(cap=200))
        for _ in range(3):
            big.push([1], np.array([2**30], np.int32)).wait(5)
            small.push([1], np.array([100], np.uint8)).wait(5)
        assert big.pull([1]).ravel().tolist() == [2**31 - 1]
        assert small.pull([1]).ravel().tolist() == [200]


def test_zero_suppression_keeps_negative_zero_and_refuses_reused_arrays() -> None:
    from paramserver.filters import ZeroSuppress
    from paramserver.protocol import KEY_DTYPE, Message, Op, decode, encode, value_indices

    vals = np.zeros((100, 1), np.float32)
    vals[1], vals[2] = -0.0, 1.5
    msg = Message(Op.PUSH, table=0, arrays=[np.arange(100, dtype=KEY_DTYPE), vals.copy()])
    msg.values_at = value_indices(msg)
    msg = ZeroSuppress().encode(1, msg)
    assert msg.filters == ("zeros",)
    out = decode([memoryview(f).tobytes() for f in encode(msg)])
    out = ZeroSuppress().decode(1, out)
    assert np.flatnonzero(np.signbit(out.arrays[1])).tolist() == [1]
    np.testing.assert_array_equal(out.arrays[1], vals)
    hostile = Message(Op.PUSH, table=0, filters=("zeros",), body={"zeros": [[1, 2, [4, 1]], [1, 2, [4, 1]]]},
                      arrays=[np.arange(4, dtype=KEY_DTYPE), np.ones(1, np.float32), np.zeros(1, np.uint32)])
    with pytest.raises(ps.ProtocolError, match="named twice"):
        ZeroSuppress().decode(1, hostile)
