"""Choosing the address a node binds and advertises; probing whether an address listens."""

from __future__ import annotations

import socket

__all__ = ["choose_host", "probe", "split_address"]


def split_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``."""
    text = address[len("tcp://"):] if address.startswith("tcp://") else address
    host, _, port = text.rpartition(":")
    return host, int(port)


def choose_host(scheduler_address: str) -> str:
    """The local IP address that routes to the scheduler (127.0.0.1 for a local one).

    Uses a connected UDP socket, which sends nothing; falls back to 127.0.0.1.
    """
    if scheduler_address.startswith("mem://"):
        return ""
    host, port = split_address(scheduler_address)
    try:
        target = socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"
    if target.startswith("127."):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, port or 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def probe(address: str, timeout: float = 1.0) -> str:
    """Whether anything listens at ``tcp://host:port``, in words for a message: "" when a
    TCP connection is accepted, else why not ("nothing listens there (connection refused)")."""
    if not address.startswith("tcp://"):
        return ""
    try:
        host, port = split_address(address)
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except (OSError, ValueError) as exc:
        return f"it cannot be reached ({exc})"
