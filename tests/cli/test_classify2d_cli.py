"""`cryogmm classify2d` end to end on simulated phantom particles of three views: the classes, the
RELION-layout outputs read back by cryogmm's own readers (abinitio's model.star reader, deconvolve's
particle reader), and the refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.io.classes import read_class_averages
from cryogmm.io.mrc import read_stack
from cryogmm.io.star import in_plane_poses, read_particles, write_particles
from cryogmm.metrics.correlation import best_match_correlations

OUTPUTS = {"run_classes.mrcs", "run_model.star", "run_data.star", "classes.png", "summary.json", "settings.json",
           "run.log", "selected_classes.mrcs", "selected_model.star", "selected_data.star"}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, simulate_phantom_views):
    """3 views x 40 particles of the phantom: 24 px of 5 Å, 12 Å density, SNR 0.5, CTF 1.0-2.5 µm."""
    return simulate_phantom_views(tmp_path_factory.mktemp("classify2d_data"), views=3, per_view=40, seed=4)


@pytest.fixture(scope="module")
def classified(simulated, tmp_path_factory):
    out = tmp_path_factory.mktemp("classify2d_run") / "run 2d"  # a space in the path
    assert main(["classify2d", str(simulated / "particles.star"), "--classes", "4", "--iterations", "10",
                 "--psi-step", "10", "--particle-diameter", "110", "--seed", "1", "--quiet", "--output",
                 str(out)]) == 0
    return out


def test_classify2d_recovers_the_views_and_writes_relion_outputs(simulated, classified):
    assert OUTPUTS <= {p.name for p in classified.iterdir()}
    classes = read_class_averages(classified / "run_model.star")
    assert classes.images.shape == (4, 24, 24) and classes.pixel_size_in_angstroms == pytest.approx(5.0)
    assert np.isclose(np.nansum(classes.distribution), 1.0)
    truth = read_stack(simulated / "class_projections.mrcs").data
    data = read_particles(classified / "run_data.star")
    found = data.particles["rlnClassNumber"].to_numpy()
    true = read_particles(simulated / "particles.star").particles["rlnClassNumber"].to_numpy()
    cc, which = best_match_correlations(classes.images, truth, psi_step_in_degrees=5.0, max_shift_in_pixels=3)
    occupied = np.bincount(found, minlength=5)[1:] > 0
    assert set(which[occupied].tolist()) == {0, 1, 2}, (cc, which)
    assert np.all(cc[occupied] >= 0.9), cc
    for k in np.flatnonzero(occupied):
        assert np.mean(true[found == k + 1] == which[k] + 1) >= 0.9
    # in-plane poses as deconvolve reads them; the stack found from the output folder
    psi, shifts = in_plane_poses(data.particles, 5.0)
    assert np.all(np.abs(psi) <= 180) and np.all(np.hypot(*shifts.T) <= 3 * 5.0 + 4.0)
    assert "rlnAngleTilt" not in data.particles.columns
    summary = json.loads((classified / "summary.json").read_text())
    assert summary["n_iterations"] == 10 and sum(summary["class_sizes"]) == 120
    settings = json.loads((classified / "settings.json").read_text())
    assert settings["seed"] == 1


def test_default_selection_keeps_every_view_and_writes_the_subset(simulated, classified):
    summary = json.loads((classified / "summary.json").read_text())
    selection = summary["selection"]
    sizes = np.array(summary["class_sizes"])
    kept = np.array([c["kept"] for c in selection["classes"]])
    assert selection["rules"] == ["size>=1", "size>=0.2xmean", "resolution<=2xbest"]
    assert np.all(sizes[kept] >= 0.2 * sizes.sum() / sizes.size) and selection["n_kept_particles"] == sizes[kept].sum()
    # the kept classes still cover the three true views
    truth = read_stack(simulated / "class_projections.mrcs").data
    chosen = read_class_averages(classified / "selected_model.star")
    everything = read_class_averages(classified / "run_model.star")
    assert np.array_equal(chosen.images, everything.images[kept])
    cc, which = best_match_correlations(chosen.images, truth, psi_step_in_degrees=5.0, max_shift_in_pixels=3)
    assert set(which.tolist()) == {0, 1, 2} and np.all(cc >= 0.9), (cc, which)
    # selected_data.star: the particles of the kept classes, renumbered like selected_model.star
    full = read_particles(classified / "run_data.star").particles
    part = read_particles(classified / "selected_data.star").particles
    original = np.flatnonzero(kept)[part["rlnClassNumber"].to_numpy() - 1] + 1
    in_kept = np.isin(full["rlnClassNumber"].to_numpy(), np.flatnonzero(kept) + 1)
    assert len(part) == in_kept.sum() == selection["n_kept_particles"]
    assert np.array_equal(original, full["rlnClassNumber"].to_numpy()[in_kept])
    assert np.allclose(part["rlnAnglePsi"], full["rlnAnglePsi"].to_numpy()[in_kept])
    assert read_stack(classified / part["rlnImageName"].iloc[0].split("@")[1]).data.shape[1:] == (24, 24)


def test_abinitio_prepare_takes_the_selected_class_averages(classified):
    """`abinitio --prepare DIR/selected_model.star` (what `cryogmm run --no-ctf` does): the kept
    class averages, masked and centred (it used to read the model file as particles and stop)."""
    from cryogmm.cli.abinitio import prepare_input

    kept = json.loads((classified / "summary.json").read_text())["selection"]["n_kept_classes"]
    prepared = prepare_input(classified / "selected_model.star", None)
    assert prepared.data.images.shape == (kept, 24, 24) and prepared.data.images.min() >= 0
    assert prepared.deconvolved is None and prepared.prepared is not None


def test_deconvolve_reads_the_classification(classified, tmp_path):
    out = tmp_path / "averages.mrcs"
    assert main(["deconvolve", str(classified / "run_data.star"), "--output", str(out), "--groups", "2"]) == 0
    assert read_stack(out).data.shape[0] >= 3


@pytest.mark.parametrize("extra, message", [
    (["--classes", "500"], "--classes 500"),
    (["--classes", "0"], "--classes 0"),
    (["--classes", "2", "--particle-diameter", "500"], "--particle-diameter"),
    (["--classes", "2", "--psi-step", "0"], "--psi-step"),
    (["--classes", "2", "--iterations", "0"], "--iterations"),
    (["--classes", "2", "--select", "size>>3"], "--select 'size>>3': not a rule"),
])
def test_bad_options_are_refused_with_one_line(simulated, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["classify2d", str(simulated / "particles.star"), *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_particles_without_a_ctf_are_classified_with_no_ctf(tmp_path, simulate_phantom_views):
    """CTF-free particles (3 views x 30, SNR 0.5) with --no-ctf: the classes are the views (seed 4's
    views are distinct; seed 5 draws two that match to CC 0.99 after an in-plane turn)."""
    simulate_phantom_views(tmp_path, views=3, per_view=30, seed=4, ctf=False)
    star = tmp_path / "sim" / "particles.star"
    assert "rlnDefocusU" not in read_particles(star).particles.columns
    out = tmp_path / "c2d"
    assert main(["classify2d", str(star), "--classes", "4", "--iterations", "10", "--psi-step", "10", "--no-ctf",
                 "--particle-diameter", "110", "--seed", "1", "--quiet", "--output", str(out)]) == 0
    classes = read_class_averages(out / "run_model.star")
    truth = read_stack(tmp_path / "sim" / "class_projections.mrcs").data
    cc, which = best_match_correlations(classes.images, truth, psi_step_in_degrees=5.0, max_shift_in_pixels=3)
    found = read_particles(out / "run_data.star").particles["rlnClassNumber"].to_numpy()
    true = read_particles(star).particles["rlnClassNumber"].to_numpy()
    occupied = np.bincount(found, minlength=5)[1:] > 0
    assert set(which[occupied].tolist()) == {0, 1, 2} and np.all(cc[occupied] >= 0.9), (cc, which)
    assert np.mean(true == which[found - 1] + 1) >= 0.9


def test_a_stack_shorter_than_the_star_says_is_refused(simulated, tmp_path, capsys):
    from cryogmm.io.mrc import write_stack
    from cryogmm.io.star import format_image_name

    table = read_particles(simulated / "particles.star")
    write_stack(tmp_path / "short.mrcs", read_stack(simulated / "images.mrcs").data[:50], 5.0)
    rows = table.particles.assign(rlnImageName=[format_image_name(i, "short.mrcs") for i in range(len(table.particles))])
    write_particles(tmp_path / "short.star", rows, {})
    out = tmp_path / "out"
    assert main(["classify2d", str(tmp_path / "short.star"), "--classes", "2", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "short.mrcs" in err[0] and "out of range" in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_particles_without_ctf_are_refused(simulated, tmp_path, capsys):
    table = read_particles(simulated / "particles.star")
    rows = table.particles.drop(columns=[c for c in table.particles.columns if c.startswith("rlnDefocus")])
    rows["rlnImageName"] = [n.replace("@", f"@{simulated}/", 1) for n in rows["rlnImageName"]]
    star = tmp_path / "no_ctf.star"
    write_particles(star, rows, {"pixel_size_in_angstroms": 5.0, "image_size": 24})
    assert main(["classify2d", str(star), "--classes", "2", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CTF columns" in err[0] and "--no-ctf" in err[0]
