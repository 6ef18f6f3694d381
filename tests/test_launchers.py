"""Every way of starting a job beyond ``paramserver launch`` on one machine, each tested for
real: ps-lite's DMLC_ROLE pattern, MPI ranks, Slurm (a single-machine slurmctld + slurmd),
ssh (OpenSSH servers inside network-namespace hosts) and the Kubernetes manifests' env.

Every job runs ``tests/scripts/train_sum.py``: each worker pushes its rank + 1 to four keys,
rank 0 checks the sums are exact (and prints them); exit code 0 only then. The commands are
those of docs/deploy.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import free_port
from netbed import Host, NetBed, netbed, node_env, paramserver_cmd, wait_for

pytestmark = pytest.mark.cluster
__all__ = ["netbed"]  # the fixture

PS = paramserver_cmd()

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRAIN = str(HERE / "scripts" / "train_sum.py")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "PS_", "SLURM_", "OMPI_", "PMI_"))}
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(HERE), os.environ.get("PYTHONPATH")]))
    env.update({"PYTHONPATH": path, "PS_HEARTBEAT_INTERVAL": "0.2", "PS_HEARTBEAT_TIMEOUT": "5",
                "PS_CONNECT_TIMEOUT": "60", **extra})
    return env


def _sums_line(out: str, workers: int) -> None:
    want = [workers * (workers + 1) // 2] * 4
    assert f"rank 0: sums {want}, expected {want}" in out, out


def test_dmlc_role_five_plain_processes_make_one_job() -> None:
    """ps-lite's tests/local.sh: the same ``python train.py`` as scheduler, 2 servers and 2
    workers, roles and sizes from DMLC_*; every process exits 0 when the job ends."""
    base = _env(DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(free_port()), DMLC_NUM_SERVER="2",
                DMLC_NUM_WORKER="2")
    roles = ["scheduler", "server", "server", "worker", "worker"]
    procs = [subprocess.Popen([sys.executable, TRAIN], env={**base, "DMLC_ROLE": role}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for role in roles]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=180)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0] * 5, "\n---\n".join(outs)
    _sums_line("".join(outs[3:]), 2)
    assert "rank 0: sums" not in "".join(outs[:3])  # the scheduler and servers never trained


# ---------------------------------------------------------------------------------- ssh
def test_hosts_and_placement_of_the_ssh_launcher(tmp_path: Path) -> None:
    from paramserver import InvalidArgument
    from paramserver.deploy import Host as Machine
    from paramserver.deploy import forwarded_env, parse_hosts, place, read_hostfile

    assert parse_hosts("a,b:2") == [Machine("a"), Machine("b", 2)]
    f = tmp_path / "hosts"
    f.write_text("# the cluster\na slots=1\nb:3\n\nc  # no limit\n")
    hosts = read_hostfile(str(f))
    assert hosts == [Machine("a", 1), Machine("b", 3), Machine("c")]
    p = place(hosts, 2, 4)  # servers round-robin, then workers; a has one slot only
    assert p.servers == ("a", "b") and p.workers == ("c", "b", "c", "b")
    with pytest.raises(InvalidArgument, match="need 5 slots; the hosts have 4"):
        place([Machine("a", 1), Machine("b", 3)], 2, 3)
    f.write_text("a slots=x\n")
    with pytest.raises(InvalidArgument, match="line 1"):
        read_hostfile(str(f))
    env = {"PS_KEYS": "/k", "DMLC_ROLE": "worker", "HOME": "/root", "PYTHONPATH": "/src", "MINE": "1"}
    assert forwarded_env(env, ["MINE"]) == {"PS_KEYS": "/k", "DMLC_ROLE": "worker", "PYTHONPATH": "/src", "MINE": "1"}


SSHD = "/usr/sbin/sshd"


def _ssh_setup(tmp: Path, ips: list[str]) -> Path:
    """A throwaway client key, host key, sshd and ssh configs; returns the ssh config."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("id_ed25519", "host_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)], check=True, timeout=60)
    (tmp / "authorized_keys").write_text((tmp / "id_ed25519.pub").read_text())
    for ip in ips:
        (tmp / f"sshd_{ip}.conf").write_text(textwrap.dedent(f"""\
            Port 22
            ListenAddress {ip}
            HostKey {tmp}/host_ed25519
            AuthorizedKeysFile {tmp}/authorized_keys
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            PidFile none
            """))
    config = tmp / "ssh_config"
    config.write_text(textwrap.dedent(f"""\
        Host *
          User root
          IdentityFile {tmp}/id_ed25519
          IdentitiesOnly yes
          UserKnownHostsFile /dev/null
          StrictHostKeyChecking no
          LogLevel ERROR
        """))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    return config


def _only_sshd(host: Host) -> bool:
    """True once nothing but sshd runs in ``host`` (every node the launcher started is gone)."""
    names = []
    for pid in host.pids():
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    return all(n == "sshd" for n in names)


def test_ssh_launch_runs_servers_and_workers_on_other_hosts(netbed: Callable[..., NetBed], tmp_path: Path) -> None:
    """``paramserver launch -H host1,host2 -s 2 -w 2 --ssh 'ssh -F CONFIG' -- python train.py``
    on host 0, real OpenSSH servers on hosts 1 and 2: exact sums, output prefixed by role and
    host; a failing worker stops every remote node and its code is the launcher's; so does Ctrl-C."""
    if shutil.which(SSHD) is None or shutil.which("ssh") is None:
        pytest.skip("needs openssh-server and openssh-client (.ci/packages.txt; make sysdeps)")
    bed = netbed(3)
    config = _ssh_setup(tmp_path / "ssh", [bed[1].ip, bed[2].ip])
    for h in (bed[1], bed[2]):
        h.start("sshd", [SSHD, "-D", "-e", "-f", str(tmp_path / "ssh" / f"sshd_{h.ip}.conf")])
    keys = tmp_path / "keys"
    subprocess.run([*PS, "keygen", str(keys)], check=True, capture_output=True, timeout=60, env=node_env())
    for h in (bed[1], bed[2]):  # sshd is up: a command runs over ssh
        wait_for(f"sshd on {h.ip}", lambda h=h: bed[0].run(["ssh", "-F", str(config), h.ip, "true"], timeout=30)
                 .returncode == 0, timeout=60, every=0.5)
    launch = [*PS, "launch", "-H", f"{bed[1].ip},{bed[2].ip}", "-s", "2", "-w", "2", "--ssh", f"ssh -F {config}",
              "--keys", str(keys), "-x", "FAIL_RANK", "-x", "HANG_RANK", "--", sys.executable, TRAIN]
    env = node_env(PS_LOG_LEVEL="WARNING")
    res = bed[0].run(launch, env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _sums_line(res.stdout, 2)
    assert f"[worker 0@{bed[1].ip}] rank 0: sums" in res.stdout  # worker 0 ran on host 1, its output prefixed
    assert f"{bed[1].ip}, {bed[2].ip} over ssh" in res.stderr
    for h in (bed[1], bed[2]):
        wait_for(f"the nodes on {h.ip} to exit", lambda h=h: _only_sshd(h), timeout=60)
    # a worker fails: its code is the launcher's, and every remote node is stopped
    res = bed[0].run(launch, {**env, "FAIL_RANK": "1"}, timeout=300)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "worker 1 on" in res.stderr and "exited with code 3" in res.stderr, res.stderr
    for h in (bed[1], bed[2]):
        wait_for(f"the nodes on {h.ip} to be stopped", lambda h=h: _only_sshd(h), timeout=60)
    # Ctrl-C while a worker hangs: everything stops, exit code 130
    proc = bed[0].start("launch", launch, {**env, "HANG_RANK": "0"})
    wait_for("a worker running on host 1 or 2", lambda: _train_running(bed), timeout=120)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, bed[0].log("launch")
    for h in (bed[1], bed[2]):
        wait_for(f"the nodes on {h.ip} to be stopped", lambda h=h: _only_sshd(h), timeout=60)


def _train_running(bed: NetBed) -> bool:
    """True once a worker on hosts 1-2 has been running the training script for a while (it
    hangs at HANG_RANK after its first barrier)."""
    for h in (bed[1], bed[2]):
        for pid in h.pids():
            try:
                if "train_sum.py" in Path(f"/proc/{pid}/cmdline").read_text():
                    return True
            except OSError:
                pass
    return False


# ---------------------------------------------------------------------------------- MPI
def _run_tasks(n: int, task_env: Callable[[int], dict[str, str]], args: list[str], cwd: Path,
               extra: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Start ``n`` copies of ``paramserver launch ARGS -- python train.py`` as a task
    launcher would (rank ``i``'s variables from ``task_env(i)``); their codes and output."""
    procs = [subprocess.Popen([*PS, "launch", *args, "--", sys.executable, TRAIN], cwd=cwd, text=True,
                              env={**_env(**(extra or {})), **task_env(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(n)]
    try:
        return [(p.wait(timeout=180), p.communicate(timeout=30)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.parametrize("kind", ["ompi", "pmi"])
def test_mpi_ranks_make_one_job(kind: str, tmp_path: Path) -> None:
    """``mpirun -np 5 paramserver launch --mpi -s 2 -- python train.py``, the tasks' ranks
    as Open MPI (OMPI_COMM_WORLD_*) or MPICH/Intel MPI's PMI (PMI_RANK/PMI_SIZE) set them."""
    def task_env(i: int) -> dict[str, str]:
        if kind == "ompi":
            return {"OMPI_COMM_WORLD_RANK": str(i), "OMPI_COMM_WORLD_SIZE": "5", "OMPI_COMM_WORLD_LOCAL_SIZE": "5"}
        return {"PMI_RANK": str(i), "PMI_SIZE": "5", "MPI_LOCALNRANKS": "5"}

    results = _run_tasks(5, task_env, ["--mpi", "-s", "2"], tmp_path)
    assert [code for code, _ in results] == [0] * 5, "\n---\n".join(out for _, out in results)
    _sums_line("".join(out for _, out in results[3:]), 2)
    assert "the scheduler on 127.0.0.1 for 2 servers and 2 workers" in results[0][1]
    assert not list(tmp_path.glob(".paramserver-*"))  # the rendezvous file is gone with the job


# ---------------------------------------------------------------------------------- Slurm
SLURM_CONF = """\
ClusterName=paramserver
SlurmctldHost={name}({ip})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmdParameters=config_overrides
NodeName={name} NodeAddr={ip} CPUs=8 State=UNKNOWN
PartitionName=debug Nodes={name} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""

# slurmd wants cgroups: `ip netns exec` mounts a fresh /sys without them, so the host's v1
# controllers are mounted again, in the mount namespace of this one command only
SLURMD = """\
mount -t tmpfs none /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c none /sys/fs/cgroup/$c 2>/dev/null
done
exec slurmd -D
"""


def _slurm(bed: NetBed, d: Path) -> dict[str, str]:
    """munged, slurmctld and slurmd on host 0 of ``bed`` (one node, 8 CPUs); the env of a
    Slurm client. Skips, naming the cause, where they cannot start."""
    for tool in ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sinfo"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (munge, slurmctld, slurmd, slurm-client in .ci/packages.txt; make sysdeps)")
    import socket

    h = bed[0]
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    subprocess.run(["mungekey", "-c", "-f", "-k", str(d / "munge.key")], check=True, capture_output=True, timeout=60)
    (d / "munge.key").chmod(0o600)
    (d / "slurm.conf").write_text(SLURM_CONF.format(name=socket.gethostname(), ip=h.ip, d=d))
    (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
    (d / "slurmd.sh").write_text(SLURMD)
    env = {**_env(), "SLURM_CONF": str(d / "slurm.conf")}
    h.start("munged", ["munged", "-F", "-f", "-S", str(d / "munge.socket"), f"--key-file={d}/munge.key",
                       f"--log-file={d}/munged.log", f"--pid-file={d}/munged.pid", f"--seed-file={d}/munge.seed"], env)
    h.start("slurmctld", ["slurmctld", "-D", "-c", "-i"], env)
    h.start("slurmd", ["sh", str(d / "slurmd.sh")], env)

    def idle() -> bool:
        for name, proc, _ in h.procs:
            if proc.poll() is not None:
                log = (d / f"{name}.log").read_text()[-600:] if (d / f"{name}.log").exists() else h.log(name)[-600:]
                pytest.skip(f"{name} cannot run here (exit {proc.returncode}): {log}")
        res = h.run(["sinfo", "-h", "-o", "%T"], env, timeout=30)
        return res.stdout.strip() == "idle"

    try:
        wait_for("the Slurm node to be idle", idle, timeout=90, every=0.5)
    except AssertionError:
        pytest.skip(f"Slurm did not come up: {(d / 'slurmd.log').read_text()[-600:]}")
    return env


def test_slurm_srun_tasks_make_one_job(netbed: Callable[..., NetBed], tmp_path: Path) -> None:
    """A real single-machine Slurm (munged, slurmctld, slurmd): ``srun -n 5 paramserver
    launch --slurm -s 2 -- python train.py`` makes one job; srun's code is the job's."""
    bed = netbed(1)
    env = _slurm(bed, tmp_path / "slurm")
    job = tmp_path / "job"
    job.mkdir()
    srun = ["srun", "-n", "5", "--overcommit", f"--chdir={job}", *PS, "launch", "--slurm", "-s", "2", "--",
            sys.executable, TRAIN]
    res = bed[0].run(srun, env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    _sums_line(res.stdout, 2)
    assert "slurm task 0 of 5: the scheduler on 127.0.0.1 for 2 servers and 2 workers" in res.stderr
    # a failing worker: the job ends with an error and srun reports a failure
    res = bed[0].run(srun, {**env, "FAIL_RANK": "1"}, timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert not list(job.glob(".paramserver-*"))
