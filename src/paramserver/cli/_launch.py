"""``paramserver launch``: run a whole job, on this machine or over ssh on others.

Starts a scheduler, S servers and W copies of the user's command as workers, each its own
process, with the environment a worker needs (PS_SCHEDULER, the DMLC_* names, PS_WORKER_RANK).
With hosts (``-H host1,host2`` or ``--hostfile FILE``) the scheduler runs here and the
servers and workers run on those hosts over OpenSSH (``deploy/_remote.py``: placement, the
environment passed on, output prefixed with each node's role and host); the workers'
command (and this Python, for the servers) must exist at the same path on every host.
It passes the workers' exit code through; when a worker fails, a node dies, or the user
presses Ctrl-C, it stops every process and says why. A scheduler killed by a signal is
restarted at its address (``--recover``, up to :data:`MAX_RESTARTS` times): the servers and
workers go on meanwhile and rejoin it, and it rebuilds the job from their reports. A command that cannot be run is
reported before any process starts.

The nodes log at PS_LOG_LEVEL, WARNING unless set, so that their INFO lines do not mix
with the script's output. Messages name servers by their node id (as the nodes' logs and
``paramserver status`` do) once they have registered, and workers by their rank.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from .._config import Config
from .._errors import PSError
from .._words import plural
from ..deploy import (
    AdminClient,
    Host,
    Proc,
    forwarded_env,
    node_command,
    place,
    spawn,
    spawn_remote,
    start_scheduler,
    stop_all,
    wait_all,
)
from ..node import choose_host, split_address

__all__ = ["MAX_RESTARTS", "launch"]

#: How many times launch restarts a scheduler killed by a signal during one job.
MAX_RESTARTS = 3


def _say(text: str, *, quiet: bool = False) -> None:
    """Print a line to stderr unless ``quiet`` (progress lines pass it; errors never do)."""
    if not quiet:
        print(f"paramserver launch: {text}", file=sys.stderr, flush=True)


def _runnable(command: Sequence[str], env: dict[str, str]) -> str | None:
    """Why ``command`` cannot be run here (not found, not executable), or None if it can."""
    prog = command[0]
    if os.sep in prog or (os.altsep and os.altsep in prog):
        if not os.path.exists(prog):
            return f"{prog}: no such file"
        if os.path.isdir(prog) or not os.access(prog, os.X_OK):
            return f"{prog}: not an executable file"
        return None
    if shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        return f"{prog}: command not found (not on PATH)"
    return None


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def launch(command: Sequence[str], *, servers: int, workers: int, host: str | None = None,
           env: dict[str, str] | None = None, poll: float = 0.05, quiet: bool = False,
           dashboard: int | None = None, hosts: Sequence[Host] = (), ssh: Sequence[str] = ("ssh",),
           forward: Sequence[str] = ()) -> int:
    """Run ``command`` as ``workers`` workers of a job with ``servers`` servers, here or,
    with ``hosts``, over ``ssh`` on them (``forward``: more variables to pass on).

    The scheduler binds ``host``: 127.0.0.1 by default, or with ``hosts`` the local address
    that routes to the first of them. Returns the exit code to pass on: 0 if every worker
    succeeded, else the first failing worker's code (or 1 if a node died, 130 on Ctrl-C).
    """
    if not command:
        _say("no command given; usage: paramserver launch -s 2 -w 4 -- python train.py")
        return 2
    base = {**os.environ, **(env or {})}
    base.setdefault("PS_LOG_LEVEL", "WARNING")  # nodes' INFO lines would mix with the script's output
    Config.from_env(base)  # fail early on a bad setting
    why = _runnable(command, base) if not hosts else None  # (a remote's PATH is the remote's business)
    if why is not None:
        _say(f"cannot run the workers' command: {why}; nothing was started")
        return 127
    procs: list[Proc] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        where = place(hosts, servers, workers) if hosts else None
        bind = host or (choose_host(f"tcp://{hosts[0].name}:22") if hosts else "127.0.0.1")
        sched, address = start_scheduler(base, host=bind, servers=servers, workers=workers, dashboard=dashboard)
        procs.append(sched)
        uri, port = split_address(address)
        node_env = {**base, "PS_SCHEDULER": address, "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
                    "DMLC_NUM_SERVER": str(servers), "DMLC_NUM_WORKER": str(workers)}
        if "PS_KEYS" in node_env:
            node_env["PS_KEYS"] = os.path.abspath(node_env["PS_KEYS"])

        def start(role: str, i: int, argv: list[str], role_env: dict[str, str]) -> Proc:
            """Node ``i`` of ``role`` ("server" or "worker"): here, or on its host over ssh."""
            name = f"{role} {i}"
            if where is None:
                return spawn(name, argv, {**node_env, **role_env})
            on = (where.servers if role == "server" else where.workers)[i]
            return spawn_remote(name, on, argv, {**forwarded_env(node_env, forward), **role_env}, ssh=ssh)

        server_argv = node_command("server") if hosts else node_command("server", "--host", bind)
        server_procs = [start("server", i, server_argv, {"DMLC_ROLE": "server"}) for i in range(servers)]
        procs += server_procs
        names = _ServerNames(address, server_procs, base)
        if where is None:  # local servers: name them before a worker can act (a server that dies at
            names.settle(SETTLE_SECONDS)  # once would be gone from the table, unnamed)
        worker_procs = []
        for i in range(workers):
            try:
                worker_procs.append(start("worker", i, list(command),
                                          {"DMLC_ROLE": "worker", "PS_WORKER_RANK": str(i)}))
            except OSError as exc:  # vanished or lost its permission since the check
                raise PSError(f"cannot run the workers' command {command[0]!r}: {exc.strerror or exc}") from None
            procs.append(worker_procs[-1])
        on_hosts = f" on {', '.join(h.name for h in hosts)} over ssh" if hosts else ""
        _say(f"scheduler at {address}, {plural(servers, 'server')}, {plural(workers, 'worker')}{on_hosts} running "
             f"{' '.join(command)}", quiet=quiet)

        def restart() -> Proc:
            """A scheduler at the dead one's address that takes the job over (--recover)."""
            new, _ = start_scheduler(base, host=bind, servers=servers, workers=workers, dashboard=dashboard,
                                     port=port, recover=True)
            procs[0] = new
            return new

        return _supervise(sched, names, server_procs, worker_procs, procs, poll, quiet, restart)
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


def _supervise(sched: Proc, names: _ServerNames, servers: list[Proc], workers: list[Proc], procs: list[Proc],
               poll: float, quiet: bool, restart: Callable[[], Proc]) -> int:
    ended: float | None = None
    restarts = 0
    while True:
        if sched.poll() is None:
            names.resolve()
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
                names.resolve(now=True)  # a dead server is named by the failure in the scheduler's timeline
                _say(f"{s} exited with code {code} while workers were running; stopping the job")
                stop_all(procs)
                return 1
        code = sched.poll()
        if code is not None and code < 0 and restarts < MAX_RESTARTS:
            # killed by a signal (not a job it ended): the nodes go on and rejoin a new one
            restarts += 1
            _say(f"the scheduler was killed ({_signal_name(-code)}); restarting it at {names.address} "
                 f"({restarts} of {MAX_RESTARTS}); it rebuilds the job from the nodes' reports")
            sched = restart()
            continue
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
            with AdminClient(names.address, timeout=5.0, config=Config.from_env(names.env)) as admin:
                admin.shutdown("all workers exited")
        except PSError:
            pass
        stop_all(procs)
    _say(f"done: {plural(len(workers), 'worker')} finished", quiet=quiet)
    return 0


_PID = re.compile(r"\(pid (\d+)")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: Seconds ``launch`` waits for its local servers to register (and so be named by node id)
#: before it starts the workers; the job goes on after it either way.
SETTLE_SECONDS = 10.0


class _ServerNames:
    """Renames the server processes after their node ids ("server 0" -> "server 3", as the
    nodes' logs and ``paramserver status`` call them) once the scheduler lists their pids.
    Asks at most every half second, and stops asking once every server is named."""

    def __init__(self, address: str, servers: list[Proc], env: dict[str, str]) -> None:
        self.address = address
        self.unnamed = list(servers)
        self.env = env
        self.next_try = time.monotonic() + 0.2

    def settle(self, timeout: float) -> None:
        """Name the servers as soon as they registered: wait at most ``timeout`` seconds, and
        not at all once one of them exited (the supervisor reports that)."""
        deadline = time.monotonic() + timeout
        while self.unnamed and time.monotonic() < deadline and all(p.poll() is None for p in self.unnamed):
            self.resolve(now=True)
            if self.unnamed:
                time.sleep(0.05)

    def resolve(self, *, now: bool = False) -> None:
        if not self.unnamed or (time.monotonic() < self.next_try and not now):
            return
        self.next_try = time.monotonic() + 0.5
        try:
            with AdminClient(self.address, timeout=2.0, config=Config.from_env(self.env), quiet=True) as admin:
                nodes = admin.node.nodes().values()  # the node table of its registration: no server is asked
                ids = {n.pid: n.id for n in nodes if n.role == "server"}
                if now and any(p.pid not in ids for p in self.unnamed):
                    # a server that died is gone from the table at once; its failure names it
                    # ("server 3 (pid 123 at ...) died: ...")
                    for _, kind, nid, text in admin.status().get("events", []):
                        found = _PID.search(text) if kind == "failure" else None
                        if found and nid >= 0:
                            ids.setdefault(int(found.group(1)), nid)
        except PSError:
            return
        for p in list(self.unnamed):
            if p.pid in ids:
                p.name = f"server {ids[p.pid]}"
                self.unnamed.remove(p)
