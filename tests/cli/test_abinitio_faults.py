"""Fault tests of `cryogmm abinitio` (issue 13): a run killed with SIGKILL, or interrupted with
SIGINT, continues with --resume to a map.mrc and an orientations.star bit-identical to those of an
uninterrupted run with the same seed; and two runs with the same seed are identical.

map.mrc is compared byte for byte except its first header label, and orientations.star except
its first line (starfile's "# Created by ... at TIME on DATE"): both record when the file was
written. The interrupted runs are subprocesses (a signal to the test process itself would be
another test); the uninterrupted and resumed runs run in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.geometry.so3 import random_rotations
from cryogmm.io.mrc import write_stack
from cryogmm.simulate.images import project_atoms
from cryogmm.simulate.phantom import asymmetric_phantom

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# two restarts (checkpointed one by one) and, with the fixed schedule, a refinement of a 100-step
# warm-up (checkpointed at step 50), one global step, 20 burn-in and 20 sampling steps: long
# enough that a signal sent when a checkpoint appears lands mid-run
OPTIONS = ["--restarts", "2", "--jobs", "1", "--components-initial", "10", "--components", "20", "--initial-box", "16",
           "--initial-counts", "100", "--counts", "300", "--rotations", "30", "--cycles", "2", "--refine-steps", "40",
           "--burn-in", "20", "--thin", "5", "--fixed-schedule", "--seed", "11", "--quiet"]
LABEL = slice(224, 304)  # MRC header label 1: "cryogmm VERSION  DATE TIME"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    coordinates, z = asymmetric_phantom(400)
    images = project_atoms(coordinates, z, random_rotations(np.random.default_rng(2), 6), None, 20.0, 24, 6.0,
                           dtype=np.float64)
    path = tmp_path_factory.mktemp("faults") / "averages.mrcs"
    write_stack(path, images, 6.0)
    return path


@pytest.fixture(scope="module")
def uninterrupted(stack) -> Path:
    out = stack.parent / "uninterrupted"
    assert main(["abinitio", str(stack), "--output", str(out)] + OPTIONS) == 0
    return out


def _outputs(folder: Path) -> tuple[bytes, bytes]:
    raw = bytearray((folder / "map.mrc").read_bytes())
    raw[LABEL] = b" " * (LABEL.stop - LABEL.start)
    star = (folder / "orientations.star").read_bytes()
    assert star.startswith(b"# Created by the starfile Python package")
    return bytes(raw), star.split(b"\n", 1)[1]


def _assert_identical(folder: Path, reference: Path) -> None:
    mrc, star = _outputs(folder)
    mrc_ref, star_ref = _outputs(reference)
    assert len(mrc) == len(mrc_ref) and mrc == mrc_ref, "map.mrc differs"
    assert star == star_ref, "orientations.star differs"


def _start(stack: Path, out: Path, stderr: Path) -> subprocess.Popen:
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "cryogmm", "abinitio", str(stack), "--output", str(out)]
                                + OPTIONS, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _wait_for(path: Path, process: subprocess.Popen, stderr: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"{path.name} never appeared (exit status {process.returncode}):\n{stderr.read_text()}")
        time.sleep(0.02)


def test_two_runs_with_the_same_seed_are_identical(stack, uninterrupted, tmp_path):
    again = tmp_path / "again"
    assert main(["abinitio", str(stack), "--output", str(again)] + OPTIONS) == 0
    _assert_identical(again, uninterrupted)
    assert not json.loads((again / "summary.json").read_text())["timings_in_seconds"].get("resumed", False)


def test_sigkill_then_resume_is_bit_identical(stack, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    stderr = tmp_path / "stderr.txt"
    process = _start(stack, out, stderr)
    _wait_for(tmp_path / ".run.checkpoint" / "restart_0.npz", process, stderr)  # the first restart is saved
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    left = list(tmp_path.glob(".run.tmp-*"))
    assert len(left) == 1 and not out.exists()  # a killed run cannot clean up
    # the next run names what was left, and --resume cleans it and continues from the checkpoint
    assert main(["abinitio", str(stack), "--output", str(out)] + OPTIONS) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and left[0].name in err and "--resume" in err, err
    assert main(["abinitio", str(stack), "--output", str(out), "--resume"] + OPTIONS) == 0
    assert "resuming: 1 of 2 restarts already done" in capsys.readouterr().err
    _assert_identical(out, uninterrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "stderr.txt"]  # checkpoints and leftovers gone


def test_sigint_then_resume_is_bit_identical(stack, uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    stderr = tmp_path / "stderr.txt"
    process = _start(stack, out, stderr)
    _wait_for(tmp_path / ".run.checkpoint" / "refinement_warmup.npz", process, stderr)  # warm-up step 50 saved
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=60)
    text = stderr.read_text()
    assert status == 130, text
    assert "Traceback" not in text and "SystemError" not in text, text
    last = text.strip().splitlines()[-1]
    # where it stopped depends on when the signal lands: inside the warm-up ("from refinement warm-up
    # step N") or just after it ("from the end of the refinement warm-up"); either way in the refinement
    assert last.startswith("cryogmm abinitio: interrupted; continue with --resume from ") and "refinement" in last, text
    assert text.count("interrupted") == 1
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))  # nothing half-written
    assert main(["abinitio", str(stack), "--output", str(out), "--resume"] + OPTIONS) == 0
    capsys.readouterr()
    # it continued the saved warm-up chain (the same result from scratch would prove nothing)
    assert json.loads((out / "summary.json").read_text())["timings_in_seconds"]["resumed"] is True
    _assert_identical(out, uninterrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "stderr.txt"]
