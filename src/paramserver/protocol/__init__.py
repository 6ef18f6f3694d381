"""Layer 2, the protocol: :class:`Message` and its strict msgpack + raw-frame codec."""

from ._codec import ALLOWED_DTYPES, PROTOCOL_VERSION, decode, encode
from ._fields import get
from ._message import KEY_DTYPE, Message, Op, Status

__all__ = ["ALLOWED_DTYPES", "KEY_DTYPE", "PROTOCOL_VERSION", "Message", "Op", "Status", "decode", "encode", "get"]
