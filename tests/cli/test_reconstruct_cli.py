"""`cryogmm reconstruct` end to end on images simulated from a tiny model, and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.io.mrc import read_map
from cryogmm.io.pseudoatoms import read_pseudoatoms
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.mixture import evaluate

ATOMS = [  # element, x, y, z in Å: an asymmetric cluster away from the origin
    ("C", 40.0, 12.0, -7.0), ("N", 48.0, 12.0, -7.0), ("O", 40.0, 17.0, -7.0),
    ("S", 40.0, 12.0, -13.0), ("C", 36.0, 9.0, -5.0), ("P", 43.0, 15.0, -4.0),
]
BOX, PIXEL = 24, 3.0
FAST = ["--components", "8", "--counts", "3000", "--steps", "60", "--burn-in", "40", "--thin", "4", "--quiet"]
GIBBS_OUTPUTS = ["chimerax.cxc", "map.mrc", "map_slices.png", "pseudoatoms.cif", "pseudoatoms.pdb", "report.html", "run.log",
                 "settings.json", "summary.json", "trace.png"]
FOURIER_OUTPUTS = ["chimerax.cxc", "map.mrc", "map_slices.png", "report.html", "run.log", "settings.json", "summary.json"]


def _write_model(path):
    lines = []
    for i, (element, x, y, z) in enumerate(ATOMS, start=1):
        lines.append(f"ATOM  {i:5d}  {element:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"{1.0:6.2f}{20.0:6.2f}          {element:>2s}")
    path.write_text("\n".join(lines + ["END"]) + "\n")


def _simulate(folder, output, *extra):
    model = folder / "tiny.pdb"
    _write_model(model)
    assert main(["simulate-images", str(model), "--number", "12", "--box", str(BOX), "--pixel-size", str(PIXEL),
                 "--resolution", "12", "--max-shift", "4", "--seed", "1", "--output", str(output), *extra]) == 0
    model.unlink()
    return output


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("data") / "sim")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("data") / "noisy", "--snr", "1")


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())  # hidden temporary files and folders included


def test_gibbs_writes_every_output(simulated, tmp_path):
    out = tmp_path / "gibbs"
    assert main(["reconstruct", str(simulated / "particles.star"), "--reference", str(simulated / "reference.mrc"),
                 "--seed", "3", "--output", str(out)] + FAST) == 0
    assert _listing(out) == GIBBS_OUTPUTS
    assert _listing(tmp_path) == ["gibbs"]  # no temporary folder left behind
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "seed", "settings", "timings_in_seconds", "log_posterior", "sigma_in_angstroms", "reference",
                "n_samples_averaged"):
        assert key in summary, key
    assert summary["seed"] == 3 and summary["method"] == "gibbs" and summary["n_samples_averaged"] == 5
    compared = summary["reference"]  # the same names as abinitio's summary, not aligned (known poses)
    assert compared["cross_correlation"] > 0.97 and not compared["aligned"]  # measured 0.9963 (seeds 4-7: 0.989-0.999)
    assert {"fsc_0.5_in_angstroms", "fsc_0.143_in_angstroms"} <= set(compared)
    volume = read_map(out / "map.mrc")
    reference = read_map(simulated / "reference.mrc")
    assert volume.data.shape == (BOX,) * 3 and volume.voxel_size_in_angstroms == pytest.approx(PIXEL)
    assert volume.origin_in_angstroms == reference.origin_in_angstroms == (0.0, 0.0, 0.0)
    assert cross_correlation(volume.data, reference.data) == pytest.approx(compared["cross_correlation"], abs=1e-5)
    # the pseudo-atoms overlay map.mrc
    atoms = read_pseudoatoms(out / "pseudoatoms.pdb")
    assert atoms.n_components == 8
    assert cross_correlation(evaluate(atoms, volume.grid), volume.data) > 0.9  # measured 0.997
    settings = json.loads((out / "settings.json").read_text())
    assert settings["command"] == "reconstruct" and settings["seed"] == 3
    assert "particles.star" in (out / "run.log").read_text()
    assert (out / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_map(simulated, tmp_path):
    for name in ("a", "b"):
        assert main(["reconstruct", str(simulated / "particles.star"), "--seed", "4", "--output",
                     str(tmp_path / name)] + FAST) == 0
    np.testing.assert_array_equal(read_map(tmp_path / "a" / "map.mrc").data, read_map(tmp_path / "b" / "map.mrc").data)


def test_fourier_method(simulated, tmp_path):
    out = tmp_path / "fourier"
    assert main(["reconstruct", str(simulated / "particles.star"), "--method", "fourier", "--reference",
                 str(simulated / "reference.mrc"), "--output", str(out), "--quiet"]) == 0
    assert _listing(out) == FOURIER_OUTPUTS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fourier" and "total_seconds" in summary["timings_in_seconds"]
    assert summary["reference"]["cross_correlation"] > 0.9  # measured 0.931 (12 images leave gaps in Fourier space)
    assert np.all(np.isfinite(read_map(out / "map.mrc").data))


def test_fourier_accepts_noisy_images(noisy, tmp_path):
    assert main(["reconstruct", str(noisy / "particles.star"), "--method", "fourier", "--symmetry", "C2",
                 "--output", str(tmp_path / "f"), "--quiet"]) == 0


def _no_angles(folder):
    star = folder / "no_angles.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n000001@images.mrcs\n")
    return star


BAD_INPUTS = {  # star file (in the simulated folder) or a maker, options, text in the message
    "missing star": (lambda sim, tmp: tmp / "missing.star", [], "not found"),
    "star without angles": (lambda sim, tmp: _no_angles(tmp), [], "rlnAngleRot"),
    "unknown symmetry": (lambda sim, tmp: sim / "particles.star", ["--symmetry", "Q5"], "--symmetry"),
    "burn-in above steps": (lambda sim, tmp: sim / "particles.star", ["--burn-in", "99"], "--burn-in"),
    "components 0": (lambda sim, tmp: sim / "particles.star", ["--components", "0"], "--components"),
    "reference of another box": (lambda sim, tmp: sim / "particles.star", ["--reference", "REF"], "--reference"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_returns_2_and_writes_nothing(simulated, tmp_path, capsys, case):
    maker, options, named = BAD_INPUTS[case]
    star = maker(simulated, tmp_path)
    if "REF" in options:
        from cryogmm.io.mrc import write_map

        write_map(tmp_path / "small.mrc", np.ones((10, 10, 10)), PIXEL)
        options = ["--reference", str(tmp_path / "small.mrc")]
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(["reconstruct", str(star), "--output", str(tmp_path / "out")] + FAST + options) == 2
    assert _listing(tmp_path) == before  # no output folder, no temporary folder
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cryogmm reconstruct: error:") and named in err


def test_negative_images_are_refused(noisy, tmp_path, capsys):
    capsys.readouterr()
    assert main(["reconstruct", str(noisy / "particles.star"), "--output", str(tmp_path / "out")] + FAST) == 2
    assert _listing(tmp_path) == []
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "deconvolve/mask them first" in err and "--method fourier" in err, err


def test_existing_output_needs_force(simulated, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    assert main(["reconstruct", str(simulated / "particles.star"), "--method", "fourier", "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and _listing(out) == []
    assert main(["reconstruct", str(simulated / "particles.star"), "--method", "fourier", "--output", str(out),
                 "--force"]) == 0
    assert _listing(out) == FOURIER_OUTPUTS
