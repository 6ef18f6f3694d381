"""A worker's side of checkpoints: asking every server for its ranges at a cut, writing
the manifest, and the periodic checkpoints of the worker of rank 0.

:func:`request_checkpoint` sends one CHECKPOINT message to every server that masters key
ranges. Each message carries the path, the cut iteration ``t`` and, per table, the last
sequence number this worker sent to that server (read-your-writes). Each server answers
once its ranges are written (see ``server/_checkpoint.py``); when all have, the manifest
is written last, on the thread that completed the request, so a checkpoint with a
``manifest.json`` is complete. An existing ``manifest.json`` at the path is removed first,
so an interrupted overwrite never looks complete.

Thread-safety: :class:`Periodic` is called from ``Worker.advance`` (under the worker's
clock lock) and from ``close``/``wait_all``; its state is guarded by its own lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .._config import Config
from .._errors import InvalidArgument, PSError
from ..checkpoint import MANIFEST, build_manifest, open_location, write_manifest
from ..clock import Request
from ..protocol import CheckpointReply, CheckpointRequest, Message, Op
from ._session import Session

__all__ = ["Periodic", "request_checkpoint"]

log = logging.getLogger("paramserver.worker")


def request_checkpoint(session: Session, path: str | os.PathLike[str], iteration: int,
                       timeout: float | None = None) -> Request:
    """Ask every server to write its master ranges at iteration ``iteration`` under ``path``;
    the request's result is the manifest (a dict), written once every server has answered."""
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < -1:
        raise InvalidArgument(f"iteration must be an int >= -1, got {iteration!r}")
    if iteration >= session.clock:
        raise InvalidArgument(
            f"iteration {iteration} is not finished by this worker (its clock is {session.clock}); a checkpoint's "
            f"iteration is one this worker has finished with advance(), at most clock - 1")
    loc = open_location(path)
    keymap = session.keymap()
    loc.makedirs()
    loc.remove(MANIFEST)
    servers = [s for s in keymap.servers() if keymap.ranges_of(s)]
    limit = session.node.config.timeout if timeout is None else timeout
    # each server learns the last push this worker sent it per table (read-your-writes)
    parts = {s: Message(Op.CHECKPOINT, body=CheckpointRequest(path=loc.url, iteration=iteration, timeout=limit,
                                                              seqs=session.last_seqs(s)).to_wire())
             for s in servers}
    replies: dict[int, dict[str, Any]] = {}

    def on_part(msg: Message) -> None:
        CheckpointReply.from_wire(msg.body)  # checked: a malformed answer fails the checkpoint
        replies[msg.sender] = msg.body

    def combine() -> dict[str, Any]:
        manifest = build_manifest(iteration, keymap.to_wire(), replies)
        write_manifest(loc, manifest)
        session.checkpoints += 1  # reported in heartbeats (the scheduler's timeline)
        session.checkpoint_iteration = iteration
        return manifest

    return session.request(parts, f"checkpoint of iteration {iteration} to {loc.url!r}", on_part=on_part,
                           combine=combine, timeout=timeout)


class Periodic:
    """Periodic checkpoints (PS_CHECKPOINT_DIR with PS_CHECKPOINT_EVERY_ITERS and/or
    PS_CHECKPOINT_EVERY_SECONDS), taken by the worker of rank 0 at iteration ends, into
    ``<dir>/iter-<t>`` (``t`` the last iteration included, 6 digits or more)."""

    def __init__(self, session: Session, rank: int, config: Config) -> None:
        self._session = session
        self._rank = rank
        self.every_iters = config.checkpoint_every_iters
        self.every_seconds = config.checkpoint_every_seconds
        self.directory = config.checkpoint_dir
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        if (self.every_iters or self.every_seconds) and not self.directory:
            log.warning("PS_CHECKPOINT_EVERY_* is set but PS_CHECKPOINT_DIR is not: no periodic checkpoints")

    @property
    def enabled(self) -> bool:
        return bool(self.directory) and bool(self.every_iters or self.every_seconds) and self._rank == 0

    def on_advance(self, completed: int) -> None:
        """Iteration ``completed`` just finished: start a checkpoint of it if one is due.

        Called before the iteration's clock ticks leave, so the servers know the cut before
        this worker's tick can let anyone past it. Returns at once; failures are logged.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        due = (self.every_iters and (completed + 1) % self.every_iters == 0) or \
            (self.every_seconds and now - self._last >= self.every_seconds)
        if not due:
            return
        self._last = now
        path = self.directory.rstrip("/") + f"/iter-{completed:06d}"
        try:
            req = request_checkpoint(self._session, path, completed)
        except PSError as exc:
            log.warning("worker %d: periodic checkpoint to %s not started: %s", self._session.node.id, path, exc)
            return

        def report(r: Request, path: str = path) -> None:
            exc = r.exception(timeout=0)
            if exc is not None:
                log.warning("worker %d: periodic checkpoint to %s failed: %s", self._session.node.id, path, exc)

        req.add_done_callback(report)
        with self._lock:
            self._requests = [r for r in self._requests if not r.done()] + [req]

    def pending(self) -> list[Request]:
        """Periodic checkpoints not finished yet."""
        with self._lock:
            return [r for r in self._requests if not r.done()]
