"""Gaussian-noise forward model of thesis chapter 5: energy and its analytic gradients.

Image i, pixel j at position ``x_ij`` (Å, ``(x, y)``) is modelled as (Eqn. 5.2)

    yhat_ij = lam * sum_k exp(-s/2 |x_ij - (Po R_i mu_k + t_i)|^2)

with Gaussian noise of precision ``beta`` (Eqn. 5.1), a Gaussian prior of precision ``r`` on the
means (Eqn. 5.5) and a Gamma(a_beta, b_beta) prior on ``beta`` (Eqn. 5.7). The energy is
E = -log p(theta | D) up to a constant (Eqns. 5.14-5.17); its gradients follow appendix D.
``lam`` and ``beta`` are scalars or one per image (N,) (the per-image scale and noise level that
thesis 5.2.3 and 5.2.5 mention); the Gamma prior then applies to each beta_i.

`energy_and_gradients` evaluates every pixel against every component with vectorised numpy
(memory N x P x K; the reference); `energy_and_gradients_on_grid` uses the numba kernel of
`cryogmm.kernels.gaussian_noise` with a k-sigma cut-off; `energy_and_gradients_with_ctf` convolves
each image's prediction with its CTF (thesis 6.2's future work), on a padded grid so that the
convolution is linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.kernels.gaussian_noise import (centre_gradients_kernel, residual_and_centre_gradients_kernel,
                                            residual_sums_of_squares_kernel)


@dataclass(frozen=True, kw_only=True)
class GaussianNoiseGradients:
    """Gradients of the energy.

    means: (K, 3); rotations: (N, 3), in exponential coordinates about the current rotation,
    R_i <- expm([w_i]_x) R_i at w_i = 0 (Eqns. 5.26-5.27); translations: (N, 2);
    size: scalar dE/ds; noise_precision: dE/dbeta, scalar or (N,) as beta was given.
    """

    means: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    size: float
    noise_precision: float


def _projected_centres(means, rotations, translations):
    """(N, K, 2) centres Po R_i mu_k + t_i."""
    rotated = means @ np.swapaxes(rotations, 1, 2)  # (N, K, 3): R_i mu_k
    return rotated[..., :2] + translations[:, None, :]


def _components(pixels_in_angstroms, centres, size):
    """Per-pixel differences (N, P, K, 2) and Gaussian values v_ijk (N, P, K)."""
    diff = pixels_in_angstroms[None, :, None, :] - centres[:, None, :, :]
    v = np.exp(-0.5 * size * np.einsum("npkc,npkc->npk", diff, diff))
    return diff, v


def predicted_images(pixels_in_angstroms, means, rotations, translations, *, scale, size):
    """Eqn. 5.2: (N, P) predicted pixel values for P pixel positions (P, 2) in Å."""
    _, v = _components(pixels_in_angstroms, _projected_centres(means, rotations, translations), size)
    return _per_image(scale, len(rotations))[:, None] * v.sum(axis=2)


def _per_image(value, n_images):
    """A scalar or (N,) parameter as an (N,) float64 array."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n_images,))


def energy_and_gradients(images, pixels_in_angstroms, means, rotations, translations, *, scale,
                         size, noise_precision, mean_precision, a_beta=1.0, b_beta=0.0):
    """Energy (Eqns. 5.15-5.17) and its gradients (Eqn. 5.20 and appendix D).

    Parameters
    ----------
    images : (N, P) pixel values, flattened in the order of ``pixels_in_angstroms``.
    pixels_in_angstroms : (P, 2) pixel positions (x, y) in Å.
    means : (K, 3) component means in Å.
    rotations : (N, 3, 3) rotation matrices R_i.
    translations : (N, 2) in-plane shifts t_i in Å.
    scale, size : lam (scalar or (N,)) and s of Eqn. 5.2 (s in 1/Å²).
    noise_precision, mean_precision : beta (scalar or (N,)) and r.
    a_beta, b_beta : Gamma prior on beta (Eqn. 5.7).

    Returns
    -------
    (energy, GaussianNoiseGradients)
    """
    centres = _projected_centres(means, rotations, translations)
    diff, v = _components(pixels_in_angstroms, centres, size)
    residual = images - _per_image(scale, len(rotations))[:, None] * v.sum(axis=2)
    weighted = residual[:, :, None] * v
    centre_sums = size * np.einsum("npk,npkc->nkc", weighted, diff)
    size_sum = 0.5 * np.sum(weighted * np.einsum("npkc,npkc->npk", diff, diff), axis=(1, 2))
    return _assemble(residual, centre_sums, size_sum, means, rotations, scale=scale,
                     noise_precision=noise_precision, mean_precision=mean_precision,
                     a_beta=a_beta, b_beta=b_beta)


def energy_and_gradients_on_grid(images, origin_in_angstroms, pixel_size_in_angstroms, means, rotations,
                                 translations, *, scale, size, noise_precision, mean_precision,
                                 a_beta=1.0, b_beta=0.0, cutoff_sigmas=4.0):
    """`energy_and_gradients` for images (N, ny, nx) on a regular grid, by the numba kernel.

    origin_in_angstroms : (x, y) of pixel [0, 0]; each component is evaluated within
    `cutoff_sigmas` standard deviations of its projected centre.
    """
    images = np.ascontiguousarray(images, dtype=np.float64)
    centres = np.ascontiguousarray(_projected_centres(means, rotations, translations))
    residual, centre_sums, size_sums = np.empty_like(images), np.empty_like(centres), np.empty(len(images))
    residual_and_centre_gradients_kernel(images, centres, _per_image(scale, len(images)).copy(), float(size),
                                         np.asarray(origin_in_angstroms, dtype=np.float64),
                                         float(pixel_size_in_angstroms), float(cutoff_sigmas),
                                         residual, centre_sums, size_sums)
    return _assemble(residual, centre_sums, size_sums, means, rotations, scale=scale,
                     noise_precision=noise_precision, mean_precision=mean_precision,
                     a_beta=a_beta, b_beta=b_beta)


def padded_unit_predictions(pixel_size_in_angstroms, padded_box, means, rotations, translations, *, size,
                            cutoff_sigmas=4.0):
    """(N, m, m) sum_k exp(-s/2 |x - c_ik|^2) on the centred grid of the padded box m (lam = 1)."""
    centres = np.ascontiguousarray(_projected_centres(means, rotations, translations))
    n = len(rotations)
    out = np.empty((n, padded_box, padded_box))
    # the residual of zero images at scale -1 is the prediction
    residual_sums_of_squares_kernel(np.zeros_like(out), centres, -np.ones(n), float(size),
                                    np.full(2, -(padded_box // 2) * pixel_size_in_angstroms),
                                    float(pixel_size_in_angstroms), float(cutoff_sigmas), out)
    return out


def filter_and_crop(padded_images, transfer, box):
    """Convolve (N, m, m) images with the real, even transfer functions (N, m, m // 2 + 1) (rfft2
    half plane) and crop the central box (the padded centre pixel onto the box centre)."""
    m = padded_images.shape[-1]
    start = m // 2 - box // 2
    filtered = np.fft.irfft2(np.fft.rfft2(padded_images) * transfer, s=(m, m))
    return filtered[:, start:start + box, start:start + box]


def energy_and_gradients_with_ctf(images, pixel_size_in_angstroms, means, rotations, translations, *, transfer,
                                  scale, size, noise_precision, mean_precision, a_beta=1.0, b_beta=0.0,
                                  cutoff_sigmas=4.0):
    """`energy_and_gradients_on_grid` with yhat_i = lam_i crop(h_i * u_i): u_i the projected mixture on
    the centred grid of the padded box m, h_i the point-spread function whose transform is
    `transfer[i]` ((N, m, m // 2 + 1), real and even: a CTF times the polarity), images (N, n, n)
    on the centred grid of the box n <= m. The gradient filters the zero-padded residual with the
    same transfer (the adjoint of a convolution by a real, even transfer is itself) and sums it
    against the components on the padded grid."""
    images = np.asarray(images, dtype=np.float64)
    n, m = images.shape[-1], transfer.shape[-2]
    unit = padded_unit_predictions(pixel_size_in_angstroms, m, means, rotations, translations, size=size,
                                   cutoff_sigmas=cutoff_sigmas)
    residual = images - _per_image(scale, len(images))[:, None, None] * filter_and_crop(unit, transfer, n)
    start = m // 2 - n // 2
    padded = np.zeros_like(unit)
    padded[:, start:start + n, start:start + n] = residual
    back = np.ascontiguousarray(filter_and_crop(padded, transfer, m))
    centres = np.ascontiguousarray(_projected_centres(means, rotations, translations))
    centre_sums, size_sums = np.empty_like(centres), np.empty(len(images))
    centre_gradients_kernel(back, centres, float(size), np.full(2, -(m // 2) * pixel_size_in_angstroms),
                            float(pixel_size_in_angstroms), float(cutoff_sigmas), centre_sums, size_sums)
    return _assemble(residual, centre_sums, size_sums, means, rotations, scale=scale,
                     noise_precision=noise_precision, mean_precision=mean_precision, a_beta=a_beta, b_beta=b_beta)


def _assemble(residual, centre_sums, size_sums, means, rotations, *, scale, noise_precision,
              mean_precision, a_beta, b_beta):
    """Energy and gradients from the residual (N, ...), sum_j e v s (x - c) per centre (N, K, 2)
    and sum_j e v |x - c|^2 / 2 per image (N,)."""
    n_images = len(rotations)
    beta, lam = _per_image(noise_precision, n_images), _per_image(scale, n_images)
    squares = np.sum(residual.reshape(n_images, -1) ** 2, axis=1)
    n_values = residual.size // n_images
    shared = np.ndim(noise_precision) == 0  # one beta with one Gamma prior, or one per image
    log_prior_beta = (a_beta - 1.0) * np.log(beta) - b_beta * beta
    energy = (0.5 * float(beta @ squares) - 0.5 * n_values * float(np.sum(np.log(beta)))
              + 0.5 * mean_precision * np.sum(means**2)
              - (float(log_prior_beta[0]) if shared else float(log_prior_beta.sum())))
    # dE/d centre_ik = -beta_i lam_i s sum_j e_ij v_ijk (x_ij - centre_ik)
    d_centres = -(beta * lam)[:, None, None] * centre_sums
    d_centres_3d = np.concatenate([d_centres, np.zeros(d_centres.shape[:2] + (1,))], axis=2)
    d_means = (d_centres_3d @ rotations).sum(axis=0) + mean_precision * means  # sum_i R_i^T d_ik
    rotated = means @ np.swapaxes(rotations, 1, 2)
    # d(R mu)/dw = w x (R mu), so dE/dw_i = sum_k (R_i mu_k) x (Po^T dE/dcentre_ik)
    d_rotations = np.cross(rotated, d_centres_3d).sum(axis=1)
    if shared:
        d_beta = float(0.5 * squares.sum() - (0.5 * residual.size + a_beta - 1.0) / beta[0] + b_beta)
    else:
        d_beta = 0.5 * squares - (0.5 * n_values + a_beta - 1.0) / beta + b_beta
    return float(energy), GaussianNoiseGradients(
        means=d_means, rotations=d_rotations, translations=d_centres.sum(axis=1),
        size=float(np.sum(beta * lam * np.asarray(size_sums))), noise_precision=d_beta)
