"""A test hook: a server that SIGKILLs itself at a chosen step of a migration.

``PS_CRASH_AT=PHASE:WHEN[:ROLE]`` makes a server kill itself (SIGKILL, as a crash) when it
handles a migration request of ``PHASE`` (``copy``: a source is asked to copy ranges out;
``load``: a target receives a snapshot; ``sums``: a target receives handed-over sums of
unfinished iterations; ``switch``: a server adopts the final map), ``before`` it handles it
or ``after`` (once its answers and sends have left). ``ROLE`` narrows ``switch`` to a
``source`` (a server that loses mastership of some keys) or a ``target`` (one that gains
some). With ``PS_CRASH_ONCE=PATH`` only the first server to reach the step dies: it creates
PATH (exclusively) first, and a server that finds PATH there goes on.

Failure tests use it to kill each party at each phase deterministically instead of racing
a timer. Off (empty) by default. Not thread-safe: the server's receive thread only.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np

from .._errors import ConfigError, ProtocolError
from ..placement import KeyMap
from ..protocol import KEY_DTYPE, Message, MigrateCopy, MigrateSums, MigrateSwitch, Op, migrate_from_wire

__all__ = ["CrashPoint"]


def _role(now: KeyMap, new: KeyMap, node: int) -> str:
    """``source`` if ``node`` masters keys under ``now`` that it does not under ``new``,
    else ``target`` if it gains some, else ``""`` (tested at every range start of both maps)."""
    starts = np.unique(np.array([r.lo for km in (now, new) for s in km.servers() for r in km.ranges_of(s)],
                                dtype=KEY_DTYPE))
    mine_now, mine_new = now.masters(starts) == node, new.masters(starts) == node
    return "source" if bool((mine_now & ~mine_new).any()) else "target" if bool((mine_new & ~mine_now).any()) else ""

log = logging.getLogger("paramserver.server")

PHASES = ("copy", "load", "sums", "switch")


class CrashPoint:
    """See the module docstring."""

    def __init__(self, spec: str, once: str = "") -> None:
        self.phase = self.when = self.role = self._switch_role = ""
        self.once = once
        if not spec:
            return
        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[0] not in PHASES or parts[1] not in ("before", "after") or (
                len(parts) == 3 and parts[2] not in ("source", "target")):
            raise ConfigError(f"PS_CRASH_AT={spec!r}: use PHASE:WHEN[:ROLE] with PHASE one of {list(PHASES)}, "
                              f"WHEN before or after, ROLE source or target")
        self.phase, self.when = parts[0], parts[1]
        self.role = parts[2] if len(parts) == 3 else ""
        self._switch_role = ""  # the role of the switch being handled, found before it

    def check(self, msg: Message, when: str, node: int, keymap: KeyMap | None) -> None:
        """Kill this process if ``msg`` at ``when`` is the chosen step (call with "before",
        then "after", for every request)."""
        if not self.phase or msg.op != Op.MIGRATE or (when != self.when and not self.role):
            return
        try:
            body = migrate_from_wire(msg.body)
        except ProtocolError:
            return
        phase = ("copy" if isinstance(body, MigrateCopy) else "switch" if isinstance(body, MigrateSwitch)
                 else "sums" if isinstance(body, MigrateSums) else "load")
        if phase != self.phase:
            return
        if self.role and isinstance(body, MigrateSwitch):
            if when == "before":  # (after, this server has adopted the new map already)
                self._switch_role = _role(keymap, KeyMap.from_wire(body.keymap), node) if keymap is not None else ""
            if self._switch_role != self.role or when != self.when:
                return
        if when != self.when:
            return
        if self.once:
            try:
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        log.warning("server %d: PS_CRASH_AT=%s:%s%s reached: killing this process", node, self.phase, self.when,
                    f":{self.role}" if self.role else "")
        if when == "after":
            time.sleep(0.2)  # let what the step sent leave first
        os.kill(os.getpid(), signal.SIGKILL)
