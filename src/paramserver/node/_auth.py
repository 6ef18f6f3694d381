"""Who may tell this node what: sender binding and the authorisation table.

Every received message passes :class:`Gate` before it is handled. Two rules:

1. **Sender binding.** A message that claims sender ``N`` is accepted only from the
   connection recorded for ``N`` at registration: its routing identity (the scheduler
   records it from the REGISTER message and hands it out in the node table), and with
   CURVE keys also the role of the key that authenticated the connection. A message whose
   sender is not a member is refused, except a REGISTER to the scheduler (and, at the
   scheduler, a HEARTBEAT or PING: a node it has forgotten learns so from the answer) and
   the scheduler's answer to this node's own pending registration (while it registers),
   which also records the scheduler's identity; likewise the answer to its own pending
   REJOIN (a restarted scheduler has a new connection: only this answer, and with keys only
   one from the scheduler's key, records it).
2. **Authorisation.** :data:`ALLOWED` says which role may send which request to which
   role. The sender's role is that of its CURVE key when keys are in use, else the role it
   registered with. Requests outside the table are refused. Responses need only rule 1
   (they complete requests this node sent, matched by timestamp and peer).

A refused message is never applied: it is dropped, counted (``messages_refused``) and
logged once per peer connection.

Pure state except for logging; not thread-safe (the node's loop uses it alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..protocol import Message, Op
from ._info import SCHEDULER_ID

__all__ = ["ALLOWED", "Gate", "Known", "Member"]

log = logging.getLogger("paramserver.node")

_ANYONE = frozenset({Op.PING})
_OPERATOR = frozenset({Op.REGISTER, Op.HEARTBEAT, Op.STATUS, Op.SHUTDOWN, Op.POLICY, Op.DRAIN, Op.BYE})

#: (sender role, receiver role) -> the requests that sender may send to that receiver.
#: Roles are those of keys: an operator's ``client`` node uses the ``admin`` key (or the
#: scheduler's); without keys a client's role is ``client``.
ALLOWED: dict[tuple[str, str], frozenset[Op]] = {
    ("server", "scheduler"): _ANYONE | {Op.REGISTER, Op.HEARTBEAT, Op.BARRIER, Op.BYE, Op.REJOIN},
    ("worker", "scheduler"): _ANYONE | {Op.REGISTER, Op.HEARTBEAT, Op.BARRIER, Op.TABLE, Op.TASK, Op.BYE,
                                        Op.POLICY, Op.REJOIN},
    ("admin", "scheduler"): _ANYONE | _OPERATOR,
    ("client", "scheduler"): _ANYONE | _OPERATOR,
    ("scheduler", "scheduler"): _ANYONE | _OPERATOR,  # the scheduler's key may run operator tools
    ("scheduler", "server"): _ANYONE | {Op.NODES, Op.SHUTDOWN, Op.TABLE, Op.POLICY, Op.STATUS, Op.MIGRATE},
    ("server", "server"): _ANYONE | {Op.REPLICATE, Op.MIGRATE},
    # STATUS: a bounded-delay pull that timed out asks for the clocks, to name the worker behind
    ("worker", "server"): _ANYONE | {Op.PUSH, Op.PULL, Op.PULL_RANGE, Op.CLOCK, Op.CHECKPOINT, Op.STATUS},
    ("scheduler", "worker"): _ANYONE | {Op.NODES, Op.SHUTDOWN, Op.POLICY, Op.TABLE},
    ("server", "worker"): _ANYONE,
    ("scheduler", "client"): _ANYONE | {Op.NODES, Op.SHUTDOWN},
}

#: The keys a member of each registered role may use.
_KEYS_OF: dict[str, frozenset[str]] = {"scheduler": frozenset({"scheduler"}), "server": frozenset({"server"}),
                                        "worker": frozenset({"worker"}), "client": frozenset({"admin", "scheduler"})}

#: Requests the scheduler takes from a sender that is not (or no longer) a member.
_FROM_STRANGERS = frozenset({Op.REGISTER, Op.HEARTBEAT, Op.PING, Op.REJOIN})


class Known(Protocol):
    """What the gate needs to know of a member (a :class:`~._info.NodeInfo` will do)."""

    @property
    def role(self) -> str: ...

    @property
    def identity(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Member:
    """What the gate knows of a member: its registered role and connection identity
    (``b""``: unknown, only the role is checked)."""

    role: str
    identity: bytes = b""


class Gate:
    """Sender binding and authorisation for one node. See the module docstring.

    Parameters
    ----------
    role:
        The receiving node's role.
    curve:
        True if the transport authenticates keys (a message's ``auth`` is then its role).
    lookup:
        The member registered as a node id, or None (the node table; the scheduler's core).
    pending:
        True if this node awaits the response with this timestamp.
    """

    def __init__(self, role: str, curve: bool, lookup: Callable[[int], Known | None],
                 pending: Callable[[int], bool]) -> None:
        self.role = role
        self.curve = curve
        self.lookup = lookup
        self.pending = pending
        self._scheduler: Member | None = None
        #: True while this node's registration is unanswered (the only time the scheduler's
        #: identity may be learnt; node.register sets it).
        self.registering = False
        #: True while this node's REJOIN is unanswered: its answer may come from a restarted
        #: scheduler (a new connection), recorded then (node/_rejoin.py sets it).
        self.rejoining = False
        self.refused = 0
        #: The connection identity of the message being handled (set by the node).
        self.current_peer = b""
        self._logged: set[bytes] = set()

    @property
    def scheduler_identity(self) -> bytes:
        """The scheduler's connection identity, recorded from its answer to our registration."""
        return self._scheduler.identity if self._scheduler is not None else b""

    @scheduler_identity.setter
    def scheduler_identity(self, identity: bytes) -> None:
        self._scheduler = Member("scheduler", identity) if identity else None

    def member(self, node: int) -> Known | None:
        """The member ``node`` as this node knows it (the scheduler by its recorded identity).

        The scheduler never sends to itself: on the scheduler, a message claiming to come
        from the scheduler is from a stranger (its own node-table entry has no connection
        identity to bind the claim to)."""
        if node == SCHEDULER_ID:
            return self._scheduler if self.role != "scheduler" else None
        return self.lookup(node)

    def admit(self, msg: Message, handled: bool = True) -> bool:
        """True if ``msg`` may be handled; else it is counted and logged (once per peer).

        ``handled``: this node has a handler for the request's op. A request it does not
        handle at all is checked for sender binding only (it is answered "not handled").
        """
        why = self.reason(msg, handled)
        if why is None:
            return True
        self.refused += 1
        if msg.peer not in self._logged and len(self._logged) < 4096:
            self._logged.add(msg.peer)
            log.warning("%s: refused %s %s from connection %s (claims node %d%s): %s; further refusals of "
                        "this peer are counted in messages_refused only", self.role, msg.op.name,
                        "response" if msg.response else "request", msg.peer.hex() or "?", msg.sender,
                        f", key {msg.auth}" if msg.auth else "", why)
        return False

    def reason(self, msg: Message, handled: bool = True) -> str | None:
        """Why ``msg`` is refused, or None if it is admitted."""
        if self.curve and not msg.auth:
            return "its connection has no authenticated key"
        if self._registration_answer(msg):
            self.scheduler_identity = msg.peer  # the scheduler that answered our own registration
            self.registering = False
            return None
        if self._rejoin_answer(msg):
            self.scheduler_identity = msg.peer  # a restarted scheduler, known by this answer only
            self.rejoining = False
            return None
        member = self.member(msg.sender)
        if member is None:
            return self._stranger(msg)
        if member.identity and msg.peer != member.identity:
            return f"node {msg.sender} is registered from another connection"
        if self.curve and msg.auth not in _KEYS_OF[member.role]:
            return f"node {msg.sender} registered as a {member.role} but its key is the {msg.auth} key"
        if msg.response or not handled or msg.op == Op.PING:
            return None
        sender_role = msg.auth if self.curve else member.role
        if msg.op not in ALLOWED.get((sender_role, self.role), frozenset()):
            return f"a {sender_role} may not send {msg.op.name} to a {self.role}"
        return None

    def _registration_answer(self, msg: Message) -> bool:
        """True for the scheduler's answer to this node's own pending registration."""
        return (self.registering and msg.response and msg.op == Op.REGISTER and msg.sender == SCHEDULER_ID
                and self.role != "scheduler" and self.pending(msg.ts) and (not self.curve or msg.auth == "scheduler"))

    def _rejoin_answer(self, msg: Message) -> bool:
        """True for the answer to this node's own pending REJOIN, from whichever connection
        (with keys: only from the scheduler's key)."""
        return (self.rejoining and msg.response and msg.op == Op.REJOIN and msg.sender == SCHEDULER_ID
                and self.role != "scheduler" and self.pending(msg.ts) and (not self.curve or msg.auth == "scheduler"))

    def _stranger(self, msg: Message) -> str | None:
        """The rule for a sender that is not a member."""
        if self.role == "scheduler":
            if msg.sender == SCHEDULER_ID:
                return "it claims to be this scheduler"
            if msg.response or msg.op not in _FROM_STRANGERS:
                return f"node {msg.sender} is not a member"
            if self.curve and msg.op == Op.REGISTER and msg.auth not in ("server", "worker", "admin", "scheduler"):
                return "an unknown key"
            return None
        if (self.registering and msg.op == Op.PING and not msg.response and msg.sender == SCHEDULER_ID
                and (not self.curve or msg.auth == "scheduler")):
            return None  # the scheduler saying what our registration waits for (answered, never trusted)
        return f"node {msg.sender} is not a member"

    def warn_once(self, what: str, fmt: str, *args: object) -> None:
        """Log a warning about the peer of the message being handled, once per peer and kind
        ``what`` (a hostile peer must not fill the log); later ones go to the debug log."""
        key = what.encode() + b"/" + self.current_peer
        if key in self._logged or len(self._logged) >= 4096:
            log.debug(fmt, *args)
            return
        self._logged.add(key)
        log.warning(fmt + " (logged once per peer)", *args)

    def forget_scheduler(self) -> None:
        """Drop the recorded scheduler identity (a registration with a new scheduler follows)."""
        self.scheduler_identity = b""
