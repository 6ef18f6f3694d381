"""The worker side of ``paramserver run``: ``python -m paramserver.apps.NAME ARGS`` lands here."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

__all__ = ["parser_for", "worker_main"]


def parser_for(app: ModuleType, prog: str) -> argparse.ArgumentParser:
    """The option parser of an application (common options first)."""
    p = argparse.ArgumentParser(prog=prog, description=(app.__doc__ or "").strip().splitlines()[0])
    p.add_argument("--servers", type=int, default=2, help="server processes (default 2)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--json", action="store_true", help="print one final JSON object instead of a report")
    app.add_arguments(p)
    return p


def worker_main(app: ModuleType, name: str) -> None:
    """Entry point of a worker process of application ``app``."""
    args = parser_for(app, f"paramserver run {name}").parse_args(sys.argv[1:])
    sys.exit(app.worker(args))
