"""Test doubles for users' own tests: a whole cluster in this process, over memory.

:class:`InProcessCluster` runs a scheduler and servers as threads of the current process,
connected by the in-memory transport instead of TCP, so tests of code written against
paramserver run fast and need no ports::

    from paramserver.testing import InProcessCluster

    with InProcessCluster(servers=2) as cluster:
        w = cluster.connect()
        t = w.table("w")
        ...

Everything above the transport (codec, scheduler, servers, workers) is the real code.
Thread-safety: create and close from one thread; workers follow the usual rules.
"""

from __future__ import annotations

import threading
from typing import Any

from ._config import Config
from .scheduler import SchedulerProcess
from .server import Server, start_server
from .transport import MemoryHub, MemoryTransport
from .worker import Worker, connect

__all__ = ["InProcessCluster"]


class InProcessCluster:
    """A scheduler and ``servers`` servers in this process, over an in-memory transport.

    Parameters
    ----------
    servers:
        Number of servers.
    workers:
        Workers the job expects (0: any number).
    replicas:
        Copies of every key range (1: no replicas), as ``LocalCluster(replicas=)``.
    **settings:
        Config fields to override (``heartbeat_timeout=2.0``, ``timeout=10.0``...).
    """

    def __init__(self, servers: int = 1, workers: int = 0, replicas: int = 1, **settings: Any) -> None:
        self.hub = MemoryHub()
        # The servers run in this very process: importing user code is no step up (any module).
        settings.setdefault("updater_modules", "*")
        self.config = Config.from_env(num_servers=servers, num_workers=workers, **settings)
        self._scheduler = SchedulerProcess(self.config, host="", replicas=replicas,
                                           transport=MemoryTransport(self.hub))
        self.address = self._scheduler.start()
        self._thread = threading.Thread(target=self._scheduler.run, name="paramserver-test-scheduler", daemon=True)
        self._thread.start()
        self.servers: list[Server] = []
        try:
            starters = [threading.Thread(target=self._start_server, daemon=True) for _ in range(servers)]
            for t in starters:
                t.start()
            for t in starters:
                t.join()
            if len(self.servers) != servers:
                raise RuntimeError("a server of the InProcessCluster failed to start")
        except BaseException:
            self.close()
            raise

    def _start_server(self) -> None:
        self.servers.append(start_server(self.config, self.address, transport=MemoryTransport(self.hub)))

    def connect(self, **kwargs: Any) -> Worker:
        """A worker of this cluster (in this process)."""
        return connect(self.address, config=self.config, transport=MemoryTransport(self.hub), **kwargs)

    def close(self) -> None:
        """End the job and stop the scheduler and servers."""
        if self._thread.is_alive():
            self._scheduler.request_shutdown("the InProcessCluster was closed")
            self._thread.join(timeout=15)
        for server in self.servers:
            server.done.wait(5)
            server.node.close(linger=0)

    def __enter__(self) -> InProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
