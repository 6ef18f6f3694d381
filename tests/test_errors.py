"""Every error case: the exception type, its message, and that nothing hangs or breaks."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import zmq

import paramserver as ps
from helpers import free_port
from paramserver.protocol import Message, Op

pytestmark = pytest.mark.cluster


def test_no_scheduler_fails_within_the_timeout_naming_the_address() -> None:
    port = free_port()
    with pytest.raises(ps.ConnectError, match=rf"no scheduler answered at tcp://127.0.0.1:{port} within 0.5 s"):
        ps.connect(f"127.0.0.1:{port}", timeout=0.5)


def test_no_address_anywhere_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PS_SCHEDULER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ps.ConfigError, match="no scheduler address"):
        ps.connect()
    monkeypatch.setenv("PS_TIMEOUT", "soon")
    with pytest.raises(ps.ConfigError, match="PS_TIMEOUT='soon' is invalid"):
        ps.connect("127.0.0.1:1")


def test_bad_arguments_raise_before_anything_is_sent(worker: ps.Worker) -> None:
    t = worker.table("t", width=2, dtype="float32")
    before = worker.stats()["tables"]["t"]["bytes_sent"]
    keys = np.array([1, 2], dtype=np.uint64)
    with pytest.raises(ps.DTypeError, match="holds float32; values have dtype float64"):
        t.push(keys, np.ones((2, 2)))
    with pytest.raises(ps.InvalidArgument, match=r"values of shape \(2, 3\) for 2 keys; expected \(2, 2\)"):
        t.push(keys, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ps.InvalidArgument, match=r"values of shape \(3, 2\) for 2 keys"):
        t.push(keys, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ps.DTypeError, match="keys must be integers"):
        t.push(np.array([1.5, 2.0]), np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ps.DTypeError, match="non-integral"):
        t.pull([1, 2.5])
    with pytest.raises(ps.InvalidArgument, match="non-negative"):
        t.pull(np.array([-1, 2]))
    with pytest.raises(ps.InvalidArgument, match="one-dimensional"):
        t.pull(np.ones((2, 2), dtype=np.uint64))
    with pytest.raises(ps.InvalidArgument, match="out must have shape"):
        t.pull(keys, out=np.empty((2, 3), dtype=np.float32))
    with pytest.raises(ps.InvalidArgument, match="invalid key range"):
        t.pull_range(10, 5)
    assert worker.stats()["tables"]["t"]["bytes_sent"] == before
    with pytest.raises(ps.DTypeError, match="needs a floating-point dtype"):
        worker.table("bad", dtype="int8", updater="sgd")
    with pytest.raises(ps.TableError, match="exists with width=2"):
        worker.table("t", width=1)


def test_updater_exception_is_a_remote_error_and_the_server_keeps_serving(worker: ps.Worker) -> None:
    t = worker.table("fussy", dtype="float64", updater="user_updaters:Fussy")
    keys = np.array([3, 2**63 + 3], dtype=np.uint64)
    t.push(keys, np.array([1.0, 2.0])).wait()
    with pytest.raises(ps.RemoteError, match="ValueError: Fussy refuses 1 negative values") as info:
        t.push(keys, np.array([1.0, -2.0])).wait()
    assert "Traceback" in info.value.remote_traceback and "in apply" in info.value.remote_traceback
    assert info.value.remote_type == "ValueError"
    t.push(keys, np.array([1.0, 1.0])).wait()
    # the half on the healthy server was applied; the refused half was not
    np.testing.assert_array_equal(t.pull(keys).ravel(), [3.0, 3.0])


def test_unimportable_user_updater_is_a_table_error(worker: ps.Worker) -> None:
    with pytest.raises(ps.TableError, match="cannot import updater 'no_such_mod:X'"):
        worker.table("u", updater="no_such_mod:X")


def test_malformed_requests_get_error_replies_and_change_nothing(worker: ps.Worker) -> None:
    t = worker.table("m", dtype="float32")
    t.push([5], np.ones(1, dtype=np.float32)).wait()
    node = worker._node
    server = node.keymap.master_of(5)  # type: ignore[union-attr]
    unsorted = Message(Op.PUSH, table=t.id, arrays=[np.array([9, 5], dtype=np.uint64), np.ones((2, 1), np.float32)])
    with pytest.raises(ps.ProtocolError, match="keys must be sorted and distinct"):
        node.request({server: unsorted}, "bad push").wait(10)
    wrong_dtype = Message(Op.PUSH, table=t.id, arrays=[np.array([5], dtype=np.uint64), np.ones((1, 1))])
    with pytest.raises(ps.DTypeError, match="holds float32, the push sent float64"):
        node.request({server: wrong_dtype}, "bad push").wait(10)
    unknown = Message(Op.PULL, table=99, arrays=[np.array([5], dtype=np.uint64)])
    with pytest.raises(ps.TableError, match="table id 99 is unknown"):
        node.request({server: unknown}, "bad pull").wait(10)
    other = next(s for s in node.keymap.servers() if s != server)  # type: ignore[union-attr]
    misrouted = Message(Op.PULL, table=t.id, arrays=[np.array([5], dtype=np.uint64)],
                        epoch=node.keymap.epoch)  # type: ignore[union-attr]
    with pytest.raises(ps.KeyRangeError, match="does not own the keys of this pull"):
        node.request({other: misrouted}, "misrouted pull").wait(10)
    stale = Message(Op.PULL, table=t.id, arrays=[np.array([5], dtype=np.uint64)], epoch=0)
    with pytest.raises(ps.KeyRangeError, match="does not own these keys in epoch 1"):  # "moved", for a raw request
        node.request({other: stale}, "stale pull").wait(10)
    # raw garbage straight onto the server's socket: logged and dropped, the server serves on
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(node.node_info(server).address)  # type: ignore[union-attr]
    for junk in ([b"\x00garbage"], [b"", b""], [b"\x93\x01\x02\x03"] * 3):
        sock.send_multipart(junk)
    sock.close(linger=1000)
    ctx.term()
    np.testing.assert_array_equal(t.pull([5]).ravel(), [1.0])


def test_a_killed_server_fails_requests_with_a_clear_error(cluster2: ps.LocalCluster) -> None:
    w = ps.connect(cluster2.address)
    t = w.table("k", dtype="float32")
    t.push([1, 2**63 + 1], np.ones(2, dtype=np.float32)).wait()
    victim = cluster2.server_pids[0]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises((ps.JobAborted, ps.NodeUnavailable), match=rf"server \d+ \(pid {victim} .*\) died"):
        for _ in range(1000):  # the heartbeat timeout is 3 s here; each pull blocks on the dead server
            t.pull([1, 2**63 + 1], timeout=60)
    with pytest.raises(ps.JobAborted):
        t.push([1], np.ones(1, dtype=np.float32))
    w.close()


def test_closed_worker_raises_closed_error(cluster2: ps.LocalCluster) -> None:
    w = ps.connect(cluster2.address)
    t = w.table("c")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ps.ClosedError, match="the worker is closed"):
        t.push([1], np.ones(1, dtype=np.float32))
    with pytest.raises(ps.ClosedError):
        w.barrier()


def test_request_timeout_names_what_it_waited_for(worker: ps.Worker) -> None:
    t = worker.table("slow", dtype="float64", updater="user_updaters:Fussy")
    node = worker._node
    server = node.keymap.master_of(1)  # type: ignore[union-attr]
    # a request the server never answers: an op servers do not reply to in time is simulated
    # by waiting 0 seconds on a real pull
    req = t.pull([1], block=False)
    with pytest.raises(ps.RequestTimeout, match=rf"pull from table 'slow' \(ts={req.ts}\) timed out after 0 s"):
        req.wait(timeout=0)
    req.wait(30)
    assert server in node.keymap.servers()  # type: ignore[union-attr]
