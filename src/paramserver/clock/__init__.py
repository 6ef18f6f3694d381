"""Layer 3, clocks and tasks: request handles (and, with consistency, clocks and dependencies)."""

from ._request import Request, closed_error

__all__ = ["Request", "closed_error"]
