"""The exception hierarchy of paramserver.

Every error the library raises on purpose derives from :class:`PSError`::

    PSError
    ├── ConfigError            a setting (argument or environment variable) is invalid
    ├── ProtocolError          a message on the wire is malformed or of another version
    ├── InvalidArgument        a call's arguments are wrong (also a ValueError)
    │   └── DTypeError         an array has the wrong dtype (also a TypeError)
    ├── TableError             a table is unknown, or declared again with another spec
    │   └── ReadOnlyError      a write to a table this worker or its group may only read
    ├── KeyRangeError          keys sent to a server that does not own them
    ├── CheckpointError        a checkpoint cannot be written, read or restored
    ├── RemoteError            an exception raised on another node, re-raised here
    ├── ConnectError           the scheduler could not be reached at an address
    ├── NodeUnavailable        a peer died or cannot be reached (fail fast, no hang)
    ├── RequestTimeout         a wait ran out of time (also a TimeoutError)
    ├── ClosedError            the worker or node was closed by this process
    └── JobAborted             the scheduler ended the job (a node died, or shutdown)

The split between :class:`ClosedError` ("you closed it") and
:class:`NodeUnavailable` / :class:`JobAborted` ("the other side broke") follows trio.
Messages say what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ClosedError",
    "ConfigError",
    "ConnectError",
    "DTypeError",
    "InvalidArgument",
    "JobAborted",
    "KeyRangeError",
    "NodeUnavailable",
    "PSError",
    "ProtocolError",
    "ReadOnlyError",
    "RemoteError",
    "RequestTimeout",
    "SchedulerRestarted",
    "SchedulerUnavailable",
    "TableError",
]


class PSError(Exception):
    """Base class of every error raised by paramserver."""


class ConfigError(PSError):
    """A setting, given as an argument or an environment variable, is invalid."""


class ProtocolError(PSError):
    """A message is malformed, truncated, of an unknown type or of another protocol version.

    Raised by the codec; a node that receives such a message logs it, answers with an
    error if it can tell who sent it, and keeps serving.
    """


class InvalidArgument(PSError, ValueError):
    """The arguments of a call are wrong (shape, width, key type, range bounds...)."""


class DTypeError(InvalidArgument, TypeError):
    """An array has a dtype other than the one the table or the call requires."""


class TableError(PSError):
    """A table is unknown, or is declared again with a spec that conflicts with the first."""


class ReadOnlyError(TableError):
    """A push (or clock tick) to a table that this worker attached to read-only
    (``Worker.table(name, readonly=True)``), or a writable declaration of a table in a
    namespace whose writer groups exclude this worker's group (docs/groups.md)."""


class KeyRangeError(PSError):
    """A request carried keys outside the key ranges owned by the server that received it."""


class CheckpointError(PSError):
    """A checkpoint cannot be written, read or restored: a missing or corrupt manifest or
    file, a table the checkpoint does not hold, or one declared with another width, dtype
    or updater than the checkpoint's. The message names the path."""


class RemoteError(PSError):
    """An exception raised on another node while it handled our request.

    Attributes
    ----------
    node:
        The node id of the peer that raised it.
    remote_type:
        The name of the exception class on the remote side.
    remote_traceback:
        The formatted traceback text from the remote side (may be empty).
    """

    def __init__(
        self, message: str, *, node: int = -1, remote_type: str = "", remote_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.node = node
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += f"\n\nRemote traceback (node {self.node}):\n{self.remote_traceback}"
        return text


class ConnectError(PSError):
    """No scheduler answered at the given address within the connect timeout, the job did
    not start in that time, the scheduler has exited, or a node cannot listen at its address
    (a port already in use)."""


class NodeUnavailable(PSError):
    """A peer node is dead or unreachable; requests to it fail instead of hanging."""


class SchedulerUnavailable(NodeUnavailable):
    """A call that needs the scheduler (a barrier, a table declaration, a data shard, a
    consistency change, the goodbye) ran out of time while the scheduler was unreachable.
    The data path (push, pull) does not need it and goes on; restart the scheduler at the
    same address (``paramserver scheduler --recover``) and the job continues."""


class SchedulerRestarted(NodeUnavailable):
    """A request to the scheduler was lost because the scheduler restarted; the node sends
    it again to the new scheduler process (it reaches callers only if that fails)."""


class RequestTimeout(PSError, TimeoutError):
    """A wait for a reply, a barrier or a result ran out of time."""


class ClosedError(PSError):
    """The worker (or node) was closed by this process; open a new one with connect()."""


class JobAborted(PSError):
    """The scheduler ended the job: a node died, or the cluster was shut down.

    Attributes
    ----------
    code:
        The job's exit code as the scheduler gave it: 0 for a normal end.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
