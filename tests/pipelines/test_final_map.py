"""map.mrc's choice between the posterior mean and the direct inversion (pipelines.final_map):
clean images with right poses make the inversion the sharper map; noisy ones keep a good model."""

import numpy as np
import pytest

from cryogmm.geometry.so3 import random_rotations
from cryogmm.grid import Grid
from cryogmm.metrics.fsc import fourier_shell_correlation, resolution_at
from cryogmm.pipelines.final_map import choose_final_map, scale_to_images
from cryogmm.simulate.images import add_noise, project_atoms
from cryogmm.simulate.molmap import molmap
from cryogmm.simulate.phantom import asymmetric_phantom

PIXEL, BOX, N_IMAGES, RESOLUTION = 6.0, 24, 40, 13.0


@pytest.fixture(scope="module")
def phantom():
    coordinates, z = asymmetric_phantom(800)
    rotations = random_rotations(np.random.default_rng(2), N_IMAGES)
    images = project_atoms(coordinates, z, rotations, None, RESOLUTION, BOX, PIXEL, dtype=np.float64)
    grid = Grid.centered((BOX,) * 3, PIXEL)
    truth = molmap(coordinates, z, RESOLUTION, grid, dtype=np.float64)
    # models whose fine detail is wrong, as a pseudo-atom map's can be: the atoms moved at random
    # (a Gaussian blur would not do: it leaves the FSC as it is)
    models = {}
    for scatter in (3.0, 5.0):
        moved = coordinates + np.random.default_rng(1).normal(scale=scatter, size=coordinates.shape)
        model = molmap(moved, z, RESOLUTION, grid, dtype=np.float64)
        models[scatter] = model / model.sum()
    return images, rotations, truth, models


def _resolution(volume, truth):
    return resolution_at(fourier_shell_correlation(volume, truth, PIXEL), 0.5)


@pytest.mark.parametrize("scatter", [3.0, 5.0])
def test_clean_images_with_right_poses_make_the_inversion_map_mrc(phantom, scatter):
    images, rotations, truth, models = phantom
    final = choose_final_map(images, PIXEL, rotations, None, models[scatter], rule="auto")
    assert final.source == "fourier_inversion" and final.figures["map_mrc"] == "fourier_inversion"
    assert final.volume is final.inversion
    # it is indeed the sharper map: the inversion's FSC with the truth stays above 0.5 to Nyquist
    assert _resolution(final.inversion, truth) is None and _resolution(final.posterior_mean, truth) is not None
    # the model's resolution, estimated without the truth, is close to its FSC with the truth
    # (14.1 and 18.6 Å)
    estimate = final.figures["posterior_mean_estimated_resolution_in_angstroms"]
    assert abs(estimate - _resolution(final.posterior_mean, truth)) < 1.5, estimate
    # the posterior mean is handed back in the images' units
    np.testing.assert_allclose(final.posterior_mean, scale_to_images(models[scatter], images, PIXEL))


def test_noisy_images_keep_a_good_posterior_mean(phantom):
    images, rotations, truth, models = phantom
    noisy = add_noise(np.random.default_rng(5), images, 0.3)
    final = choose_final_map(noisy, PIXEL, rotations, None, models[3.0], rule="auto")
    assert final.source == "posterior_mean", final.figures
    assert _resolution(final.posterior_mean, truth) < _resolution(final.inversion, truth) - 5.0  # 14 vs 24 Å
    # the rule can be overridden; the figures are computed either way
    forced = choose_final_map(noisy, PIXEL, rotations, None, models[3.0], rule="fourier_inversion")
    assert forced.source == "fourier_inversion" and forced.figures["rule"] == "fourier_inversion"
    assert "inversion_half_set_fsc_0.143_in_angstroms" in forced.figures
    with pytest.raises(ValueError, match="final map rule"):
        choose_final_map(noisy, PIXEL, rotations, None, truth, rule="sharpest")
