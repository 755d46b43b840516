"""Simulated particle images: exact projections of molmap densities, shifts and noise.

Image i shows the density rotated by the RELION matrix A_i (a point x goes to A_i x), projected
along z and shifted by t_i in the image plane (CONVENTIONS.md). For isotropic Gaussians the
projection is exact: the line integral along z of a 3D Gaussian is the 2D Gaussian with the same
sigma at the projected mean (Eqn. 2.76). Images are line integrals of the density, in Z per Å^2,
on the centred grid `Grid.centered((box, box), pixel_size)` (pixel `box // 2` at coordinate 0).

Particle images with a CTF (`ctf_particle_images`, thesis Eqn. 4.1) are the projection convolved
with `polarity * PSF`, where the PSF is the inverse Fourier transform of the CTF of
`cryogmm.forward.ctf` (negative at low frequency). The default `polarity = -1` gives BRIGHT
particles on a zero background, RELION's inverted contrast; `polarity = +1` gives dark particles
as in raw micrographs. The convolution is linear, not circular: the projection is computed in a
box `padding_factor` times larger, filtered, and cropped, as if the particle had been extracted
from a micrograph (signal delocalised past the box edge is lost; none wraps around).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from scipy import ndimage

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_of_frequencies
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
    *,
    n_threads: int | None = None,
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
    n_threads : int, optional
        Images are computed in this many threads (the numba kernel releases the GIL); default
        `numba.get_num_threads()` (all cores unless NUMBA_NUM_THREADS says otherwise). The
        result does not depend on it.

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

    def project(i: int) -> None:
        projected = coordinates @ rotations[i, :2].T + shifts[i]  # P_o A x + t
        images[i] = evaluate_gaussians(grid, projected, amplitudes, precision, CUTOFF_SIGMAS, dtype)

    n_threads = min(n_images, n_threads or numba.get_num_threads())
    if n_threads <= 1:
        for i in range(n_images):
            project(i)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(project, range(n_images)))
    return images


def ctf_particle_images(
    coordinates_in_angstroms: np.ndarray,
    atomic_numbers: np.ndarray,
    rotations: np.ndarray,
    shifts_in_angstroms: np.ndarray | None,
    resolution_in_angstroms: float,
    box: int,
    pixel_size_in_angstroms: float,
    ctf_parameters: CTFParameters,
    *,
    polarity: int = -1,
    padding_factor: int = 2,
    dtype=np.float32,
    chunk_size: int = 256,
    n_threads: int | None = None,
) -> np.ndarray:
    """Particle images with a CTF: exact projections convolved with `polarity` times the PSF.

    Each image is projected (`project_atoms`) in a box of `padding_factor * box` pixels with the
    same centre, multiplied in Fourier space by `polarity * CTF_i` and cropped to `box`: a
    linear convolution, as for a particle extracted from a micrograph.

    Parameters
    ----------
    coordinates_in_angstroms, atomic_numbers, rotations, shifts_in_angstroms,
    resolution_in_angstroms, box, pixel_size_in_angstroms : as for `project_atoms`.
    ctf_parameters : CTFParameters of the P images.
    polarity : -1 (bright particles, RELION's inverted contrast; default) or +1 (dark).
    padding_factor : int >= 1; 1 gives a circular convolution in the box.
    dtype : numpy dtype of the images.
    chunk_size : images filtered at a time (bounds the memory of the padded stacks).
    n_threads : threads for the projections (see `project_atoms`).

    Returns
    -------
    (P, box, box) array `[n, y, x]` in Z per Å^2 (times the CTF, which is dimensionless).
    """
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n_images = rotations.shape[0]
    _check_filter_options(ctf_parameters, n_images, polarity, padding_factor)
    shifts = (np.zeros((n_images, 2)) if shifts_in_angstroms is None
              else np.asarray(shifts_in_angstroms, dtype=np.float64).reshape(-1, 2))
    box = int(box)
    images = np.empty((n_images, box, box), dtype=dtype)
    for first in range(0, n_images, chunk_size):
        chunk = slice(first, min(first + chunk_size, n_images))
        padded = project_atoms(coordinates_in_angstroms, atomic_numbers, rotations[chunk], shifts[chunk],
                               resolution_in_angstroms, int(padding_factor) * box, pixel_size_in_angstroms,
                               dtype=np.float64, n_threads=n_threads)
        images[chunk] = _filter_and_crop(padded, ctf_parameters[chunk], pixel_size_in_angstroms, box, polarity)
    return images


def class_particle_images(
    coordinates_in_angstroms: np.ndarray,
    atomic_numbers: np.ndarray,
    class_rotations: np.ndarray,
    class_index: np.ndarray,
    psi_in_degrees: np.ndarray,
    shifts_in_angstroms: np.ndarray | None,
    resolution_in_angstroms: float,
    box: int,
    pixel_size_in_angstroms: float,
    *,
    ctf_parameters: CTFParameters | None = None,
    polarity: int = -1,
    padding_factor: int = 2,
    oversampling: int = 3,
    dtype=np.float32,
    chunk_size: int = 256,
    n_threads: int | None = None,
) -> np.ndarray:
    """Particle images of a few viewing directions (classes), each with its own in-plane pose.

    Particle i of class c has the pose A_i = Rz(-psi_i) A_c (Euler angles (rot_c, tilt_c, psi_i)
    when A_c has psi 0) and centre t_i, so its image is p_i(u) = c(Rz(psi_i) (u - t_i)) with c the
    projection for A_c. Each class is projected once, exactly, on a grid `oversampling` times
    finer and `padding_factor` times larger than the output, and every particle image is sampled
    from it by cubic-spline interpolation (relative error ~1e-5 for 15 Å resolution at 3 Å
    pixels with oversampling 3; 1e-3 without oversampling). This costs C projections instead of
    P. With `ctf_parameters` the image is then convolved with `polarity * PSF` in the padded box
    and cropped (as `ctf_particle_images`).

    Parameters
    ----------
    coordinates_in_angstroms, atomic_numbers, resolution_in_angstroms, box,
    pixel_size_in_angstroms : as for `project_atoms`.
    class_rotations : (C, 3, 3) RELION matrices A_c of the classes.
    class_index : (P,) int, the class (row of `class_rotations`) of each particle.
    psi_in_degrees : (P,) in-plane angles.
    shifts_in_angstroms : (P, 2) particle centres t_i `(x, y)` in Å, or None.
    ctf_parameters : CTFParameters of the P particles, or None for no CTF.
    polarity, padding_factor : as for `ctf_particle_images`.
    oversampling : int >= 1, refinement of the class projections.
    dtype, chunk_size, n_threads : as for `ctf_particle_images`.

    Returns
    -------
    (P, box, box) array `[n, y, x]`.
    """
    class_rotations = np.asarray(class_rotations, dtype=np.float64).reshape(-1, 3, 3)
    class_index = np.asarray(class_index).reshape(-1)
    n_images = class_index.size
    if class_index.size and (class_index.min() < 0 or class_index.max() >= class_rotations.shape[0]):
        raise ValueError(f"class indices must be in [0, {class_rotations.shape[0]})")
    psi = np.radians(np.asarray(psi_in_degrees, dtype=np.float64).reshape(-1))
    shifts = (np.zeros((n_images, 2)) if shifts_in_angstroms is None
              else np.asarray(shifts_in_angstroms, dtype=np.float64).reshape(-1, 2))
    if psi.size != n_images or shifts.shape[0] != n_images:
        raise ValueError(f"{psi.size} angles and {shifts.shape[0]} shifts for {n_images} particles")
    if ctf_parameters is not None:
        _check_filter_options(ctf_parameters, n_images, polarity, padding_factor)
    if int(oversampling) != oversampling or oversampling < 1:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
    box, oversampling = int(box), int(oversampling)
    padded_box = int(padding_factor) * box
    sampled_box = padded_box if ctf_parameters is not None else box
    fine_pixel = pixel_size_in_angstroms / oversampling
    fine_box = padded_box * oversampling
    # output pixel centres (x, y) in Å, relative to the centre pixel sampled_box // 2
    y, x = (np.mgrid[0:sampled_box, 0:sampled_box] - sampled_box // 2) * float(pixel_size_in_angstroms)
    images = np.empty((n_images, box, box), dtype=dtype)
    for c in range(class_rotations.shape[0]):
        members = np.flatnonzero(class_index == c)
        if members.size == 0:
            continue
        fine = project_atoms(coordinates_in_angstroms, atomic_numbers, class_rotations[c:c + 1], None,
                             resolution_in_angstroms, fine_box, fine_pixel, dtype=np.float64,
                             n_threads=n_threads)[0]
        coefficients = ndimage.spline_filter(fine, order=3, mode="grid-constant")
        for first in range(0, members.size, chunk_size):
            chunk = members[first:first + chunk_size]
            sampled = np.empty((chunk.size, sampled_box, sampled_box))
            for j, i in enumerate(chunk):
                dx, dy = x - shifts[i, 0], y - shifts[i, 1]
                cos, sin = math.cos(psi[i]), math.sin(psi[i])
                # source point Rz(psi) (u - t), in fine pixels from index 0
                source = np.stack([sin * dx + cos * dy, cos * dx - sin * dy]) / fine_pixel + fine_box // 2
                sampled[j] = ndimage.map_coordinates(coefficients, source, order=3, prefilter=False,
                                                     mode="grid-constant")
            if ctf_parameters is None:
                images[chunk] = sampled
            else:
                images[chunk] = _filter_and_crop(sampled, ctf_parameters[chunk], pixel_size_in_angstroms,
                                                 box, polarity)
    return images


def _check_filter_options(ctf_parameters: CTFParameters, n_images: int, polarity: int,
                          padding_factor: int) -> None:
    if polarity not in (-1, 1):
        raise ValueError(f"polarity must be -1 (bright) or +1 (dark), got {polarity}")
    if int(padding_factor) != padding_factor or padding_factor < 1:
        raise ValueError(f"padding_factor must be a positive integer, got {padding_factor}")
    if len(ctf_parameters) != n_images:
        raise ValueError(f"{len(ctf_parameters)} CTF parameter sets for {n_images} images")


def _filter_and_crop(padded: np.ndarray, ctf_parameters: CTFParameters, pixel_size_in_angstroms: float,
                     box: int, polarity: int) -> np.ndarray:
    """Multiply `(P, m, m)` images by `polarity * CTF` in Fourier space; crop the central box."""
    m = padded.shape[-1]
    start = m // 2 - box // 2  # the padded centre pixel lands on the box centre
    transfer = polarity * _half_plane_ctfs(ctf_parameters, m, pixel_size_in_angstroms)
    filtered = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=(m, m))
    return filtered[:, start:start + box, start:start + box]


def _half_plane_ctfs(parameters: CTFParameters, box: int, pixel_size_in_angstroms: float) -> np.ndarray:
    """CTFs on the `rfft2` half plane, (P, box, box // 2 + 1); each distinct parameter set once."""
    rows = np.stack([np.asarray(getattr(parameters, name)) for name in parameters.__dataclass_fields__], axis=1)
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    ky, kx = np.meshgrid(np.fft.fftfreq(box, d=pixel_size_in_angstroms),
                         np.fft.rfftfreq(box, d=pixel_size_in_angstroms), indexing="ij")
    return ctf_of_frequencies(parameters[first], kx, ky)[inverse.reshape(-1)]


def random_defocus(
    rng: np.random.Generator,
    n: int,
    defocus_range_in_angstroms: tuple[float, float],
    *,
    n_groups: int | None = None,
    astigmatism_in_angstroms: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Defocus of n simulated images (U, V in Å, angle in degrees; RELION's columns).

    The mean defocus (U + V) / 2 is drawn uniformly from the range, or, with `n_groups` G, image
    i gets the value `linspace(min, max, G)[i % G]` (all values equally often when G divides n).
    With astigmatism A > 0, U = mean + A/2, V = mean - A/2 and the angle is uniform in [0, 180);
    without, U = V and the angle is 0.

    Returns
    -------
    defocus_u_in_angstroms, defocus_v_in_angstroms, defocus_angle_in_degrees : (n,) arrays
    """
    low, high = (float(v) for v in defocus_range_in_angstroms)
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or low > high:
        raise InputError(f"defocus range {low:g} to {high:g} Å: needs 0 < min <= max")
    astigmatism = float(astigmatism_in_angstroms)
    if not math.isfinite(astigmatism) or astigmatism < 0 or astigmatism / 2 >= low:
        raise InputError(f"astigmatism {astigmatism:g} Å: must be >= 0 and below twice the smallest defocus")
    if n_groups is None:
        mean = rng.uniform(low, high, n)
    else:
        if n_groups < 1:
            raise InputError(f"{n_groups} defocus groups: must be at least 1")
        mean = np.linspace(low, high, int(n_groups))[np.arange(n) % int(n_groups)]
    if astigmatism > 0:
        angle = rng.uniform(0.0, 180.0, n)
    else:
        angle = np.zeros(n)
    return mean + astigmatism / 2, mean - astigmatism / 2, angle


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
