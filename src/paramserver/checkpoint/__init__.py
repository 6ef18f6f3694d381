"""Checkpoints: the on-disk layout shared by servers (which write and restore their key
ranges) and workers (which ask for checkpoints and write the manifest).

A checkpoint is a directory (or fsspec URL) holding ``manifest.json`` and plain ``.npy``
files, readable with ``json`` and ``numpy.load`` alone; see docs/checkpoints.md.
:func:`read_manifest` gives a training script the iteration to resume from;
:func:`read_table` loads a whole table into memory.
"""

from ._format import (
    FORMAT,
    MANIFEST,
    VERSION,
    build_manifest,
    load_file,
    read_manifest,
    read_table,
    server_files,
    write_manifest,
)
from ._location import Location, confined, open_location

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "Location",
    "build_manifest",
    "confined",
    "load_file",
    "open_location",
    "read_manifest",
    "read_table",
    "server_files",
    "write_manifest",
]
