"""A worker of the worker-group tests (tests/test_groups.py), one OS process each.

Usage: group_worker.py MODE OUTDIR ITERATIONS
Group and group size come from PS_GROUP / PS_GROUP_WORKERS; the table namespace from NS
("" for none), the consistency of the sum table from CONSISTENCY ("bounded" or "eventual").

MODE "train": least squares by synchronous SGD on NS + "x" (bounded tau=0, aggregate: exact
    full-batch gradient descent over the group's shards) and a count table NS + "count"
    (CONSISTENCY; aggregated when bounded) to which every worker pushes 1 per key per
    iteration. With OTHER_NS, it also tries to write that namespace (refused). Rank 0
    writes OUTDIR/NAME.x.json (the weights) and, after closing, OUTDIR/NAME.done; every
    rank writes OUTDIR/NAME.RANK.json (its stats).
MODE "read": attaches to both tables read-only and pulls them continuously until the
    trainers' done file appears; each pull of the count table is recorded as (min, max),
    and the snapshot after each iteration t in turn (the distinct counts in it);
    then one last pull (the job goes on after the training group ended), a push that must
    be refused (client side), and a push past the client check that the servers refuse.
    Writes OUTDIR/read.RANK.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for workloads
import paramserver as ps
from workloads import sgd_problem

mode, outdir, iterations = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
ns = os.environ.get("NS", "")
name = ns.rstrip("/") or "default"
consistency = os.environ.get("CONSISTENCY", "bounded")
keys = ps.spread(np.arange(64))  # spread over both servers
lr = 0.01

w = ps.connect()
rank, n = w.rank, w.num_workers
tau = {"tau": 0} if consistency == "bounded" else {"consistency": "eventual"}
aggregate = consistency == "bounded"  # eventual: each push applied on arrival
snapshots = {"snapshots": 64} if aggregate else {}  # the servers keep every iteration of these runs
writers = {"writers": [w.group]} if ns and mode == "train" else {}

if mode == "train":
    A, b = sgd_problem()
    A, b = A[rank::n], b[rank::n]
    x_t = w.table(ns + "x", dtype="float64", updater="sgd", updater_args={"lr": lr}, tau=0, aggregate=True,
                  **writers)
    c_t = w.table(ns + "count", dtype="int64", aggregate=aggregate, **snapshots, **tau, **writers)
    refused = ""
    other = os.environ.get("OTHER_NS")
    if other:  # another group's namespace: a writable declaration is refused
        ready = outdir / f"{other.rstrip('/')}.ready"
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            w.table(other + "count", dtype="int64", aggregate=True, snapshots=64)  # its spec (group a's)
        except ps.ReadOnlyError as exc:
            refused = str(exc)
    w.barrier()
    if rank == 0:
        (outdir / f"{name}.ready").write_text("ready")  # its tables and writers are declared
    xkeys = np.arange(8, dtype=np.uint64)
    ones = np.ones(len(keys), dtype=np.int64)
    start = time.monotonic()
    for _ in range(iterations):
        with w.iteration():
            x = x_t.pull(xkeys).ravel()
            x_t.push(xkeys, A.T @ (A @ x - b))
            c_t.push(keys, ones)
    w.wait_all()
    seconds = time.monotonic() - start
    w.barrier()
    result = {"rank": rank, "group": w.group, "iterations": iterations, "seconds": seconds, "refused": refused,
              "count": c_t.pull(keys, consistency="eventual").ravel().tolist()}
    if rank == 0:
        (outdir / f"{name}.x.json").write_text(json.dumps(x_t.pull(xkeys).ravel().tolist()))
    (outdir / f"{name}.{rank}.json").write_text(json.dumps(result))
    w.barrier()
    w.close()
    if rank == 0:
        (outdir / f"{name}.done").write_text("done")
elif mode == "read":
    trainers = int(os.environ["TRAINERS"])
    x_t = w.table(ns + "x", dtype="float64", updater="sgd", updater_args={"lr": lr}, tau=0, aggregate=True,
                  readonly=True)
    c_t = w.table(ns + "count", dtype="int64", aggregate=aggregate, **snapshots, **tau, readonly=True)
    seen: list[list[int]] = []
    snaps: list[list[int]] = []  # per iteration t: the distinct counts of the snapshot after t
    done = outdir / f"{name}.done"
    while not done.exists():
        c = c_t.pull(keys).ravel()
        x_t.pull(np.arange(8, dtype=np.uint64))
        seen.append([int(c.min()), int(c.max())])
        if snapshots and len(snaps) < iterations:  # waits until iteration len(snaps) is finished
            snaps.append(sorted(set(c_t.pull(keys, snapshot=len(snaps), timeout=120).ravel().tolist())))
    last = c_t.pull(keys).ravel().tolist()  # the training group ended; this group goes on
    while snapshots and len(snaps) < iterations:  # the iterations finished before the trainers left
        snaps.append(sorted(set(c_t.pull(keys, snapshot=len(snaps), timeout=120).ravel().tolist())))
    client = server = ""
    try:
        c_t.push(keys, np.ones(len(keys), dtype=np.int64))
    except ps.ReadOnlyError as exc:
        client = str(exc)
    c_t.readonly = False  # past the client's check: the servers refuse it too
    try:
        c_t.push(keys, np.ones(len(keys), dtype=np.int64)).wait(30)
    except ps.ReadOnlyError as exc:
        server = str(exc)
    c_t.readonly = True
    after = c_t.pull(keys).ravel().tolist()
    (outdir / f"read.{rank}.json").write_text(json.dumps(
        {"rank": rank, "group": w.group, "seen": seen, "snaps": snaps, "last": last, "after": after, "client": client,
         "server": server, "trainers": trainers}))
    w.close()
