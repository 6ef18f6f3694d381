"""Server-side updaters (the paper's user-defined functions on servers).

An updater decides how a pushed array changes the stored values of its keys. It runs on the
server, vectorised over all keys of one push: ``apply`` receives the table's whole value
array, the per-key optimizer state arrays, the row numbers (``slots``) of the pushed keys,
and the pushed rows. Slots of one call are distinct, so fancy-index assignment is exact.

Builtins are named (``"sum"``, ``"sgd"``, ...); a user updater is a subclass of
:class:`Updater` named by its import path ``"package.module:Name"``, which servers import.
Code is never pickled: a table's spec carries only the name and the keyword arguments
(:meth:`Updater.get_params`), which must be msgpack-able scalars.

Updaters are stateless apart from their parameters; the per-key state lives in the
server's store. They are called on one thread at a time per table.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numba
import numpy as np

from .._errors import ConfigError, InvalidArgument

__all__ = [
    "BUILTIN_UPDATERS",
    "FTRL",
    "SGD",
    "AdaGrad",
    "Adam",
    "Assign",
    "L1Prox",
    "Max",
    "Min",
    "SaturatingSum",
    "Sum",
    "Updater",
    "resolve_updater",
    "updater_name",
]


@numba.njit(cache=True, nogil=True)
def _add_rows(values: np.ndarray, rows: np.ndarray, update: np.ndarray) -> None:  # pragma: no cover - compiled
    # One pass over the touched rows (numpy's values[rows] += update makes three).
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            values[r, j] += update[i, j]


@numba.njit(cache=True, nogil=True)
def _set_rows(values: np.ndarray, rows: np.ndarray, update: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            values[r, j] = update[i, j]


class Updater:
    """Base class of server updaters. Subclass it for your own (see the module docstring).

    Class attributes
    ----------------
    name:
        The builtin name, or empty for user updaters (their import path is used).
    floating_only:
        True if the updater needs a floating-point table dtype.
    """

    name: ClassVar[str] = ""
    floating_only: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        if params:
            raise InvalidArgument(f"{type(self).__name__} takes no parameters, got {sorted(params)}")

    def get_params(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this updater (scikit-learn style)."""
        return {}

    def state_layout(self, width: int, dtype: np.dtype[Any]) -> dict[str, tuple[int, np.dtype[Any], float]]:
        """Per-key state arrays: ``{name: (columns, dtype, initial value)}``."""
        return {}

    def apply(
        self,
        values: np.ndarray,
        state: Mapping[str, np.ndarray],
        slots: np.ndarray,
        update: np.ndarray,
    ) -> None:
        """Apply ``update`` (m x width) to rows ``slots`` (m distinct ints) in place."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_params().items()))))


class Sum(Updater):
    """``w += u``: the default; gradients, counts and sketches add up."""

    name = "sum"

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        _add_rows(values, slots, update)


class Assign(Updater):
    """``w = u``: the last push wins (order-sensitive; shows sequential consistency)."""

    name = "assign"

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        _set_rows(values, slots, update)


class Max(Updater):
    """``w = max(w, u)`` elementwise (sketches, e.g. HyperLogLog registers)."""

    name = "max"

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        values[slots] = np.maximum(values[slots], update)


class Min(Updater):
    """``w = min(w, u)`` elementwise."""

    name = "min"

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        values[slots] = np.minimum(values[slots], update)


class SaturatingSum(Updater):
    """``w = min(w + u, cap)``: counters that stop at ``cap`` (sketches with small counters).

    Computed without overflow in the table's dtype (``cap`` is clipped to its largest value);
    negative updates are ignored: saturating counters only count up.
    """

    name = "saturating"

    def __init__(self, cap: int = 2**31 - 1) -> None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise InvalidArgument(f"SaturatingSum cap must be an int >= 1, got {cap!r}")
        self.cap = cap

    def get_params(self) -> dict[str, Any]:
        return {"cap": self.cap}

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        cap = min(self.cap, np.iinfo(values.dtype).max) if values.dtype.kind in "iu" else self.cap
        current = values[slots]
        room = np.maximum(np.asarray(cap, dtype=values.dtype) - current, 0)  # no overflow: adds at most the room
        values[slots] = current + np.minimum(np.maximum(update, 0), room)


class _Optimizer(Updater):
    """An updater with float hyper-parameters given by keyword (validated > 0 or >= 0)."""

    floating_only = True
    defaults: ClassVar[dict[str, float]] = {}
    nonneg: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise InvalidArgument(
                f"{type(self).__name__} has no parameter {sorted(unknown)}; it takes {sorted(self.defaults)}"
            )
        self._params: dict[str, float] = {}
        for key, default in self.defaults.items():
            value = params.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(f"{type(self).__name__}: {key} must be a number, got {value!r}")
            value = float(value)
            ok = value >= 0 if key in self.nonneg else value > 0
            if not ok or not np.isfinite(value):
                bound = ">= 0" if key in self.nonneg else "> 0"
                raise InvalidArgument(f"{type(self).__name__}: {key}={value} must be finite and {bound}")
            self._params[key] = value

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    def __getattr__(self, key: str) -> float:
        try:
            return self.__dict__["_params"][key]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(key) from None


def _work(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype optimizers compute in: float32 for float16 tables (eps would round to 0)."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


class SGD(_Optimizer):
    """``w -= lr * g``."""

    name = "sgd"
    defaults = {"lr": 0.01}

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        values[slots] -= self.lr * update


class AdaGrad(_Optimizer):
    """``G += g*g; w -= lr * g / (sqrt(G) + eps)`` per coordinate (PyTorch's formula)."""

    name = "adagrad"
    defaults = {"lr": 0.01, "eps": 1e-10, "initial_accumulator_value": 0.0}
    nonneg = frozenset({"initial_accumulator_value"})

    def state_layout(self, width: int, dtype: np.dtype[Any]) -> dict[str, tuple[int, np.dtype[Any], float]]:
        return {"sum_sq": (width, _work(dtype), self.initial_accumulator_value)}

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        acc = state["sum_sq"]
        g = update.astype(acc.dtype, copy=False)
        g2 = acc[slots] + g * g
        acc[slots] = g2
        w = values[slots].astype(acc.dtype, copy=False)
        values[slots] = w - self.lr * g / (np.sqrt(g2) + self.eps)


class Adam(_Optimizer):
    """Adam with a step count per key ("lazy" Adam, as sparse embeddings need).

    ``t += 1; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    w -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, where ``t`` counts the
    pushes that touched the key.
    """

    name = "adam"
    defaults = {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        for key in ("beta1", "beta2"):
            if not self._params[key] < 1:
                raise InvalidArgument(f"Adam: {key}={self._params[key]} must be < 1")

    def state_layout(self, width: int, dtype: np.dtype[Any]) -> dict[str, tuple[int, np.dtype[Any], float]]:
        work = _work(dtype)
        return {"m": (width, work, 0.0), "v": (width, work, 0.0), "t": (1, np.dtype(np.float64), 0.0)}

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        b1, b2 = self.beta1, self.beta2
        work = state["m"].dtype
        g = update.astype(work, copy=False)
        t = state["t"][slots] + 1.0
        state["t"][slots] = t
        m = b1 * state["m"][slots] + (1 - b1) * g
        v = b2 * state["v"][slots] + (1 - b2) * g * g
        state["m"][slots] = m
        state["v"][slots] = v
        c1 = (1.0 - b1**t).astype(work)
        c2 = (1.0 - b2**t).astype(work)
        w = values[slots].astype(work, copy=False)
        values[slots] = w - self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


class FTRL(_Optimizer):
    """FTRL-Proximal (McMahan et al., 2013), per coordinate.

    ``sigma = (sqrt(n + g*g) - sqrt(n)) / alpha; z += g - sigma * w; n += g*g;
    w = 0 if |z| <= l1 else -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)``.
    """

    name = "ftrl"
    defaults = {"alpha": 0.1, "beta": 1.0, "l1": 0.0, "l2": 0.0}
    nonneg = frozenset({"beta", "l1", "l2"})

    def state_layout(self, width: int, dtype: np.dtype[Any]) -> dict[str, tuple[int, np.dtype[Any], float]]:
        return {"z": (width, _work(dtype), 0.0), "n": (width, _work(dtype), 0.0)}

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        z_all, n_all = state["z"], state["n"]
        g = update.astype(z_all.dtype, copy=False)
        w = values[slots].astype(z_all.dtype, copy=False)
        n = n_all[slots]
        n_new = n + g * g
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / self.alpha
        z = z_all[slots] + g - sigma * w
        z_all[slots] = z
        n_all[slots] = n_new
        shrunk = np.sign(z) * self.l1 - z
        denom = (self.beta + np.sqrt(n_new)) / self.alpha + self.l2
        values[slots] = np.where(np.abs(z) <= self.l1, 0, shrunk / denom).astype(values.dtype)


class L1Prox(_Optimizer):
    """The proximal step of L1-regularised problems on aggregated (gradient, curvature) pairs.

    The table has width 2: a push carries ``[g, u]`` per key (gradient and diagonal
    curvature, summed over workers by aggregation); the stored row is ``[w, 0]`` (the zero
    keeps replies small under zero suppression).
    ``w = S(w - g / u, lam / u)`` with the soft threshold ``S(z, a) = sign(z) max(|z| - a, 0)``
    (the delayed block proximal gradient method of the paper).
    """

    name = "l1_prox"
    defaults = {"lam": 1.0, "eps": 1e-12}
    nonneg = frozenset({"lam"})

    def apply(self, values: np.ndarray, state: Mapping[str, np.ndarray], slots: np.ndarray,
              update: np.ndarray) -> None:
        if values.shape[1] != 2:
            raise InvalidArgument("l1_prox needs a table of width 2: pushes [gradient, curvature]")
        g = update[:, 0]
        u = update[:, 1] + self.eps
        z = values[slots, 0] - g / u
        values[slots, 0] = np.sign(z) * np.maximum(np.abs(z) - self.lam / u, 0.0)
        values[slots, 1] = 0


BUILTIN_UPDATERS: dict[str, type[Updater]] = {
    cls.name: cls for cls in (Sum, Assign, Max, Min, SaturatingSum, SGD, AdaGrad, Adam, FTRL, L1Prox)
}


def updater_name(updater: str | Updater | type[Updater]) -> str:
    """The name a spec carries for ``updater``: a builtin name or ``"module:Class"``."""
    if isinstance(updater, str):
        return updater
    cls = updater if isinstance(updater, type) else type(updater)
    if cls.name and BUILTIN_UPDATERS.get(cls.name) is cls:
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_updater(name: str, params: Mapping[str, Any] | None = None) -> Updater:
    """Build the updater ``name`` (builtin or ``"pkg.module:Name"``) with ``params``.

    Raises
    ------
    ConfigError
        The name is unknown, the import fails, or the object is not an Updater subclass.
    InvalidArgument
        The parameters are wrong for that updater.
    """
    params = dict(params or {})
    cls: Any = BUILTIN_UPDATERS.get(name)
    if cls is None:
        if ":" not in name:
            raise ConfigError(
                f"unknown updater {name!r}: use one of {sorted(BUILTIN_UPDATERS)} or an "
                f"import path 'package.module:ClassName'"
            )
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            cls = module
            for part in attr.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import updater {name!r}: {exc}; the module must be importable on "
                f"every server (installed, or on PYTHONPATH)"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Updater)):
            raise ConfigError(f"{name!r} is not a subclass of paramserver.Updater")
    try:
        return cls(**params)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise InvalidArgument(f"updater {name!r}: {exc}") from None
