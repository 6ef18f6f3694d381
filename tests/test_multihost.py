"""Jobs across hosts: network namespaces on one bridge (``netbed.py``), nodes started with
the commands of docs/deploy.md, links cut, healed and slowed under them.

Host 0 runs the scheduler (port 9000 on its own address), the next hosts one server each,
the last the workers (``workloads.py``: known pushes, so the final state is exact). Every
node holds the cluster's CURVE keys (``paramserver keygen``), as nodes on real addresses
must. Needs root and iproute2; skips otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import workloads
from netbed import PORT, Host, NetBed, netbed, node_env, paramserver_cmd, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
__all__ = ["netbed"]  # the fixture

PS = paramserver_cmd()
WORKLOAD = str(Path(workloads.__file__).resolve())
ROUNDS = 60


class Job:
    """A scheduler on host 0 and one server on each of ``server_hosts``."""

    def __init__(self, bed: NetBed, keys: Path, server_hosts: list[int], replicas: int = 1,
                 env: dict[str, str] | None = None, server_env: dict[int, dict[str, str]] | None = None) -> None:
        self.bed = bed
        self.keys = keys
        self.env = node_env(PS_KEYS=str(keys), **(env or {}))
        self.address = f"tcp://{bed[0].ip}:{PORT}"
        self.scheduler = bed[0].start("scheduler", [*PS, "scheduler", "--host", bed[0].ip, "--port", str(PORT),
                                                    "--servers", str(len(server_hosts)), "--replicas", str(replicas),
                                                    "--keys", str(keys)], self.env)
        self.servers = {i: bed[i].start("server", [*PS, "server", "--scheduler", f"{bed[0].ip}:{PORT}",
                                                   "--keys", str(keys)], {**self.env, **(server_env or {}).get(i, {})})
                        for i in server_hosts}

    def status(self, host: Host | None = None) -> dict:
        res = (host or self.bed[0]).run([*PS, "status", self.address, "--json", "--keys", str(self.keys)], self.env)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def workers(self, host: Host, ranks: int, rounds: int = ROUNDS) -> list[subprocess.Popen[str]]:
        return [host.start(f"worker{r}", [sys.executable, WORKLOAD, self.address, str(r), str(rounds)], self.env)
                for r in range(ranks)]

    def check(self, host: Host, ranks: int, rounds: int = ROUNDS) -> None:
        """The final state is exactly what ``ranks`` workers of ``rounds`` pushed."""
        code = f"import workloads; workloads.check_final_state({self.address!r}, {ranks}, {rounds})"
        res = host.run([sys.executable, "-c", code], self.env, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr

    def shutdown(self) -> None:
        res = self.bed[0].run([*PS, "shutdown", self.address, "--keys", str(self.keys)], self.env)
        assert res.returncode == 0, res.stderr
        assert self.scheduler.wait(timeout=60) == 0, self.bed[0].log("scheduler")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "keys"
    subprocess.run([*PS, "keygen", str(path)], check=True, capture_output=True, timeout=60, env=node_env())
    return path


def _done(procs: list[subprocess.Popen[str]], host: Host, timeout: float = 300) -> None:
    for r, p in enumerate(procs):
        assert p.wait(timeout=timeout) == 0, host.log(f"worker{r}")


def test_a_job_across_four_hosts_has_exact_sums(netbed: Callable[..., NetBed], keys: Path) -> None:
    """Scheduler on host 0, servers on hosts 1 and 2, two workers on host 3."""
    bed = netbed(4)
    job = Job(bed, keys, [1, 2])
    procs = job.workers(bed[3], 2)
    _done(procs, bed[3])
    job.check(bed[0], 2)
    status = job.status()
    addresses = sorted(address for _, role, address, *_ in status["nodes"] if role == "server")
    assert addresses[0].startswith(f"tcp://{bed[1].ip}:") and addresses[1].startswith(f"tcp://{bed[2].ip}:")
    job.shutdown()
    for i, p in job.servers.items():
        assert p.wait(timeout=60) == 0, bed[i].log("server")


def _pushes(status: dict) -> int:
    return sum(t["pushes"] for s in status["servers"].values() if "tables" in s for t in s["tables"].values())


def _replicated_job(bed: NetBed, keys: Path, server_env: dict[int, dict[str, str]] | None = None) -> Job:
    """Scheduler on host 0, servers on hosts 1-3 with two copies of every key range."""
    return Job(bed, keys, [1, 2, 3], replicas=2, server_env=server_env)


def test_sigkill_of_a_server_host_loses_no_acknowledged_push(netbed: Callable[..., NetBed], keys: Path) -> None:
    bed = netbed(5)
    job = _replicated_job(bed, keys)
    procs = job.workers(bed[4], 2, rounds=200)
    wait_for("100 pushes on the servers", lambda: _pushes(job.status()) >= 100)
    bed[1].kill()  # the machine dies: every process on it, at once
    _done(procs, bed[4])
    job.check(bed[4], 2, rounds=200)
    status = job.status()
    assert status["failovers"] == 1 and len(status["servers"]) == 2
    job.shutdown()


def test_a_partitioned_server_host_is_fenced_when_it_heals(netbed: Callable[..., NetBed], keys: Path) -> None:
    """Host 1 is cut off while workers push: the scheduler declares its server dead and the
    replicas take over (a new key map epoch). When the link heals, the stale master does not
    come back as a master: the scheduler refuses it (it is no longer a member), any
    replication it still sends is refused by epoch, and the sums are exact."""
    bed = netbed(5)
    # host 1's server waits 10 minutes for the scheduler before giving up on its own: it is
    # still a (stale) master when the link heals, the case fencing is for
    job = _replicated_job(bed, keys, server_env={1: {"PS_HEARTBEAT_TIMEOUT": "600"}})
    procs = job.workers(bed[4], 2, rounds=200)
    wait_for("100 pushes on the servers", lambda: _pushes(job.status()) >= 100)
    epoch = job.status()["keymap"]["epoch"]
    bed[1].cut()
    stale = wait_for("the scheduler to declare host 1's server dead", lambda: job.status()["failovers"] == 1)
    assert stale
    after = job.status()
    assert after["keymap"]["epoch"] > epoch and len(after["servers"]) == 2
    assert not any(address.startswith(f"tcp://{bed[1].ip}:") for _, role, address, *_ in after["nodes"])
    bed[1].heal()
    # the stale server learns that it is dead and exits with an error; it never masters again
    assert job.servers[1].wait(timeout=120) != 0
    assert "not a member" in bed[1].log("server"), bed[1].log("server")
    _done(procs, bed[4])
    job.check(bed[4], 2, rounds=200)
    final = job.status()
    print("replication refused by epoch (fenced):", sum(s.get("fenced", 0) for s in final["servers"].values()))
    assert len(final["servers"]) == 2 and final["failovers"] == 1
    assert not any(address.startswith(f"tcp://{bed[1].ip}:") for _, role, address, *_ in final["nodes"])
    job.shutdown()


def test_a_job_over_a_link_with_50ms_delay_and_1pct_loss_has_exact_sums(netbed: Callable[..., NetBed],
                                                                        keys: Path) -> None:
    """The workers' host reaches everything through a link that delays every frame by 50 ms
    and loses 1% of them, each way (tc netem, or the bed's user-space shaper)."""
    bed = netbed(4, shaped={3})
    bed[3].slow(50, 1)
    job = Job(bed, keys, [1, 2])
    procs = job.workers(bed[3], 2, rounds=30)
    _done(procs, bed[3])
    job.check(bed[3], 2, rounds=30)
    job.shutdown()


CUT_OFF = textwrap.dedent("""
    import sys, time, numpy as np, paramserver as ps
    with ps.connect(sys.argv[1]) as w:
        t = w.table("t", dtype="int64")
        keys = np.array([1, 2**63 + 1], dtype=np.uint64)  # one key on each server
        t.push(keys, np.ones(2, dtype=np.int64)).wait()
        print("pushed", flush=True)
        sys.stdin.readline()  # the test cuts this host off from every server
        start = time.monotonic()
        try:
            t.pull(keys, timeout=5)
        except ps.PSError as exc:
            print(f"error after {time.monotonic() - start:.1f} s: {type(exc).__name__}: {exc}", flush=True)
        else:
            print("no error", flush=True)
""")


def test_a_worker_cut_off_from_every_server_gets_a_clear_error_within_its_timeout(
        netbed: Callable[..., NetBed], keys: Path) -> None:
    bed = netbed(4)
    job = Job(bed, keys, [1, 2])
    worker = bed[3].start("worker", [sys.executable, "-c", CUT_OFF, job.address], job.env, stdin=subprocess.PIPE)
    wait_for("the first push", lambda: "pushed" in bed[3].log("worker") or worker.poll() is not None)
    bed[3].cut_from(bed[1])
    bed[3].cut_from(bed[2])  # the scheduler on host 0 still answers: only the servers are gone
    assert worker.stdin is not None
    worker.stdin.write("\n")
    worker.stdin.close()
    assert worker.wait(timeout=120) == 0, bed[3].log("worker")
    out = bed[3].log("worker")
    assert "error after" in out, out
    line = out.split("error after", 1)[1]
    assert float(line.split()[0]) < 30  # bounded by the timeout, never a hang
    print(line.strip())
    assert "RequestTimeout" in line and "5 s" in line
    bed[3].heal_from(bed[1])
    bed[3].heal_from(bed[2])
    job.shutdown()


def test_doctor_says_what_is_wrong_before_a_node_hangs(netbed: Callable[..., NetBed], keys: Path) -> None:
    """``paramserver doctor ADDRESS`` from host 3: all well; then without the keys; then with
    host 2's server cut off from host 3 (the scheduler still reaches it: the classic hang of
    a server advertising an address workers cannot reach); then a name that does not resolve."""
    bed = netbed(4)
    job = Job(bed, keys, [1, 2])
    wait_for("both servers registered", lambda: len(job.status()["servers"]) == 2)
    doctor = [*PS, "doctor", f"{bed[0].ip}:{PORT}", "--timeout", "5"]
    res = bed[3].run(doctor, job.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all checks passed" in res.stdout and f"advertises {bed[3].ip}" in res.stdout, res.stdout
    assert f"server {bed[2].ip}" not in res.stdout and f"at tcp://{bed[2].ip}:" in res.stdout
    assert "scheduler runs paramserver" in res.stdout
    # no keys on this side: the port answers but registration cannot succeed
    res = bed[3].run(doctor, {k: v for k, v in job.env.items() if k != "PS_KEYS"})
    assert res.returncode == 1
    assert "FAIL registration" in res.stdout and "PS_KEYS" in res.stdout, res.stdout
    # host 2's server unreachable from host 3 only
    bed[3].cut_from(bed[2])
    res = bed[3].run(doctor, job.env)
    assert res.returncode == 1, res.stdout
    line = next(x for x in res.stdout.splitlines() if x.startswith("FAIL") and "servers" in x)
    assert f"advertises tcp://{bed[2].ip}:" in line and "PS_HOST" in line, res.stdout
    bed[3].heal_from(bed[2])
    res = bed[3].run([*PS, "doctor", "no-such-host.invalid:9000"], job.env)
    assert res.returncode == 1 and "FAIL name" in res.stdout and "cannot resolve" in res.stdout, res.stdout
    # the start-up log says what each node bound and advertises
    assert f"server bound tcp://{bed[1].ip}:" in bed[1].log("server")
    job.shutdown()

