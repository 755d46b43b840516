"""Energy gradients of the Gaussian-noise model (thesis chapter 5) against finite differences."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryogmm.forward.gaussian import energy_and_gradients, energy_and_gradients_on_grid, predicted_images

N_IMAGES, N_COMPONENTS, BOX, PIXEL = 3, 4, 12, 2.0


def _problem(per_image=False):
    rng = np.random.default_rng(7)
    coords = (np.arange(BOX) - BOX // 2) * PIXEL
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    means = rng.normal(scale=4.0, size=(N_COMPONENTS, 3))
    rotations = Rotation.random(N_IMAGES, random_state=rng.integers(2**31)).as_matrix()
    translations = rng.normal(scale=1.0, size=(N_IMAGES, 2))
    truth = predicted_images(pixels, means, rotations, translations, scale=1.3, size=0.08)
    images = truth + rng.normal(scale=0.1, size=truth.shape)
    # evaluate away from the truth so that every gradient is far from zero
    params = dict(means=means + rng.normal(scale=0.5, size=means.shape),
                  rotations=Rotation.from_rotvec(rng.normal(scale=0.1, size=(N_IMAGES, 3))).as_matrix()
                  @ rotations,
                  translations=translations + rng.normal(scale=0.3, size=translations.shape))
    options = dict(scale=1.3, size=0.07, noise_precision=50.0, mean_precision=0.01, a_beta=2.0, b_beta=0.5)
    if per_image:  # one weight and one noise precision per image
        options.update(scale=np.array([1.3, 0.9, 1.6]), noise_precision=np.array([50.0, 20.0, 80.0]))
    return images, pixels, params, options


def _energy(images, pixels, params, options):
    return energy_and_gradients(images, pixels, params["means"], params["rotations"],
                                params["translations"], **options)[0]


def _central_difference(function, x, h):
    flat = np.array(x, dtype=float).ravel()
    out = np.empty_like(flat)
    for n in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[n] += h
        down[n] -= h
        out[n] = (function(up) - function(down)) / (2 * h)
    return out


def _relative_error(analytic, numeric):
    analytic, numeric = np.ravel(analytic), np.ravel(numeric)
    return np.max(np.abs(analytic - numeric)) / np.max(np.abs(numeric))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("block", ["means", "translations", "rotations", "size", "noise_precision"])
def test_gradient_matches_finite_differences(block, per_image):
    images, pixels, params, options = _problem(per_image)
    _, gradients = energy_and_gradients(images, pixels, params["means"], params["rotations"],
                                        params["translations"], **options)
    if block in ("means", "translations"):
        shape = params[block].shape

        def function(flat):
            return _energy(images, pixels, {**params, block: flat.reshape(shape)}, options)

        numeric = _central_difference(function, params[block], 1e-5)
    elif block == "rotations":
        def function(flat):
            turned = Rotation.from_rotvec(flat.reshape(N_IMAGES, 3)).as_matrix() @ params["rotations"]
            return _energy(images, pixels, {**params, "rotations": turned}, options)

        numeric = _central_difference(function, np.zeros((N_IMAGES, 3)), 1e-6)
    else:
        value = np.asarray(options[block], dtype=float)

        def function(flat):
            return _energy(images, pixels, params, {**options, block: flat.reshape(value.shape)})

        numeric = _central_difference(function, value, 1e-6 * float(np.min(value)))
    error = _relative_error(getattr(gradients, block), numeric)
    assert error < 1e-5, error


@pytest.mark.parametrize("per_image", [False, True])
def test_energy_is_the_negative_log_posterior(per_image):
    images, pixels, params, options = _problem(per_image)
    predicted = predicted_images(pixels, params["means"], params["rotations"], params["translations"],
                                 scale=options["scale"], size=options["size"])
    beta = np.broadcast_to(options["noise_precision"], (N_IMAGES,))
    a, b = options["a_beta"], options["b_beta"]
    gamma_terms = (a - 1) * np.log(beta) - b * beta  # one Gamma prior per beta
    expected = (0.5 * np.sum(beta[:, None] * (images - predicted) ** 2) - 0.5 * images.shape[1] * np.sum(np.log(beta))
                + 0.5 * options["mean_precision"] * np.sum(params["means"] ** 2)
                - (gamma_terms.sum() if per_image else gamma_terms[0]))
    assert _energy(images, pixels, params, options) == pytest.approx(expected, rel=1e-12)


def test_prediction_is_a_sum_of_projected_gaussians():
    # one component at the origin, identity rotation, no shift: the peak pixel holds lam
    coords = (np.arange(BOX) - BOX // 2) * PIXEL
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    image = predicted_images(pixels, np.array([[0.0, 0.0, 5.0]]), np.eye(3)[None], np.zeros((1, 2)),
                             scale=2.0, size=0.1)[0].reshape(BOX, BOX)
    assert image[BOX // 2, BOX // 2] == pytest.approx(2.0)
    assert image[BOX // 2, BOX // 2 + 1] == pytest.approx(2.0 * np.exp(-0.05 * PIXEL**2))


@pytest.mark.parametrize("per_image", [False, True])
def test_grid_kernel_energy_matches_the_numpy_reference(per_image):
    images, pixels, params, options = _problem(per_image)
    energy, gradients = energy_and_gradients(images, pixels, params["means"], params["rotations"],
                                             params["translations"], **options)
    origin = np.array([-(BOX // 2) * PIXEL, -(BOX // 2) * PIXEL])
    grid_energy, grid_gradients = energy_and_gradients_on_grid(
        images.reshape(N_IMAGES, BOX, BOX), origin, PIXEL, params["means"], params["rotations"],
        params["translations"], cutoff_sigmas=40.0, **options)
    assert grid_energy == pytest.approx(energy, rel=1e-12)
    for block in ("means", "rotations", "translations", "size", "noise_precision"):
        np.testing.assert_allclose(getattr(grid_gradients, block), getattr(gradients, block), rtol=1e-9)


def _ctf_problem(per_image):
    from cryogmm.forward.ctf import CTFParameters, ctf_images

    images, pixels, params, options = _problem(per_image)
    m = 2 * BOX
    ctf = CTFParameters(defocus_u_in_angstroms=[4000.0, 9000.0, 15000.0], defocus_v_in_angstroms=[3800.0, 9000.0, 14000.0],
                        defocus_angle_in_degrees=[10.0, 0.0, 60.0])
    transfer = -ctf_images(ctf, m, PIXEL)[..., : m // 2 + 1]  # particles bright: polarity -1
    return images.reshape(N_IMAGES, BOX, BOX), params, options, transfer


def _dense_ctf_energy(images, params, options, transfer):
    """Plain numpy: the prediction on the padded grid by `predicted_images`, convolved by full FFTs."""
    m = transfer.shape[-2]
    coords = (np.arange(m) - m // 2) * PIXEL
    xx, yy = np.meshgrid(coords, coords)
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    unit = predicted_images(pixels, params["means"], params["rotations"], params["translations"], scale=1.0,
                            size=options["size"]).reshape(N_IMAGES, m, m)
    full = np.concatenate([transfer, transfer[:, :, 1:(m + 1) // 2][:, (-np.arange(m)) % m, ::-1]], axis=2)
    filtered = np.real(np.fft.ifft2(np.fft.fft2(unit) * full))
    start = m // 2 - BOX // 2
    predicted = np.broadcast_to(options["scale"], (N_IMAGES,))[:, None, None] * filtered[:, start:start + BOX,
                                                                                          start:start + BOX]
    beta = np.broadcast_to(options["noise_precision"], (N_IMAGES,))
    a, b = options["a_beta"], options["b_beta"]
    gamma_terms = (a - 1) * np.log(beta) - b * beta
    return (0.5 * np.sum(beta[:, None, None] * (images - predicted) ** 2) - 0.5 * BOX * BOX * np.sum(np.log(beta))
            + 0.5 * options["mean_precision"] * np.sum(params["means"] ** 2)
            - (gamma_terms[0] if np.ndim(options["noise_precision"]) == 0 else gamma_terms.sum()))


@pytest.mark.parametrize("per_image", [False, True])
def test_ctf_energy_matches_dense_numpy_and_gradients_match_finite_differences(per_image):
    from cryogmm.forward.gaussian import energy_and_gradients_with_ctf

    images, params, options, transfer = _ctf_problem(per_image)

    def energy(p, o=options):
        return energy_and_gradients_with_ctf(images, PIXEL, p["means"], p["rotations"], p["translations"],
                                             transfer=transfer, cutoff_sigmas=40.0, **o)

    value, gradients = energy(params)
    assert value == pytest.approx(_dense_ctf_energy(images, params, options, transfer), rel=1e-10)
    for block, h in (("means", 1e-5), ("translations", 1e-5)):
        shape = params[block].shape
        numeric = _central_difference(lambda f: energy({**params, block: f.reshape(shape)})[0], params[block], h)
        assert _relative_error(getattr(gradients, block), numeric) < 1e-5, block
    numeric = _central_difference(lambda f: energy({**params, "rotations": Rotation.from_rotvec(
        f.reshape(N_IMAGES, 3)).as_matrix() @ params["rotations"]})[0], np.zeros((N_IMAGES, 3)), 1e-6)
    assert _relative_error(gradients.rotations, numeric) < 1e-5
    numeric = _central_difference(lambda f: energy(params, {**options, "size": f[0]})[0], [options["size"]], 1e-8)
    assert _relative_error(gradients.size, numeric) < 1e-5


def test_ctf_of_one_equals_the_ctf_free_energy():
    from cryogmm.forward.gaussian import energy_and_gradients_with_ctf

    images, params, options, transfer = _ctf_problem(True)
    origin = np.full(2, -(BOX // 2) * PIXEL)
    plain = energy_and_gradients_on_grid(images, origin, PIXEL, params["means"], params["rotations"],
                                         params["translations"], **options)
    ctf = energy_and_gradients_with_ctf(images, PIXEL, params["means"], params["rotations"], params["translations"],
                                        transfer=np.ones_like(transfer), **options)
    assert ctf[0] == pytest.approx(plain[0], rel=1e-12)
    for block in ("means", "rotations", "translations", "size", "noise_precision"):
        np.testing.assert_allclose(getattr(ctf[1], block), getattr(plain[1], block), rtol=1e-9, atol=1e-9)
