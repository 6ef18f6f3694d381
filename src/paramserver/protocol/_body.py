"""The machinery of typed message bodies: strict ``from_wire`` and ``to_wire`` from annotations.

A body class is a slotted, keyword-only dataclass deriving from :class:`Body`; its fields are
the body's wire fields, under the same names, and their annotations say what each may hold:
``int`` (never ``bool``), ``float`` (an ``int`` is taken), ``str``, ``bool``, ``list[X]``,
``dict[str, Any]``, ``Any``, and ``X | None``. A field without a default is required. A field
declared with ``metadata=OMIT`` is left out of the wire form while it holds its default (its
receivers read a missing field as the default).

:meth:`Body.from_wire` checks every field it knows (unknown fields are ignored: filters keep
their metadata in the body, and a newer sender may add fields) and raises
:class:`ProtocolError` naming the first field that is missing or mistyped. A body class may
carry a tag (``TAG = ("kind", "push")``): a constant field that ``to_wire`` writes and
``from_wire`` requires.

Body objects are plain values: not shared between threads unless frozen by convention.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .._errors import ProtocolError

__all__ = ["OMIT", "Body"]

B = TypeVar("B", bound="Body")
_Check = Callable[[Any, str], Any]
_OMIT = "omit_default"
#: Field metadata: leave the field out of the wire form while it holds its default
#: (``field(default=None, metadata=OMIT)``).
OMIT: dict[str, bool] = {_OMIT: True}


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _fail(name: str, want: str, value: Any) -> ProtocolError:
    return ProtocolError(f"message body field {name!r} must be {want}, got {type(value).__name__}")


def _checker(tp: Any) -> _Check:
    """A function ``(value, name) -> value`` that raises ProtocolError unless value fits ``tp``."""
    if tp is Any:
        return lambda v, n: v
    if tp is int:
        def check_int(v: Any, n: str) -> Any:
            if type(v) is not int:
                raise _fail(n, "int", v)
            return v
        return check_int
    if tp is float:
        def check_float(v: Any, n: str) -> Any:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _fail(n, "float", v)
        return check_float
    if tp in (str, bool):
        def check_exact(v: Any, n: str) -> Any:
            if type(v) is not tp:
                raise _fail(n, tp.__name__, v)
            return v
        return check_exact
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported body annotation {tp!r}")
        each = _checker(inner[0])

        def check_opt(v: Any, n: str) -> Any:
            return None if v is None else each(v, n)
        return check_opt
    if origin is list:
        elem = args[0] if args else Any
        want = "list" if elem is Any else f"list of {_describe(elem)}"
        if elem is Any:
            def check_list_any(v: Any, n: str) -> Any:
                if type(v) is not list:
                    raise _fail(n, want, v)
                return v
            return check_list_any
        each = _checker(elem)

        def check_list(v: Any, n: str) -> Any:
            if type(v) is not list:
                raise _fail(n, want, v)
            for x in v:
                try:
                    each(x, n)
                except ProtocolError:
                    raise ProtocolError(f"message body field {n!r} must be {want}, got an element of type "
                                        f"{type(x).__name__}") from None
            return v
        return check_list
    if origin is dict or tp is dict:
        def check_dict(v: Any, n: str) -> Any:
            if type(v) is not dict:
                raise _fail(n, "dict", v)
            return v
        return check_dict
    raise TypeError(f"unsupported body annotation {tp!r}")


class _Field(typing.NamedTuple):
    name: str
    check: _Check
    required: bool
    default: Any  # a factory when ``factory`` is set
    factory: bool
    omit: bool


_SCHEMAS: dict[type, tuple[_Field, ...]] = {}


def _schema(cls: type) -> tuple[_Field, ...]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            factory = f.default_factory is not dataclasses.MISSING
            required = f.default is dataclasses.MISSING and not factory
            out.append(_Field(f.name, _checker(hints[f.name]), required,
                              f.default_factory if factory else f.default, factory, bool(f.metadata.get(_OMIT))))
        schema = _SCHEMAS[cls] = tuple(out)
    return schema


class Body:
    """Base of the typed bodies; see the module docstring."""

    __slots__ = ()
    #: A constant ``(field, value)`` that marks this kind of body on the wire, or None.
    TAG: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def from_wire(cls: type[B], body: dict[str, Any]) -> B:
        """The body ``body`` (a decoded msgpack map) as an instance of ``cls``.

        Raises
        ------
        ProtocolError
            A required field is missing, a field has another type, or the tag differs.
        """
        if type(body) is not dict:
            raise ProtocolError(f"a {cls.__name__} body must be a map, got {type(body).__name__}")
        tag = cls.TAG
        if tag is not None and body.get(tag[0]) != tag[1]:
            raise ProtocolError(f"message body field {tag[0]!r} must be {tag[1]!r} for {cls.__name__}, "
                                f"got {body.get(tag[0])!r}")
        kwargs: dict[str, Any] = {}
        for f in _schema(cls):
            if f.name in body:
                kwargs[f.name] = f.check(body[f.name], f.name)
            elif f.required:
                raise ProtocolError(f"message body lacks the field {f.name!r}")
        return cls(**kwargs)

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-able map of this body (tag first, optional fields at their default left out)."""
        out: dict[str, Any] = {}
        tag = self.TAG
        if tag is not None:
            out[tag[0]] = tag[1]
        for f in _schema(type(self)):
            value = getattr(self, f.name)
            if f.omit and value == (f.default() if f.factory else f.default):
                continue
            out[f.name] = value
        return out
