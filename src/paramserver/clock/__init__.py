"""Layer 3, clocks and tasks: request handles, range vector clocks, consistency models."""

from ._consistency import Consistency, InFlight
from ._request import Request
from ._rvc import KEY_END, RangeClock

__all__ = ["KEY_END", "Consistency", "InFlight", "RangeClock", "Request"]
