"""A worker's handle on one table: push, pull, range pull, wait.

Keys may come unsorted and with duplicates: a push sorts them and sums the values of equal
keys; a pull asks each distinct key once and answers in the caller's order. The sorted keys
are sliced by the key map into one message per server, and replies are merged back.

Arrays are not copied on the way out when they can be sent as they are (sorted, distinct
keys; C-contiguous values of the table's dtype): leave them unchanged until the request is
done, as with ``torch.distributed.isend``.

Every request belongs to the worker's current iteration (``Worker.clock``) and follows the
table's consistency model (see ``paramserver.clock.Consistency``): under ``sequential`` or
``bounded`` delay it leaves only once the earlier requests it must wait for have finished,
and a pull under ``bounded`` delay is held by the servers until the slowest worker is close
enough. Pushes are ordered messages: each server applies a worker's pushes once each, in the
order they were issued, even when messages are lost, resent or duplicated.

A table attached read-only (``Worker.table(name, readonly=True)``) only reads: it refuses
pushes with :class:`ReadOnlyError` before anything is sent (the servers refuse them too),
sends no clock ticks, so it never counts in the table's clocks, aggregation or bounded
delay, and its pulls read with eventual consistency unless a call asks otherwise.

Thread-safety: a Table may be used from several threads; requests are independent.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._errors import DTypeError, InvalidArgument, ProtocolError, ReadOnlyError, RequestTimeout
from ..clock import Consistency, InFlight, Request
from ..placement import KEY_SPACE, KeyMap, ranges_from_wire, ranges_to_wire
from ..protocol import KEY_DTYPE, Codec, Message, Op
from ..table import PushFilter, TableSpec
from ._session import Session, wait_result
from ._stall import explain_bounded_timeout

__all__ = ["Table", "as_keys", "split_filters"]


def as_keys(keys: Any) -> np.ndarray:
    """``keys`` as a 1-D uint64 array (no copy when it already is one).

    Raises
    ------
    DTypeError
        Keys that are not integers.
    InvalidArgument
        Negative keys, or not one-dimensional.
    """
    k = np.asarray(keys)
    if k.dtype.kind in "fO" and not isinstance(keys, np.ndarray):
        # A list mixing ints below and above 2**63 becomes float64 or object: convert exactly.
        try:
            exact = np.array(keys, dtype=KEY_DTYPE)
        except (OverflowError, TypeError, ValueError):
            raise InvalidArgument("keys must be integers in [0, 2**64)") from None
        if k.size and not np.array_equal(np.array(keys, dtype=object), exact.astype(object)):
            raise DTypeError("keys must be integers (uint64), got non-integral numbers")
        k = exact
    if k.dtype != KEY_DTYPE:
        if np.issubdtype(k.dtype, np.unsignedinteger):
            k = k.astype(KEY_DTYPE)
        elif np.issubdtype(k.dtype, np.signedinteger):
            if k.size and int(k.min()) < 0:
                raise InvalidArgument("keys must be non-negative (they are uint64)")
            k = k.astype(KEY_DTYPE)
        else:
            raise DTypeError(f"keys must be integers (uint64), got an array of {k.dtype}")
    if k.ndim != 1:
        raise InvalidArgument(f"keys must be one-dimensional, got shape {k.shape}")
    return k


def split_filters(filters: list[Any]) -> tuple[list[PushFilter], tuple[Codec, ...]]:
    """Push filters and wire filters of a filter list, checked."""
    push: list[PushFilter] = []
    wire: list[Codec] = []
    for f in filters:
        if isinstance(f, PushFilter):
            push.append(f)
        elif isinstance(f, Codec):
            wire.append(f)
        else:
            raise InvalidArgument(f"{f!r} is not a filter; use the classes of paramserver.filters")
    return sorted(push, key=lambda f: f.order), tuple(wire)


_EVENTUAL = Consistency("eventual")


def _strictly_increasing(k: np.ndarray) -> bool:
    return len(k) < 2 or bool(np.all(k[1:] > k[:-1]))


class Table:
    """A table as seen from one worker. Obtain it with :meth:`Worker.table`."""

    def __init__(self, session: Session, table_id: int, spec: TableSpec, policy: Consistency,
                 filters: list[Any] | None = None, *, readonly: bool = False) -> None:
        self._session = session
        #: Attached read-only: pushes refused, no clock ticks, eventual pulls by default.
        self.readonly = readonly
        self.id = table_id
        self.spec = spec
        #: The table's consistency model (the scheduler may change it while the job runs).
        self.policy = policy
        self._inflight = InFlight()  # guarded by the session's iteration lock
        self._lock = threading.Lock()  # guards the push filters' state
        self.filters = list(filters or [])
        self._push_filters, self._codecs = split_filters(self.filters)
        #: Push filter name -> [bytes before, bytes after] (keys and values).
        self.push_filter_bytes: dict[str, list[int]] = {}
        self.name = spec.name
        self.width = spec.width
        self.dtype = spec.np_dtype
        self.pushes = 0
        self.pulls = 0
        self.keys_pushed = 0
        self.keys_pulled = 0

    def __repr__(self) -> str:
        ro = ", read-only" if self.readonly else ""
        return f"<Table {self.name!r} id={self.id} {self.spec.describe()}, {self.policy}{ro}>"

    def _refuse_writes(self, what: str) -> None:
        if self.readonly:
            raise ReadOnlyError(f"table {self.name!r} is attached read-only by this worker; cannot {what} "
                                f"(declare it without readonly=True in a worker of a group that may write it)")

    # ------------------------------------------------------------------ sending
    def _submit(self, op: Op, parts: dict[int, Message], what: str, keymap: KeyMap, *,
                deps: Any, consistency: str | Consistency | None, tau: int | None, clock: int | None,
                on_part: Any = None, combine: Any = None, timeout: float | None = None,
                filters: list[Any] | None = None, codecs: tuple[Codec, ...] | None = None,
                reroute: Any = None) -> Request:
        """Send one request under the consistency model, after its dependencies.

        The wire filters are ``codecs`` if given (already split from the caller's filters),
        else those of ``filters``, else the table's. The request reads the iteration and
        joins this table's in-flight list under the session's iteration lock, and leaves
        after the lock is released.
        """
        session = self._session
        override = Consistency.of(consistency, tau)
        if override is None and self.readonly:
            override = _EVENTUAL  # a reader never waits on the writers' clocks
        policy = override or self.policy
        if codecs is None:
            codecs = self._codecs if filters is None else split_filters(filters)[1]
        send_codecs = codecs if op == Op.PUSH else tuple(c for c in codecs if c.wire_name == "keys")
        reply = [c.wire_name for c in codecs if c.wire_name != "keys"]
        for server, msg in parts.items():
            msg.codecs = send_codecs
            if reply and op in (Op.PULL, Op.PULL_RANGE):
                msg.body["reply_filters"] = reply
            msg.epoch = keymap.epoch
            if msg.key_range is None:
                msg.key_range = keymap.span_of(server)
            if override is not None and op != Op.PUSH:
                msg.body["consistency"] = override.to_wire()
        after = session.resolve(deps)
        ordered = op in (Op.PUSH, Op.CLOCK)
        with session.iteration_lock:  # the iteration is read under the lock that Worker.advance takes
            iteration = session.clock if clock is None else int(clock)
            for msg in parts.values():
                msg.clock = iteration
            after += self._inflight.blockers(policy, iteration)
            if op == Op.CLOCK:
                after += self._inflight.unsent_ordered(iteration)
            req = session.open(parts, what, on_part=on_part, combine=combine, timeout=timeout, reroute=reroute)
            self._inflight.add(iteration, req, ordered)
        session.launch(req, parts, table=self.id, ordered=ordered, after=after)
        return req

    def _child(self, op: Op, parts: dict[int, Message], what: str, keymap: KeyMap, parent: Message, *,
               reroute: Any, on_part: Any = None) -> Request:
        """Send ``parts`` (a part of ``parent`` re-sliced for the current key map) at once: it
        already waited for its dependencies and consistency, and completes ``parent``'s part."""
        for server, msg in parts.items():
            msg.codecs = parent.codecs
            msg.epoch = keymap.epoch
            msg.clock = parent.clock
            if op == Op.PUSH:  # the same push: a new owner applies only the keys not applied yet
                msg.body["rid"] = parent.body.get("rid", parent.ts)
            if msg.key_range is None:
                msg.key_range = keymap.span_of(server)
        return self._session.request(parts, f"{what} (sent on to the new owners)", table=self.id,
                                     ordered=op in (Op.PUSH, Op.CLOCK), on_part=on_part, reroute=reroute)

    @staticmethod
    def _origins(peer: int, msg: Message) -> list[list[int]]:
        """Where an ordered part went before (``[server, seq]`` pairs): for a table that
        aggregates, a new owner skips a push whose iteration one of them replicated."""
        origins: list[list[int]] = list(msg.body.get("origins", []))
        if msg.seq:
            origins.append([peer, msg.seq])
        return origins

    def _reroute_push(self, peer: int, msg: Message) -> Request:
        keys, values = msg.arrays[0], msg.arrays[1]
        keymap = self._session.keymap()
        origins = self._origins(peer, msg)
        parts = {server: Message(Op.PUSH, table=self.id, arrays=[part.keys, *part.arrays],
                                 body={"origins": origins} if origins else {})
                 for server, part in keymap.split(keys, values).items()}
        return self._child(Op.PUSH, parts, f"push to table {self.name!r}", keymap, msg, reroute=self._reroute_push)

    def _reroute_tick(self, peer: int, msg: Message) -> Request:
        keymap = self._session.keymap()
        lo, hi = msg.key_range if msg.key_range is not None else (0, KEY_SPACE)
        origins = self._origins(peer, msg)
        parts = {server: Message(Op.CLOCK, table=self.id, key_range=(ranges[0].lo, ranges[-1].hi),
                                 body={"origins": origins} if origins else {})
                 for server, ranges in keymap.slice_range(lo, hi).items()}
        return self._child(Op.CLOCK, parts, f"clock tick {msg.clock} of table {self.name!r}", keymap, msg,
                           reroute=self._reroute_tick)

    # ------------------------------------------------------------------ push
    def _values(self, values: Any, n: int) -> np.ndarray:
        if isinstance(values, np.ndarray):
            if values.dtype != self.dtype:
                raise DTypeError(
                    f"table {self.name!r} holds {self.dtype}; values have dtype {values.dtype} "
                    f"(convert with .astype(np.{self.dtype}))"
                )
            v = values
        else:
            v = np.asarray(values, dtype=self.dtype)
        if v.ndim == 1 and self.width == 1:
            v = v.reshape(-1, 1)
        if v.shape != (n, self.width):
            raise InvalidArgument(
                f"table {self.name!r}: values of shape {v.shape} for {n} keys; expected "
                f"({n}, {self.width})" + (f" or ({n},)" if self.width == 1 else "")
            )
        return v

    def push(self, keys: Any, values: Any, *, deps: Any = None, consistency: str | Consistency | None = None,
             tau: int | None = None, clock: int | None = None, filters: list[Any] | None = None,
             timeout: float | None = None) -> Request:
        """Send ``values`` for ``keys`` to the servers, to be applied by the table's updater.

        Returns at once with a :class:`Request`; ``req.wait()`` blocks until every server
        applied its part. Values of duplicate keys are summed before sending.

        Parameters
        ----------
        keys:
            Integer keys (any order, duplicates allowed), converted to uint64.
        values:
            Array of shape ``(len(keys), width)`` (or ``(len(keys),)`` for width 1) of the
            table's dtype.
        deps:
            Requests (or their timestamps) that must finish before this one is sent; the
            call returns at once either way.
        consistency, tau:
            Override the table's consistency model for this request.
        clock:
            The iteration this push belongs to (default: ``Worker.clock``).
        filters:
            Filters for this push instead of the table's (see ``paramserver.filters``).
        timeout:
            Default limit for ``wait`` on the returned request (PS_TIMEOUT if None).

        Raises
        ------
        DTypeError, InvalidArgument
            Before anything is sent, if keys or values are malformed.
        ClosedError, JobAborted
            The worker is closed or the job ended.
        ReadOnlyError
            The table is attached read-only.
        """
        self._refuse_writes("push")
        k = as_keys(keys)
        v = self._values(values, len(k))
        if not _strictly_increasing(k):
            order = np.argsort(k, kind="stable")
            k = k[order]
            v = v[order]
            if len(k) > 1:
                first = np.empty(len(k), dtype=bool)
                first[0] = True
                np.not_equal(k[1:], k[:-1], out=first[1:])
                if not first.all():
                    starts = np.flatnonzero(first)
                    k = k[starts]
                    v = np.add.reduceat(v, starts, axis=0)
        push_filters, codecs = (self._push_filters, self._codecs) if filters is None else split_filters(filters)
        if push_filters:
            with self._lock:
                for f in push_filters:
                    before = k.nbytes + v.nbytes
                    k, v = f.apply(k, v)
                    entry = self.push_filter_bytes.setdefault(f.name, [0, 0])
                    entry[0] += before
                    entry[1] += k.nbytes + v.nbytes
        req = self._send_push(k, v, deps=deps, consistency=consistency, tau=tau, clock=clock, codecs=codecs,
                              timeout=timeout)
        restorers = [f for f in push_filters if hasattr(f, "restore")]
        if restorers:  # a failed push gives back what filters held for it, to leave again later

            def give_back(r: Request, k: np.ndarray = k, v: np.ndarray = v) -> None:
                if r.exception(timeout=0) is not None:
                    for f in restorers:
                        f.restore(k, v)

            req.add_done_callback(give_back)
        return req

    def _send_push(self, k: np.ndarray, v: np.ndarray, *, deps: Any, consistency: str | Consistency | None,
                   tau: int | None, clock: int | None, codecs: tuple[Codec, ...],
                   timeout: float | None) -> Request:
        """Slice a push (sorted, distinct keys, filters applied) per server and submit it
        with the wire filters ``codecs``."""
        self.pushes += 1
        self.keys_pushed += len(k)
        keymap = self._session.keymap()
        parts = {server: Message(Op.PUSH, table=self.id, arrays=[part.keys, *part.arrays])
                 for server, part in keymap.split(k, v).items()}
        return self._submit(Op.PUSH, parts, f"push to table {self.name!r}", keymap, deps=deps,
                            consistency=consistency, tau=tau, clock=clock, timeout=timeout, codecs=codecs,
                            reroute=self._reroute_push)

    def flush(self) -> list[Request]:
        """Send what the push filters hold back (significantly-modified); return the requests."""
        reqs: list[Request] = []
        if self.readonly:
            return reqs
        for f in self._push_filters:
            with self._lock:
                held = f.flush()
            if held is not None and len(held[0]):
                reqs.append(self._send_push(held[0], held[1], deps=None, consistency=None, tau=None, clock=None,
                                            codecs=(), timeout=None))
        return reqs

    # ------------------------------------------------------------------ pull
    def pull(self, keys: Any, *, block: bool = True, out: np.ndarray | None = None, deps: Any = None,
             consistency: str | Consistency | None = None, tau: int | None = None, clock: int | None = None,
             filters: list[Any] | None = None, snapshot: int | None = None, timeout: float | None = None) -> Any:
        """Read the values of ``keys`` (absent keys read as the table's initial values).

        Parameters
        ----------
        keys:
            Integer keys, any order, duplicates allowed.
        block:
            If True (default) return the array; if False return a :class:`Request` whose
            ``result()`` is the array.
        out:
            Optional C-contiguous, writable array of shape ``(len(keys), width)`` and the
            table's dtype to receive the values (no allocation).
        deps, consistency, tau, clock, filters:
            As for :meth:`push` (value filters then apply to the servers' replies). Under bounded delay a pull of iteration ``t`` is answered
            once every live worker has finished iteration ``t - tau - 1``.
        snapshot:
            For a table declared with ``snapshots=N``: read the values as they were after
            iteration ``snapshot`` (-1: before any), the same cut on every server; waits
            until every writer finished that iteration. :class:`TableError` if the
            servers no longer keep it (they keep the last N).
        timeout:
            Limit in seconds (PS_TIMEOUT if None).

        Returns
        -------
        numpy.ndarray or Request
            Shape ``(len(keys), width)``, in the order of ``keys``.
        """
        k = as_keys(keys)
        n = len(k)
        if snapshot is not None:
            if isinstance(snapshot, bool) or not isinstance(snapshot, (int, np.integer)) or snapshot < -1:
                raise InvalidArgument(f"snapshot must be an iteration (an int >= -1), got {snapshot!r}")
            if not self.spec.snapshots:
                raise InvalidArgument(f"table {self.name!r} keeps no snapshots; declare it with aggregate=True, "
                                      f"snapshots=N to read it at a finished iteration")
        if out is not None:
            if out.shape != (n, self.width) or out.dtype != self.dtype:
                raise InvalidArgument(
                    f"out must have shape ({n}, {self.width}) and dtype {self.dtype}, got {out.shape} {out.dtype}")
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise InvalidArgument("out must be C-contiguous and writable")
        target = out if out is not None else np.empty((n, self.width), dtype=self.dtype)
        if _strictly_increasing(k):
            uniq, inverse, buf = k, None, target
        else:
            uniq, inverse = np.unique(k, return_inverse=True)
            buf = np.empty((len(uniq), self.width), dtype=self.dtype)
        self.pulls += 1
        self.keys_pulled += len(uniq)
        keymap = self._session.keymap()
        layout = keymap.split(uniq)
        body = {} if snapshot is None else {"snapshot": int(snapshot)}
        parts = {server: Message(Op.PULL, table=self.id, arrays=[part.keys], body=dict(body))
                 for server, part in layout.items()}

        def on_part(msg: Message) -> None:
            part = layout[msg.sender]
            count = len(part)
            if len(msg.arrays) != 1 or msg.arrays[0].shape != (count, self.width) or msg.arrays[0].dtype != self.dtype:
                raise ProtocolError(f"server {msg.sender} answered a pull of {count} keys with a malformed reply")
            buf[part.pos] = msg.arrays[0]

        def combine() -> np.ndarray:
            if inverse is not None:
                np.take(buf, inverse.reshape(-1), axis=0, out=target)
            return target

        def reroute(peer: int, msg: Message) -> Request:
            pos = layout[peer].pos
            return self._reroute_pull(uniq, buf, np.arange(len(uniq))[pos] if isinstance(pos, slice) else pos,
                                      peer, msg)

        req = self._submit(Op.PULL, parts, f"pull from table {self.name!r}", keymap, deps=deps,
                           consistency=consistency, tau=tau, clock=clock, on_part=on_part, combine=combine,
                           timeout=timeout, filters=filters, reroute=reroute)
        if not block:
            return req
        return self._wait_pull(req, timeout, consistency, tau, clock, list(parts))

    def _wait_pull(self, req: Request, timeout: float | None, consistency: str | Consistency | None,
                   tau: int | None, clock: int | None, servers: list[int]) -> Any:
        """The result of a blocking pull; under bounded delay a timeout names the workers
        that hold the clock back (``_stall.py``)."""
        try:
            return wait_result(req, timeout)
        except RequestTimeout as exc:
            policy = Consistency.of(consistency, tau) or self.policy
            if policy.kind != "bounded":
                raise
            iteration = self._session.clock if clock is None else int(clock)
            raise explain_bounded_timeout(self._session.node, exc, table=self.id, name=self.name,
                                          iteration=iteration, policy=policy, servers=servers,
                                          limit=self._session.node.config.timeout if timeout is None else timeout,
                                          ) from None

    def _reroute_pull(self, uniq: np.ndarray, buf: np.ndarray, pos: np.ndarray, peer: int,
                      msg: Message) -> Request:
        """Pull the keys ``uniq[pos]`` (a part meant for ``peer``) from their current owners into ``buf[pos]``."""
        keymap = self._session.keymap()
        ks = uniq[pos]
        parts: dict[int, Message] = {}
        where: dict[int, np.ndarray] = {}
        for server, part in keymap.split(ks, pos).items():
            parts[server] = Message(Op.PULL, table=self.id, arrays=[part.keys], body=dict(msg.body))
            where[server] = part.arrays[0]

        def on_part(m: Message) -> None:
            p = where[m.sender]
            if len(m.arrays) != 1 or m.arrays[0].shape != (len(p), self.width) or m.arrays[0].dtype != self.dtype:
                raise ProtocolError(f"server {m.sender} answered a pull of {len(p)} keys with a malformed reply")
            buf[p] = m.arrays[0]

        def again(server: int, m: Message) -> Request:
            return self._reroute_pull(uniq, buf, where[server], server, m)

        return self._child(Op.PULL, parts, f"pull from table {self.name!r}", keymap, msg, reroute=again,
                           on_part=on_part)

    def pull_range(self, lo: int = 0, hi: int = KEY_SPACE, *, block: bool = True, deps: Any = None,
                   consistency: str | Consistency | None = None, tau: int | None = None,
                   clock: int | None = None, filters: list[Any] | None = None,
                   since: int | None = None, timeout: float | None = None) -> Any:
        """Every key present on the servers in ``[lo, hi)``, ascending, with its values.

        ``since``: only the rows pushed after iteration ``since`` (a delta), for a table
        declared with admission or eviction (which keeps each row's last push iteration).

        Returns ``(keys, values)`` (or a Request of it when ``block=False``).
        """
        if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, (int, np.integer)) \
                or not isinstance(hi, (int, np.integer)):
            raise InvalidArgument("pull_range bounds must be integers")
        lo, hi = int(lo), int(hi)
        if not 0 <= lo < hi <= KEY_SPACE:
            raise InvalidArgument(f"invalid key range [{lo}, {hi}): need 0 <= lo < hi <= 2**64")
        if since is not None and (isinstance(since, bool) or not isinstance(since, (int, np.integer))):
            raise InvalidArgument(f"since must be an iteration (an int), got {since!r}")
        if since is not None and not self.spec.lifecycle.active:
            raise InvalidArgument(f"table {self.name!r} keeps no push iterations per row; a delta (since=) needs a "
                                  f"table declared with ttl=, capacity=, admit_after= or admit_prob=")
        keymap = self._session.keymap()
        got: list[tuple[np.ndarray, np.ndarray]] = []
        parts = self._range_parts(keymap, [(lo, hi)], body=None if since is None else {"since": int(since)})

        def on_part(msg: Message) -> None:
            ok = len(msg.arrays) == 2
            if ok:
                k, v = msg.arrays
                ok = (k.dtype == KEY_DTYPE and k.ndim == 1 and v.shape == (len(k), self.width)
                      and v.dtype == self.dtype and (len(k) == 0 or (int(k.min()) >= lo and int(k.max()) < hi)))
            if not ok:
                raise ProtocolError(f"server {msg.sender} answered a range pull with a malformed reply")
            got.append((msg.arrays[0], msg.arrays[1]))

        def reroute(peer: int, msg: Message) -> Request:
            keymap = self._session.keymap()
            ranges = ranges_from_wire(msg.body["ranges"])
            parts = self._range_parts(keymap, ranges, body=msg.body)
            return self._child(Op.PULL_RANGE, parts, f"range pull from table {self.name!r}", keymap, msg,
                               reroute=reroute, on_part=on_part)

        def combine() -> tuple[np.ndarray, np.ndarray]:
            if not got:
                return np.empty(0, dtype=KEY_DTYPE), np.empty((0, self.width), dtype=self.dtype)
            keys = np.concatenate([g[0] for g in got])
            values = np.concatenate([g[1] for g in got])
            order = np.argsort(keys, kind="stable")
            return keys[order], values[order]

        self.pulls += 1
        req = self._submit(Op.PULL_RANGE, parts, f"range pull from table {self.name!r}", keymap, deps=deps,
                           consistency=consistency, tau=tau, clock=clock, on_part=on_part, combine=combine,
                           timeout=timeout, filters=filters, reroute=reroute)
        if not block:
            return req
        return self._wait_pull(req, timeout, consistency, tau, clock, list(parts))

    def _range_parts(self, keymap: KeyMap, ranges: list[tuple[int, int]],
                     body: dict[str, Any] | None = None) -> dict[int, Message]:
        """One range pull per master of ``ranges``, naming exactly the sub-ranges it masters."""
        mine: dict[int, list[tuple[int, int]]] = {}
        for lo, hi in ranges:
            for server, owned in keymap.slice_range(lo, hi).items():
                mine.setdefault(server, []).extend((r.lo, r.hi) for r in owned)
        parts = {}
        for server, pieces in mine.items():
            pieces.sort()
            b = {k: v for k, v in (body or {}).items() if k != "ranges"}
            b["ranges"] = ranges_to_wire(pieces)
            parts[server] = Message(Op.PULL_RANGE, table=self.id, key_range=(pieces[0][0], pieces[-1][1]), body=b)
        return parts

    def tick(self, completed: int, *, wait: bool = False) -> Request:
        """Tell every server that this worker finished iteration ``completed`` (a clock tick)."""
        self._refuse_writes("send a clock tick")
        keymap = self._session.keymap()
        parts = {server: Message(Op.CLOCK, table=self.id) for server in keymap.servers()
                 if keymap.ranges_of(server)}
        req = self._submit(Op.CLOCK, parts, f"clock tick {completed} of table {self.name!r}", keymap,
                           deps=None, consistency=None, tau=None, clock=completed, filters=[],
                           reroute=self._reroute_tick)
        if wait:
            req.wait()
        return req

    def advance(self, completed: int) -> Request:
        """Iteration ``completed`` ended: let the push filters start the next one, send the tick."""
        with self._lock:
            for f in self._push_filters:
                f.advance()
        return self.tick(completed)

    def in_flight(self) -> list[Request]:
        """This worker's unfinished requests on the table, in the order they were issued."""
        return self._inflight.pending()

    def wait(self, ts: int, timeout: float | None = None) -> None:
        """Wait for the request with timestamp ``ts`` (as returned in ``Request.ts``)."""
        req = self._session.node.pending_request(ts)
        if req is not None:
            req.wait(timeout)
