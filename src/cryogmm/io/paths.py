"""Input paths: a missing file and a folder given where a file is needed are told apart."""

from __future__ import annotations

import os
from pathlib import Path

from cryogmm.errors import InputError

INPUT_SUFFIXES = (".mrcs", ".mrc", ".map", ".star", ".cs", ".npz", ".pdb", ".cif", ".ent", ".gz")


def require_file(path: str | os.PathLike, option: str = "") -> Path:
    """`path` as a Path if it is a file; InputError (naming `option`, if given) if it is missing
    or a folder. For a folder the message names a few files in it that cryogmm could read."""
    path = Path(path)
    name = f"{option} {path}" if option else f"{path}"
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        hint = f", e.g. {path / inside[0]}" if inside else ""
        raise InputError(f"{name}: is a folder, not a file; give the file to read{hint}")
    if not path.is_file():
        raise InputError(f"{name}: file not found; check the path")
    return path


def format_image_name(index0: int, stack_name: str) -> str:
    """`(0, "stack.mrcs")` -> `"000001@stack.mrcs"` (1-based, 6 digits)."""
    return f"{int(index0) + 1:06d}@{stack_name}"
