"""Initial values of keys never written: zeros, a constant, or seeded random numbers.

Random initial values are a pure function of ``(seed, key, column)``: a counter-based
generator (SplitMix64 finaliser over the key and column) rather than a stateful RNG. So a
key gets the same initial row on whichever server holds it, after a migration, on a replica
and after a restore, and a pull of a key nobody pushed needs no insertion to be answered.
Everything is vectorised over keys; initializers are immutable and thread-safe.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._errors import ConfigError, InvalidArgument
from ..placement import spread

__all__ = ["BUILTIN_INITS", "Constant", "Initializer", "Normal", "Uniform", "Zeros", "resolve_init"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def uniform01(keys: np.ndarray, width: int, seed: int, stream: int = 0) -> np.ndarray:
    """Uniform numbers in (0, 1), shape (len(keys), width), a pure function of the inputs
    (SplitMix64's finaliser, :func:`~paramserver.placement.spread`, over key and column)."""
    base = spread(keys.astype(np.uint64, copy=False) ^ spread(np.asarray([seed * 2 + 1], dtype=np.uint64)))
    cols = (np.arange(width, dtype=np.uint64) + np.uint64(stream * width + 1)) * _GOLDEN
    bits = spread(base[:, None] + cols[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


class Initializer:
    """Base class: ``values(keys, width, dtype)`` gives the initial rows of ``keys``."""

    name: ClassVar[str] = ""

    def values(self, keys: np.ndarray, width: int, dtype: np.dtype[Any]) -> np.ndarray:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        return {}

    def is_zero(self) -> bool:
        """True if every initial value is 0 (lets the store skip the computation)."""
        return False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """Every value starts at 0 (the paper's 'a missing key means 0')."""

    name = "zeros"

    def values(self, keys: np.ndarray, width: int, dtype: np.dtype[Any]) -> np.ndarray:
        return np.zeros((len(keys), width), dtype=dtype)

    def is_zero(self) -> bool:
        return True


class Constant(Initializer):
    """Every value starts at ``value``."""

    name = "constant"

    def __init__(self, value: float = 0.0) -> None:
        self.value = _number("Constant", "value", value)

    def values(self, keys: np.ndarray, width: int, dtype: np.dtype[Any]) -> np.ndarray:
        return np.full((len(keys), width), self.value, dtype=dtype)

    def get_params(self) -> dict[str, Any]:
        return {"value": self.value}

    def is_zero(self) -> bool:
        return self.value == 0


class Normal(Initializer):
    """Normal(mean, std) values, deterministic per (seed, key, column) (Box-Muller)."""

    name = "normal"

    def __init__(self, mean: float = 0.0, std: float = 0.01, seed: int = 0) -> None:
        self.mean = _number("Normal", "mean", mean)
        self.std = _number("Normal", "std", std)
        if self.std < 0:
            raise InvalidArgument(f"Normal: std={std} must be >= 0")
        self.seed = _seed("Normal", seed)

    def values(self, keys: np.ndarray, width: int, dtype: np.dtype[Any]) -> np.ndarray:
        u1 = uniform01(keys, width, self.seed, 0)
        u2 = uniform01(keys, width, self.seed, 1)
        z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        return np.asarray(self.mean + self.std * z, dtype=dtype)

    def get_params(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "seed": self.seed}


class Uniform(Initializer):
    """Uniform[low, high) values, deterministic per (seed, key, column)."""

    name = "uniform"

    def __init__(self, low: float = -0.01, high: float = 0.01, seed: int = 0) -> None:
        self.low = _number("Uniform", "low", low)
        self.high = _number("Uniform", "high", high)
        if not self.low < self.high:
            raise InvalidArgument(f"Uniform: low={low} must be < high={high}")
        self.seed = _seed("Uniform", seed)

    def values(self, keys: np.ndarray, width: int, dtype: np.dtype[Any]) -> np.ndarray:
        u = uniform01(keys, width, self.seed, 0)
        return (self.low + (self.high - self.low) * u).astype(dtype)

    def get_params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "seed": self.seed}


def _number(cls: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InvalidArgument(f"{cls}: {key} must be a finite number, got {value!r}")
    return float(value)


def _seed(cls: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise InvalidArgument(f"{cls}: seed must be an int in [0, 2**62), got {value!r}")
    return value


BUILTIN_INITS: dict[str, type[Initializer]] = {
    cls.name: cls for cls in (Zeros, Constant, Normal, Uniform)
}


def resolve_init(name: str, params: dict[str, Any] | None = None) -> Initializer:
    """Build the initializer ``name`` with ``params``.

    Raises
    ------
    ConfigError
        Unknown name.
    InvalidArgument
        Wrong parameters.
    """
    cls = BUILTIN_INITS.get(name)
    if cls is None:
        raise ConfigError(f"unknown init {name!r}: use one of {sorted(BUILTIN_INITS)}")
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise InvalidArgument(f"init {name!r}: {exc}") from None
