"""Every way of starting a job beyond ``paramserver launch`` on one machine, each tested for
real: ps-lite's DMLC_ROLE pattern, MPI ranks, Slurm (a single-machine slurmctld + slurmd),
ssh (OpenSSH servers inside network-namespace hosts) and the Kubernetes manifests' env.

Every job runs ``tests/scripts/train_sum.py``: each worker pushes its rank + 1 to four keys,
rank 0 checks the sums are exact (and prints them); exit code 0 only then. The commands are
those of docs/deploy.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port

pytestmark = pytest.mark.cluster

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
