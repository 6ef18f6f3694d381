"""Errors as they travel: an exception becomes an error reply body and back."""

from __future__ import annotations

import traceback
from typing import Any

from .. import _errors
from .._errors import PSError, RemoteError

__all__ = ["error_body", "error_from_body"]

# Errors that keep their type when re-raised at the caller (everything else is RemoteError).
_PASS_THROUGH = {
    cls.__name__: cls
    for cls in (
        _errors.InvalidArgument,
        _errors.DTypeError,
        _errors.TableError,
        _errors.ReadOnlyError,
        _errors.KeyRangeError,
        _errors.ProtocolError,
        _errors.ConfigError,
        _errors.JobAborted,
        _errors.NodeUnavailable,
        _errors.CheckpointError,
    )
}


def error_body(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """The body of an error reply describing ``exc``."""
    tb = ""
    if with_traceback:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__name__, "message": str(exc), "traceback": tb}


def error_from_body(body: dict[str, Any], node: int, what: str) -> PSError:
    """The exception to raise at the caller for an error reply from ``node``."""
    kind = str(body.get("type", "Exception"))
    message = str(body.get("message", ""))
    tb = str(body.get("traceback", ""))
    cls = _PASS_THROUGH.get(kind)
    if cls is not None:
        return cls(f"{what}: {message} (raised on node {node})")
    return RemoteError(f"{what} failed on node {node}: {kind}: {message}", node=node,
                       remote_type=kind, remote_traceback=tb)
