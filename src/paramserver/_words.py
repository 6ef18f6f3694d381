"""Words in messages that people read: counts with the right plural.

Used by every layer that writes log lines, errors or status text (the scheduler's
"waiting for 1 more server", ``paramserver status``, ``paramserver launch``), so a count
reads the same everywhere. Pure functions; thread-safe.
"""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, noun: str) -> str:
    """``1 server``, ``2 servers``, ``0 workers``: the count and the noun, plural unless n == 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
