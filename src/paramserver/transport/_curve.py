"""CURVE keys of a cluster: one certificate pair per role, and the ZAP handler that admits them.

``paramserver keygen DIR`` (:func:`write_keys`) writes one ZeroMQ certificate pair per
role in pyzmq's :mod:`zmq.auth` format: ``NAME.key`` (public) and ``NAME.key_secret``
(public and secret; mode 0600) for ``scheduler``, ``server``, ``worker`` and ``admin``
(the operators' tools: ``paramserver status``, drain, shutdown). A node loads its own
role's secret and every public key it finds (:func:`load_keys`); a worker host needs only
the ``*.key`` files and ``worker.key_secret``.

With keys, every socket of a node runs CURVE (authenticated and encrypted): its ROUTER is a
CURVE server with the node's own role key, each DEALER a CURVE client that knows the public
key of the role it connects to. A :class:`RoleAuthenticator` (pyzmq's
:class:`~zmq.auth.thread.ThreadAuthenticator`) answers the ZAP requests of the node's
context: it admits exactly the cluster's role public keys and names each connection's
ZAP User-Id after the role whose key it proved, so the receiver reads the sender's role
from every message's ``User-Id`` property, never from the header.

:func:`check_bind` is the rule for running without keys: only loopback addresses, unless
``PS_INSECURE=1``.

Thread-safety: :class:`CurveKeys` is immutable; the authenticator runs on its own thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .._errors import ConfigError

__all__ = ["KEY_ROLES", "ZAP_DOMAIN", "CurveKeys", "RoleAuthenticator", "check_bind", "is_loopback",
           "key_role", "load_keys", "write_keys"]

log = logging.getLogger("paramserver.transport")

#: The roles that have a certificate pair.
KEY_ROLES = ("scheduler", "server", "worker", "admin")
#: The ZAP domain of every paramserver socket.
ZAP_DOMAIN = "paramserver"


def key_role(node_role: str) -> str:
    """The key a node of ``node_role`` uses (an operator's ``client`` uses ``admin``)."""
    return "admin" if node_role == "client" else node_role


@dataclass(frozen=True)
class CurveKeys:
    """The keys one node uses: its own pair and the public keys of the roles (z85 bytes).

    Invariant: ``role`` is one of :data:`KEY_ROLES`, ``public`` equals ``publics[role]``.
    """

    directory: str
    role: str
    public: bytes
    secret: bytes = field(repr=False)
    publics: dict[str, bytes]

    def public_of(self, role: str) -> bytes:
        """The public key of ``role``.

        Raises
        ------
        ConfigError
            The key directory has no ``ROLE.key``.
        """
        try:
            return self.publics[role]
        except KeyError:
            raise ConfigError(
                f"the key directory {self.directory} has no {role}.key: copy it from the "
                f"directory `paramserver keygen` wrote") from None


def write_keys(directory: str, *, force: bool = False) -> list[str]:
    """Write one certificate pair per role into ``directory``; return the files written.

    Raises
    ------
    ConfigError
        Keys exist there already and ``force`` is false.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    existing = [r for r in KEY_ROLES if os.path.exists(os.path.join(directory, f"{r}.key_secret"))]
    if existing and not force:
        raise ConfigError(f"{directory} already holds keys ({', '.join(existing)}); "
                          f"pass --force to replace them (every node then needs the new ones)")
    written: list[str] = []
    for role in KEY_ROLES:
        public, secret = zmq.auth.create_certificates(directory, role)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        written += [public, secret]
    return written


def load_keys(directory: str, node_role: str) -> CurveKeys:
    """The keys a node of ``node_role`` uses, from ``directory`` (see the module docstring).

    Raises
    ------
    ConfigError
        CURVE is missing from libzmq, the directory or this role's secret key is missing,
        or the secret key file is readable by others.
    """
    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE: PS_KEYS cannot be used")
    role = key_role(node_role)
    if not os.path.isdir(directory):
        raise ConfigError(f"PS_KEYS={directory!r} is not a directory; create one with `paramserver keygen {directory}`")
    secret_file = os.path.join(directory, f"{role}.key_secret")
    if role == "admin" and not os.path.exists(secret_file):
        if not os.path.exists(os.path.join(directory, "scheduler.key_secret")):
            raise ConfigError(f"{secret_file} is missing: operator commands need admin.key_secret (or "
                              f"scheduler.key_secret) from the directory `paramserver keygen` wrote")
        role = "scheduler"  # the scheduler's key may run operator commands too
        secret_file = os.path.join(directory, "scheduler.key_secret")
    if not os.path.exists(secret_file):
        raise ConfigError(f"{secret_file} is missing: a {node_role} needs {role}.key_secret "
                          f"from the directory `paramserver keygen` wrote")
    mode = os.stat(secret_file).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{secret_file} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                          f"run `chmod 600 {secret_file}`")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {secret_file}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{secret_file} holds no secret key")
    publics: dict[str, bytes] = {role: public}
    for other in KEY_ROLES:
        path = os.path.join(directory, f"{other}.key")
        if other != role and os.path.exists(path):
            try:
                publics[other] = zmq.auth.load_certificate(path)[0]
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from None
    return CurveKeys(directory, role, public, secret, publics)


class _RoleKeys:
    """The ZAP credentials provider: a key is admitted if it is one of the role keys."""

    def __init__(self, by_key: dict[bytes, str]) -> None:
        self.by_key = by_key

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.by_key


class RoleAuthenticator(ThreadAuthenticator):
    """Admits exactly the cluster's role keys; a connection's User-Id is its key's role."""

    def __init__(self, context: zmq.Context[Any], keys: CurveKeys) -> None:
        super().__init__(context, log=logging.getLogger("paramserver.zap"))
        self.roles = {k: r for r, k in keys.publics.items()}

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_RoleKeys(self.roles))

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.roles.get(zmq.utils.z85.encode(client_public_key), "")


def is_loopback(host: str) -> bool:
    """True if binding ``host`` listens on the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: CurveKeys | None, insecure: bool) -> None:
    """Refuse to listen on ``host`` without keys unless it is loopback or ``insecure``.

    Raises
    ------
    ConfigError
        ``host`` is reachable from other machines and no keys are in use.
    """
    if keys is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without keys: any process that reaches it could control the "
            f"cluster. Create keys with `paramserver keygen DIR` and pass --keys DIR (or PS_KEYS=DIR) to "
            f"every node, or set PS_INSECURE=1 on a network you trust")
