"""The live dashboard in a real headless browser (Debian's chromium through chromedriver,
driven by selenium): the right nodes, rates that move after pushes, exact table figures,
a killed server shown as failed with its failover on the timeline.

Waits are on the page's own content, polled with a bound (never a fixed sleep). Set
PS_DASHBOARD_SCREENSHOT=PATH to keep the final screenshot (docs/dashboard.png is made so).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paramserver as ps
from helpers import free_port
from paramserver.cli._dashboard import Board
from paramserver.deploy import AdminClient

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEYS = np.array([3, 11, 2**63 + 1], dtype=np.uint64)  # 2 keys on the first server, 1 on the second


def test_board_rates_from_counter_differences_and_nodes_that_left() -> None:
    """The pure part: rates from each worker's counters over its own clock, a worker that
    left no longer counted, exact table sums, and a node that left shown by the event that
    named it."""
    def report(seconds: float, pushes: int, pulls: int, wait: float = 0.0, iteration: int = 0) -> dict[str, Any]:
        return {"rank": 0, "iteration": iteration, "seconds": seconds, "idle_fraction": 0.5, "wait_seconds": wait,
                "rss": 1000, "tables": {"w": {"pushes": pushes, "pulls": pulls}}}

    def status(workers: dict[str, dict[str, Any]], nodes: list[int], events: list[list[Any]]) -> dict[str, Any]:
        return {"nodes": [[n, "server" if n < 3 else "worker", f"tcp://h:{n}", "h", n, 0] for n in nodes],
                "last_seen": {}, "tables": [[0, {"name": "w", "width": 1}, {}]], "uptime": 1.0, "events": events,
                "servers": {"1": {"tables": {"0": {"keys": 5, "bytes": 40, "pushes": 9, "pulls": 0}}}},
                "reports": workers,
                "keymap": {"epoch": 1, "ranges": [[0, 2**63 - 1, 1, [2]], [2**63, 2**64 - 1, 2, [1]]]}}

    board = Board("tcp://h:1")
    board.update(status({"3": report(10.0, 10, 0), "4": report(5.0, 0, 0)}, [1, 2, 3, 4], []))
    st = board.update(status({"3": report(12.0, 30, 4, wait=1.5, iteration=5), "4": report(6.0, 40, 0)},
                             [1, 2, 3, 4], []))
    assert st["rates"]["push"] == 20 / 2 + 40 / 1 and st["rates"]["pull"] == 4 / 2
    assert st["tables"][0]["rate"] == {"push": 50, "pull": 2}
    w3 = next(x for x in st["workers"] if x["id"] == 3)
    assert (w3["idle_now"], w3["iterations_per_s"], w3["idle"]) == (1.5 / 2, 5 / 2, 0.5)
    assert [n["rss"] for n in st["nodes"]] == [None, None, 1000, 1000]
    assert st["tables"][0]["pushes"] == 70 and st["tables"][0]["pulls"] == 4
    assert st["tables"][0]["keys"] == 5 and st["tables"][0]["applied"] == 9
    assert st["ring"][0] == {"lo": 0.0, "hi": 0.5, "first": "0x0000000000000000", "last": "0x7fffffffffffffff",
                             "master": 1, "replicas": [2]}
    st = board.update(status({"3": report(12.0, 30, 4, wait=1.5, iteration=5), "4": report(6.0, 40, 0)},
                             [1, 2, 3, 4], []))
    assert st["rates"]["push"] == 50  # the same reports again: the same rates
    assert next(x for x in st["workers"] if x["id"] == 3)["iterations_per_s"] == 5 / 2
    st = board.update(status({"4": report(7.0, 45, 0)}, [2, 4], [[5.0, "failure", 1, "server 1 died"],
                                                                  [5.1, "failover", 1, "replicas took over"],
                                                                  [6.0, "finish", 3, "worker 3 finished"]]))
    assert st["rates"]["push"] == 5  # worker 3 left: only worker 4 counts
    assert [(n["id"], n["state"]) for n in st["nodes"]] == [(1, "failed"), (2, "alive"), (3, "finished"),
                                                            (4, "alive")]
    assert st["nodes"][0]["why"] == "server 1 died"
    assert [h[1] for h in st["history"]] == [0.0, 50.0, 50.0, 5.0]
    assert board.failed("gone")["nodes"] == st["nodes"]


def test_board_keeps_the_most_recent_nodes_that_left() -> None:
    from paramserver.cli._dashboard import MAX_GONE

    board = Board()
    for n in range(1, MAX_GONE + 11):  # each worker joins, and is gone at the next report
        board.update({"nodes": [[n, "worker", f"tcp://h:{n}", "h", n, 0]], "events": []})
    nodes = board.update({"nodes": [], "events": []})["nodes"]
    assert [x["id"] for x in nodes] == list(range(11, MAX_GONE + 11))
    assert {x["state"] for x in nodes} == {"left"}


def test_board_takes_only_numbers_from_a_workers_report() -> None:
    bad = {"rank": "<img src=x onerror=alert(1)>", "iteration": "<b>", "checkpoints": [1], "seconds": "x", "rss": "<",
           "tables": {"t": {"pushes": "<i>", "filters": {"f": {"sent_before": 1, "sent_after": "y"}}}}}
    st = Board().update({"nodes": [[5, "worker", "tcp://h:5", "h", 5, 0]], "reports": {"5": bad},
                         "tables": [[0, {"name": "t"}, {}]], "events": []})
    assert st["workers"] == [{"id": 5, "rank": None, "iteration": 0.0, "idle": 0.0, "idle_now": 0.0,
                              "iterations_per_s": 0.0, "seconds": 0.0, "rss": None, "pushes": 0.0, "pulls": 0.0,
                              "checkpoints": 0.0, "age": 0.0}]
    assert st["tables"][0]["filters"] == [{"filter": "f", "where": "workers", "direction": "sent", "before": 1.0,
                                           "after": 0.0}]


def _browser_or_skip() -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/packages.txt; `make sysdeps` as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1250", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _browser_or_skip()
    try:
        yield driver
    finally:
        driver.quit()


def wait_page(driver: Any, what: str, check: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    """Poll the page (every 0.1 s, at most ``timeout`` s) until ``check(driver)`` is true."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(check)
    except TimeoutException:
        pytest.fail(f"the dashboard never showed {what}; it shows:\n{driver.execute_script(BODY_TEXT)}")


# The page redraws itself at every report, so each read is one script (the page's own
# thread runs it between two redraws): never an element handle that a redraw makes stale.
BODY_TEXT = "return document.body.innerText"


def node_states(driver: Any) -> dict[int, tuple[str, str]]:
    rows = driver.execute_script("return [...document.querySelectorAll('#nodes tbody tr')]"
                                 ".map(r => [r.dataset.node, r.dataset.role, r.dataset.state])")
    return {int(n): (role, state) for n, role, state in rows}


def cell(driver: Any, selector: str) -> str:
    """The text of the first element matching ``selector`` ('' if none)."""
    return str(driver.execute_script("const e = document.querySelector(arguments[0]); "
                                      "return e ? e.textContent.trim() : ''", selector))


def count(driver: Any, selector: str) -> int:
    return int(driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector))


def ring(driver: Any, copy: str | None = None) -> set[int]:
    """The servers drawn on the ring (only copy ``copy``: "0" masters, "1" first replicas)."""
    sel = "#ring path" + (f'[data-copy="{copy}"]' if copy is not None else "")
    nodes = driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(p => p.dataset.node)",
                                  sel)
    return {int(n) for n in nodes}


@pytest.mark.cluster
@pytest.mark.slow
def test_dashboard_in_a_browser(browser: Any, fast_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    with ps.LocalCluster(servers=3, replicas=2, env=fast_env) as cluster, ps.connect(cluster.address) as w:
        dash = subprocess.Popen([sys.executable, "-m", "paramserver", "dashboard", cluster.address, "--serve",
                                 str(port), "--interval", "0.25", "--timeout", "2"], env={**os.environ, **fast_env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            servers = sorted(cluster.server_id(i) for i in range(3))

            def page_loaded(d: Any) -> bool:
                assert dash.poll() is None, dash.stderr.read() if dash.stderr else ""
                try:
                    urllib.request.urlopen(url + "api/state", timeout=5).close()
                except OSError:
                    return False
                d.get(url)
                return True

            wait_page(browser, "its page", page_loaded)
            want = {**{s: ("server", "alive") for s in servers}, w.id: ("worker", "alive")}
            wait_page(browser, f"the nodes {want}", lambda d: node_states(d) == want)
            assert cell(browser, "#push-rate") == "0.00"

            t = w.table("emb", width=4)
            # push until the page shows a rate above zero (however late it samples), then stop
            stop, done = threading.Event(), [0]

            def push() -> None:
                while not stop.is_set():
                    t.push(KEYS, np.ones((3, 4), np.float32)).wait()
                    done[0] += 1

            pusher = threading.Thread(target=push)
            pusher.start()
            try:
                wait_page(browser, "a push rate above zero", lambda d: float(cell(d, "#push-rate") or 0) > 0)
            finally:
                stop.set()
                pusher.join()
            pushes = done[0]
            for _ in range(3):
                w.advance()
            wait_page(browser, "the table's pushes",
                      lambda d: cell(d, '#tables tr[data-table="emb"] .pushes') == f"{pushes:,}")
            # each push has a part for each server, applied by its master and its replica
            wait_page(browser, "the pushes applied",
                      lambda d: cell(d, '#tables tr[data-table="emb"] .applied') == f"{4 * pushes:,}")
            assert cell(browser, '#tables tr[data-table="emb"] .keys') == "3"
            wait_page(browser, "the worker's iteration",
                      lambda d: cell(d, f'#workers tr[data-worker="{w.id}"] .iteration') == "3")
            assert ring(browser, "0") == ring(browser, "1") == set(servers)  # masters and replicas drawn
            # the rate falls back to zero once pushes stop
            wait_page(browser, "the push rate back at zero", lambda d: cell(d, "#push-rate") == "0.00")

            w.checkpoint(tmp_path / "ck")
            wait_page(browser, "the checkpoint on the timeline",
                      lambda d: count(d, f'#events li[data-kind="checkpoint"][data-node="{w.id}"]'))
            assert "wrote a checkpoint of iteration 2" in cell(browser, '#events li[data-kind="checkpoint"]')
            wait_page(browser, "the worker's checkpoint count",
                      lambda d: cell(d, f'#workers tr[data-worker="{w.id}"] .checkpoints') == "1")

            victim = cluster.server_id(0)
            survivors = {s for s in servers if s != victim}
            os.kill(cluster.server_pids[0], signal.SIGKILL)
            wait_page(browser, f"server {victim} as failed",
                      lambda d: node_states(d).get(victim) == ("server", "failed"))
            wait_page(browser, "the failover on the timeline",
                      lambda d: count(d, f'#events li[data-kind="failover"][data-node="{victim}"]'))
            assert count(browser, f'#events li[data-kind="failure"][data-node="{victim}"]') == 1
            assert {s: node_states(browser)[s] for s in survivors} == {s: ("server", "alive") for s in survivors}
            assert node_states(browser)[w.id] == ("worker", "alive")
            # the survivors hold every range again, each with a replica, and training goes on
            wait_page(browser, "the replicas restored on the timeline",
                      lambda d: count(d, '#events li[data-kind="migration"]'))
            t.push(KEYS, np.ones((3, 4), np.float32)).wait()
            np.testing.assert_array_equal(t.pull(KEYS), np.full((3, 4), pushes + 1, np.float32))

            wait_page(browser, "the ring on the survivors", lambda d: ring(d, "0") == ring(d, "1") == survivors)
            state = json.loads(urllib.request.urlopen(url + "api/state", timeout=5).read())
            assert [e[1] for e in state["events"] if e[2] == victim][-2:] == ["failure", "failover"]

            shot = tmp_path / "dashboard.png"
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            keep = os.environ.get("PS_DASHBOARD_SCREENSHOT")
            if keep:
                shutil.copyfile(shot, keep)

            # the job ends: the page keeps its last figures and says that the scheduler is gone
            with AdminClient(cluster.address) as admin:
                admin.shutdown("the test is over")
            wait_page(browser, "that the scheduler is gone",
                      lambda d: cell(d, "#error").startswith("the scheduler did not answer"))
            assert node_states(browser)[w.id] == ("worker", "alive")  # as last reported
        finally:
            dash.terminate()
            dash.wait(10)


@pytest.mark.cluster
def test_the_scheduler_serves_the_dashboard(fast_env: dict[str, str]) -> None:
    """``LocalCluster(dashboard=PORT)`` (``paramserver scheduler --dashboard PORT``): the page
    and its state come from the scheduler's own process, with every node and the worker's
    heartbeat figures."""
    port = free_port()
    with ps.LocalCluster(servers=2, env=fast_env, dashboard=port) as cluster, ps.connect(cluster.address) as w:
        t = w.table("s")
        t.push(KEYS, np.ones(3, np.float32)).wait()
        w.advance()
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/html")
            html = r.read().decode()
        assert "<svg id=\"ring\"" in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")

        def state() -> dict[str, Any]:
            with urllib.request.urlopen(url + "api/state", timeout=10) as r:
                return dict(json.loads(r.read()))

        last = [state()]

        def shows_worker() -> bool:
            st = last[0] = state()
            return any(x["id"] == w.id and x["iteration"] == 1 for x in st.get("workers", []))

        from test_metrics import wait_for

        wait_for("the worker's report on the dashboard", shows_worker)
        st = last[0]
        assert sorted((n["id"], n["role"], n["state"]) for n in st["nodes"]) == sorted(
            [(cluster.server_id(i), "server", "alive") for i in range(2)] + [(w.id, "worker", "alive")])
        assert st["address"] == cluster.address
        assert [(x["name"], x["keys"], x["pushes"]) for x in st["tables"]] == [("s", 3, 1)]
        with urllib.request.urlopen(url + "metrics", timeout=10) as r:
            assert "paramserver_worker_iteration" in r.read().decode()


@pytest.mark.cluster
def test_a_dashboard_port_in_use_is_said_plainly(cluster2: ps.LocalCluster, fast_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for cmd in (["dashboard", cluster2.address, "--serve", str(port)],
                    ["scheduler", "--port", "0", "--servers", "1", "--dashboard", str(port)]):
            res = subprocess.run([sys.executable, "-m", "paramserver", *cmd], capture_output=True, text=True,
                                 env={**os.environ, **fast_env}, timeout=60)
            assert res.returncode == 1, res.stderr
            assert f"cannot serve the dashboard at 127.0.0.1:{port}: Address already in use (choose another port)" \
                in res.stderr
            assert "Traceback" not in res.stderr


@pytest.mark.cluster
def test_launch_serves_the_dashboard_while_the_job_runs(fast_env: dict[str, str]) -> None:
    port = free_port()
    script = str(Path(__file__).parent / "scripts" / "dashboard_probe.py")
    res = subprocess.run([sys.executable, "-m", "paramserver", "launch", "-s", "2", "-w", "1", "--dashboard",
                          str(port), "--", sys.executable, script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **fast_env, "DASHBOARD_URL": f"http://127.0.0.1:{port}/"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "at iteration 2 with 5 pushes; live nodes: ['server', 'server', 'worker']" in res.stdout


def test_board_shows_worker_groups_from_a_real_status_body() -> None:
    """Node entries of a job with named groups carry the group as a seventh field; the board
    keeps it per worker and lists the groups (a job with only the default group lists none)."""
    from test_scheduler_groups import status_of_two_groups

    w, r, reply = status_of_two_groups()
    st = Board().update(reply)
    assert {n["id"]: n["group"] for n in st["nodes"] if n["role"] == "worker"} == {w: None, r: "serve"}
    assert st["groups"] == [{"name": "default", "size": 1, "workers": 1, "finished": 0, "ended": False},
                            {"name": "serve", "size": 2, "workers": 1, "finished": 0, "ended": False}]
    plain = Board().update({"nodes": [[5, "worker", "tcp://h:5", "h", 5, 0]], "events": [],
                            "groups": {"default": {"size": 1, "workers": {"5": 0}}}})
    assert plain["groups"] == [] and plain["nodes"][0]["group"] is None
