"""LocalCluster: a scheduler and servers as subprocesses of this process.

``with LocalCluster(servers=2) as cluster: w = paramserver.connect(cluster.address)`` gives
a real cluster on 127.0.0.1: every node its own OS process, talking over TCP. The cluster
is ready when the context is entered (every server registered); leaving it shuts the job
down, closes this process's workers connected to it, and reaps every child (killing any
that do not exit within a few seconds). If this process dies, the scheduler notices and
ends the job, and the servers follow it.

Thread-safety: create, use and close a LocalCluster from one thread.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .._config import Config
from .._errors import ConnectError, InvalidArgument, JobAborted, PSError
from ..checkpoint import open_location, read_manifest
from ..protocol import ClusterStatus
from ..worker import open_workers
from ._admin import AdminClient
from ._procs import Proc, node_command, spawn, start_scheduler, stop_all, wait_all

__all__ = ["LocalCluster"]

log = logging.getLogger("paramserver.local")


class LocalCluster:
    """A local cluster of one scheduler and ``servers`` server processes.

    Parameters
    ----------
    servers:
        Number of server processes.
    replicas:
        Copies of each key range (1: no copies). Must be at most ``servers``.
    workers:
        Number of workers the job expects (barriers count them; the job ends when all
        have closed). 0 (default): workers come and go freely.
    host:
        Address to bind (127.0.0.1 by default).
    env:
        Extra environment variables for the node processes (e.g. ``PS_HEARTBEAT_TIMEOUT``).
    log_level:
        Log level of the node processes (PS_LOG_LEVEL), WARNING by default.
    timeout:
        Seconds to wait for the cluster to come up.
    restore:
        A checkpoint (directory or URL) to resume from: every server is started with
        ``--restore`` and fills each table, when it is declared, with the checkpoint's keys
        it masters (the number of servers may differ from the checkpoint's). The manifest
        is checked before any process starts (:class:`CheckpointError` if unreadable).
    keys:
        A directory written by ``paramserver keygen`` (PS_KEYS): every node then talks
        CURVE and admits only the cluster's role keys; connect workers with
        ``paramserver.connect(cluster.address, keys=...)`` (docs/security.md).
    dashboard:
        A port on ``host`` where the scheduler serves the live dashboard
        (``paramserver dashboard``; docs/dashboard.md), or None for none.

    Attributes
    ----------
    address:
        The scheduler's address, ``tcp://host:port``; pass it to :func:`paramserver.connect`.
    server_pids:
        OS process ids of the servers, in order of start.
    scheduler_pid:
        OS process id of the scheduler.
    """

    def __init__(self, servers: int = 1, replicas: int = 1, *, workers: int = 0, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, log_level: str = "WARNING", timeout: float = 60.0,
                 restore: str | os.PathLike[str] | None = None, keys: str | os.PathLike[str] | None = None,
                 dashboard: int | None = None) -> None:
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
            raise InvalidArgument(f"servers must be an int >= 1, got {servers!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= servers:
            raise InvalidArgument(f"replicas must be an int in [1, servers={servers}], got {replicas!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise InvalidArgument(f"workers must be an int >= 0, got {workers!r}")
        self.servers = servers
        self.replicas = replicas
        self.workers = workers
        self.host = host
        self.timeout = timeout
        self._env = {**os.environ, "PS_LOG_LEVEL": log_level, **(env or {})}
        if keys is not None:
            self._env["PS_KEYS"] = os.path.abspath(keys)
        Config.from_env(self._env)  # fail early on a bad setting
        self.dashboard = dashboard
        self.restore = open_location(restore).url if restore is not None else None
        if self.restore is not None:
            read_manifest(self.restore)  # fail early on a missing or corrupt checkpoint
        self._procs: list[Proc] = []
        self._servers: list[Proc] = []
        self.address = ""
        self.scheduler_pid = 0
        self._closed = False
        self._start()

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        try:
            sched, self.address = start_scheduler(self._env, host=self.host, servers=self.servers,
                                                  workers=self.workers, replicas=self.replicas,
                                                  timeout=self.timeout, dashboard=self.dashboard)
            self._procs.append(sched)
            self.scheduler_pid = sched.pid
            extra = ("--restore", self.restore) if self.restore else ()
            for _ in range(self.servers):
                self._spawn_server(*extra)
            self._wait_ready()
        except BaseException:
            self._kill()
            raise

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler (failure tests): servers and workers go on pushing and pulling."""
        sched = self._procs[0]
        sched.popen.kill()
        sched.popen.wait()

    def restart_scheduler(self) -> None:
        """Start a scheduler at the address of the one that died (``--recover``): the nodes
        rejoin it and it rebuilds the job's state from their reports."""
        if self._procs[0].poll() is None:
            raise InvalidArgument("the scheduler is still running; kill_scheduler() first")
        port = int(self.address.rsplit(":", 1)[1])
        sched, address = start_scheduler(self._env, host=self.host, servers=self.servers, workers=self.workers,
                                         replicas=self.replicas, timeout=self.timeout, dashboard=self.dashboard,
                                         port=port, recover=True)
        self._procs[0] = sched
        self.scheduler_pid = sched.pid
        assert address == self.address, (address, self.address)

    def _spawn_server(self, *args: str) -> Proc:
        """Start server number ``len(self._servers)`` (extra command-line ``args``) and track it
        in ``_servers`` and ``_procs`` (which every process this cluster started is in)."""
        proc = spawn(f"server {len(self._servers)}", node_command("server", "--host", self.host, *args),
                     {**self._env, "PS_SCHEDULER": self.address})
        self._servers.append(proc)
        self._procs.append(proc)
        return proc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            for p in self._procs:
                code = p.poll()
                if code is not None:
                    raise ConnectError(f"LocalCluster: {p} exited with code {code} during start-up")
            try:
                with AdminClient(self.address, timeout=5.0, config=Config.from_env(self._env), quiet=True) as admin:
                    while time.monotonic() < deadline:
                        status = admin.cluster_status()
                        if len(status.servers) >= self.servers and status.keymap:
                            return
                        for p in self._procs:
                            if p.poll() is not None:
                                raise ConnectError(f"LocalCluster: {p} exited with code {p.poll()} during start-up")
                        time.sleep(0.05)
            except ConnectError:
                raise
            except PSError as exc:
                log.debug("cluster not ready yet: %s", exc)
            if time.monotonic() > deadline:
                raise ConnectError(f"LocalCluster: the servers did not all register within {self.timeout:g} s")
            time.sleep(0.1)

    @property
    def server_pids(self) -> list[int]:
        """OS process ids of the servers, in order of start (drained and dead ones included)."""
        return [p.pid for p in self._servers]

    def server_id(self, i: int) -> int:
        """The node id of the ``i``-th server started (as ``paramserver status`` shows it)."""
        pid = self._servers[i].pid
        for sid, s in self._cluster_status().servers.items():
            if s.get("pid") == pid:
                return int(sid)
        raise InvalidArgument(f"server {i} (pid {pid}) is not a member of the cluster (drained or dead)")

    def add_server(self, timeout: float | None = None) -> int:
        """Start one more server: it joins the running cluster and takes over its share of
        the key ranges by two-phase migration while training goes on. Returns its index in
        :attr:`server_pids` once it masters its ranges.

        Raises
        ------
        ConnectError
            The server exited, or the migration did not finish within ``timeout`` seconds
            (default: the cluster's ``timeout``).
        """
        limit = self.timeout if timeout is None else timeout
        proc = self._spawn_server()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConnectError(f"LocalCluster: {proc} exited with code {proc.poll()} while joining")
            status = self._cluster_status()
            ids = [int(sid) for sid, s in status.servers.items() if s.get("pid") == proc.pid]
            masters = {entry[2] for entry in (status.keymap or {}).get("ranges", [])}
            if ids and ids[0] in masters and not status.migrating:
                return len(self._servers) - 1
            time.sleep(0.05)
        raise ConnectError(f"LocalCluster: the new server did not take over its key ranges within {limit:g} s")

    def remove_server(self, i: int, timeout: float = 120.0) -> None:
        """Drain the ``i``-th server: its key ranges move to the others (two-phase
        migration, training goes on), then it stops. Returns once it has exited."""
        node = self.server_id(i)
        with AdminClient(self.address, timeout=timeout, config=Config.from_env(self._env)) as admin:
            admin.drain(node)
        if not wait_all([self._servers[i]], timeout):
            raise ConnectError(f"LocalCluster: drained server {i} did not exit within {timeout:g} s")

    def status(self) -> dict[str, Any]:
        """The cluster's status as ``paramserver status --json`` prints it."""
        with AdminClient(self.address, config=Config.from_env(self._env)) as admin:
            return admin.status()

    def _cluster_status(self) -> ClusterStatus:
        with AdminClient(self.address, config=Config.from_env(self._env)) as admin:
            return admin.cluster_status()

    def close(self, timeout: float = 10.0) -> None:
        """Shut the job down and reap every process. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in open_workers():
            if w.address == self.address:
                w.close(timeout=2.0)
        if self._procs and self._procs[0].poll() is None:
            try:
                with AdminClient(self.address, timeout=5.0, config=Config.from_env(self._env)) as admin:
                    admin.shutdown("the LocalCluster was closed")
            except JobAborted:
                pass  # the job already ended (every worker of a fixed-size job said goodbye)
            except PSError as exc:
                log.warning("LocalCluster: shutdown request failed (%s); terminating the processes", exc)
        if self._procs and self._procs[0].poll() not in (None, 0):
            timeout = 0  # the scheduler was killed: no one tells the servers to stop
        if not wait_all(self._procs, timeout):
            log.warning("LocalCluster: processes still running after %g s; killing them", timeout)
        self._kill()

    def _kill(self) -> None:
        stop_all(self._procs, grace=2.0)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self._kill()

    def __repr__(self) -> str:
        return f"<LocalCluster {self.address} servers={self.servers} pids={self.server_pids}>"
