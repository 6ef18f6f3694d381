"""PyTorch embedding tables on the parameter server (the extra ``paramserver[torch]``).

:class:`Embedding` and :class:`EmbeddingBag` are ``nn.Module``s whose rows live in a table
on the servers: a forward pass pulls the rows of the batch's distinct ids, the backward pass
pushes their gradients, and the table's updater applies them on the servers.
:class:`Prefetcher` pulls the rows of the next batch while the current one computes;
:class:`DenseParameters` shares dense layers between workers through a table.
:func:`export_table` writes a table (or the rows changed since an iteration) to files that
torch, safetensors and numpy read. See docs/torch.md.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    from .._errors import ConfigError

    raise ConfigError("paramserver.torch needs PyTorch: pip install 'paramserver[torch]' "
                      "(or `make venv`, which installs the CPU build)") from exc

from ._dense import DenseParameters
from ._embedding import Embedding, EmbeddingBag, PulledRows, TableGradients, ids_to_keys
from ._export import export_table
from ._prefetch import Prefetcher

__all__ = ["DenseParameters", "Embedding", "EmbeddingBag", "Prefetcher", "PulledRows", "TableGradients",
           "export_table", "ids_to_keys"]
