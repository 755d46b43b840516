"""Recovery of a known truth: HMC on the means with known poses, rotation moves with known means."""

import numpy as np
from scipy.spatial.transform import Rotation

from cryogmm.forward.gaussian import energy_and_gradients, predicted_images
from cryogmm.samplers.driver import run_chain
from cryogmm.geometry.so3 import mean_rotation, rotation_angle_in_degrees
from cryogmm.samplers.hmc import HMC
from cryogmm.samplers.rotation_mh import rotation_mh


def test_hmc_recovers_the_means_with_known_rotations():
    rng = np.random.default_rng(21)
    coords = (np.arange(16) - 8) * 2.0
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    truth = np.array([[-5.0, 0.0, 2.0], [4.0, 3.0, -1.0], [0.0, -5.0, 4.0]])
    rotations = Rotation.random(8, random_state=rng.integers(2**31)).as_matrix()
    translations = np.zeros((8, 2))
    options = dict(scale=1.0, size=0.15)
    images = predicted_images(pixels, truth, rotations, translations, **options)
    images = images + rng.normal(scale=0.05, size=images.shape)

    def energy_and_gradient(flat):
        energy, gradients = energy_and_gradients(images, pixels, flat.reshape(3, 3), rotations, translations,
                                                 noise_precision=400.0, mean_precision=1e-3, **options)
        return energy, gradients.means.ravel()

    sampler = HMC(energy_and_gradient=energy_and_gradient, n_leapfrog=10, adapt_steps=100)
    start = truth + rng.normal(scale=1.5, size=truth.shape)
    state = sampler.init(rng, start.ravel(), step_size=0.01)
    samples = []
    result = run_chain(sampler, rng, state, 300, burn_in=150, thin=5,
                       on_sample=lambda i, s: samples.append(s.position.reshape(3, 3)))
    posterior_mean = np.mean(samples, axis=0)
    start_error = np.linalg.norm(start - truth, axis=1)
    error = np.linalg.norm(posterior_mean - truth, axis=1)
    assert np.all(start_error > 1.0) and np.all(error < 0.2), (error, start_error)
    assert result.traces["acceptance"][150:-1].mean() > 0.5


def test_rotation_moves_recover_a_known_rotation():
    rng = np.random.default_rng(8)
    coords = (np.arange(16) - 8) * 2.0
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    means = np.array([[-6.0, 0.0, 2.0], [5.0, 3.0, -1.0], [0.0, -6.0, 4.0], [2.0, 2.0, 7.0]])
    truth = Rotation.from_euler("ZYZ", [30, 50, 10], degrees=True).as_matrix()
    options = dict(scale=1.0, size=0.15)
    image = predicted_images(pixels, means, truth[None], np.zeros((1, 2)), **options)
    image = image + rng.normal(scale=0.05, size=image.shape)

    def energy(rotation):
        return energy_and_gradients(image, pixels, means, rotation[None], np.zeros((1, 2)),
                                    noise_precision=400.0, mean_precision=0.0, **options)[0]

    start = Rotation.from_rotvec(np.radians(15.0) * np.array([0.6, 0.0, 0.8])).as_matrix() @ truth
    sampler = rotation_mh(energy, adapt_steps=300)
    samples = []
    run_chain(sampler, rng, sampler.init(rng, start, step_size=0.05), 1500, burn_in=500, thin=5,
              on_sample=lambda i, s: samples.append(s.position))
    assert rotation_angle_in_degrees(start, truth) > 14.9
    assert rotation_angle_in_degrees(mean_rotation(np.array(samples)), truth) < 1.0
