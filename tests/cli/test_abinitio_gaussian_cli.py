"""`cryogmm abinitio --noise-model gaussian`: outputs and refusals of bad input (its resume: test_abinitio_cli)."""

from __future__ import annotations

import json
import numpy as np
import pandas as pd
import pytest

from cryogmm.cli import main
from cryogmm.geometry.so3 import random_rotations
from cryogmm.io.mrc import write_stack
from cryogmm.io.star import format_image_name, write_particles
from cryogmm.simulate.images import add_noise, project_atoms
from cryogmm.simulate.phantom import asymmetric_phantom

PIXEL = 6.0
BOX = 20
TINY = ["--noise-model", "gaussian", "--restarts", "2", "--jobs", "1", "--components-initial", "10",
        "--components", "20", "--initial-box", "16", "--rotations", "50", "--cycles", "2", "--refine-steps", "6",
        "--burn-in", "2", "--thin", "2", "--quiet"]


@pytest.fixture(scope="module")
def images():
    coordinates, z = asymmetric_phantom(800)
    rotations = random_rotations(np.random.default_rng(4), 6)
    clean = project_atoms(coordinates, z, rotations, None, 20.0, BOX, PIXEL, dtype=np.float64)
    # class averages as they come: zero-mean noise, a background offset, negative pixels
    return add_noise(np.random.default_rng(1), clean, 10.0) - 0.05 * clean.max()


@pytest.fixture
def stack(tmp_path, images):
    path = tmp_path / "averages.mrcs"
    write_stack(path, images, PIXEL)
    return path


def test_gaussian_model_takes_negative_images_and_writes_every_output(tmp_path, stack):
    out = tmp_path / "run"
    assert main(["abinitio", str(stack), "--seed", "3", "--output", str(out)] + TINY) == 0
    assert {"map.mrc", "pseudoatoms.pdb", "orientations.star", "summary.json", "run.log"} <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noise_model"] == "gaussian"
    refinement = summary["samplers"]["refinement"]
    for block in ("means", "size", "rotations", "translations"):
        assert 0.0 < refinement["acceptance_rates"][block] <= 1.0
        assert refinement["step_sizes"][{"means": "means", "size": "log_size", "rotations": "rotations_in_radians",
                                         "translations": "translations_in_angstroms"}[block]] > 0
    assert summary["chosen_restart"] == 1 + int(np.argmax(summary["restart_log_posteriors"]))
    log = (out / "run.log").read_text()
    assert "noise model gaussian" in log and "acceptance" in log and "step sizes" in log
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["noise_model"] == "gaussian" and settings["components"] == 20
    assert settings["resolved"]["initial_temperature"] > 1
    # the report's traces: log-posterior and sigma per state, the median pose changes per sweep
    traces = json.loads((out / "traces.json").read_text())["refinement"]
    n_sweeps = len(traces["log_posterior"]) - 1
    assert len(traces["sigma_in_angstroms"]) == n_sweeps + 1
    assert len(traces["rotation_change_median_degrees"]) == len(traces["shift_change_median_angstroms"]) == n_sweeps
    assert max(traces["rotation_change_median_degrees"]) > 0 and np.all(np.isfinite(traces["shift_change_median_angstroms"]))


def _expect_refusal(capsys, argv, fragment, tmp_path, out="run"):
    assert main(argv + ["--output", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / out).exists()
    assert not (tmp_path / f".{out}.checkpoint").exists()


def test_replica_exchange_reports_swap_rates(tmp_path, stack):
    out = tmp_path / "tempered"
    assert main(["abinitio", str(stack), "--seed", "4", "--temperatures", "1,1.5,2.25", "--output", str(out)]
                + TINY) == 0
    refinement = json.loads((out / "summary.json").read_text())["samplers"]["refinement"]
    assert refinement["temperatures"] == [1.0, 1.5, 2.25]
    assert len(refinement["swap_rates"]) == 2 and all(0.0 <= r <= 1.0 for r in refinement["swap_rates"])
    assert "swap rates" in (out / "run.log").read_text()


def test_bad_noise_model_options_are_refused(tmp_path, stack, capsys):
    _expect_refusal(capsys, ["abinitio", str(stack), "--noise-model", "laplace"], "--noise-model laplace", tmp_path)
    _expect_refusal(capsys, ["abinitio", str(stack), "--ctf-initial-stage", "wiener"] + TINY,
                    "--ctf-initial-stage wiener", tmp_path)
    _expect_refusal(capsys, ["abinitio", str(stack), "--final-map", "fourier-inversion"] + TINY,
                    "--final-map", tmp_path)
    _expect_refusal(capsys, ["abinitio", str(stack), "--final-map", "sharpest"], "--final-map sharpest", tmp_path)
    _expect_refusal(capsys, ["abinitio", str(stack), "--dask-scheduler", "tcp://x:1"] + TINY, "--dask-scheduler",
                    tmp_path)
    for ladder, fragment in (("1,0", "positive"), ("1,-2", "positive"), ("1,3,2", "increase"), ("2,4", "start at 1"),
                             ("1,x", "comma-separated")):
        _expect_refusal(capsys, ["abinitio", str(stack), "--temperatures", ladder] + TINY, fragment, tmp_path)


def _star(tmp_path, stack, n, ctf: bool):
    columns = {"rlnImageName": [format_image_name(i, stack.name) for i in range(n)], "rlnOpticsGroup": 1}
    if ctf:
        columns.update(rlnDefocusU=np.linspace(10000.0, 30000.0, n), rlnDefocusV=np.linspace(10000.0, 30000.0, n),
                       rlnDefocusAngle=0.0)
    path = tmp_path / ("with_ctf.star" if ctf else "without_ctf.star")
    write_particles(path, pd.DataFrame(columns), {"rlnOpticsGroupName": "opticsGroup1", "rlnImagePixelSize": PIXEL,
                                                  "rlnImageSize": BOX, "rlnImageDimensionality": 2,
                                                  "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                                                  "rlnAmplitudeContrast": 0.1})
    return path


def test_ctf_option_needs_ctf_columns_and_the_gaussian_model(tmp_path, stack, images, capsys):
    bare = ["abinitio", str(stack), "--ctf"] + TINY
    _expect_refusal(capsys, bare, "bare image stack", tmp_path)
    without = _star(tmp_path, stack, len(images), ctf=False)
    _expect_refusal(capsys, ["abinitio", str(without), "--ctf"] + TINY, "no CTF columns", tmp_path)
    with_ctf = _star(tmp_path, stack, len(images), ctf=True)
    _expect_refusal(capsys, ["abinitio", str(with_ctf), "--ctf", "--noise-model", "poisson"],
                    "--noise-model gaussian", tmp_path)
    _expect_refusal(capsys, ["abinitio", str(with_ctf), "--ctf", "--prepare"] + TINY, "--prepare", tmp_path)
    # and with CTF columns it runs, the model convolved with each image's CTF
    out = tmp_path / "ctf_run"
    assert main(["abinitio", str(with_ctf), "--ctf", "--seed", "2", "--output", str(out)] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noise_model"] == "gaussian"
    assert json.loads((out / "settings.json").read_text())["settings"]["resolved"]["ctf"] is True
    # the initial stage searched the deconvolved images, as the summary says
    assert summary["samplers"]["initial_stage_images"][0].startswith("single-frame deconvolution"), summary["samplers"]
