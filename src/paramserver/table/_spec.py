"""The spec of a table: name, width, dtype, updater and initial values.

A spec is what a worker declares with ``Worker.table(...)``, what the scheduler keeps in its
table registry, and what servers build their store from. It travels as a msgpack map of
names and scalar parameters, never as code. Two specs are compatible exactly when they are
equal; declaring a table again with an equal spec attaches to it.

Specs are immutable and thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import DTypeError, InvalidArgument, ProtocolError, TableError
from ._init import BUILTIN_INITS, Initializer, resolve_init
from ._lifecycle import Lifecycle
from ._updaters import BUILTIN_UPDATERS, Updater, resolve_updater, updater_name

__all__ = ["TABLE_DTYPES", "TableSpec"]

#: dtypes a table may hold.
TABLE_DTYPES = frozenset(
    ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
)
MAX_WIDTH = 1 << 20
#: The most finished iterations a table may keep for snapshot reads (each holds the rows it changed).
MAX_SNAPSHOTS = 1024


def _params(obj: Any) -> tuple[tuple[str, Any], ...]:
    params = obj.get_params() if hasattr(obj, "get_params") else dict(obj or {})
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, (int, float, str, bool)) or value is None:
            raise InvalidArgument(f"parameter {key!r}={value!r}: parameters must be scalars (int, float, str, bool)")
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class TableSpec:
    """What a table is. Build it with :meth:`create`; compare with ``==``."""

    name: str
    width: int
    dtype: str
    updater: str
    updater_params: tuple[tuple[str, Any], ...] = ()
    init: str = "zeros"
    init_params: tuple[tuple[str, Any], ...] = ()
    aggregate: bool = False
    #: For a table that aggregates: how many of the last finished iterations its servers
    #: keep, so that a pull may read the table as it was after one of them (0: none).
    snapshots: int = 0
    #: Admission and eviction of rows (see ``_lifecycle.py``; all off by default).
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    @classmethod
    def create(
        cls,
        name: str,
        width: int = 1,
        dtype: Any = "float32",
        updater: str | Updater | type[Updater] = "sum",
        init: str | Initializer = "zeros",
        updater_args: dict[str, Any] | None = None,
        init_args: dict[str, Any] | None = None,
        aggregate: bool = False,
        snapshots: int = 0,
        *,
        admit_after: int = 0,
        admit_prob: float = 1.0,
        ttl: int = 0,
        capacity: int = 0,
    ) -> TableSpec:
        """Validate user arguments into a spec.

        Raises
        ------
        InvalidArgument
            Bad name or width, or bad updater / init parameters.
        DTypeError
            A dtype tables cannot hold, or an integer dtype for a floating-point updater.
        ConfigError
            Unknown updater or init name.
        """
        if not isinstance(name, str) or not 0 < len(name) <= 128 or not name.isprintable():
            raise InvalidArgument(f"table name must be a printable string of 1..128 characters, got {name!r}")
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= MAX_WIDTH:
            raise InvalidArgument(f"table {name!r}: width must be an int in [1, {MAX_WIDTH}], got {width!r}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise DTypeError(f"table {name!r}: {dtype!r} is not a dtype") from None
        if dt.name not in TABLE_DTYPES:
            raise DTypeError(f"table {name!r}: dtype {dt.name} is not supported; use one of {sorted(TABLE_DTYPES)}")
        if isinstance(updater, type):
            updater = updater()
        if isinstance(updater, Updater):
            if updater_args:
                raise InvalidArgument("give updater parameters either in the Updater object or as updater_args, not both")
            up_name, up_params = updater_name(updater), _params(updater)
        elif isinstance(updater, str) and updater in BUILTIN_UPDATERS:  # normalise: defaults filled in
            up_name, up_params = updater, _params(resolve_updater(updater, updater_args))
        else:
            up_name, up_params = updater, _params(updater_args)
        if isinstance(init, Initializer):
            if init_args:
                raise InvalidArgument("give init parameters either in the Initializer object or as init_args, not both")
            init_name, init_params = init.name, _params(init)
        else:
            init_name, init_params = init, _params(resolve_init(init, init_args))
        if not isinstance(aggregate, bool):
            raise InvalidArgument(f"table {name!r}: aggregate must be True or False, got {aggregate!r}")
        if isinstance(snapshots, bool) or not isinstance(snapshots, int) or not 0 <= snapshots <= MAX_SNAPSHOTS:
            raise InvalidArgument(f"table {name!r}: snapshots must be an int in [0, {MAX_SNAPSHOTS}], got {snapshots!r}")
        if snapshots and not aggregate:
            raise InvalidArgument(f"table {name!r}: snapshots= needs aggregate=True (only a table that applies whole "
                                  f"iterations has a state at each finished iteration)")
        life = Lifecycle(admit_after, admit_prob, ttl, capacity)
        if life.active and aggregate:
            raise InvalidArgument(f"table {name!r}: admission and eviction (admit_after, admit_prob, ttl, capacity) "
                                  f"apply to tables that apply each push, not to aggregate=True")
        spec = cls(name, int(width), dt.name, up_name, up_params, init_name, init_params, aggregate, snapshots,
                   Lifecycle(**life.to_wire()))
        spec.validate(import_user_code=False)
        return spec

    def validate(self, *, import_user_code: bool = True) -> None:
        """Check the updater and init resolve and suit the dtype (see :meth:`create`)."""
        if self.updater in BUILTIN_UPDATERS or import_user_code:
            up = self.make_updater()
            if up.floating_only and not np.issubdtype(np.dtype(self.dtype), np.floating):
                raise DTypeError(
                    f"table {self.name!r}: updater {self.updater!r} needs a floating-point dtype, not {self.dtype}"
                )
        elif ":" not in self.updater:
            resolve_updater(self.updater)  # raises the 'unknown updater' error
        self.make_init()

    def state_layout(self) -> dict[str, tuple[int, np.dtype[Any], float]]:
        """Every per-row state array of the table: the updater's, then the lifecycle's."""
        return {**self.make_updater().state_layout(self.width, self.np_dtype), **self.lifecycle.layout()}

    def make_updater(self) -> Updater:
        return resolve_updater(self.updater, dict(self.updater_params))

    def make_init(self) -> Initializer:
        if self.init not in BUILTIN_INITS:
            resolve_init(self.init)
        return resolve_init(self.init, dict(self.init_params))

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        up = self.updater + (str(dict(self.updater_params)) if self.updater_params else "")
        init = self.init + (str(dict(self.init_params)) if self.init_params else "")
        agg = ", aggregate=True" if self.aggregate else ""
        agg += f", snapshots={self.snapshots}" if self.snapshots else ""
        agg += "".join(f", {k}={v}" for k, v in self.lifecycle.to_wire().items())
        return f"width={self.width}, dtype={self.dtype}, updater={up}, init={init}{agg}"

    def check_compatible(self, other: TableSpec) -> None:
        """Raise :class:`TableError` unless ``other`` declares the same table."""
        if self != other:
            raise TableError(
                f"table {self.name!r} exists with {self.describe()}; it was declared again with "
                f"{other.describe()}. Use the same spec in every worker, or another name"
            )

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "dtype": self.dtype,
            "updater": self.updater,
            "updater_params": dict(self.updater_params),
            "init": self.init,
            "init_params": dict(self.init_params),
            "aggregate": self.aggregate,
            **({"snapshots": self.snapshots} if self.snapshots else {}),
            **self.lifecycle.to_wire(),
        }

    @classmethod
    def from_wire(cls, data: Any) -> TableSpec:
        """Rebuild a spec from :meth:`to_wire`; checks types and names (not user imports).

        Raises
        ------
        ProtocolError
            Malformed map.
        """
        try:
            name, width, dtype = data["name"], data["width"], data["dtype"]
            up, up_p, init, init_p = data["updater"], data["updater_params"], data["init"], data["init_params"]
            if not (isinstance(name, str) and type(width) is int and isinstance(dtype, str)
                    and isinstance(up, str) and isinstance(init, str)
                    and isinstance(up_p, dict) and isinstance(init_p, dict)):
                raise TypeError("field types")
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed table spec: {exc}") from None
        aggregate = data.get("aggregate", False)
        if not isinstance(aggregate, bool):
            raise ProtocolError("malformed table spec: aggregate must be a bool")
        snapshots = data.get("snapshots", 0)
        if type(snapshots) is not int:
            raise ProtocolError("malformed table spec: snapshots must be an int")
        life = {k: data[k] for k in ("admit_after", "admit_prob", "ttl", "capacity") if k in data}
        for k, v in life.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (k != "admit_prob" and type(v) is not int):
                raise ProtocolError(f"malformed table spec: {k} must be a number")
        return cls.create(name, width, dtype, up, init, up_p, init_p, aggregate, snapshots, **life)
