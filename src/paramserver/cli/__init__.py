"""Layer 9: the command line, the launcher, LocalCluster and status."""

from ._local import LocalCluster
from ._main import main

__all__ = ["LocalCluster", "main"]
