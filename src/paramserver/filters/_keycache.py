"""Key caching: a key list the receiver has seen travels as its 64-bit signature only.

The sender remembers, per receiver, the signatures of the key lists it sent (an LRU of
``capacity`` entries); the receiver keeps, per sender, the key lists by signature (an LRU
bounded by ``capacity`` entries and ``max_bytes``). A repeated list goes as ``ksig`` (its
xxh3-64 signature) and ``kn`` (its length) with an empty keys array. If the receiver does
not have it (evicted, or restarted), decoding raises :class:`KeysMissing`; the receiver
answers RESEND_KEYS, the sender forgets what it believed and resends the same request
with its keys. The request is neither lost nor applied twice: the missed message never
reached the handler.

Thread-safety: both sides guard their caches with a lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import xxhash

from .._errors import InvalidArgument, ProtocolError
from ..protocol import KEY_DTYPE, Codec, KeysMissing, Message, Op

__all__ = ["KeyCache"]


def signature(keys: np.ndarray) -> int:
    """The 64-bit signature of a key list (xxh3 over its bytes, mixed with its length)."""
    data: Any = np.ascontiguousarray(keys).view(np.uint8)
    return xxhash.xxh3_64_intdigest(data, seed=len(keys))


class KeyCache(Codec):
    """The key-caching filter (wire name ``keys``).

    Parameters
    ----------
    capacity:
        Key lists remembered per peer, on each side.
    max_bytes:
        Receiver side: bytes of key lists kept per sender at most.
    min_keys:
        Lists shorter than this always travel in full (a signature would not pay).
    """

    wire_name = "keys"
    rank = 0
    repairable = True

    def __init__(self, capacity: int = 1024, max_bytes: int = 64 << 20, min_keys: int = 4) -> None:
        if capacity < 1 or max_bytes < 1:
            raise InvalidArgument("KeyCache capacity and max_bytes must be >= 1")
        self.capacity, self.max_bytes, self.min_keys = capacity, max_bytes, min_keys
        self._lock = threading.Lock()
        self._sent: dict[int, OrderedDict[int, None]] = {}
        self._held: dict[int, OrderedDict[int, np.ndarray]] = {}
        self._held_bytes: dict[int, int] = {}
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ sender
    def encode(self, peer: int, msg: Message) -> Message:
        if msg.op not in (Op.PUSH, Op.PULL) or msg.response or not msg.arrays:
            return msg
        keys = msg.arrays[0]
        if len(keys) < self.min_keys:
            return msg
        sig = signature(keys)
        with self._lock:
            sent = self._sent.setdefault(peer, OrderedDict())
            known = sig in sent
            sent[sig] = None
            sent.move_to_end(sig)
            while len(sent) > self.capacity:
                sent.popitem(last=False)
        if not known:
            return self._applied(msg, list(msg.arrays), {**msg.body, "ksig": sig})
        return self._applied(msg, [np.empty(0, dtype=KEY_DTYPE), *msg.arrays[1:]],
                             {**msg.body, "ksig": sig, "kn": len(keys)})

    def forget(self, peer: int, sig: int | None = None) -> None:
        with self._lock:
            if sig is not None:
                self._sent.get(peer, OrderedDict()).pop(sig, None)
                return
            self._sent.pop(peer, None)
            self._held.pop(peer, None)
            self._held_bytes.pop(peer, None)

    # ------------------------------------------------------------------ receiver
    def decode(self, peer: int, msg: Message) -> Message:
        body = dict(msg.body)
        sig = body.pop("ksig", None)
        n = body.pop("kn", None)
        if type(sig) is not int or not msg.arrays or msg.arrays[0].dtype != KEY_DTYPE:
            raise ProtocolError("a key-cached message needs a signature and a keys array")
        keys = msg.arrays[0]
        if n is not None:  # keys by signature
            if type(n) is not int or len(keys) != 0:
                raise ProtocolError("a key signature comes with an empty keys array and a count")
            with self._lock:
                cached = self._held.get(peer, OrderedDict()).get(sig)
                if cached is not None:
                    self._held[peer].move_to_end(sig)
            if cached is None or len(cached) != n:
                self.misses += 1
                raise KeysMissing(f"key list {sig:#x} from node {peer} is not cached here", sig)
            self.hits += 1
            return dataclasses.replace(msg, arrays=[cached, *msg.arrays[1:]], body=body)
        if signature(keys) != sig:
            raise ProtocolError("key list does not match its signature")
        copy = np.array(keys)  # the frame's memory is not ours to keep
        with self._lock:
            held = self._held.setdefault(peer, OrderedDict())
            if sig not in held:
                held[sig] = copy
                self._held_bytes[peer] = self._held_bytes.get(peer, 0) + copy.nbytes
            held.move_to_end(sig)
            while held and (len(held) > self.capacity or self._held_bytes[peer] > self.max_bytes):
                _, old = held.popitem(last=False)
                self._held_bytes[peer] -= old.nbytes
        return dataclasses.replace(msg, body=body)
