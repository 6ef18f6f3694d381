"""Dense parameters shared by every worker through a table (the MLP of a CTR model).

With one worker, dense layers can stay with a torch optimizer. With several, their copies
must agree: :class:`DenseParameters` keeps the parameters' offset from their common initial
values in a table (``ceil(n / width)`` rows of ``width`` values; row ``r`` is key
``spread(r)``, zeros at first), updated by the table's updater on the servers like the
embedding rows. ``pull()`` sets each parameter to its initial value plus the table's offset;
``push()`` sends the parameters' gradients (after ``backward``). Gradient updaters (sgd,
adagrad, adam) are the same on an offset as on the value, so the parameters follow exactly
the optimizer's steps. Every worker must build its dense layers with the same initial values
(the same ``torch.manual_seed`` before building them).

Not thread-safe: call it from the training thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from .._errors import InvalidArgument
from ..clock import Request
from ..placement import spread
from ..table import Updater
from ..worker import Worker
from ._embedding import resolve_worker

__all__ = ["DenseParameters"]


class DenseParameters:
    """The parameters ``params`` of this worker, kept in the table ``table`` (see module)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], table: str, *, worker: Worker | None = None,
                 optimizer: str | Updater = "sgd", width: int = 1024, **table_args: Any) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise InvalidArgument("DenseParameters needs at least one parameter that requires grad")
        if any(p.dtype != torch.float32 for p in self.params):
            raise InvalidArgument("DenseParameters holds float32 parameters only")
        w = resolve_worker(worker)
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.width = min(width, self.n)
        self.rows = -(-self.n // self.width)
        self.keys = spread(np.arange(self.rows, dtype=np.uint64))
        self.table = w.table(table, width=self.width, dtype="float32", updater=optimizer, init="zeros", **table_args)
        self.start = self._flat([p.detach() for p in self.params])
        self._inflight: Request | None = None

    def _flat(self, tensors: list[torch.Tensor]) -> np.ndarray:
        out = np.zeros(self.rows * self.width, dtype=np.float32)
        out[:self.n] = torch.cat([t.reshape(-1) for t in tensors]).numpy()
        return out.reshape(self.rows, self.width)

    def pull(self) -> None:
        """Set every parameter to its initial value plus the table's offset (waits for this
        worker's last push first: read-your-writes)."""
        offset = self.table.pull(self.keys)
        flat = (self.start + offset).reshape(-1)[:self.n]
        with torch.no_grad():
            pos = 0
            for p, size in zip(self.params, self.sizes, strict=True):
                p.copy_(torch.from_numpy(flat[pos:pos + size]).view_as(p))
                pos += size

    def push(self) -> Request:
        """Push the parameters' gradients (zeros where a parameter has none)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        req: Request = self.table.push(self.keys, self._flat(grads))
        self._inflight = req
        return req

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the last push is applied."""
        if self._inflight is not None:
            self._inflight.wait(timeout)
