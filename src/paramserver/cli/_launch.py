"""``paramserver launch``: run a whole job on this machine.

Starts a scheduler, S servers and W copies of the user's command as workers, each its own
process, with the environment a worker needs (PS_SCHEDULER, the DMLC_* names, PS_WORKER_RANK).
It passes the workers' exit code through; when a worker fails, a node dies, or the user
presses Ctrl-C, it stops every process and says why.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from .._config import Config
from .._errors import PSError
from ..deploy import AdminClient, Proc, node_command, spawn, start_scheduler, stop_all, wait_all
from ..node import split_address

__all__ = ["launch"]


def _say(text: str, *, quiet: bool = False) -> None:
    """Print a line to stderr unless ``quiet`` (progress lines pass it; errors never do)."""
    if not quiet:
        print(f"paramserver launch: {text}", file=sys.stderr, flush=True)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def launch(command: Sequence[str], *, servers: int, workers: int, host: str = "127.0.0.1",
           env: dict[str, str] | None = None, poll: float = 0.05, quiet: bool = False,
           dashboard: int | None = None) -> int:
    """Run ``command`` as ``workers`` workers of a local job with ``servers`` servers.

    Returns the exit code to pass on: 0 if every worker succeeded, else the first failing
    worker's code (or 1 if a node died, 130 on Ctrl-C).
    """
    if not command:
        _say("no command given; usage: paramserver launch -s 2 -w 4 -- python train.py")
        return 2
    base = {**os.environ, **(env or {})}
    Config.from_env(base)  # fail early on a bad setting
    procs: list[Proc] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sched, address = start_scheduler(base, host=host, servers=servers, workers=workers, dashboard=dashboard)
        procs.append(sched)
        uri, port = split_address(address)
        node_env = {**base, "PS_SCHEDULER": address, "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
                    "DMLC_NUM_SERVER": str(servers), "DMLC_NUM_WORKER": str(workers)}
        server_procs = [spawn(f"server {i}", node_command("server", "--host", host),
                              {**node_env, "DMLC_ROLE": "server"}) for i in range(servers)]
        procs += server_procs
        worker_procs = [spawn(f"worker {i}", list(command),
                              {**node_env, "DMLC_ROLE": "worker", "PS_WORKER_RANK": str(i)})
                        for i in range(workers)]
        procs += worker_procs
        _say(f"scheduler at {address}, {servers} servers, {workers} workers running {' '.join(command)}", quiet=quiet)
        return _supervise(sched, server_procs, worker_procs, procs, address, base, poll, quiet)
    except _Interrupted as exc:
        _say(f"interrupted ({exc}); stopping the job")
        stop_all(procs)
        return 130
    except PSError as exc:
        _say(f"{exc}; stopping the job")
        stop_all(procs)
        return 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _supervise(sched: Proc, servers: list[Proc], workers: list[Proc], procs: list[Proc], address: str,
               env: dict[str, str], poll: float, quiet: bool) -> int:
    ended: float | None = None
    while True:
        for w in workers:
            code = w.poll()
            if code is not None and code != 0:
                _say(f"{w} exited with code {code}; stopping the job")
                stop_all(procs)
                return code if code > 0 else 128 - code
        if all(w.poll() == 0 for w in workers):
            break
        # A server or the scheduler exiting with 0 means the job ended normally (every
        # worker said goodbye): the workers are on their way out. Anything else is fatal.
        for s in servers:
            code = s.poll()
            if code:
                _say(f"{s} exited with code {code} while workers were running; stopping the job")
                stop_all(procs)
                return 1
        code = sched.poll()
        if code:
            _say(f"the scheduler exited with code {code} while workers were running; stopping the job")
            stop_all(procs)
            return code
        if code == 0 and ended is None:
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > 30:
            _say("the job ended but workers are still running after 30 s; stopping them")
            stop_all(procs)
            return 1
        time.sleep(poll)
    # Every worker succeeded: the scheduler ends the job once all said goodbye.
    if not wait_all([sched, *servers], timeout=10.0):
        try:
            with AdminClient(address, timeout=5.0, config=Config.from_env(env)) as admin:
                admin.shutdown("all workers exited")
        except PSError:
            pass
        stop_all(procs)
    _say(f"done: {len(workers)} workers finished", quiet=quiet)
    return 0
