"""Layer 9: the command line, the launcher and status."""

from ._main import main

__all__ = ["main"]
