"""Helpers shared by the tests (not tests themselves): running an application, a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def run_app(args: list[str], env: dict[str, str], timeout: float = 600) -> dict:
    """``paramserver run ARGS --json`` with ``env`` added to this environment: the job's JSON result."""
    res = subprocess.run([sys.executable, "-m", "paramserver", "run", *args, "--json"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tick_probing(core, now: float, error: str = "nothing listens there (connection refused)") -> list:
    """``core.tick(now)``, then every probe it asks for ends at ``now`` with ``error`` ("" for a
    probe that connected): the scheduler's failure detection without sockets."""
    from paramserver.scheduler import Probe

    out = core.tick(now)
    for probe in [a for a in out if isinstance(a, Probe)]:
        out += core.probed(probe.node, error, now)
    return out
