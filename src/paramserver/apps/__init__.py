"""Layer 8, applications: short programs on the public API, run by ``paramserver run APP``.

Each application is a module ``paramserver.apps.NAME`` with:

* ``add_arguments(parser)``: its options (the runner adds ``--servers``, ``--workers``);
* ``prepare(args)``: work done once before the job starts (fetching and caching data);
* ``worker(args) -> int``: the program every worker process runs (rank 0 reports).

``paramserver run NAME ...`` parses the options, calls ``prepare``, then launches a local
job whose workers run ``python -m paramserver.apps.NAME ...`` (see ``_runner.py``).
"""

from __future__ import annotations

from ._runner import parser_for, worker_main

__all__ = ["APPS", "parser_for", "worker_main"]

#: Application name -> module name, and a one-line description.
APPS: dict[str, tuple[str, str]] = {
    "ctr": ("paramserver.apps.ctr", "click-through DeepFM with PyTorch embedding tables (MovieLens-100k or synthetic)"),
    "lda": ("paramserver.apps.lda", "LDA topic model by collapsed Gibbs sampling"),
    "logreg": ("paramserver.apps.logreg", "sparse L1 logistic regression (delayed block proximal gradient)"),
    "sketch": ("paramserver.apps.sketch", "CountMin sketch of a word stream"),
}
