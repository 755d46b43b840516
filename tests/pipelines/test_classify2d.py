"""2D classification (`cryogmm.pipelines.classify2d`) recovers known classes from simulated particles.

The particles are CTF-affected, noisy projections of the built-in phantom in a few viewing
directions (`cryogmm.simulate.class_particle_images`: particle = class projection rotated by psi
and shifted, the convention of RELION's rlnAnglePsi and origins); the truth is each direction's
CTF-free projection.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters
from cryogmm.geometry.so3 import euler_to_matrix
from cryogmm.metrics.correlation import best_match_correlations
from cryogmm.pipelines import classify2d as c2d
from cryogmm.pipelines.refine import ImagesInMemory, ParticleData
from cryogmm.simulate import add_noise, class_particle_images, random_defocus
from cryogmm.simulate.phantom import asymmetric_phantom

BOX, PIXEL, RESOLUTION = 24, 5.0, 12.0
# three views of the phantom that differ (best-match CC between their projections 0.73-0.85)
VIEWS = np.stack([euler_to_matrix(0.0, 0.0, 0.0), euler_to_matrix(0.0, 90.0, 0.0), euler_to_matrix(90.0, 90.0, 0.0)])


def _simulate(n_classes: int, per_class: int, snr: float | None, seed: int, max_shift: float = 4.0):
    rng = np.random.default_rng(seed)
    xyz, z = asymmetric_phantom(2000)
    rotations = VIEWS[:n_classes]
    labels = np.repeat(np.arange(n_classes), per_class)
    p = labels.size
    psi = rng.uniform(-180, 180, p)
    shifts = rng.uniform(-max_shift, max_shift, (p, 2)) if max_shift > 0 else None
    ctf = CTFParameters(*random_defocus(rng, p, (10000.0, 25000.0)))
    images = class_particle_images(xyz, z, rotations, labels, psi, shifts, RESOLUTION, BOX, PIXEL,
                                   ctf_parameters=ctf)
    if snr is not None:
        images = add_noise(rng, images, snr)
    truth = class_particle_images(xyz, z, rotations, np.arange(n_classes), np.zeros(n_classes), None, RESOLUTION,
                                  BOX, PIXEL)
    data = ParticleData(ImagesInMemory(np.asarray(images, np.float32)), ctf, BOX, PIXEL, p)
    return data, labels, psi, truth


def _settings(**kw):
    defaults = dict(n_classes=3, max_iterations=10, psi_step_in_degrees=10.0, particle_diameter_in_angstroms=110.0,
                    initial_resolution_in_angstroms=30.0, offset_range_in_pixels=2.0)
    return c2d.Classify2DSettings(**{**defaults, **kw})


@pytest.fixture(scope="module")
def classified():
    data, labels, psi, truth = _simulate(3, 40, snr=0.5, seed=3)
    result = c2d.classify2d(data, _settings(n_classes=4), seed=1)
    return data, labels, psi, truth, result


def test_classes_recover_the_true_projections(classified):
    """Four classes for three views: every view gets classes that match it (CC >= 0.9 with its
    projection) and hold only its particles."""
    data, labels, psi, truth, result = classified
    state = result.state
    cc, which = best_match_correlations(state.classes, truth, psi_step_in_degrees=5.0, max_shift_in_pixels=3)
    occupied = np.bincount(state.class_index, minlength=4) > 0
    assert set(which[occupied].tolist()) == {0, 1, 2}, (cc, which)
    assert np.all(cc[occupied] >= 0.9), cc
    for k in np.flatnonzero(occupied):
        members = labels[state.class_index == k]
        assert np.mean(members == which[k]) >= 0.9, (k, np.bincount(members, minlength=3))
    assert np.isclose(state.class_fractions.sum(), 1.0)


def test_in_plane_angles_are_consistent_within_a_class(classified):
    """Particles of one view differ from their class by psi_true - psi_found = a constant per class."""
    data, labels, psi_true, truth, result = classified
    state = result.state
    for k in np.flatnonzero(np.bincount(state.class_index, minlength=4) > 0):
        rows = np.flatnonzero(state.class_index == k)
        offset = c2d._angle_difference(psi_true[rows], state.psi_in_degrees[rows])
        centre = np.degrees(np.angle(np.mean(np.exp(1j * np.radians(offset)))))
        spread = np.abs(c2d._angle_difference(offset, centre))
        assert np.median(spread) <= 5.0, (k, np.median(spread))


def test_average_at_true_poses_is_the_ctf_corrected_class():
    """Noise-free particles of one view, averaged at their true angles (the M-step with known poses and
    the CTF divided out), give back the CTF-free projection."""
    data, labels, psi, truth = _simulate(1, 60, snr=None, seed=5, max_shift=0.0)
    settings = _settings(n_classes=1, psi_step_in_degrees=1.0)
    grid = settings.psi_grid_in_degrees()
    psi_index = np.rint((psi % 360.0) / 1.0).astype(np.int64) % grid.size
    noise = np.ones(BOX // 2 + 1)
    average = c2d.average_at_poses(data, settings, np.zeros(60, np.int64), psi_index, noise)[0]
    mask = c2d.disc_mask(BOX, 110.0 / PIXEL / 2)
    a, b = average.ravel(), (truth[0] * mask).ravel()
    cc = np.dot(a - a.mean(), b - b.mean()) / (np.std(a) * np.std(b) * a.size)
    assert cc >= 0.98, cc
    assert np.sum(a * b) / np.sum(b * b) == pytest.approx(1.0, abs=0.1)  # on the projections' scale


def test_checkpointed_state_resumes_to_the_same_classes():
    data, labels, psi, truth = _simulate(2, 15, snr=1.0, seed=7)
    settings = _settings(n_classes=2, max_iterations=3)
    full = c2d.classify2d(data, settings, seed=2).state
    saved = []
    c2d.classify2d(data, c2d.Classify2DSettings(**{**c2d.settings_dict(settings), "max_iterations": 2}), seed=2,
                   checkpoint=lambda s: saved.append(c2d.state_to_arrays(s)))
    resumed = c2d.classify2d(data, settings, seed=2, state=c2d.state_from_arrays(saved[-1])).state
    assert resumed.iteration == full.iteration == 3
    np.testing.assert_array_equal(resumed.classes, full.classes)
    np.testing.assert_array_equal(resumed.class_index, full.class_index)
    np.testing.assert_array_equal(resumed.psi_in_degrees, full.psi_in_degrees)
    # the posterior of every particle sums to one: the class weights add up to the particle count
    assert np.isclose(full.class_fractions.sum(), 1.0)
    assert np.all(full.noise_power > 0)


def test_settings_refuse_absurd_values_and_too_many_classes():
    with pytest.raises(InputError, match="classes"):
        c2d.Classify2DSettings(n_classes=0)
    with pytest.raises(InputError, match="angular step"):
        c2d.Classify2DSettings(n_classes=2, psi_step_in_degrees=0.0)
    data, *_ = _simulate(1, 3, snr=None, seed=1)
    with pytest.raises(InputError, match="at most 3 classes"):
        c2d.initial_state(data, _settings(n_classes=4), 0)
