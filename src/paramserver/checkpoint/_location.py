"""Where a checkpoint lives: a local directory, a ``file://`` URL, or any fsspec URL.

Local paths need nothing beyond the standard library. Other URLs (``s3://``, ``gcs://``,
``memory://``...) go through fsspec, an optional dependency (``pip install
paramserver[fsspec]`` or ``pip install fsspec`` plus the filesystem's own package).

Files are written under a temporary name in the same directory and renamed into place
when complete, so a reader never sees half a file under its final name.

Thread-safety: a :class:`Location` holds no mutable state of its own; concurrent writers
of different files are safe, of the same file the last rename wins.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from .._errors import CheckpointError

__all__ = ["Location", "confined", "open_location"]


class Location:
    """The root of one checkpoint. Paths given to its methods are relative, ``/``-separated."""

    def __init__(self, url: str, fs: Any = None, root: str = "") -> None:
        #: The normalised address: an absolute local path, or the fsspec URL as given.
        self.url = url
        self._fs = fs  # None for local paths
        self._root = root if fs is not None else url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    @property
    def local(self) -> bool:
        return self._fs is None

    def _full(self, rel: str) -> str:
        if self._fs is None:
            return os.path.join(self._root, *rel.split("/")) if rel else self._root
        return posixpath.join(self._root, rel) if rel else self._root

    def makedirs(self, rel: str = "") -> None:
        path = self._full(rel)
        try:
            if self._fs is None:
                os.makedirs(path, exist_ok=True)
            else:
                self._fs.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the checkpoint directory {path!r}: {exc}") from None

    def exists(self, rel: str) -> bool:
        path = self._full(rel)
        return os.path.exists(path) if self._fs is None else bool(self._fs.exists(path))

    def remove(self, rel: str) -> None:
        """Delete one file if it exists."""
        path = self._full(rel)
        try:
            if self._fs is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            elif self._fs.exists(path):
                self._fs.rm(path)
        except OSError as exc:
            raise CheckpointError(f"cannot remove {path!r}: {exc}") from None

    @contextlib.contextmanager
    def _writing(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears as ``rel`` only once closed without error."""
        final = self._full(rel)
        head, tail = (os.path.split if self._fs is None else posixpath.split)(final)
        tmp = (os.path.join if self._fs is None else posixpath.join)(head, f".{tail}.{uuid.uuid4().hex}.tmp")
        opener = open if self._fs is None else self._fs.open
        try:
            with opener(tmp, "wb") as f:
                yield f
            if self._fs is None:
                os.replace(tmp, final)
            else:
                self._fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                if self._fs is None:
                    os.remove(tmp)
                else:
                    self._fs.rm(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            with self._writing(rel) as f:
                f.write(data)
        except OSError as exc:
            raise CheckpointError(f"cannot write {self._full(rel)!r}: {exc}") from None

    def read_bytes(self, rel: str) -> bytes:
        path = self._full(rel)
        try:
            if self._fs is None:
                with open(path, "rb") as f:
                    return f.read()
            return bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            raise CheckpointError(f"{path!r} does not exist") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read {path!r}: {exc}") from None

    def save_array(self, rel: str, array: np.ndarray) -> None:
        """Write ``array`` as a ``.npy`` file (``numpy.load`` reads it back)."""
        try:
            with self._writing(rel) as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as exc:
            raise CheckpointError(f"cannot write {self._full(rel)!r}: {exc}") from None

    def load_array(self, rel: str) -> np.ndarray:
        """Read a ``.npy`` file; local files are memory-mapped (read when indexed)."""
        path = self._full(rel)
        try:
            if self._fs is None:
                arr: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
                return arr
            with self._fs.open(path, "rb") as f:
                arr = np.load(f, allow_pickle=False)
                return arr
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {path!r} does not exist") from None
        except (OSError, ValueError, EOFError) as exc:
            raise CheckpointError(f"checkpoint file {path!r} is not a readable .npy file: {exc}") from None


def confined(path: str | os.PathLike[str], root: str) -> str:
    """``path`` if it lies under ``root`` (PS_CHECKPOINT_ROOT; "" allows any path).

    Local paths are compared after resolving symbolic links and ``..``; URLs must have the
    root's scheme and lie under its path once ``..`` segments are resolved.

    Raises
    ------
    CheckpointError
        ``path`` is outside ``root``.
    """
    text = os.fspath(path)
    if not root:
        return text

    def split(p: str) -> tuple[str, str]:
        p = p[len("file://"):] if p.startswith("file://") else p
        if "://" not in p:
            return "", os.path.realpath(os.path.expanduser(p))
        scheme, rest = p.split("://", 1)
        return scheme, posixpath.normpath("/" + rest)

    (scheme, where), (root_scheme, base) = split(text), split(root)
    sep = "/" if scheme else os.sep
    inside = scheme == root_scheme and (where == base or where.startswith(base.rstrip(sep) + sep))
    if not inside:
        raise CheckpointError(f"checkpoint path {text!r} is outside PS_CHECKPOINT_ROOT={root!r}; "
                              f"servers write and read checkpoints only below it")
    return text


def open_location(path: str | os.PathLike[str], root: str = "") -> Location:
    """The checkpoint root at ``path``: a local path (made absolute), ``file://...``, or an
    fsspec URL; with ``root``, ``path`` must lie under it (:func:`confined`).

    Raises
    ------
    CheckpointError
        An fsspec URL while fsspec is not installed, an empty path, or a path outside ``root``.
    """
    if root:
        confined(path, root)
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise CheckpointError("a checkpoint path must be a non-empty string")
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" not in text:
        return Location(os.path.abspath(os.path.expanduser(text)))
    try:
        import fsspec
    except ImportError:
        raise CheckpointError(
            f"checkpoint path {text!r}: URLs other than file:// need fsspec (pip install fsspec); "
            "local directories work without it") from None
    try:
        fs, root = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"checkpoint path {text!r}: {exc}") from None
    return Location(text, fs, root)
