"""Wire filters as a message leaves and arrives: encoding, decoding, byte accounting.

A message names the filters (``protocol.Codec``) that rewrote its arrays; the receiver undoes
them in reverse order before any handler sees the message. :class:`WireFilters` runs the
sender's chain (each filter returns a new message, so the part as it left stays as it was),
keeps one decoder per filter name and one default encoder per name for replies (a pull asks
for its reply to be encoded as its request was), and counts the bytes before and after each
filter, per table and direction.

Thread-safety: :meth:`encode` may be called from any thread (the codecs keep their own
per-peer state safe); :meth:`decode` and :meth:`forget` run on the node's loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import ProtocolError
from ..protocol import Codec, Message, codec, encode, value_indices

__all__ = ["WireFilters"]

#: ``count(table, direction, filter, bytes_before, bytes_after)``
Counter = Callable[[int, str, str, int, int], None]


class WireFilters:
    """The wire-filter chain of one node. See the module docstring."""

    def __init__(self, count: Counter) -> None:
        self._count = count
        #: filter name -> the decoder of what peers sent through it
        self.decoders: dict[str, Codec] = {}
        self._encoders: dict[str, Codec] = {}

    def frames(self, peer: int, msg: Message) -> list[Any]:
        """``msg`` through its filters (``msg.codecs``, by rank), encoded for ``peer``."""
        if msg.codecs:
            if not msg.values_at:
                msg.values_at = value_indices(msg)
            for c in sorted(msg.codecs, key=lambda c: c.rank):
                out = c.encode(peer, msg)
                if out is not msg:
                    self._count(msg.table, "sent", c.wire_name, msg.nbytes(), out.nbytes())
                    msg = out
        return encode(msg)

    def decode(self, msg: Message) -> Message:
        """``msg`` with the filters it names undone, last first.

        Raises
        ------
        KeysMissing
            A key-cache miss (the sender must send the keys again).
        ProtocolError
            Hostile or malformed filter metadata.
        """
        for name in reversed(msg.filters):
            dec = self.decoders.get(name)
            if dec is None:
                dec = self.decoders[name] = codec(name)
            before = msg.nbytes()
            try:
                msg = dec.decode(msg.sender, msg)
            except ProtocolError:  # KeysMissing included: the caller answers it
                raise
            except Exception as exc:  # hostile metadata must get an answer, not stop the loop
                raise ProtocolError(f"{name}: cannot decode: {exc!r}") from None
            self._count(msg.table, "received", name, msg.nbytes(), before)
        return msg

    def encoder(self, name: str) -> Codec:
        """A filter with default settings, to encode replies as a request asked."""
        enc = self._encoders.get(name)
        if enc is None:
            enc = self._encoders[name] = codec(name)
        return enc

    def forget(self, peer: int) -> None:
        """``peer`` is gone: drop what the decoders kept for it."""
        for dec in self.decoders.values():
            dec.forget(peer)
