"""Ctrl-C during the restart stage of `cryogmm abinitio --jobs 2`: the workers end, the command
exits promptly with status 130 and one line, the checkpoints stay for --resume (issue 14, point 1).

The command runs in a subprocess in its own process group. SIGINT goes to the whole group, as a
terminal sends it (once, or twice in quick succession: the second must not break off the
clean-up), or to the main process only (`kill -INT`): then the workers would compute on for
minutes if the main process waited for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryogmm.geometry.so3 import random_rotations
from cryogmm.io.mrc import write_stack
from cryogmm.simulate.images import project_atoms
from cryogmm.simulate.phantom import asymmetric_phantom

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists() or sys.platform != "linux",
                                reason="reads the process table from /proc (Linux)")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), int(fields[2])) if fields[0] != "Z" else None


def _processes(predicate) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and predicate(*stat):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("target", ["group", "group twice", "main process"])
def test_ctrl_c_in_the_restart_stage_ends_the_workers_and_exits_130(tmp_path, target):
    coordinates, z = asymmetric_phantom(1500)
    images = project_atoms(coordinates, z, random_rotations(np.random.default_rng(4), 8), None, 20.0, 24, 6.0,
                           dtype=np.float64)
    write_stack(tmp_path / "averages.mrcs", images, 6.0)
    out = tmp_path / "run"
    # restarts that take minutes: the interrupt certainly lands while both workers compute
    argv = [sys.executable, "-m", "cryogmm", "abinitio", str(tmp_path / "averages.mrcs"), "--restarts", "2",
            "--jobs", "2", "--cycles", "500", "--initial-box", "16", "--seed", "1", "--quiet", "--output", str(out)]
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    group = process.pid  # the session leader's pid is its group's id
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and process.poll() is None:
            workers = _processes(lambda parent, _: parent == process.pid)
            if "initial stage" in stderr.read_text() and len(workers) >= 3:  # 2 workers + resource tracker
                break
            time.sleep(0.2)
        assert process.poll() is None, stderr.read_text()
        assert len(workers) >= 3, f"the restart workers did not start: {workers}\n{stderr.read_text()}"
        time.sleep(2.5)  # into the restarts (the workers have imported everything and compute)
        sent = time.monotonic()
        if target.startswith("group"):
            os.killpg(group, signal.SIGINT)
            if target == "group twice":
                time.sleep(0.05)
                os.killpg(group, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after Ctrl-C:\n{stderr.read_text()}")
        elapsed = time.monotonic() - sent
        # nothing of the run is left: no worker, no resource tracker (they share the group)
        for _ in range(50):
            left = _processes(lambda _, pgrp: pgrp == group)
            if not left:
                break
            time.sleep(0.1)
        text = stderr.read_text()
        assert returncode == 130, text
        assert elapsed < 5.0, f"{elapsed:.1f} s from Ctrl-C to exit"
        assert left == [], f"processes left after exit: {left}"
        assert "Traceback" not in text and "leaked" not in text, text
        last = text.strip().splitlines()[-1]
        assert last.startswith("cryogmm abinitio: interrupted") and "--resume" in last, text
        assert text.count("interrupted") == 1, text
        assert (tmp_path / ".run.checkpoint" / "settings.json").is_file()  # kept for --resume
        assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))
    finally:
        if process.poll() is None or _processes(lambda _, pgrp: pgrp == group):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
