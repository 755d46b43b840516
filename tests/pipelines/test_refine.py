"""The refinement schedule's pieces: shift grids, stages, noise scales, checkpointed states."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.pipelines import refine as rf


def test_translation_grid_is_the_lattice_inside_the_disc_origin_first():
    grid = rf.translation_grid(3.0, 1.0)
    assert np.array_equal(grid[0], [0.0, 0.0])
    assert len(grid) == 29  # lattice points with x^2 + y^2 <= 9
    assert np.all(np.hypot(*grid.T) <= 3.0 + 1e-9)
    assert len(np.unique(grid, axis=0)) == len(grid)
    assert len(rf.translation_grid(0.0, 1.0)) == 1


def test_stages_start_global_and_halve_the_local_step():
    stages = rf.stages(rf.RefineSettings())
    assert stages[0].name == "global" and stages[0].step_in_degrees == pytest.approx(7.5)
    steps = [s.step_in_degrees for s in stages[1:]]
    assert all(s.name == "local" for s in stages[1:])
    np.testing.assert_allclose(np.array(steps[1:]) / np.array(steps[:-1]), 0.5)
    assert steps[0] == pytest.approx(3.75)


def test_needed_step_moves_the_edge_by_the_fraction_of_the_resolution():
    step = rf.needed_step_in_degrees(8.0, 160.0, 0.25)
    # the edge (radius 80 Å) moves by 80 * radians(step) = 2 Å = a quarter of 8 Å
    assert 80.0 * np.radians(step) == pytest.approx(2.0)


def test_noise_scale_follows_the_residuals_and_keeps_the_mean_level():
    scale = np.ones(4)
    ratio = np.array([1.0, 2.0, 4.0, 10.0])
    new = rf.update_noise_scale(scale, ratio, n_pixels=500)
    clipped = np.array([1.0, 2.0, 4.0, 4.0])
    np.testing.assert_allclose(new, clipped / clipped.mean())
    np.testing.assert_array_equal(rf.update_noise_scale(scale, ratio, n_pixels=50), scale)  # too few pixels


def test_noise_scale_weights_a_particle_as_its_own_noise():
    """Dividing data and CTF by sqrt(scale) divides every term of -|X - C e a|^2 / s by scale."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 16, 16)).astype(np.float32)
    from cryogmm.forward.ctf import CTFParameters

    ctf = CTFParameters(np.full(3, 15000.0), np.full(3, 14000.0), 30.0)
    data = rf.ParticleData(rf.ImagesInMemory(images), ctf, 16, 3.0, 3)
    pixels = rf.image_pixels(16, 6.0)
    mask = np.ones((16, 16), np.float32)
    plain = rf.load_batch(data, np.arange(3), pixels, mask, -1)
    scaled = rf.load_batch(data, np.arange(3), pixels, mask, -1, np.array([1.0, 4.0, 0.25]))
    np.testing.assert_allclose(scaled.coefficients, plain.coefficients * np.array([1.0, 0.5, 2.0])[:, None], rtol=1e-6)
    np.testing.assert_allclose(scaled.ctf, plain.ctf * np.array([1.0, 0.5, 2.0])[:, None], rtol=1e-6)


def test_particles_without_a_ctf_have_a_ctf_of_one_with_the_polarity_sign():
    """--no-ctf: bright particles (polarity -1) are the projection (+1), dark ones its negative."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 16, 16)).astype(np.float32)
    data = rf.ParticleData(rf.ImagesInMemory(images), None, 16, 3.0, 3)
    pixels = rf.image_pixels(16, 6.0)
    mask = np.ones((16, 16), np.float32)
    bright = rf.load_batch(data, np.array([0, 2]), pixels, mask, -1)
    dark = rf.load_batch(data, np.array([0, 2]), pixels, mask, 1)
    assert bright.ctf.shape == (2, pixels.fx.size) and bright.ctf.dtype == np.float32
    assert np.all(bright.ctf == 1.0) and np.all(dark.ctf == -1.0)
    np.testing.assert_array_equal(bright.coefficients, dark.coefficients)


def test_state_round_trips_through_arrays():
    rng = np.random.default_rng(1)
    state = rf.RefineState(iteration=3, half=np.array([1, 2, 1, 2]), rotations=rng.normal(size=(4, 3, 3)),
                           shifts_in_pixels=rng.normal(size=(4, 2)), max_posterior=rng.uniform(size=4),
                           n_significant=np.arange(4), noise_power=rng.uniform(size=9), noise_scale=rng.uniform(size=4),
                           sigma_offset_in_pixels=2.5,
                           references=rng.normal(size=(2, 16, 16, 16)).astype(np.float32), tau2=rng.uniform(size=(2, 9)),
                           radius_in_pixels=7.5, stage_index=2, best_radius_in_pixels=6.0,
                           history=[{"iteration": 3, "resolution_in_angstroms": None}], converged=False)
    arrays = rf.state_to_arrays(state)
    back = rf.state_from_arrays({k: np.asarray(v) for k, v in arrays.items()})
    for name in ("half", "rotations", "shifts_in_pixels", "noise_scale", "references", "tau2"):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
    assert (back.iteration, back.radius_in_pixels, back.stage_index, back.history) == (3, 7.5, 2, state.history)


@pytest.mark.parametrize("options", [dict(tau2_fudge=0), dict(max_iterations=0), dict(polarity=0),
                                     dict(significant_fraction=1.5), dict(initial_lowpass_in_angstroms=-1)])
def test_bad_settings_are_refused(options):
    with pytest.raises(InputError):
        rf.RefineSettings(**options)


def test_common_translation_recovers_the_3d_drift_of_the_shifts():
    from cryogmm.geometry.so3 import random_rotations

    rng = np.random.default_rng(4)
    rotations = random_rotations(rng, 2000)
    drift = np.array([1.5, -0.7, 2.0])
    own = rng.normal(0.0, 1.0, (2000, 2))  # each particle's own shift
    shifts = own + np.einsum("pci,i->pc", rotations[:, :2, :], drift)
    found = rf.common_translation(rotations, shifts)
    # least squares over 4000 equations with unit noise: standard error about sqrt(3 / 4000) ~ 0.03
    np.testing.assert_allclose(found, drift, atol=0.1)
    assert np.linalg.norm(rf.common_translation(rotations, own)) < 0.1


def test_translate_map_moves_the_centre_of_mass():
    n = 24
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blob = np.exp(-((x - 1) ** 2 + y**2 + (z + 2) ** 2) / 6.0)
    moved = rf.translate_map(blob, np.array([2.5, -1.0, 0.5]))
    mass = moved.sum()
    centre = [float((moved * g).sum() / mass) for g in (x, y, z)]
    np.testing.assert_allclose(centre, [1 + 2.5, -1.0, -2 + 0.5], atol=1e-3)
