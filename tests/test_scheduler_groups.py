"""Worker groups, readers and namespaces in the scheduler's state machine (no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import tick_probing
from paramserver import InvalidArgument
from paramserver.protocol import Message, Op, Status
from paramserver.scheduler import Connect, Finish, SchedulerCore, Send
from paramserver.table import TableSpec


def sends(actions: list[Any], op: Op | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (op is None or a.msg.op == op)]


def register(core: SchedulerCore, role: str = "worker", group: str = "", size: int = 0,
             rank: int = -1) -> tuple[int, list[Any]]:
    body: dict[str, Any] = {"role": role, "address": "tcp://127.0.0.1:5000", "pid": 1, "host": "h", "rank": rank}
    if group:
        body.update(group=group, group_workers=size)
    actions = core.handle(Message(Op.REGISTER, sender=-1, ts=1, body=body), 0.0)
    return next(a for a in actions if isinstance(a, Connect)).node, actions


def ack_all(core: SchedulerCore, actions: list[Any], op: Op, status: Status = Status.OK) -> list[Any]:
    out: list[Any] = []
    for s in sends(actions, op):
        out += core.handle(Message(op, sender=s.node, ts=s.msg.ts, response=True, status=status), 0.0)
    return out


def joined(core: SchedulerCore, group: str = "", size: int = 0, rank: int = -1) -> tuple[int, dict[str, Any]]:
    """Register a worker into a running cluster and answer the NODES round: (id, its reply body)."""
    w, out = register(core, group=group, size=size, rank=rank)
    reply = [r for r in sends(ack_all(core, out, Op.NODES), Op.REGISTER) if r.node == w]
    assert len(reply) == 1
    return w, reply[0].msg.body


def cluster(num_workers: int = 0) -> tuple[SchedulerCore, int]:
    core = SchedulerCore(address="mem://0", num_servers=1, num_workers=num_workers, heartbeat_timeout=5.0,
                         request_timeout=30.0)
    s, _ = register(core, "server")
    return core, s


def declare(core: SchedulerCore, w: int, name: str, ts: int, **fields: Any) -> list[Any]:
    body = {"spec": TableSpec.create(name).to_wire(), **fields}
    return core.handle(Message(Op.TABLE, sender=w, ts=ts, body=body), 0.0)


def test_ranks_sizes_and_node_entries_are_per_group() -> None:
    core, _ = cluster(num_workers=2)
    w0, b0 = joined(core)
    r0, c0 = joined(core, "serve", size=3)
    _r1, c1 = joined(core, "serve")  # size 0: takes the group's
    _w1, b1 = joined(core)
    assert [b0["rank"], b1["rank"], c0["rank"], c1["rank"]] == [0, 1, 0, 1]
    assert b0["num_workers"] == 2 and c0["num_workers"] == 3 and c1["num_workers"] == 3
    assert "group" not in b0 and c0["group"] == "serve"
    entries = {n[0]: n for n in c1["nodes"]}
    assert len(entries[w0]) == 6 and entries[r0][6] == "serve"  # the default group travels as before
    _, out = register(core, group="serve", size=2)
    assert "has 3 workers" in sends(out)[0].msg.body["message"]
    _, out = register(core, group="no spaces")
    assert sends(out)[0].msg.status == Status.ERROR and "invalid worker group name" in sends(out)[0].msg.body["message"]


def test_workers_barrier_is_per_group_and_all_counts_every_group() -> None:
    core, s = cluster()
    w0, _ = joined(core)
    r0, _ = joined(core, "serve")
    r1, _ = joined(core, "serve")
    assert core.handle(Message(Op.BARRIER, sender=r0, ts=5, body={"group": "workers"}), 0) == []
    out = core.handle(Message(Op.BARRIER, sender=w0, ts=6, body={"group": "workers"}), 0)
    assert [(r.node, r.msg.ts) for r in sends(out, Op.BARRIER)] == [(w0, 6)]  # alone in its group
    out = core.handle(Message(Op.BARRIER, sender=r1, ts=7, body={"group": "workers"}), 0)
    assert sorted((r.node, r.msg.ts) for r in sends(out, Op.BARRIER)) == [(r0, 5), (r1, 7)]
    for nid in (w0, r0, r1):
        assert core.handle(Message(Op.BARRIER, sender=nid, ts=8, body={"group": "all"}), 0) == []
    out = core.handle(Message(Op.BARRIER, sender=s, ts=9, body={"group": "all"}), 0)
    assert len(sends(out, Op.BARRIER)) == 4


def test_a_group_ending_does_not_end_the_job_until_every_group_is_done() -> None:
    core, s = cluster(num_workers=1)
    w, _ = joined(core)
    r, _ = joined(core, "serve", size=1)
    late, _ = joined(core, "query")  # a dynamic group
    out = core.handle(Message(Op.BYE, sender=r, ts=1), 0)
    assert not any(isinstance(x, Finish) for x in out) and core.groups["serve"].ended
    _, out = register(core, group="serve")  # an ended group admits nobody
    assert "already has its 1 worker" in sends(out)[0].msg.body["message"]
    out = core.handle(Message(Op.BYE, sender=w, ts=1), 0)
    assert not any(isinstance(x, Finish) for x in out)  # a worker of "query" is still there
    out = core.handle(Message(Op.BYE, sender=late, ts=1), 0)
    finish = next(x for x in out if isinstance(x, Finish))
    assert finish.code == 0 and "every worker group is done" in finish.reason
    assert [x.node for x in sends(out, Op.SHUTDOWN)] == [s]


def test_the_death_of_a_dynamic_groups_worker_does_not_end_a_fixed_job() -> None:
    core, s = cluster(num_workers=1)
    w, _ = joined(core)
    r, _ = joined(core, "serve")
    core.handle(Message(Op.HEARTBEAT, sender=w, ts=2), 9.0)
    core.handle(Message(Op.HEARTBEAT, sender=s, ts=2), 9.0)
    out = tick_probing(core, 9.5)  # r silent
    assert r not in core.nodes and not any(isinstance(x, Finish) for x in out)
    out = core.handle(Message(Op.BYE, sender=w, ts=1), 9.5)
    assert next(x for x in out if isinstance(x, Finish)).code == 0


def test_shard_sets_are_per_group() -> None:
    core, _ = cluster()
    w, _ = joined(core)
    r, _ = joined(core, "serve")
    ask = {"set": "train", "shards": [1, 2], "epochs": 1, "done": None}
    a = sends(core.handle(Message(Op.TASK, sender=w, ts=3, body=ask), 0))[0].msg.body
    b = sends(core.handle(Message(Op.TASK, sender=r, ts=3, body={**ask, "shards": [7]}), 0))[0].msg.body
    assert (a["state"], a["shard"], b["state"], b["shard"]) == ("task", 0, "task", 0)  # not "declared differently"
    assert core.shards is core.groups["default"].shards and "train" in core.groups["serve"].shards.sets


def test_a_reader_is_announced_to_every_server_before_it_is_answered() -> None:
    core, s = cluster()
    w, _ = joined(core)
    r, _ = joined(core, "serve")
    out = declare(core, w, "t", 2)
    creates = sends(out, Op.TABLE)
    assert [c.node for c in creates] == [s] and "readers" not in creates[0].msg.body
    ack_all(core, out, Op.TABLE)
    out = declare(core, r, "t", 3, readonly=True)
    rounds = sends(out, Op.TABLE)
    assert [x.node for x in rounds] == [s] and rounds[0].msg.body["readers"] == [r]  # not answered yet
    answered = sends(ack_all(core, out, Op.TABLE), Op.TABLE)
    assert [(x.node, x.msg.body["id"]) for x in answered] == [(r, 0)]
    assert sends(declare(core, r, "t", 4, readonly=True), Op.TABLE)[0].node == r  # known: answered at once
    assert core._table_list()[0][3] == [r]  # a server joining later learns the readers


def test_a_reader_that_creates_a_table_or_waits_for_its_creation() -> None:
    core, s = cluster()
    w, _ = joined(core)
    r, _ = joined(core, "serve")
    r2, _ = joined(core, "serve")
    out = declare(core, r, "t", 2, readonly=True)
    assert sends(out, Op.TABLE)[0].msg.body["readers"] == [r]
    assert declare(core, r2, "t", 3, readonly=True) == [] and declare(core, w, "t", 4) == []  # both wait
    done = ack_all(core, out, Op.TABLE)
    assert sorted(x.node for x in sends(done, Op.TABLE) if x.msg.response) == sorted([r, w])
    second = [x for x in sends(done, Op.TABLE) if not x.msg.response]
    assert [x.node for x in second] == [s] and second[0].msg.body["readers"] == [r, r2]
    assert [x.node for x in sends(ack_all(core, done, Op.TABLE), Op.TABLE)] == [r2]


def test_namespace_writers_refuse_other_groups_writable_declarations() -> None:
    core, _ = cluster()
    w, _ = joined(core, "train")
    r, _ = joined(core, "serve")
    out = declare(core, w, "ctr/emb", 2, writers=["train"])
    ack_all(core, out, Op.TABLE)
    refused = sends(declare(core, r, "ctr/emb", 3), Op.TABLE)[0].msg
    assert refused.status == Status.ERROR and refused.body["type"] == "ReadOnlyError"
    assert "may not write namespace 'ctr'" in refused.body["message"]
    refused = sends(declare(core, r, "ctr/other", 4), Op.TABLE)[0].msg  # every table of the namespace
    assert refused.body["type"] == "ReadOnlyError"
    out = declare(core, r, "ctr/emb", 5, readonly=True)
    assert sends(ack_all(core, out, Op.TABLE), Op.TABLE)[0].node == r
    conflict = sends(declare(core, w, "ctr/x", 6, writers=["serve", "train"]), Op.TABLE)[0].msg
    assert conflict.body["type"] == "InvalidArgument" and "written by groups ['train']" in conflict.body["message"]
    assert sends(declare(core, r, "own/t", 7), Op.TABLE)[0].node != r  # another namespace: open to all
    bad = sends(declare(core, w, "plain", 8, writers=["train"]), Op.TABLE)[0].msg
    assert "has no namespace" in bad.body["message"]
    selfish = sends(declare(core, r, "q/t", 9, writers=["train"]), Op.TABLE)[0].msg
    assert "would exclude itself" in selfish.body["message"]


def status_of_two_groups() -> tuple[int, int, dict]:
    """A default group of one and a 'serve' group owning namespace 'ns': (default worker, serve worker, STATUS body)."""
    core, _s = cluster(num_workers=1)
    w, _ = joined(core)
    r, _ = joined(core, "serve", size=2)
    ack_all(core, declare(core, r, "ns/t", 2, writers=["serve"]), Op.TABLE)
    c, _ = register(core, "client")
    asks = sends(core.handle(Message(Op.STATUS, sender=c, ts=2), 0), Op.STATUS)
    return w, r, sends(ack_all(core, asks, Op.STATUS), Op.STATUS)[0].msg.body


def test_status_shows_groups_and_namespaces() -> None:
    w, r, reply = status_of_two_groups()
    assert reply["groups"]["default"]["workers"] == {str(w): 0} and reply["groups"]["default"]["size"] == 1
    assert reply["groups"]["serve"] == {"size": 2, "workers": {str(r): 0}, "finished": 0, "ended": False,
                                        "shards": {}}
    assert reply["namespaces"] == {"ns": {"writers": ["serve"]}}


def test_only_workers_declare_tables() -> None:
    core, _s = cluster()
    c, _ = register(core, "client")
    assert sends(declare(core, c, "t", 2), Op.TABLE)[0].msg.body["type"] == "InvalidArgument"


@pytest.mark.parametrize("name", ["", "default"])
def test_the_default_group_by_either_name(name: str) -> None:
    from paramserver.scheduler._groups import check_group_name

    assert check_group_name(name) == "default"
    with pytest.raises(InvalidArgument):
        check_group_name("x" * 65)


def test_paramserver_status_prints_groups_and_namespaces() -> None:
    from paramserver.cli._status import format_status

    w, r, reply = status_of_two_groups()
    text = format_status(reply)
    assert f"group 'serve': 2 workers; node {r} r0; 0 finished" in text
    assert f"group 'default': 1 worker; node {w} r0; 0 finished" in text
    assert "worker r0 serve" in text and "namespace 'ns': written by groups serve" in text


def test_prometheus_metrics_per_group() -> None:
    from paramserver.cli._metrics import render

    core, _s = cluster(num_workers=1)
    joined(core)
    r, _ = joined(core, "serve", size=2)
    core.handle(Message(Op.BYE, sender=r, ts=1), 0)
    c, _ = register(core, "client")
    asks = sends(core.handle(Message(Op.STATUS, sender=c, ts=2), 0), Op.STATUS)
    from prometheus_client.parser import text_string_to_metric_families

    text = render(sends(ack_all(core, asks, Op.STATUS), Op.STATUS)[0].msg.body)
    got = {(s.name, s.labels.get("group")): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    for name, group, value in (("paramserver_group_workers", "default", 1), ("paramserver_group_size", "default", 1),
                               ("paramserver_group_workers", "serve", 0),
                               ("paramserver_group_finished_workers", "serve", 1),
                               ("paramserver_group_ended", "serve", 0)):
        assert got[(name, group)] == value, (name, group)
