"""The server role: stores, updaters applied to pushes, pulls and range pulls."""

from ._index import HashIndex
from ._main import run_server, start_server
from ._server import Server
from ._state import ServerState
from ._store import Store

__all__ = ["HashIndex", "Server", "ServerState", "Store", "run_server", "start_server"]
