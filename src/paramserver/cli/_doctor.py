"""``paramserver doctor ADDRESS``: why a node here cannot join the cluster there, before it hangs.

Checks, in order, each printed as ``ok``, ``FAIL`` or ``warn`` with what is wrong and how
to fix it:

1. *name*: the scheduler's host name resolves (DNS, /etc/hosts);
2. *route*: the local address that routes to it, which a node here binds and advertises
   unless PS_HOST says otherwise (a loopback one cannot be reached from elsewhere);
3. *scheduler*: a TCP connection to the scheduler's port is accepted;
4. *registration*: this machine registers as a client, which needs both directions (the
   scheduler connects back to the address advertised here) and the same keys (PS_KEYS) and
   wire protocol; a timeout with a reachable port means one of those three;
5. *version*: the scheduler's paramserver version is this one;
6. *servers*: every server's advertised address accepts connections from here (workers
   talk to servers directly: a server advertising an address workers cannot reach is the
   classic hang).

Exit code 0 if nothing failed, 1 otherwise. Read-only: it changes nothing in the cluster.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

from .._config import Config, parse_address
from .._errors import ConnectError, PSError
from .._version import __version__
from ..deploy import AdminClient
from ..node import choose_host, probe, split_address
from ..protocol import PROTOCOL_VERSION

__all__ = ["doctor"]


def doctor(address: str, config: Config, *, timeout: float = 10.0,
           out: Callable[[str], None] = lambda s: print(s, flush=True)) -> int:
    """Run the checks against the scheduler at ``address``; return 0 if none failed."""
    failed = 0

    def say(mark: str, what: str, text: str) -> None:
        nonlocal failed
        failed += mark == "FAIL"
        out(f"{mark:<4} {what:<12} {text}")

    address = parse_address(address)
    host, port = split_address(address)
    out(f"paramserver {__version__} (wire protocol {PROTOCOL_VERSION}) checking the scheduler at {address}")
    try:
        ip = socket.gethostbyname(host)
        say("ok", "name", f"{host} is {ip}")
    except OSError as exc:
        say("FAIL", "name", f"cannot resolve {host!r} ({exc.strerror or exc}): fix DNS or /etc/hosts on this "
                            f"machine, or give the scheduler's IP address")
        return 1
    local = config.bind_host() or choose_host(address)
    source = "PS_HOST" if config.bind_host() else "the local address that routes to the scheduler"
    if local.startswith("127.") and not ip.startswith("127."):
        say("warn", "route", f"a node here would bind and advertise {local} ({source}), which no other machine "
                             f"reaches: set PS_HOST to this machine's address on the cluster's network")
    else:
        say("ok", "route", f"a node here binds and advertises {local} ({source})")
    why = probe(address, timeout=min(timeout, 5.0))
    if why:
        say("FAIL", "scheduler", f"{address}: {why}: is the scheduler running and bound to {host} (its "
                                 f"--host), and does a firewall let port {port} through?")
        return 1
    say("ok", "scheduler", f"{address} accepts TCP connections")
    keys = f"PS_KEYS={config.keys}" if config.keys else "no keys (PS_KEYS unset)"
    try:
        with AdminClient(address, timeout=timeout, config=config, limit="--timeout", quiet=True) as admin:
            me = admin.node.address
            say("ok", "registration", f"registered as a client from {me} with {keys}: the scheduler reached this "
                                      f"machine back, keys and protocol match")
            status = admin.status()
    except ConnectError as exc:
        say("FAIL", "registration", f"the port answers but the scheduler did not accept this machine within "
                                    f"{timeout:g} s ({exc}). One of: (a) keys: this side uses {keys}; a cluster with "
                                    f"keys needs PS_KEYS=DIR here (from `paramserver keygen`), one without needs "
                                    f"none; (b) the scheduler cannot connect back to {local}: a firewall or NAT in "
                                    f"between, or set PS_HOST to an address it reaches; (c) a paramserver other "
                                    f"than {__version__} (wire protocol {PROTOCOL_VERSION}) runs there")
        return 1
    except PSError as exc:
        say("FAIL", "registration", f"{exc}")
        return 1
    theirs = status.get("version", "")
    if theirs and theirs != __version__:
        say("warn", "version", f"the scheduler runs paramserver {theirs}, this machine {__version__}: install "
                               f"the same version everywhere")
    else:
        say("ok", "version", f"the scheduler runs paramserver {theirs or 'of the same wire protocol'}")
    servers = [(nid, addr) for nid, role, addr, *_ in status.get("nodes", []) if role == "server"]
    if not servers:
        say("warn", "servers", f"no server has registered yet (the job waits for {status.get('num_servers')})")
    for nid, addr in servers:
        why = probe(addr, timeout=min(timeout, 5.0))
        if why:
            say("FAIL", "servers", f"server {nid} advertises {addr}, which this machine cannot reach ({why}): "
                                   f"workers here would hang on it; start it with --host (PS_HOST) set to an "
                                   f"address workers reach, or open its port")
        else:
            say("ok", "servers", f"server {nid} at {addr} accepts TCP connections")
    out("all checks passed" if not failed else f"{failed} check(s) failed")
    sys.stdout.flush()
    return 1 if failed else 0
