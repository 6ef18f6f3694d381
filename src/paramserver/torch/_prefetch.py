"""Pipelining: pull the rows of batch ``i + 1`` while batch ``i`` computes.

:class:`Prefetcher` wraps any iterable of batches (a ``torch.utils.data.DataLoader``). When
the training loop takes batch ``i``, the wrapper has already taken batch ``i + 1`` from the
loader and called ``module.prefetch(ids)`` for it on every embedding module named by
``ids_of``; the pulls travel while batch ``i``'s forward, backward and pushes run. The
forward pass of batch ``i + 1`` then finds its rows there.

Consistency: a prefetched block is exactly what a pull at forward time would read from this
worker's point of view: the rows of the table pushed after the prefetch left (those that
batch ``i`` shares with batch ``i + 1``) are pulled again, only those, right after that push
is sent (the module's ``stats["rows_refreshed"]``), and those answers override the first. Pushes of other workers are seen as the table's
consistency model allows, as for any pull. So a single worker trains exactly as without
prefetching, only sooner.

Thread-safety: iterate a Prefetcher from one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import torch

from .._errors import InvalidArgument
from ._embedding import Embedding, EmbeddingBag

__all__ = ["Prefetcher"]

B = TypeVar("B")
IdsOf = Callable[[Any], Sequence[tuple[Embedding | EmbeddingBag, torch.Tensor]]]


class Prefetcher(Generic[B]):
    """Iterate ``loader``, prefetching each next batch's rows.

    Parameters
    ----------
    loader:
        Any iterable of batches; iterated once per ``iter(prefetcher)`` (so once per epoch).
    ids_of:
        ``ids_of(batch) -> [(module, ids), ...]``: which ids of a batch each embedding
        module will look up in its forward pass.
    depth:
        How many batches ahead to prefetch (default 1).
    """

    def __init__(self, loader: Iterable[B], ids_of: IdsOf, *, depth: int = 1) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InvalidArgument(f"depth must be an int >= 1, got {depth!r}")
        if not callable(ids_of):
            raise InvalidArgument("ids_of must be a function batch -> [(module, ids), ...]")
        self.loader = loader
        self.ids_of = ids_of
        self.depth = depth

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _start(self, batch: B) -> None:
        for module, ids in self.ids_of(batch):
            if not isinstance(module, (Embedding, EmbeddingBag)):
                raise InvalidArgument(f"ids_of named {type(module).__name__}; only paramserver.torch "
                                      f"Embedding and EmbeddingBag modules prefetch")
            module.prefetch(ids)

    def __iter__(self) -> Iterator[B]:
        ahead: list[B] = []
        it = iter(self.loader)
        for batch in it:
            self._start(batch)
            ahead.append(batch)
            if len(ahead) > self.depth:
                yield ahead.pop(0)
        while ahead:
            yield ahead.pop(0)
