"""Data shards, worker side: iterate over the shards the scheduler hands to this worker.

``for shard in w.shards("train", files): process(shard.data)`` asks the scheduler
(``Op.TASK``) for one shard at a time. The rule for completion: **a shard is done when the
loop asks for the next one** (the body of the loop finished without an exception). Before
reporting it, the iterator waits for every request of this worker still in flight
(:meth:`Worker.wait_all`), so a shard counts as done only once its pushes were applied.
Leaving the loop early (``break``, an exception, closing the iterator) gives the shard
held back unfinished: another worker (or a later loop) processes it.

When every remaining shard is being processed by other workers, the iterator waits and
asks again, with growing pauses, until either they finish (the loop ends) or one of them
dies (its shard comes to a waiting worker). The loop ends when every shard of the set is
done, by whichever workers.

See docs/shards.md. Scheduler side: ``scheduler/_shards.py``.

Thread-safety: each iterator belongs to the thread that runs it; several threads of one
worker may iterate over the same set at once (each holds its own shard).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidArgument, ProtocolError, PSError
from ..protocol import get

__all__ = ["Shard", "iterate_shards", "row_shards"]

log = logging.getLogger("paramserver.worker")

#: Pauses between two asks while every remaining shard is held by another worker.
FIRST_PAUSE = 0.02
LONGEST_PAUSE = 0.5


@dataclass(frozen=True)
class Shard:
    """One shard handed to this worker.

    Attributes
    ----------
    set:
        The name of the shard set.
    index:
        Position of the shard in the declared list.
    epoch:
        Which pass over the list this is (0-based).
    task:
        ``epoch * len(shards) + index``: the number the scheduler knows the task by.
    data:
        The shard's description, as declared (``shards[index]``): a file path, a
        ``[start, stop]`` row range...
    """

    set: str
    index: int
    epoch: int
    task: int
    data: Any


def row_shards(n_rows: int, n_shards: int) -> list[list[int]]:
    """Split rows ``0..n_rows`` into ``n_shards`` contiguous ``[start, stop)`` ranges.

    Sizes differ by at most one (the first ``n_rows % n_shards`` ranges are one longer),
    as ``numpy.array_split`` does; a range may be empty if ``n_shards > n_rows``.

    >>> row_shards(10, 3)
    [[0, 4], [4, 7], [7, 10]]
    """
    for name, v in (("n_rows", n_rows), ("n_shards", n_shards)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgument(f"{name} must be an int, got {v!r}")
    if n_rows < 0 or n_shards < 1:
        raise InvalidArgument(f"need n_rows >= 0 and n_shards >= 1, got {n_rows} and {n_shards}")
    size, extra = divmod(n_rows, n_shards)
    out, start = [], 0
    for i in range(n_shards):
        stop = start + size + (1 if i < extra else 0)
        out.append([start, stop])
        start = stop
    return out


def _wire(value: Any, where: str) -> Any:
    """``value`` as msgpack sends it (tuples become lists), or InvalidArgument naming it."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_wire(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InvalidArgument(f"{where}: a shard description's dict keys must be str")
        return {k: _wire(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise InvalidArgument(f"{where} is a {type(value).__name__}: shard descriptions must be str, numbers, "
                          f"lists or dicts of them (use str() for paths)")


def iterate_shards(
    call: Callable[[dict[str, Any]], dict[str, Any]],
    flush: Callable[[], None],
    name: str,
    shards: Sequence[Any],
    *,
    epochs: int = 1,
    on_done: Callable[[Shard], None] | None = None,
) -> Iterator[Shard]:
    """The iterator behind :meth:`Worker.shards` (see the module docstring).

    Parameters
    ----------
    call:
        Sends one TASK request body to the scheduler and returns the reply body.
    flush:
        Waits until this worker's requests in flight are done (before a shard is reported).
    on_done:
        Called with each shard this worker finished, once the scheduler has it.

    Raises
    ------
    InvalidArgument
        Bad arguments (raised here, before anything is sent), or the set was declared
        with another list of shards or number of epochs (raised by the first ``next``).
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"a shard set needs a non-empty str name, got {name!r}")
    if isinstance(shards, (str, bytes)) or not isinstance(shards, Sequence):
        raise InvalidArgument(f"shards must be a list of shard descriptions, got {type(shards).__name__}")
    if not shards:
        raise InvalidArgument(f"shard set {name!r}: the list of shards is empty")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgument(f"epochs must be an int >= 1, got {epochs!r}")
    wire = [_wire(s, f"shards[{i}]") for i, s in enumerate(shards)]
    return _run(call, flush, name, list(shards), wire, epochs, on_done)


def _run(call: Callable[[dict[str, Any]], dict[str, Any]], flush: Callable[[], None], name: str,
         shards: list[Any], wire: list[Any], epochs: int, on_done: Callable[[Shard], None] | None) -> Iterator[Shard]:
    body: dict[str, Any] = {"set": name, "shards": wire, "epochs": epochs, "done": None}
    held: Shard | None = None
    pause = FIRST_PAUSE
    try:
        while True:
            reply = call(body)
            if held is not None:  # the scheduler has the report
                if on_done is not None:
                    on_done(held)
                held = None
            state = get(reply, "state", str)
            if state == "finished":
                return
            if state == "wait":
                time.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
                body = {"set": name, "done": None}
                continue
            if state != "task":
                raise ProtocolError(f"shard set {name!r}: unexpected answer {state!r} from the scheduler")
            pause = FIRST_PAUSE
            index = get(reply, "shard", int)
            held = Shard(name, index, get(reply, "epoch", int), get(reply, "task", int), shards[index])
            yield held
            flush()  # the shard's pushes are applied before it counts as done
            body = {"set": name, "done": held.task}
    finally:
        if held is not None:  # left the loop early: give the shard back unfinished
            try:
                call({"set": name, "done": held.task, "release": True})
            except PSError as exc:
                log.debug("shard set %r: could not give back task %d: %s", name, held.task, exc)
