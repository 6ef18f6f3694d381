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
from ..protocol import Message, Op

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
            self.node.register(self.address, {"role": "client", "address": self.node.address, **process_info()},
                               timeout=timeout)
        except BaseException:
            self.node.close(linger=0)
            raise

    def status(self) -> dict[str, Any]:
        """The scheduler's view: nodes, key map, tables, and each server's report."""
        return self.node.call(SCHEDULER_ID, Message(Op.STATUS), "status request", self.timeout).body

    def shutdown(self, reason: str = "shutdown requested", code: int = 0) -> None:
        """Ask the scheduler to end the job and stop every node."""
        self.node.call(SCHEDULER_ID, Message(Op.SHUTDOWN, body={"reason": reason, "code": code}),
                       "shutdown request", self.timeout)
        self._ended = True

    def set_consistency(self, table: str, policy: Consistency) -> None:
        """Change a table's consistency model on every node while the job runs."""
        self.node.call(SCHEDULER_ID, Message(Op.POLICY, body={"name": table, "policy": policy.to_wire()}),
                       f"changing the consistency of table {table!r}", self.timeout)

    def drain(self, node: int) -> dict[str, Any]:
        """Move every key range off server ``node`` and stop it; return the new key map."""
        reply = self.node.call(SCHEDULER_ID, Message(Op.DRAIN, body={"node": node}),
                               f"draining server {node}", self.timeout)
        keymap: dict[str, Any] = reply.body["keymap"]
        return keymap

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
