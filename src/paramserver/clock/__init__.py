"""Layer 3, clocks and tasks: request handles, range vector clocks, consistency models."""

from ._consistency import Consistency, InFlight
from ._request import Request
from ._rvc import RangeClock

__all__ = ["Consistency", "InFlight", "RangeClock", "Request"]
