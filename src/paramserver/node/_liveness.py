"""Joining the cluster and staying in it: registration with the scheduler, heartbeats.

:func:`register` sends the node's REGISTER and takes the answer (its id, the node table, the
key map) as it arrives, before any later message is handled. :class:`Heartbeats` sends one
HEARTBEAT every PS_HEARTBEAT_INTERVAL and ends the job for this node (``Node.abort``) when
the scheduler has not answered for PS_SCHEDULER_TIMEOUT, or answers that the job ended.

A registration that waits says so once, early (a log warning after a few seconds), and for
what: the scheduler's PING names what the job waits for ("waiting for 1 more server"); with
no scheduler answering, a TCP probe tells "nothing listens there" from "something listens
but does not answer". A timeout names the limit that ran out as the caller calls it
(``--timeout``, PS_CONNECT_TIMEOUT).

Both use only the node's public API. Thread-safety: :func:`register` blocks its caller;
the heartbeat tick runs on the node's loop; :meth:`Heartbeats.seen` may be called anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, ConnectError, JobAborted, PSError, RequestTimeout
from ..clock import Request
from ..protocol import Message, Op, Ping, RegisterReply
from ._host import probe
from ._info import SCHEDULER_ID
from ._membership import parse_nodes

if TYPE_CHECKING:
    from ._runtime import Node

__all__ = ["Heartbeats", "register"]

log = logging.getLogger("paramserver.node")


class Heartbeats:
    """The node's heartbeats to the scheduler and the scheduler's liveness as seen from here."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.last_seen = time.monotonic()
        #: What a heartbeat reports (roles may replace it).
        self.body: Callable[[], dict[str, Any]] = dict

    def seen(self) -> None:
        """The scheduler answered just now."""
        self.last_seen = time.monotonic()

    def start(self) -> None:
        self.seen()
        self.node.call_every(self.node.config.heartbeat_interval, self.tick)

    def tick(self) -> None:
        node = self.node
        if node.aborted is not None:
            return
        silent = time.monotonic() - self.last_seen
        if silent > node.config.heartbeat_timeout:
            node.scheduler.lost(silent)  # rejoin attempts instead of heartbeats (node/_rejoin.py)
            return
        if silent > 3 * node.config.heartbeat_interval:
            node.scheduler.rejoin()  # answered at once by a scheduler that restarted meanwhile

        def check(req: Request) -> None:
            exc = req.exception(timeout=0)
            if isinstance(exc, JobAborted):
                node.abort(exc)

        req = node.request({SCHEDULER_ID: Message(Op.HEARTBEAT, body=self.body())}, "heartbeat",
                           on_part=lambda _: self.seen(), timeout=node.config.scheduler_timeout)
        req.add_done_callback(check)


class _Waiting:
    """What a registration knows while it waits: the scheduler's last word on why, and
    whether it has said so yet. Touched on the loop thread and read by the caller after
    the request ended."""

    def __init__(self, node: Node, scheduler: str, timeout: float, limit: str) -> None:
        self.node = node
        self.scheduler = scheduler
        self.timeout = timeout
        self.limit = limit
        self.start = time.monotonic()
        self.told = ""  # what the scheduler said the job waits for
        self.said = False
        self.done = False
        self.heard = self.start  # when the scheduler last showed it is there (a PING)

    def on_ping(self, msg: Message) -> None:
        """A PING from the scheduler; one that says why the registration waits is noted."""
        if not self.done and msg.sender == SCHEDULER_ID:
            self.heard = time.monotonic()
            try:
                ping = Ping.from_wire(msg.body)
            except PSError:
                ping = Ping()
            if ping.waiting:
                if self.node.id < 0 and ping.id >= 0:
                    self.node.id = ping.id  # the answer to this PING must name us
                self.told = ping.waiting
                if time.monotonic() - self.start >= self.say_after():
                    self.say()
        self.node.reply(msg)

    def say_after(self) -> float:
        return min(5.0, self.timeout / 4)

    def say(self) -> None:
        """Warn once that the registration waits, and for what."""
        if self.said or self.done:
            return
        self.said = True
        if self.told:
            log.warning("the scheduler at %s registered this %s, but the job has not started: %s; "
                        "waiting up to %g s (%s)", self.scheduler, self.node.role, self.told, self.timeout, self.limit)
        else:
            why = probe(self.scheduler) or "it accepts connections but has not answered yet"
            log.warning("waiting up to %g s (%s) for the scheduler at %s: %s", self.timeout, self.limit,
                        self.scheduler, why)

    def timed_out(self) -> ConnectError:
        what = f"within {self.timeout:g} s ({self.limit})"
        if self.told:
            return ConnectError(
                f"the scheduler at {self.scheduler} registered this {self.node.role} but the job did not start "
                f"{what}: {self.told}; start the missing nodes (`paramserver server --scheduler "
                f"{self.scheduler.removeprefix('tcp://')}`), or give them more time")
        why = probe(self.scheduler)
        if why:
            hint = ("start one with `paramserver scheduler`, or check the address "
                    "(a scheduler that ran there has exited)")
        else:
            why = "something listens there but did not answer as a paramserver scheduler"
            hint = (f"the keys (PS_KEYS) may differ from the cluster's, the scheduler may be unable to connect "
                    f"back to this {self.node.role} at {self.node.address} (set PS_HOST to an address it reaches), "
                    f"or it runs another paramserver version; `paramserver doctor "
                    f"{self.scheduler.removeprefix('tcp://')}` checks each")
        return ConnectError(f"no scheduler answered at {self.scheduler} {what}: {why}; {hint}")


def register(node: Node, scheduler: str, body: dict[str, Any], timeout: float,
             on_reply: Callable[[Message], None] | None = None, *, limit: str = "PS_CONNECT_TIMEOUT",
             quiet: bool = False) -> Message:
    """Join the cluster through the scheduler at ``scheduler``; return its reply.

    The node id, node table and key map are taken from the reply as it is received, and
    ``on_reply`` runs then too, before any later message is handled: requests that follow
    the reply (a table to create, a push) find the node ready. ``limit`` names the time
    limit in messages (how the caller set ``timeout``); ``quiet`` leaves out the warning
    that the registration is waiting.

    Raises
    ------
    ConnectError
        No scheduler answered within ``timeout`` seconds, or the scheduler answered but the
        job did not start in that time (the message says which, and what it waits for).
    ConfigError
        The node would advertise a wildcard address (bound to 0.0.0.0 without PS_HOST).
    """
    advertised = str(body.get("address", ""))
    if advertised.removeprefix("tcp://").rpartition(":")[0] in ("0.0.0.0", "*", "::", "[::]"):
        raise ConfigError(f"this {node.role} is bound to every interface and would advertise {advertised}, which no "
                          f"peer can connect to: set PS_HOST (or --host) to this machine's address on the "
                          f"cluster's network")
    (log.debug if node.role == "client" else log.info)(
        "%s bound %s and advertises %s; registering with the scheduler at %s", node.role, node.address,
        advertised, scheduler)
    node.members.scheduler_address = scheduler
    waiting = _Waiting(node, scheduler, timeout, limit)
    node.on(Op.PING, waiting.on_ping)
    node.connect(SCHEDULER_ID, scheduler)
    box: list[Message] = []

    def registered(reply: Message) -> None:
        waiting.done = True
        answer = RegisterReply.from_wire(reply.body)
        node.id = answer.id
        node.set_nodes(*parse_nodes(answer))
        node.heartbeats.seen()
        if on_reply is not None:
            on_reply(reply)
        box.append(reply)

    req = node.request({SCHEDULER_ID: Message(Op.REGISTER, body=body)},
                       f"registration with the scheduler at {scheduler}", on_part=registered, timeout=timeout)
    if not quiet:
        node.call_later(waiting.say_after(), waiting.say)
    silence = node.config.heartbeat_timeout

    def again() -> None:
        # A scheduler that waits pings every third of the heartbeat timeout: silence means it
        # died (with our REGISTER) or was not there yet. Send it again: a scheduler that has it
        # knows it by its nonce and never registers this node twice.
        if waiting.done or req.done():
            return
        if time.monotonic() - waiting.heard > silence:
            waiting.heard = time.monotonic()
            try:
                node.send(SCHEDULER_ID, Message(Op.REGISTER, ts=req.ts, body=body))
            except PSError:
                pass
        node.call_later(silence / 2, again)

    if body.get("nonce"):
        node.call_later(silence / 2, again)
    try:
        req.wait()
    except RequestTimeout:
        waiting.done = True
        raise waiting.timed_out() from None
    return box[0]
