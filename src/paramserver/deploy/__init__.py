"""Layer 7, deploy: running a job's processes on this machine and talking to its scheduler.

:class:`LocalCluster` (a scheduler and servers as subprocesses), the process helpers that it
and ``paramserver launch`` share (:func:`start_scheduler`, :func:`spawn`, :func:`stop_all`,
...), the roles of the tasks of ``srun``/``mpirun`` (:func:`task_rank`,
:func:`role_of`), the ssh shell and placement of ``paramserver launch -H`` (:func:`spawn_remote`,
:func:`place`, ...), and :class:`AdminClient`, the short-lived operator client behind status, drain and
shutdown. It imports the roles' public surfaces only (``worker.open_workers``, the
checkpoint layout) and starts the scheduler and servers as processes, never in-process, so
``import paramserver`` loads no scheduler or server code.
"""

from ._admin import AdminClient
from ._local import LocalCluster
from ._procs import Proc, node_command, spawn, start_scheduler, stop_all, wait_all
from ._ranks import TaskRank, detect_kind, rendezvous_path, role_of, task_rank
from ._remote import Host, Placement, forwarded_env, parse_hosts, place, read_hostfile, remote_script, spawn_remote

__all__ = ["AdminClient", "Host", "LocalCluster", "Placement", "Proc", "TaskRank", "detect_kind", "forwarded_env",
           "node_command", "parse_hosts", "place", "read_hostfile", "remote_script", "rendezvous_path", "role_of",
           "spawn", "spawn_remote", "start_scheduler", "stop_all", "task_rank", "wait_all"]
