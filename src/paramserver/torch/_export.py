"""Export of an embedding table, whole or as a delta, to files serving code reads.

:func:`export_table` range-pulls every row of a table (or, with ``since=t``, only the rows
pushed after iteration ``t``: a delta, for a table that declares admission or eviction and
so keeps each row's last push iteration) and writes them as two arrays, ``ids`` (int64, the
ids the :class:`~paramserver.torch.Embedding` was called with, ascending) and ``weight``
(``(n, dim)``), in the format the file name's suffix says:

=================  =======================================  =========================================
suffix             write                                    read
=================  =======================================  =========================================
``.safetensors``   ``safetensors.numpy.save_file``          ``safetensors.torch.load_file`` or
                                                            ``safetensors.numpy.load_file``
``.pt``            ``torch.save`` (tensors only)            ``torch.load(path, weights_only=True)``
``.npz``           ``numpy.savez``                          ``numpy.load``
=================  =======================================  =========================================

A delta holds the rows that changed; rows evicted since are simply absent from the next full
export (a serving table applies deltas as upserts). Files are written to a temporary name
and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._errors import InvalidArgument
from ..placement import unspread
from ..worker import Table

__all__ = ["export_table"]

_SUFFIXES = (".safetensors", ".pt", ".npz")


def export_table(table: Table, path: str | os.PathLike[str], *, since: int | None = None,
                 spread_ids: bool = True, timeout: float | None = None) -> int:
    """Write the rows of ``table`` (those pushed after iteration ``since`` if given) to
    ``path``; return how many rows were written.

    ``spread_ids``: the table's keys are ``spread(id)`` (as Embedding keys them); write the
    ids. With False the raw uint64 keys are written (as int64 bit patterns).

    Raises
    ------
    InvalidArgument
        An unknown suffix; ``since`` for a table without admission or eviction.
    """
    p = Path(path)
    if p.suffix not in _SUFFIXES:
        raise InvalidArgument(f"export to {p.name!r}: the name must end in one of {', '.join(_SUFFIXES)}")
    keys, values = table.pull_range(since=since, timeout=timeout)
    ids = (unspread(keys) if spread_ids else keys).view(np.int64)
    order = np.argsort(ids, kind="stable")
    ids, weight = np.ascontiguousarray(ids[order]), np.ascontiguousarray(values[order])
    tmp = p.with_name(p.name + ".tmp")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".safetensors":
        from safetensors.numpy import save_file

        meta = {"table": table.name, "since": "" if since is None else str(since)}
        save_file({"ids": ids, "weight": weight}, str(tmp), metadata=meta)
    elif p.suffix == ".pt":
        with open(tmp, "wb") as fh:
            torch.save({"ids": torch.from_numpy(ids), "weight": torch.from_numpy(weight)}, fh)
    else:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, weight=weight)
    os.replace(tmp, p)
    return len(ids)
