"""``paramserver launch --slurm`` / ``--mpi``: this process is one task of a job that
``srun`` or ``mpirun`` started N times; it becomes the node its rank names.

Task 0 runs the scheduler (bound to 127.0.0.1 when Slurm says every task is on this
machine, else to this host's address, or ``--host``) and writes its address to the job's
rendezvous file (``deploy/_ranks.py``); tasks 1..S read it and become servers; the rest
run the command as workers, with PS_SCHEDULER, the DMLC_* names and PS_WORKER_RANK set.
Servers and workers replace this process (``exec``), so their exit code is the task's;
the scheduler runs as a child that SIGINT and SIGTERM (Slurm's cancel) are passed on to,
and the rendezvous file is removed when it exits. The job's exit code is therefore what
``srun`` / ``mpirun`` report: 0 when every task succeeded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from .._config import Config
from .._errors import ConnectError
from ..deploy import node_command, rendezvous_path, role_of, task_rank
from ..node import split_address

__all__ = ["run_task"]


def _say(text: str) -> None:
    print(f"paramserver launch: {text}", file=sys.stderr, flush=True)


def _this_host() -> str:
    """This machine's address for the other machines of the job."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _await_address(path: str, since: float, timeout: float) -> str:
    """The address task 0 wrote to ``path`` (written after ``since``, so that a file left
    by an earlier job is never used)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_mtime >= since:
                with open(path) as f:
                    address = f.read().strip()
                if address:
                    return address
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise ConnectError(f"task 0 did not write the scheduler's address to {path} within {timeout:g} s "
                       f"(PS_CONNECT_TIMEOUT): is its log showing an error, and do all tasks share that directory? "
                       f"(--rendezvous DIR names one they all see)")


def run_task(kind: str, command: Sequence[str], *, servers: int, host: str | None = None,
             rendezvous: str | None = None) -> int:
    """Become this task's node; returns only for the scheduler (its exit code) or on an error."""
    env = dict(os.environ)
    config = Config.from_env(env)
    task = task_rank(env, kind)
    role, index = role_of(task, servers)
    workers = task.size - 1 - servers
    path = rendezvous_path(task, os.path.abspath(rendezvous or os.getcwd()))
    if role == "scheduler":
        if os.path.exists(path):
            os.unlink(path)
        bind = host or ("127.0.0.1" if task.single_node else _this_host())
        _say(f"{task.kind} task 0 of {task.size}: the scheduler on {bind} for {servers} servers and {workers} "
             f"workers; its address goes to {path}")
        child = subprocess.Popen(node_command("scheduler", "--host", bind, "--port", str(config.root_port),
                                              "--servers", str(servers), "--workers", str(workers),
                                              "--address-file", path), env=env)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda signum, frame: child.send_signal(signum))
        try:
            return child.wait()
        finally:
            if os.path.exists(path):
                os.unlink(path)
    if not command and role == "worker":
        _say("no command given for the workers; usage: srun -n N paramserver launch --slurm -s S -- python train.py")
        return 2
    address = _await_address(path, time.time() - 120, config.connect_timeout)
    uri, port = split_address(address)
    env.update({"PS_SCHEDULER": address, "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
                "DMLC_NUM_SERVER": str(servers), "DMLC_NUM_WORKER": str(workers), "DMLC_ROLE": role})
    argv = node_command("server") if role == "server" else list(command)
    if role == "worker":
        env["PS_WORKER_RANK"] = str(index)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        _say(f"task {task.rank}: cannot run {argv[0]!r}: {exc.strerror or exc}")
        return 127
