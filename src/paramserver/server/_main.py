"""Running a server process until the job ends."""

from __future__ import annotations

import logging

from .._config import Config
from .._errors import ConnectError, JobAborted
from ..node import Node, choose_host, process_info
from ._server import Server

__all__ = ["run_server"]

log = logging.getLogger("paramserver.server")


def run_server(config: Config, *, host: str = "", port: int = 0) -> int:
    """Start a server, register with the scheduler of ``config``, serve until the job ends.

    Returns the process exit code: 0 when the scheduler ended the job normally, 1 when the
    scheduler was unreachable or the job ended with an error.
    """
    address = config.scheduler_address()
    node = Node("server", config)
    server = Server(node)
    node.start(host or config.bind_host() or choose_host(address), port or config.port)
    try:
        node.register(address, {"role": "server", "address": node.address, **process_info()},
                      timeout=config.connect_timeout,
                      on_reply=lambda reply: server.add_tables(reply.body.get("tables", [])))
    except ConnectError as exc:
        log.error("%s", exc)
        node.close(linger=0)
        return 1
    node.start_heartbeats()
    ranges = [str(r) for r in node.keymap.ranges_of(node.id)] if node.keymap else []
    log.info("server %d serving at %s, key ranges %s", node.id, node.address, ", ".join(ranges))
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
