"""Checked access to the fields of a message body, for handlers.

A body is a msgpack map whose shape depends on the op; handlers read it only through
:func:`get` so that a missing or mistyped field raises :class:`ProtocolError` (answered
with an error reply) instead of a ``KeyError`` deep inside a handler.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from .._errors import ProtocolError

__all__ = ["get"]

T = TypeVar("T")
_MISSING: Any = object()


@overload
def get(body: dict[str, Any], name: str, kind: type[T]) -> T: ...
@overload
def get(body: dict[str, Any], name: str, kind: type[T], default: T) -> T: ...


def get(body: dict[str, Any], name: str, kind: type[T], default: T = _MISSING) -> T:
    """Return ``body[name]``, checking it is of ``kind`` (``int`` excludes ``bool``).

    Raises
    ------
    ProtocolError
        The field is missing (and no default is given) or has another type.
    """
    if name not in body:
        if default is _MISSING:
            raise ProtocolError(f"message body lacks the field {name!r}")
        return default
    value = body[name]
    if kind is float and type(value) is int:
        return float(value)  # type: ignore[return-value]
    if kind is int and type(value) is bool:
        raise ProtocolError(f"message body field {name!r} must be int, got bool")
    if not isinstance(value, kind):
        raise ProtocolError(
            f"message body field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value
