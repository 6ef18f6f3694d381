"""Failure detection: which nodes to probe, and which to declare dead. A pure state machine.

Two signals make a node *suspect*, and a probe decides:

* **A broken link.** A node whose established ZeroMQ connection to a peer broke (the
  peer's process died, its host reset the connection) reports it at once (``Op.SUSPECT``);
  the scheduler's own links report the same. This is how a crash is seen in milliseconds.
* **Silence.** A node the scheduler has not heard from for ``heartbeat_timeout`` seconds
  (host down, network partition, or only a busy machine).

A probe is a TCP connection to the node's advertised address within ``probe_timeout``
seconds, made by the I/O shell. It fails when nothing listens there any more (the
process is gone: connection refused) or the host does not answer (down, partitioned); it
succeeds while the node's process exists, even when it is too busy or stopped to answer
messages, because the host's kernel accepts the connection. So:

* a failed probe declares the node dead, whatever made it suspect;
* a late heartbeat alone never does: a silent node whose probe succeeds is probed again
  after another ``heartbeat_timeout``, and declared dead only when it stays silent for
  ``hung_timeout`` seconds (a process that accepts connections but never answers: hung).

Events in (``now`` passed in), answers out: :meth:`Detector.suspect` and
:meth:`Detector.check` answer whether to start a probe (or that the node is dead),
:meth:`Detector.probed` takes a probe's outcome and answers the reason for a death, if
any; :meth:`Detector.forget` drops a node that left.

Invariants: at most one probe per node is outstanding; a probe whose outcome never came
(the shell lost it) is started again after ``probe_timeout`` + :data:`PROBE_GRACE_S`.

Not thread-safe: the scheduler's core owns it and calls it from one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROBE_GRACE_S", "Detector", "Probe"]

#: Seconds past its timeout after which an outstanding probe counts as lost and starts again.
PROBE_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Probe:
    """An action: connect to ``address`` within ``timeout`` seconds and report the outcome
    with :meth:`Detector.probed` (through the core's ``probed``)."""

    node: int
    address: str
    timeout: float


@dataclass(slots=True)
class _Probing:
    started: float
    why: str


class Detector:
    """See the module docstring."""

    __slots__ = ("_alive_at", "_probing", "heartbeat_timeout", "hung_timeout", "probe_timeout")

    def __init__(self, heartbeat_timeout: float, probe_timeout: float, hung_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.probe_timeout = probe_timeout
        self.hung_timeout = max(hung_timeout, heartbeat_timeout)
        self._probing: dict[int, _Probing] = {}
        self._alive_at: dict[int, float] = {}  # when a probe last found a silent node alive

    def probing(self, nid: int) -> bool:
        """A probe of ``nid`` is outstanding."""
        return nid in self._probing

    def suspect(self, nid: int, address: str, why: str, now: float) -> Probe | None:
        """``nid``'s link broke (``why``): the probe to start, or None if one is running."""
        p = self._probing.get(nid)
        if p is not None and now - p.started < self.probe_timeout + PROBE_GRACE_S:
            return None
        self._probing[nid] = _Probing(now, why)
        return Probe(nid, address, self.probe_timeout)

    def check(self, nid: int, address: str, silent: float, now: float) -> Probe | str | None:
        """A member silent for ``silent`` seconds: a probe to start, the reason it is dead
        (silent past ``hung_timeout``), or None (nothing to do now)."""
        if silent <= self.heartbeat_timeout:
            self._alive_at.pop(nid, None)
            return None
        if silent > self.hung_timeout:
            self._probing.pop(nid, None)
            return (f"no heartbeat for {silent:.1f} s although its address accepts connections "
                    f"(hung; PS_HUNG_TIMEOUT={self.hung_timeout:g})")
        if now - self._alive_at.get(nid, float("-inf")) < self.heartbeat_timeout:
            return None  # found alive recently: a busy node, not a dead one
        return self.suspect(nid, address, f"no heartbeat for {silent:.1f} s", now)

    def probed(self, nid: int, error: str, now: float) -> str | None:
        """The probe of ``nid`` ended: ``error`` "" if it connected, else why not. Answers
        the reason ``nid`` is dead, or None (alive, or no probe was outstanding)."""
        p = self._probing.pop(nid, None)
        if p is None:
            return None
        if not error:
            self._alive_at[nid] = now
            return None
        return f"{p.why}, and a probe of its address failed: {error}"

    def forget(self, nid: int) -> None:
        """``nid`` left the membership."""
        self._probing.pop(nid, None)
        self._alive_at.pop(nid, None)
