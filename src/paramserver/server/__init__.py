"""The server role: stores, updaters applied to pushes, pulls and range pulls."""

from ._main import run_server, start_server
from ._server import Server

__all__ = ["Server", "run_server", "start_server"]
