"""Failover with default settings: how long a push waits when a server crashes, is cut off, or stalls.

Three servers with ``replicas=2`` and nothing tuned (the default heartbeats, probe and
timeouts); two workers push 64 keys spread over the whole key space (every server masters
a part), each waiting for every push. In every trial one server is hit at a random moment:

* **(a) crash**: SIGKILL. The peers' broken connections make the scheduler probe it (a TCP
  connection: refused) and fail it over at once.
* **(b) partition**: a silent cut. Each server runs on a host of its own (network
  namespaces joined by a bridge; the scheduler and the workers on a fourth); the victim's
  link is set down, so nothing is refused or reset: only the missed heartbeats and a probe
  that does not connect tell. Needs root and iproute2; skipped otherwise.
* **(c) stall**: SIGSTOP for 3 s, then SIGCONT. The server misses its heartbeats but its
  address accepts connections: it must not be declared dead (no failover).

Measured per trial: the longest wait of any push after the fault (``end - max(start,
fault)`` over the pushes that ended after it). Reported over the trials: p50 and max, beside
the paper's 0.8 s. Every trial compares the final values with a reference of every
acknowledged push; a failed or inexact trial is reported, never dropped.

Run: ``python benchmarks/bench_failover.py [--trials N] [--only a,b,c]``; writes
benchmarks/results/failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import write

PAPER_FAILOVER_S = 0.8
N_KEYS = 64
WORKERS = 2
STALL_S = 3.0
SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------------------- pushing
class Pushers:
    """``WORKERS`` workers in this process, each pushing its own keys synchronously and
    recording (start, end) of every push; :meth:`finish` checks the final values."""

    def __init__(self, address: str, seed: int) -> None:
        self.address = address
        self.stop = threading.Event()
        self.spans: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self.mismatched = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(seed * 10 + i,), daemon=True) for i in range(WORKERS)]
        self._ready = threading.Barrier(WORKERS + 1)

    def start(self, warm: float = 0.5) -> None:
        for th in self._threads:
            th.start()
        self._ready.wait(timeout=120)
        time.sleep(warm)

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with ps.connect(self.address, timeout=60) as w:
                t = w.table("failover", width=1, dtype="float64")
                keys = np.unique(rng.integers(0, 2**64 - 1, N_KEYS, dtype=np.uint64, endpoint=True))
                ref = np.zeros(len(keys))
                self._ready.wait(timeout=120)
                while not self.stop.is_set():
                    v = rng.integers(1, 10, len(keys)).astype(np.float64)
                    start = time.monotonic()
                    t.push(keys, v).wait(timeout=60)
                    end = time.monotonic()
                    ref += v
                    with self._lock:
                        self.spans.append((start, end))
                got = np.asarray(t.pull(keys, timeout=60)).reshape(-1)
                with self._lock:
                    self.mismatched += int(np.count_nonzero(got != ref))
        except Exception as exc:
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            if self._ready.n_waiting:
                self._ready.abort()

    def finish(self, fault: float) -> dict[str, Any]:
        self.stop.set()
        for th in self._threads:
            th.join(timeout=120)
        after = [end - max(start, fault) for start, end in self.spans if end > fault]
        return {"max_wait": max(after) if after else None, "pushes": len(self.spans),
                "mismatched_keys": self.mismatched, "errors": self.errors,
                "ok": not self.errors and self.mismatched == 0 and bool(after)}


def pusher_main(address: str, seed: int) -> None:
    """The workers of a partition trial, run inside the workers' namespace: push until a
    line "FAULT <monotonic time>" and then "STOP" arrive on stdin; print the result."""
    p = Pushers(address, seed)
    p.start()
    print("READY", flush=True)
    fault = 0.0
    for line in sys.stdin:
        if line.startswith("FAULT"):
            fault = float(line.split()[1])
        elif line.startswith("STOP"):
            break
    print(json.dumps(p.finish(fault)), flush=True)


# ---------------------------------------------------------------------------- (a) and (c)
def local_trial(kind: str, victim: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"kind": kind, "victim": victim, "ok": False}
    cluster = None
    try:
        cluster = ps.LocalCluster(servers=3, replicas=2, env={"PS_LOG_LEVEL": "ERROR"}, log_level="ERROR")
        p = Pushers(cluster.address, seed)
        p.start(warm=float(rng.uniform(0.3, 0.8)))
        pid = cluster.server_pids[victim]
        fault = time.monotonic()
        if kind == "crash":
            os.kill(pid, signal.SIGKILL)
            time.sleep(2.0)
        else:
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(STALL_S)
            finally:
                os.kill(pid, signal.SIGCONT)
            time.sleep(1.0)
        out.update(p.finish(fault))
        status = cluster.status()
        out["failovers"] = status["failovers"]
        if kind == "stall" and status["failovers"]:
            out["ok"] = False
            out["errors"] = [*out.get("errors", []), "the stopped server was declared dead"]
    except Exception as exc:
        out["errors"] = [f"{type(exc).__name__}: {exc}"]
    finally:
        if cluster is not None:
            cluster.close()
    return out


# ---------------------------------------------------------------------------- (b)
class Hosts:
    """A hub namespace with a bridge and four host namespaces on it (10.213.0.1-4); the
    scheduler and workers on the first, one server on each other. Removed on close."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.hub = f"psfh{tag}"
        self.hosts = [f"psf{i}{tag}" for i in range(4)]
        self.ips = [f"10.213.0.{i + 1}" for i in range(4)]
        self.devs = [f"psfv{i}{tag}" for i in range(4)]  # the host end of each veth (its peer: ...b)
        self._ip("netns", "add", self.hub)
        try:
            self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.hub, "link", "set", "br0", "up")
            for ns, ip, dev in zip(self.hosts, self.ips, self.devs, strict=True):
                self._ip("netns", "add", ns)
                self._ip("link", "add", dev, "type", "veth", "peer", "name", dev + "b")
                self._ip("link", "set", dev, "netns", ns)
                self._ip("link", "set", dev + "b", "netns", self.hub)
                self._ip("-n", self.hub, "link", "set", dev + "b", "master", "br0")
                self._ip("-n", self.hub, "link", "set", dev + "b", "up")
                self._ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                self._ip("-n", ns, "link", "set", dev, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def cut(self, i: int, up: bool = False) -> None:
        """Set host ``i``'s link down (silently: no reset, packets are lost) or up again."""
        self._ip("-n", self.hosts[i], "link", "set", self.devs[i], "up" if up else "down")

    def run(self, i: int, *cmd: str, stdin: bool = False) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PS_", "DMLC_"))}
        env.update({"PYTHONPATH": SRC, "PS_LOG_LEVEL": "ERROR", "PS_INSECURE": "1"})
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[i], *cmd], env=env, text=True,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def close(self) -> None:
        for ns in [*self.hosts, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def partition_trial(hosts: Hosts, victim: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"kind": "partition", "victim": victim, "ok": False}
    procs: list[subprocess.Popen[str]] = []
    try:
        sched = hosts.run(0, sys.executable, "-m", "paramserver", "scheduler", "--host", hosts.ips[0],
                          "--servers", "3", "--replicas", "2")
        procs.append(sched)
        assert sched.stdout is not None
        address = sched.stdout.readline().strip()
        if not address.startswith("tcp://"):
            raise RuntimeError(f"the scheduler did not start: {sched.stderr.read() if sched.stderr else ''}")
        for i in (1, 2, 3):
            procs.append(hosts.run(i, sys.executable, "-m", "paramserver", "server", "--scheduler", address,
                                   "--host", hosts.ips[i]))
        pusher = hosts.run(0, sys.executable, __file__, "--pusher", address, "--seed", str(seed), stdin=True)
        procs.append(pusher)
        assert pusher.stdout is not None and pusher.stdin is not None
        line = pusher.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the workers did not start: {pusher.stderr.read() if pusher.stderr else ''}")
        time.sleep(float(rng.uniform(0.3, 0.8)))
        fault = time.monotonic()  # CLOCK_MONOTONIC is one clock for every namespace
        hosts.cut(1 + victim)
        pusher.stdin.write(f"FAULT {fault}\n")
        pusher.stdin.flush()
        time.sleep(5.0)
        pusher.stdin.write("STOP\n")
        pusher.stdin.flush()
        result, err = pusher.communicate(timeout=180)
        lines = [x for x in result.splitlines() if x.startswith("{")]
        if not lines:
            raise RuntimeError(f"the workers printed no result: {err[-2000:]}")
        out.update(json.loads(lines[-1]))
    except Exception as exc:
        out["errors"] = [f"{type(exc).__name__}: {exc}"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=30)
            except Exception:
                pass
        hosts.cut(1 + victim, up=True)
    return out


# ---------------------------------------------------------------------------- report
def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r["max_wait"] for r in rows if r["ok"]]
    s: dict[str, Any] = {"trials": len(rows), "ok": len(good), "failed": len(rows) - len(good)}
    if good:
        s.update(p50=float(np.median(good)), max=float(np.max(good)), min=float(np.min(good)))
    if rows and "failovers" in rows[0]:
        s["declared_dead"] = sum(1 for r in rows if r.get("failovers"))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--only", default="a,b,c", help="which scenarios: a (crash), b (partition), c (stall)")
    ap.add_argument("--pusher", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pusher:
        pusher_main(args.pusher, args.seed)
        return
    # a SIGTERM (a time limit) unwinds like Ctrl-C, so the namespaces are removed
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    only = set(args.only.split(","))
    results: dict[str, Any] = {"paper_s": PAPER_FAILOVER_S, "trials": args.trials}
    names = {"a": "crash", "b": "partition", "c": "stall"}
    for key in ("a", "b", "c"):
        if key not in only:
            continue
        kind = names[key]
        rows: list[dict[str, Any]] = []
        hosts = None
        if kind == "partition":
            if os.geteuid() != 0 or shutil.which("ip") is None:
                print("(b) partition: skipped (needs root and iproute2)", flush=True)
                continue
            hosts = Hosts()
        try:
            for i in range(args.trials):
                seed = 1000 * i + ord(key)
                r = partition_trial(hosts, i % 3, seed) if hosts is not None else local_trial(kind, i % 3, seed)
                rows.append(r)
                wait = f"{r['max_wait']:.3f} s" if r.get("max_wait") is not None else "-"
                state = "sums exact" if r["ok"] else f"FAILED: {'; '.join(r.get('errors') or [])}" + (
                    f" {r.get('mismatched_keys')} keys differ" if r.get("mismatched_keys") else "")
                extra = f", failovers {r['failovers']}" if "failovers" in r else ""
                print(f"  ({key}) {kind} trial {i + 1:2d}/{args.trials}: server {r['victim']}, longest push wait "
                      f"{wait}, {r.get('pushes', 0)} pushes{extra}, {state}", flush=True)
        finally:
            if hosts is not None:
                hosts.close()
        results[kind] = {"summary": summarise(rows), "rows": rows}

    print()
    print(f"Longest push wait after the fault, default settings, {args.trials} trials (the paper: "
          f"{PAPER_FAILOVER_S} s to recover from a server failure)")
    print(f"{'scenario':<28}{'ok':>6}{'p50 (s)':>10}{'max (s)':>10}{'paper (s)':>11}  note")
    notes = {"crash": "SIGKILL of 1 of 3 servers, replicas=2", "partition": "server host link set down (netns)",
             "stall": f"SIGSTOP {STALL_S:g} s: must not be declared dead"}
    for kind in ("crash", "partition", "stall"):
        if kind not in results:
            continue
        s = results[kind]["summary"]
        p50 = f"{s['p50']:.3f}" if "p50" in s else "-"
        mx = f"{s['max']:.3f}" if "max" in s else "-"
        note = notes[kind]
        if "declared_dead" in s:
            note += (f"; failed over in {s['declared_dead']} trials" if kind == "crash"
                     else f"; declared dead in {s['declared_dead']} trials")
        print(f"({kind})".ljust(28) + f"{s['ok']:>3}/{s['trials']:<2}{p50:>10}{mx:>10}{PAPER_FAILOVER_S:>11}  {note}")
    write("failover", results)


if __name__ == "__main__":
    main()
