"""The server's update rate into a table already holding 10 M keys (keys/s per server process).

Two measurements, with batches of 100,000 existing keys (sorted, as workers send them) of a
float32 width-1 table with the ``sum`` updater:

* ``store``: the server's update path alone in this process (Store.push: index lookup and
  the updater), which is what one server process can sustain;
* ``cluster``: end to end, one worker pushing to one server process of a LocalCluster with
  4 requests in flight, counted at the worker (network, decoding and checks included).

And one of the server's receive thread: ``rx_us_per_push``, the CPU microseconds of one
1-key push of a worker's channel (decoding its pre-encoded frames, the server's handling,
encoding the reply), fed to a :class:`Server` on a stand-in node without sockets
(``--rx`` runs only this one).

Writes benchmarks/results/server.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import paramserver as ps
from _common import batch_rate, distinct_keys, write
from paramserver.protocol import Status, encode
from paramserver.table import Store, TableSpec

N_KEYS = 10_000_000
BATCH = 100_000


def store_rate(keys: np.ndarray, rng: np.random.Generator) -> float:
    store = Store(TableSpec.create("t", dtype="float32"))
    for chunk in np.array_split(keys, 100):
        store.push(np.sort(chunk), np.ones((len(chunk), 1), np.float32))
    batches = [np.sort(rng.choice(keys, BATCH, replace=False)) for _ in range(30)]
    ones = np.ones((BATCH, 1), np.float32)
    return batch_rate(lambda b: store.push(b, ones), batches)


def cluster_rate(keys: np.ndarray, rng: np.random.Generator) -> float:
    with ps.LocalCluster(servers=1) as cluster, ps.connect(cluster.address) as w:
        t = w.table("t", dtype="float32")
        reqs = [t.push(np.sort(chunk), np.ones(len(chunk), np.float32)) for chunk in np.array_split(keys, 100)]
        for r in reqs:
            r.wait()
        batches = [np.sort(rng.choice(keys, BATCH, replace=False)) for _ in range(30)]
        ones = np.ones(BATCH, np.float32)
        t.push(batches[0], ones).wait()
        start = time.perf_counter()
        window: list[Any] = []
        for b in batches:
            window.append(t.push(b, ones))
            if len(window) >= 4:
                window.pop(0).wait()
        for r in window:
            r.wait()
        return len(batches) * BATCH / (time.perf_counter() - start)


class _RxNode:
    """The Node members a Server uses, without sockets: a reply is encoded and dropped."""

    def __init__(self) -> None:
        from paramserver._config import Config
        from paramserver.node import NodeInfo
        from paramserver.placement import KEY_SPACE, Assignment, KeyMap, KeyRange

        self.id = 1
        self.config = Config.from_env()
        self.keymap = KeyMap(1, [Assignment(KeyRange(0, KEY_SPACE), 1)])
        self._nodes = {1: NodeInfo(1, "server", "mem://1"), 2: NodeInfo(2, "worker", "mem://2")}
        self.handlers: dict[Any, Any] = {}
        self.on_nodes_changed: list[Any] = []
        self.on_abort: list[Any] = []
        self.counters: dict[str, int] = {}
        self.table_bytes: dict[Any, int] = {}
        self.filter_bytes: dict[Any, Any] = {}
        self.replies = 0

    def on(self, op: Any, handler: Any) -> None:
        self.handlers[op] = handler

    def nodes(self) -> dict[int, Any]:
        return dict(self._nodes)

    def node_info(self, node: int) -> Any:
        return self._nodes.get(node)

    def reply(self, request: Any, *, status: Any = 0, body: Any = None, arrays: Any = None,
              codecs: Any = ()) -> None:
        msg = request.reply(status=Status(status), body=body, arrays=arrays, sender=self.id)
        encode(msg)
        self.replies += 1

    def reply_error(self, request: Any, exc: BaseException, *, with_traceback: bool = True) -> None:
        raise AssertionError(f"unexpected error reply: {exc!r}")

    def call_later(self, delay: float, fn: Any) -> None:
        pass

    def call_every(self, interval: float, fn: Any) -> None:
        pass


def rx_cost(n: int = 20000) -> tuple[float, float]:
    """CPU microseconds per 1-key push on the server's receive thread: with decoding the
    frames (decode, handle, encode the reply), and the server's handling alone."""
    from paramserver.protocol import Message, Op, decode, encode
    from paramserver.server import Server
    from paramserver.table import TableSpec

    out = []
    for decoded in (False, True):
        node = _RxNode()
        server = Server(node)  # type: ignore[arg-type]
        server.add_table(0, TableSpec.create("t", 1, "float32", "sum"))
        key = np.array([12345], dtype=np.uint64)
        value = np.ones((1, 1), np.float32)
        frames = [[bytes(f) for f in encode(Message(Op.PUSH, sender=2, ts=s, table=0, epoch=1, seq=s,
                                                     body={"lw": s}, arrays=[key, value]))]
                  for s in range(1, n + 1)]
        msgs = [decode(f) for f in frames] if decoded else []
        handle = node.handlers[Op.PUSH]
        warm = n // 10
        start = time.thread_time()
        for i in range(n):
            if i == warm:
                start = time.thread_time()
            handle(msgs[i] if decoded else decode(frames[i]))
        out.append((time.thread_time() - start) / (n - warm) * 1e6)
        assert node.replies == n
    return out[0], out[1]


def main() -> None:
    if "--rx" in sys.argv:
        total, handling = rx_cost()
        print(f"server receive thread, 1-key push: {total:.1f} us CPU ({handling:.1f} us handling, decoded)")
        return
    rng = np.random.default_rng(0)
    keys = distinct_keys(rng, N_KEYS)
    s = store_rate(keys, rng)
    c = cluster_rate(keys, rng)
    rx, handling = rx_cost()
    print(f"server update into a 10 M-key table, batches of {BATCH}:")
    print(f"  store (update path of one server process): {s / 1e6:6.1f} M keys/s  (target >= 10)")
    print(f"  cluster (1 worker -> 1 server, end to end): {c / 1e6:6.1f} M keys/s")
    print(f"  receive thread, one 1-key push (decode, handle, reply): {rx:6.1f} us CPU, handling {handling:.1f} us")
    out = write("server", {"store_keys_per_s": s, "cluster_keys_per_s": c, "batch": BATCH, "rx_us_per_push": rx,
                           "handling_us_per_push": handling})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
