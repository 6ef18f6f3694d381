"""A multi-host test bed on one machine: N network namespaces ("hosts") on one bridge.

Every host is a network namespace with one interface ``eth0`` (address ``10.214.0.(i+1)/24``)
whose peer is a port of a bridge inside one more namespace, the switch. Nothing is added to
the machine's own network: the test creates the namespaces and removes them (with every
process still in them) when it ends. Links can be cut and healed (the host's switch port
goes down and up: ``ip link``), cut between two hosts only (blackhole routes both ways:
``ip route``), and slowed: delay and loss on both directions of a host's link, with
``tc netem`` where the kernel has it, else through ``shaper.py`` (a user-space netem the
host's link then runs through: two TAP devices and a process copying frames between them;
ask for it with ``NetBed(n, shaped={i})``).

Processes run in a host with ``ip netns exec``; their output goes to a log file per process
(shown by :meth:`Host.log`). A host is killed as a machine dies: SIGKILL to every process in
its namespace. Needs root and iproute2 (``.ci/packages.txt``); the fixture :func:`netbed`
skips with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBNET = "10.214.0"
PORT = 9000  # the scheduler's port on its host: every host has its own port space


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=30)


def why_no_netns() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool} from iproute2 (.ci/packages.txt; make sysdeps)"
    return None


def has_netem() -> bool:
    """True if the kernel has ``tc netem`` (many containers' and VMs' kernels lack sch_netem)."""
    global _NETEM
    if _NETEM is None:
        ns = f"pbq{os.getpid() % 100000}"
        _ip("netns", "add", ns)
        try:
            res = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                                 capture_output=True, timeout=30)
            _NETEM = res.returncode == 0
        finally:
            _ip("netns", "del", ns, check=False)
    return _NETEM


_NETEM: bool | None = None


def paramserver_cmd() -> list[str]:
    """The ``paramserver`` command of this interpreter's environment (the console script
    ``pip install`` made, as a user types it), else ``python -m paramserver``."""
    script = Path(sys.executable).parent / "paramserver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "paramserver"]


def node_env(**extra: str) -> dict[str, str]:
    """The environment of processes on the bed: this one's, the sources and tests importable,
    heartbeats fast enough for tests, no keys or insecure setting inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("PS_KEYS", "PS_INSECURE", "PS_SCHEDULER")}
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env.update({"PYTHONPATH": path, "PS_LOG_LEVEL": "INFO", "PS_HEARTBEAT_INTERVAL": "0.2",
                "PS_HEARTBEAT_TIMEOUT": "4", "PS_CONNECT_TIMEOUT": "60", **extra})
    return env


class Host:
    """One host of the bed: its namespace, address and the processes started in it."""

    def __init__(self, bed: NetBed, index: int) -> None:
        self.bed = bed
        self.index = index
        self.ns = f"{bed.tag}h{index}"
        self.ip = f"{SUBNET}.{index + 1}"
        self.port = f"{bed.tag}p{index}"  # its port on the switch
        self.procs: list[tuple[str, subprocess.Popen[str], Path]] = []
        self.shaper: subprocess.Popen[str] | None = None  # the user-space netem of this link, if any

    def __repr__(self) -> str:
        return f"<Host {self.index} {self.ip} ns={self.ns}>"

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """Start ``cmd`` in this host; stdout and stderr go to ``<name>.log`` in the bed's folder."""
        path = self.bed.logs / f"h{self.index}-{name}.log"
        out = open(path, "w")  # noqa: SIM115 - closed when the bed ends
        self.bed.files.append(out)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], env=env or node_env(), text=True,
                                stdin=stdin, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc, path))
        return proc

    def run(self, cmd: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this host to its end; its output is returned."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], env=env or node_env(), text=True,
                              capture_output=True, timeout=timeout)

    def log(self, name: str) -> str:
        """What the process ``name`` printed so far."""
        return (self.bed.logs / f"h{self.index}-{name}.log").read_text(errors="replace")

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        res = _ip("netns", "pids", self.ns, check=False)
        return [int(p) for p in res.stdout.split()]

    def kill(self) -> None:
        """The machine dies: SIGKILL to every process in the host."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ links
    def cut(self) -> None:
        """Unplug the host: its switch port goes down (nothing in or out)."""
        _ip("-n", self.bed.switch, "link", "set", self.port, "down")

    def heal(self) -> None:
        """Plug the host back in."""
        _ip("-n", self.bed.switch, "link", "set", self.port, "up")

    def cut_from(self, other: Host) -> None:
        """Cut the path between this host and ``other`` only (blackhole routes both ways)."""
        _ip("-n", self.ns, "route", "add", "blackhole", f"{other.ip}/32")
        _ip("-n", other.ns, "route", "add", "blackhole", f"{self.ip}/32")

    def heal_from(self, other: Host) -> None:
        """Undo :meth:`cut_from`."""
        _ip("-n", self.ns, "route", "del", "blackhole", f"{other.ip}/32")
        _ip("-n", other.ns, "route", "del", "blackhole", f"{self.ip}/32")

    def slow(self, delay_ms: float, loss_pct: float = 0.0) -> None:
        """Delay every frame on the host's link by ``delay_ms`` and lose ``loss_pct`` percent,
        in each direction (netem on the host's interface and on its switch port, or the
        link's shaper)."""
        if self.shaper is not None:
            assert self.shaper.stdin is not None
            self.shaper.stdin.write(f"{delay_ms:g} {loss_pct:g}\n")
            self.shaper.stdin.flush()
            return
        spec = ["delay", f"{delay_ms:g}ms", "loss", f"{loss_pct:g}%"]
        _tc("-n", self.ns, "qdisc", "replace", "dev", "eth0", "root", "netem", *spec)
        _tc("-n", self.bed.switch, "qdisc", "replace", "dev", self.port, "root", "netem", *spec)

    def unslow(self) -> None:
        """Undo :meth:`slow`."""
        if self.shaper is not None:
            self.slow(0, 0)
            return
        _tc("-n", self.ns, "qdisc", "del", "dev", "eth0", "root")
        _tc("-n", self.bed.switch, "qdisc", "del", "dev", self.port, "root")


class NetBed:
    """``n`` hosts on one bridge. Use as a context manager (or through :func:`netbed`)."""

    def __init__(self, n: int, logs: Path, tag: str | None = None, shaped: set[int] | frozenset[int] = frozenset(),
                 ) -> None:
        self.shaped = shaped if not has_netem() else frozenset()
        self.tag = tag or f"pb{os.getpid() % 100000}"
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.switch = f"{self.tag}sw"
        self.hosts = [Host(self, i) for i in range(n)]
        self.files: list[object] = []
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for h in self.hosts:
            _ip("netns", "add", h.ns)
            self._made.append(h.ns)
            tmp = f"{self.tag}t{h.index}"
            if h.index in self.shaped:
                h.shaper = subprocess.Popen(["ip", "netns", "exec", self.switch, sys.executable,
                                             str(ROOT / "tests" / "shaper.py"), h.ns, tmp, h.port],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert h.shaper.stdout is not None
                if h.shaper.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the shaper of host {h.index} did not start (exit {h.shaper.wait()})")
            else:
                _ip("link", "add", tmp, "type", "veth", "peer", "name", h.port)
                _ip("link", "set", tmp, "netns", h.ns)
                _ip("link", "set", h.port, "netns", self.switch)
            _ip("-n", h.ns, "link", "set", tmp, "name", "eth0")
            _ip("-n", h.ns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            _ip("-n", h.ns, "link", "set", "eth0", "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", h.port, "master", "br0", "up")

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def close(self) -> None:
        """Kill every process in the hosts and remove the namespaces (and so every link)."""
        for h in self.hosts:
            h.kill()
            for _, proc, _ in h.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for h in self.hosts:
            if h.shaper is not None:
                h.shaper.kill()
                h.shaper.wait(timeout=10)
                for f in (h.shaper.stdin, h.shaper.stdout):
                    if f is not None:
                        f.close()
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        for f in self.files:
            f.close()  # type: ignore[attr-defined]

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(what: str, cond: Callable[[], object], timeout: float = 120.0, every: float = 0.1) -> object:
    """Poll ``cond`` until it returns something true; fail naming ``what`` after ``timeout``
    (an upper bound against a hang, never a pass condition)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@pytest.fixture
def netbed(tmp_path: Path) -> Iterator[Callable[..., NetBed]]:
    """A factory of test beds: ``bed = netbed(4)`` gives four hosts (``netbed(4, shaped={3})``:
    host 3's link can be slowed without netem); removed after the test."""
    why = why_no_netns()
    if why:
        pytest.skip(why)
    beds: list[NetBed] = []

    def make(n: int, shaped: set[int] | frozenset[int] = frozenset()) -> NetBed:
        try:
            bed = NetBed(n, tmp_path / f"bed{len(beds)}", tag=f"pb{os.getpid() % 100000}{len(beds)}", shaped=shaped)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot build network namespaces here: {exc.stderr.strip()}")
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()
