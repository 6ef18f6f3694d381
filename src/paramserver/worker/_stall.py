"""Why a pull under bounded delay ran out of time: the workers that hold the clock back.

A pull of iteration ``t`` on a ``bounded(tau)`` table is held by each server until every
live worker has finished iteration ``t - tau - 1`` there. When such a pull times out, the
servers that did not answer are asked for their clocks (their status report has, per table,
the smallest iteration each worker finished), and the message names the workers that are
behind: the usual cause is a worker that stopped calling ``advance()``, not a slow server.

Uses only the node's public API. Thread-safety: called from the thread whose pull timed out.
"""

from __future__ import annotations

from .._errors import PSError, RequestTimeout
from ..clock import Consistency
from ..node import Node
from ..protocol import Message, Op

__all__ = ["explain_bounded_timeout"]


def explain_bounded_timeout(node: Node, exc: RequestTimeout, *, table: int, name: str, iteration: int,
                            policy: Consistency, servers: list[int], limit: float) -> RequestTimeout:
    """A :class:`RequestTimeout` that names the workers behind iteration ``iteration -
    policy.tau - 1`` on ``servers`` (the servers the pull waited for), or ``exc`` itself
    when none is found behind (then the servers really are slow) or none answers."""
    need = iteration - policy.tau - 1
    behind: dict[int, int] = {}
    for server in servers:
        try:
            report = node.call(server, Message(Op.STATUS), f"status of server {server}", 2.0).body
            clocks = report["tables"][str(table)]["clocks"]
            for worker, done in clocks.items():
                w, d = int(worker), int(done)
                if d < need:  # (a server lists only the live workers of the table)
                    behind[w] = min(d, behind.get(w, d))
        except (PSError, KeyError, TypeError, ValueError, AttributeError):
            continue
    if not behind:
        return exc
    who = "; ".join(f"{_name(node, w)} has finished only iteration {d}" for w, d in sorted(behind.items()))
    return RequestTimeout(
        f"pull from table {name!r} at iteration {iteration} under {policy} timed out after {limit:g} s: it waits "
        f"until every worker has finished iteration {need}, and {who}. A worker holds the clock back when it stops "
        f"calling advance() (or `with w.iteration():`) while the others go on")


def _name(node: Node, worker: int) -> str:
    """How the message names ``worker`` (a worker that joined after this one is not in its
    node table: then by its node id, as the scheduler's log and ``paramserver status`` do)."""
    return str(node.node_info(worker)) if node.node_info(worker) is not None else f"worker {worker}"
