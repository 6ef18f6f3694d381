"""Promises about the code base itself: layering, public surface, documented settings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import paramserver as ps
from paramserver._config import SETTINGS

SRC = Path(ps.__file__).parent
ROOT = SRC.parents[1]

# Layer of each top-level module or package (docs/architecture.md); shared helpers are 0.
LAYERS = {
    "_errors": 0, "_config": 0, "_version": 0, "_words": 0,
    "transport": 1, "protocol": 2, "clock": 3, "placement": 4, "node": 5,
    "table": 6, "checkpoint": 6, "scheduler": 6, "server": 6, "worker": 6,
    "filters": 7, "deploy": 7, "torch": 7, "data": 8, "apps": 8, "cli": 9, "testing": 9, "__init__": 10, "__main__": 10,
}
ROLES = {"scheduler", "server", "worker"}


def _top(names: list[str]) -> str:
    """The top-level module of ``paramserver.<names...>`` (the package root is ``__init__``)."""
    return names[0] if names and names[0] in LAYERS else "__init__"


def _imports(path: Path) -> set[str]:
    """Top-level paramserver modules imported by ``path``: ``from`` imports, relative or
    absolute, and plain ``import paramserver[.x[.y]] [as z]`` lines (``import paramserver``
    alone, like ``from paramserver import Name``, imports the package root, ``__init__``)."""
    return _imports_in(path.read_text(), path.relative_to(SRC))


def _imports_in(source: str, rel: Path) -> set[str]:
    tree = ast.parse(source)
    pkg_depth = len(rel.parts) - 1
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(_top(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "paramserver")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel.parts[:pkg_depth])[: pkg_depth - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x"
                    out.update(_top([a.name]) for a in node.names)
                else:
                    out.add(target[0])
            elif node.module == "paramserver":
                out.update(_top([a.name]) for a in node.names)
            elif node.module and node.module.startswith("paramserver."):
                out.add(node.module.split(".")[1])
    return out


def test_layers_only_import_downward() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        own = path.relative_to(SRC).parts[0].removesuffix(".py")
        for dep in _imports(path):
            if dep == own:
                continue
            if LAYERS[dep] > LAYERS[own] or (LAYERS[dep] == LAYERS[own] and (own in ROLES and dep in ROLES)):
                bad.append(f"{path.relative_to(SRC)} imports {dep}")
    assert not bad, bad


def test_the_import_reader_sees_every_form() -> None:
    source = """
import numpy
import paramserver.placement
import paramserver.clock._rvc as rvc
import paramserver
from paramserver import Worker
from paramserver import transport
from paramserver.protocol import Message
from ..node import Node
from .._errors import PSError
from .. import data
from ._local import LocalCluster
"""
    assert _imports_in(source, Path("deploy/_x.py")) == {
        "placement", "clock", "__init__", "transport", "protocol", "node", "_errors", "data", "deploy"}


def test_import_paramserver_loads_no_role_or_cli_code() -> None:
    code = ("import paramserver, sys; print('\\n'.join(m for m in sys.modules "
            "if m.split('.')[:2] in (['paramserver', 'server'], ['paramserver', 'scheduler'], ['paramserver', 'cli'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []


def test_every_module_has_a_layer() -> None:
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SRC.rglob("*.py")}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_public_all_is_sorted_and_complete() -> None:
    def isort_key(name: str) -> tuple[int, str]:  # ruff's RUF022 order: CONSTANTS, Classes, functions
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert list(ps.__all__) == sorted(ps.__all__, key=isort_key)
    for name in ps.__all__:
        assert hasattr(ps, name), name
    public = {n for n in vars(ps) if not n.startswith("_") and not isinstance(getattr(ps, n), type(ps))}
    public |= {"filters"}
    assert public <= set(ps.__all__) | {"annotations"}, public - set(ps.__all__)


# Underscore names that are documented public API of Python itself: the NamedTuple methods and
# fields, sys._getframe, os._exit.
_PUBLIC_UNDERSCORE = {"_asdict", "_field_defaults", "_fields", "_make", "_replace", "_getframe", "_exit"}


def _private(name: str) -> bool:
    """One leading underscore: ``_x``, not ``__x__``, ``__x`` (name-mangled, class-local) or ``_``."""
    return name.startswith("_") and not name.startswith("__") and name != "_"


def _bound_in(tree: ast.Module) -> set[str]:
    """Every name a module defines: functions, classes, assignment and loop targets, arguments,
    import aliases, attributes assigned on ``self``/``cls``, and ``__slots__`` entries."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            out.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.add(node.attr)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.alias):
            out.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            out.update(c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return out


def _private_uses_in(source: str, rel: Path, root: Path = SRC) -> set[str]:
    """Private names of other modules that module ``rel`` (relative to the package ``root``) uses:

    * ``from M import _name`` (M another module; a private submodule ``from . import _m`` is
      not a name but a module of the package, and is allowed);
    * ``from ..pkg._m import x`` or ``import paramserver.pkg._m``: a private module of another
      top-level package (reported as ``pkg._m``);
    * ``X._name`` with X not ``self``/``cls`` and ``_name`` bound nowhere in this module.
    """
    tree = ast.parse(source)
    here = _bound_in(tree)
    own = rel.parts[0].removesuffix(".py")
    pkg = list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = pkg[: len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")[1:] if (node.module or "").startswith("paramserver") else []
            if (node.level or (node.module or "").startswith("paramserver")) and target[:1] != [own] \
                    and len(target) > 1 and _private(target[1]):
                out.add(".".join(target[:2]))
            base = root.joinpath(*target)
            out.update(a.name for a in node.names if _private(a.name)
                       and not (base / f"{a.name}.py").exists() and not (base / a.name).is_dir())
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "paramserver" and len(parts) > 2 and parts[1] != own and _private(parts[2]):
                    out.add(".".join(parts[1:3]))
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in here \
                and node.attr not in _PUBLIC_UNDERSCORE \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.add(node.attr)
    return out


def test_the_private_name_reader_sees_every_form(tmp_path: Path) -> None:
    source = """
from . import _sibling
from ._local import _helper, public
from ..protocol._codec import decode_header
from ..deploy import AdminClient
import paramserver.node._runtime
import paramserver.deploy._admin
class A:
    __slots__ = ("_slot",)
    def __init__(self, other):
        self._mine = 1
        other._mine, other._slot, other.__dunder__, other.__mangled
        other._theirs
        self._peer._hidden
        cls._ok
        point._replace(x=1)
        _helper(other._helper)
"""
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "_sibling.py").touch()  # a private submodule: allowed
    assert _private_uses_in(source, Path("deploy/_x.py"), tmp_path) == {"_helper", "protocol._codec", "node._runtime", "_theirs", "_hidden"}


def test_no_private_name_crosses_a_module_boundary() -> None:
    """Only src/ is held to this (tests and benchmarks may reach into internals)."""
    found = {str(p.relative_to(SRC)): _private_uses_in(p.read_text(), p.relative_to(SRC)) for p in SRC.rglob("*.py")}
    bad = {f: sorted(names) for f, names in found.items() if names}
    assert not bad, bad


def test_every_setting_is_documented_with_its_default() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for s in SETTINGS:
        assert f"| `{s.env}` |" in doc, s.env
        default = "(empty)" if s.default == "" else (("1" if s.default else "0") if isinstance(s.default, bool)
                                                      else str(s.default))
        assert f"| `{s.env}` | `{default}` |" in doc, f"{s.env}: default {default} not documented"


def test_nothing_reads_the_environment_outside_config() -> None:
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "_config.py" and ("os.environ" in p.read_text() or "getenv" in p.read_text())]
    # they pass the environment on to children (or to the node the process becomes: exec);
    # cli/_ranked.py also reads the task launcher's own rank variables (SLURM_*, OMPI_*, PMI_*)
    allowed = {"cli/_main.py", "deploy/_local.py", "cli/_launch.py", "cli/_ranked.py", "worker/_roles.py"}
    assert set(offenders) <= allowed, offenders


def test_no_pickle_anywhere() -> None:
    for p in SRC.rglob("*.py"):
        text = p.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, p
