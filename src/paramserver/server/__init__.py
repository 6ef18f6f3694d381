"""The server role: stores, updaters applied to pushes, pulls and range pulls."""

from ._main import run_server, start_server
from ._server import Server
from ._state import ServerState

__all__ = ["Server", "ServerState", "run_server", "start_server"]
