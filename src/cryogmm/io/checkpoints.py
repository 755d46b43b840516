"""Checkpoints of long runs: one `.npz` per named piece, written atomically, in a folder beside
the output folder (`.NAME.checkpoint/`), so that an interrupted run resumes with `--resume` and
a finished one leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.runs import check_output_dir, stale_temporary_folders


def checkpoint_dir_for(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.checkpoint")


class CheckpointFolder:
    """`save(name, arrays)` / `load(name)` of dicts of arrays, plus the settings they belong to.

    A resumed run must use the same settings and seed; `check_settings` refuses otherwise.
    """

    # checkpointed chains, the latest stage first (a resumed run continues from the first present)
    CHAIN_ORDER = ("refinement_sampling", "refinement_burn_in", "refinement_warmup", "refinement")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def start(self, settings: dict, resume: bool, output_option: str = "--output") -> None:
        """Create the folder for a new run, or check it for a resumed one."""
        record = self.path / "settings.json"
        if resume:
            if not record.exists():
                raise InputError(f"--resume: no checkpoint of an interrupted run in {self.path}; run without --resume")
            saved = json.loads(record.read_text())
            if saved != json.loads(json.dumps(settings, default=str)):
                changed = sorted(k for k in set(saved) | set(settings)
                                 if saved.get(k) != json.loads(json.dumps(settings.get(k), default=str)))
                raise InputError(f"--resume: the settings differ from the interrupted run's ({', '.join(changed)}); "
                                 "use the same options, or start over with --force")
            return
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(settings, indent=2, default=str))
        os.replace(tmp, record)

    def exists(self) -> bool:
        return (self.path / "settings.json").exists()

    def save(self, name: str, arrays: dict) -> None:
        tmp = self.path / f"{name}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path / f"{name}.npz")

    def load(self, name: str) -> dict | None:
        file = self.path / f"{name}.npz"
        if not file.exists():
            return None
        with np.load(file, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def progress(self) -> str | None:
        """Where a resumed run continues, in words, from the pieces saved so far; None if none.

        Knows the pieces of the pipelines: driver chains (a `step` and whether the chain
        `finished`; the latest chain in `CHAIN_ORDER` wins), a state with an `iteration` (possibly
        inside `scalars_json`), and ab initio restarts (`restart_N`, out of `n_restarts` in the
        recorded settings)."""
        names = sorted(p.name[:-4] for p in self.path.glob("*.npz") if not p.name.endswith(".tmp.npz"))

        def value(name, key):
            try:
                arrays = self.load(name)
                # a pipeline's state may keep its scalars as one JSON string
                return arrays[key] if key in arrays else json.loads(str(arrays["scalars_json"]))[key]
            except (KeyError, OSError, ValueError, TypeError):
                return None

        chains = [n for n in self.CHAIN_ORDER if n in names]
        if chains:
            name = chains[0]
            words = name.replace("_", " ").replace("warmup", "warm-up").replace("burn in", "burn-in")
            if value(name, "finished") is not None and bool(value(name, "finished")):
                return f"the end of the {words}"
            step = value(name, "step")
            return f"{words} step {int(step)}" if step is not None else f"the {words}"
        if "state" in names and value("state", "iteration") is not None:
            return f"the checkpoint after iteration {int(value('state', 'iteration'))}"
        restarts = [n for n in names if n.startswith("restart_")]
        if restarts:
            try:
                total = f" of {int(json.loads((self.path / 'settings.json').read_text())['n_restarts'])}"
            except (OSError, KeyError, ValueError, TypeError):
                total = ""
            return f"the initial stage with {len(restarts)}{total} restarts done"
        return ", ".join(names) or None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_resume(checkpoints: CheckpointFolder, output: str | os.PathLike, resume: bool, force: bool) -> None:
    """Refuse, before any work, a --resume with nothing to resume and a new run over checkpoints."""
    output = Path(output)
    if resume and not checkpoints.exists():
        if output.is_dir():
            raise InputError(f"--resume: {output} is a finished run (no checkpoints of an interrupted run in "
                             f"{checkpoints.path}); nothing to resume: choose another --output, or pass --force "
                             "instead of --resume to run it again")
        raise InputError(f"--resume: no checkpoint of an interrupted run in {checkpoints.path}; run without --resume")
    if not resume:
        if checkpoints.exists() and not force:
            left = stale_temporary_folders(output)
            also = (f" and its unfinished output folder {left[0].name} (killed before it could clean up; "
                    "removed by either)") if left else ""
            raise InputError(f"--output {output}: an interrupted run left checkpoints in {checkpoints.path}{also}; "
                             "pass --resume to continue it or --force to start over")
        check_output_dir(output, force)
