"""A server's side of checkpoints: writing its master ranges at a consistent cut, and
loading them back when it was started with ``--restore``.

**Writing.** A worker's CHECKPOINT request names a path and an iteration ``t``, the *cut*.
The server holds it (without blocking its receive thread, like a held pull) until

* every live worker of every table has finished iteration ``t`` on this server's key
  ranges (the tables' iteration clocks, ``TableSync.slowest``): a worker's clock tick for
  ``t`` follows all its pushes of iterations up to ``t``, and ordered messages are applied
  in order, so all those pushes have been applied;
* no summed iteration ``<= t`` of an aggregating table is still waiting to be applied;
* the requesting worker's pushes sent before the request are applied (read-your-writes:
  the request carries the last sequence number the worker sent on each table).

Then it writes, for every table, the keys it masters under the current key map (rows of
its store filtered by its ranges, never replicas), their values and optimizer state, and
answers with the files it wrote. While a cut is pending, pushes of iterations after it
(``msg.clock > t``) are acknowledged but *deferred*: kept in arrival order and applied
right after the write, so they never leak into the checkpoint; a pull from a worker with
deferred pushes on that table waits for them (read-your-writes). Pushes of later
iterations applied *before* the request arrived cannot be taken out: see
docs/checkpoints.md for when the cut is exact.

**Restoring.** With a restore path, every table created on this server (by a worker's
declaration or in the registration reply) is filled from the checkpoint's files of the
table of the same name: all servers' files are read and the keys this server masters under
the *current* key map are kept, so the number of servers may differ from the checkpoint's.

Thread-safety: every method runs on the server's receive thread, like the handlers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import CheckpointError, ProtocolError, PSError, RequestTimeout
from ..checkpoint import Location, open_location, read_manifest, server_files
from ..checkpoint._format import load_file
from ..placement import KeyMap, ranges_to_wire
from ..protocol import Message, get
from ..table import Store, TableSpec

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Checkpoints", "owned_rows"]

log = logging.getLogger("paramserver.server")

ANSWERS_KEPT = 256


def owned_rows(keys: np.ndarray, keymap: KeyMap | None, node: int) -> np.ndarray:
    """Positions of the keys ``node`` masters under ``keymap`` (all of them without a map),
    in ascending key order (equal keys in position order).

    Vectorised: one ``KeyMap.masters`` and one stable argsort of the keys kept.
    """
    rows = np.arange(len(keys)) if keymap is None else np.flatnonzero(keymap.masters(keys) == node)
    return rows[np.argsort(keys[rows], kind="stable")]


class Checkpoints:
    """Held checkpoint requests, deferred pushes and the restore source of one server."""

    def __init__(self, server: Server, restore: str | None = None) -> None:
        self.server = server
        self.held: list[Message] = []  # checkpoint requests waiting for their cut, in arrival order
        self.deferred: list[Message] = []  # pushes after the pending cut, in arrival order
        self._deferred_by: Counter[tuple[int, int]] = Counter()  # (sender, table) -> deferred pushes
        self.pulls: list[Message] = []  # pulls waiting for their sender's deferred pushes
        self._answers: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()  # for resent requests
        self._busy = False
        self.written = 0
        #: Where tables are restored from, and its manifest (checked now: fail at start-up).
        self.source: Location | None = None
        self.manifest: dict[str, Any] = {}
        if restore:
            self.source = open_location(restore)
            self.manifest = read_manifest(self.source)
        server.node.on_nodes_changed.append(self._on_nodes_changed)

    # ------------------------------------------------------------------ writing
    @property
    def cut(self) -> int | None:
        """The earliest iteration of a held checkpoint, or None when none is held."""
        return min(get(m.body, "iteration", int) for m in self.held) if self.held else None

    def limit(self) -> int:
        """The last iteration whose summed pushes may be applied now (aggregating tables)."""
        cut = self.cut
        return 1 << 62 if cut is None else cut

    def on_request(self, msg: Message) -> None:
        """A CHECKPOINT request: hold it until its cut is reached (at once if it is)."""
        key = (msg.sender, msg.ts)
        if key in self._answers:  # a resend of a request already answered
            self.server.node.reply(msg, body=self._answers[key])
            return
        if any((m.sender, m.ts) == key for m in self.held):
            return  # a resend of a request still held
        get(msg.body, "path", str)
        if get(msg.body, "iteration", int) < -1:
            raise ProtocolError("a checkpoint's iteration must be >= -1")
        seqs = get(msg.body, "seqs", list, [])
        if not all(isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p) for p in seqs):
            raise ProtocolError("a checkpoint's seqs must be [[table, seq], ...]")
        limit = msg.body.get("timeout")
        if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit <= 0:
            raise ProtocolError("a checkpoint's timeout must be a number > 0")
        self.held.append(msg)
        # The requester gives up after its timeout: stop holding (and deferring pushes) then too.
        self.server.node.call_later(float(limit), lambda: self._expire(key))
        self.poll()

    def _expire(self, key: tuple[int, int]) -> None:
        expired = [m for m in self.held if (m.sender, m.ts) == key]
        if not expired:
            return
        self.held = [m for m in self.held if (m.sender, m.ts) != key]
        msg = expired[0]
        log.warning("server %d: checkpoint of iteration %d from node %d expired before its cut was reached",
                    self.server.node.id, msg.body["iteration"], msg.sender)
        self.server.node.reply_error(msg, RequestTimeout(
            f"checkpoint of iteration {msg.body['iteration']}: not every live worker finished it in time"),
            with_traceback=False)
        self._replay()
        self.poll()

    def defer(self, msg: Message, keys: np.ndarray, values: np.ndarray) -> bool:
        """Keep a checked push of an iteration after the pending cut for later; True if kept."""
        cut = self.cut
        if cut is None or msg.clock <= cut:
            return False
        self.deferred.append(dataclasses.replace(msg, arrays=[np.array(keys), np.array(values)], body={}))
        self._deferred_by[(msg.sender, msg.table)] += 1
        return True

    def hold_pull(self, msg: Message) -> bool:
        """Hold a pull whose sender has deferred pushes on its table; True if held."""
        if not self._deferred_by.get((msg.sender, msg.table)):
            return False
        self.pulls.append(msg)
        return True

    def _ready(self, msg: Message) -> bool:
        server = self.server
        t = get(msg.body, "iteration", int)
        lo, hi = server._own_span()
        for table, seq in get(msg.body, "seqs", list, []):
            sync = server.sync.get(table)
            if sync is not None and not sync.caught_up(msg.sender, seq):
                return False
        live = server._live_workers()
        for sync in server.sync.values():
            if sync.channels and sync.slowest(lo, hi, live) < t:
                return False
            if any(it <= t for it in sync.pending):
                return False
        return True

    def poll(self) -> None:
        """Write the held checkpoints whose cut is reached, then apply what waited for them."""
        if self._busy or not self.held:
            return
        self._busy = True
        try:
            while self.held:
                # Earliest cut first: the pushes deferred for it belong in any later one.
                cut = self.cut
                ready = [m for m in self.held if get(m.body, "iteration", int) == cut and self._ready(m)]
                if not ready:
                    break
                for m in ready:
                    self.held.remove(m)
                    self._write(m)
                self._replay()
        finally:
            self._busy = False

    def _replay(self) -> None:
        """Apply the deferred pushes that are no longer after a pending cut, in order."""
        server = self.server
        cut = self.cut
        keep = [m for m in self.deferred if cut is not None and m.clock > cut]
        todo = [m for m in self.deferred if not (cut is not None and m.clock > cut)]
        self.deferred = keep
        self._deferred_by = Counter((m.sender, m.table) for m in keep)
        tables = set()
        for m in todo:
            try:
                server._apply_checked(m, m.arrays[0], m.arrays[1])  # checked when it arrived; not after the cut now
            except Exception:
                log.exception("server %d: a push deferred by a checkpoint failed", server.node.id)
            tables.add(m.table)
        for table in list(server.sync):  # sums held back by the cut, and the replayed ones
            server._aggregate(table)
        pulls, self.pulls = self.pulls, []
        for p in pulls:
            if not self.hold_pull(p):
                server._answer(p)
        for table in tables:
            server._release(table)

    def _write(self, msg: Message) -> None:
        server = self.server
        node = server.node
        try:
            body = self._write_files(open_location(get(msg.body, "path", str)))
        except Exception as exc:
            err = exc if isinstance(exc, PSError) else CheckpointError(f"writing the checkpoint failed: {exc!r}")
            log.warning("server %d: checkpoint to %r failed: %s", node.id, msg.body.get("path"), err)
            node.reply_error(msg, err, with_traceback=not isinstance(exc, PSError))
            return
        self.written += 1
        self._answers[(msg.sender, msg.ts)] = body
        while len(self._answers) > ANSWERS_KEPT:
            self._answers.popitem(last=False)
        node.reply(msg, body=body)

    def _write_files(self, loc: Location) -> dict[str, Any]:
        """Write this server's master ranges of every table; return what the manifest needs."""
        server = self.server
        node = server.node
        keymap = node.keymap
        tables: dict[str, Any] = {}
        for tid, store in sorted(server.stores.items()):
            n = len(store)
            rows = owned_rows(store.keys[:n], keymap, node.id)
            names = sorted(store.state)
            files = server_files(store.spec.name, tid, node.id, names)
            loc.makedirs(files["keys"].rsplit("/", 1)[0])
            loc.save_array(files["keys"], store.keys[rows])
            loc.save_array(files["values"], store.values[rows])
            for s in names:
                loc.save_array(files["state"][s], store.state[s][rows])
            tables[store.spec.name] = {
                "id": tid, "spec": store.spec.to_wire(), "count": len(rows), "files": files,
                "clocks": {str(w): ch.iters.min() for w, ch in sorted(server.sync[tid].channels.items())},
            }
        ranges = ranges_to_wire([(r.lo, r.hi) for r in keymap.ranges_of(node.id)]) if keymap else []
        log.info("server %d: checkpoint written to %s (%d tables)", node.id, loc.url, len(tables))
        return {"ranges": ranges, "tables": tables}

    def _on_nodes_changed(self, gone: set[int]) -> None:
        """Requests of workers that left are dropped; a cut may now be reached."""
        if self.held and gone:
            dropped = [m for m in self.held if m.sender in gone]
            self.held = [m for m in self.held if m.sender not in gone]
            if dropped:
                self._replay()
        self.pulls = [p for p in self.pulls if p.sender not in gone]
        self.poll()

    def status(self) -> dict[str, Any]:
        """Figures for ``paramserver status``."""
        out: dict[str, Any] = {"held": len(self.held), "deferred_pushes": len(self.deferred),
                               "written": self.written}
        if self.source is not None:
            out["restored_from"] = self.source.url
            out["restored_iteration"] = self.manifest["iteration"]
        return out

    # ------------------------------------------------------------------ restoring
    def restore(self, table_id: int, store: Store) -> None:
        """Fill a new table's ``store`` with the checkpoint's keys this server masters.

        Raises
        ------
        CheckpointError
            The checkpoint has no table of that name, or one of another width, dtype or
            updater, or its files do not match the manifest.
        """
        if self.source is None:
            return
        loc, spec, node = self.source, store.spec, self.server.node
        entry = self.manifest["tables"].get(spec.name)
        if entry is None:
            raise CheckpointError(f"table {spec.name!r} is not in the checkpoint {loc.url!r} being restored "
                                  f"(it holds {sorted(self.manifest['tables'])})")
        saved = TableSpec.from_wire(entry["spec"])
        if (saved.width, saved.dtype, saved.updater) != (spec.width, spec.dtype, spec.updater):
            raise CheckpointError(f"table {spec.name!r} was declared with {spec.describe()}, but the checkpoint "
                                  f"{loc.url!r} holds it with {saved.describe()}")
        layout = store.updater.state_layout(store.width, store.dtype)
        total = 0
        for f in entry["files"]:
            keys, values, state = load_file(loc, f, spec, layout)
            rows = owned_rows(keys, node.keymap, node.id)
            if not len(rows):
                continue
            k = keys[rows]  # load_file checked the dtypes; fancy indexing reads a copy into memory
            if len(k) > 1 and not bool(np.all(k[1:] > k[:-1])):
                raise CheckpointError(f"checkpoint {loc.url!r}: {f['keys']} has repeated keys")
            store.load(k, values[rows], {s: a[rows] for s, a in state.items()})
            total += len(k)
        log.info("server %d: table %d %r restored from %s: %d keys of iteration %d", node.id, table_id,
                 spec.name, loc.url, total, self.manifest["iteration"])

