"""Run folders: written under a temporary name, renamed into place only when complete.

Every run folder records the cryogmm version, the seed and all settings (`settings.json`).
The temporary name `.NAME.tmp-PID-XXXXXXXX` carries the process id, so that a folder left by a
run that was killed (SIGKILL, a power cut) is told apart from one a running process still fills:
the next run names it, and --force or --resume removes it. A run that fails with a bug keeps its
`run.log` (with the traceback) beside the output as `NAME-failed.log`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cryogmm import __version__
from cryogmm.errors import InputError, caused_by_interrupt

logger = logging.getLogger(__name__)

# names that read as a file: an output folder called `groel.pdb` is more likely a slip than a wish
FILE_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent", ".mrc", ".mrcs", ".map", ".star", ".json", ".png", ".npz",
                 ".txt", ".log", ".gz")


def check_output_dir(path: str | os.PathLike, force: bool, option: str = "--output") -> Path:
    """Refuse an existing output folder unless `force`; refuse a path that is a file or that
    cannot be created. Folders left by killed runs are named (and removed with `force`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder; choose another path")
    if path.exists() and not force:
        raise InputError(f"{option} {path}: folder exists; pass --force to replace it or choose another path")
    check_writable(path, option)
    leftovers = stale_temporary_folders(path)
    for folder in leftovers:
        if force:
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("removed %s, the unfinished folder of an earlier run that was killed before it could "
                        "clean up", folder)
        else:
            logger.warning("warning: %s is the unfinished folder of an earlier run that was killed before it could "
                           "clean up; --force (or --resume) removes it", folder)
    return path


def check_writable(path: str | os.PathLike, option: str = "--output") -> None:
    """Refuse an output path that cannot be created: its nearest existing folder is a file, or
    a file cannot be made in it (tried, not guessed from permission bits, which do not stop root
    and say nothing of read-only or virtual file systems such as /proc)."""
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{option} {path}: cannot be created, {ancestor} is a file and not a folder; "
                         "choose another path")
    reason = why_not_writable(ancestor)
    if reason:
        raise InputError(f"{option} {path}: cannot be created in {ancestor} ({reason}); "
                         "choose a folder you can write to")


def why_not_writable(folder: str | os.PathLike) -> str | None:
    """Why no file can be created in `folder` (the system's words), or None if one can."""
    probe = Path(folder) / f".cryogmm-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        return exc.strerror or str(exc)
    os.unlink(probe)
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def stale_temporary_folders(path: str | os.PathLike) -> list[Path]:
    """`.NAME.tmp-*` folders beside `path` whose process is gone (killed before it cleaned up)."""
    path = Path(path)
    stale = []
    for folder in sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*")):
        parts = folder.name.rsplit(".tmp-", 1)[1].split("-")  # PID-XXXXXXXX (older names lack the PID)
        running = len(parts) == 2 and parts[0].isdigit() and _process_alive(int(parts[0]))
        if folder.is_dir() and not running:
            stale.append(folder)
    return stale


class RunFolder:
    """Context manager: a temporary sibling folder that becomes `path` on success.

    On an exception the temporary folder is removed and `path` is left untouched; after a bug
    (not bad input, not an interrupt) its run.log is kept as `NAME-failed.log` beside `path`,
    and the exception's `cryogmm_run_log` attribute names it (the CLI appends the traceback).
    """

    def __init__(self, path: str | os.PathLike, force: bool = False, option: str = "--output"):
        self.path = check_output_dir(path, force, option)
        self.option = option
        self.tmp: Path | None = None
        if self.path.suffix.lower() in FILE_SUFFIXES:
            logger.warning("warning: %s %s is the output folder (its files go inside it), not a file; a name "
                           "such as %s avoids confusion", option, self.path, self.path.with_suffix("").name)

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.option} {self.path}: cannot create {self.path.parent} ({exc.strerror}); "
                             "choose a folder you can write to") from exc
        # os.mkdir with mode 0o777 lets the umask decide who may read the results (colleagues on
        # shared storage, as for any folder the user makes); tempfile.mkdtemp would make it 0700
        while True:
            candidate = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
            try:
                os.mkdir(candidate, 0o777)
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"{self.option} {self.path}: cannot create a folder in {self.path.parent} "
                                 f"({exc.strerror}); choose a folder you can write to") from exc
            self.tmp = candidate
            return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            bug = not issubclass(exc_type, InputError) and not caused_by_interrupt(exc)
            if bug and (self.tmp / "run.log").is_file():
                kept = self.path.with_name(f"{self.path.name}-failed.log")
                try:
                    os.replace(self.tmp / "run.log", kept)
                    exc.cryogmm_run_log = kept
                except (OSError, AttributeError):
                    pass
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


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


# a lower bound of the memory a mixture component costs a sampler: `cryogmm reconstruct` with
# K = 1e6 on 24-pixel images held 0.76 kB per component more than with K = 10
COMPONENT_BYTES = 500


def check_memory(n_bytes: float, option: str, what: str) -> None:
    """Refuse up front a size that needs more memory than this machine has at all (`n_bytes`:
    a lower bound of what the run allocates), instead of failing with a MemoryError later."""
    total = physical_memory_bytes()
    if total is not None and n_bytes > total:
        raise InputError(f"{option}: {what} need at least {n_bytes / 2**30:,.0f} GiB of memory, more than this "
                         f"machine's {total / 2**30:,.0f} GiB; choose a smaller value")


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
