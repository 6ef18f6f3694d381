"""Prometheus metrics: the cluster's counters in the text exposition format.

``paramserver metrics ADDRESS`` prints them once; ``--serve PORT`` answers ``GET /metrics``
on 127.0.0.1:PORT (or ``--bind``), asking the scheduler for a fresh status on each scrape.
"""

from __future__ import annotations

import http.server
from collections.abc import Callable
from typing import Any

__all__ = ["render", "serve"]


def _line(name: str, value: float, **labels: Any) -> str:
    lab = ",".join(f'{k}="{v!s}"' for k, v in labels.items())
    return f"paramserver_{name}{{{lab}}} {value}" if lab else f"paramserver_{name} {value}"


def render(status: dict[str, Any]) -> str:
    """The metrics of one status report (``AdminClient.status()``)."""
    out = [
        "# TYPE paramserver_nodes gauge",
        *(_line("nodes", sum(1 for n in status.get("nodes", []) if n[1] == role), role=role)
          for role in ("server", "worker")),
        _line("uptime_seconds", status.get("uptime", 0)),
        "# TYPE paramserver_group_workers gauge",
        *(line for name, g in sorted(status.get("groups", {}).items()) for line in (
            _line("group_workers", len(g.get("workers", {})), group=name),
            _line("group_size", g.get("size", 0), group=name),
            _line("group_finished_workers", g.get("finished", 0), group=name),
            _line("group_ended", int(bool(g.get("ended"))), group=name))),
        _line("keymap_epoch", (status.get("keymap") or {}).get("epoch", 0)),
    ]
    names = {str(t[0]): t[1]["name"] for t in status.get("tables", [])}
    out.append("# TYPE paramserver_table_keys gauge")
    for sid, rep in status.get("servers", {}).items():
        if "error" in rep:
            out.append(_line("server_up", 0, server=sid))
            continue
        out.append(_line("server_up", 1, server=sid))
        out.append(_line("server_rss_bytes", rep.get("rss", 0), server=sid))
        out.append(_line("server_duplicates_total", rep.get("duplicates", 0), server=sid))
        for key, value in rep.get("counters", {}).items():
            out.append(_line(f"server_{key}_total", value, server=sid))
        for tid, t in rep.get("tables", {}).items():
            table = names.get(tid, tid)
            out.append(_line("table_keys", t["keys"], server=sid, table=table))
            out.append(_line("table_bytes", t["bytes"], server=sid, table=table))
            out.append(_line("table_pushes_total", t["pushes"], server=sid, table=table))
            out.append(_line("table_pulls_total", t["pulls"], server=sid, table=table))
            out.append(_line("table_held_pulls", t.get("held_pulls", 0), server=sid, table=table))
        for key, f in rep.get("filters", {}).items():
            tid, direction, name = key.split("/", 2)
            labels = {"server": sid, "table": names.get(tid, tid), "direction": direction, "filter": name}
            out.append(_line("filter_bytes_before_total", f["before"], **labels))
            out.append(_line("filter_bytes_after_total", f["after"], **labels))
    return "\n".join(out) + "\n"


def serve(get_status: Callable[[], dict[str, Any]], host: str, port: int) -> None:
    """Answer GET /metrics until interrupted."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = render(get_status()).encode()
            except Exception as exc:
                self.send_error(503, f"the scheduler did not answer: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer((host, port), Handler) as httpd:
        httpd.serve_forever()
