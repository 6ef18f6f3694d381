"""A short-lived client node for operators: cluster status and shutdown.

Used by ``paramserver status`` and by :class:`~paramserver.LocalCluster`. It registers with
the role ``client``, which the scheduler answers at once and never announces to servers.

Thread-safety: one user thread at a time.
"""

from __future__ import annotations

from typing import Any

from .._config import Config, parse_address
from .._errors import PSError
from ..clock import Consistency
from ..node import SCHEDULER_ID, Node, choose_host, process_info
from ..protocol import ClusterStatus, Drain, DrainReply, Message, Op, PolicyRequest, RegisterRequest, Shutdown

__all__ = ["AdminClient"]


class AdminClient:
    """Talks to the scheduler at ``address``. Use as a context manager."""

    def __init__(self, address: str, *, timeout: float = 10.0, config: Config | None = None) -> None:
        self.address = parse_address(address)
        self.config = config or Config.from_env()
        self.timeout = timeout
        self._ended = False
        self.node = Node("client", self.config)
        self.node.start(choose_host(self.address))
        try:
            me = RegisterRequest(role="client", address=self.node.address, **process_info())
            self.node.register(self.address, me.to_wire(), timeout=timeout)
        except BaseException:
            self.node.close(linger=0)
            raise

    def status(self) -> dict[str, Any]:
        """The scheduler's view: nodes, key map, tables, and each server's report (the
        :class:`ClusterStatus` body as it came, checked).

        Raises
        ------
        ProtocolError
            The reply is not a status report.
        """
        body = self.node.call(SCHEDULER_ID, Message(Op.STATUS), "status request", self.timeout).body
        ClusterStatus.from_wire(body)
        return body

    def cluster_status(self) -> ClusterStatus:
        """:meth:`status`, typed."""
        return ClusterStatus.from_wire(self.status())

    def shutdown(self, reason: str = "shutdown requested", code: int = 0) -> None:
        """Ask the scheduler to end the job and stop every node."""
        self.node.call(SCHEDULER_ID, Message(Op.SHUTDOWN, body=Shutdown(reason=reason, code=code).to_wire()),
                       "shutdown request", self.timeout)
        self._ended = True

    def set_consistency(self, table: str, policy: Consistency) -> None:
        """Change a table's consistency model on every node while the job runs."""
        body = PolicyRequest(name=table, policy=policy.to_wire()).to_wire()
        self.node.call(SCHEDULER_ID, Message(Op.POLICY, body=body), f"changing the consistency of table {table!r}",
                       self.timeout)

    def drain(self, node: int) -> dict[str, Any]:
        """Move every key range off server ``node`` and stop it; return the new key map."""
        reply = self.node.call(SCHEDULER_ID, Message(Op.DRAIN, body=Drain(node=node).to_wire()),
                               f"draining server {node}", self.timeout)
        keymap = DrainReply.from_wire(reply.body).keymap
        return keymap if keymap is not None else {}

    def close(self) -> None:
        """Say goodbye (so the scheduler forgets this client) and close."""
        if self.node.aborted is None and not self._ended:
            try:
                self.node.call(SCHEDULER_ID, Message(Op.BYE), "goodbye", 2.0)
            except PSError:
                pass
        self.node.close(linger=0.5)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
