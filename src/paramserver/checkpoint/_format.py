"""The checkpoint layout: a JSON manifest plus plain ``.npy`` files (docs/checkpoints.md).

::

    <path>/manifest.json                          written last: its presence marks a complete checkpoint
    <path>/<table>/server-<id>.keys.npy           uint64, sorted ascending, distinct
    <path>/<table>/server-<id>.values.npy         (n, width) of the table's dtype, row i for keys[i]
    <path>/<table>/server-<id>.state-<name>.npy   (n, columns) optimizer state, row i for keys[i]

``<table>`` is the table's name when it is made of ``[A-Za-z0-9_.-]`` (and is not ``.`` or
``..``), else ``@<id>``; the manifest lists every file, so readers need not guess names.
Each server writes the keys it masters; the files of a table never share a key.

Everything here is pure functions of their arguments; thread-safe.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Any

import numpy as np

from .._errors import CheckpointError, ProtocolError
from ..protocol import KEY_DTYPE
from ..table import TableSpec
from ._location import Location, open_location

__all__ = ["FORMAT", "MANIFEST", "VERSION", "build_manifest", "read_manifest", "read_table", "safe_name",
           "server_files", "write_manifest"]

FORMAT = "paramserver-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def safe_name(name: str, fallback: str) -> str:
    """``name`` if it is safe as one path component, else ``fallback`` (which contains ``@``)."""
    return name if _SAFE.fullmatch(name) and name not in (".", "..") else fallback


def server_files(table_name: str, table_id: int, server: int, state_names: list[str]) -> dict[str, Any]:
    """The relative file names one server writes for one table."""
    folder = safe_name(table_name, f"@{table_id}")
    base = f"{folder}/server-{server}"
    return {
        "keys": f"{base}.keys.npy",
        "values": f"{base}.values.npy",
        "state": {s: f"{base}.state-{safe_name(s, f'@{i}')}.npy" for i, s in enumerate(state_names)},
    }


def build_manifest(iteration: int, keymap: dict[str, Any], replies: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a checkpoint from every server's reply (``{"ranges", "tables"}``)."""
    tables: dict[str, Any] = {}
    servers = []
    for sid in sorted(replies):
        reply = replies[sid]
        servers.append({"id": sid, "ranges": reply.get("ranges", [])})
        for name, info in sorted(reply.get("tables", {}).items()):
            entry = tables.setdefault(name, {"id": info["id"], "spec": info["spec"], "keys": 0, "files": []})
            if entry["spec"] != info["spec"]:
                raise CheckpointError(f"servers disagree on the spec of table {name!r}")
            entry["keys"] += info["count"]
            entry["files"].append({"server": sid, "count": info["count"], **info["files"],
                                   "clocks": info.get("clocks", {})})
    return {
        "format": FORMAT,
        "version": VERSION,
        "iteration": iteration,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "keymap": keymap,
        "servers": servers,
        "tables": tables,
    }


def write_manifest(loc: Location, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (atomically: the checkpoint is complete once it exists)."""
    loc.write_bytes(MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _check_rel(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path \
            or any(p in ("", ".", "..") for p in path.split("/")):
        raise CheckpointError(f"{where}: file name {path!r} is not a relative path inside the checkpoint")
    return path


def _validate(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a paramserver checkpoint manifest (format must be {FORMAT!r})")
    if m.get("version") != VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {m.get('version')!r} is not supported "
                              f"(this paramserver reads version {VERSION})")
    if type(m.get("iteration")) is not int or not isinstance(m.get("tables"), dict):
        raise CheckpointError(f"{where}: the manifest needs an integer 'iteration' and a 'tables' map")
    for name, t in m["tables"].items():
        if not isinstance(t, dict) or not isinstance(t.get("files"), list):
            raise CheckpointError(f"{where}: table {name!r} has no file list")
        try:
            spec = TableSpec.from_wire(t.get("spec"))
        except ProtocolError as exc:
            raise CheckpointError(f"{where}: table {name!r} has a malformed spec: {exc}") from None
        if spec.name != name:
            raise CheckpointError(f"{where}: table {name!r} has the spec of {spec.name!r}")
        for f in t["files"]:
            if not isinstance(f, dict) or not isinstance(f.get("state", {}), dict):
                raise CheckpointError(f"{where}: table {name!r} has a malformed file entry")
            _check_rel(f.get("keys"), where)
            _check_rel(f.get("values"), where)
            for s in f.get("state", {}).values():
                _check_rel(s, where)
    return m


def read_manifest(path: str | os.PathLike[str] | Location) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path``, checked (its ``iteration`` is the last
    iteration the checkpoint contains: a resumed job continues with ``iteration + 1``).

    Raises
    ------
    CheckpointError
        No manifest there (an incomplete or missing checkpoint), or a corrupt one.
    """
    loc = path if isinstance(path, Location) else open_location(path)
    if not loc.exists(MANIFEST):
        raise CheckpointError(f"no checkpoint at {loc.url!r}: {MANIFEST} is missing "
                              "(the path is wrong, or the checkpoint was not completed)")
    where = f"checkpoint {loc.url!r}"
    try:
        manifest = json.loads(loc.read_bytes(MANIFEST))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    return _validate(manifest, where)


def load_file(loc: Location, entry: dict[str, Any], spec: TableSpec,
              layout: dict[str, tuple[int, np.dtype[Any], float]]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One server's arrays of a table, checked against ``spec`` and the state ``layout``
    (the arrays may be memory-mapped: index them to read)."""
    keys = loc.load_array(entry["keys"])
    values = loc.load_array(entry["values"])
    where = f"checkpoint {loc.url!r}, table {spec.name!r}"
    if keys.dtype != KEY_DTYPE or keys.ndim != 1:
        raise CheckpointError(f"{where}: {entry['keys']} holds {keys.dtype} of shape {keys.shape}, not 1-D uint64")
    if values.dtype != spec.np_dtype or values.shape != (len(keys), spec.width):
        raise CheckpointError(f"{where}: {entry['values']} holds {values.dtype} of shape {values.shape}; the table "
                              f"needs {spec.np_dtype} of shape ({len(keys)}, {spec.width})")
    state_files = entry.get("state", {})
    if set(state_files) != set(layout):
        raise CheckpointError(f"{where}: optimizer state {sorted(state_files)} in the checkpoint, the updater "
                              f"needs {sorted(layout)}")
    state = {}
    for name, (cols, dt, _) in layout.items():
        arr = loc.load_array(state_files[name])
        if arr.dtype != dt or arr.shape != (len(keys), cols):
            raise CheckpointError(f"{where}: state {name!r} holds {arr.dtype} of shape {arr.shape}; the updater "
                                  f"needs {dt} of shape ({len(keys)}, {cols})")
        state[name] = arr
    return keys, values, state


def read_table(path: str | os.PathLike[str], name: str) -> dict[str, np.ndarray]:
    """Every key of table ``name`` in the checkpoint at ``path``, sorted, with its values and
    optimizer state: ``{"keys": ..., "values": ..., <state name>: ...}`` (all in memory).

    Raises
    ------
    CheckpointError
        No such checkpoint or table, or a file that does not match the manifest.
    """
    loc = open_location(path)
    manifest = read_manifest(loc)
    entry = manifest["tables"].get(name)
    if entry is None:
        raise CheckpointError(f"checkpoint {loc.url!r} has no table {name!r} (it has {sorted(manifest['tables'])})")
    spec = TableSpec.from_wire(entry["spec"])
    layout = spec.state_layout()
    parts = [load_file(loc, f, spec, layout) for f in entry["files"]]
    keys = np.concatenate([np.asarray(p[0]) for p in parts]) if parts else np.empty(0, KEY_DTYPE)
    order = np.argsort(keys, kind="stable")
    out = {"keys": keys[order]}
    cat = [np.asarray(p[1]) for p in parts]
    out["values"] = (np.concatenate(cat) if cat else np.empty((0, spec.width), spec.np_dtype))[order]
    for s, (cols, dt, _) in layout.items():
        arrs = [np.asarray(p[2][s]) for p in parts]
        out[s] = (np.concatenate(arrs) if arrs else np.empty((0, cols), dt))[order]
    return out
