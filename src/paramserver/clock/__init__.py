"""Layer 3, clocks and tasks: request handles, range vector clocks, dependencies."""

from ._request import Request, closed_error
from ._rvc import KEY_END, RangeClock

__all__ = ["KEY_END", "RangeClock", "Request", "closed_error"]
