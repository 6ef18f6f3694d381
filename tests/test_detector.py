"""Failure detection without sockets: the Detector and the scheduler core's probes."""

from __future__ import annotations

from typing import Any

from helpers import tick_probing
from paramserver.protocol import Message, Op
from paramserver.scheduler import Connect, Disconnect, Probe, SchedulerCore, Send
from paramserver.scheduler._detector import PROBE_GRACE_S, Detector

REFUSED = "nothing listens there (connection refused)"


def test_a_broken_link_is_probed_once_and_a_refused_probe_is_a_death() -> None:
    d = Detector(heartbeat_timeout=2.0, probe_timeout=0.5, hung_timeout=30.0)
    assert d.suspect(3, "tcp://h:1", "its link broke", 0.0) == Probe(3, "tcp://h:1", 0.5)
    assert d.suspect(3, "tcp://h:1", "its link broke again", 0.1) is None  # one probe at a time
    assert d.probed(3, REFUSED, 0.2) == f"its link broke, and a probe of its address failed: {REFUSED}"
    assert d.probed(3, REFUSED, 0.3) is None  # no probe outstanding any more


def test_a_silent_node_whose_probe_connects_is_not_dead_until_it_hangs() -> None:
    d = Detector(heartbeat_timeout=2.0, probe_timeout=0.5, hung_timeout=30.0)
    assert d.check(1, "tcp://h:1", 1.9, 1.9) is None
    probe = d.check(1, "tcp://h:1", 2.1, 2.1)
    assert isinstance(probe, Probe)
    assert d.check(1, "tcp://h:1", 2.3, 2.3) is None  # the probe is still out
    assert d.probed(1, "", 2.4) is None  # it connected: slow, not dead
    assert d.check(1, "tcp://h:1", 3.0, 3.0) is None  # probed alive recently
    assert isinstance(d.check(1, "tcp://h:1", 4.5, 4.5), Probe)  # probed again after another timeout
    assert d.probed(1, "", 4.6) is None
    assert d.check(1, "tcp://h:1", 1.0, 5.0) is None  # it spoke again: all forgotten
    why = d.check(1, "tcp://h:1", 30.5, 40.0)
    assert isinstance(why, str) and "hung" in why and "PS_HUNG_TIMEOUT=30" in why


def test_a_probe_whose_outcome_never_came_starts_again() -> None:
    d = Detector(heartbeat_timeout=2.0, probe_timeout=0.5, hung_timeout=30.0)
    assert d.suspect(2, "tcp://h:1", "x", 0.0) is not None
    assert d.suspect(2, "tcp://h:1", "x", 0.5 + PROBE_GRACE_S - 0.1) is None
    assert d.suspect(2, "tcp://h:1", "x", 0.5 + PROBE_GRACE_S + 0.1) is not None


def _cluster() -> tuple[SchedulerCore, int, int, int]:
    core = SchedulerCore(address="mem://0", num_servers=2, replicas=2, heartbeat_timeout=2.0, request_timeout=30.0)
    ids = []
    for role in ("server", "server", "worker"):
        out: list[Any] = core.handle(Message(Op.REGISTER, sender=-1, ts=1, body={
            "role": role, "address": f"tcp://127.0.0.1:{5000 + len(ids)}", "pid": 1, "host": "h"}), 0.0)
        ids.append(next(a for a in out if isinstance(a, Connect)).node)
        for s in [a for a in out if isinstance(a, Send) and a.msg.op == Op.NODES]:
            core.handle(Message(Op.NODES, sender=s.node, ts=s.msg.ts, response=True), 0.0)
    return core, ids[0], ids[1], ids[2]


def test_a_reported_crash_fails_the_server_over_at_once() -> None:
    core, s1, s2, w = _cluster()
    out = core.handle(Message(Op.SUSPECT, sender=w, ts=7, body={"node": s1, "why": "seen by worker 3"}), 0.5)
    assert next(a for a in out if isinstance(a, Send)).msg.response  # the report is answered
    (probe,) = [a for a in out if isinstance(a, Probe)]
    assert probe == Probe(s1, "tcp://127.0.0.1:5000", 0.5)
    assert core.suspect(s1, "the scheduler's link to it broke", 0.5) == []  # the probe is out already
    out = core.probed(s1, REFUSED, 0.51)
    assert [a.node for a in out if isinstance(a, Disconnect)] == [s1]
    assert core.keymap is not None and core.keymap.servers() == [s2] and core.failovers == 1
    assert any(e[1] == "failure" and "seen by worker" in e[3] for e in core.timeline.to_wire())


def test_a_suspect_that_answers_the_probe_stays_and_strangers_are_ignored() -> None:
    core, s1, _, _ = _cluster()
    assert len(core.suspect(s1, "its link broke", 1.0)) == 1
    assert core.probed(s1, "", 1.01) == [] and s1 in core.nodes
    assert core.suspect(99, "unknown", 1.0) == []


def test_a_late_heartbeat_alone_declares_nobody_dead() -> None:
    """A stopped or busy server (its port still accepts connections) is probed, not failed."""
    core, s1, s2, w = _cluster()
    for t in (1.0, 2.0, 3.0, 4.0):
        core.handle(Message(Op.HEARTBEAT, sender=w, ts=9), t)
        core.handle(Message(Op.HEARTBEAT, sender=s2, ts=9), t)
    out = tick_probing(core, 4.0, error="")  # s1 silent for 4 s, but its probe connects
    assert not [a for a in out if isinstance(a, Disconnect)] and s1 in core.nodes
    out = tick_probing(core, 4.5)
    assert [a.node for a in out if isinstance(a, Disconnect)] == []  # probed alive 0.5 s ago: not again yet
    core.handle(Message(Op.HEARTBEAT, sender=w, ts=9), 6.0)
    core.handle(Message(Op.HEARTBEAT, sender=s2, ts=9), 6.0)
    out = tick_probing(core, 6.1)  # still silent, and now its probe fails: dead
    assert [a.node for a in out if isinstance(a, Disconnect)] == [s1]
