"""Independent numpy references of the builtin updaters, one key-row at a time."""

from __future__ import annotations

from typing import Any

import numpy as np


class Reference:
    """Per-key state kept in dicts; ``step(key, g)`` applies one update to one key."""

    def __init__(self, name: str, params: dict[str, float], width: int, dtype: Any) -> None:
        self.name, self.p, self.width, self.dtype = name, params, width, np.dtype(dtype)
        self.w: dict[int, np.ndarray] = {}
        self.s: dict[int, dict[str, Any]] = {}

    def _state(self, key: int) -> dict[str, Any]:
        if key not in self.s:
            z = np.zeros(self.width, dtype=np.float64)
            self.s[key] = {"G": z + self.p.get("initial_accumulator_value", 0.0), "m": z.copy(), "v": z.copy(),
                           "t": 0, "z": z.copy(), "n": z.copy()}
        return self.s[key]

    def step(self, key: int, g: np.ndarray) -> None:
        g = g.astype(np.float64)
        w = self.w.get(key, np.zeros(self.width)).astype(np.float64)
        st, p = self._state(key), self.p
        if self.name == "sum":
            w = w + g
        elif self.name == "assign":
            w = g.copy()
        elif self.name == "max":
            w = np.maximum(w, g)
        elif self.name == "min":
            w = np.minimum(w, g)
        elif self.name == "sgd":
            w = w - p["lr"] * g
        elif self.name == "adagrad":
            st["G"] = st["G"] + g * g
            w = w - p["lr"] * g / (np.sqrt(st["G"]) + p["eps"])
        elif self.name == "adam":
            st["t"] += 1
            t = st["t"]
            st["m"] = p["beta1"] * st["m"] + (1 - p["beta1"]) * g
            st["v"] = p["beta2"] * st["v"] + (1 - p["beta2"]) * g * g
            mhat = st["m"] / (1 - p["beta1"] ** t)
            vhat = st["v"] / (1 - p["beta2"] ** t)
            w = w - p["lr"] * mhat / (np.sqrt(vhat) + p["eps"])
        elif self.name == "ftrl":
            n_new = st["n"] + g * g
            sigma = (np.sqrt(n_new) - np.sqrt(st["n"])) / p["alpha"]
            st["z"] = st["z"] + g - sigma * w
            st["n"] = n_new
            z = st["z"]
            w = np.where(np.abs(z) <= p["l1"], 0.0,
                         -(z - np.sign(z) * p["l1"]) / ((p["beta"] + np.sqrt(n_new)) / p["alpha"] + p["l2"]))
        else:
            raise ValueError(self.name)
        self.w[key] = w

    def values(self, keys: np.ndarray) -> np.ndarray:
        return np.array([self.w.get(int(k), np.zeros(self.width)) for k in keys])


# (updater, its parameters); the tests push rows of 3 standard normal values.
CASES: list[tuple[str, dict[str, float]]] = [
    ("sum", {}),
    ("assign", {}),
    ("max", {}),
    ("min", {}),
    ("sgd", {"lr": 0.1}),
    ("adagrad", {"lr": 0.5, "eps": 1e-10, "initial_accumulator_value": 0.1}),
    ("adam", {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("ftrl", {"alpha": 0.5, "beta": 1.0, "l1": 0.3, "l2": 0.1}),
]
