"""The Message: one header plus raw arrays, the unit every node sends and receives.

A message maps one-to-one onto ZeroMQ multipart frames: frame 0 is a small binary header
(with small arrays packed into it), frames 1..n are the raw bytes of the large arrays (sent
without copies). The header describes each array (dtype and shape), so the receiver
rebuilds them as read-only views of the received frames, again without copies. See
docs/protocol.md for the wire layout.

Fields carried by every message, so that later features need no new framing:

* ``ts``: the request's timestamp at its sender (unique per sender); a response echoes it.
* ``epoch``: the version of the key map the sender used to slice the request.
* ``clock`` and ``key_range``: the sender's range vector clock entry for the request
  (its iteration, and the key range the message covers).
* ``seq``: the position of an ordered message (a push, a clock tick) in its channel (one
  sender, receiver and table); the receiver applies them in this order, each exactly once.
  On a pull it is the last ordered message the pull must see (read-your-writes).
* ``filters``: the names of the filters applied to the arrays, in order, for decoding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KEY_DTYPE", "KEY_SPACE", "Message", "Op", "Status"]

#: dtype of keys on the wire and in every table: unsigned 64-bit, little-endian.
KEY_DTYPE = np.dtype("<u8")

#: One past the largest key, 2**64: keys are the integers of ``[0, KEY_SPACE)``, and a key range
#: ``[lo, hi)`` has ``0 <= lo < hi <= KEY_SPACE``. The one name for 2**64 in the code base.
KEY_SPACE = 1 << 64


class Op(enum.IntEnum):
    """What a message asks for. Control operations are < 32, data operations >= 32."""

    REGISTER = 1  # node -> scheduler: join the cluster
    NODES = 2  # scheduler -> all: node table and key map changed
    HEARTBEAT = 3  # node -> scheduler: alive (with load figures)
    BARRIER = 4  # node -> scheduler: wait for a group; the reply releases it
    TABLE = 5  # worker -> scheduler: declare a table; scheduler -> server: add it
    SHUTDOWN = 6  # anyone -> scheduler: end the job; scheduler -> node: exit now
    BYE = 7  # worker -> scheduler: this worker is finished
    STATUS = 8  # client -> scheduler -> servers: report state
    PING = 9  # liveness probe; answered at once
    POLICY = 10  # change a table's consistency while the job runs
    REPLICATE = 11  # master -> replica: apply what the master applied (chain replication)
    CHECKPOINT = 12  # worker -> server: write the master ranges to a checkpoint
    TASK = 13  # worker -> scheduler: report finished work, ask for the next data shard
    MIGRATE = 14  # server -> server: copy key ranges (join, leave, re-replication)
    DRAIN = 15  # client -> scheduler: move every range off a server, then stop it
    REJOIN = 16  # node -> a restarted scheduler: what this node knows, to rebuild the cluster's state
    SUSPECT = 17  # node -> scheduler: the link to a peer broke; probe it
    PUSH = 32  # worker -> server: apply values to keys with the table's updater
    PULL = 33  # worker -> server: read values of keys
    PULL_RANGE = 34  # worker -> server: read every present key in a range
    CLOCK = 35  # worker -> server: this worker finished iteration `clock` on `key_range`


class Status(enum.IntEnum):
    """Outcome carried by a response."""

    OK = 0
    ERROR = 1  # body: {"type", "message", "traceback"}
    MOVED = 2  # the receiver does not own the keys under the sender's epoch
    RESEND_KEYS = 3  # a key-cache miss: send the request again with its keys


@dataclass(slots=True)
class Message:
    """A decoded message. Arrays may be read-only views of the received frames.

    Not thread-safe; a message belongs to one thread at a time.
    """

    op: Op
    sender: int = -1
    ts: int = 0
    response: bool = False
    table: int = -1
    epoch: int = 0
    clock: int = 0
    seq: int = 0
    key_range: tuple[int, int] | None = None  # [lo, hi), hi may be 2**64
    status: Status = Status.OK
    filters: tuple[str, ...] = ()
    body: dict[str, Any] = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)
    #: Not on the wire: the filters to apply when this message is sent (encoders).
    codecs: tuple[Any, ...] = ()
    #: Not on the wire: indices of the arrays that hold values (for value filters).
    values_at: tuple[int, ...] = ()
    #: Not on the wire: the identity of the connection it arrived on (set by the receiver).
    peer: bytes = b""
    #: Not on the wire: the role of the CURVE key that authenticated that connection ("" without keys).
    auth: str = ""
    #: Not on the wire: how the receiver keyed this request in its reply cache (copied into
    #: its reply, so that the answer is remembered for a resent request).
    request_key: tuple[bytes, int, int] | None = None

    def reply(self, *, status: Status = Status.OK, body: dict[str, Any] | None = None,
              arrays: list[np.ndarray] | None = None, sender: int = -1) -> Message:
        """A response to this request: same op, timestamp and table."""
        return Message(
            op=self.op,
            sender=sender,
            ts=self.ts,
            response=True,
            table=self.table,
            epoch=self.epoch,
            clock=self.clock,
            seq=self.seq,
            status=status,
            body=body if body is not None else {},
            arrays=arrays if arrays is not None else [],
            request_key=self.request_key,
        )

    def nbytes(self) -> int:
        """Bytes of array payload (the header excluded)."""
        return sum(int(a.nbytes) for a in self.arrays)

    def describe(self) -> str:
        """A one-line summary for logs."""
        kind = "rsp" if self.response else "req"
        shapes = ",".join("x".join(map(str, a.shape)) + ":" + a.dtype.str for a in self.arrays)
        return (
            f"{self.op.name} {kind} ts={self.ts} from={self.sender} table={self.table} "
            f"status={self.status.name} arrays=[{shapes}]"
        )
