"""Simulated particle images: exact projections of molmap densities, shifts and noise.

Image i shows the density rotated by the RELION matrix A_i (a point x goes to A_i x), projected
along z and shifted by t_i in the image plane (CONVENTIONS.md). For isotropic Gaussians the
projection is exact: the line integral along z of a 3D Gaussian is the 2D Gaussian with the same
sigma at the projected mean (Eqn. 2.76). Images are line integrals of the density, in Z per Å^2,
on the centred grid `Grid.centered((box, box), pixel_size)` (pixel `box // 2` at coordinate 0).
"""

from __future__ import annotations

import math

import numpy as np

from cryogmm.errors import InputError
from cryogmm.grid import Grid
from cryogmm.kernels import evaluate_gaussians
from cryogmm.simulate.molmap import CUTOFF_SIGMAS, check_atoms, sigma_for_resolution


def project_atoms(
    coordinates_in_angstroms: np.ndarray,
    atomic_numbers: np.ndarray,
    rotations: np.ndarray,
    shifts_in_angstroms: np.ndarray | None,
    resolution_in_angstroms: float,
    box: int,
    pixel_size_in_angstroms: float,
    dtype=np.float32,
) -> np.ndarray:
    """Projections of the molmap density of the atoms, one per pose.

    Parameters
    ----------
    coordinates_in_angstroms : (N, 3) array
        Atom positions `(x, y, z)` in Å relative to the particle centre (the rotation centre).
    atomic_numbers : (N,) array
        Weights (atomic numbers Z).
    rotations : (P, 3, 3) array
        RELION matrices A (`cryogmm.geometry.so3.euler_to_matrix`).
    shifts_in_angstroms : (P, 2) array or None
        Position `(x, y)` of the particle centre in each image, in Å from the image centre
        (STAR files store its negative as `rlnOriginX/YAngst`). None means no shift.
    resolution_in_angstroms : float
        Sets sigma of the atom Gaussians (Eqn. 3.1), as in `molmap`.
    box : int
        Image size in pixels.
    pixel_size_in_angstroms : float
    dtype : numpy dtype of the images.

    Returns
    -------
    (P, box, box) array `[n, y, x]`, non-negative, in Z per Å^2 (Gaussians cut off at 5 sigma).
    """
    coordinates, weights = check_atoms(coordinates_in_angstroms, atomic_numbers)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n_images = rotations.shape[0]
    if shifts_in_angstroms is None:
        shifts = np.zeros((n_images, 2))
    else:
        shifts = np.asarray(shifts_in_angstroms, dtype=np.float64).reshape(-1, 2)
        if shifts.shape[0] != n_images:
            raise ValueError(f"{shifts.shape[0]} shifts for {n_images} rotations")
    sigma = sigma_for_resolution(resolution_in_angstroms)
    precision = 1.0 / sigma**2
    amplitudes = weights * precision / (2 * np.pi)  # 2D normalisation: the marginal over z
    grid = Grid.centered((int(box), int(box)), pixel_size_in_angstroms)
    images = np.empty((n_images, grid.shape[0], grid.shape[1]), dtype=dtype)
    for i in range(n_images):
        projected = coordinates @ rotations[i, :2].T + shifts[i]  # P_o A x + t
        images[i] = evaluate_gaussians(grid, projected, amplitudes, precision, CUTOFF_SIGMAS, dtype)
    return images


def add_noise(rng: np.random.Generator, images: np.ndarray, snr: float) -> np.ndarray:
    """Images plus white Gaussian noise at signal-to-noise ratio `snr`, image by image.

    The SNR is the ratio of variances: the signal variance of an image is the variance of its
    clean pixel values over the whole box (about their mean), and the noise of that image has
    variance `signal_variance / snr`. Because empty background counts in the signal variance,
    the same `snr` means more noise relative to the particle in a larger box.

    Parameters
    ----------
    rng : numpy.random.Generator
    images : (P, ny, nx) or (ny, nx) array of clean images.
    snr : float, > 0.

    Returns
    -------
    Array of the shape and (floating) dtype of `images`.
    """
    snr = float(snr)
    if not math.isfinite(snr) or snr <= 0:
        raise InputError(f"SNR must be a positive number, got {snr}")
    images = np.asarray(images)
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    stack = images.reshape((-1,) + images.shape[-2:]).astype(np.float64)
    signal_variance = stack.var(axis=(1, 2))
    if np.any(signal_variance <= 0):
        raise InputError("an image is constant, so its SNR is undefined; check the model and the box size")
    noise_std = np.sqrt(signal_variance / snr)
    noisy = stack + noise_std[:, None, None] * rng.standard_normal(stack.shape)
    return noisy.reshape(images.shape).astype(dtype)


def random_shifts(rng: np.random.Generator, n: int, max_shift_in_angstroms: float) -> np.ndarray:
    """n in-plane shifts `(x, y)` in Å drawn uniformly from the disc of radius `max_shift`.

    Returns
    -------
    (n, 2) array in Å.
    """
    radius = float(max_shift_in_angstroms)
    if not math.isfinite(radius) or radius < 0:
        raise InputError(f"maximum shift must be a non-negative number of Å, got {max_shift_in_angstroms}")
    r = radius * np.sqrt(rng.random(n))  # area-uniform radius
    angle = 2 * np.pi * rng.random(n)
    return np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
