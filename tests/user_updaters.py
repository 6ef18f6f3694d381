"""User updaters imported by servers in the tests (by the import path "user_updaters:Name")."""

from __future__ import annotations

import numpy as np

from paramserver import Updater


class Fussy(Updater):
    """Sums like 'sum' but refuses negative updates, to test remote errors."""

    def apply(self, values, state, slots, update):  # type: ignore[no-untyped-def]
        if np.any(update < 0):
            raise ValueError(f"Fussy refuses {int((update < 0).sum())} negative values")
        values[slots] += update
