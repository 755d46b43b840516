"""`cryogmm refine` end to end on simulated phantom particles: recovery of the true poses and map,
the outputs, --resume after an interruption, --rescale, and the refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryogmm import __version__
from cryogmm.cli import main
from cryogmm.geometry.so3 import rotation_angle_in_degrees
from cryogmm.io.checkpoints import checkpoint_dir_for
from cryogmm.io.mrc import read_map, read_stack, write_map, write_stack
from cryogmm.io.pseudoatoms import write_pseudoatoms_pdb
from cryogmm.io.star import columns_to_poses, format_image_name, read_particles, write_particles
from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at
from cryogmm.mixture import GaussianMixture
from cryogmm.pipelines import refine as rf
from cryogmm.simulate.phantom import asymmetric_phantom

BOX, PIXEL, N_PARTICLES = 32, 4.5, 400
OUTPUTS = {"half1.mrc", "half2.mrc", "map.mrc", "map_unsharpened.mrc", "mask.mrc", "fsc.json", "fsc.png",
           "map_slices.png", "particles.star", "summary.json", "settings.json", "run.log", "report.html", "chimerax.cxc"}
SHORT = ["--max-iterations", "2", "--seed", "1", "--quiet"]  # 2 iterations and the final one (about 10 s)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """400 particles of the built-in phantom: 32 px of 4.5 Å, 8 Å density, SNR 0.5, CTF (1.0 - 2.5 µm),
    shifts up to 6 Å; reference.mrc is the 8 Å density itself (refine low-passes it to 40 Å)."""
    folder = tmp_path_factory.mktemp("refine_data")
    coordinates, _ = asymmetric_phantom(2000)
    model = folder / "phantom.pdb"
    write_pseudoatoms_pdb(model, GaussianMixture(coordinates, np.full(2000, 1 / 2000), 1.0))
    assert main(["simulate-images", str(model), "--number", str(N_PARTICLES), "--box", str(BOX), "--pixel-size",
                 str(PIXEL), "--resolution", "8", "--snr", "0.5", "--max-shift", "6", "--defocus-range", "1.0", "2.5",
                 "--seed", "1", "--output", str(folder / "sim")]) == 0
    return folder / "sim"


def _refine(star, reference, out, *extra):
    return main(["refine", str(star), "--reference", str(reference), "--output", str(out), *extra])


@pytest.fixture(scope="module")
def recovered(simulated, tmp_path_factory):
    """A whole refinement (until it converges) from the truth low-passed to 40 Å."""
    out = tmp_path_factory.mktemp("refine_run") / "run"
    assert _refine(simulated / "particles.star", simulated / "reference.mrc", out, "--seed", "1", "--quiet") == 0
    return out


def test_refine_recovers_the_poses_and_the_map(simulated, recovered):
    truth = read_particles(simulated / "particles.star")
    result = read_particles(recovered / "particles.star")
    true_rotations, true_shifts = columns_to_poses(truth.particles)
    rotations, shifts = columns_to_poses(result.particles)
    errors = rotation_angle_in_degrees(true_rotations, rotations)
    # measured: median 9.1 degrees, quartiles 6.1 and 69 (uniformly random rotations: median 132). The
    # map's 10 Å over the particle's 100 Å allow about 6 degrees; the steps are 7.5 (global), 3.75 and
    # 1.9 degrees (local). A third of the particles (122 of 400) end more than 45 degrees off, so the
    # median stays below 15 only while most particles are aligned
    assert np.median(errors) < 15.0, np.percentile(errors, [25, 50, 75])
    # measured: median shift error 1.25 Å (shifts drawn within 6 Å; the final shift step is 1 Å)
    assert np.median(np.hypot(*(shifts - true_shifts).T)) < 2.5
    reference = read_map(simulated / "reference.mrc").data  # the 8 Å density the images were made from
    fsc = fourier_shell_correlation(read_map(recovered / "map_unsharpened.mrc").data, reference, PIXEL)
    # measured: 11.1 Å at 0.5 (40 Å at the start, 9 Å Nyquist)
    assert resolution_at(fsc, 0.5) < 14.0, np.round(fsc.correlation, 2)


def test_refine_writes_consistent_outputs(simulated, recovered):
    assert {p.name for p in recovered.iterdir()} == OUTPUTS
    assert not checkpoint_dir_for(recovered).exists()  # removed after success
    for name in ("half1.mrc", "half2.mrc", "map.mrc", "map_unsharpened.mrc", "mask.mrc"):
        volume = read_map(recovered / name)
        assert volume.data.shape == (BOX,) * 3 and volume.voxel_size_in_angstroms == pytest.approx(PIXEL)
    source = read_particles(simulated / "particles.star")
    table = read_particles(recovered / "particles.star")
    assert table.pixel_size_in_angstroms == pytest.approx(PIXEL)
    kept = [c for c in source.particles.columns if not c.startswith(("rlnAngle", "rlnOrigin"))]
    assert "rlnDefocusU" in kept and "rlnVoltage" in kept
    pd.testing.assert_frame_equal(table.particles[kept], source.particles[kept], check_dtype=False)
    assert set(table.particles["rlnRandomSubset"]) == {1, 2}
    assert table.particles["rlnMaxValueProbDistribution"].between(0, 1).all()
    assert (table.particles["rlnNrOfSignificantSamples"] >= 1).all()
    summary = json.loads((recovered / "summary.json").read_text())
    iterations = summary["iterations"]
    assert summary["n_iterations"] == len(iterations) and [r["iteration"] for r in iterations] == list(
        range(1, len(iterations) + 1))
    assert iterations[-1]["final"] and iterations[-1]["e_step_radius_in_pixels"] == pytest.approx(BOX / 2 - 0.5)
    assert iterations[0]["e_step_resolution_in_angstroms"] == pytest.approx(40.0)  # --initial-lowpass
    assert summary["n_particles"] == N_PARTICLES and summary["seed"] == 1
    assert summary["resolution_in_angstroms"] >= 2 * PIXEL
    assert {"total", "iterations", "outputs"} <= set(summary["timings_in_seconds"])
    settings = json.loads((recovered / "settings.json").read_text())
    assert settings["seed"] == 1 and __version__ in json.dumps(settings)
    fsc = json.loads((recovered / "fsc.json").read_text())
    assert fsc["resolution_0.143_in_angstroms"] == pytest.approx(summary["resolution_in_angstroms"])


@pytest.fixture(scope="module")
def short_run(simulated, tmp_path_factory):
    """Two iterations and the final one, uninterrupted (the result --resume and --rescale must give)."""
    out = tmp_path_factory.mktemp("refine_short") / "run"
    assert _refine(simulated / "particles.star", simulated / "reference.mrc", out, *SHORT) == 0
    return out


def test_resume_after_an_interruption_gives_the_uninterrupted_result(simulated, short_run, tmp_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "run"
    real_refine = rf.refine

    def stopped_after_first_iteration(*args, checkpoint=None, **kwargs):
        def save_then_stop(state):
            checkpoint(state)
            if state.iteration == 1:
                raise KeyboardInterrupt
        return real_refine(*args, checkpoint=save_then_stop, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(rf, "refine", stopped_after_first_iteration)
        assert _refine(simulated / "particles.star", simulated / "reference.mrc", out, *SHORT) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "after iteration 1" in err and "--resume" in err, err
    assert not out.exists() and checkpoint_dir_for(out).is_dir()
    assert _refine(simulated / "particles.star", simulated / "reference.mrc", out, *SHORT) == 2  # needs --resume
    assert _refine(simulated / "particles.star", simulated / "reference.mrc", out, *SHORT, "--resume") == 0
    assert not checkpoint_dir_for(out).exists()
    expected, got = read_particles(short_run / "particles.star"), read_particles(out / "particles.star")
    pd.testing.assert_frame_equal(got.particles, expected.particles)
    for name in ("half1.mrc", "half2.mrc", "map.mrc"):
        np.testing.assert_array_equal(read_map(out / name).data, read_map(short_run / name).data)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2, 3]


def test_rescale_resamples_a_reference_of_another_box(simulated, short_run, tmp_path, capsys):
    reference = read_map(simulated / "reference.mrc").data
    padded = np.zeros((40, 40, 40), np.float32)  # the same map in a 40-voxel box (centre 20 = 16 + 4)
    padded[4:36, 4:36, 4:36] = reference
    write_map(tmp_path / "padded.mrc", padded, PIXEL)
    _expect_refusal(capsys, tmp_path, simulated / "particles.star", "--rescale", reference=tmp_path / "padded.mrc")
    out = tmp_path / "rescaled"
    assert _refine(simulated / "particles.star", tmp_path / "padded.mrc", out, *SHORT, "--rescale") == 0
    # logged before run.log is open, so only on stderr
    assert "reference resampled from 40^3 voxels of 4.5 Å to 32^3" in capsys.readouterr().err
    # cubic-spline interpolation at the voxel centres returns the samples: the same refinement
    # (measured: equal to the last bit)
    np.testing.assert_allclose(read_map(out / "map_unsharpened.mrc").data,
                               read_map(short_run / "map_unsharpened.mrc").data, rtol=0, atol=1e-6)


def _expect_refusal(capsys, tmp_path, star, fragment, *extra, reference=None, out="refused"):
    """Exit status 2, one line on stderr that names the problem, nothing left behind."""
    reference = reference or star.parent / "reference.mrc"
    assert _refine(star, reference, tmp_path / out, "--seed", "1", "--quiet", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / out).exists()
    assert not checkpoint_dir_for(tmp_path / out).exists()
    assert not list(tmp_path.glob(f".{out}.tmp-*"))


def _particles_star(path, table, rows=None, stack=None):
    """The simulated particles (rows of them), optionally pointing at another stack."""
    particles = table.particles if rows is None else table.particles.iloc[rows].reset_index(drop=True)
    if stack is not None:
        particles = particles.assign(rlnImageName=[format_image_name(i, stack) for i in range(len(particles))])
    write_particles(path, particles, {})
    return path


def test_bad_input_is_refused_with_one_line(simulated, tmp_path, capsys):
    table = read_particles(simulated / "particles.star")
    images = read_stack(simulated / "images.mrcs").data
    (tmp_path / "reference.mrc").symlink_to(simulated / "reference.mrc")

    no_ctf = table.particles.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"])
    write_particles(tmp_path / "no_ctf.star", no_ctf, {})
    (tmp_path / "images.mrcs").symlink_to(simulated / "images.mrcs")
    _expect_refusal(capsys, tmp_path, tmp_path / "no_ctf.star", "no CTF columns")

    write_stack(tmp_path / "short.mrcs", images[:100], PIXEL)
    _expect_refusal(capsys, tmp_path, _particles_star(tmp_path / "short.star", table, stack="short.mrcs"),
                    "out of range")

    _expect_refusal(capsys, tmp_path, _particles_star(tmp_path / "three.star", table, rows=[0, 1, 2]),
                    "at least 2 per half set")

    nan = images[:8].copy()
    nan[5, 10, 10] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile warns when it writes the header
        write_stack(tmp_path / "nan.mrcs", nan, PIXEL)
    _expect_refusal(capsys, tmp_path, _particles_star(tmp_path / "nan.star", table, rows=range(8), stack="nan.mrcs"),
                    "NaN")

    _expect_refusal(capsys, tmp_path, simulated / "particles.star", "no checkpoint", "--resume")

    (tmp_path / "exists").mkdir()
    assert _refine(simulated / "particles.star", simulated / "reference.mrc", tmp_path / "exists", *SHORT) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err, err
    assert list((tmp_path / "exists").iterdir()) == []


def test_unreachable_dask_scheduler_is_refused_with_one_line(simulated, tmp_path, capsys):
    # dask retries the refused connection until the client's 20 s timeout
    _expect_refusal(capsys, tmp_path, simulated / "particles.star",
                    "--dask-scheduler tcp://127.0.0.1:1: cannot connect", "--dask-scheduler", "tcp://127.0.0.1:1")
