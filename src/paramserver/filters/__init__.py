"""Layer 7, filters (the paper, section 2): what travels, and how much of it.

Wire filters (encode on send, decode on receive, named in each message):

* :class:`KeyCache`: a repeated key list travels as a 64-bit signature.
* :class:`ZeroSuppress`: only non-zero values, with their positions.
* :class:`FixedPoint`: floats as 1, 2 or 4 bytes, stochastic rounding (lossy, unbiased).
* :class:`Compress`: Snappy, LZ4 or Zstandard.

Push filters (change what a push sends, in the worker):

* :class:`SignificantlyModified`: only entries changed by more than a threshold.
* :class:`RandomSkip`: a random fraction, rescaled (unbiased).
* :class:`KKT`: an application predicate drops keys.

Give a table its filters with ``w.table(..., filters=[...])`` or a call with
``t.push(..., filters=[...])``. Every node counts the bytes before and after each filter.
Importing this package registers the decoders, so every node can read filtered messages.
"""

import functools

from ..protocol import register_codec
from ._compress import ALGORITHMS, Compress
from ._keycache import KeyCache, signature
from ._push import KKT, RandomSkip, SignificantlyModified
from ._values import FixedPoint, ZeroSuppress

__all__ = ["KKT", "Compress", "FixedPoint", "KeyCache", "RandomSkip", "SignificantlyModified", "ZeroSuppress",
           "signature"]

register_codec("keys", KeyCache)
register_codec("zeros", ZeroSuppress)
for _bits in (8, 16, 32):
    register_codec(f"fixed{_bits}", functools.partial(FixedPoint, _bits))
for _alg in ALGORITHMS:
    register_codec(_alg, functools.partial(Compress, _alg))
