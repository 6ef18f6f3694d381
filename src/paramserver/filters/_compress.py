"""Lossless compression of a message's arrays: Snappy (the paper's), LZ4 or Zstandard.

Each array of at least ``min_bytes`` bytes is compressed on its own (through cramjam) and
travels as a uint8 array; its dtype, shape and length go in the body, so the receiver
decompresses into a buffer of exactly that size and refuses anything that does not fit
(no decompression bombs). Arrays that do not shrink are sent as they are.

Thread-safety: stateless.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cramjam
import numpy as np

from .._errors import InvalidArgument, ProtocolError
from ..protocol import Codec, Message
from ._values import check_budget, check_dtype, check_shape

__all__ = ["Compress"]

ALGORITHMS = ("snappy", "lz4", "zstd")


def _compress(alg: str, data: memoryview, level: int) -> Any:
    if alg == "snappy":
        return cramjam.snappy.compress_raw(data)
    if alg == "lz4":
        return cramjam.lz4.compress_block(data, store_size=False)
    return cramjam.zstd.compress(data, level=level)


def _decompress_into(alg: str, data: np.ndarray, out: Any) -> int:
    src = data.tobytes()
    try:
        if alg == "snappy":
            if cramjam.snappy.decompress_raw_len(src) != out.nbytes:
                return -1
            return int(cramjam.snappy.decompress_raw_into(src, out))
        if alg == "lz4":
            return int(cramjam.lz4.decompress_block_into(src, out))
        return int(cramjam.zstd.decompress_into(src, out))
    except Exception as exc:  # cramjam raises its own errors on corrupt input
        raise ProtocolError(f"{alg}: corrupt data: {exc}") from None


class Compress(Codec):
    """Lossless compression (wire name = the algorithm).

    Parameters
    ----------
    algorithm:
        ``"snappy"`` (default, as in the paper), ``"lz4"`` or ``"zstd"``.
    min_bytes:
        Arrays smaller than this are not compressed (it would not pay).
    level:
        Zstandard level.
    """

    rank = 3

    def __init__(self, algorithm: str = "snappy", min_bytes: int = 1024, level: int = 1) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidArgument(f"compression must be one of {list(ALGORITHMS)}, got {algorithm!r}")
        self.algorithm = self.wire_name = algorithm
        self.min_bytes, self.level = min_bytes, level

    def encode(self, peer: int, msg: Message) -> Message:
        meta = []
        arrays = list(msg.arrays)
        for i, arr in enumerate(arrays):
            if arr.nbytes < max(self.min_bytes, 1):
                continue
            raw: Any = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            packed = np.frombuffer(_compress(self.algorithm, raw, self.level), dtype=np.uint8)
            if packed.nbytes >= arr.nbytes:
                continue
            meta.append([i, arr.dtype.str, list(arr.shape)])
            arrays[i] = packed
        return self._finish(msg, arrays, meta)

    def decode(self, peer: int, msg: Message) -> Message:
        entries, body = self._entries(msg, 3)
        if len({e[0] for e in entries}) != len(entries):
            raise ProtocolError(f"{self.wire_name}: an array is named twice")
        check_budget(self.wire_name, [int(np.prod(check_shape(e[2], self.wire_name))) * check_dtype(e[1], self.wire_name).itemsize
                                      for e in entries])
        arrays = list(msg.arrays)
        for entry in entries:
            i = entry[0]
            dtype, shape = check_dtype(entry[1], self.wire_name), check_shape(entry[2], self.wire_name)
            data = arrays[i]
            if data.dtype != np.uint8 or data.ndim != 1:
                raise ProtocolError(f"{self.wire_name}: compressed data must be bytes")
            out = np.empty(shape, dtype=dtype)
            if _decompress_into(self.algorithm, data, out.reshape(-1).view(np.uint8)) != out.nbytes:
                raise ProtocolError(f"{self.wire_name}: data does not decompress to {out.nbytes} bytes")
            arrays[i] = out
        return dataclasses.replace(msg, arrays=arrays, body=body)
