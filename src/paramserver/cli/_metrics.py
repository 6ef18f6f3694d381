"""Prometheus metrics: the whole cluster's figures (scheduler, servers, workers) in the text
exposition format, through prometheus-client.

``paramserver metrics ADDRESS`` prints them once; ``--serve PORT`` answers ``GET /metrics``
on 127.0.0.1:PORT (or ``--bind``), asking the scheduler for a fresh status on each scrape.

:class:`StatusCollector` turns one status report (``AdminClient.status()``: the scheduler's
membership and timeline, each server's report, each worker's last heartbeat report) into
metric families: one family per metric, every sample of it under that family with labels
for the node (``server``, ``worker``) and the table, so each family's ``# HELP`` and
``# TYPE`` lines come once, right before its samples (the format's grouping rule).
Counters are ``CounterMetricFamily`` (samples end in ``_total``), levels
``GaugeMetricFamily``.

Thread-safety: a collector holds no state; :func:`serve` answers each scrape on its own
thread and asks for one status at a time.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["StatusCollector", "number", "registry_of", "render", "reports_of", "serve"]

_P = "paramserver_"


def _safe(name: str) -> str:
    """A counter name as a metric-name part: ``[a-zA-Z0-9_]`` only."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class _Families:
    """Metric families by name, created on first use, emitted in order of creation: every
    sample of a metric goes into its one family, wherever in the report it was found."""

    def __init__(self) -> None:
        self._by_name: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = GaugeMetricFamily(_P + name, doc, labels=labels)
        assert isinstance(fam, GaugeMetricFamily)
        return fam

    def counter(self, name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = CounterMetricFamily(_P + name, doc, labels=labels)
        assert isinstance(fam, CounterMetricFamily)
        return fam

    def __iter__(self) -> Iterator[Metric]:
        """The families that have samples (an empty one would be a TYPE line alone)."""
        return iter([fam for fam in self._by_name.values() if fam.samples])


def number(value: Any) -> float:
    """``value`` as a float if it is a number (not a bool), else 0: figures from reports."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


_num = number


def _maps(value: Any) -> dict[str, dict[str, Any]]:
    """``value`` if it is a map of maps, keeping only its entries that are maps, else {}."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, dict)}


def reports_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The workers' heartbeat reports of a status, by node id, in a shape readers may trust:
    a report is a map, its ``tables`` a map of maps, each table's ``filters`` a map of maps
    (a node's malformed report loses what is malformed, never breaks a reader)."""
    out: dict[str, dict[str, Any]] = {}
    for nid, rep in _maps(status.get("reports")).items():
        if not nid.isdigit():
            continue
        tables = {name: {**t, "filters": _maps(t.get("filters"))} for name, t in _maps(rep.get("tables")).items()}
        out[nid] = {**rep, "tables": tables}
    return out


def families(status: dict[str, Any]) -> list[Metric]:
    """The metric families of one status report."""
    f = _Families()
    nodes = status.get("nodes", [])
    role_count = f.gauge("nodes", "Live nodes of the cluster, by role.", ["role"])
    for role in ("server", "worker"):
        role_count.add_metric([role], sum(1 for n in nodes if n[1] == role))
    f.gauge("uptime_seconds", "Seconds since the scheduler started.", []).add_metric([], _num(status.get("uptime")))
    f.gauge("keymap_epoch", "Epoch of the current key map.", []).add_metric(
        [], _num((status.get("keymap") or {}).get("epoch", 0)))
    f.counter("failovers", "Servers lost and replaced by their replicas.", []).add_metric(
        [], _num(status.get("failovers")))
    f.counter("migrations", "Key-map migrations completed (joins, drains, restored replicas).", []).add_metric(
        [], _num(status.get("migrations")))
    _groups(f, status.get("groups", {}))
    age = f.gauge("heartbeat_age_seconds", "Seconds since the scheduler last heard from the node.", ["node", "role"])
    roles = {str(n[0]): str(n[1]) for n in nodes}
    for nid, seconds in sorted(status.get("last_seen", {}).items(), key=lambda kv: int(kv[0])):
        age.add_metric([nid, roles.get(nid, "")], _num(seconds))
    names = {str(t[0]): str(t[1]["name"]) for t in status.get("tables", [])}
    _servers(f, status.get("servers", {}), names)
    _workers(f, reports_of(status), roles)
    _filter_totals(f, status)
    return list(f)


def _groups(f: _Families, groups: dict[str, Any]) -> None:
    """Each worker group's members, fixed size (0: dynamic), finished workers and end (0/1)."""
    for name, g in sorted(_maps(groups).items()):
        f.gauge("group_workers", "Workers of the group now registered.", ["group"]).add_metric(
            [name], float(len(g.get("workers") or {})))
        f.gauge("group_size", "The group's fixed number of workers (0: any number).", ["group"]).add_metric(
            [name], _num(g.get("size")))
        f.gauge("group_finished_workers", "Workers of the group that finished.", ["group"]).add_metric(
            [name], _num(g.get("finished")))
        f.gauge("group_ended", "1 once the group's job ended, else 0.", ["group"]).add_metric(
            [name], float(bool(g.get("ended"))))


def _filter_totals(f: _Families, status: dict[str, Any]) -> None:
    """Each filter's bytes before and after it, summed over every node and table, by
    direction: what the filter saves the whole cluster."""
    totals: dict[tuple[str, str], list[float]] = {}
    for rep in status.get("servers", {}).values():
        for key, fb in rep.get("filters", {}).items():
            _, direction, name = key.split("/", 2)
            tot = totals.setdefault((direction, name), [0.0, 0.0])
            tot[0] += _num(fb.get("before"))
            tot[1] += _num(fb.get("after"))
    for rep in reports_of(status).values():
        for t in rep["tables"].values():
            for name, fb in t.get("filters", {}).items():
                for direction in ("sent", "received"):
                    if f"{direction}_before" in fb:
                        tot = totals.setdefault((direction, str(name)), [0.0, 0.0])
                        tot[0] += _num(fb[f"{direction}_before"])
                        tot[1] += _num(fb.get(f"{direction}_after"))
    lab = ["direction", "filter"]
    before = f.counter("cluster_filter_bytes_before", "Bytes before the filter, over every node and table.", lab)
    after = f.counter("cluster_filter_bytes_after", "Bytes after the filter, over every node and table.", lab)
    for (direction, name), (b, a) in sorted(totals.items()):
        before.add_metric([direction, name], b)
        after.add_metric([direction, name], a)


def _servers(f: _Families, servers: dict[str, Any], names: dict[str, str]) -> None:
    up = f.gauge("server_up", "1 if the server answered the scheduler's status request, else 0.", ["server"])
    for sid, rep in sorted(servers.items(), key=lambda kv: int(kv[0])):
        if "error" in rep:
            up.add_metric([sid], 0)
            continue
        up.add_metric([sid], 1)
        f.gauge("server_rss_bytes", "Resident memory of the server process.", ["server"]).add_metric(
            [sid], _num(rep.get("rss")))
        f.counter("server_duplicates", "Messages the server received twice and acknowledged again.",
                  ["server"]).add_metric([sid], _num(rep.get("duplicates")))
        for key, value in sorted(rep.get("counters", {}).items()):
            f.counter(f"server_{_safe(key)}", f"The server node's {key.replace('_', ' ')} counter.",
                      ["server"]).add_metric([sid], _num(value))
        for tid, t in sorted(rep.get("tables", {}).items(), key=lambda kv: int(kv[0])):
            labels = [sid, names.get(tid, tid)]
            f.gauge("table_keys", "Keys of the table the server masters.", ["server", "table"]).add_metric(
                labels, _num(t.get("keys")))
            f.gauge("table_bytes", "Bytes of the table's rows on the server.", ["server", "table"]).add_metric(
                labels, _num(t.get("bytes")))
            f.counter("table_pushes", "Pushes the server applied to the table.", ["server", "table"]).add_metric(
                labels, _num(t.get("pushes")))
            f.counter("table_pulls", "Pulls of the table the server answered.", ["server", "table"]).add_metric(
                labels, _num(t.get("pulls")))
            f.gauge("table_held_pulls", "Pulls the server holds until their consistency allows them.",
                    ["server", "table"]).add_metric(labels, _num(t.get("held_pulls")))
        for key, fb in sorted(rep.get("filters", {}).items()):
            tid, direction, name = key.split("/", 2)
            labels = [sid, names.get(tid, tid), direction, name]
            lab = ["server", "table", "direction", "filter"]
            f.counter("filter_bytes_before", "Bytes of the server's messages before the filter.", lab).add_metric(
                labels, _num(fb.get("before")))
            f.counter("filter_bytes_after", "Bytes of the server's messages after the filter.", lab).add_metric(
                labels, _num(fb.get("after")))


_WORKER_COUNTERS = (
    ("requests", "Requests the worker sent."),
    ("resends", "Request parts the worker sent again for want of a reply."),
    ("reroutes", "Request parts the worker sent on to a new owner of their keys."),
    ("messages_sent", "Messages the worker sent."),
    ("messages_received", "Messages the worker received."),
    ("bytes_sent", "Bytes the worker sent (frames, headers included)."),
    ("bytes_received", "Bytes the worker received (frames, headers included)."),
    ("checkpoints", "Checkpoints whose manifest the worker wrote."),
)
_WORKER_TABLE_COUNTERS = (
    ("pushes", "Pushes the worker sent to the table."),
    ("pulls", "Pulls of the table the worker sent."),
    ("keys_pushed", "Keys the worker pushed to the table."),
    ("keys_pulled", "Keys of the table the worker pulled."),
    ("bytes_sent", "Bytes the worker sent for the table."),
    ("bytes_received", "Bytes the worker received for the table."),
)


def _workers(f: _Families, reports: dict[str, Any], roles: dict[str, str]) -> None:
    lab = ["worker", "rank"]
    for nid, rep in sorted(reports.items(), key=lambda kv: int(kv[0])):
        if roles.get(nid, "worker") != "worker":
            continue
        who = [nid, str(rep.get("rank", ""))]
        f.gauge("worker_iteration", "The worker's current iteration (advance() calls).", lab).add_metric(
            who, _num(rep.get("iteration")))
        f.gauge("worker_idle_ratio", "Share of the worker's time spent waiting for requests.", lab).add_metric(
            who, _num(rep.get("idle_fraction")))
        f.counter("worker_wait_seconds", "Seconds the worker waited for requests.", lab).add_metric(
            who, _num(rep.get("wait_seconds")))
        f.gauge("worker_rss_bytes", "Resident memory of the worker process.", lab).add_metric(
            who, _num(rep.get("rss")))
        f.gauge("worker_report_age_seconds", "Seconds since the worker's last heartbeat report.", lab).add_metric(
            who, _num(rep.get("age")))
        for key, doc in _WORKER_COUNTERS:
            f.counter(f"worker_{key}", doc, lab).add_metric(who, _num(rep.get(key)))
        for table, t in sorted(rep.get("tables", {}).items()):
            tl = [*who, str(table)]
            for key, doc in _WORKER_TABLE_COUNTERS:
                f.counter(f"worker_table_{key}", doc, [*lab, "table"]).add_metric(tl, _num(t.get(key)))
            for fname, fb in sorted(t.get("filters", {}).items()):
                for direction in ("sent", "received"):
                    if f"{direction}_before" not in fb:
                        continue
                    fl = [*tl, direction, str(fname)]
                    fll = [*lab, "table", "direction", "filter"]
                    f.counter("worker_filter_bytes_before", "Bytes of the worker's messages before the filter.",
                              fll).add_metric(fl, _num(fb[f"{direction}_before"]))
                    f.counter("worker_filter_bytes_after", "Bytes of the worker's messages after the filter.",
                              fll).add_metric(fl, _num(fb.get(f"{direction}_after")))


class StatusCollector(Collector):
    """A prometheus-client collector over ``get_status`` (called once per collection)."""

    def __init__(self, get_status: Callable[[], dict[str, Any]]) -> None:
        self.get_status = get_status

    def collect(self) -> Iterator[Metric]:
        yield from families(self.get_status())

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration (and no status request then)


def registry_of(get_status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding only the cluster's metrics (no process metrics of this tool)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(get_status))
    return registry


def render(status: dict[str, Any]) -> str:
    """The metrics of one status report (``AdminClient.status()``), as exposition text."""
    return generate_latest(registry_of(lambda: status)).decode()


def serve(get_status: Callable[[], dict[str, Any]], host: str, port: int) -> None:
    """Answer GET /metrics until interrupted."""
    registry = registry_of(get_status)
    lock = threading.Lock()  # one status request at a time (an AdminClient serves one thread)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                with lock:
                    body = generate_latest(registry)
            except Exception as exc:
                self.send_error(503, f"the scheduler did not answer: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer((host, port), Handler) as httpd:
        httpd.serve_forever()
