"""``Embedding`` and ``EmbeddingBag``: PyTorch modules whose weight rows live in a table.

The rows of an embedding are the rows of a paramserver table of width ``embedding_dim``,
keyed by ``spread(id)`` (so consecutive ids fall on every server alike). A forward pass
pulls only the distinct ids of its batch, as one ``(U, dim)`` block; the autograd function
:class:`PulledRows` makes that block a node of the graph, and its backward receives the
gradient of exactly those ``U`` rows, already summed per distinct id by torch's own
embedding backward. :class:`TableGradients` sums the gradients of every lookup of a table
in one backward pass (several modules may share a table) and pushes them once. The table's updater on the servers (``sgd``,
``adagrad``, ``adam``, ``ftrl``, ...) applies it: no dense gradient, no optimizer state and
no row outside the current batch ever exists on the worker. Dense parameters (an MLP on
top) stay with a normal torch optimizer.

Ids are any non-negative integers (int64 tensors, raw or hashed); there is no vocabulary
size. Bad input (float or bool ids, negative ids, wrong shapes or offsets, per-sample
weights outside ``mode="sum"``) raises :class:`~paramserver.InvalidArgument` or
:class:`~paramserver.DTypeError` before anything is sent.

Pushes are asynchronous: ``backward`` returns once the push is sent (at most 64 are in
flight per table). The worker's
read-your-writes guarantee makes the next pull of this worker see it; :meth:`flush` waits
for every push sent. Thread-safety: one module is used by one training thread at a time
(like any nn.Module); the table under it may be shared.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._errors import DTypeError, InvalidArgument
from ..clock import Request
from ..placement import spread
from ..table import Initializer, Normal, Updater
from ..worker import Table, Worker, open_workers

__all__ = ["Embedding", "EmbeddingBag", "PulledRows", "TableGradients", "ids_to_keys", "resolve_worker"]

_FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def ids_to_keys(ids: torch.Tensor) -> np.ndarray:
    """The table keys (uint64, same order) of an integer id tensor, checked.

    Raises
    ------
    DTypeError
        Float, complex or bool ids.
    InvalidArgument
        Negative ids, or a tensor that is not on the CPU.
    """
    if not isinstance(ids, torch.Tensor):
        raise DTypeError(f"ids must be a torch integer tensor, got {type(ids).__name__}")
    if ids.dtype not in _INT_DTYPES:
        raise DTypeError(f"ids must be an integer tensor (torch.int64), got {ids.dtype}; "
                         f"convert with .long() if the values are whole numbers")
    if ids.device.type != "cpu":
        raise InvalidArgument(f"ids must be on the CPU, got a tensor on {ids.device}; move it with .cpu()")
    a = ids.detach().contiguous().numpy()  # no copy for a contiguous CPU tensor
    if a.size and a.dtype.kind == "i" and int(a.min()) < 0:
        raise InvalidArgument(f"ids must be non-negative, got {int(a.min())}; hash or offset them into [0, 2**63)")
    return spread(a.reshape(-1))


@dataclass
class _Prefetched:
    """A pull sent ahead of its forward pass: the distinct keys (sorted), the pull in flight,
    and the pulls sent after each later push of some of these keys (positions in ``keys``)."""

    keys: np.ndarray
    request: Request
    refresh: list[tuple[np.ndarray, Request]] = field(default_factory=list)


@dataclass
class _Stats:
    pulls: int = 0
    rows_pulled: int = 0
    pushes: int = 0
    rows_pushed: int = 0
    prefetch_hits: int = 0
    rows_refreshed: int = 0


class TableGradients:
    """The gradients of one table's rows in the backward pass, pushed as one update.

    Every lookup of the table in a forward pass with autograd on (by any module over the
    table) registers; its backward adds the gradient of its rows. When the last registered
    lookup has reported, the gradients are summed per key and pushed once: so a table used by
    several modules (an Embedding and EmbeddingBags over it) gets one optimizer step per
    backward pass, as one torch parameter would, not one per module (which is not the same
    for non-linear updaters such as adagrad). :meth:`flush` pushes what is held even if
    some lookups never got a backward pass (their part of the graph was not used).

    Thread-safe (a lock guards everything); one instance per table, shared by its modules.
    """

    _all: ClassVar[weakref.WeakKeyDictionary[Table, TableGradients]] = weakref.WeakKeyDictionary()
    _all_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def of(cls, table: Table) -> TableGradients:
        with cls._all_lock:
            g = cls._all.get(table)
            if g is None:
                g = cls._all[table] = cls(table)
            return g

    def __init__(self, table: Table) -> None:
        self.table = table
        self.stats = _Stats()
        self.lock = threading.Lock()
        self._waiting = 0  # lookups registered whose backward has not reported
        self._held: list[tuple[np.ndarray, np.ndarray]] = []
        self._inflight: deque[Request] = deque()
        #: Prefetched pulls not used yet, of every module over the table.
        self.waiting: list[_Prefetched] = []

    def register(self) -> None:
        with self.lock:
            self._waiting += 1

    def add(self, keys: np.ndarray, grad: np.ndarray) -> None:
        """A registered lookup's backward: its rows' gradient; push once all reported."""
        with self.lock:
            self._held.append((keys, grad))
            self._waiting = max(self._waiting - 1, 0)
            if self._waiting == 0:
                self._push_held()

    def _push_held(self) -> None:
        """Push the held gradients as one update (under the lock)."""
        held, self._held = self._held, []
        if not held:
            return
        if len(held) == 1:
            keys, values = held[0]
        else:  # the table's push sorts the keys and sums the rows of equal ones (vectorised)
            keys = np.concatenate([k for k, _ in held])
            values = np.concatenate([v for _, v in held])
        req = self.table.push(keys, values)
        s = self.stats
        pushed = np.unique(keys) if len(held) > 1 else keys  # (one lookup's keys are distinct and sorted)
        s.pushes += 1
        s.rows_pushed += len(pushed)
        for p in self.waiting:  # rows a prefetch read before this push: read them again, sent now
            stale = np.intersect1d(p.keys, pushed, assume_unique=True)
            if len(stale):
                p.refresh.append((np.searchsorted(p.keys, stale), self.table.pull(stale, block=False)))
                s.rows_refreshed += len(stale)
        self._inflight.append(req)
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()  # re-raises a failed push here
        if len(self._inflight) > 64:  # backpressure: never more than 64 pushes in flight
            self._inflight.popleft().wait()

    def flush(self, timeout: float | None = None) -> None:
        """Push what is held, then wait until every push is applied (re-raises a failed one)."""
        with self.lock:
            self._waiting = 0
            self._push_held()
        while True:
            with self.lock:
                if not self._inflight:
                    return
                req = self._inflight.popleft()
            req.wait(timeout)


class PulledRows(torch.autograd.Function):
    """Autograd node of a pulled block of rows: forward returns the block, backward hands
    the gradient of its rows (one row per distinct id, summed) to the table's
    :class:`TableGradients`, which pushes it."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, rows: torch.Tensor, grads: TableGradients,
                keys: np.ndarray) -> torch.Tensor:
        ctx.grads = grads
        ctx.keys = keys
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, None]:
        grads: TableGradients = ctx.grads
        g = grad.detach()
        if g.dtype != _FLOAT_DTYPES[grads.table.dtype.name]:
            g = g.to(_FLOAT_DTYPES[grads.table.dtype.name])
        grads.add(ctx.keys, np.ascontiguousarray(g.numpy()))
        return None, None, None, None


def resolve_worker(worker: Worker | None) -> Worker:
    """``worker``, or this process's only open worker."""
    if worker is not None:
        return worker
    live = open_workers()
    if len(live) != 1:
        raise InvalidArgument(f"give worker= (this process has {len(live)} open workers, not exactly one)")
    return live[0]


class _TableRows(nn.Module):
    """What Embedding and EmbeddingBag share: the table, the pull and the push of rows."""

    def __init__(self, embedding_dim: int, table: str | Table, *, worker: Worker | None = None,
                 optimizer: str | Updater | None = None, init: str | Initializer | None = None,
                 dtype: str = "float32", **table_args: Any) -> None:
        super().__init__()
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise InvalidArgument(f"embedding_dim must be an int >= 1, got {embedding_dim!r}")
        if isinstance(table, Table):
            if optimizer is not None or init is not None or table_args:
                raise InvalidArgument(f"table {table.name!r} is already declared: its spec fixes the updater and "
                                      f"init; give optimizer=/init= only with a table name")
            t = table
        elif isinstance(table, str):
            if dtype not in _FLOAT_DTYPES:
                raise DTypeError(f"embedding tables hold float32 or float64, not {dtype!r}")
            t = resolve_worker(worker).table(
                table, width=embedding_dim, dtype=dtype, updater=optimizer if optimizer is not None else "sgd",
                init=init if init is not None else Normal(std=1.0), **table_args)
        else:
            raise InvalidArgument(f"table must be a table name or a paramserver Table, got {type(table).__name__}")
        if t.width != embedding_dim:
            raise InvalidArgument(f"table {t.name!r} has width {t.width}, not embedding_dim={embedding_dim}")
        if t.dtype.name not in _FLOAT_DTYPES:
            raise DTypeError(f"table {t.name!r} holds {t.dtype}; an embedding needs float32 or float64")
        self.embedding_dim = embedding_dim
        self.table = t
        self.torch_dtype = _FLOAT_DTYPES[t.dtype.name]
        self.grads = TableGradients.of(t)
        self._prefetched: deque[_Prefetched] = deque()

    # ---------------------------------------------------------------- statistics
    @property
    def stats(self) -> dict[str, int]:
        """Of the table (every module over it): pulls, pushes, rows pulled and pushed,
        prefetched pulls used, rows pulled again after a push (see :meth:`prefetch`)."""
        s = self.grads.stats
        return {"pulls": s.pulls, "rows_pulled": s.rows_pulled, "pushes": s.pushes, "rows_pushed": s.rows_pushed,
                "prefetch_hits": s.prefetch_hits, "rows_refreshed": s.rows_refreshed}

    # ---------------------------------------------------------------- pull
    def prefetch(self, ids: torch.Tensor) -> None:
        """Start pulling the rows of ``ids`` now, for a forward pass on the same ids later.

        The next forward pass whose distinct ids equal these uses the pulled rows instead of
        pulling. When a push of the table touches some of these rows before then, those rows
        (only those) are pulled again right after the push is sent, so the block is what a
        pull at forward time reads under the table's consistency model (this worker reads
        its own writes), and the second pull travels while the step goes on.
        Checks ``ids`` as forward does."""
        keys = np.unique(ids_to_keys(ids))
        g = self.grads
        with g.lock:
            req = self.table.pull(keys, block=False)
            p = _Prefetched(keys, req)
            self._prefetched.append(p)
            g.waiting.append(p)
            g.stats.pulls += 1
            g.stats.rows_pulled += len(keys)

    def _rows(self, keys: np.ndarray) -> np.ndarray:
        """The values of distinct sorted ``keys``: prefetched if a prefetch matches, else pulled."""
        g = self.grads
        with g.lock:
            hit = None
            while self._prefetched:
                p = self._prefetched.popleft()
                g.waiting.remove(p)
                if len(p.keys) == len(keys) and np.array_equal(p.keys, keys):
                    hit = p
                    break
            if hit is None:
                g.stats.pulls += 1
                g.stats.rows_pulled += len(keys)
            else:
                g.stats.prefetch_hits += 1
        if hit is None:
            rows: np.ndarray = self.table.pull(keys)
            return rows
        rows = hit.request.result()
        for pos, req in hit.refresh:  # in push order: a later read of a row overrides an earlier one
            rows[pos] = req.result()
        return rows

    def pull_block(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the distinct ids of ``ids`` as a graph node, and each id's row index
        (same shape as ``ids``)."""
        keys = ids_to_keys(ids)
        uniq, inverse = np.unique(keys, return_inverse=True)
        values = self._rows(uniq)
        rows = torch.from_numpy(values)  # no copy: the pulled array becomes the tensor
        anchor = torch.empty(0, requires_grad=torch.is_grad_enabled() and self.training)
        if anchor.requires_grad:
            self.grads.register()
        block = PulledRows.apply(anchor, rows, self.grads, uniq) if anchor.requires_grad else rows  # type: ignore[no-untyped-call]
        index = torch.from_numpy(inverse.reshape(ids.shape).astype(np.int64, copy=False))
        return block, index

    # ---------------------------------------------------------------- push
    def flush(self, timeout: float | None = None) -> None:
        """Push the gradients held for the table (see :class:`TableGradients`) and wait
        until every push is applied; re-raises a failed push."""
        self.grads.flush(timeout)

    def extra_repr(self) -> str:
        return f"{self.embedding_dim}, table={self.table.name!r} ({self.table.spec.describe()})"


class Embedding(_TableRows):
    """Like ``torch.nn.Embedding``, with its rows in the table ``table``.

    Parameters
    ----------
    embedding_dim:
        Values per row (the table's width).
    table:
        A table name (declared here: width ``embedding_dim``, updater ``optimizer``, initial
        values ``init``) or a :class:`paramserver.Table` already declared with that width.
    worker:
        The worker that declares the table (default: this process's only open worker).
    optimizer:
        The server-side updater of the rows: ``"sgd"`` (default), ``paramserver.SGD(lr=...)``,
        ``paramserver.AdaGrad(...)``, ``paramserver.Adam(...)``, ``paramserver.FTRL(...)``...
    init:
        Initial values of rows never pushed (default ``paramserver.Normal(std=1.0)``, as
        ``nn.Embedding``), deterministic per id: every worker and server agrees on them.
    dtype:
        ``"float32"`` (default) or ``"float64"``.
    table_args:
        Further arguments of :meth:`Worker.table` (``consistency=``, ``tau=``, ``filters=``...).

    ``forward(ids)`` takes an integer tensor of any shape and returns ``ids.shape + (dim,)``.
    """

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        block, index = self.pull_block(ids)
        return F.embedding(index, block)


class EmbeddingBag(_TableRows):
    """Like ``torch.nn.EmbeddingBag``: sums, means or maxima of bags of rows of ``table``.

    ``mode`` is ``"sum"``, ``"mean"`` (default, as torch) or ``"max"``. ``forward(ids,
    offsets=None, per_sample_weights=None)`` takes ``ids`` of shape ``(B, L)`` (B bags of L
    ids) or 1-D ids with ``offsets`` (the start of each bag, as torch), and returns
    ``(B, dim)``. ``per_sample_weights`` (same shape as ``ids``, floating) scales each
    row before the sum; only with ``mode="sum"``. Other parameters as :class:`Embedding`.
    """

    def __init__(self, embedding_dim: int, table: str | Table, *, mode: str = "mean", **kwargs: Any) -> None:
        if mode not in ("sum", "mean", "max"):
            raise InvalidArgument(f"mode must be 'sum', 'mean' or 'max', got {mode!r}")
        super().__init__(embedding_dim, table, **kwargs)
        self.mode = mode

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        self._check_bags(ids, offsets, per_sample_weights)
        block, index = self.pull_block(ids)
        if per_sample_weights is not None and per_sample_weights.dtype != block.dtype:
            per_sample_weights = per_sample_weights.to(block.dtype)
        return F.embedding_bag(index, block, offsets, mode=self.mode, per_sample_weights=per_sample_weights)

    def _check_bags(self, ids: torch.Tensor, offsets: torch.Tensor | None,
                    per_sample_weights: torch.Tensor | None) -> None:
        """Every check torch would make after the pull, made before it."""
        if not isinstance(ids, torch.Tensor):
            raise DTypeError(f"ids must be a torch integer tensor, got {type(ids).__name__}")
        if ids.dim() == 2:
            if offsets is not None:
                raise InvalidArgument("offsets must be None when ids is 2-D (each row is a bag)")
        elif ids.dim() == 1:
            if offsets is None:
                raise InvalidArgument("1-D ids need offsets (the start of each bag); or give ids of shape (B, L)")
            if not isinstance(offsets, torch.Tensor) or offsets.dtype not in _INT_DTYPES or offsets.dim() != 1:
                raise InvalidArgument("offsets must be a 1-D integer tensor")
            o = offsets.detach().numpy()
            if len(o) and (o[0] != 0 or np.any(np.diff(o) < 0) or o[-1] > len(ids)):
                raise InvalidArgument(f"offsets must start at 0, not decrease, and stay <= len(ids)={len(ids)}")
        else:
            raise InvalidArgument(f"ids must be 1-D (with offsets) or 2-D (B, L), got shape {tuple(ids.shape)}")
        if per_sample_weights is not None:
            if self.mode != "sum":
                raise InvalidArgument(f"per_sample_weights need mode='sum' (as in torch), not {self.mode!r}")
            if not isinstance(per_sample_weights, torch.Tensor) or not per_sample_weights.is_floating_point():
                raise DTypeError("per_sample_weights must be a floating-point tensor")
            if per_sample_weights.shape != ids.shape:
                raise InvalidArgument(f"per_sample_weights of shape {tuple(per_sample_weights.shape)} for ids of "
                                      f"shape {tuple(ids.shape)}; they must match")
