"""The worker role: connect(), Worker and Table."""

from ._table import Table, as_keys
from ._worker import Worker, connect, open_workers

__all__ = ["Table", "Worker", "as_keys", "connect", "open_workers"]
