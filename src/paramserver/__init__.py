"""paramserver: a parameter server for distributed machine learning.

An implementation of Li et al., "Scaling Distributed Machine Learning with the Parameter
Server" (OSDI 2014). Quick start::

    import numpy as np
    import paramserver as ps

    with ps.LocalCluster(servers=2) as cluster:
        w = ps.connect(cluster.address)
        t = w.table("w", width=1, dtype="float32", updater="sum")
        t.push(np.array([1, 5, 2**40], dtype=np.uint64), np.ones(3, dtype=np.float32)).wait()
        print(t.pull([1, 5, 2**40]))
        w.close()

See README.md and docs/ for the concepts, the configuration and the architecture.
"""

from . import checkpoint, filters
from ._config import Config
from ._errors import (
    CheckpointError,
    ClosedError,
    ConfigError,
    ConnectError,
    DTypeError,
    InvalidArgument,
    JobAborted,
    KeyRangeError,
    NodeUnavailable,
    ProtocolError,
    PSError,
    ReadOnlyError,
    RemoteError,
    RequestTimeout,
    SchedulerRestarted,
    SchedulerUnavailable,
    TableError,
)
from ._version import __version__
from .clock import Consistency, Request
from .deploy import LocalCluster
from .placement import spread, unspread
from .table import (
    FTRL,
    SGD,
    AdaGrad,
    Adam,
    Assign,
    Constant,
    Initializer,
    L1Prox,
    Max,
    Min,
    Normal,
    Sum,
    TableSpec,
    Uniform,
    Updater,
    Zeros,
)
from .worker import Shard, Table, Worker, connect, row_shards

__all__ = [
    "FTRL",
    "SGD",
    "AdaGrad",
    "Adam",
    "Assign",
    "CheckpointError",
    "ClosedError",
    "Config",
    "ConfigError",
    "ConnectError",
    "Consistency",
    "Constant",
    "DTypeError",
    "Initializer",
    "InvalidArgument",
    "JobAborted",
    "KeyRangeError",
    "L1Prox",
    "LocalCluster",
    "Max",
    "Min",
    "NodeUnavailable",
    "Normal",
    "PSError",
    "ProtocolError",
    "ReadOnlyError",
    "RemoteError",
    "Request",
    "RequestTimeout",
    "SchedulerRestarted",
    "SchedulerUnavailable",
    "Shard",
    "Sum",
    "Table",
    "TableError",
    "TableSpec",
    "Uniform",
    "Updater",
    "Worker",
    "Zeros",
    "__version__",
    "checkpoint",
    "connect",
    "filters",
    "row_shards",
    "spread",
    "unspread",
]
