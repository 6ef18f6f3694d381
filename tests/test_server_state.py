"""The server's state machine, driven with plain messages (no sockets, threads or clocks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from paramserver.clock import Consistency
from paramserver.placement import KEY_SPACE, Assignment, KeyMap, KeyRange
from paramserver.protocol import Message, Op, Status
from paramserver.server import ServerState
from paramserver.server._actions import Call, Fail, Moved, Reply, Wake, WriteCheckpoint
from paramserver.table import TableSpec

HALF = 1 << 63
ME, OTHER, THIRD = 1, 2, 3
W1, W2 = 7, 8


def keys(*ks: int) -> np.ndarray:
    return np.array(ks, dtype=np.uint64)


def ones(n: int, v: float = 1.0) -> np.ndarray:
    return np.full((n, 1), v, dtype=np.float32)


def make(chain: tuple[int, ...] = (), aggregate: bool = False, policy: Consistency | None = None) -> ServerState:
    """Server 1 masters [0, 2**63) (replicated to ``chain``), server 2 the rest; workers 7 and 8."""
    state = ServerState(ME)
    state.set_keymap(KeyMap(1, [Assignment(KeyRange(0, HALF), ME, chain),
                                Assignment(KeyRange(HALF, KEY_SPACE), OTHER, ())]))
    state.add_table(0, TableSpec.create("t", 1, "float32", "sum", aggregate=aggregate), policy)
    assert state.nodes_changed(frozenset({W1, W2}), set()) == []
    return state


def push(seq: int, ks: np.ndarray, v: float = 1.0, *, sender: int = W1, ts: int | None = None, clock: int = 0,
         epoch: int = 1, body: dict[str, Any] | None = None) -> Message:
    return Message(Op.PUSH, sender=sender, ts=seq if ts is None else ts, table=0, epoch=epoch, clock=clock, seq=seq,
                   body={"lw": 0} if body is None else body, arrays=[ks, ones(len(ks), v)])


def tick(seq: int, clock: int, sender: int = W1) -> Message:
    return Message(Op.CLOCK, sender=sender, ts=100 + seq, table=0, epoch=1, clock=clock, seq=seq,
                   key_range=(0, HALF))


def pull(ks: np.ndarray, *, seq: int = 0, sender: int = W1, ts: int = 500, clock: int = 0) -> Message:
    return Message(Op.PULL, sender=sender, ts=ts, table=0, epoch=1, clock=clock, seq=seq, arrays=[ks])


def values(state: ServerState, ks: np.ndarray) -> list[float]:
    return [float(x) for x in state.stores[0].pull(ks).ravel()]


def replies(actions: list[Any]) -> list[tuple[int, Status]]:
    assert all(isinstance(a, Reply) for a in actions), actions
    return [(a.msg.ts, a.status) for a in actions]


def test_ordered_pushes_wait_for_a_gap_and_duplicates_are_answered_but_not_applied() -> None:
    state = make()
    assert state.handle(push(2, keys(5), 2.0), 0.0) == []  # ahead of a gap: waits
    assert values(state, keys(5)) == [0.0]
    assert replies(state.handle(push(1, keys(5), 1.0), 0.0)) == [(1, Status.OK), (2, Status.OK)]
    assert values(state, keys(5)) == [3.0]
    assert replies(state.handle(push(1, keys(5), 1.0), 0.0)) == [(1, Status.OK)]  # a resend
    assert replies(state.handle(push(2, keys(5), 2.0), 0.0)) == [(2, Status.OK)]  # a copy
    assert values(state, keys(5)) == [3.0] and state.duplicates == 2
    assert state.sync[0].channels[W1].done == 2


def test_a_part_sent_again_applies_only_the_keys_not_applied_yet() -> None:
    state = make()
    state.handle(push(1, keys(1, 2), ts=40), 0.0)
    # the same request (rid 40), re-sliced and sent again with a key applied and one not
    again = push(2, keys(2, 3), ts=41, body={"rid": 40, "lw": 0})
    assert replies(state.handle(again, 0.0)) == [(41, Status.OK)]
    assert values(state, keys(1, 2, 3)) == [1.0, 1.0, 1.0]
    assert replies(state.handle(push(3, keys(1, 2), ts=42, body={"rid": 40, "lw": 0}), 0.0)) == [(42, Status.OK)]
    assert values(state, keys(1, 2, 3)) == [1.0, 1.0, 1.0] and state.duplicates == 2
    np.testing.assert_array_equal(state.sync[0].keys_applied(W1, 40), keys(1, 2, 3))


def test_a_pull_is_held_until_the_pushes_before_it_are_applied() -> None:
    state = make()
    assert state.handle(push(2, keys(9), 5.0), 0.0) == []
    assert state.handle(pull(keys(9), seq=2), 0.0) == []  # read-your-writes: waits for push 2
    out = state.handle(push(1, keys(9), 1.0), 0.0)
    assert replies(out) == [(1, Status.OK), (2, Status.OK), (500, Status.OK)]
    assert out[2].arrays is not None and out[2].arrays[0].ravel().tolist() == [6.0]


def test_bounded_delay_holds_a_pull_until_the_slowest_worker_finished_its_iteration() -> None:
    state = make(policy=Consistency("bounded", 0))
    assert replies(state.handle(push(1, keys(3), sender=W2), 0.0)) == [(1, Status.OK)]  # W2 pushes iteration 0
    assert replies(state.handle(pull(keys(3), clock=0), 0.0)) == [(500, Status.OK)]  # iteration 0 needs -1
    assert state.handle(pull(keys(3), clock=1, ts=501), 0.0) == []  # needs both workers at 0
    assert replies(state.handle(tick(1, 0, W1), 0.0)) == [(101, Status.OK)]
    assert len(state.sync[0].held) == 1
    assert replies(state.handle(tick(2, 0, W2), 0.0)) == [(102, Status.OK), (501, Status.OK)]
    assert state.sync[0].held == {}
    # a worker that leaves no longer holds pulls back
    assert state.handle(pull(keys(3), clock=2, ts=502), 0.0) == []
    state.handle(tick(2, 1, W1), 0.0)
    assert replies(state.nodes_changed(frozenset({W1}), {W2})) == [(502, Status.OK)]


def test_aggregation_applies_an_iteration_once_every_worker_finished_it() -> None:
    state = make(aggregate=True)
    assert replies(state.handle(push(1, keys(4), 1.0, sender=W1), 0.0)) == [(1, Status.OK)]
    assert replies(state.handle(push(1, keys(4), 2.0, sender=W2, clock=0), 0.0)) == [(1, Status.OK)]
    assert replies(state.handle(push(2, keys(4), 10.0, sender=W1, clock=1), 0.0)) == [(2, Status.OK)]
    assert values(state, keys(4)) == [0.0]  # summed, not applied yet
    state.handle(tick(3, 0, W1), 0.0)
    assert values(state, keys(4)) == [0.0]
    state.handle(tick(2, 0, W2), 0.0)
    assert values(state, keys(4)) == [3.0]  # iteration 0 only
    assert sorted(state.sync[0].pending) == [1]


@pytest.mark.parametrize("chain", [(OTHER,), (OTHER, THIRD)])
def test_a_push_is_replicated_down_its_chain_and_answered_after_the_tail(chain: tuple[int, ...]) -> None:
    state = make(chain=chain)
    out = state.handle(push(1, keys(3, 4), 2.0, ts=60, body={"lw": 55}), 0.0)
    (call,) = out
    assert isinstance(call, Call) and call.node == chain[0]
    rep = call.msg
    assert rep.op == Op.REPLICATE and rep.epoch == 1
    assert rep.body == {"kind": "push", "worker": W1, "origins": [[ME, 1]], "rid": 60, "lw": 55, "again": False,
                        "chain": list(chain[1:])}
    np.testing.assert_array_equal(rep.arrays[0], keys(3, 4))
    assert values(state, keys(3, 4)) == [2.0, 2.0]  # applied here already, answered once replicated
    assert state.replicating() == [call.token]
    assert replies(state.answered(call.token)) == [(60, Status.OK)]
    assert state.replicated == {"push": 1, "agg": 0, "clock": 0} and state.replicating() == []


def test_a_replica_applies_passes_on_and_answers_after_the_rest_of_the_chain() -> None:
    state = make()
    msg = Message(Op.REPLICATE, sender=OTHER, ts=9, table=0, clock=0, arrays=[keys(HALF + 1), ones(1, 4.0)],
                  body={"kind": "push", "worker": W1, "origins": [[OTHER, 1]], "rid": 30, "lw": 0, "again": False,
                        "chain": [THIRD]})
    (call,) = state.handle(msg, 0.0)
    assert isinstance(call, Call) and call.node == THIRD and call.msg.body["chain"] == []
    assert values(state, keys(HALF + 1)) == [4.0]
    assert replies(state.answered(call.token)) == [(9, Status.OK)]
    # a copy of the same piece (same request id) is recorded and not applied again
    state.handle(Message(Op.REPLICATE, sender=OTHER, ts=10, table=0, arrays=[keys(HALF + 1), ones(1, 4.0)],
                         body={**msg.body, "again": True, "chain": []}), 0.0)
    assert values(state, keys(HALF + 1)) == [4.0]


def test_replication_from_a_master_the_key_map_dropped_is_refused_by_epoch() -> None:
    """A master cut off by a partition and declared dead comes back with its old key map:
    what it still sends down its old chain must not be applied (the workers sent those
    pushes again to the new master)."""
    state = ServerState(OTHER)
    state.set_keymap(KeyMap(2, [Assignment(KeyRange(0, KEY_SPACE), OTHER, ())]))  # epoch 2: ME is gone
    state.add_table(0, TableSpec.create("t", 1, "float32", "sum"))
    stale = Message(Op.REPLICATE, sender=ME, ts=9, table=0, clock=0, epoch=1, arrays=[keys(3), ones(1, 4.0)],
                    body={"kind": "push", "worker": W1, "origins": [[ME, 1]], "rid": 30, "lw": 0, "again": False,
                          "chain": []})
    (err,) = state.handle(stale, 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "KeyRangeError"
    assert "epoch 1" in str(err.exc) and "epoch 2" in str(err.exc) and "no longer in it" in str(err.exc)
    assert values(state, keys(3)) == [0.0] and state.replica.fenced == 1
    # the same message from a server the map still holds is applied (a slow link, not a stale master)
    state.set_keymap(KeyMap(3, [Assignment(KeyRange(0, HALF), OTHER, (ME,)), Assignment(KeyRange(HALF, KEY_SPACE), ME, ())]))
    (ok,) = state.handle(stale, 0.0)
    assert isinstance(ok, Reply) and ok.status == Status.OK and values(state, keys(3)) == [4.0]


def test_a_stale_epoch_is_answered_moved_and_the_current_one_is_an_error() -> None:
    state = make()
    (moved,) = state.handle(push(1, keys(HALF + 5), epoch=0), 0.0)
    assert isinstance(moved, Moved) and moved.body["epoch"] == 1 and moved.holders == {ME, OTHER}
    assert moved.body["keymap"]["epoch"] == 1
    (again,) = state.handle(push(1, keys(HALF + 5), epoch=0), 0.0)  # a resend gets the same answer
    assert isinstance(again, Reply) and again.status == Status.MOVED and again.body is moved.body
    (err,) = state.handle(pull(keys(HALF + 5)), 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "KeyRangeError"
    assert len(state.stores[0]) == 0 and state.moved == 1


@pytest.mark.parametrize(("msg", "kind"), [
    (push(1, keys(2, 1)), "ProtocolError"),  # not sorted
    (push(1, keys(2, 2)), "ProtocolError"),  # not distinct
    (Message(Op.PUSH, sender=W1, ts=1, table=0, epoch=1, seq=1, arrays=[keys(1), np.ones((1, 1))]), "DTypeError"),
    (Message(Op.PUSH, sender=W1, ts=1, table=0, epoch=1, seq=1, arrays=[keys(1)]), "ProtocolError"),
    (Message(Op.PUSH, sender=W1, ts=1, table=0, epoch=1, seq=1, arrays=[keys(1, 2), ones(3)]), "InvalidArgument"),
    (push(1, keys(1), body={"lw": "x"}), "ProtocolError"),
])
def test_a_malformed_push_is_answered_with_an_error_and_applies_nothing(msg: Message, kind: str) -> None:
    state = make()
    (answer,) = state.handle(msg, 0.0)
    assert isinstance(answer, Reply) and answer.status == Status.ERROR and answer.body is not None
    assert answer.body["type"] == kind
    assert len(state.stores[0]) == 0 and state.sync[0].applied == {}
    assert state.sync[0].channels[W1].done == 1  # its number is consumed: the next one goes on
    assert replies(state.handle(push(2, keys(1)), 0.0)) == [(2, Status.OK)]


def test_requests_outside_a_channel_and_unknown_tables_fail_with_typed_errors() -> None:
    state = make()
    (err,) = state.handle(Message(Op.PULL, sender=W1, ts=3, table=9, epoch=1, arrays=[keys(1)]), 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "TableError"
    (err,) = state.handle(Message(Op.PULL, sender=W1, ts=3, table=0, epoch=1, arrays=[keys(3, 1)]), 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "ProtocolError"
    (err,) = state.handle(Message(Op.BARRIER, sender=W1, ts=3), 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "ProtocolError"
    (err,) = state.handle(Message(Op.PUSH, sender=W1, ts=4, table=0, epoch=1,
                                  arrays=[keys(1), np.ones((1, 1), np.int32)]), 0.0)
    assert isinstance(err, Fail) and type(err.exc).__name__ == "DTypeError"
    assert len(state.stores[0]) == 0


def test_a_checkpoint_waits_for_its_cut_and_defers_later_pushes() -> None:
    state = make()
    state.handle(push(1, keys(1), 1.0, clock=0), 10.0)
    ck = Message(Op.CHECKPOINT, sender=W1, ts=70, body={"path": "/tmp/x", "iteration": 0, "timeout": 5.0,
                                                         "seqs": [[0, 1]]})
    (wake,) = state.handle(ck, 10.0)  # worker 7 has not finished iteration 0
    assert isinstance(wake, Wake) and wake.at == 15.0
    assert replies(state.handle(push(2, keys(1), 5.0, clock=1), 10.0)) == [(2, Status.OK)]  # after the cut
    assert values(state, keys(1)) == [1.0]  # deferred
    state.handle(tick(1, 0, W2), 10.0)
    out = state.handle(tick(3, 0, W1), 10.0)
    writes = [a for a in out if isinstance(a, WriteCheckpoint)]
    assert len(writes) == 1 and writes[0].tables[0].values.ravel().tolist() == [1.0]  # taken at the cut
    assert values(state, keys(1)) == [6.0]  # then the deferred push applied
    # one that cannot reach its cut expires
    state.handle(Message(Op.CHECKPOINT, sender=W1, ts=71, body={"path": "/tmp/x", "iteration": 5, "timeout": 1.0}),
                 20.0)
    assert state.tick(20.5) == []
    (fail,) = state.tick(21.0)
    assert isinstance(fail, Fail) and type(fail.exc).__name__ == "RequestTimeout"


def test_a_readers_pushes_and_ticks_are_refused_and_it_never_counts_in_aggregation() -> None:
    """A worker the scheduler announced as a reader (a TABLE round with ``readers``) opens no
    channel: its push and tick are refused, and an aggregating table's iteration is applied
    once the writers (not the reader) finished it."""
    state = make(aggregate=True, policy=Consistency("bounded", 0))
    spec = state.stores[0].spec.to_wire()
    create = Message(Op.TABLE, sender=0, ts=9, body={"id": 0, "spec": spec, "policy": {"kind": "bounded", "tau": 0},
                                                    "readers": [W2]})
    assert replies(state.handle(create, 0.0)) == [(9, Status.OK)]
    for msg in (push(1, keys(5), sender=W2), tick(1, 0, sender=W2)):
        out = state.handle(msg, 0.0)
        assert len(out) == 1 and isinstance(out[0], Fail) and type(out[0].exc).__name__ == "ReadOnlyError"
        assert "read-only" in str(out[0].exc)
    assert W2 not in state.sync[0].channels
    state.handle(tick(1, -1), 0.0)
    state.handle(push(2, keys(5), 2.0), 0.0)
    assert values(state, keys(5)) == [0.0]  # iteration 0 not finished by the writer yet
    state.handle(tick(3, 0), 0.0)
    assert values(state, keys(5)) == [2.0]  # applied: the reader is not waited for
    out = state.handle(pull(keys(5), sender=W2, clock=7), 0.0)  # a reader's bounded pull is not its business
    assert replies(state.handle(pull(keys(5), sender=W2, clock=0), 0.0)) == [(500, Status.OK)]
    assert out == []  # held: clock 7 under tau 0 waits for iteration 6 (readers send eventual pulls)
    state.add_tables([[1, spec, {"kind": "eventual", "tau": 0}, [W1]]])  # a registration's table list
    assert state.sync[1].readers == {W1}


def test_snapshot_reads_answer_the_table_after_a_finished_iteration() -> None:
    """A table with ``snapshots=2`` keeps the rows each of its last two applied iterations
    changed: a pull at iteration t reads the table as it was right after t, waits while t is
    unfinished, and is refused once t is no longer kept."""
    state = make()
    state.add_table(1, TableSpec.create("s", 1, "float32", "sum", aggregate=True, snapshots=2))
    seq = {W1: 0, W2: 0}

    def ordered(op: Op, sender: int, clock: int, ks: np.ndarray | None = None, v: float = 0.0) -> None:
        seq[sender] += 1
        arrays = [] if ks is None else [ks, ones(len(ks), v)]
        msg = Message(op, sender=sender, ts=1000 + seq[sender], table=1, epoch=1, clock=clock, seq=seq[sender],
                      body={"lw": 0} if op == Op.PUSH else {}, arrays=arrays,
                      key_range=(0, HALF) if op == Op.CLOCK else None)
        assert all(a.status == Status.OK for a in state.handle(msg, 0.0) if isinstance(a, Reply))

    def snap(t: int, ts: int = 700) -> list[Any]:
        body = {"snapshot": t, "consistency": {"kind": "eventual", "tau": 0}}
        return state.handle(Message(Op.PULL, sender=99, ts=ts, table=1, epoch=1, body=body, arrays=[keys(1, 2, 3)]),
                            0.0)

    def answer(out: list[Any]) -> list[float]:
        assert len(out) == 1 and isinstance(out[0], Reply) and out[0].status == Status.OK, out
        return [float(x) for x in out[0].arrays[0].ravel()]

    for w in (W1, W2):
        ordered(Op.CLOCK, w, -1)  # the writers join the table's channels
    ordered(Op.PUSH, W1, 0, keys(1, 2), 1.0)
    ordered(Op.PUSH, W2, 0, keys(2), 1.0)
    assert snap(0) == []  # held: iteration 0 is not finished
    ordered(Op.CLOCK, W1, 0)
    ordered(Op.CLOCK, W2, 0)
    ordered(Op.PUSH, W1, 1, keys(1), 10.0)
    for w in (W1, W2):
        ordered(Op.CLOCK, w, 1)
    ordered(Op.PUSH, W2, 2, keys(2, 3), 100.0)
    for w in (W1, W2):
        ordered(Op.CLOCK, w, 2)
    assert [float(x) for x in state.stores[1].pull(keys(1, 2, 3)).ravel()] == [11.0, 102.0, 100.0]
    assert answer(snap(0)) == [1.0, 2.0, 0.0]
    assert answer(snap(1)) == [11.0, 2.0, 0.0]
    assert answer(snap(2)) == [11.0, 102.0, 100.0]
    (old,) = snap(-1)
    assert isinstance(old, Fail) and "no longer kept" in str(old.exc)
    assert snap(3, ts=701) == []  # held until iteration 3 is applied
    ordered(Op.PUSH, W1, 3, keys(3), 1.0)
    ordered(Op.CLOCK, W1, 3)
    seq[W2] += 1
    out = state.handle(Message(Op.CLOCK, sender=W2, ts=5000, table=1, epoch=1, clock=3, seq=seq[W2],
                               key_range=(0, HALF)), 0.0)
    released = [a for a in out if isinstance(a, Reply) and a.msg.ts == 701]
    assert answer(released) == [11.0, 102.0, 101.0]
    assert answer(snap(1)) == [11.0, 2.0, 0.0]  # iterations 2 and 3 are logged: 1 is still kept
    assert isinstance(snap(0)[0], Fail)
    range_pull = Message(Op.PULL_RANGE, sender=99, ts=9, table=1, epoch=1, key_range=(0, HALF), body={"snapshot": 1})
    assert "not to range pulls" in str(state.handle(range_pull, 0.0)[0].exc)
    plain = Message(Op.PULL, sender=99, ts=9, table=0, epoch=1, body={"snapshot": 1}, arrays=[keys(1)])
    assert "keeps no snapshots" in str(state.handle(plain, 0.0)[0].exc)
