"""Value filters: zero suppression and lossy fixed-point, on the arrays that hold values.

* :class:`ZeroSuppress` (wire name ``zeros``): only non-zero entries travel, with their flat
  positions (uint32, or uint64 for huge arrays); skipped when it would not save bytes.
* :class:`FixedPoint` (wire names ``fixed8``, ``fixed16``, ``fixed32``): floats quantised to
  1, 2 or 4 bytes over the message's range ``[lo, hi]`` with stochastic rounding, so the
  decoded value is unbiased; the error of one value is below ``(hi - lo) / (2**bits - 1)``.

Both are pure apart from the rounding generator (guarded by a lock).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from .._errors import InvalidArgument, ProtocolError
from ..protocol import ALLOWED_DTYPES, Codec, Message

__all__ = ["MAX_DECODED_BYTES", "FixedPoint", "ZeroSuppress", "check_budget", "check_dtype", "check_shape"]

#: A message's arrays never decode to more than this many bytes (no decompression bombs).
MAX_DECODED_BYTES = 1 << 29


def check_shape(value: Any, name: str) -> tuple[int, ...]:
    """A shape from a filter's wire metadata: a list of at most two ints >= 0 whose size fits
    :data:`MAX_DECODED_BYTES` at 8 bytes an element, else :class:`ProtocolError` naming the
    filter ``name``. Pure."""
    if not isinstance(value, list) or len(value) > 2 or not all(type(d) is int and d >= 0 for d in value):
        raise ProtocolError(f"{name}: malformed shape {value!r}")
    size = 1
    for d in value:
        size *= d
    if size * 8 > MAX_DECODED_BYTES:
        raise ProtocolError(f"{name}: shape {value} is too large")
    return tuple(value)


def check_budget(name: str, sizes: list[int]) -> None:
    """Refuse metadata announcing more than :data:`MAX_DECODED_BYTES` in all."""
    if sum(sizes) > MAX_DECODED_BYTES:
        raise ProtocolError(f"{name}: the message would decode to {sum(sizes)} bytes, more than the "
                            f"{MAX_DECODED_BYTES} allowed")


def check_dtype(value: Any, name: str) -> np.dtype[Any]:
    """A dtype from a filter's wire metadata: one of the protocol's ``ALLOWED_DTYPES``, else
    :class:`ProtocolError` naming the filter ``name``. Pure."""
    if not isinstance(value, str) or value not in ALLOWED_DTYPES:
        raise ProtocolError(f"{name}: dtype {value!r} is not allowed")
    return np.dtype(value)


class ZeroSuppress(Codec):
    """Send only the non-zero values, with their positions."""

    wire_name = "zeros"
    rank = 1

    def encode(self, peer: int, msg: Message) -> Message:
        meta = []
        arrays = list(msg.arrays)
        for i in msg.values_at:
            arr = arrays[i]
            flat = arr.reshape(-1)
            pos = np.flatnonzero((flat != 0) | np.signbit(flat)) if flat.dtype.kind == "f" else np.flatnonzero(flat)
            ptype = np.uint32 if flat.size < 1 << 32 else np.uint64
            if pos.size * (arr.itemsize + np.dtype(ptype).itemsize) >= arr.nbytes:
                continue  # would not save anything
            arrays[i] = flat[pos]
            meta.append([i, len(arrays), list(arr.shape)])
            arrays.append(pos.astype(ptype))
        return self._finish(msg, arrays, meta)

    def decode(self, peer: int, msg: Message) -> Message:
        entries, body = self._entries(msg, 3)
        arrays = list(msg.arrays)
        used = [e[0] for e in entries] + [e[1] for e in entries]
        if len(set(used)) != len(used):
            raise ProtocolError("zeros: an array is named twice")
        check_budget("zeros", [int(np.prod(check_shape(e[2], "zeros"))) * arrays[e[0]].itemsize for e in entries])
        drop = []
        for entry in entries:
            if not (type(entry[1]) is int and 0 <= entry[1] < len(arrays)):
                raise ProtocolError("zeros: malformed entry")
            i, j, shape = entry[0], entry[1], check_shape(entry[2], "zeros")
            vals, pos = arrays[i], arrays[j]
            if pos.dtype.kind != "u" or pos.ndim != 1 or vals.ndim != 1 or len(pos) != len(vals):
                raise ProtocolError("zeros: positions and values do not match")
            size = int(np.prod(shape))
            if len(pos) and int(pos.max()) >= size:
                raise ProtocolError("zeros: a position is out of range")
            out = np.zeros(size, dtype=vals.dtype)
            out[pos] = vals
            arrays[i] = out.reshape(shape)
            drop.append(j)
        for j in sorted(drop, reverse=True):
            del arrays[j]
        return dataclasses.replace(msg, arrays=arrays, body=body)


class FixedPoint(Codec):
    """Quantise float values to ``bits`` (8, 16 or 32) with stochastic rounding.

    Parameters
    ----------
    bits:
        Bits per value on the wire.
    seed:
        Seed of the rounding noise (None: random).
    """

    rank = 2
    _TYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}

    def __init__(self, bits: int = 8, seed: int | None = None) -> None:
        if bits not in self._TYPES:
            raise InvalidArgument(f"FixedPoint bits must be 8, 16 or 32, got {bits!r}")
        self.bits = bits
        self.wire_name = f"fixed{bits}"
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def encode(self, peer: int, msg: Message) -> Message:
        meta = []
        arrays = list(msg.arrays)
        levels = float(2**self.bits - 1)
        for i in msg.values_at:
            arr = arrays[i]
            if arr.dtype.kind != "f" or arr.size == 0 or arr.itemsize <= self.bits // 8:
                continue
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / levels if hi > lo else 1.0
            if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(scale)):
                continue  # inf, nan, or a range too wide for float64: send as is
            with self._lock:
                noise = self._rng.random(arr.shape)
            q = np.floor((arr.astype(np.float64) - lo) / scale + noise)
            np.clip(q, 0, levels, out=q)
            arrays[i] = q.astype(self._TYPES[self.bits])
            meta.append([i, lo, scale, arr.dtype.str])
        return self._finish(msg, arrays, meta)

    def decode(self, peer: int, msg: Message) -> Message:
        entries, body = self._entries(msg, 4)
        arrays = list(msg.arrays)
        for entry in entries:
            i, lo, scale, dt = entry
            if not all(isinstance(x, float) and np.isfinite(x) for x in (lo, scale)):
                raise ProtocolError(f"{self.wire_name}: malformed range")
            q = arrays[i]
            if q.dtype != np.dtype(self._TYPES[self.bits]):
                raise ProtocolError(f"{self.wire_name}: values must be uint{self.bits}")
            out_dtype = check_dtype(dt, self.wire_name)
            if out_dtype.kind != "f":
                raise ProtocolError(f"{self.wire_name}: can only restore floats")
            arrays[i] = (lo + q.astype(np.float64) * scale).astype(out_dtype)
        return dataclasses.replace(msg, arrays=arrays, body=body)
