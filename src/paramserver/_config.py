"""Every setting paramserver reads from the environment, read in this one place.

The ps-lite ecosystem's names (``DMLC_*``) are accepted so that its launchers work
unchanged; the project's own settings are named ``PS_*``. docs/configuration.md lists each
setting with its default (a test keeps the two in step), and ``paramserver config`` prints
the values in effect.

:class:`Config` is an immutable snapshot: read it once with :meth:`Config.from_env` and pass
it down; nothing below this module reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError

__all__ = ["SETTINGS", "WORKER_FAILURE_POLICIES", "Config", "Setting", "parse_address"]

#: What a fixed-size job does when a worker dies (PS_WORKER_FAILURE; ``scheduler/_shards.py``).
WORKER_FAILURE_POLICIES = ("auto", "abort", "continue")


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, the Config field it fills, default and meaning."""

    env: str
    field: str
    default: Any
    help: str
    parse: Callable[[str], Any]


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _number(kind: type[int] | type[float], lo: float, hi: float = float("inf"), *,
            above: bool = False) -> Callable[[str], Any]:
    """A parser of numbers of ``kind`` in ``[lo, hi]`` (``(lo, hi]`` if ``above``)."""
    bound = f"> {lo:g}" if above else (f">= {lo:g}" if hi == float("inf") else f"between {lo:g} and {hi:g}")

    def parse(text: str) -> Any:
        value = kind(text)
        if not ((value > lo) if above else (value >= lo)) or not value <= hi:
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    """A parser of one of ``options`` (case-insensitive)."""

    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in options:
            raise ValueError(f"must be one of {', '.join(o or repr(o) for o in options)}")
        return low

    return parse


_positive_float = _number(float, 0, above=True)
_nonneg_float = _number(float, 0)
_nonneg_int = _number(int, 0)
_positive_int = _number(int, 1)
_percent = _number(float, 0, 100)
_placement = _choice("even", "ring")
_role = _choice("scheduler", "server", "worker", "")
_worker_failure = _choice(*WORKER_FAILURE_POLICIES)


SETTINGS: tuple[Setting, ...] = (
    # --- the ps-lite / BytePS names -------------------------------------------------------
    Setting("DMLC_ROLE", "role", "", "Role of this process: scheduler, server or worker.", _role),
    Setting("DMLC_PS_ROOT_URI", "root_uri", "127.0.0.1", "Host (IP or name) of the scheduler.", str),
    Setting("DMLC_PS_ROOT_PORT", "root_port", 0, "TCP port of the scheduler (0: pick a free one; a scheduler only).", _nonneg_int),
    Setting("DMLC_NUM_SERVER", "num_servers", 1, "Number of server processes the scheduler waits for before the key ranges are fixed.", _nonneg_int),
    Setting("DMLC_NUM_WORKER", "num_workers", 0, "Number of workers in the job (0: unknown, workers may come and go; the job then ends on shutdown).", _nonneg_int),
    Setting("DMLC_NODE_HOST", "node_host", "", "Same as PS_HOST (the ps-lite name).", str),
    # --- our own ------------------------------------------------------------------------
    Setting("PS_SCHEDULER", "scheduler", "", "Scheduler address as host:port or tcp://host:port; overrides DMLC_PS_ROOT_URI/PORT.", str),
    Setting("PS_HOST", "host", "", "Address this node binds and advertises (default: the local address that routes to the scheduler).", str),
    Setting("PS_PORT", "port", 0, "TCP port this node binds (0: a free port).", _nonneg_int),
    Setting("PS_CONNECT_TIMEOUT", "connect_timeout", 30.0, "Seconds a node waits for the scheduler to answer its registration.", _positive_float),
    Setting("PS_TIMEOUT", "timeout", 300.0, "Default limit in seconds on any wait (a reply, a barrier, a pull) when the call gives none.", _positive_float),
    Setting("PS_HEARTBEAT_INTERVAL", "heartbeat_interval", 1.0, "Seconds between heartbeats from each node to the scheduler.", _positive_float),
    Setting("PS_HEARTBEAT_TIMEOUT", "heartbeat_timeout", 10.0, "Seconds without a heartbeat after which the scheduler declares a node dead.", _positive_float),
    Setting("PS_SCHEDULER_TIMEOUT", "scheduler_timeout", 600.0, "Seconds a server or worker goes on without the scheduler (pushing, pulling, trying to rejoin a restarted one) before it gives up and ends its job.", _positive_float),
    Setting("PS_WORKER_RANK", "worker_rank", -1, "Rank of this worker, set by the launcher (-1: the scheduler assigns ranks in order of registration).", int),
    Setting("PS_GROUP", "group", "", "Worker group this worker joins (empty: the default group); ranks, barriers, data shards and the end of a group are per group (docs/groups.md).", str),
    Setting("PS_GROUP_WORKERS", "group_workers", 0, "Workers in this worker's named group (0: any number, they may come and go); the group's first worker fixes it. The default group's size is DMLC_NUM_WORKER.", _nonneg_int),
    Setting("PS_LOG_LEVEL", "log_level", "INFO", "Log level of scheduler and server processes (DEBUG, INFO, WARNING, ERROR).", str),
    Setting("PS_DROP_MSG", "drop_msg", 0.0, "Percentage of received data messages (push, pull, clock and their replies) to drop on purpose (fault injection, as in ps-lite).", _percent),
    Setting("PS_DUP_MSG", "dup_msg", 0.0, "Percentage of received data messages to deliver twice (fault injection).", _percent),
    Setting("PS_DELAY_MSG", "delay_msg", 0.0, "Percentage of received data messages to hold back, so that later ones overtake them (fault injection).", _percent),
    Setting("PS_DELAY_MS", "delay_ms", 100.0, "Longest hold-back of a delayed message, in milliseconds.", _positive_float),
    Setting("PS_FAULT_SEED", "fault_seed", -1, "Seed of the fault injection's random choices (-1: a different one each run).", int),
    Setting("PS_RESEND_TIMEOUT", "resend_timeout", 0.0, "Seconds after which a data request without a reply is sent again (0: never, or 1 when fault injection is on).", _nonneg_float),
    Setting("PS_CRASH_AT", "crash_at", "", "Test hook: a server SIGKILLs itself at this migration step, PHASE:WHEN[:ROLE] (copy, load, sums or switch; before or after; source or target), e.g. switch:before:target (empty: never).", str),
    Setting("PS_CRASH_ONCE", "crash_once", "", "Test hook: with PS_CRASH_AT, only the first server to reach the step dies (it creates this file first).", str),
    Setting("PS_VERBOSE", "verbose", False, "1 to log every message sent and received (very slow; for debugging).", _bool),
    Setting("PS_PLACEMENT", "placement", "even", "How the scheduler places key ranges on servers: even (equal contiguous ranges) or ring (consistent hashing).", _placement),
    Setting("PS_VNODES", "vnodes", 256, "Virtual nodes per server on the consistent-hash ring (PS_PLACEMENT=ring).", _positive_int),
    Setting("PS_WORKER_FAILURE", "worker_failure", "auto", "What a fixed-size job (DMLC_NUM_WORKER > 0) does when a worker dies: abort (end the job with an error), continue (go on with the others; the data shards it held go to them), or auto (continue if the job uses data shards, else abort).", _worker_failure),
    Setting("PS_DATA_DIR", "data_dir", "", "Folder where data sets are cached (default ~/.cache/paramserver).", str),
    Setting("PS_CHECKPOINT_DIR", "checkpoint_dir", "", "Directory or fsspec URL under which periodic checkpoints are written, one iter-NNNNNN folder each (needed by the two settings below).", str),
    Setting("PS_CHECKPOINT_EVERY_ITERS", "checkpoint_every_iters", 0, "The worker of rank 0 checkpoints after every N finished iterations (0: off).", _nonneg_int),
    Setting("PS_CHECKPOINT_EVERY_SECONDS", "checkpoint_every_seconds", 0.0, "The worker of rank 0 checkpoints at the first iteration end after this many seconds since the last one (0: off).", _nonneg_float),
    Setting("PS_KEYS", "keys", "", "Directory of the cluster's CURVE keys (written by `paramserver keygen DIR`): every socket is then authenticated and encrypted, and only the cluster's role keys are admitted. A node needs its role's ROLE.key_secret and the *.key public files.", str),
    Setting("PS_INSECURE", "insecure", False, "1 to let a node without keys listen on an address other than loopback (anyone who reaches it can control the cluster).", _bool),
    Setting("PS_MAX_MESSAGE_BYTES", "max_message_bytes", 1 << 30, "Largest message (all frames) a node accepts; larger ones are dropped unread, a larger frame cuts the connection (ZeroMQ MAXMSGSIZE). 0: no limit.", _nonneg_int),
    Setting("PS_RCVHWM", "rcvhwm", 1000, "Messages a node queues per incoming connection before the sender has to wait (backpressure). 0: no limit.", _nonneg_int),
    Setting("PS_MAX_KEYS", "max_keys", 1 << 27, "Most keys one push, pull or migration message may carry; a server refuses larger ones.", _positive_int),
    Setting("PS_MAX_TABLES", "max_tables", 1024, "Most tables a cluster may declare.", _positive_int),
    Setting("PS_UPDATER_MODULES", "updater_modules", "", "Comma-separated module names or prefixes (a prefix ends with '.') that servers may import user updaters (\"module:Name\") from; checked before any import. Empty: only modules of paramserver itself.", str),
    Setting("PS_CHECKPOINT_ROOT", "checkpoint_root", "", "If set, every checkpoint path a server writes or reads must lie under this directory (or fsspec URL prefix); '..' cannot escape it.", str),
)


@dataclass(frozen=True)
class Config:
    """The settings in effect for one process. Immutable and therefore thread-safe."""

    role: str = ""
    root_uri: str = "127.0.0.1"
    root_port: int = 0
    num_servers: int = 1
    num_workers: int = 0
    node_host: str = ""
    scheduler: str = ""
    host: str = ""
    port: int = 0
    connect_timeout: float = 30.0
    timeout: float = 300.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    scheduler_timeout: float = 600.0
    worker_rank: int = -1
    group: str = ""
    group_workers: int = 0
    log_level: str = "INFO"
    drop_msg: float = 0.0
    dup_msg: float = 0.0
    delay_msg: float = 0.0
    delay_ms: float = 100.0
    fault_seed: int = -1
    resend_timeout: float = 0.0
    crash_at: str = ""
    crash_once: str = ""
    verbose: bool = False
    placement: str = "even"
    vnodes: int = 256
    worker_failure: str = "auto"
    data_dir: str = ""
    checkpoint_dir: str = ""
    checkpoint_every_iters: int = 0
    checkpoint_every_seconds: float = 0.0
    keys: str = ""
    insecure: bool = False
    max_message_bytes: int = 1 << 30
    rcvhwm: int = 1000
    max_keys: int = 1 << 27
    max_tables: int = 1024
    updater_modules: str = ""
    checkpoint_root: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read every setting of :data:`SETTINGS` from ``environ`` (default ``os.environ``).

        Keyword ``overrides`` (field names) take precedence over the environment.

        Raises
        ------
        ConfigError
            A variable is set to a value that cannot be parsed; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw = env.get(s.env)
            if raw is None or raw == "":
                continue
            try:
                values[s.field] = s.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"environment variable {s.env}={raw!r} is invalid: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)

    def scheduler_address(self) -> str:
        """The scheduler's address as ``tcp://host:port`` (PS_SCHEDULER wins over DMLC_*)."""
        if self.scheduler:
            return parse_address(self.scheduler)
        if not self.root_port:
            raise ConfigError(
                "no scheduler address: set PS_SCHEDULER=host:port (or DMLC_PS_ROOT_URI and "
                "DMLC_PS_ROOT_PORT), or pass the address to paramserver.connect()"
            )
        return parse_address(f"{self.root_uri}:{self.root_port}")

    @property
    def faults(self) -> bool:
        """True if any fault injection is configured."""
        return bool(self.drop_msg or self.dup_msg or self.delay_msg)

    def resend_after(self) -> float:
        """Seconds before an unanswered data request is resent; 0 for never."""
        return self.resend_timeout or (1.0 if self.faults else 0.0)

    def data_path(self) -> str:
        """The data cache folder: PS_DATA_DIR, else ~/.cache/paramserver."""
        return self.data_dir or os.path.join(os.path.expanduser("~"), ".cache", "paramserver")

    def bind_host(self) -> str:
        """The host this node binds, if set (PS_HOST, else DMLC_NODE_HOST); "" means choose."""
        return self.host or self.node_host

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce this config in a child process."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.field)
            if isinstance(value, bool):
                out[s.env] = "1" if value else "0"
            else:
                out[s.env] = str(value)
        return out


def parse_address(address: str) -> str:
    """Normalise ``host:port`` or ``tcp://host:port`` to ``tcp://host:port`` (``mem://N`` stays).

    Raises
    ------
    ConfigError
        The address has no port, or the port is not a number in 1..65535.
    """
    text = address.strip()
    if text.startswith("mem://"):  # the in-memory transport of paramserver.testing
        return text
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    elif "://" in text:
        raise ConfigError(f"address {address!r}: only tcp:// addresses are supported")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {address!r} must look like host:port or tcp://host:port")
    try:
        port_no = int(port)
    except ValueError:
        raise ConfigError(f"address {address!r}: port {port!r} is not a number") from None
    if not 0 < port_no < 65536:
        raise ConfigError(f"address {address!r}: port {port_no} is out of range")
    return f"tcp://{host}:{port_no}"
