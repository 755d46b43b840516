"""`cryogmm fit-map` end to end on a tiny synthetic map, and its refusals of bad input."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.grid import Grid
from cryogmm.io.mrc import read_map, write_map, write_stack
from cryogmm.io.pseudoatoms import read_pseudoatoms
from cryogmm.metrics.correlation import cross_correlation
from cryogmm.mixture import GaussianMixture, evaluate

VOXEL = 2.0
ORIGIN = (10.0, -20.0, 30.0)  # (x, y, z) of voxel 0, in Å
SHAPE = (24, 24, 24)
OUTPUTS = {"pseudoatoms.pdb", "pseudoatoms.cif", "fitted_map.mrc", "fitted_map_slices.png", "summary.json",
           "trace.png", "run.log", "settings.json", "report.html", "chimerax.cxc"}
FAST = ["--components", "4", "--counts", "2e4", "--steps", "15", "--thin", "2", "--quiet"]


def _blob_map():
    grid = Grid(SHAPE, VOXEL, ORIGIN)
    center = grid.center_in_angstroms()
    blobs = GaussianMixture(center + np.array([[-8.0, 4.0, 2.0], [8.0, -6.0, 0.0], [2.0, 8.0, -8.0],
                                               [0.0, -4.0, 8.0]]), [0.3, 0.25, 0.25, 0.2], 1 / 4.0**2)
    return evaluate(blobs, grid).astype(np.float32)


@pytest.fixture
def map_path(tmp_path):
    path = tmp_path / "blobs.mrc"
    write_map(path, _blob_map(), VOXEL, ORIGIN)
    return path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())  # hidden temporary files and folders included


def test_fit_map_writes_every_output(map_path, tmp_path):
    out = tmp_path / "fit"
    assert main(["fit-map", str(map_path), "--seed", "5", "--output", str(out)] + FAST) == 0
    assert set(_listing(out)) == OUTPUTS
    assert _listing(tmp_path) == ["blobs.mrc", "fit"]  # no temporary folder left behind
    summary = json.loads((out / "summary.json").read_text())
    for key in ("cross_correlation", "sigma_in_angstroms", "log_posterior", "timings_in_seconds", "seed"):
        assert key in summary
    assert summary["timings_in_seconds"]["total"] > 0
    assert summary["seed"] == 5
    assert summary["cross_correlation"] > 0.98
    assert 2.0 < summary["sigma_in_angstroms"] < 8.0
    fitted = read_map(out / "fitted_map.mrc")
    source = read_map(map_path)
    assert fitted.data.shape == source.data.shape
    assert fitted.voxel_size_in_angstroms == pytest.approx(VOXEL)
    np.testing.assert_allclose(fitted.origin_in_angstroms, ORIGIN)
    assert cross_correlation(fitted.data, source.data) == pytest.approx(summary["cross_correlation"], abs=1e-5)
    assert fitted.data.sum(dtype=np.float64) == pytest.approx(source.data.sum(dtype=np.float64), rel=1e-4)
    # the pseudo-atoms sit in the map's coordinates, and both files hold the same mixture
    pdb = read_pseudoatoms(out / "pseudoatoms.pdb")
    cif = read_pseudoatoms(out / "pseudoatoms.cif")
    assert pdb.n_components == 4
    np.testing.assert_allclose(pdb.means_in_angstroms, cif.means_in_angstroms, atol=1e-3)
    assert np.all(np.abs(pdb.means_in_angstroms - Grid(SHAPE, VOXEL, ORIGIN).center_in_angstroms()) < 20)
    assert pdb.sigma_in_angstroms == pytest.approx(summary["sigma_in_angstroms"], rel=1e-6)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["command"] == "fit-map"
    assert settings["settings"]["components"] == 4
    assert "blobs.mrc" in (out / "run.log").read_text()
    assert (out / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_summary(map_path, tmp_path):
    summaries = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert main(["fit-map", str(map_path), "--seed", seed, "--output", str(tmp_path / name)] + FAST) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary.pop("timings_in_seconds")
        summaries.append(summary)
    assert summaries[0] == summaries[1]
    assert summaries[0]["log_posterior"] != summaries[2]["log_posterior"]
    a = read_map(tmp_path / "a" / "fitted_map.mrc").data
    np.testing.assert_array_equal(a, read_map(tmp_path / "b" / "fitted_map.mrc").data)


def test_a_seed_is_drawn_and_recorded_when_not_given(map_path, tmp_path):
    assert main(["fit-map", str(map_path), "--output", str(tmp_path / "fit")] + FAST) == 0
    seed = json.loads((tmp_path / "fit" / "summary.json").read_text())["seed"]
    assert isinstance(seed, int)
    assert json.loads((tmp_path / "fit" / "settings.json").read_text())["seed"] == seed


def _write_text(path):
    path.write_text("this is not an MRC file\n" * 100)


def _write_2d_image(path):
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.ones((24, 24), dtype=np.float32))
        mrc.voxel_size = VOXEL


def _write_stack(path):
    write_stack(path, np.random.default_rng(0).random((5, 24, 24)), VOXEL)


def _write_nan_map(path):
    data = _blob_map()
    data[3, 4, 5] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile warns about the header statistics
        write_map(path, data, VOXEL, ORIGIN)


def _write_zero_map(path):
    write_map(path, np.zeros(SHAPE, dtype=np.float32), VOXEL, ORIGIN)


def _write_zero_voxel_size(path):
    write_map(path, _blob_map(), 0.0, ORIGIN)


BAD_INPUTS = {
    # name: (file name, writer or None for a missing file, extra options, text the message names)
    "missing file": ("absent.mrc", None, [], "absent.mrc"),
    "not MRC": ("notes.mrc", _write_text, [], "notes.mrc"),
    "2D image": ("image.mrc", _write_2d_image, [], "image.mrc"),
    "stack": ("particles.mrcs", _write_stack, [], "particles.mrcs"),
    "NaN": ("nan.mrc", _write_nan_map, [], "nan.mrc"),
    "all zero": ("zero.mrc", _write_zero_map, [], "zero.mrc"),
    "voxel size 0": ("nosize.mrc", _write_zero_voxel_size, [], "--pixel-size"),
    "components 0": ("blobs.mrc", None, ["--components", "0"], "--components"),
    "negative steps": ("blobs.mrc", None, ["--steps", "0"], "--steps"),
    "bad pixel size": ("blobs.mrc", None, ["--pixel-size", "-1"], "--pixel-size"),
    "unknown symmetry": ("blobs.mrc", None, ["--symmetry", "X3"], "--symmetry X3"),
    "a folder": ("maps", lambda path: path.mkdir(), [], "is a folder, not a file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_returns_2_and_writes_nothing(map_path, tmp_path, capsys, case):
    name, writer, options, named = BAD_INPUTS[case]
    path = tmp_path / name
    if writer is not None:
        writer(path)
    argv = ["fit-map", str(path), "--output", str(tmp_path / "fit")] + FAST + options
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    assert _listing(tmp_path) == before  # no output folder, no temporary folder or file
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cryogmm fit-map: error:") and named in err


# bad input found only once the run has started (after the map is read and described in the log)
LATE_BAD_INPUTS = {
    "components above counts": (["--components", "500", "--counts", "200"], ["--components", "--counts"]),
    "negative threshold": (["--threshold", "-1"], ["--threshold"]),
    "threshold above the map": (["--threshold", "1e9"], ["--threshold"]),
}


@pytest.mark.parametrize("case", list(LATE_BAD_INPUTS))
def test_late_bad_input_returns_2_and_writes_nothing(map_path, tmp_path, capsys, case):
    options, named = LATE_BAD_INPUTS[case]
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(["fit-map", str(map_path), "--output", str(tmp_path / "fit")] + FAST + options) == 2
    assert _listing(tmp_path) == before  # the temporary run folder is removed
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("cryogmm fit-map: error:") and all(name in last for name in named)


@pytest.mark.parametrize("case", list(LATE_BAD_INPUTS))
def test_late_bad_input_is_one_line(map_path, tmp_path, capsys, case):
    options, _ = LATE_BAD_INPUTS[case]
    capsys.readouterr()
    assert main(["fit-map", str(map_path), "--output", str(tmp_path / "fit")] + FAST + options) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err


def test_counts_above_the_int32_limit_name_the_option(map_path, tmp_path, capsys):
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(["fit-map", str(map_path), "--output", str(tmp_path / "fit")] + FAST + ["--counts", "3e9"]) == 2
    assert _listing(tmp_path) == before
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--counts" in err, err


def test_voxel_size_0_needs_pixel_size(tmp_path):
    path = tmp_path / "nosize.mrc"
    _write_zero_voxel_size(path)
    assert main(["fit-map", str(path), "--pixel-size", "2", "--seed", "1", "--output", str(tmp_path / "fit")] + FAST) == 0
    fitted = read_map(tmp_path / "fit" / "fitted_map.mrc")
    assert fitted.voxel_size_in_angstroms == pytest.approx(2.0)
    assert json.loads((tmp_path / "fit" / "summary.json").read_text())["voxel_size_in_angstroms"] == 2.0


def test_existing_output_needs_force(map_path, tmp_path, capsys):
    out = tmp_path / "fit"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(["fit-map", str(map_path), "--seed", "1", "--output", str(out)] + FAST) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--force" in err and "fit" in err
    assert _listing(tmp_path) == before and _listing(out) == ["keep.txt"]
    assert main(["fit-map", str(map_path), "--seed", "1", "--output", str(out), "--force"] + FAST) == 0
    assert set(_listing(out)) == OUTPUTS
    assert _listing(tmp_path) == ["blobs.mrc", "fit"]


def test_symmetry_is_imposed_about_the_box_centre(tmp_path, capsys):
    from cryogmm.geometry.symmetry import symmetry_operators
    from cryogmm.samplers.projected import expand_symmetry

    grid = Grid(SHAPE, VOXEL, ORIGIN)
    center = grid.center_in_angstroms()
    unit = GaussianMixture(center + np.array([[9.0, 4.0, 6.0], [3.0, -8.0, 10.0]]), [0.6, 0.4], 1 / 3.0**2)
    truth = expand_symmetry(unit, symmetry_operators("D2"), center)
    write_map(tmp_path / "d2.mrc", evaluate(truth, grid).astype(np.float32), VOXEL, ORIGIN)
    out = tmp_path / "fit"
    assert main(["fit-map", str(tmp_path / "d2.mrc"), "--symmetry", "d2", "--components", "16", "--counts", "5e4",
                 "--steps", "40", "--thin", "2", "--seed", "3", "--quiet", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["symmetry"] == "D2" and summary["symmetric_copies"] == 4 and summary["n_components"] == 16
    assert summary["cross_correlation"] > 0.98
    fitted = read_pseudoatoms(out / "pseudoatoms.pdb")
    # the four copies are the asymmetric unit turned about the box centre
    copies = fitted.means_in_angstroms.reshape(4, 4, 3)
    again = expand_symmetry(GaussianMixture(copies[0], np.full(4, 0.25), 1.0), symmetry_operators("D2"), center)
    np.testing.assert_allclose(again.means_in_angstroms, fitted.means_in_angstroms, atol=2e-3)
    chains = [line[21] for line in (out / "pseudoatoms.pdb").read_text().splitlines() if line.startswith("HETATM")]
    assert chains == list("AAAABBBBCCCCDDDD")
    assert "symmetry D2 about the box centre" in capsys.readouterr().err


def test_fitted_map_scaling_and_the_prior_are_said_plainly(tmp_path, capsys):
    from cryogmm.cli import build_parser

    noisy = _blob_map() - 0.02 * _blob_map().max()  # a negative background, as in experimental maps
    write_map(tmp_path / "noisy.mrc", noisy, VOXEL, ORIGIN)
    out = tmp_path / "fit"
    assert main(["fit-map", str(tmp_path / "noisy.mrc"), "--seed", "1", "--output", str(out)] + FAST) == 0
    summary = json.loads((out / "summary.json").read_text())
    fitted = read_map(out / "fitted_map.mrc").data.sum(dtype=np.float64)
    assert fitted == pytest.approx(summary["fitted_map_total"], rel=1e-6)
    assert fitted == pytest.approx(summary["non_negative_part_total"], rel=1e-5)
    assert summary["non_negative_part_total"] > 1.1 * summary["input_total"]  # the two differ here
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["fit-map"].description.split())
    assert "scaled so that its total equals that of the part of the map that was fitted" in help_text
    assert "scaled to the input's total" not in help_text
    err = capsys.readouterr().err
    prior = next(line for line in err.splitlines() if line.startswith("prior: "))
    settings = json.loads((out / "settings.json").read_text())["settings"]["prior"]
    sd = 1 / np.sqrt(settings["mean_precision_per_square_angstrom"])
    assert f"component positions around the map's centre of mass" in prior
    assert f"with a standard deviation of {sd:.1f} Å" in prior
    assert "a typical sigma of 10.0 Å" in prior and "1/r" not in prior


def test_an_output_folder_named_like_a_file_is_warned_about(map_path, tmp_path, capsys):
    assert main(["fit-map", str(map_path), "--seed", "1", "--output", str(tmp_path / "groel.pdb")] + FAST) == 0
    assert (tmp_path / "groel.pdb" / "pseudoatoms.pdb").is_file()
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "groel.pdb is the output folder" in warning[0] and "groel " in warning[0]
