"""The scheduler process: the I/O shell around :class:`SchedulerCore`.

It binds the scheduler's address, feeds every incoming message and a periodic tick to the
core on the node's receive thread, and carries out the actions the core returns. When the
core finishes the job, the shell lets the last messages leave and returns the exit code.

Thread-safety: the core is touched only on the receive thread; :meth:`SchedulerProcess.run`
blocks the calling thread until the job ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .._config import Config
from .._errors import PSError
from ..node import Node, NodeInfo, probe
from ..placement import EvenSplit, Ring
from ..protocol import Message, Op
from ..transport import Transport
from ._core import Action, Connect, Disconnect, Finish, Probe, SchedulerCore, Send
from ._resends import Resends

__all__ = ["SchedulerProcess"]

log = logging.getLogger("paramserver.scheduler")


class SchedulerProcess:
    """Runs one scheduler until the job ends. See the module docstring."""

    def __init__(self, config: Config, *, host: str, port: int = 0, replicas: int = 1,
                 parent_pid: int = 0, transport: Transport | None = None, recover: bool = False) -> None:
        self.config = config
        self.node = Node("scheduler", config, transport)
        self.host = host
        self.port = port
        self.replicas = replicas
        self.parent_pid = parent_pid
        #: Take over a running job (its nodes' reports rebuild the state; scheduler/_rebuild.py).
        self.recover = recover
        self.core: SchedulerCore | None = None
        after = config.resend_after()
        #: The core's requests awaiting answers, sent again until answered (``_resends.py``).
        self.resends = Resends(after, give_up=min(config.timeout, 60.0)) if after else None
        self.finished = threading.Event()
        self.exit_code = 0
        self.reason = ""

    def start(self) -> str:
        """Bind and start serving; return the address workers and servers connect to."""
        address = self.node.start(self.host, self.port)
        self.core = SchedulerCore(
            address=address,
            num_servers=self.config.num_servers,
            num_workers=self.config.num_workers,
            replicas=self.replicas,
            heartbeat_timeout=self.config.heartbeat_timeout,
            probe_timeout=self.config.probe_timeout,
            hung_timeout=self.config.hung_timeout,
            request_timeout=min(self.config.timeout, 60.0),
            placement=Ring(self.config.vnodes) if self.config.placement == "ring" else EvenSplit(),
            now=time.monotonic(),
            worker_failure=self.config.worker_failure,
            max_tables=self.config.max_tables,
            incarnation=int.from_bytes(os.urandom(6), "big") or 1,  # tells the nodes this is a new process
            recover=self.recover,
        )
        self.node.gate.lookup = self._member
        for op in Op:
            self.node.on(op, self._dispatch)
        self.node.on_unmatched_response = self._dispatch
        self.node.on_link_lost = self._link_lost
        self.node.call_every(min(self.config.heartbeat_interval, 1.0) / 2, self._tick)
        if self.resends is not None:
            self.node.call_every(min(self.resends.after / 4, 0.25), self._resend_due)
        return address

    def run(self) -> int:
        """Block until the job ends; close and return the exit code."""
        try:
            self.finished.wait()
        except KeyboardInterrupt:
            self.node.call_later(0, lambda: self._perform(self._core().shutdown("the scheduler was interrupted", 130)))
            self.finished.wait(10)
        time.sleep(0.2)  # let the last SHUTDOWN messages leave
        self.node.close(linger=2.0)
        return self.exit_code

    def request_shutdown(self, reason: str, code: int = 0) -> None:
        """End the job from another thread (signal handlers)."""
        self.node.call_later(0, lambda: self._perform(self._core().shutdown(reason, code)))

    def _member(self, node: int) -> NodeInfo | None:
        """The gate's view of the membership: the core's node table."""
        return self._core().nodes.get(node)

    def _core(self) -> SchedulerCore:
        assert self.core is not None
        return self.core

    def _dispatch(self, msg: Message) -> None:
        if msg.response and self.resends is not None:
            self.resends.answered(msg.sender, msg.ts)
        try:
            actions = self._core().handle(msg, time.monotonic())
        except PSError as exc:
            self.node.gate.warn_once("unknown", "ignored a request from an unknown sender: %s", exc)
            return
        self._perform(actions)

    def _tick(self) -> None:
        if self.parent_pid and not _alive(self.parent_pid):
            self._perform(self._core().shutdown(f"the process that started the cluster (pid {self.parent_pid}) exited", 1))
            return
        self._perform(self._core().tick(time.monotonic()))

    def _resend_due(self) -> None:
        assert self.resends is not None
        for node, msg in self.resends.due(time.monotonic()):
            self.node.count("resends")
            try:
                self.node.send(node, msg)
            except PSError:
                pass  # its link is gone; its failure or departure drops it

    def _link_lost(self, peer: int) -> None:
        """The scheduler's own link to ``peer`` broke: the core decides whether to probe."""
        self._perform(self._core().suspect(peer, "the scheduler's link to it broke", time.monotonic()))

    def _probe(self, action: Probe) -> None:
        """Connect to the suspect's address on a thread of its own; the outcome goes to the
        core on the loop."""
        def run() -> None:
            error = probe(action.address, timeout=action.timeout)
            self.node.call_later(0, lambda: self._perform(self._core().probed(action.node, error, time.monotonic())))

        threading.Thread(target=run, name=f"paramserver-probe-{action.node}", daemon=True).start()

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._perform_one(action)
            except Exception:  # one bad action must not stop the others
                log.exception("scheduler: could not carry out %r", action)

    def _perform_one(self, action: Action) -> None:
        if isinstance(action, Send):
            if self.resends is not None and not action.msg.response:
                self.resends.sent(action.node, action.msg, time.monotonic())
            try:
                self.node.send(action.node, action.msg)
            except PSError as exc:
                self.node.gate.warn_once(f"send{action.node}", "could not send %s to node %d: %s", action.msg.op.name,
                                         action.node, exc)
        elif isinstance(action, Connect):
            self.node.connect(action.node, action.address, action.role)
        elif isinstance(action, Probe):
            self._probe(action)
        elif isinstance(action, Disconnect):
            if self.resends is not None:
                self.resends.gone(action.node)
            self.node.peer_failed(action.node, PSError(f"node {action.node} left"))
        elif isinstance(action, Finish):
            self.exit_code = action.code
            self.reason = action.reason
            (log.info if action.code == 0 else log.error)("job ended: %s", action.reason)
            self.finished.set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
