"""The launcher and the command line, as users run them: real processes, exit codes, messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import paramserver as ps
from helpers import free_port

pytestmark = pytest.mark.cluster
HERE = Path(__file__).parent
SCRIPT = str(HERE / "scripts" / "train_sum.py")


@pytest.fixture
def marked_env(fast_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """An environment whose processes can all be found afterwards, to prove none is left."""
    marker = uuid.uuid4().hex
    env = {**os.environ, **fast_env, "PS_TEST_MARKER": marker}
    yield env
    deadline = time.monotonic() + 10
    while True:
        left = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.environ().get("PS_TEST_MARKER") == marker:
                    left.append(p)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                p.kill()
            pytest.fail(f"processes left running: {[p.cmdline() for p in left]}")
        time.sleep(0.1)


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paramserver", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_launch_runs_a_job_and_passes_success_through(marked_env: dict[str, str]) -> None:
    res = run(["launch", "-s", "2", "-w", "3", "--", sys.executable, SCRIPT], marked_env)
    assert res.returncode == 0, res.stderr
    assert "rank 0: sums [6, 6, 6, 6], expected [6, 6, 6, 6]" in res.stdout
    assert "done: 3 workers finished" in res.stderr


def test_a_failing_worker_stops_everything_with_its_code(marked_env: dict[str, str]) -> None:
    res = run(["launch", "-s", "1", "-w", "3", "--", sys.executable, SCRIPT], {**marked_env, "FAIL_RANK": "1"})
    assert res.returncode == 3
    assert "worker 1 (pid" in res.stderr and "exited with code 3; stopping the job" in res.stderr


def test_ctrl_c_stops_the_job(marked_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "paramserver", "launch", "-s", "1", "-w", "2", "--",
                             sys.executable, SCRIPT], env={**marked_env, "HANG_RANK": "0"},
                            stderr=subprocess.PIPE, text=True)
    # wait until the job is running (both workers registered), then interrupt
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        if sum(SCRIPT in " ".join(k.cmdline()) for k in kids) == 2:
            break
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted (SIGINT); stopping the job" in err


def test_dmlc_environment_alone_is_enough(marked_env: dict[str, str]) -> None:
    """ps-lite launchers set only DMLC_* names: the scheduler, servers and workers accept them."""
    env = {k: v for k, v in marked_env.items() if not k.startswith(("PS_SCHEDULER", "DMLC_"))}
    port = free_port()
    dmlc = {**env, "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_SERVER": "1",
            "DMLC_NUM_WORKER": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "paramserver", "scheduler"], env={**dmlc, "DMLC_ROLE": "scheduler"},
                              stdout=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "paramserver", "server"], env={**dmlc, "DMLC_ROLE": "server"})]
    workers = [subprocess.Popen([sys.executable, SCRIPT], env={**dmlc, "DMLC_ROLE": "worker"},
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert any("sums [3, 3, 3, 3]" in o for o in outs)
    # all workers said goodbye: the scheduler ends the job and the server follows it
    assert [p.wait(timeout=30) for p in procs] == [0, 0]


def test_status_command_shows_nodes_ranges_and_tables(cluster2: ps.LocalCluster, marked_env: dict[str, str]) -> None:
    import numpy as np

    with ps.connect(cluster2.address) as w:
        t = w.table("emb", width=4, dtype="float32")
        t.push(np.arange(10, dtype=np.uint64), np.ones((10, 4), dtype=np.float32)).wait()
        res = run(["status", cluster2.address, "--json"], marked_env)
        assert res.returncode == 0, res.stderr
        status = json.loads(res.stdout)
        roles = sorted(n[1] for n in status["nodes"])
        assert roles == ["scheduler", "server", "server", "worker"]
        assert len(status["keymap"]["ranges"]) == 2
        keys = {sid: s["tables"]["0"]["keys"] for sid, s in status["servers"].items()}
        assert sorted(keys.values()) == [0, 10]
        assert all(s["tables"]["0"]["bytes"] > 0 for s in status["servers"].values())
        text = run(["status", cluster2.address], marked_env).stdout
        assert "'emb': width 4 float32 updater sum, 10 keys" in text and "key map epoch 1" in text


def test_consistency_command_changes_tau_on_every_node(cluster2: ps.LocalCluster,
                                                      marked_env: dict[str, str]) -> None:
    with ps.connect(cluster2.address) as w:
        t = w.table("lr", dtype="float32")
        res = run(["consistency", cluster2.address, "lr", "bounded", "--tau", "3"], marked_env)
        assert res.returncode == 0, res.stderr
        assert "table 'lr' is now bounded(tau=3) on every node" in res.stdout
        assert t.policy == ps.Consistency("bounded", 3)
        status = cluster2.status()
        assert [s["tables"][str(t.id)]["consistency"] for s in status["servers"].values()] == ["bounded(tau=3)"] * 2
        res = run(["consistency", cluster2.address, "nope", "eventual"], marked_env)
        assert res.returncode == 1 and "no table named 'nope'" in res.stderr


def test_metrics_show_filter_bytes(cluster2: ps.LocalCluster, marked_env: dict[str, str]) -> None:
    import numpy as np

    from paramserver.filters import Compress

    with ps.connect(cluster2.address) as w:
        t = w.table("f", width=8, filters=[Compress("lz4", min_bytes=0)])
        t.push(np.arange(100, dtype=np.uint64), np.zeros((100, 8), np.float32)).wait()
        text = run(["metrics", cluster2.address], marked_env).stdout
    assert 'paramserver_table_keys{server="' in text and 'table="f"} 100' in text
    assert 'direction="received",filter="lz4"}' in text
    before = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("paramserver_filter_bytes_before_total") and 'filter="lz4"' in line]
    after = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("paramserver_filter_bytes_after_total") and 'filter="lz4"' in line]
    assert sum(before) == 100 * 8 + 100 * 8 * 4 and sum(after) < sum(before) / 5  # keys and values


def test_status_of_nothing_fails_clearly(marked_env: dict[str, str]) -> None:
    port = free_port()
    res = run(["status", f"127.0.0.1:{port}", "--timeout", "0.5"], marked_env)
    assert res.returncode == 1
    assert f"no scheduler answered at tcp://127.0.0.1:{port} within 0.5 s" in res.stderr


def test_config_command_lists_every_setting(marked_env: dict[str, str]) -> None:
    from paramserver._config import SETTINGS

    res = run(["config"], {**marked_env, "PS_TIMEOUT": "12"})
    assert res.returncode == 0
    for s in SETTINGS:
        assert s.env in res.stdout
    assert "PS_TIMEOUT               12.0" in res.stdout
