"""The worker role: connect(), Worker and Table."""

from ._shards import Shard, row_shards
from ._table import Table, as_keys
from ._worker import Worker, connect, open_workers

__all__ = ["Shard", "Table", "Worker", "as_keys", "connect", "open_workers", "row_shards"]
