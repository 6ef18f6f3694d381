"""ps-lite's way of starting a job: one training script, its role from ``DMLC_ROLE``.

ps-lite's ``tests/local.sh``, dmlc-tracker, MXNet and BytePS start the *same* script as
every process of a job and set ``DMLC_ROLE`` to ``scheduler``, ``server`` or ``worker``
(with ``DMLC_PS_ROOT_URI``/``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``).
Under the scheduler and server roles :func:`paramserver.connect` does not return: the
process becomes that node (``exec`` of ``python -m paramserver scheduler|server``, the same
pid, environment and standard streams) and exits with the job's code when the job ends,
as ``mx.kv.create('dist')`` does in MXNet. Under the worker role (or none) ``connect``
joins the job as usual.

Thread-safety: called from :func:`connect` only; it replaces the whole process.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from .._config import Config

__all__ = ["NODE_ROLES", "become_node"]

log = logging.getLogger("paramserver.worker")

#: The DMLC_ROLE values under which connect() runs a node instead of a worker.
NODE_ROLES = ("scheduler", "server")


def become_node(config: Config, address: str | None) -> NoReturn:
    """Replace this process with the node of ``config.role`` (scheduler or server).

    ``address`` (the one given to connect, if any) is the scheduler's: a server joins it, a
    scheduler binds its port (else DMLC_PS_ROOT_URI/PORT, as ps-lite's scheduler does).
    """
    role = config.role
    assert role in NODE_ROLES
    argv = [sys.executable, "-m", "paramserver", role]
    env = dict(os.environ)
    if address:
        env["PS_SCHEDULER"] = address
    if config.keys:
        env["PS_KEYS"] = os.path.abspath(config.keys)
    if role == "scheduler" and address:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        argv += ["--host", host, "--port", port]
    log.info("DMLC_ROLE=%s: this process becomes the %s (%s)", role, role, " ".join(argv[1:]))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, argv, env)
