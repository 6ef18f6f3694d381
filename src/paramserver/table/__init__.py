"""The model of a table shared by every role: spec, updaters, initial values, and the
keyed row store (``Store`` over a ``HashIndex``) that servers and worker-side filters keep."""

from ._allow import ANY_MODULE, check_user_code, parse_modules
from ._index import HashIndex
from ._init import BUILTIN_INITS, Constant, Initializer, Normal, Uniform, Zeros, resolve_init
from ._lifecycle import Lifecycle
from ._push_filter import PushFilter
from ._spec import TABLE_DTYPES, TableSpec
from ._store import Store
from ._updaters import (
    BUILTIN_UPDATERS,
    FTRL,
    SGD,
    AdaGrad,
    Adam,
    Assign,
    L1Prox,
    Max,
    Min,
    SaturatingSum,
    Sum,
    Updater,
    resolve_updater,
    updater_name,
)

__all__ = [
    "ANY_MODULE",
    "BUILTIN_INITS",
    "BUILTIN_UPDATERS",
    "FTRL",
    "SGD",
    "TABLE_DTYPES",
    "AdaGrad",
    "Adam",
    "Assign",
    "Constant",
    "HashIndex",
    "Initializer",
    "L1Prox",
    "Lifecycle",
    "Max",
    "Min",
    "Normal",
    "PushFilter",
    "SaturatingSum",
    "Store",
    "Sum",
    "TableSpec",
    "Uniform",
    "Updater",
    "Zeros",
    "check_user_code",
    "parse_modules",
    "resolve_init",
    "resolve_updater",
    "updater_name",
]
