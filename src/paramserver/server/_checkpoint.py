"""A server's checkpoint files: writing the rows the checkpoint gate took at a cut, and
loading them back when the server was started with ``--restore``.

**Writing.** The gate (``_cut.py``) decides when a checkpoint's cut is reached and takes the
rows this server masters (:class:`WriteCheckpoint`); :func:`write_checkpoint` writes them,
per table, as ``.npy`` files (keys, values, optimizer state) and returns what the worker's
manifest needs. docs/checkpoints.md describes the layout and when the cut is exact.

**Restoring.** With a restore path, every table created on this server (by a worker's
declaration or in the registration reply) is filled from the checkpoint's files of the
table of the same name: all servers' files are read and the keys this server masters under
the *current* key map are kept, so the number of servers may differ from the checkpoint's.

Thread-safety: called on the server's receive thread, like everything on a server.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .._errors import CheckpointError
from ..checkpoint import Location, load_file, open_location, read_manifest, server_files
from ..placement import ranges_to_wire
from ..protocol import CheckpointReply
from ..table import Store, TableSpec
from ._actions import WriteCheckpoint
from ._cut import owned_rows
from ._owned import Ownership

__all__ = ["Restorer", "write_checkpoint"]

log = logging.getLogger("paramserver.server")


def write_checkpoint(action: WriteCheckpoint, node: int, root: str = "") -> CheckpointReply:
    """Write the rows of ``action`` as server ``node``'s files; return the manifest's part
    (the answer to the request). With ``root`` (PS_CHECKPOINT_ROOT) the path must lie under it."""
    loc = open_location(action.path, root)
    tables: dict[str, Any] = {}
    for t in action.tables:
        names = sorted(t.state)
        files = server_files(t.spec.name, t.id, node, names)
        loc.makedirs(files["keys"].rsplit("/", 1)[0])
        loc.save_array(files["keys"], t.keys)
        loc.save_array(files["values"], t.values)
        for s in names:
            loc.save_array(files["state"][s], t.state[s])
        tables[t.spec.name] = {"id": t.id, "spec": t.spec.to_wire(), "count": len(t.keys), "files": files,
                               "clocks": t.clocks}
    log.info("server %d: checkpoint written to %s (%d tables)", node, loc.url, len(tables))
    return CheckpointReply(ranges=ranges_to_wire(action.ranges), tables=tables)


class Restorer:
    """The checkpoint a server restores its tables from (its manifest read at start-up)."""

    def __init__(self, restore: str, root: str = "") -> None:
        #: Where tables are restored from, and its manifest (checked now: fail at start-up).
        self.source: Location = open_location(restore, root)
        self.manifest: dict[str, Any] = read_manifest(self.source)

    def restore(self, table_id: int, store: Store, own: Ownership) -> None:
        """Fill a new table's ``store`` with the checkpoint's keys mastered under ``own``.

        Raises
        ------
        CheckpointError
            The checkpoint has no table of that name, or one of another width, dtype or
            updater, or its files do not match the manifest.
        """
        loc, spec = self.source, store.spec
        entry = self.manifest["tables"].get(spec.name)
        if entry is None:
            raise CheckpointError(f"table {spec.name!r} is not in the checkpoint {loc.url!r} being restored "
                                  f"(it holds {sorted(self.manifest['tables'])})")
        saved = TableSpec.from_wire(entry["spec"])
        if (saved.width, saved.dtype, saved.updater) != (spec.width, spec.dtype, spec.updater):
            raise CheckpointError(f"table {spec.name!r} was declared with {spec.describe()}, but the checkpoint "
                                  f"{loc.url!r} holds it with {saved.describe()}")
        layout = store.layout
        total = 0
        for f in entry["files"]:
            keys, values, state = load_file(loc, f, spec, layout)
            rows = owned_rows(keys, own.mastered(keys) if own.keymap is not None else None)
            if not len(rows):
                continue
            k = keys[rows]  # load_file checked the dtypes; fancy indexing reads a copy into memory
            if len(k) > 1 and not bool(np.all(k[1:] > k[:-1])):
                raise CheckpointError(f"checkpoint {loc.url!r}: {f['keys']} has repeated keys")
            store.load(k, values[rows], {s: a[rows] for s, a in state.items()})
            total += len(k)
        log.info("server %d: table %d %r restored from %s: %d keys of iteration %d", own.node, table_id,
                 spec.name, loc.url, total, self.manifest["iteration"])

    def status(self) -> dict[str, Any]:
        """Figures for ``paramserver status``."""
        return {"restored_from": self.source.url, "restored_iteration": self.manifest["iteration"]}
