"""Spreading integer ids over the key space, reversibly.

Placement cuts the 64-bit key space into ranges, so small consecutive ids (feature or word
numbers 0..n) would all land on the first server. :func:`spread` maps ids through a
bijection of the 64-bit integers (SplitMix64's finaliser) that scatters consecutive ids
uniformly; :func:`unspread` is its exact inverse. Both are vectorised and pure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["spread", "unspread"]

_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_C1_INV = pow(_C1, -1, 1 << 64)
_C2_INV = pow(_C2, -1, 1 << 64)
_U = np.uint64


def spread(ids: Any) -> np.ndarray:
    """uint64 keys for integer ``ids`` (any shape), spread uniformly over ``[0, 2**64)``.

    SplitMix64's finaliser, elementwise with wrapping arithmetic; ``ids`` is never modified
    (uint64 arrays are used as they are, without a copy). ``table``'s seeded initial values
    use it as their counter-based generator.
    """
    x = np.asarray(ids).astype(np.uint64, copy=False)
    x = x ^ (x >> _U(30))
    x = x * _U(_C1)
    x = x ^ (x >> _U(27))
    x = x * _U(_C2)
    return x ^ (x >> _U(31))


def unspread(keys: Any) -> np.ndarray:
    """The ids of ``keys`` made by :func:`spread` (its exact inverse), as uint64."""
    x = np.asarray(keys).astype(np.uint64)
    x = x ^ (x >> _U(31)) ^ (x >> _U(62))
    x = x * _U(_C2_INV)
    x = x ^ (x >> _U(27)) ^ (x >> _U(54))
    x = x * _U(_C1_INV)
    return np.asarray(x ^ (x >> _U(30)) ^ (x >> _U(60)))
