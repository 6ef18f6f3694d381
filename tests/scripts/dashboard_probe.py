"""A worker for the dashboard tests: it pushes, advances twice, then reads the dashboard that
the launcher's scheduler serves (DASHBOARD_URL) until the page's state shows this worker at
iteration 2 with its pushes, and prints what it saw. Exit code 0 when it saw it, 4 if not
within 60 s."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

import numpy as np

import paramserver as ps

w = ps.connect()
t = w.table("probe")
for _ in range(5):
    t.push(np.array([1, 2**63], dtype=np.uint64), np.ones(2, np.float32)).wait()
w.advance()
w.advance()
url = os.environ["DASHBOARD_URL"] + "api/state"
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    with urllib.request.urlopen(url, timeout=10) as r:
        state = json.loads(r.read())
    me = [x for x in state.get("workers", []) if x["id"] == w.id]
    if me and me[0]["iteration"] == 2 and me[0]["pushes"] == 5:
        roles = sorted(n["role"] for n in state["nodes"] if n["state"] == "alive")
        print(f"dashboard shows worker {w.id} at iteration 2 with 5 pushes; live nodes: {roles}", flush=True)
        w.close()
        sys.exit(0)
    time.sleep(0.05)
print("the dashboard never showed this worker", flush=True)
sys.exit(4)
