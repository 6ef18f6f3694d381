"""Chain replication: failover time after a SIGKILLed server, and push throughput with 1-3 copies.

Measures, on local clusters of 3 servers:

* **failover time** (the paper reports 0.8 s): ``replicas=2``, heartbeats every 0.1 s and a
  heartbeat timeout T of 0.5 s and 1.0 s. A worker in this process sends synchronous
  pushes of 64 keys spread over the whole key space (every server holds a part); one server
  is SIGKILLed (a different one each trial); failover time = from the kill to the
  acknowledgement of the first push that *started* after the kill (the push that had to
  wait for the promotion). Detection is T (the scheduler's heartbeat timeout), recovery is
  the rest. Every trial compares the final values with a reference of every acknowledged
  push and reports any difference; a failed trial is reported, never dropped.
* **push throughput** with ``replicas`` = 1, 2, 3, without and with server-side
  aggregation (``aggregate=True``: the servers replicate the sum of an iteration once,
  instead of every worker's push): 3 worker processes push the same 10,000 keys (a model of
  10,000 rows of 16 float32) each iteration, 4 iterations in flight, and advance the
  clock after each push. Reported: keys/s summed over the workers, the bytes and messages
  the servers replicated per iteration; the baseline is ``replicas=1`` without aggregation,
  measured in the same run.

Run: ``python benchmarks/bench_replication.py [--quick]``; writes
benchmarks/results/replication.json.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import fmt_bytes, write

PAPER_FAILOVER_S = 0.8
TIMEOUTS = [0.5, 1.0]
N_KEYS_FAILOVER = 64
KEYS_PER_PUSH = 10_000
WIDTH = 16
WORKERS = 3
DEPTH = 4  # iterations in flight per worker
WARM_ITERS = 3

def _node_env(extra: dict[str, str]) -> dict[str, str]:
    return {"PS_LOG_LEVEL": "ERROR", **extra}


# ---------------------------------------------------------------------------- failover
def failover_trial(timeout: float, victim: int, seed: int,
                   after: float = 0.3, limit: float = 60.0) -> dict[str, Any]:
    """One cluster, one SIGKILL; see the module docstring."""
    hb = {"PS_HEARTBEAT_INTERVAL": "0.1", "PS_HEARTBEAT_TIMEOUT": f"{timeout:g}"}
    out: dict[str, Any] = {"timeout": timeout, "victim": victim, "ok": False, "error": None}
    rng = np.random.default_rng(seed)
    cluster = None
    w = None
    killer: threading.Timer | None = None
    stop = threading.Event()  # ends the key map watcher
    try:
        cluster = ps.LocalCluster(servers=3, replicas=2, env=_node_env(hb), log_level="ERROR")
        w = ps.connect(cluster.address, config=ps.Config.from_env({**os.environ, **hb}))
        t = w.table("failover", width=1, dtype="float64")
        keys = np.unique(rng.integers(0, 2**64 - 1, N_KEYS_FAILOVER, dtype=np.uint64, endpoint=True))
        ref = np.zeros(len(keys))

        def push() -> tuple[float, float]:
            v = rng.integers(1, 10, len(keys)).astype(np.float64)
            start = time.perf_counter()
            t.push(keys, v).wait(timeout=limit)
            end = time.perf_counter()
            ref[:] += v
            return start, end

        warm_end = time.perf_counter() + 0.5
        while time.perf_counter() < warm_end:
            push()
        status = cluster.status()
        if status["keymap"]["epoch"] != 1 or len(status["servers"]) != 3:
            raise RuntimeError(f"a server was declared dead before the kill (key map epoch "
                               f"{status['keymap']['epoch']}, {len(status['servers'])} servers)")
        pid = cluster.server_pids[victim]
        killed: list[float] = []

        map_seen: list[float] = []

        def watch() -> None:  # when the new key map (the promotion) reaches this worker
            while not stop.is_set():
                keymap = getattr(getattr(w, "_node", None), "keymap", None)
                if keymap is not None and getattr(keymap, "epoch", 1) > 1:
                    map_seen.append(time.perf_counter())
                    return
                time.sleep(0.001)

        def kill() -> None:
            killed.append(time.perf_counter())
            os.kill(pid, signal.SIGKILL)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()

        killer = threading.Timer(float(rng.uniform(0.1, 0.3)), kill)  # a random point between pushes
        killer.start()
        acks: list[tuple[float, float]] = []
        deadline = time.perf_counter() + limit
        first_after: float | None = None
        while True:
            s, e = push()
            acks.append((s, e))
            if killed and first_after is None and s > killed[0]:
                first_after = e
            if first_after is not None and e > first_after + after:
                break
            if e > deadline:
                raise RuntimeError(f"no push started after the kill was acknowledged within {limit:g} s")
        t_kill = killed[0]
        stop.set()
        got = np.asarray(t.pull(keys, timeout=limit)).reshape(-1)
        status = cluster.status()
        mismatched = int(np.count_nonzero(got != ref))
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(acks) if b[1] > t_kill]
        out.update(
            failover=first_after - t_kill,
            recovery=first_after - t_kill - timeout,
            map_at_worker=map_seen[0] - t_kill if map_seen else None,
            after_map=first_after - map_seen[0] if map_seen else None,
            max_ack_gap=max(gaps) if gaps else 0.0,
            pushes=len(acks),
            mismatched_keys=mismatched,
            max_abs_error=float(np.max(np.abs(got - ref))) if len(keys) else 0.0,
            epoch=status["keymap"]["epoch"],
            servers_left=len(status["servers"]),
        )
        out["ok"] = mismatched == 0
        if mismatched:
            out["error"] = f"{mismatched} of {len(keys)} keys differ from the reference"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        if killer is not None:
            killer.cancel()
        if w is not None:
            try:
                w.close(timeout=2.0)
            except Exception as exc:
                out.setdefault("close_error", f"{type(exc).__name__}: {exc}")
        if cluster is not None:
            cluster.close()
    return out


def bench_failover(trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for timeout in TIMEOUTS:
        rows = []
        for i in range(trials):
            r = failover_trial(timeout, i % 3, 1000 * i + int(timeout * 10))
            rows.append(r)
            if r["ok"]:
                seen = f"{r['map_at_worker']:.3f} s" if r["map_at_worker"] is not None else "not seen"
                print(f"  T={timeout:g}s trial {i + 1:2d}/{trials}: server {r['victim']} killed, failover "
                      f"{r['failover']:.3f} s (new key map at the worker after {seen}), {r['pushes']} pushes, "
                      f"sums exact", flush=True)
            else:
                print(f"  T={timeout:g}s trial {i + 1:2d}/{trials}: FAILED: {r['error']}", flush=True)
        good = [r["failover"] for r in rows if r["ok"]]
        summary: dict[str, Any] = {"trials": trials, "ok": len(good), "failed": trials - len(good)}
        if good:
            summary.update(p50=float(np.median(good)), max=float(np.max(good)), min=float(np.min(good)),
                           recovery_p50=float(np.median(good)) - timeout,
                           recovery_max=float(np.max(good)) - timeout,
                           detection_share_p50=timeout / float(np.median(good)))
            at_map = [r["map_at_worker"] for r in rows if r["ok"] and r["map_at_worker"] is not None]
            rest = [r["after_map"] for r in rows if r["ok"] and r["after_map"] is not None]
            if at_map and rest:
                summary.update(map_at_worker_p50=float(np.median(at_map)), map_at_worker_max=float(np.max(at_map)),
                               after_map_p50=float(np.median(rest)), after_map_max=float(np.max(rest)))
        out[f"{timeout:g}"] = {"summary": summary, "trials": rows}
    return out


# ---------------------------------------------------------------------------- throughput
def _tp_worker(address: str, aggregate: bool, iters: int, q: Any, ready: Any, go: Any) -> None:
    with ps.connect(address) as w:
        t = w.table("g", width=WIDTH, dtype="float32", aggregate=aggregate)
        rng = np.random.default_rng(12345)  # the same keys in every worker: one model, 3 gradients
        keys = np.unique(rng.integers(0, 2**64 - 1, KEYS_PER_PUSH, dtype=np.uint64, endpoint=True))
        vals = np.full((len(keys), WIDTH), w.rank + 1, dtype=np.float32)

        def run(n: int) -> None:
            window: list[Any] = []
            for _ in range(n):
                window.append(t.push(keys, vals))  # with aggregate=True acked once the iteration is
                w.advance()                        # aggregated (and replicated): do not wait here
                if len(window) > DEPTH:
                    window.pop(0).wait(timeout=300)
            for r in window:
                r.wait(timeout=300)

        run(WARM_ITERS)
        w.barrier()
        if w.rank == 0:  # the main process reads the servers' counters before the timed iterations
            q.put({"warm": True})
            ready.wait(300)
        w.barrier()
        start = time.perf_counter()
        run(iters)
        elapsed = time.perf_counter() - start
        w.barrier()  # every worker's pushes are acknowledged
        res: dict[str, Any] = {"rank": w.rank, "elapsed": elapsed, "keys_per_s": iters * len(keys) / elapsed}
        if w.rank == 0:
            got = t.pull(keys)
            want = (WARM_ITERS + iters) * WORKERS * (WORKERS + 1) / 2
            res["mismatched_keys"] = int(np.count_nonzero(got != want))
        q.put(res)
        go.wait(300)  # the cluster's status is read before the job ends


def _replication_counters(cluster: ps.LocalCluster) -> dict[str, int]:
    """Replicated messages per kind and bytes, summed over the servers."""
    out = {"bytes": 0}
    for s in cluster.status()["servers"].values():
        out["bytes"] += s.get("replicated_bytes", 0)
        for k, n in s.get("replicated", {}).items():
            out[k] = out.get(k, 0) + n
    return out


def throughput_run(replicas: int, aggregate: bool, iters: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {"replicas": replicas, "aggregate": aggregate, "iters": iters, "ok": False, "error": None}
    procs: list[Any] = []
    ready, go = ctx.Event(), ctx.Event()
    cluster = None
    try:
        cluster = ps.LocalCluster(servers=3, replicas=replicas, workers=WORKERS, env=_node_env({}), log_level="ERROR")
        q = ctx.Queue()
        procs = [ctx.Process(target=_tp_worker, args=(cluster.address, aggregate, iters, q, ready, go), daemon=True)
                 for _ in range(WORKERS)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 600

        def get() -> dict[str, Any]:
            while True:
                try:
                    msg: dict[str, Any] = q.get(timeout=1.0)
                    return msg
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                        raise RuntimeError(f"a worker process failed (exit codes {[p.exitcode for p in procs]})")

        if not get().get("warm"):
            raise RuntimeError("expected the end of the warm-up first")
        before = _replication_counters(cluster)
        ready.set()
        results = [get() for _ in procs]
        after = _replication_counters(cluster)
        go.set()
        kinds = {k: after[k] - before.get(k, 0) for k in after if k != "bytes"}
        rbytes = after["bytes"] - before.get("bytes", 0)
        pushed_bytes = WORKERS * KEYS_PER_PUSH * (8 + 4 * WIDTH)
        mismatched = sum(r.get("mismatched_keys", 0) for r in results)
        out.update(
            keys_per_s=sum(r["keys_per_s"] for r in results),
            per_worker_keys_per_s=[r["keys_per_s"] for r in results],
            replicated_bytes=rbytes,
            replicated_bytes_per_iter=rbytes / iters,
            replicated_per_iter={k: n / iters for k, n in kinds.items()},
            pushed_bytes_per_iter=pushed_bytes,
            mismatched_keys=mismatched,
        )
        out["ok"] = mismatched == 0
        if mismatched:
            out["error"] = f"{mismatched} keys differ from the expected sum"
        for p in procs:
            p.join(60)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        if cluster is not None:
            cluster.close()
    return out


def bench_throughput(iters: int, rounds: int) -> tuple[list[dict[str, Any]], int]:
    """Every configuration ``rounds`` times, the rounds interleaved (the machine's speed drifts);
    each row is the fastest round. Returns the rows and the number of failed runs."""
    configs = [(replicas, aggregate) for replicas in (1, 2, 3) for aggregate in (False, True)]
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {c: [] for c in configs}
    failed = 0
    for rnd in range(rounds):
        for replicas, aggregate in configs:
            r = throughput_run(replicas, aggregate, iters)
            runs[(replicas, aggregate)].append(r)
            head = f"  round {rnd + 1}/{rounds} replicas={replicas} aggregate={aggregate!s:5}:"
            if r["ok"]:
                print(f"{head} {r['keys_per_s'] / 1e3:.0f} k keys/s, "
                      f"replicated {fmt_bytes(int(r['replicated_bytes_per_iter']))}/iteration", flush=True)
            else:
                failed += 1
                print(f"{head} FAILED: {r['error']}", flush=True)
    rows = []
    for c in configs:
        ok = [r for r in runs[c] if r["ok"]]
        best = dict(max(ok, key=lambda r: r["keys_per_s"]) if ok else runs[c][-1])
        best["rounds_keys_per_s"] = [r.get("keys_per_s") for r in runs[c]]
        best["rounds_errors"] = [r["error"] for r in runs[c] if r["error"]]
        rows.append(best)
    return rows, failed


# ---------------------------------------------------------------------------- report
def report(failover: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    print("\nFailover: 3 servers, replicas=2, heartbeat every 0.1 s, 1 synchronous pusher (64 keys/push), "
          "SIGKILL one server per trial")
    print(f"{'T (detect)':>10} {'trials ok':>10} {'p50 s':>7} {'max s':>7} {'min s':>7} {'paper s':>8} "
          f"{'recovery p50':>13} {'recovery max':>13} {'T share':>8} {'map p50/max':>12} {'after map p50/max':>18}")
    for key, entry in failover.items():
        s = entry["summary"]
        if s["ok"]:
            split = (f"{s['map_at_worker_p50']:.3f}/{s['map_at_worker_max']:.3f} "
                     f"{s['after_map_p50']:.3f}/{s['after_map_max']:.3f}" if "after_map_p50" in s else "n/a")
            print(f"{key + ' s':>10} {s['ok']:>4}/{s['trials']:<5} {s['p50']:7.3f} {s['max']:7.3f} {s['min']:7.3f} "
                  f"{PAPER_FAILOVER_S:8.1f} {s['recovery_p50']:13.3f} {s['recovery_max']:13.3f} "
                  f"{s['detection_share_p50']:8.0%} {split:>31}")
        else:
            print(f"{key + ' s':>10} {0:>4}/{s['trials']:<5} every trial failed")
        for r in entry["trials"]:
            if not r["ok"]:
                print(f"{'':>10} FAILED trial (server {r['victim']}): {r['error']}")
    print("  failover: kill -> ack of the first push started after it; recovery = failover - T; T share = T / p50.\n"
          "  The scheduler sees a death T - (age of the last heartbeat, < 0.1 s) + (tick, < 0.05 s) after the kill,\n"
          "  so recovery can be negative. map: kill -> the new key map (epoch 2) reaches the worker (detection,\n"
          "  promotion, broadcast); after map: from then to the ack (the worker resends to the new master).")

    print(f"\nPush throughput: 3 servers, {WORKERS} worker processes each pushing the same {KEYS_PER_PUSH} keys x "
          f"{WIDTH} float32 per iteration, {DEPTH} iterations in flight")
    base = next((r for r in rows if r["replicas"] == 1 and not r["aggregate"] and r["ok"]), None)
    print(f"{'replicas':>8} {'aggregate':>9} {'keys/s':>10} {'ratio':>6} {'replicated/iter':>16} "
          f"{'vs pushed':>9} {'msgs/iter (push, agg, clock)':>29}")
    ratios: dict[str, Any] = {}
    for r in rows:
        name = f"r{r['replicas']}{'_agg' if r['aggregate'] else ''}"
        if not r["ok"]:
            print(f"{r['replicas']:>8} {r['aggregate']!s:>9} FAILED: {r['error']}")
            continue
        ratio = r["keys_per_s"] / base["keys_per_s"] if base else float("nan")
        ratios[name] = ratio
        per = r["replicated_per_iter"]
        msgs = f"{per.get('push', 0):.1f}, {per.get('agg', 0):.1f}, {per.get('clock', 0):.1f}"
        print(f"{r['replicas']:>8} {r['aggregate']!s:>9} {r['keys_per_s']:10.0f} {ratio:6.2f} "
              f"{fmt_bytes(int(r['replicated_bytes_per_iter'])):>16} "
              f"{r['replicated_bytes_per_iter'] / r['pushed_bytes_per_iter']:9.2f} {msgs:>29}")
    print("  keys/s: the fastest round; ratio: to replicas=1 without aggregation (same run); vs pushed: bytes\n"
          "  replicated per byte the workers pushed; msgs: replication messages the servers sent per iteration")
    for r in rows:
        if len(r.get("rounds_keys_per_s", [])) > 1:
            rates = ", ".join(f"{x / 1e3:.0f}k" if x else "failed" for x in r["rounds_keys_per_s"])
            print(f"  rounds, replicas={r['replicas']} aggregate={r['aggregate']!s:5}: {rates} keys/s")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 failover trials per timeout, fewer iterations")
    ap.add_argument("--trials", type=int, default=None, help="failover trials per timeout (20; 5 with --quick)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per throughput run (400; 40 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="throughput rounds, best kept (2; 1 with --quick)")
    ap.add_argument("--skip-failover", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    trials = args.trials or (5 if args.quick else 20)
    iters = args.iters or (40 if args.quick else 400)
    rounds = args.rounds or (1 if args.quick else 2)
    started = time.perf_counter()
    failover: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    tp_failed = 0
    if not args.skip_failover:
        print(f"failover: {trials} trials for each T in {TIMEOUTS}", flush=True)
        failover = bench_failover(trials)
    if not args.skip_throughput:
        print(f"throughput: {iters} iterations per run, {rounds} round(s)", flush=True)
        rows, tp_failed = bench_throughput(iters, rounds)
    ratios = report(failover, rows)
    failed = sum(e["summary"]["failed"] for e in failover.values()) + tp_failed
    elapsed = time.perf_counter() - started
    path = write("replication", {"quick": args.quick, "seconds": elapsed, "rounds": rounds,
                                 "iters": iters, "trials": trials, "paper_failover_s": PAPER_FAILOVER_S, "failover": failover,
                                 "throughput": rows, "ratios": ratios, "failed": failed})
    if failed:
        print(f"\n!!! {failed} failed trial(s)/run(s): see above and {path}", file=sys.stderr)
    print(f"wrote {path} ({elapsed:.0f} s)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
