"""Starting a server node, and running a server process until the job ends."""

from __future__ import annotations

import logging

from .._config import Config
from .._errors import CheckpointError, ConnectError, JobAborted
from ..node import Node, choose_host, process_info
from ..protocol import RegisterReply, RegisterRequest
from ..transport import Transport
from ._server import Server

__all__ = ["run_server", "start_server"]

log = logging.getLogger("paramserver.server")


def _warm_up() -> None:
    """Run the compiled index and row kernels once: loading them takes about half a second,
    which on the receive thread of a serving node would delay its heartbeats."""
    import numpy as np

    from ..table import Store, TableSpec

    store = Store(TableSpec.create("warm-up", 1, "float32", "sum"))
    keys = np.array([1, 2], dtype=np.uint64)
    store.push(keys, np.ones((2, 1), dtype=np.float32))
    store.pull(keys)


def start_server(config: Config, address: str, *, host: str = "", port: int = 0,
                 transport: Transport | None = None, restore: str | None = None) -> Server:
    """Start a server node, register it with the scheduler at ``address``, start heartbeats.

    With ``restore`` (a checkpoint directory or URL) every table created on this server is
    filled with the checkpoint's keys it masters (see docs/checkpoints.md).

    Raises
    ------
    ConnectError
        No scheduler answered within PS_CONNECT_TIMEOUT.
    CheckpointError
        ``restore`` names no readable checkpoint (checked before registering).
    """
    _warm_up()  # compile (or load) the numba kernels now, not on the receive thread mid-job
    node = Node("server", config, transport)
    try:
        server = Server(node, restore=restore)
        node.start(host or config.bind_host() or choose_host(address), port or config.port)
        node.register(address, RegisterRequest(role="server", address=node.address, **process_info()).to_wire(),
                      timeout=config.connect_timeout,
                      on_reply=lambda reply: server.add_tables(RegisterReply.from_wire(reply.body).tables or []))
    except BaseException:
        node.close(linger=0)
        raise
    node.start_heartbeats()
    ranges = [str(r) for r in node.keymap.ranges_of(node.id)] if node.keymap else []
    log.info("server %d serving at %s, key ranges %s", node.id, node.address, ", ".join(ranges))
    return server


def run_server(config: Config, *, host: str = "", port: int = 0, restore: str | None = None) -> int:
    """Start a server and serve until the job ends; return the process exit code.

    0 when the scheduler ended the job normally; 1 when the scheduler was unreachable, the
    checkpoint to restore is unreadable, or the job ended with an error; 130 when interrupted.
    """
    try:
        server = start_server(config, config.scheduler_address(), host=host, port=port, restore=restore)
    except (ConnectError, CheckpointError) as exc:
        log.error("%s", exc)
        return 1
    node = server.node
    try:
        while not server.done.wait(0.5):
            pass
    except KeyboardInterrupt:
        log.warning("server %d interrupted", node.id)
        node.close(linger=0)
        return 130
    node.close(linger=1.0)
    aborted = node.aborted
    code = aborted.code if isinstance(aborted, JobAborted) else 1
    (log.info if code == 0 else log.error)("server %d exiting: %s", node.id, aborted)
    return code
