"""Consistency models (the paper, section 2): which earlier tasks a new task waits for.

* ``eventual``: no task waits.
* ``sequential``: a worker's task on a table starts only when all its earlier tasks on that
  table have finished.
* ``bounded`` with delay ``tau``, in both forms the paper uses:

  (a) task level, at the worker: a task of iteration ``t`` starts only when all the
      worker's tasks of iterations before ``t - tau`` have finished;
  (b) across workers (stale synchronous parallel), at the servers: a pull of iteration
      ``t`` is answered only when every live worker has finished iteration ``t - tau - 1``
      on the pulled range. With ``tau = 0`` this is bulk synchronous: a pull sees every
      push of all earlier iterations. ``tau`` = infinity is eventual.

Policies are immutable and thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import InvalidArgument, ProtocolError
from ._request import Request

__all__ = ["Consistency", "InFlight"]

KINDS = ("eventual", "sequential", "bounded")


@dataclass(frozen=True)
class Consistency:
    """A consistency model: ``kind`` and, for ``bounded``, the delay ``tau`` >= 0."""

    kind: str = "eventual"
    tau: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(f"consistency must be one of {list(KINDS)}, got {self.kind!r}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, int) or self.tau < 0:
            raise InvalidArgument(f"tau must be an int >= 0, got {self.tau!r}")
        if self.kind != "bounded" and self.tau:
            raise InvalidArgument(f"tau applies to consistency='bounded' only, not {self.kind!r}")

    @classmethod
    def of(cls, consistency: str | Consistency | None, tau: int | None = None) -> Consistency | None:
        """Build a policy from user arguments (``None`` if neither is given).

        ``tau`` alone means bounded delay.
        """
        if isinstance(consistency, Consistency):
            if tau is not None:
                raise InvalidArgument("give tau inside the Consistency object, not both")
            return consistency
        if consistency is None and tau is None:
            return None
        kind = consistency if consistency is not None else "bounded"
        if kind == "bounded" and tau is None:
            raise InvalidArgument("consistency='bounded' needs tau=")
        return cls(kind, tau or 0)

    def waits_for(self, iteration: int, earlier: int) -> bool:
        """Task level: must a task of ``iteration`` wait for an unfinished task of ``earlier``?"""
        if self.kind == "sequential":
            return True
        if self.kind == "bounded":
            return earlier < iteration - self.tau
        return False

    def pull_ready(self, iteration: int, slowest: int) -> bool:
        """Across workers: may a pull of ``iteration`` be answered when the slowest live
        worker has finished iteration ``slowest`` on the range?"""
        return self.kind != "bounded" or slowest >= iteration - self.tau - 1

    def __str__(self) -> str:
        return f"bounded(tau={self.tau})" if self.kind == "bounded" else self.kind

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "tau": self.tau}

    @classmethod
    def from_wire(cls, data: Any) -> Consistency:
        try:
            return cls(str(data["kind"]), int(data["tau"]))
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ProtocolError(f"malformed consistency policy: {exc}") from None


class InFlight:
    """A worker's unfinished tasks on one table, with their iterations (task-level waits).

    Finished tasks are dropped lazily: every query skips them, so when they are dropped
    never changes an answer. The list is pruned once it outgrows ``_limit``, which then
    becomes twice what is left (at least 64): amortised O(1) per :meth:`add`, and the list
    never holds more than ``_limit + 1`` tasks.

    Thread-safety: guarded by the caller (the Table's lock).
    """

    __slots__ = ("_limit", "_tasks")

    def __init__(self) -> None:
        self._tasks: list[tuple[int, Request, bool]] = []
        self._limit = 64

    def add(self, iteration: int, request: Request, ordered: bool = False) -> None:
        """Track ``request`` of ``iteration``; ``ordered`` for pushes and clock ticks."""
        if len(self._tasks) > self._limit:
            self._tasks = [t for t in self._tasks if not t[1].done()]
            self._limit = max(64, 2 * len(self._tasks))
        self._tasks.append((iteration, request, ordered))

    def blockers(self, policy: Consistency, iteration: int) -> list[Request]:
        """Unfinished tasks that a new task of ``iteration`` must wait for under ``policy``."""
        if policy.kind == "eventual":
            return []
        return [r for it, r, _ in self._tasks if not r.done() and policy.waits_for(iteration, it)]

    def unsent_ordered(self, upto: int) -> list[Request]:
        """Pushes of iterations up to ``upto`` still waiting to leave (a clock tick for
        ``upto`` must follow them)."""
        return [r for it, r, ordered in self._tasks if ordered and it <= upto and not r.sent and not r.done()]

    def pending(self) -> list[Request]:
        """The unfinished tasks, in the order they were added."""
        return [r for _, r, _ in self._tasks if not r.done()]
