"""The interface of wire filters: encode a message's arrays on send, decode on receive.

A :class:`Codec` returns a rewritten copy of a message (its arrays, what it needs to decode
them in the body, its name appended to ``Message.filters``) just before the message is
encoded into frames; the receiver runs the decoders of the names in ``Message.filters`` in
reverse order right after decoding the frames, each returning a new message. Codecs never
mutate the message they are given. Codecs
are looked up by wire name in a registry that the filter implementations (the
``paramserver.filters`` package) fill when imported. Decoding is strict: anything that does
not add up raises :class:`ProtocolError`, a key-cache miss raises :class:`KeysMissing`.

Codec objects may keep state per peer (the key cache); a node calls them from its receive
thread and from user threads, so stateful codecs guard their state with a lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import ProtocolError
from ._message import Message, Op

__all__ = ["CODECS", "Codec", "KeysMissing", "codec", "register_codec", "value_indices"]


class KeysMissing(ProtocolError):
    """The receiver does not have the key list a message refers to by signature ``sig``."""

    def __init__(self, message: str, sig: int = 0) -> None:
        super().__init__(message)
        self.sig = sig


class Codec:
    """A wire filter. Subclasses set ``wire_name`` and implement encode and decode.

    Both methods are pure with respect to the message: they never mutate the one they are
    given (nor its body, its list of arrays or the arrays' contents), so a sender may keep
    the message it passed to :meth:`encode` for reroutes and repairs without a snapshot.
    """

    wire_name: str = ""
    #: Encoders run in this order, whatever order the user listed them in.
    rank: int = 0

    def encode(self, peer: int, msg: Message) -> Message:
        """``msg`` rewritten for ``peer``, with :attr:`wire_name` appended to its filters; ``msg``
        itself (the same object) when the filter does not apply to it."""
        raise NotImplementedError

    def decode(self, peer: int, msg: Message) -> Message:
        """A message received from ``peer`` with :meth:`encode` undone (its filters unchanged)."""
        raise NotImplementedError

    def forget(self, peer: int, sig: int | None = None) -> None:
        """Drop what is cached for ``peer``: one signature after a miss on its side, or
        everything when it leaves."""

    # helpers for codecs that keep one metadata entry per rewritten array in the body
    def _finish(self, msg: Message, arrays: list[np.ndarray], meta: list[Any]) -> Message:
        """``msg`` with ``arrays`` and ``meta`` stored under the codec's name; ``msg`` itself if
        no array was rewritten."""
        if not meta:
            return msg
        return self._applied(msg, arrays, {**msg.body, self.wire_name: meta})

    def _applied(self, msg: Message, arrays: list[np.ndarray], body: dict[str, Any]) -> Message:
        """A copy of ``msg`` with new arrays and body, naming this filter on the wire."""
        return dataclasses.replace(msg, arrays=arrays, body=body, filters=(*msg.filters, self.wire_name))

    def _entries(self, msg: Message, fields: int) -> tuple[list[list[Any]], dict[str, Any]]:
        """The codec's metadata entries, each checked to be ``[array index, ...]`` of ``fields``
        items, and the body without them."""
        body = dict(msg.body)
        meta = body.pop(self.wire_name, None)
        if not isinstance(meta, list):
            raise ProtocolError(f"{self.wire_name}: missing metadata")
        for entry in meta:
            if not (isinstance(entry, list) and len(entry) == fields and type(entry[0]) is int
                    and 0 <= entry[0] < len(msg.arrays)):
                raise ProtocolError(f"{self.wire_name}: malformed entry")
        return meta, body


#: Decoder factories by wire name.
CODECS: dict[str, Callable[[], Codec]] = {}


def register_codec(name: str, factory: Callable[[], Codec]) -> None:
    """Make ``name`` decodable (and usable in replies) on this node."""
    CODECS[name] = factory


def codec(name: str) -> Codec:
    """A new codec for wire ``name`` with default settings.

    Raises
    ------
    ProtocolError
        No codec of that name is registered here.
    """
    factory = CODECS.get(name)
    if factory is None:
        raise ProtocolError(f"unknown filter {name!r} (this node knows {sorted(CODECS)})")
    return factory()


def value_indices(msg: Message) -> tuple[int, ...]:
    """Which arrays of ``msg`` hold table values (the ones value filters may rewrite)."""
    if msg.op == Op.PUSH and not msg.response:
        return (1,) if len(msg.arrays) == 2 else ()
    if msg.op == Op.PULL and msg.response:
        return (0,) if len(msg.arrays) == 1 else ()
    if msg.op == Op.PULL_RANGE and msg.response:
        return (1,) if len(msg.arrays) == 2 else ()
    return ()
