"""Starting and stopping the processes of a local job (shared by launch and LocalCluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

from .._errors import ConnectError

__all__ = ["Proc", "node_command", "spawn", "start_scheduler", "stop_all", "wait_all"]


class Proc:
    """A child process with a name for messages ("server 1", "worker 0")."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


def node_command(role: str, *args: str) -> list[str]:
    """The command line that runs a paramserver node with this interpreter."""
    return [sys.executable, "-m", "paramserver", role, *args]


def spawn(name: str, cmd: Sequence[str], env: Mapping[str, str], *, new_session: bool = True) -> Proc:
    return Proc(name, subprocess.Popen(list(cmd), env=dict(env), start_new_session=new_session))


def start_scheduler(env: Mapping[str, str], *, host: str, servers: int, workers: int, replicas: int = 1,
                    timeout: float = 30.0, dashboard: int | None = None, port: int = 0,
                    recover: bool = False) -> tuple[Proc, str]:
    """Start a scheduler on ``port`` (0: a free one); return it and its address once it listens.
    With ``dashboard``, the scheduler also serves the live dashboard on that port (on ``host``).
    With ``recover``, it takes over the running job of a scheduler that died at that port.

    Raises
    ------
    ConnectError
        The scheduler exited or did not report its address within ``timeout``.
    """
    fd, path = tempfile.mkstemp(prefix="paramserver-", suffix=".addr")
    os.close(fd)
    os.unlink(path)
    cmd = node_command("scheduler", "--host", host, "--port", str(port), "--servers", str(servers),
                       "--workers", str(workers), "--replicas", str(replicas),
                       "--address-file", path, "--exit-with-parent", str(os.getpid()),
                       *(("--recover",) if recover else ()),
                       *(("--dashboard", str(dashboard), "--dashboard-bind", host) if dashboard is not None else ()))
    proc = spawn("scheduler", cmd, env)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    address = f.read().strip()
                if address:
                    return proc, address
            code = proc.poll()
            if code is not None:
                raise ConnectError(f"the scheduler exited with code {code} before listening")
            time.sleep(0.02)
        stop_all([proc])
        raise ConnectError(f"the scheduler did not start listening within {timeout:g} s")
    finally:
        if os.path.exists(path):
            os.unlink(path)


def stop_all(procs: Sequence[Proc], *, grace: float = 5.0) -> None:
    """SIGTERM every live process, wait up to ``grace`` seconds, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def wait_all(procs: Sequence[Proc], timeout: float) -> bool:
    """Wait for every process to exit; True if all did within ``timeout``."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True
