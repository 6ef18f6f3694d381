"""Prometheus metrics from every node: read back with the exposition format's own parser,
exact values after known work, and the format's grouping rule (one block per family)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import paramserver as ps
from helpers import free_port
from paramserver.cli._metrics import render

KEYS = np.array([7, 2**63 + 9], dtype=np.uint64)  # one key on each of 2 servers (even split)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, by the format's own parser; each family once."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    names: list[str] = []
    for fam in text_string_to_metric_families(text):
        names.append(fam.name)
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert len(names) == len(set(names)), f"a family appears twice: {sorted(n for n in names if names.count(n) > 1)}"
    return out


def assert_grouped(text: str) -> None:
    """Every sample sits in the block of its family: after that family's HELP and TYPE lines
    (TYPE right before the samples), and no family's block appears twice."""
    current: str | None = None
    kind = ""
    seen: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1].startswith(f"# TYPE {name} "), f"HELP of {name} not followed by its TYPE"
            continue
        if line.startswith("# TYPE "):
            _, _, current, kind = line.split()
            assert current not in seen, f"a second block of {current}"
            seen.add(current)
            assert not lines[i + 1].startswith("#"), f"TYPE {current} not right before its samples"
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        assert current is not None, f"sample {name} before any TYPE line"
        allowed = {current} | ({current + "_total", current + "_created"} if kind == "counter" else set())
        assert name in allowed, f"sample {name} inside the block of {current}"


def status_two_servers() -> dict[str, Any]:
    """A status report as the scheduler builds it: 2 servers, 1 worker, a filter, one dead server."""
    table = {"name": "w", "width": 1, "dtype": "float32", "updater": "sum"}
    server = {"rss": 1000, "duplicates": 0, "counters": {"messages_received": 5, "bytes_sent": 99},
              "tables": {"0": {"keys": 3, "bytes": 24, "pushes": 4, "pulls": 2, "held_pulls": 0}},
              "filters": {"0/received/lz4": {"before": 100, "after": 20}}}
    worker = {"rank": 0, "iteration": 6, "idle_fraction": 0.25, "wait_seconds": 1.5, "requests": 9, "age": 0.1,
              "tables": {"w": {"pushes": 4, "pulls": 2, "keys_pushed": 12,
                               "filters": {"lz4": {"sent_before": 80, "sent_after": 30}}}}}
    return {"nodes": [[1, "server", "a", "h", 1, 0], [2, "server", "b", "h", 2, 0], [4, "worker", "c", "h", 3, 0]],
            "keymap": {"epoch": 2, "ranges": []}, "last_seen": {"1": 0.1, "2": 0.2, "4": 0.3},
            "tables": [[0, table, {}]], "uptime": 12.5, "failovers": 1, "migrations": 0,
            "servers": {"1": server, "2": server, "3": {"error": "no answer"}}, "reports": {"4": worker}}


def test_every_family_once_with_its_type_and_labels() -> None:
    text = render(status_two_servers())
    assert_grouped(text)
    got = samples(text)
    assert got[("paramserver_table_keys", (("server", "1"), ("table", "w")))] == 3
    assert got[("paramserver_table_keys", (("server", "2"), ("table", "w")))] == 3
    assert got[("paramserver_table_pushes_total", (("server", "2"), ("table", "w")))] == 4
    assert got[("paramserver_server_up", (("server", "3"),))] == 0
    assert got[("paramserver_server_up", (("server", "1"),))] == 1
    assert got[("paramserver_server_messages_received_total", (("server", "1"),))] == 5
    assert got[("paramserver_filter_bytes_after_total", (("direction", "received"), ("filter", "lz4"),
                                                         ("server", "1"), ("table", "w")))] == 20
    assert got[("paramserver_nodes", (("role", "server"),))] == 2
    assert got[("paramserver_nodes", (("role", "worker"),))] == 1
    assert got[("paramserver_failovers_total", ())] == 1
    w = (("rank", "0"), ("worker", "4"))
    assert got[("paramserver_worker_iteration", w)] == 6
    assert got[("paramserver_worker_idle_ratio", w)] == 0.25
    assert got[("paramserver_worker_table_pushes_total", (*w[:1], ("table", "w"), w[1]))] == 4
    assert got[("paramserver_worker_filter_bytes_before_total",
                (("direction", "sent"), ("filter", "lz4"), ("rank", "0"), ("table", "w"), ("worker", "4")))] == 80
    assert got[("paramserver_heartbeat_age_seconds", (("node", "4"), ("role", "worker")))] == 0.3
    # each filter over the whole cluster: 2 servers received, the worker sent
    assert got[("paramserver_cluster_filter_bytes_before_total", (("direction", "received"), ("filter", "lz4")))] == 200
    assert got[("paramserver_cluster_filter_bytes_after_total", (("direction", "sent"), ("filter", "lz4")))] == 30


def test_label_values_are_escaped() -> None:
    st = status_two_servers()
    st["tables"][0][1] = {"name": 'a "quoted"\nname\\', "width": 1}
    got = samples(render(st))
    assert got[("paramserver_table_keys", (("server", "1"), ("table", 'a "quoted"\nname\\')))] == 3


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns a true value; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paramserver", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.cluster
def test_metrics_of_servers_and_workers_after_known_work(fast_env: dict[str, str]) -> None:
    pushes, pulls, iters = 7, 3, 5
    with ps.LocalCluster(servers=2, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("w", width=2)
        for _ in range(pushes):
            t.push(KEYS, np.ones((2, 2), np.float32)).wait()
        for _ in range(pulls):
            t.pull(KEYS)
        for _ in range(iters):
            w.advance()

        def reported() -> bool:  # the worker's next heartbeat carries the figures
            rep = cluster.status().get("reports", {}).get(str(w.id), {})
            return rep.get("iteration") == iters and rep.get("tables", {}).get("w", {}).get("pulls") == pulls

        wait_for("the worker's heartbeat report", reported)
        res = cli(["metrics", cluster.address], fast_env)
        assert res.returncode == 0, res.stderr
        assert_grouped(res.stdout)
        got = samples(res.stdout)
        servers = sorted(str(s) for s in cluster.status()["servers"])
        for sid in servers:
            assert got[("paramserver_table_keys", (("server", sid), ("table", "w")))] == 1
            assert got[("paramserver_table_pushes_total", (("server", sid), ("table", "w")))] == pushes
            assert got[("paramserver_table_pulls_total", (("server", sid), ("table", "w")))] == pulls
            assert got[("paramserver_table_bytes", (("server", sid), ("table", "w")))] > 0
        me = (("rank", str(w.rank)), ("worker", str(w.id)))
        mt = (me[0], ("table", "w"), me[1])
        assert got[("paramserver_worker_iteration", me)] == iters
        assert got[("paramserver_worker_table_pushes_total", mt)] == pushes
        assert got[("paramserver_worker_table_pulls_total", mt)] == pulls
        assert got[("paramserver_worker_table_keys_pushed_total", mt)] == 2 * pushes
        # requests: the table's declaration, the pushes, the pulls and one clock per advance()
        assert got[("paramserver_worker_requests_total", me)] == 1 + pushes + pulls + iters
        assert 0 <= got[("paramserver_worker_idle_ratio", me)] <= 1
        assert got[("paramserver_nodes", (("role", "server"),))] == 2
        assert got[("paramserver_nodes", (("role", "worker"),))] == 1


@pytest.mark.cluster
def test_metrics_served_over_http(fast_env: dict[str, str]) -> None:
    port = free_port()
    with ps.LocalCluster(servers=1, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        t = w.table("h")
        t.push(KEYS, np.ones(2, np.float32)).wait()
        proc = subprocess.Popen([sys.executable, "-m", "paramserver", "metrics", cluster.address,
                                 "--serve", str(port)], env={**os.environ, **fast_env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def scrape() -> tuple[str, str] | None:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                        return r.headers["Content-Type"], r.read().decode()
                except (urllib.error.URLError, ConnectionError):
                    return None

            ctype, text = wait_for("the metrics server", scrape)
            assert ctype.startswith("text/plain; version=")
            assert_grouped(text)
            sid = str(cluster.server_id(0))
            assert samples(text)[("paramserver_table_keys", (("server", sid), ("table", "h")))] == 2
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        finally:
            proc.terminate()
            proc.wait(10)


def test_malformed_worker_reports_lose_only_what_is_malformed() -> None:
    st = status_two_servers()
    st["reports"] = {"4": {**st["reports"]["4"], "tables": {"w": {"pushes": 4, "filters": [1]}, "x": 3}},
                     "5": [1, 2], "six": {"iteration": 1}, "7": {"tables": [], "iteration": "many"}}
    text = render(st)
    assert_grouped(text)
    got = samples(text)
    assert got[("paramserver_worker_table_pushes_total", (("rank", "0"), ("table", "w"), ("worker", "4")))] == 4
    assert got[("paramserver_worker_iteration", (("rank", ""), ("worker", "7")))] == 0
    assert not any(labels and dict(labels).get("worker") in ("5", "six") for _, labels in got)


def test_status_lists_each_workers_report() -> None:
    from paramserver.cli._status import format_status

    text = format_status(status_two_servers())
    assert "worker 4 r0: iteration 6, idle 25%, 4 pushes, 2 pulls (reported 0.1 s ago)" in text.splitlines()
