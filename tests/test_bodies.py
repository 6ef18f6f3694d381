"""Typed message bodies: exact round trips, and every missing or mistyped field rejected by name."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest

from paramserver import ProtocolError
from paramserver import protocol as p
from paramserver.protocol import Message, Op, decode, encode

NODE = [1, "server", "tcp://127.0.0.1:5000", "host", 123, 0]
KEYMAP = {"epoch": 2, "ranges": [[0, 2**64 - 1, 1, []]]}
POLICY = {"kind": "bounded", "tau": 2}
SPEC = {"name": "w", "width": 1, "dtype": "float32", "updater": "sum", "updater_params": {}, "init": "zeros",
        "init_params": {}, "aggregate": False}

#: One full wire body per class (every field present, optional ones away from their default).
EXAMPLES: dict[type[p.Body], dict[str, Any]] = {
    p.RegisterRequest: {"role": "worker", "address": "tcp://127.0.0.1:6000", "host": "h", "pid": 7, "rank": 1},
    p.RegisterReply: {"nodes": [NODE], "keymap": KEYMAP, "dead": [4], "id": 3, "rank": 0, "num_workers": 2,
                      "tables": [[0, SPEC, POLICY]]},
    p.Nodes: {"nodes": [NODE], "keymap": KEYMAP, "dead": [5, 6]},
    p.Rejoin: {"info": NODE, "incarnation": 7, "nodes": [NODE], "keymap": KEYMAP, "departed": [NODE],
               "tables": [[0, SPEC, POLICY]], "num_workers": 2, "declared": [{"spec": SPEC, "policy": POLICY, "id": 0}],
               "shards": [{"set": "s", "shards": 4, "epochs": 1, "done": [0], "running": [1]}],
               "barriers": {"default": 3}},
    p.Suspect: {"node": 4, "why": "the link broke (disconnected)"},
    p.RejoinReply: {"nodes": [NODE], "keymap": KEYMAP, "dead": [5], "incarnation": 8},
    p.Heartbeat: {"report": {"iteration": 3}},
    p.Bye: {"error": "ValueError: boom", "code": 1},
    p.Ping: {"id": 3, "waiting": "waiting for 1 more server (1 of 2 registered)"},
    p.StatusRequest: {},
    p.Barrier: {"group": "all", "seq": 3},
    p.Rejoin: {"info": NODE, "incarnation": 5, "nodes": [NODE], "keymap": KEYMAP, "departed": [NODE],
               "tables": [[0, SPEC, POLICY]], "num_workers": 2, "declared": [{"spec": SPEC}],
               "shards": [{"set": "s", "shards": [1], "epochs": 1, "done": [], "running": [0]}],
               "barriers": {"workers": 2}},
    p.RejoinReply: {"nodes": [NODE], "keymap": KEYMAP, "incarnation": 5},
    p.TableDeclare: {"spec": SPEC, "policy": POLICY},
    p.TableReply: {"id": 0, "policy": POLICY},
    p.TableCreate: {"id": 0, "spec": SPEC, "policy": POLICY},
    p.Shutdown: {"reason": "done", "code": 3},
    p.PolicyRequest: {"name": "w", "policy": POLICY},
    p.PolicyUpdate: {"policy": POLICY},
    p.TaskRequest: {"set": "train", "shards": ["a", ["b", 1]], "epochs": 2, "done": 4, "release": True},
    p.TaskReply: {"state": "task", "progress": {"total": 4, "done": 1, "running": 1, "pending": 2}, "task": 1,
                  "shard": 1, "epoch": 0},
    p.Drain: {"node": 2},
    p.DrainReply: {"keymap": KEYMAP},
    p.ClusterStatus: {"nodes": [NODE], "keymap": KEYMAP, "last_seen": {"1": 0.2}, "tables": [[0, SPEC, POLICY]],
                      "servers": {"1": {"error": "x"}}, "num_servers": 1, "num_workers": 1, "uptime": 3.5,
                      "failovers": 0, "migrations": 1, "migrating": False, "shards": {},
                      "reports": {"2": {"iteration": 1, "age": 0.5}}, "events": [[0.5, "join", 1, "server 1 joined"]]},
    p.ErrorReply: {"type": "ValueError", "message": "bad", "traceback": "tb"},
    p.Moved: {"message": "moved", "epoch": 3, "keymap": KEYMAP, "nodes": [NODE]},
    p.ResendKeys: {"message": "not cached", "ksig": 2**64 - 1},
    p.PushBody: {"rid": 17, "lw": 12, "origins": [[1, 5]]},
    p.PullBody: {"reply_filters": ["zeros"], "consistency": POLICY},
    p.PullRangeBody: {"reply_filters": ["fixed8"], "consistency": POLICY, "ranges": [[0, 2**64 - 1]]},
    p.ClockBody: {"origins": [[1, 9]]},
    p.ReplicatePush: {"kind": "push", "worker": 5, "origins": [[1, 2]], "chain": [3], "rid": 8, "lw": 4,
                      "again": True},
    p.ReplicateAgg: {"kind": "agg", "worker": -1, "origins": [[1, 2]], "chain": []},
    p.ReplicateClock: {"kind": "clock", "worker": 5, "origins": [], "chain": [3, 4], "ranges": [[0, 99]]},
    p.MigrateCopy: {"phase": "copy", "keymap": KEYMAP, "plan": [[2, [[0, 99]]]]},
    p.MigrateCopyReply: {"keys": 100},
    p.MigrateSwitch: {"phase": "switch", "keymap": KEYMAP},
    p.MigrateLoad: {"phase": "load", "ranges": [[0, 99]], "state": ["m"], "iters": [[5, 2]]},
    p.MigrateSums: {"phase": "load", "pending": 3},
    p.CheckpointRequest: {"path": "/tmp/ck", "iteration": 2, "timeout": 5.0, "seqs": [[0, 12]]},
    p.CheckpointReply: {"ranges": [[0, 99]], "tables": {"w": {"id": 0}}},
}

CASES = [(cls, name) for cls in EXAMPLES for name in (f.name for f in dataclasses.fields(cls))]


def test_every_body_class_has_an_example() -> None:
    exported = [getattr(p, n) for n in p.__all__]
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, p.Body) and c is not p.Body}
    assert classes == set(EXAMPLES)


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_round_trip_is_exact(cls: type[p.Body]) -> None:
    wire = EXAMPLES[cls]
    body = cls.from_wire(wire)
    assert body.to_wire() == wire
    assert cls.from_wire(body.to_wire()) == body
    out = decode([memoryview(f).tobytes() for f in encode(Message(Op.PING, body=body.to_wire()))])
    assert cls.from_wire(out.body) == body  # through the wire codec too


def _default(cls: type[p.Body], name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _wrong(tp: Any) -> Any:
    """A value that does not fit annotation ``tp``, or None if every value fits."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return _wrong(next(a for a in args if a is not type(None)))
    if tp is Any:
        return None
    if tp is int:
        return True  # bool is not an int
    if tp is float or tp is str:
        return [1.5]
    if tp is bool:
        return 1
    if origin is list:
        elem = _wrong(args[0]) if args else None
        return {"a": 1} if elem is None else [elem]
    return [1]  # a dict field


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_missing_fields_are_rejected_or_defaulted(cls: type[p.Body], name: str) -> None:
    wire = {k: v for k, v in EXAMPLES[cls].items() if k != name}
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        with pytest.raises(ProtocolError, match=f"lacks the field '{name}'"):
            cls.from_wire(wire)
    else:
        assert getattr(cls.from_wire(wire), name) == _default(cls, name)


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_mistyped_fields_are_rejected_by_name(cls: type[p.Body], name: str) -> None:
    bad = _wrong(typing.get_type_hints(cls)[name])
    if bad is None:
        pytest.skip("any value fits")
    with pytest.raises(ProtocolError, match=f"field '{name}' must be"):
        cls.from_wire({**EXAMPLES[cls], name: bad})


def test_ints_are_widened_to_floats_and_unknown_fields_ignored() -> None:
    assert p.CheckpointRequest.from_wire({"path": "x", "iteration": 1, "timeout": 3}).timeout == 3.0
    assert p.PushBody.from_wire({"rid": 1, "ksig": 5}) == p.PushBody(rid=1)


def test_pairs_must_be_pairs() -> None:
    for cls, name in [(p.PushBody, "origins"), (p.ClockBody, "origins"), (p.PullRangeBody, "ranges"),
                      (p.ReplicateClock, "ranges"), (p.MigrateLoad, "iters"), (p.CheckpointRequest, "seqs")]:
        with pytest.raises(ProtocolError, match=f"field '{name}' must be a list of pairs"):
            cls.from_wire({**EXAMPLES[cls], name: [[1, 2, 3]]})


def test_tags_and_dispatch() -> None:
    for wire in (EXAMPLES[p.ReplicatePush], EXAMPLES[p.ReplicateAgg], EXAMPLES[p.ReplicateClock]):
        assert p.replicate_from_wire(wire).to_wire() == wire
    for wire in (EXAMPLES[p.MigrateCopy], EXAMPLES[p.MigrateSwitch], EXAMPLES[p.MigrateLoad],
                 EXAMPLES[p.MigrateSums]):
        assert p.migrate_from_wire(wire).to_wire() == wire
    with pytest.raises(ProtocolError, match="unknown replication kind 'other'"):
        p.replicate_from_wire({**EXAMPLES[p.ReplicatePush], "kind": "other"})
    with pytest.raises(ProtocolError, match="unknown migration phase None"):
        p.migrate_from_wire({})
    with pytest.raises(ProtocolError, match="field 'kind' must be 'agg'"):
        p.ReplicateAgg.from_wire(EXAMPLES[p.ReplicatePush])
    with pytest.raises(ProtocolError, match="must be a map"):
        p.Barrier.from_wire([])  # type: ignore[arg-type]


def test_optional_fields_at_their_default_stay_off_the_wire() -> None:
    assert p.PushBody().to_wire() == {}
    assert p.TaskReply(state="wait", progress={}).to_wire() == {"state": "wait", "progress": {}}
    assert p.Nodes(nodes=[]).to_wire() == {"nodes": [], "keymap": None}
    assert p.TaskRequest(set="s").to_wire() == {"set": "s", "done": None}
