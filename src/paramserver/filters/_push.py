"""Push filters: significantly-modified, random skip and the KKT hook.

They run in the worker before a push is sliced by server (see
:class:`paramserver.table.PushFilter`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .._errors import InvalidArgument
from ..protocol import KEY_SPACE
from ..table import PushFilter, Store, TableSpec

__all__ = ["KKT", "RandomSkip", "SignificantlyModified"]


class SignificantlyModified(PushFilter):
    """Send only entries whose change accumulated since their last send exceeds a threshold.

    Every push is added to a local accumulator; keys whose accumulated change has an
    absolute value above ``threshold`` (in any column) are sent, with the whole accumulated
    change, and reset; the rest stay and keep accumulating, to be sent by a later push or by
    :meth:`flush` (``Table.flush()``, ``Worker.close()``). Nothing is lost, only delayed.

    Parameters
    ----------
    threshold:
        The starting threshold.
    decay:
        After each iteration (``Worker.advance()``) the threshold is multiplied by this
        (start large, shrink).
    min_threshold:
        The threshold never goes below this.
    """

    name = "significant"
    order = 10  # after the other push filters: what they drop must not reset its mass

    def __init__(self, threshold: float = 1e-3, decay: float = 1.0, min_threshold: float = 0.0) -> None:
        if not threshold >= 0 or not 0 < decay <= 1 or not min_threshold >= 0:
            raise InvalidArgument("need threshold >= 0, 0 < decay <= 1 and min_threshold >= 0")
        self.threshold, self.decay, self.min_threshold = float(threshold), float(decay), float(min_threshold)
        self._acc: Store | None = None
        self._lock = threading.Lock()  # restore() runs on the receive thread

    def _store(self, values: np.ndarray) -> Store:
        if self._acc is None:
            self._acc = Store(TableSpec.create("held back", values.shape[1], values.dtype, "sum"))
        return self._acc

    def apply(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            acc = self._store(values)
            acc.push(keys, values)
            current = acc.pull(keys)
            send = ~(np.abs(current).max(axis=1) <= self.threshold)  # NaN leaves too
            if not send.any():
                return keys[:0], values[:0]
            out_keys, out_values = keys[send], current[send]
            acc.push(out_keys, -np.nan_to_num(out_values))  # reset what leaves (x + -x == 0 exactly)
            return out_keys, out_values

    def restore(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Take back what a failed push carried: it will leave again later."""
        if len(keys):
            with self._lock:
                self._store(values).push(keys, values)

    def flush(self) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            if self._acc is None:
                return None
            keys, values = self._acc.pull_range(0, KEY_SPACE)
            held = np.any(values != 0, axis=1) if len(keys) else np.zeros(0, dtype=bool)
            if not held.any():
                return None
            keys, values = keys[held], values[held]
            self._acc.push(keys, -np.nan_to_num(values))
            return keys, values

    def advance(self) -> None:
        self.threshold = max(self.threshold * self.decay, self.min_threshold)


class RandomSkip(PushFilter):
    """Send a random fraction ``q`` of the entries, scaled by ``1/q`` (unbiased)."""

    name = "random_skip"

    def __init__(self, q: float, seed: int | None = None) -> None:
        if not 0 < q <= 1:
            raise InvalidArgument(f"RandomSkip q must be in (0, 1], got {q!r}")
        self.q = q
        self._rng = np.random.default_rng(seed)

    def apply(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if values.dtype.kind != "f":
            raise InvalidArgument("RandomSkip rescales by 1/q: it needs a floating-point table")
        keep = self._rng.random(len(keys)) < self.q
        return keys[keep], values[keep] / np.asarray(self.q, dtype=values.dtype)


class KKT(PushFilter):
    """Drop the keys an application-supplied predicate selects (the KKT filter hook).

    ``drop(keys, values)`` returns a boolean mask, True for keys whose update need not be
    sent (for L1 problems: ``w_k == 0`` and ``|g_k| <= lambda``).
    """

    name = "kkt"

    def __init__(self, drop: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.drop = drop

    def apply(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.asarray(self.drop(keys, values), dtype=bool)
        if mask.shape != keys.shape:
            raise InvalidArgument(f"the KKT predicate returned shape {mask.shape} for {len(keys)} keys")
        return keys[~mask], values[~mask]
