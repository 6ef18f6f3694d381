"""The server role: stores, updaters applied to pushes, pulls and range pulls."""

from ._index import HashIndex
from ._main import run_server, start_server
from ._server import Server
from ._store import Store

__all__ = ["HashIndex", "Server", "Store", "run_server", "start_server"]
