"""MovieLens-100k ratings, as shipped in the ``recbole 1.2.1`` wheel.

The file ``recbole/dataset_example/ml-100k/ml-100k.inter`` is a tab-separated table with
the header ``user_id:token item_id:token rating:float timestamp:float`` and 100,000 rows:
943 users (ids 1..943) rate 1,682 movies (ids 1..1682) from 1 to 5 stars. It is fetched
once into the cache. A common click-through proxy is ``rating >= 4`` (55.4% positive).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .._errors import ConfigError
from ._fetch import fetch_file

__all__ = ["Ratings", "movielens_100k"]

_PACKAGE = "recbole"
_VERSION = "1.2.1"
_PATH = "recbole/dataset_example/ml-100k/ml-100k.inter"
_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]


class Ratings(NamedTuple):
    """One rating per position: ``user[i]`` gave ``item[i]`` the ``rating[i]`` at ``timestamp[i]``.

    ``user`` and ``item`` are the data set's own ids (int64, starting at 1), ``rating``
    float64 stars, ``timestamp`` int64 seconds since the Unix epoch. Rows are in file order.
    """

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    rating: npt.NDArray[np.float64]
    timestamp: npt.NDArray[np.int64]


def movielens_100k() -> Ratings:
    """The 100,000 ratings of MovieLens-100k (943 users, 1,682 items).

    Returns
    -------
    Ratings
        ``(user, item, rating, timestamp)`` arrays of length 100,000.

    Raises
    ------
    ConfigError
        The wheel could not be fetched, or the cached file is malformed (delete it).
    """
    path = fetch_file(_PACKAGE, _VERSION, _PATH)
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        if header != _HEADER:
            raise ConfigError(f"{path}: unexpected header {header!r}; delete the file")
        try:
            table = np.loadtxt(fh, delimiter="\t", dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise ConfigError(f"{path} is malformed ({exc}); delete it to fetch it again") from exc
    if table.shape[1] != len(_HEADER):
        raise ConfigError(f"{path}: expected {len(_HEADER)} columns, got {table.shape[1]}")
    return Ratings(
        user=table[:, 0].astype(np.int64),
        item=table[:, 1].astype(np.int64),
        rating=table[:, 2].copy(),
        timestamp=table[:, 3].astype(np.int64),
    )
