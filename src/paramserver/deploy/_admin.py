"""A short-lived client node for operators: cluster status and shutdown.

Used by ``paramserver status`` and by :class:`~paramserver.LocalCluster`. It registers with
the role ``client``, which the scheduler answers at once and never announces to servers.
While a call waits it checks every second that the scheduler still listens, so a
scheduler that has exited fails the call at once with a message that says so; a call that
runs out of time names the limit as the caller set it (``limit``, e.g. ``--timeout``).

Thread-safety: one user thread at a time.
"""

from __future__ import annotations

import time
from typing import Any

from .._config import Config, parse_address
from .._errors import ConnectError, PSError, RequestTimeout
from ..clock import Consistency
from ..node import SCHEDULER_ID, Node, choose_host, probe, process_info
from ..protocol import ClusterStatus, Drain, DrainReply, Message, Op, PolicyRequest, RegisterRequest, Shutdown

__all__ = ["AdminClient"]


class AdminClient:
    """Talks to the scheduler at ``address``. Use as a context manager.

    ``limit`` names ``timeout`` in messages (``--timeout`` for the command line); ``quiet``
    leaves out the warning that the registration waits (for callers that poll).
    """

    def __init__(self, address: str, *, timeout: float = 10.0, config: Config | None = None,
                 limit: str = "the timeout", quiet: bool = False) -> None:
        self.address = parse_address(address)
        self.config = config or Config.from_env()
        self.timeout = timeout
        self.limit = limit
        self._ended = False
        self.node = Node("client", self.config)
        self.node.start(choose_host(self.address))
        try:
            me = RegisterRequest(role="client", address=self.node.address, **process_info())
            self.node.register(self.address, me.to_wire(), timeout=timeout, limit=limit, quiet=quiet)
        except BaseException:
            self.node.close(linger=0)
            raise

    def _call(self, msg: Message, what: str, timeout: float | None = None) -> Message:
        """Send ``msg`` to the scheduler and wait for its reply, checking each second that
        the scheduler still listens.

        Raises
        ------
        ConnectError
            The scheduler has exited (nothing listens at its address any more).
        RequestTimeout
            No reply within ``timeout`` (default: the client's), which is named as ``limit``.
        """
        limit = self.timeout if timeout is None else timeout
        box: list[Message] = []
        req = self.node.request({SCHEDULER_ID: msg}, what, on_part=box.append, timeout=limit)
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            try:
                req.wait(max(0.0, min(1.0, left)))
                return box[0]
            except RequestTimeout:
                gone = probe(self.address)
                if gone:
                    raise ConnectError(f"{what}: the scheduler at {self.address} stopped answering; {gone}: "
                                       f"it has exited") from None
                if left <= 1.0:
                    raise RequestTimeout(f"{what}: the scheduler at {self.address} did not answer within "
                                         f"{limit:g} s ({self.limit})") from None

    def status(self) -> dict[str, Any]:
        """The scheduler's view: nodes, key map, tables, and each server's report (the
        :class:`ClusterStatus` body as it came, checked).

        Raises
        ------
        ProtocolError
            The reply is not a status report.
        """
        body = self._call(Message(Op.STATUS), "status request").body
        ClusterStatus.from_wire(body)
        return body

    def cluster_status(self) -> ClusterStatus:
        """:meth:`status`, typed."""
        return ClusterStatus.from_wire(self.status())

    def shutdown(self, reason: str = "shutdown requested", code: int = 0) -> None:
        """Ask the scheduler to end the job and stop every node."""
        self._call(Message(Op.SHUTDOWN, body=Shutdown(reason=reason, code=code).to_wire()), "shutdown request")
        self._ended = True

    def set_consistency(self, table: str, policy: Consistency) -> None:
        """Change a table's consistency model on every node while the job runs."""
        body = PolicyRequest(name=table, policy=policy.to_wire()).to_wire()
        self._call(Message(Op.POLICY, body=body), f"changing the consistency of table {table!r}")

    def drain(self, node: int) -> dict[str, Any]:
        """Move every key range off server ``node`` and stop it; return the new key map."""
        reply = self._call(Message(Op.DRAIN, body=Drain(node=node).to_wire()), f"draining server {node}")
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
