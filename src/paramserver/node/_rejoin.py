"""The node's contact with the scheduler across scheduler restarts.

The data path (push, pull, replication) never touches the scheduler, so a server or worker
goes on when the scheduler is gone. :class:`SchedulerLink` handles the rest:

* **Lost.** When the scheduler has not answered a heartbeat for PS_HEARTBEAT_TIMEOUT
  (:meth:`lost`, called by the heartbeats), the node logs it once and sends ``Op.REJOIN``
  every heartbeat interval instead of heartbeats: its own entry, node table, key map,
  the workers it saw leave, and what the role adds (:attr:`report`: tables, shard progress,
  barrier rounds). After PS_SCHEDULER_TIMEOUT without an answer it ends its job.
* **Rejoined.** The answer names the scheduler's *incarnation*. The same one (the node had
  only lost contact) changes nothing. A new one (a restarted scheduler, which rebuilt its
  state from the reports, scheduler/_rebuild.py) is the node's scheduler from then on: the
  security gate records its connection from this answer only (node/_auth.py, and with
  keys only if it holds the scheduler's key), the node table and key map it sends are
  taken, and every request still waiting for the old scheduler fails with
  :class:`SchedulerRestarted`, which :meth:`call` turns into a resend to the new one.
* **Calls.** :meth:`call` is the way to send a request that needs the scheduler
  (barriers, table declarations, data shards, consistency changes, the goodbye): it sends it
  again after a restart, and when the scheduler is unreachable until the call's timeout it
  raises :class:`SchedulerUnavailable`, naming the scheduler and since when it is silent.

Uses only the node's public API. Thread-safety: :meth:`call` blocks its caller and may be
used from any thread; :meth:`lost` and the answers run on the node's loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import (
    ClosedError,
    JobAborted,
    NodeUnavailable,
    ProtocolError,
    PSError,
    RequestTimeout,
    SchedulerRestarted,
    SchedulerUnavailable,
)
from ..clock import Request
from ..protocol import Message, Op, Rejoin, RejoinReply
from ._info import SCHEDULER_ID, NodeInfo
from ._membership import parse_nodes

if TYPE_CHECKING:
    from ._runtime import Node

__all__ = ["SchedulerLink"]

log = logging.getLogger("paramserver.node")


class SchedulerLink:
    """See the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: The scheduler process this node knows (from its registration or last rejoin; 0: none).
        self.incarnation = 0
        #: When the scheduler went silent (``time.monotonic()``), None while it answers.
        self.lost_since: float | None = None
        #: What the role adds to a REJOIN (fields of :class:`Rejoin`); roles replace it.
        self.report: Callable[[], dict[str, Any]] = dict
        #: Workers this node saw leave or die (they must not be waited for by a rebuild).
        self.departed: dict[int, NodeInfo] = {}
        #: Rejoins with a new scheduler process so far.
        self.restarts = 0
        self._pending: Request | None = None

    # ------------------------------------------------------------------ events
    def registered(self, incarnation: int) -> None:
        """The registration was answered by scheduler process ``incarnation``."""
        self.incarnation = incarnation

    def nodes_left(self, gone: dict[int, NodeInfo]) -> None:
        """These members left the node table (they said goodbye or died)."""
        self.departed.update({n: i for n, i in gone.items() if i.role == "worker"})

    def lost(self, silent: float) -> None:
        """The scheduler has not answered for ``silent`` seconds (over PS_HEARTBEAT_TIMEOUT)."""
        node = self.node
        limit = node.config.scheduler_timeout
        if self.lost_since is None:
            self.lost_since = time.monotonic() - silent
            log.warning("%s %d: the scheduler at %s has not answered for %.1f s; pushes and pulls go on, calls that "
                        "need the scheduler wait for it; restart it at that address (`paramserver scheduler "
                        "--recover`) and this node rejoins it; it gives up after %g s (PS_SCHEDULER_TIMEOUT)",
                        node.role, node.id, node.scheduler_address, silent, limit)
        if silent > limit:
            node.abort(NodeUnavailable(f"the scheduler at {node.scheduler_address} is unreachable since "
                                       f"{self._since()} (no answer for {silent:.1f} s, PS_SCHEDULER_TIMEOUT={limit:g})"))
            return
        self.rejoin()

    def silent(self) -> float:
        """Seconds since the scheduler last answered this node."""
        return time.monotonic() - (self.lost_since if self.lost_since is not None else self.node.heartbeats.last_seen)

    def _since(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(time.time() - self.silent()))

    # ------------------------------------------------------------------ rejoin
    def rejoin(self) -> None:
        """Send a REJOIN (unless one is in flight)."""
        node = self.node
        if (self._pending is not None and not self._pending.done()) or node.aborted is not None:
            return
        nodes = node.nodes()
        own = nodes.get(node.id)
        if own is None:
            return  # not registered
        keymap = node.keymap
        try:
            body = Rejoin(info=own.to_wire(), incarnation=self.incarnation, nodes=[n.to_wire() for n in nodes.values()],
                          keymap=keymap.to_wire() if keymap is not None else None,
                          departed=[d.to_wire() for d in self.departed.values()], **self.report()).to_wire()
        except Exception:
            log.exception("%s %d: could not build its rejoin report", node.role, node.id)
            return
        node.gate.rejoining = True  # the answer may come from a new scheduler process
        wait = max(2 * node.config.heartbeat_interval, 1.0)
        req = node.request({SCHEDULER_ID: Message(Op.REJOIN, body=body)}, "rejoining the scheduler",
                           on_part=self._answered, timeout=wait)
        req.add_done_callback(self._ended)
        self._pending = req

    def _ended(self, req: Request) -> None:
        exc = req.exception(timeout=0)
        if isinstance(exc, JobAborted):
            self.node.abort(exc)
        elif exc is not None and not isinstance(exc, RequestTimeout | ClosedError):
            log.warning("%s %d: rejoining the scheduler failed: %s", self.node.role, self.node.id, exc)

    def _answered(self, reply: Message) -> None:
        node = self.node
        node.gate.rejoining = False
        try:
            answer = RejoinReply.from_wire(reply.body)
            nodes, keymap, dead, version = parse_nodes(answer)
        except ProtocolError as exc:
            log.warning("%s %d: a malformed rejoin answer: %s", node.role, node.id, exc)
            return
        restarted = answer.incarnation != self.incarnation
        self.incarnation = answer.incarnation
        was_lost, self.lost_since = self.lost_since is not None, None
        node.heartbeats.seen()
        node.set_nodes(nodes, keymap, dead, version, restarted=restarted)
        if restarted:
            self.restarts += 1
            log.warning("%s %d: rejoined the restarted scheduler at %s", node.role, node.id, node.scheduler_address)
            # requests the old scheduler never answered go to the new one (after this answer is done)
            node.call_later(0, lambda: node.peer_failed(SCHEDULER_ID, SchedulerRestarted(
                f"the scheduler at {node.scheduler_address} restarted")))
        elif was_lost:
            log.warning("%s %d: the scheduler at %s answers again", node.role, node.id, node.scheduler_address)

    # ------------------------------------------------------------------ calls
    def call(self, op: Op, body: dict[str, Any], what: str, timeout: float | None = None) -> Message:
        """Send a request that needs the scheduler and block for its reply (see the module docstring).

        Raises
        ------
        SchedulerUnavailable
            The scheduler did not answer within ``timeout`` (PS_TIMEOUT if None) and is unreachable.
        RequestTimeout, RemoteError, NodeUnavailable, JobAborted
            As :meth:`Node.call`.
        """
        node = self.node
        limit = node.config.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            try:
                return node.call(SCHEDULER_ID, Message(op, body=body), what, max(left, 1e-3))
            except SchedulerRestarted:
                if time.monotonic() < deadline:
                    continue  # the new scheduler rebuilt the job: send it there
                raise self._unavailable(what, limit) from None
            except RequestTimeout:
                if self.silent() > 2 * node.config.heartbeat_interval:
                    raise self._unavailable(what, limit) from None
                raise

    def _unavailable(self, what: str, limit: float) -> PSError:
        node = self.node
        return SchedulerUnavailable(
            f"{what}: the scheduler at {node.scheduler_address} did not answer within {limit:g} s (it is unreachable "
            f"since {self._since()}); pushes and pulls go on without it, but this call needs it: restart it at "
            f"that address (`paramserver scheduler --recover`), or give the call a longer timeout")
