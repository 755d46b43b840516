"""Run folders: written under a temporary name, renamed into place only when complete.

Every run folder records the cryogmm version, the seed and all settings (`settings.json`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cryogmm import __version__
from cryogmm.errors import InputError

logger = logging.getLogger(__name__)

# names that read as a file: an output folder called `groel.pdb` is more likely a slip than a wish
FILE_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent", ".mrc", ".mrcs", ".map", ".star", ".json", ".png", ".npz",
                 ".txt", ".log", ".gz")


def check_output_dir(path: str | os.PathLike, force: bool, option: str = "--output") -> Path:
    """Refuse an existing output folder unless `force`; refuse a path that is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder; choose another path")
    if path.exists() and not force:
        raise InputError(f"{option} {path}: folder exists; pass --force to replace it or choose another path")
    return path


class RunFolder:
    """Context manager: a temporary sibling folder that becomes `path` on success.

    On an exception the temporary folder is removed and `path` is left untouched.
    """

    def __init__(self, path: str | os.PathLike, force: bool = False, option: str = "--output"):
        self.path = check_output_dir(path, force, option)
        self.tmp: Path | None = None
        if self.path.suffix.lower() in FILE_SUFFIXES:
            logger.warning("warning: %s %s is the output folder (its files go inside it), not a file; a name "
                           "such as %s avoids confusion", option, self.path, self.path.with_suffix("").name)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # os.mkdir with mode 0o777 lets the umask decide who may read the results (colleagues on
        # shared storage, as for any folder the user makes); tempfile.mkdtemp would make it 0700
        while True:
            candidate = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(4)}")
            try:
                os.mkdir(candidate, 0o777)
            except FileExistsError:
                continue
            self.tmp = candidate
            return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            self.path.rename(old)
            self.tmp.rename(self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.path)
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=True) + "\n")
    tmp.replace(path)


def write_settings(folder: str | os.PathLike, command: str, settings: dict, seed: int | None) -> None:
    """`settings.json`: version, command, seed and every setting of the run."""
    write_json(Path(folder) / "settings.json",
               {"cryogmm_version": __version__, "command": command, "seed": seed, "settings": settings})
