"""Joining the cluster and staying in it: registration with the scheduler, heartbeats.

:func:`register` sends the node's REGISTER and takes the answer (its id, the node table, the
key map) as it arrives, before any later message is handled. :class:`Heartbeats` sends one
HEARTBEAT every PS_HEARTBEAT_INTERVAL and ends the job for this node (``Node.abort``) when
the scheduler has not answered for PS_HEARTBEAT_TIMEOUT, or answers that the job ended.

Both use only the node's public API. Thread-safety: :func:`register` blocks its caller;
the heartbeat tick runs on the node's loop; :meth:`Heartbeats.seen` may be called anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ConnectError, JobAborted, NodeUnavailable, RequestTimeout
from ..clock import Request
from ..protocol import Message, Op, RegisterReply
from ._info import SCHEDULER_ID
from ._membership import parse_nodes

if TYPE_CHECKING:
    from ._runtime import Node

__all__ = ["Heartbeats", "register"]


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
            node.abort(NodeUnavailable(
                f"the scheduler at {node.scheduler_address} is unreachable since "
                f"{time.strftime('%H:%M:%S', time.localtime(time.time() - silent))} "
                f"(no answer for {silent:.1f} s)"
            ))
            return

        def check(req: Request) -> None:
            exc = req.exception(timeout=0)
            if isinstance(exc, JobAborted):
                node.abort(exc)

        req = node.request({SCHEDULER_ID: Message(Op.HEARTBEAT, body=self.body())}, "heartbeat",
                           on_part=lambda _: self.seen(), timeout=node.config.heartbeat_timeout)
        req.add_done_callback(check)


def register(node: Node, scheduler: str, body: dict[str, Any], timeout: float,
             on_reply: Callable[[Message], None] | None = None) -> Message:
    """Join the cluster through the scheduler at ``scheduler``; return its reply.

    The node id, node table and key map are taken from the reply as it is received, and
    ``on_reply`` runs then too, before any later message is handled: requests that follow
    the reply (a table to create, a push) find the node ready.

    Raises
    ------
    ConnectError
        No scheduler answered within ``timeout`` seconds.
    """
    node.members.scheduler_address = scheduler
    node.connect(SCHEDULER_ID, scheduler)
    box: list[Message] = []

    def registered(reply: Message) -> None:
        answer = RegisterReply.from_wire(reply.body)
        node.id = answer.id
        node.set_nodes(*parse_nodes(answer))
        node.heartbeats.seen()
        if on_reply is not None:
            on_reply(reply)
        box.append(reply)

    req = node.request({SCHEDULER_ID: Message(Op.REGISTER, body=body)},
                       f"registration with the scheduler at {scheduler}", on_part=registered, timeout=timeout)
    try:
        req.wait()
    except RequestTimeout:
        raise ConnectError(
            f"no scheduler answered at {scheduler} within {timeout:g} s "
            f"(PS_CONNECT_TIMEOUT); check the address, or start one with "
            f"`paramserver scheduler`"
        ) from None
    return box[0]
