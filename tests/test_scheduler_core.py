"""The scheduler's state machine, driven with plain messages (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import tick_probing
from paramserver.protocol import Message, Op, Status
from paramserver.scheduler import Connect, Disconnect, Finish, SchedulerCore, Send
from paramserver.table import TableSpec


def sends(actions: list[Any], op: Op | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (op is None or a.msg.op == op)]


def register(core: SchedulerCore, role: str, now: float = 0.0, rank: int = -1) -> tuple[int, list[Any]]:
    msg = Message(Op.REGISTER, sender=-1, ts=1, body={"role": role, "address": "tcp://127.0.0.1:5000", "pid": 1,
                                                      "host": "h", "rank": rank})
    actions = core.handle(msg, now)
    connect = next(a for a in actions if isinstance(a, Connect))
    return connect.node, actions


def ack_all(core: SchedulerCore, actions: list[Any], op: Op, now: float = 0.0, status: Status = Status.OK,
            body: dict[str, Any] | None = None) -> list[Any]:
    out: list[Any] = []
    for s in sends(actions, op):
        out += core.handle(Message(op, sender=s.node, ts=s.msg.ts, response=True, status=status, body=body or {}),
                           now)
    return out


def make(num_servers: int = 2, num_workers: int = 0) -> SchedulerCore:
    return SchedulerCore(address="mem://0", num_servers=num_servers, num_workers=num_workers,
                         heartbeat_timeout=5.0, request_timeout=30.0)


def test_registration_waits_for_all_servers_then_answers_everyone() -> None:
    core = make()
    s1, a1 = register(core, "server")
    w1, a2 = register(core, "worker")
    assert not sends(a1, Op.REGISTER) and not sends(a2, Op.REGISTER)
    s2, a3 = register(core, "server")
    replies = sends(a3, Op.REGISTER)
    assert {r.node for r in replies} == {s1, w1, s2}
    body = replies[0].msg.body
    assert body["keymap"]["epoch"] == 1 and len(body["keymap"]["ranges"]) == 2
    assert {n[0] for n in body["nodes"]} == {0, s1, s2, w1}
    assert next(r for r in replies if r.node == w1).msg.body["rank"] == 0


def test_late_worker_is_announced_to_servers_before_its_reply() -> None:
    core = make()
    s1, _ = register(core, "server")
    s2, _ = register(core, "server")
    w, actions = register(core, "worker")
    assert not sends(actions, Op.REGISTER)
    broadcast = sends(actions, Op.NODES)
    assert {b.node for b in broadcast} == {s1, s2}
    assert w in {n[0] for n in broadcast[0].msg.body["nodes"]}
    after = ack_all(core, actions, Op.NODES)
    assert [r.node for r in sends(after, Op.REGISTER)] == [w]


def test_barrier_counts_the_fixed_number_of_workers() -> None:
    core = make(num_servers=1, num_workers=2)
    register(core, "server")
    w1, _ = register(core, "worker")
    out = core.handle(Message(Op.BARRIER, sender=w1, ts=5, body={"group": "workers"}), 0)
    assert not sends(out)
    w2, a = register(core, "worker")
    out = ack_all(core, a, Op.NODES)
    out += core.handle(Message(Op.BARRIER, sender=w2, ts=6, body={"group": "workers"}), 0)
    released = sends(out, Op.BARRIER)
    assert sorted((r.node, r.msg.ts) for r in released) == [(w1, 5), (w2, 6)]


def test_barrier_rejects_unknown_groups_and_outsiders() -> None:
    core = make(num_servers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    out = core.handle(Message(Op.BARRIER, sender=w, ts=1, body={"group": "everyone"}), 0)
    assert out[0].msg.status == Status.ERROR and "unknown barrier group" in out[0].msg.body["message"]
    out = core.handle(Message(Op.BARRIER, sender=99, ts=1, body={}), 0)
    assert out[0].msg.body["type"] == "JobAborted"


def test_table_creation_conflict_and_attach() -> None:
    core = make(num_servers=2)
    s1, _ = register(core, "server")
    s2, _ = register(core, "server")
    w1, _ = register(core, "worker")
    spec = TableSpec.create("w", width=2).to_wire()
    out = core.handle(Message(Op.TABLE, sender=w1, ts=3, body={"spec": spec}), 0)
    assert {s.node for s in sends(out, Op.TABLE)} == {s1, s2}
    # a second worker asks for the same table while it is being created: it waits
    assert core.handle(Message(Op.TABLE, sender=w1, ts=4, body={"spec": spec}), 0) == []
    done = ack_all(core, out, Op.TABLE)
    assert sorted(r.msg.ts for r in sends(done, Op.TABLE)) == [3, 4]
    assert all(r.msg.body == {"id": 0, "policy": {"kind": "eventual", "tau": 0}} for r in sends(done, Op.TABLE))
    other = TableSpec.create("w", width=3).to_wire()
    out = core.handle(Message(Op.TABLE, sender=w1, ts=5, body={"spec": other}), 0)
    assert out[0].msg.status == Status.ERROR and out[0].msg.body["type"] == "TableError"


def test_table_creation_failure_on_a_server_is_reported_and_forgotten() -> None:
    core = make(num_servers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    spec = TableSpec.create("u", updater="nomod:X").to_wire()
    out = core.handle(Message(Op.TABLE, sender=w, ts=3, body={"spec": spec}), 0)
    done = ack_all(core, out, Op.TABLE, status=Status.ERROR,
                   body={"type": "ConfigError", "message": "cannot import updater 'nomod:X'"})
    assert "cannot import updater" in sends(done)[0].msg.body["message"]
    out = core.handle(Message(Op.TABLE, sender=w, ts=4, body={"spec": spec}), 0)
    assert sends(out, Op.TABLE)[0].node != w  # asked the servers again


def test_dead_server_ends_the_job_with_its_name() -> None:
    core = make(num_servers=1)
    s, _ = register(core, "server", now=0)
    w, _ = register(core, "worker", now=0)
    core.handle(Message(Op.HEARTBEAT, sender=w, ts=9), 4.0)
    out = tick_probing(core, 6.0)
    finish = next(a for a in out if isinstance(a, Finish))
    assert finish.code == 1 and f"server {s}" in finish.reason and "no heartbeat" in finish.reason
    assert {x.node for x in sends(out, Op.SHUTDOWN)} == {w}


def test_fixed_job_ends_when_all_workers_say_bye() -> None:
    core = make(num_servers=1, num_workers=2)
    s, _ = register(core, "server")
    w1, _ = register(core, "worker")
    w2, a = register(core, "worker")
    ack_all(core, a, Op.NODES)
    out = core.handle(Message(Op.BYE, sender=w1, ts=1), 0)
    assert not any(isinstance(x, Finish) for x in out)
    out = core.handle(Message(Op.BYE, sender=w2, ts=1), 0)
    finish = next(x for x in out if isinstance(x, Finish))
    assert finish.code == 0 and "all 2 workers are done" in finish.reason
    assert [x.node for x in sends(out, Op.SHUTDOWN)] == [s]


def test_dynamic_worker_death_releases_barriers() -> None:
    core = make(num_servers=1)
    s, _ = register(core, "server")
    w1, a1 = register(core, "worker")
    w2, _ = register(core, "worker")  # waits for w1's round
    ack_all(core, ack_all(core, a1, Op.NODES), Op.NODES)  # both rounds answered
    assert core.handle(Message(Op.BARRIER, sender=w1, ts=7, body={}), 0) == []
    core.handle(Message(Op.HEARTBEAT, sender=w1, ts=8), 9.0)
    core.handle(Message(Op.HEARTBEAT, sender=s, ts=8), 9.0)
    out = tick_probing(core, 9.5)  # w2 silent for 9.5 s > 5
    assert any(isinstance(x, Disconnect) and x.node == w2 for x in out)
    assert [(r.node, r.msg.ts) for r in sends(out, Op.BARRIER)] == [(w1, 7)]
    assert not any(isinstance(x, Finish) for x in out)


def test_a_worker_waiting_for_its_registration_is_not_timed_out_with_a_dying_server() -> None:
    """A worker registers while a server is dying: its answer waits for that server's NODES
    reply, so it cannot heartbeat yet. When the server is declared dead the worker is answered
    and timed from then, not declared dead with the server."""
    core = make(num_servers=2, num_workers=0)
    s1, _ = register(core, "server", now=0)
    s2, out = register(core, "server", now=0)
    w, out = register(core, "worker", now=1.0)  # the round asks s1 and s2 about the worker
    assert not sends(out, Op.REGISTER) and {x.node for x in sends(out, Op.NODES)} == {s1, s2}
    core.handle(Message(Op.NODES, sender=s1, ts=sends(out, Op.NODES)[0].msg.ts, response=True), 1.0)
    core.handle(Message(Op.HEARTBEAT, sender=s1, ts=9), 5.5)
    out = tick_probing(core, 5.5)  # s2 silent since 0 (> 5 s); the worker registered 4.5 s ago, unanswered
    assert [x.node for x in out if isinstance(x, Disconnect)] == [s2]
    assert [r.node for r in sends(out, Op.REGISTER)] == [w]
    assert w in core.nodes
    core.handle(Message(Op.HEARTBEAT, sender=s1, ts=10), 10.0)
    assert not [x for x in tick_probing(core, 10.0) if isinstance(x, Disconnect)]  # 4.5 s after its answer
    out = tick_probing(core, 10.6)  # and silent 5.1 s after its answer: now it is dead
    assert [x.node for x in out if isinstance(x, Disconnect)] == [w]


def test_a_worker_answered_in_the_tick_that_fails_a_server_is_timed_from_its_answer() -> None:
    """The server's failure ends the round that held the worker's registration, within the
    same tick: the worker, silent since it registered (longer than the timeout), is then
    answered and timed from now, not declared dead on the time read before the failure."""
    core = make(num_servers=2, num_workers=0)
    s1, _ = register(core, "server", now=0)
    s2, out = register(core, "server", now=0)
    w, out = register(core, "worker", now=0.2)
    core.handle(Message(Op.NODES, sender=s1, ts=sends(out, Op.NODES)[0].msg.ts, response=True), 0.3)
    core.handle(Message(Op.HEARTBEAT, sender=s1, ts=9), 5.5)
    out = tick_probing(core, 5.5)  # s2 silent 5.5 s > 5 fails; the worker registered 5.3 s ago
    assert [x.node for x in out if isinstance(x, Disconnect)] == [s2]
    assert [r.node for r in sends(out, Op.REGISTER)] == [w] and w in core.nodes


def test_too_many_workers_are_refused() -> None:
    core = make(num_servers=1, num_workers=1)
    register(core, "server")
    register(core, "worker")
    _, out = register(core, "worker")
    assert "already has its 1 worker" in sends(out)[0].msg.body["message"]


def test_a_late_server_joins_by_two_phase_migration() -> None:
    core = make(num_servers=1)
    s1, _ = register(core, "server")
    s2, out = register(core, "server")
    out = ack_all(core, out, Op.NODES)  # the running server learns of the new one first
    assert [r.node for r in sends(out, Op.REGISTER)] == [s2]
    copies = sends(out, Op.MIGRATE)  # phase 1: the master copies half its keys into the new server
    assert [c.node for c in copies] == [s1] and copies[0].msg.body["phase"] == "copy"
    assert copies[0].msg.body["plan"] == [[s2, [[2**63, 2**64 - 1]]]]
    assert core.keymap is not None and core.keymap.epoch == 1  # the map switches only after the copy
    out = ack_all(core, copies, Op.MIGRATE)
    switches = sends(out, Op.MIGRATE)  # phase 2: both servers adopt the new map and drain their chains
    assert {c.node for c in switches} == {s1, s2} and switches[0].msg.body["phase"] == "switch"
    assert switches[0].msg.body["keymap"]["epoch"] == 3 and not sends(out, Op.NODES)
    assert core.migrations == 0  # not done before every server switched
    out = ack_all(core, switches, Op.MIGRATE)
    broadcast = sends(out, Op.NODES)  # then the new map, to every node
    assert {b.node for b in broadcast} == {s1, s2}
    assert core.keymap.epoch == 3 and [a.master for a in core.keymap] == [s1, s2]
    assert core.migrations == 1


def test_status_gathers_every_server_and_tolerates_silence() -> None:
    core = make(num_servers=2)
    s1, _ = register(core, "server")
    s2, _ = register(core, "server")
    c, _ = register(core, "client")
    out = core.handle(Message(Op.STATUS, sender=c, ts=2), 0)
    asks = sends(out, Op.STATUS)
    core.handle(Message(Op.STATUS, sender=s1, ts=asks[0].msg.ts, response=True, body={"pid": 5}), 1)
    core.handle(Message(Op.HEARTBEAT, sender=s1, ts=3), 29)
    core.handle(Message(Op.HEARTBEAT, sender=s2, ts=3), 29)
    out = tick_probing(core, 31.0)  # request_timeout 30 passed for s2
    reply = sends(out, Op.STATUS)[0]
    assert reply.node == c
    assert reply.msg.body["servers"][str(s1)] == {"pid": 5}
    assert "no answer within 30 s" in reply.msg.body["servers"][str(s2)]["error"]


@pytest.mark.parametrize("body", [{}, {"role": "server"}, {"role": 5, "address": "x"}, {"role": "boss", "address": "x"},
                                  {"role": "worker", "address": "garbage"}, {"role": "worker", "address": "tcp://h:0"}])
def test_malformed_registrations_raise_protocol_errors(body: dict[str, Any]) -> None:
    from paramserver import ProtocolError

    core = make()
    with pytest.raises(ProtocolError):
        core.handle(Message(Op.REGISTER, sender=-1, ts=1, body=body), 0)


def test_a_node_declared_dead_that_speaks_again_is_told_to_exit() -> None:
    """A healed partition: the scheduler has forgotten the node (no link to it any more),
    yet opens one for the answer that it is no longer a member; an id never seen gets the
    plain refusal and no link."""
    core = make(num_servers=1)
    s, _ = register(core, "server")
    w, a = register(core, "worker")
    ack_all(core, a, Op.NODES)
    core.handle(Message(Op.HEARTBEAT, sender=s, ts=8), 9.0)
    out = tick_probing(core, 9.5)  # the worker silent for 9.5 s > 5, and its probe fails: dead
    assert any(isinstance(x, Disconnect) and x.node == w for x in out)
    back = core.handle(Message(Op.HEARTBEAT, sender=w, ts=9), 10.0)
    assert [type(x) for x in back] == [Connect, Send, Disconnect]
    connect, answer, _ = back
    assert connect.node == w and connect.address == "tcp://127.0.0.1:5000"
    assert answer.node == w and answer.msg.status == Status.ERROR
    assert answer.msg.body["type"] == "JobAborted" and "declared dead" in answer.msg.body["message"]
    (refusal,) = core.handle(Message(Op.HEARTBEAT, sender=99, ts=10), 10.0)
    assert isinstance(refusal, Send) and "never registered" in refusal.msg.body["message"]
