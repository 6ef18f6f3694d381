"""The interface of push filters: worker-side rewrites of what a push sends.

A :class:`PushFilter` sees the sorted, distinct keys and the values of a push before they
are sliced by server, and returns what should travel instead (fewer keys, rescaled values).
Filters that hold entries back (significantly-modified) must hand them over later, from
:meth:`PushFilter.flush`, so that nothing is lost, only delayed. Implementations live in
``paramserver.filters``; the worker only knows this interface.

A filter object belongs to one table of one worker; the table calls it under its lock.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PushFilter"]


class PushFilter:
    """Base class of push filters; ``name`` labels its byte counters."""

    name: str = ""
    #: Push filters run in increasing order (whatever order they were listed in).
    order: int = 0

    def apply(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What to send instead of ``keys`` (sorted, distinct) and ``values`` (n x width)."""
        raise NotImplementedError

    def flush(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Everything held back, to be sent now (None if nothing)."""
        return None

    def advance(self) -> None:
        """Called when the worker finishes an iteration (threshold schedules)."""
