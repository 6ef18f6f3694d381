"""A slow, lossy link in user space, for kernels without ``sch_netem`` (``tc netem``).

``python shaper.py HOST_NS HOST_TAP PORT_TAP`` (run inside the switch namespace of
``netbed.py``) makes two TAP devices, moves ``HOST_TAP`` into the host namespace (where the
bed names it ``eth0``) and leaves ``PORT_TAP`` for the bridge, then copies every Ethernet
frame between them, each direction after ``delay`` milliseconds and dropping ``loss``
percent at random, as netem does. It prints ``ready`` once both devices exist; a line
``DELAY LOSS`` on stdin changes the two (``0 0`` at the start). TAP devices without
offloads get whole, checksummed frames from the kernel, so frames are copied untouched.
Ends when stdin closes (or on SIGTERM); the devices go with it.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main(host_ns: str, host_tap: str, port_tap: str) -> int:
    a, b = tap(host_tap), tap(port_tap)
    subprocess.run(["ip", "link", "set", host_tap, "netns", host_ns], check=True)
    print("ready", flush=True)
    delay, loss = 0.0, 0.0
    rng = random.Random(14)
    queues: dict[int, collections.deque[tuple[float, bytes]]] = {a: collections.deque(), b: collections.deque()}
    other = {a: b, b: a}
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        for dst, q in queues.items():
            while q and q[0][0] <= now:
                try:
                    os.write(dst, q.popleft()[1])
                except OSError:  # the device is down (its host is cut): the frame is lost
                    pass
        due = [q[0][0] for q in queues.values() if q]
        wait = max(0.0, min(due) - now) if due else None
        ready, _, _ = select.select([a, b, stdin], [], [], wait)
        for fd in ready:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    return 0
                delay_ms, loss_pct = (float(x) for x in line.split())
                delay, loss = delay_ms / 1000.0, loss_pct / 100.0
                continue
            frame = os.read(fd, 65536)
            if loss and rng.random() < loss:
                continue
            queues[other[fd]].append((time.monotonic() + delay, frame))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
