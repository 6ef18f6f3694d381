"""Layer 2, the protocol: :class:`Message`, its strict codec, and the wire-filter interface."""

from ._codec import ALLOWED_DTYPES, PROTOCOL_VERSION, decode, encode
from ._fields import get
from ._filters import CODECS, Codec, KeysMissing, codec, register_codec, value_indices
from ._message import KEY_DTYPE, KEY_SPACE, Message, Op, Status

__all__ = [
    "ALLOWED_DTYPES",
    "CODECS",
    "KEY_DTYPE",
    "KEY_SPACE",
    "PROTOCOL_VERSION",
    "Codec",
    "KeysMissing",
    "Message",
    "Op",
    "Status",
    "codec",
    "decode",
    "encode",
    "get",
    "register_codec",
    "value_indices",
]
