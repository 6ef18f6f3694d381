"""Nodes on other machines: host lists, placement, and processes started over OpenSSH.

``paramserver launch -H host1,host2`` (or ``--hostfile FILE``) starts the scheduler locally
and each server and worker with ``ssh HOST 'cd CWD && env K=V ... COMMAND'``. The pure
parts are here: :func:`parse_hosts` and :func:`read_hostfile` (OpenMPI's ``host slots=N``
and ``host:N``), :func:`place` (servers, then workers, round-robin over the hosts, never
more than a host's slots), :func:`forwarded_env` (what a remote node needs: every PS_* and
DMLC_* variable, PYTHONPATH, and the names asked for with ``-x``) and :func:`remote_script`
(the shell line the remote runs). :func:`spawn_remote` is the thin shell: it starts the
local ``ssh`` and copies the remote's output to ours, each line prefixed with the node's
role and host.

A remote node ends with its ssh: the remote line runs the command in the background and
kills it (SIGTERM) when its standard input closes, which sshd does when the connection
goes, so stopping the local ``ssh`` (Ctrl-C, a failure elsewhere) stops the remote node.
The exit code of ``ssh`` is the remote command's (255: ssh itself failed).

Thread-safety: the functions are pure; each :class:`~paramserver.deploy.Proc` from
:func:`spawn_remote` has two threads copying its output, nothing else shared.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from .._errors import InvalidArgument
from ._procs import Proc

__all__ = ["Host", "Placement", "forwarded_env", "parse_hosts", "place", "read_hostfile", "remote_script",
           "spawn_remote"]


@dataclass(frozen=True)
class Host:
    """A machine to start nodes on; ``slots`` 0 means no limit."""

    name: str
    slots: int = 0


@dataclass(frozen=True)
class Placement:
    """Where each node runs: ``servers[i]`` and ``workers[i]`` are host names."""

    servers: tuple[str, ...]
    workers: tuple[str, ...]


def _host(text: str, where: str) -> Host:
    name, sep, slots = text.strip().partition(":")
    if not name:
        raise InvalidArgument(f"{where}: empty host name")
    if not sep:
        return Host(name)
    if not slots.isdigit() or int(slots) < 1:
        raise InvalidArgument(f"{where}: {text!r}: slots must be a number >= 1 (host:slots)")
    return Host(name, int(slots))


def parse_hosts(text: str) -> list[Host]:
    """``host1,host2:4`` (``-H``): hosts in order, ``:N`` giving a host N slots."""
    hosts = [_host(part, "-H") for part in text.split(",") if part.strip()]
    if not hosts:
        raise InvalidArgument("-H: give at least one host, e.g. -H node1,node2")
    return hosts


def read_hostfile(path: str) -> list[Host]:
    """A host file: one host a line, ``host``, ``host slots=N`` or ``host:N``; ``#`` comments.

    Raises
    ------
    InvalidArgument
        The file cannot be read, is empty, or a line is not one of those forms.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InvalidArgument(f"--hostfile {path}: {exc.strerror or exc}") from None
    hosts = []
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"--hostfile {path}, line {no}"
        name, *rest = line.split()
        if not rest:
            hosts.append(_host(name, where))
            continue
        if len(rest) != 1 or not rest[0].startswith("slots=") or not rest[0][6:].isdigit() or int(rest[0][6:]) < 1:
            raise InvalidArgument(f"{where}: {raw.strip()!r}: expected 'host', 'host slots=N' or 'host:N'")
        hosts.append(Host(name, int(rest[0][6:])))
    if not hosts:
        raise InvalidArgument(f"--hostfile {path}: no hosts in it")
    return hosts


def place(hosts: Sequence[Host], servers: int, workers: int) -> Placement:
    """Servers round-robin over ``hosts``, then workers round-robin starting where the
    servers stopped, skipping hosts whose slots are used up.

    Raises
    ------
    InvalidArgument
        More nodes than the hosts' slots (when every host has a slot count).
    """
    if not hosts:
        raise InvalidArgument("no hosts to place nodes on")
    used = [0] * len(hosts)
    total = servers + workers
    if all(h.slots for h in hosts) and total > sum(h.slots for h in hosts):
        raise InvalidArgument(f"{servers} servers and {workers} workers need {total} slots; the hosts have "
                              f"{sum(h.slots for h in hosts)} ({', '.join(f'{h.name}:{h.slots}' for h in hosts)})")
    turn = 0

    def take() -> str:
        nonlocal turn
        for _ in range(len(hosts)):
            i = turn % len(hosts)
            turn += 1
            if not hosts[i].slots or used[i] < hosts[i].slots:
                used[i] += 1
                return hosts[i].name
        raise InvalidArgument("every host's slots are used")  # (excluded by the check above)

    return Placement(tuple(take() for _ in range(servers)), tuple(take() for _ in range(workers)))


def forwarded_env(env: Mapping[str, str], extra: Sequence[str] = ()) -> dict[str, str]:
    """What a remote node is given: every PS_* and DMLC_* variable, PYTHONPATH and
    VIRTUAL_ENV if set, and the variables named in ``extra`` (``-x NAME``)."""
    keep = {"PYTHONPATH", "VIRTUAL_ENV", *extra}
    return {k: v for k, v in env.items() if k.startswith(("PS_", "DMLC_")) or k in keep}


def remote_script(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """The shell line a remote runs: in ``cwd`` (if it exists there), with ``env``, run
    ``argv``; SIGTERM it when standard input closes (the ssh connection went); exit with
    its code."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    cmd = " ".join(shlex.quote(a) for a in argv)
    # (a background list's stdin is /dev/null unless redirected: the watcher gets ssh's
    # through fd 3)
    return (f"cd {shlex.quote(cwd)} 2>/dev/null; exec 3<&0; env {assigns} {cmd} < /dev/null 3<&- & c=$!; "
            f"{{ while read -r _; do :; done; kill -TERM $c 2>/dev/null; }} <&3 & w=$!; exec 3<&-; "
            f"wait $c; s=$?; kill $w 2>/dev/null; exit $s")


def _pump(src: IO[bytes], dst: IO[str], prefix: str) -> None:
    for raw in iter(src.readline, b""):
        dst.write(f"{prefix}{raw.decode(errors='replace').rstrip()}\n")
        dst.flush()
    src.close()


def spawn_remote(name: str, host: str, argv: Sequence[str], env: Mapping[str, str], *,
                 ssh: Sequence[str] = ("ssh",), cwd: str | None = None) -> Proc:
    """Start ``argv`` on ``host`` over ``ssh`` with ``env``; its output lines come out
    here as ``[name@host] line`` (stdout to our stdout, stderr to our stderr)."""
    script = remote_script(argv, env, cwd or os.getcwd())
    cmd = [*ssh, "-o", "BatchMode=yes", host, script]
    popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    prefix = f"[{name}@{host}] "
    assert popen.stdout is not None and popen.stderr is not None
    for src, dst in ((popen.stdout, sys.stdout), (popen.stderr, sys.stderr)):
        threading.Thread(target=_pump, args=(src, dst, prefix), name=f"paramserver-ssh-{name}", daemon=True).start()
    return Proc(f"{name} on {host}", popen)
