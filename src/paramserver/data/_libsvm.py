"""Reading and writing sparse data sets in the libsvm / svmlight text format.

One example per line::

    <label> <index>:<value> <index>:<value> ...

Feature indices are **1-based** in the file (as in libsvm, liblinear and news20.binary) and
0-based in the returned matrix: ``1:0.5`` is column 0. Blank lines and ``#`` comments are
skipped; ``qid:`` fields are not supported. Labels ``-1``/``+1`` and ``0``/``1`` are
mapped to int8 ``0``/``1``; pass ``binary=False`` for any other (float) labels.

Parsing is vectorised: one regular-expression check per line (in C), then all indices and
values of the file are converted by numpy at once. Only when that fails is the file read
again line by line to name the first malformed line.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .._errors import InvalidArgument
from ._fetch import atomic_writer

__all__ = ["load_libsvm", "save_libsvm"]

# The features of one line: index:value pairs separated by whitespace.
_FEATURES_RE = re.compile(r"(?:[0-9]+:[^\s:#]+(?:\s+|\Z))*")
_ROWS_PER_WRITE = 4096


def _split_lines(text: str) -> tuple[list[int], list[str], list[str]]:
    """Line numbers, labels and feature parts of the non-blank lines (comments removed)."""
    linenos: list[int] = []
    labels: list[str] = []
    rests: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        hash_at = line.find("#")
        if hash_at >= 0:
            line = line[:hash_at]
        parts = line.split(None, 1)
        if not parts:
            continue
        linenos.append(lineno)
        labels.append(parts[0])
        rests.append(parts[1] if len(parts) > 1 else "")
    return linenos, labels, rests


def _bad_line(path: object, lineno: int, line: str, why: str) -> InvalidArgument:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return InvalidArgument(f"{path}, line {lineno}: {why}: {shown!r}")


def _check_lines(path: object, linenos: list[int], labels: list[str], rests: list[str]) -> None:
    """Slow path: raise InvalidArgument naming the first line that does not parse."""
    for lineno, label, rest in zip(linenos, labels, rests, strict=True):
        line = f"{label} {rest}"
        try:
            float(label)
        except ValueError:
            raise _bad_line(path, lineno, line, "the label is not a number") from None
        if not _FEATURES_RE.fullmatch(rest):
            raise _bad_line(path, lineno, line, "expected index:value pairs")
        for pair in rest.split():
            value = pair.partition(":")[2]
            try:
                float(value)
            except ValueError:
                raise _bad_line(path, lineno, line, f"value {value!r} is not a number") from None


def load_libsvm(
    path: str | os.PathLike[str], n_features: int | None = None, *, binary: bool = True
) -> tuple[sp.csr_matrix, npt.NDArray[Any]]:
    """Read a libsvm-format file.

    Parameters
    ----------
    path:
        The file (UTF-8 text). Feature indices in it are 1-based.
    n_features:
        Number of columns of the result; default the largest index in the file.
    binary:
        Map labels ``-1``/``+1`` or ``0``/``1`` to int8 ``0``/``1`` (default). With False,
        the labels are returned as float64, unchanged.

    Returns
    -------
    X : scipy.sparse.csr_matrix of float64, shape (n_examples, n_features)
        Column ``j`` holds the file's feature ``j + 1``; indices sorted, duplicates summed.
    y : numpy.ndarray, shape (n_examples,)
        int8 0/1 labels, or float64 labels with ``binary=False``.

    Raises
    ------
    InvalidArgument
        A line is malformed, has an index below 1 or above ``n_features`` (the message
        names the line), or ``binary`` is set and the labels are not two-valued as above.
    """
    if n_features is not None and n_features < 0:
        raise InvalidArgument(f"n_features must be >= 0, not {n_features}")
    text = pathlib.Path(path).read_text(encoding="utf-8")
    linenos, labels, rests = _split_lines(text)
    try:
        if not all(_FEATURES_RE.fullmatch(rest) for rest in rests):
            raise ValueError("malformed features")
        y = np.array(labels, dtype=np.float64)
        numbers = " ".join(rests).replace(":", " ").split()
        index = np.array(numbers[0::2], dtype=np.int64)
        values = np.array(numbers[1::2], dtype=np.float64)
    except (ValueError, OverflowError):
        _check_lines(path, linenos, labels, rests)
        raise  # pragma: no cover - the slow path always finds the culprit
    indptr = np.zeros(len(rests) + 1, dtype=np.int64)
    np.cumsum([rest.count(":") for rest in rests], out=indptr[1:])

    limit = n_features if n_features is not None else max(int(index.max(initial=0)), 0)
    bad = np.flatnonzero((index < 1) | (index > limit))
    if len(bad):
        row = int(np.searchsorted(indptr, bad[0], side="right")) - 1
        why = f"feature index {index[bad[0]]} is outside 1..{limit} (indices are 1-based)"
        raise _bad_line(path, linenos[row], f"{labels[row]} {rests[row]}", why)

    idx_dtype = np.int32 if limit < 2**31 and len(index) < 2**31 else np.int64
    X = sp.csr_matrix(
        (values, (index - 1).astype(idx_dtype), indptr.astype(idx_dtype)),
        shape=(len(rests), limit),
    )
    X.sum_duplicates()
    if not binary:
        return X, y
    seen = set(np.unique(y).tolist())
    if seen <= {0.0, 1.0}:
        return X, y.astype(np.int8)
    if seen <= {-1.0, 1.0}:
        return X, (y > 0).astype(np.int8)
    shown = sorted(seen)[:5]
    raise InvalidArgument(f"{path}: labels {shown} are not binary (-1/+1 or 0/1); pass binary=False to keep them")


def _as_text(values: npt.NDArray[Any]) -> npt.NDArray[np.str_]:
    """Numbers as their shortest exact text; integral values without a decimal point."""
    values = np.asarray(values, dtype=np.float64)
    integral = np.all(np.isfinite(values)) and np.all(values == np.trunc(values))
    if integral and np.all(np.abs(values) < 2**53):
        return values.astype(np.int64).astype(str)
    return values.astype(str)  # numpy prints the shortest repr that reads back exactly


def save_libsvm(path: str | os.PathLike[str], X: Any, y: npt.ArrayLike) -> None:
    """Write ``X`` and ``y`` in libsvm format (1-based feature indices), atomically.

    Parameters
    ----------
    path:
        Destination; written to a temporary file first, then renamed.
    X:
        A scipy sparse matrix or 2-D array of shape ``(n_examples, n_features)``; stored
        zeros are not written.
    y:
        Labels, shape ``(n_examples,)``, written as given (integers without a decimal
        point). :func:`load_libsvm` reads the values back exactly.

    Raises
    ------
    InvalidArgument
        ``X`` is not 2-D, or ``y`` does not have one label per row.
    """
    X = sp.csr_matrix(X, dtype=np.float64)  # copies: the caller's matrix is not changed
    labels = np.asarray(y)
    if labels.ndim != 1 or len(labels) != X.shape[0]:
        raise InvalidArgument(f"y has shape {np.shape(y)}, expected ({X.shape[0]},)")
    X.eliminate_zeros()
    X.sort_indices()
    label_text = _as_text(labels).tolist()
    pairs = np.char.add(np.char.add((X.indices + 1).astype(str), ":"), _as_text(X.data))
    pair_text = pairs.tolist()
    indptr = X.indptr.tolist()
    with atomic_writer(pathlib.Path(path)) as fh:
        for start in range(0, X.shape[0], _ROWS_PER_WRITE):
            stop = min(start + _ROWS_PER_WRITE, X.shape[0])
            lines = [" ".join([label_text[r], *pair_text[indptr[r] : indptr[r + 1]]]) for r in range(start, stop)]
            fh.write(("\n".join(lines) + "\n").encode("utf-8"))
