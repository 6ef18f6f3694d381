"""Jobs started by a task launcher (Slurm's ``srun``, MPI's ``mpirun``): one role per task.

``srun -n N paramserver launch --slurm -s S -- python train.py`` (or ``mpirun -np N
paramserver launch --mpi ...``) runs the same command as N tasks. Each task reads its rank
and the task count from the launcher's environment (:func:`task_rank`: SLURM_PROCID /
SLURM_NTASKS, OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE, PMI_RANK / PMI_SIZE) and
:func:`role_of` gives it its part: task 0 schedules, tasks 1..S serve, the other N - 1 - S
train (worker rank = task - 1 - S). The scheduler's address goes from task 0 to the others
through a rendezvous file in a directory every task sees (the job's working directory by
default), named after the job (:func:`rendezvous_path`), so two jobs never read each
other's. Pure functions; the shell that runs them is ``cli/_ranked.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["KINDS", "TaskRank", "detect_kind", "rendezvous_path", "role_of", "task_rank"]

#: Task launchers and the variables they set: rank, size, job ids, and the tasks on this
#: machine (Slurm: the step's node count instead, 1 when every task is here).
KINDS: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "slurm": ("SLURM_PROCID", "SLURM_NTASKS", ("SLURM_JOB_ID", "SLURM_STEP_ID"), "SLURM_STEP_NUM_NODES"),
    "ompi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", ("OMPI_MCA_ess_base_jobid",),
             "OMPI_COMM_WORLD_LOCAL_SIZE"),
    "pmi": ("PMI_RANK", "PMI_SIZE", ("PMI_JOBID", "PMIX_NAMESPACE"), "MPI_LOCALNRANKS"),
}


@dataclass(frozen=True)
class TaskRank:
    """This task's place in the job: ``rank`` of ``size`` tasks, started by ``kind``."""

    kind: str
    rank: int
    size: int
    job: str  # an id the tasks of one job share ("" if the launcher gives none)
    single_node: bool  # every task on this machine (False when the launcher does not say)


def detect_kind(env: Mapping[str, str]) -> str | None:
    """The task launcher whose rank variable is set (Slurm first), or None."""
    for kind, (rank, *_) in KINDS.items():
        if env.get(rank, "") != "":
            return kind
    return None


def task_rank(env: Mapping[str, str], kind: str) -> TaskRank:
    """Read this task's rank and the task count of launcher ``kind`` ("slurm", "ompi",
    "pmi", or "mpi" for whichever MPI's variables are set).

    Raises
    ------
    ConfigError
        The variables are missing or not numbers (the message names them and how to start
        the tasks).
    """
    if kind == "mpi":
        kind = "ompi" if env.get("OMPI_COMM_WORLD_RANK", "") != "" else "pmi"
    if kind not in KINDS:
        raise ConfigError(f"unknown task launcher {kind!r}; expected one of slurm, mpi")
    rank_var, size_var, job_vars, nodes_var = KINDS[kind]
    how = ("srun -n N paramserver launch --slurm ..." if kind == "slurm"
           else "mpirun -np N paramserver launch --mpi ...")
    try:
        rank, size = int(env[rank_var]), int(env[size_var])
    except KeyError as exc:
        raise ConfigError(f"{exc.args[0]} is not set: this is not a task of a {kind} job; start one with {how}") \
            from None
    except ValueError:
        raise ConfigError(f"{rank_var}={env[rank_var]!r} or {size_var}={env[size_var]!r} is not a number") from None
    if not 0 <= rank < size:
        raise ConfigError(f"{rank_var}={rank} is not in [0, {size_var}={size})")
    job = ".".join(env[v] for v in job_vars if env.get(v))
    here = env.get(nodes_var, "")
    single = here == "1" if kind == "slurm" else here == str(size)
    return TaskRank(kind, rank, size, job, single)


def role_of(task: TaskRank, servers: int) -> tuple[str, int]:
    """``("scheduler", 0)``, ``("server", i)`` or ``("worker", rank)`` for this task.

    Raises
    ------
    ConfigError
        Fewer than ``servers + 2`` tasks (a scheduler, the servers and at least one worker).
    """
    if servers < 1:
        raise ConfigError(f"-s must be >= 1, got {servers}")
    if task.size < servers + 2:
        raise ConfigError(f"{task.size} tasks cannot hold a scheduler, {servers} servers and a worker: "
                          f"start at least {servers + 2} tasks (srun -n / mpirun -np) or fewer servers (-s)")
    if task.rank == 0:
        return "scheduler", 0
    if task.rank <= servers:
        return "server", task.rank - 1
    return "worker", task.rank - 1 - servers


def rendezvous_path(task: TaskRank, directory: str) -> str:
    """The file through which task 0 tells the others the scheduler's address."""
    name = f".paramserver-{task.kind}-{task.job or 'job'}.addr"
    return os.path.join(directory, name)
