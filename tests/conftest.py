"""Shared fixtures: leak checks after every test, clusters, environment for fast failure."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

# Child processes of tests detect dead peers quickly; the defaults are for production.
FAST_ENV = {"PS_HEARTBEAT_INTERVAL": "0.2", "PS_HEARTBEAT_TIMEOUT": "3", "PS_CONNECT_TIMEOUT": "20",
            "PS_UPDATER_MODULES": "user_updaters"}  # the tests' own user code


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process or a paramserver thread behind."""
    before_threads = _threads()
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 10
    while True:
        children = [p for p in me.children(recursive=True) if p.pid not in before_children and p.is_running()
                    and p.status() != psutil.STATUS_ZOMBIE]
        threads = [t for t in _threads() - before_threads if t.name.startswith("paramserver")]
        if not children and not threads:
            return
        if time.monotonic() > deadline:
            for p in children:
                p.kill()
            pytest.fail(f"left behind: processes {[(p.pid, p.cmdline()) for p in children]}, "
                        f"threads {[t.name for t in threads]}")
        time.sleep(0.05)


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Short heartbeat timeouts in this process and in the nodes it starts."""
    env = {**FAST_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def cluster2(fast_env: dict[str, str]) -> Iterator[object]:
    """A LocalCluster of 2 servers, torn down after the test."""
    import paramserver as ps

    with ps.LocalCluster(servers=2, env=fast_env) as cluster:
        yield cluster


@pytest.fixture
def worker(cluster2: object) -> Iterator[object]:
    import paramserver as ps

    w = ps.connect(cluster2.address)  # type: ignore[attr-defined]
    yield w
    w.close()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PS_LOG_LEVEL", "WARNING")
