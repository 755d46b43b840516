"""Density maps from atomic models, as ChimeraX's `molmap` makes them (thesis section 3.1.1).

Each atom is an isotropic Gaussian weighted by its atomic number Z, with the standard deviation
that ChimeraX uses for a given resolution (Eqns. 3.1-3.2):

    sigma = res / (pi sqrt 2) ~ 0.225 res

The map is a density: atom k contributes Z_k (s / 2 pi)^(3/2) exp(-s/2 |v - x_k|^2) with
s = 1 / sigma^2, so the map integrates (sum times voxel volume) to the total atomic number.

The model centre used throughout `cryogmm.simulate` is the Z-weighted centroid of the atoms,
which is the centre of mass of the molmap density; projections of the density then have their
centre of mass at the projected centre.
"""

from __future__ import annotations

import math

import numpy as np

from cryogmm.errors import InputError
from cryogmm.grid import Grid
from cryogmm.kernels import evaluate_gaussians

CUTOFF_SIGMAS = 5.0
MIN_BOX = 8


def sigma_for_resolution(resolution_in_angstroms: float) -> float:
    """Gaussian standard deviation in Å for a map of the given resolution in Å (Eqn. 3.1)."""
    resolution = float(resolution_in_angstroms)
    if not math.isfinite(resolution) or resolution <= 0:
        raise InputError(f"resolution must be a positive number of Å, got {resolution_in_angstroms}")
    return resolution / (math.pi * math.sqrt(2.0))


def check_atoms(coordinates_in_angstroms, atomic_numbers) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies: coordinates `(N, 3)` in Å and weights `(N,)`, N >= 1."""
    coordinates = np.asarray(coordinates_in_angstroms, dtype=np.float64)
    weights = np.asarray(atomic_numbers, dtype=np.float64).reshape(-1)
    if coordinates.ndim != 2 or coordinates.shape[1] != 3:
        raise InputError(f"atom coordinates must have shape (N, 3), got {coordinates.shape}")
    if coordinates.shape[0] == 0:
        raise InputError("the atomic model has no atoms; check the model file")
    if weights.shape[0] != coordinates.shape[0]:
        raise InputError(f"{weights.shape[0]} atomic numbers for {coordinates.shape[0]} atoms")
    if not (np.all(np.isfinite(coordinates)) and np.all(np.isfinite(weights))):
        raise InputError("atom coordinates or atomic numbers contain NaN or inf; check the model file")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise InputError("atomic numbers must be non-negative and not all zero; check the model file")
    return coordinates, weights


def model_center(coordinates_in_angstroms, atomic_numbers) -> np.ndarray:
    """Z-weighted centroid of the atoms, `(3,)` in Å: the centre of mass of the molmap density."""
    coordinates, weights = check_atoms(coordinates_in_angstroms, atomic_numbers)
    return weights @ coordinates / weights.sum()


def molmap(
    coordinates_in_angstroms: np.ndarray,
    atomic_numbers: np.ndarray,
    resolution_in_angstroms: float,
    grid: Grid,
    dtype=np.float32,
) -> np.ndarray:
    """Density of the atoms as Gaussians of width `sigma_for_resolution(resolution)`.

    Parameters
    ----------
    coordinates_in_angstroms : (N, 3) array
        Atom positions `(x, y, z)` in Å, in the frame of `grid`.
    atomic_numbers : (N,) array
        Weights (atomic numbers Z).
    resolution_in_angstroms : float
        Map resolution in Å (Eqn. 3.1).
    grid : Grid
        3D grid (`[z, y, x]` array) on which the density is evaluated.
    dtype : numpy dtype of the result (also the accumulation type).

    Returns
    -------
    (nz, ny, nx) array, atomic number per Å^3; Gaussians are cut off at 5 sigma.
    """
    coordinates, weights = check_atoms(coordinates_in_angstroms, atomic_numbers)
    if grid.ndim != 3:
        raise ValueError(f"molmap needs a 3D grid, got shape {grid.shape}")
    sigma = sigma_for_resolution(resolution_in_angstroms)
    precision = 1.0 / sigma**2
    amplitudes = weights * (precision / (2 * np.pi)) ** 1.5
    return evaluate_gaussians(grid, coordinates, amplitudes, precision, CUTOFF_SIGMAS, dtype)


def default_map_grid(
    coordinates_in_angstroms: np.ndarray,
    pixel_size_in_angstroms: float,
    box: int | None = None,
    padding_in_angstroms: float = 10.0,
    *,
    atomic_numbers: np.ndarray | None = None,
) -> Grid:
    """Cubic grid centred on the model, with an origin that overlays the model in ChimeraX.

    The voxel with index `box // 2` on every axis sits on the model centre (`model_center`, the
    Z-weighted centroid; unweighted when `atomic_numbers` is None), and the grid origin (centre of
    voxel 0) is `centre - (box // 2) * pixel_size`, which is the MRC origin to write.

    Parameters
    ----------
    coordinates_in_angstroms : (N, 3) array in Å.
    pixel_size_in_angstroms : float, voxel size in Å.
    box : int, optional
        Box size in voxels. By default the smallest even size (at least 8) that holds every atom
        plus `padding_in_angstroms` on each side; `molmap_padding_in_angstroms` gives a padding
        that holds the Gaussians of a given resolution.
    padding_in_angstroms : float
        Margin around the atoms in Å (used only when `box` is None).
    atomic_numbers : (N,) array, optional
        Weights of the centroid.

    Returns
    -------
    Grid of shape `(box, box, box)`.
    """
    coordinates = np.asarray(coordinates_in_angstroms, dtype=np.float64)
    weights = np.ones(len(coordinates)) if atomic_numbers is None else atomic_numbers
    center = model_center(coordinates, weights)
    pixel = float(pixel_size_in_angstroms)
    if not math.isfinite(pixel) or pixel <= 0:
        raise InputError(f"pixel size must be a positive number of Å, got {pixel_size_in_angstroms}")
    if box is None:
        half_width = float(np.abs(coordinates - center).max()) + float(padding_in_angstroms)
        # the grid reaches centre - (box//2) px below and centre + (box//2 - 1) px above
        box = max(MIN_BOX, 2 * (math.ceil(half_width / pixel) + 1))
    box = int(box)
    if box < 1:
        raise InputError(f"box must be a positive number of voxels, got {box}")
    origin = tuple(center - (box // 2) * pixel)
    return Grid((box, box, box), pixel, origin)


def molmap_padding_in_angstroms(resolution_in_angstroms: float) -> float:
    """Margin around the atoms that keeps their Gaussians in the box: 3 sigma + 5 Å."""
    return 3.0 * sigma_for_resolution(resolution_in_angstroms) + 5.0
