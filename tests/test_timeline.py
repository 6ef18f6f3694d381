"""The scheduler's timeline and the nodes' heartbeat reports, driven with plain messages."""

from __future__ import annotations

from typing import Any

from helpers import tick_probing
from paramserver.protocol import ClusterStatus, Message, Op, Status
from paramserver.scheduler import SchedulerCore
from test_scheduler_core import ack_all, make, register, sends


def status(core: SchedulerCore, now: float) -> ClusterStatus:
    client, _ = register(core, "client", now)
    out = core.handle(Message(Op.STATUS, sender=client, ts=77), now)
    out = ack_all(core, out, Op.STATUS, now, body={"tables": {}})
    return ClusterStatus.from_wire(next(s for s in sends(out, Op.STATUS) if s.node == client).msg.body)


def beat(core: SchedulerCore, node: int, now: float, report: Any) -> list[Any]:
    return core.handle(Message(Op.HEARTBEAT, sender=node, ts=5, body={"report": report}), now)


def test_joins_reports_checkpoints_failures_and_finishes_in_order() -> None:
    core = make(num_servers=1, num_workers=2)
    s, _ = register(core, "server", 1.0)
    w1, a = register(core, "worker", 2.0)
    w2, _ = register(core, "worker", 2.2)
    ack_all(core, ack_all(core, a, Op.NODES, 2.5), Op.NODES, 2.5)  # w1's round, then w2's
    assert [e[1:3] for e in core.timeline.to_wire()] == [["join", s], ["join", w1], ["join", w2]]

    assert sends(beat(core, w1, 3.0, {"iteration": 4, "checkpoints": 0}))[0].msg.status == Status.OK
    beat(core, w1, 3.5, {"iteration": 5, "checkpoints": 1, "checkpoint_iteration": 4})
    beat(core, w1, 4.0, {"iteration": 6, "checkpoints": 1, "checkpoint_iteration": 4})  # no new checkpoint
    beat(core, w2, 4.0, {"iteration": 2})
    st = status(core, 4.5)
    assert st.reports == {str(w1): {"iteration": 6, "checkpoints": 1, "checkpoint_iteration": 4, "age": 0.5},
                          str(w2): {"iteration": 2, "age": 0.5}}
    checkpoint = [e for e in st.events if e[1] == "checkpoint"]
    assert checkpoint == [[3.5, "checkpoint", w1, f"worker {w1} rank 0 (pid 1 at tcp://127.0.0.1:5000) wrote a "
                                                  f"checkpoint of iteration 4"]]

    out = core.handle(Message(Op.BYE, sender=w2, ts=6), 5.0)
    assert sends(out, Op.BYE)
    core.handle(Message(Op.HEARTBEAT, sender=s, ts=5), 7.0)
    core.handle(Message(Op.HEARTBEAT, sender=w1, ts=5), 12.0)
    out = tick_probing(core, 13.0)  # the server's heartbeat is 6 s old (timeout 5): it died, the job ends
    kinds = [(e[1], e[2]) for e in core.timeline.to_wire()]
    assert kinds[-2:] == [("finish", w2), ("failure", s)]
    assert "no heartbeat" in core.timeline.to_wire()[-1][3]
    times = [e[0] for e in core.timeline.to_wire()]
    assert times == sorted(times)
    assert str(w2) not in core.timeline.reports(13.0)  # gone with its node


def test_a_malformed_report_is_answered_with_an_error_and_kept_out() -> None:
    core = make(num_servers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    out = beat(core, w, 1.0, [1, 2])
    assert out[0].msg.status == Status.ERROR and "field 'report' must be dict" in out[0].msg.body["message"]
    assert core.timeline.reports(1.0) == {}
    assert sends(core.handle(Message(Op.HEARTBEAT, sender=w, ts=5), 1.5))[0].msg.status == Status.OK


def test_failure_and_failover_are_on_the_timeline() -> None:
    core = SchedulerCore(address="mem://0", num_servers=3, replicas=2, heartbeat_timeout=5.0, request_timeout=30.0)
    register(core, "server")
    s2, _ = register(core, "server")
    register(core, "server")
    out = core.node_failed(s2, f"server {s2} died", 3.0)
    kinds = [(e[1], e[2]) for e in core.timeline.to_wire()]
    assert kinds[-2:] == [("failure", s2), ("failover", s2)]
    assert core.timeline.to_wire()[-1][3].startswith(f"the replicas of server {s2} took over its ranges")
    assert sends(out, Op.NODES)


def test_odd_checkpoint_counts_are_no_events() -> None:
    core = make(num_servers=1)
    register(core, "server")
    w, _ = register(core, "worker")
    beat(core, w, 1.0, {"checkpoints": "x"})
    beat(core, w, 2.0, {"checkpoints": True})
    beat(core, w, 3.0, {"checkpoints": 2})
    assert [e[1] for e in core.timeline.to_wire() if e[1] == "checkpoint"] == ["checkpoint"]


def test_a_drain_is_a_migration_then_a_drain_on_the_timeline() -> None:
    core = make(num_servers=2)
    s1, _ = register(core, "server")
    s2, _ = register(core, "server")
    c, _ = register(core, "client")
    out = core.handle(Message(Op.DRAIN, sender=c, ts=4, body={"node": s2}), 1.0)
    out = ack_all(core, out, Op.MIGRATE, 2.0)  # copy
    out = ack_all(core, out, Op.MIGRATE, 3.0)  # switch
    assert sends(out, Op.DRAIN)[0].node == c
    assert [e[1:] for e in core.timeline.to_wire()[2:]] == [
        ["migration", -1, f"drain server {s2}: key map epoch 3"],
        ["drain", s2, f"server {s2} was drained and stops"]]
    assert [e[0] for e in core.timeline.to_wire()[2:]] == [3.0, 3.0]
    assert s1 in core.nodes and s2 not in core.nodes
