"""Which modules a server may import user code from (PS_UPDATER_MODULES).

A table's updater or initialiser may be an import path ``"package.module:Name"``. A server
imports it only if the module matches the allowlist, checked *before* any import (an
import runs the module's top-level code, whatever the class turns out to be):

* the modules of paramserver itself are always allowed;
* an entry ``pkg`` allows ``pkg`` and every ``pkg.sub...``; an entry ending in ``.``
  (``pkg.``) allows only the modules below it; ``*`` allows every module (the behaviour
  before the allowlist existed; :class:`~paramserver.testing.InProcessCluster` uses it,
  its servers run in the caller's own process);
* the default (PS_UPDATER_MODULES empty) allows paramserver's own modules only.

Pure functions; thread-safe.
"""

from __future__ import annotations

import re

from .._errors import ConfigError

__all__ = ["ANY_MODULE", "check_user_code", "parse_modules"]

#: The allowlist entry that allows every module.
ANY_MODULE = "*"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.?$")


def parse_modules(text: str) -> tuple[str, ...]:
    """The entries of a comma-separated PS_UPDATER_MODULES value.

    Raises
    ------
    ConfigError
        An entry is not a dotted module name, a prefix ending in ``.``, or ``*``.
    """
    out: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry != ANY_MODULE and not _NAME.match(entry):
            raise ConfigError(f"PS_UPDATER_MODULES: {entry!r} is not a module name, a prefix ending in '.', or '*'")
        out.append(entry)
    return tuple(out)


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    if module == "paramserver" or module.startswith("paramserver."):
        return True
    for entry in allowed:
        if entry == ANY_MODULE:
            return True
        if entry.endswith("."):
            if module.startswith(entry):
                return True
        elif module == entry or module.startswith(entry + "."):
            return True
    return False


def check_user_code(path: str, allowed: tuple[str, ...] | None, what: str = "updater") -> None:
    """Refuse the import path ``path`` unless its module is allowed (None: no allowlist).

    Names without ``:`` (builtins) are not import paths and always pass.

    Raises
    ------
    ConfigError
        The module is not in the allowlist; nothing was imported.
    """
    if allowed is None or ":" not in path:
        return
    module = path.partition(":")[0]
    if not _allowed(module, allowed):
        listed = ", ".join(allowed) or "empty: paramserver's own modules only"
        raise ConfigError(
            f"cannot import {what} {path!r}: module {module!r} is not allowed on this server "
            f"(PS_UPDATER_MODULES: {listed}); list it in PS_UPDATER_MODULES on every server to allow it")
