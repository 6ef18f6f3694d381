"""``paramserver dashboard ADDRESS --serve PORT``: a live web page of the cluster.

:class:`Board` turns the scheduler's successive status reports into the page's state (a
JSON document): nodes and their liveness (a node that left is kept, marked ``failed``,
``finished`` or ``drained`` by the timeline event that named it), the key ranges on the ring
with their replicas, tables (keys, memory, pushes, pulls, bytes before and after each
filter), push and pull rates from the difference of each worker's counters between two of
its heartbeat reports, each worker's iteration and idle share, and the scheduler's
timeline. It is pure:
fed reports, never a socket or a clock.

:class:`Dashboard` is the shell (run by ``paramserver dashboard`` or inside the scheduler's
process by ``paramserver scheduler --dashboard PORT``): one thread asks the scheduler for a status every
``interval`` seconds (so rates are measured over equal steps however many browsers
watch), and an HTTP server answers ``/`` (the page: static HTML, CSS and JavaScript in one
file, nothing from the internet), ``/api/state`` (the JSON the page polls) and ``/metrics``
(the same figures for Prometheus, ``_metrics.py``).

Thread-safety: :class:`Board` is not thread-safe; :class:`Dashboard` updates it on its
sampling thread and hands HTTP threads the last finished state (an immutable snapshot, read
under a lock); status requests are made one at a time.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .._config import Config
from .._errors import ConfigError
from ..deploy import AdminClient
from ..protocol import KEY_SPACE
from ._metrics import registry_of, reports_of

__all__ = ["Board", "Dashboard", "scheduler_dashboard", "serve_dashboard"]

#: Rate samples kept for the plot (at the default 1 s interval: 5 minutes).
HISTORY = 300

#: Nodes that left kept on the page (the most recent ones, by node id).
MAX_GONE = 64

#: How a node that left the membership is shown, by the last timeline event naming it.
_GONE = {"failure": "failed", "finish": "finished", "drain": "drained"}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class Board:
    """The page's state from successive status reports; see the module docstring."""

    def __init__(self, address: str = "") -> None:
        self.address = address
        self.samples = 0
        self.error = ""
        self._nodes: dict[int, dict[str, Any]] = {}
        self._last: dict[str, _Sample] = {}  # worker -> its last report that moved its clock
        self._history: deque[list[float]] = deque(maxlen=HISTORY)
        self._recent: dict[str, _Recent] = {}  # worker -> its figures between its two last reports
        self._state: dict[str, Any] = {"samples": 0, "error": "waiting for the first status report",
                                       "address": address, "nodes": [], "history": []}

    # ------------------------------------------------------------------ events in
    def failed(self, why: str) -> dict[str, Any]:
        """The scheduler did not answer: keep the last figures, say why."""
        self.error = why
        self._state = {**self._state, "error": why}
        return self._state

    def update(self, status: dict[str, Any]) -> dict[str, Any]:
        """A new status report; the new state."""
        self.samples += 1
        self.error = ""
        names = {str(t[0]): t[1] for t in status.get("tables", [])}
        servers = status.get("servers", {})
        reports = reports_of(status)
        events = status.get("events", [])
        rates = self._update_rates(reports, _num(status.get("uptime")))
        tables = self._tables(names, servers, reports)
        for t in tables:
            t["rate"] = rates["tables"].get(str(t["name"]), {"push": 0.0, "pull": 0.0})
        self._state = {
            "samples": self.samples,
            "error": "",
            "address": self.address,
            "summary": {
                "uptime": _num(status.get("uptime")),
                "epoch": (status.get("keymap") or {}).get("epoch", 0),
                "num_servers": status.get("num_servers", 0),
                "num_workers": status.get("num_workers", 0),
                "failovers": status.get("failovers", 0),
                "migrations": status.get("migrations", 0),
                "migrating": bool(status.get("migrating")),
            },
            "nodes": self._update_nodes(status, events, reports),
            "ring": self._ring(status.get("keymap") or {}),
            "tables": tables,
            "rates": rates,
            "history": list(self._history),
            "workers": self._workers(reports),
            "events": events,
            "groups": self._groups(status.get("groups", {})),
        }
        return self._state

    @property
    def state(self) -> dict[str, Any]:
        """The last state (the page's JSON)."""
        return self._state

    # ------------------------------------------------------------------ parts
    def _update_nodes(self, status: dict[str, Any], events: list[list[Any]],
                      reports: dict[str, Any]) -> list[dict[str, Any]]:
        seen = status.get("last_seen", {})
        servers = status.get("servers", {})
        live: set[int] = set()
        for nid, role, address, host, pid, rank, *extra in status.get("nodes", []):
            if role not in ("server", "worker"):
                continue
            group = extra[0] if extra and isinstance(extra[0], str) else None  # workers of a named group
            live.add(nid)
            rep = servers.get(str(nid), {}) if role == "server" else reports.get(str(nid), {})
            state = "unreachable" if role == "server" and "error" in rep else "alive"
            age = seen.get(str(nid))
            rss = rep.get("rss")
            self._nodes[nid] = {"id": nid, "role": role, "rank": rank if role == "worker" else None, "group": group,
                                "address": address, "host": host, "pid": pid, "state": state,
                                "heartbeat": None if age is None else max(0.0, _num(age)),
                                "why": str(rep.get("error", "")), "rss": rss if isinstance(rss, int) else None}
        # the last event that says how a node left (a failover after a failure does not)
        last_event = {e[2]: e for e in events if len(e) >= 4 and e[1] in _GONE}
        for nid, node in self._nodes.items():
            if nid not in live and node["state"] in ("alive", "unreachable"):
                ev = last_event.get(nid)
                node.update(state=_GONE.get(ev[1], "left") if ev else "left", heartbeat=None,
                            why=ev[3] if ev else "no longer a member")
        gone = [n for n in sorted(self._nodes) if n not in live]
        for n in gone[:-MAX_GONE]:  # the most recent MAX_GONE nodes that left stay on the page
            del self._nodes[n]
        return [self._nodes[n] for n in sorted(self._nodes)]

    @staticmethod
    def _groups(groups: Any) -> list[dict[str, Any]]:
        """The worker groups of a job that has named ones (a job without them has only
        ``default``, and the page shows no group table): size, members, finished, ended."""
        if not isinstance(groups, dict) or len(groups) <= 1:
            return []
        out = []
        for name, g in sorted(groups.items()):
            if not isinstance(g, dict):
                continue
            members = g.get("workers", {})
            out.append({"name": str(name), "size": int(_num(g.get("size"))),
                        "workers": len(members) if isinstance(members, dict) else 0,
                        "finished": int(_num(g.get("finished"))), "ended": bool(g.get("ended"))})
        return out

    @staticmethod
    def _ring(keymap: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"lo": lo / KEY_SPACE, "hi": (last + 1) / KEY_SPACE, "first": f"{lo:#018x}", "last": f"{last:#018x}",
                 "master": master, "replicas": list(replicas)}
                for lo, last, master, replicas in keymap.get("ranges", [])]

    @staticmethod
    def _tables(names: dict[str, Any], servers: dict[str, Any], reports: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for tid, spec in sorted(names.items(), key=lambda kv: int(kv[0])):
            keys = nbytes = pushes = pulls = applied = 0.0
            filters: dict[tuple[str, str, str], list[float]] = {}
            for rep in servers.values():
                t = rep.get("tables", {}).get(tid)
                if t:
                    keys += _num(t.get("keys"))
                    nbytes += _num(t.get("bytes"))
                    applied += _num(t.get("pushes"))
                for key, fb in rep.get("filters", {}).items():
                    ftid, direction, fname = key.split("/", 2)
                    if ftid == tid:
                        acc = filters.setdefault((fname, "servers", direction), [0.0, 0.0])
                        acc[0] += _num(fb.get("before"))
                        acc[1] += _num(fb.get("after"))
            for rep in reports.values():
                t = rep.get("tables", {}).get(spec.get("name"))
                pushes += _num((t or {}).get("pushes"))
                pulls += _num((t or {}).get("pulls"))
                for fname, fb in (t or {}).get("filters", {}).items():
                    for direction in ("sent", "received"):
                        if f"{direction}_before" in fb:
                            acc = filters.setdefault((fname, "workers", direction), [0.0, 0.0])
                            acc[0] += _num(fb[f"{direction}_before"])
                            acc[1] += _num(fb.get(f"{direction}_after"))
            out.append({"id": int(tid), "name": spec.get("name"), "width": spec.get("width"),
                        "dtype": spec.get("dtype"), "updater": spec.get("updater"), "keys": keys, "bytes": nbytes,
                        "pushes": pushes, "pulls": pulls, "applied": applied,
                        "filters": [{"filter": f, "where": w, "direction": d, "before": b, "after": a}
                                    for (f, w, d), (b, a) in sorted(filters.items())]})
        return out

    def _update_rates(self, reports: dict[str, Any], uptime: float) -> dict[str, Any]:
        """Push and pull requests per second, per table, summed over the workers, and each
        worker's recent idle share and iterations per second: a worker's figure is the
        difference of its counters between two of its heartbeat reports over the difference
        of its own clock (``seconds``), so it is exact however the reports and the samples
        interleave; the same report again keeps the figures; a worker that left no longer
        counts."""
        recent: dict[str, _Recent] = {}
        for nid, rep in reports.items():
            now = _Sample.of(rep)
            before = self._last.get(nid)
            if before is None:
                self._last[nid] = now
                recent[nid] = _Recent()
            elif now.clock > before.clock:
                recent[nid] = _Recent.between(before, now)
                self._last[nid] = now
            else:  # the same report again: its figures stand
                recent[nid] = self._recent.get(nid, _Recent())
        self._last = {n: v for n, v in self._last.items() if n in reports}
        self._recent = recent
        per: dict[str, list[float]] = {}
        for r in recent.values():
            for name, (pu, pl) in r.tables.items():
                acc = per.setdefault(name, [0.0, 0.0])
                acc[0] += pu
                acc[1] += pl
        push = sum(v[0] for v in per.values())
        pull = sum(v[1] for v in per.values())
        self._history.append([round(uptime, 3), push, pull])
        return {"push": push, "pull": pull, "tables": {k: {"push": v[0], "pull": v[1]} for k, v in per.items()}}

    def _workers(self, reports: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for nid, rep in sorted(reports.items(), key=lambda kv: int(kv[0])):
            tables = rep["tables"].values()
            r = self._recent.get(nid, _Recent())
            rank = rep.get("rank")
            out.append({"id": int(nid), "rank": rank if type(rank) is int else None,
                        "iteration": _num(rep.get("iteration")),
                        "idle": _num(rep.get("idle_fraction")), "idle_now": r.idle, "iterations_per_s": r.iterations,
                        "seconds": _num(rep.get("seconds")),
                        "rss": rep["rss"] if type(rep.get("rss")) is int else None,
                        "pushes": sum(_num(t.get("pushes")) for t in tables),
                        "pulls": sum(_num(t.get("pulls")) for t in tables),
                        "checkpoints": _num(rep.get("checkpoints")), "age": _num(rep.get("age"))})
        return out


@dataclass(frozen=True)
class _Sample:
    """What the rates need of one worker report."""

    clock: float  # the worker's seconds since it connected
    wait: float
    iteration: float
    tables: dict[str, tuple[float, float]]  # name -> (pushes, pulls)

    @staticmethod
    def of(rep: dict[str, Any]) -> _Sample:
        return _Sample(_num(rep.get("seconds")), _num(rep.get("wait_seconds")), _num(rep.get("iteration")),
                       {name: (_num(t.get("pushes")), _num(t.get("pulls"))) for name, t in rep["tables"].items()})


@dataclass(frozen=True)
class _Recent:
    """A worker's figures between two of its reports (zeros before a second one)."""

    idle: float = 0.0
    iterations: float = 0.0
    tables: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (pushes/s, pulls/s)

    @staticmethod
    def between(a: _Sample, b: _Sample) -> _Recent:
        dt = b.clock - a.clock
        tables = {name: (max(0.0, pu - a.tables.get(name, (0.0, 0.0))[0]) / dt,
                         max(0.0, pl - a.tables.get(name, (0.0, 0.0))[1]) / dt)
                  for name, (pu, pl) in b.tables.items()}
        return _Recent(min(1.0, max(0.0, (b.wait - a.wait) / dt)), max(0.0, b.iteration - a.iteration) / dt, tables)


def page() -> bytes:
    """The dashboard's HTML (with its CSS and JavaScript inline)."""
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class Dashboard:
    """Samples ``get_status`` every ``interval`` seconds into a :class:`Board` and serves it.

    Binding happens in the constructor (a port in use fails there, in the caller's thread);
    :meth:`start` runs the sampler and the HTTP server on their own threads, :meth:`close`
    stops both, runs ``on_close`` (e.g. closing the status client, which fails a status
    request in flight) and joins them.
    """

    def __init__(self, get_status: Callable[[], dict[str, Any]], host: str, port: int, *,
                 interval: float = 1.0, address: str = "", on_close: Callable[[], None] | None = None) -> None:
        self.get_status = get_status
        self.interval = interval
        self.on_close = on_close
        self.board = Board(address)
        self._status_lock = threading.Lock()  # one status request at a time
        self._lock = threading.Lock()
        self._state = json.dumps(self.board.state).encode()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise ConfigError(f"cannot serve the dashboard at {host}:{port}: {exc.strerror or exc} "
                              f"(choose another port)") from None
        self.httpd.daemon_threads = True

    @property
    def closing(self) -> bool:
        """:meth:`close` has begun."""
        return self._stop.is_set()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def status(self) -> dict[str, Any]:
        with self._status_lock:
            return self.get_status()

    def sample(self) -> None:
        """Ask for one status and update the board."""
        try:
            st = self.status()
        except Exception as exc:
            state = self.board.failed(f"the scheduler did not answer: {exc}")
        else:
            state = self.board.update(st)
        body = json.dumps({**state, "interval": self.interval}).encode()
        with self._lock:
            self._state = body

    def state(self) -> bytes:
        with self._lock:
            return self._state

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> Dashboard:
        """Sample and serve on background threads; returns self."""
        self._threads = [threading.Thread(target=self._sample_loop, name="paramserver-dashboard-sampler", daemon=True),
                         threading.Thread(target=self.httpd.serve_forever, name="paramserver-dashboard-http",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def wait(self) -> None:
        """Block until :meth:`close` (from another thread) or an interrupt."""
        while not self._stop.wait(0.5):
            pass

    def close(self) -> None:
        """Stop serving and sampling; idempotent."""
        if self._stop.is_set() and not self._threads:
            return
        self._stop.set()
        if self._threads:
            self.httpd.shutdown()
        if self.on_close is not None:
            self.on_close()  # first: a status request the sampler waits for fails at once
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []
        self.httpd.server_close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        board = self
        registry = registry_of(self.status)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(page(), "text/html; charset=utf-8")
                elif path == "/api/state":
                    self._send(board.state(), "application/json")
                elif path == "/metrics":
                    try:
                        body = generate_latest(registry)
                    except Exception as exc:
                        self.send_error(503, f"the scheduler did not answer: {exc}")
                        return
                    self._send(body, CONTENT_TYPE_LATEST)
                else:
                    self.send_error(404, "the dashboard serves /, /api/state and /metrics")

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def serve_dashboard(get_status: Callable[[], dict[str, Any]], host: str, port: int, *, interval: float = 1.0,
                    address: str = "", on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard at ``host:port`` until interrupted."""
    with Dashboard(get_status, host, port, interval=interval, address=address) as dash:
        dash.start()
        if on_ready is not None:
            on_ready(dash.url)
        dash.wait()


def scheduler_dashboard(host: str, port: int, config: Config, *, interval: float = 1.0) -> Dashboard:
    """A dashboard for the scheduler's own process (``paramserver scheduler --dashboard
    PORT``), bound now (before the scheduler starts, so a port in use fails first) and
    started by ``start()`` once ``board.address`` is the scheduler's address. Its status
    client joins the scheduler on the first sample, from the sampling thread, and is closed
    without a goodbye when the dashboard is (the scheduler is ending then)."""
    clients: list[AdminClient] = []
    lock = threading.Lock()  # a client is made, or closed, under it: none is made after close

    def client() -> AdminClient:
        with lock:
            if dash.closing:
                raise ConfigError("the dashboard is closing")
            if not clients:
                clients.append(AdminClient(dash.board.address, timeout=min(config.timeout, 10.0), config=config))
            return clients[0]

    def get_status() -> dict[str, Any]:
        return client().status()

    def close() -> None:
        with lock:
            for c in clients:
                c.node.close(linger=0)

    dash = Dashboard(get_status, host, port, interval=interval, on_close=close)
    return dash
