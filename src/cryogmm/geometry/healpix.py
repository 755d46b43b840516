"""Orientation grids for a RELION-style refinement: HEALPix directions x in-plane angles.

An orientation of HEALPix order o is a viewing direction, the centre of a nested HEALPix pixel at
nside = 2**o (`healpy.pix2ang(nside, ipix, nest=True)` gives tilt = theta, rot = phi), combined
with an in-plane angle psi = psi_index * step, psi in [0, 360) degrees. The angular step is RELION's
`360 / (6 * 2**o)` = 60 / 2**o degrees for both (15 degrees at order 2), which is about the mean
distance between neighbouring pixel centres. Order o thus has 12 * 4**o directions and 6 * 2**o
in-plane angles: 4608 orientations at order 2.

Matrices are RELION's A (`cryogmm.geometry.so3.euler_to_matrix`); the viewing direction, the image
z axis in map coordinates, is A^T z, the third row of A. Refinement one order finer goes through
`children` (8 orientations of order o + 1 around each of order o), local searches through
`local_perturbations` (A' = delta @ A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import euler_to_matrix

MAX_ORDER = 8  # 0.23 degrees; finer than any refinement needs
MAX_GLOBAL_ORDER = 5  # 2.4 million orientations (170 MB of matrices); order 6 has 8 times more
_MAX_PERTURBATIONS = 10_000_000  # lattice points tried by local_perturbations
_BLOCK = 2048  # rows x columns of one block of scores in nearest_orientation (32 MB)


def _check_order(order, *, largest: int = MAX_ORDER,
                 hint: str = "order o samples every 60 / 2**o degrees") -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 0 <= order <= largest:
        raise InputError(f"HEALPix order {order!r} is not an integer in 0..{largest}; {hint}")
    return int(order)


def _positive_degrees(value, what: str) -> float:
    try:
        degrees = float(value)
    except (TypeError, ValueError):
        degrees = np.nan
    if not np.isfinite(degrees) or degrees <= 0:
        raise InputError(f"{what} {value!r} degrees is not a positive number")
    return degrees


def angular_step_in_degrees(order: int) -> float:
    """Angular step of HEALPix order `order` (0..8): RELION's 360 / (6 * 2**order) degrees."""
    return 60.0 / 2 ** _check_order(order)


def order_for_step(step_in_degrees: float) -> int:
    """Smallest HEALPix order whose angular step is at most `step_in_degrees` (0 for 60 or more)."""
    step = _positive_degrees(step_in_degrees, "angular step")
    for order in range(MAX_ORDER + 1):
        if 60.0 / 2**order <= step:  # exact: division by a power of two
            return order
    raise InputError(f"angular step {step} degrees is finer than order {MAX_ORDER}'s "
                     f"{60.0 / 2**MAX_ORDER} degrees; ask for a step of at least that")


def _n_directions(order: int) -> int:
    return 12 * 4**order


def _n_psi(order: int) -> int:
    return 6 * 2**order


@dataclass(frozen=True, eq=False)
class OrientationGrid:
    """J orientations of one HEALPix order.

    Parameters
    ----------
    order : int
        HEALPix order o (nside = 2**o), 0..8.
    euler_in_degrees : (J, 3) float64
        RELION (rot, tilt, psi): rot in [0, 360), tilt in [0, 180], psi in [0, 360).
    matrices : (J, 3, 3) float64
        RELION matrices A of those angles.
    direction_index : (J,) int64
        Nested HEALPix pixel of the viewing direction, in 0..12 * 4**o - 1.
    psi_index : (J,) int64
        psi = psi_index * angular step, psi_index in 0..6 * 2**o - 1.
    """

    order: int
    euler_in_degrees: np.ndarray
    matrices: np.ndarray
    direction_index: np.ndarray
    psi_index: np.ndarray

    def __post_init__(self):
        _check_order(self.order)
        j = len(self.direction_index)
        shapes = {"euler_in_degrees": (j, 3), "matrices": (j, 3, 3), "direction_index": (j,), "psi_index": (j,)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"OrientationGrid.{name} has shape {np.shape(getattr(self, name))}, "
                                 f"expected {shape} for {j} orientations")

    @property
    def angular_step_in_degrees(self) -> float:
        """Step between neighbouring directions and between in-plane angles, in degrees."""
        return angular_step_in_degrees(self.order)

    def __len__(self) -> int:
        return len(self.direction_index)


def _grid(order: int, direction_index: np.ndarray, psi_index: np.ndarray) -> OrientationGrid:
    """The orientations (direction_index[j], psi_index[j]) of `order`."""
    import healpy  # imported when used: it loads astropy and matplotlib (seconds)

    theta, phi = healpy.pix2ang(2**order, direction_index, nest=True)
    euler = np.stack([np.degrees(phi), np.degrees(theta), psi_index * angular_step_in_degrees(order)], axis=-1)
    return OrientationGrid(order=order, euler_in_degrees=euler, matrices=euler_to_matrix(*euler.T),
                           direction_index=direction_index, psi_index=psi_index)


def global_grid(order: int) -> OrientationGrid:
    """Every direction of `order` (0..5) with every in-plane angle, direction-major.

    Returns
    -------
    OrientationGrid
        J = 12 * 4**order * 6 * 2**order orientations (72, 576, 4608, 36864, ... for orders
        0, 1, 2, 3); orientation j has direction j // (6 * 2**order) and psi index j % (6 * 2**order).
    """
    order = _check_order(order, largest=MAX_GLOBAL_ORDER, hint="finer global grids are too large; "
                         "refine around the best orientations with children() or local_perturbations()")
    n_psi = _n_psi(order)
    j = np.arange(_n_directions(order) * n_psi, dtype=np.int64)
    return _grid(order, j // n_psi, j % n_psi)


def _indices(values, count: int, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be a 1-D array of integers, got shape {a.shape} of {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= count):
        raise InputError(f"{name} has values outside 0..{count - 1}; pass indices of the parent grid's order")
    return a.astype(np.int64)


def _transported_psi_in_degrees(order: int, direction: np.ndarray, child_direction: np.ndarray) -> np.ndarray:
    """In-plane angle tau that the frame (rot, tilt, 0) of each direction of `order` takes on when
    the shortest rotation T carries it to the child direction (order + 1): T F = G Rz(tau) for the
    active frames F, G of the direction and of the child with psi = 0."""
    import healpy

    v = np.stack(healpy.pix2vec(2**order, direction, nest=True), axis=-1)
    w = np.stack(healpy.pix2vec(2 ** (order + 1), child_direction, nest=True), axis=-1)
    cross = np.cross(v, w)
    sine = np.linalg.norm(cross, axis=-1)
    angle = np.arctan2(sine, np.sum(v * w, axis=-1))
    shortest = Rotation.from_rotvec(cross * (angle / np.where(sine > 0, sine, 1.0))[:, None]).as_matrix()
    frames = []
    for nside, pixels in ((2**order, direction), (2 ** (order + 1), child_direction)):
        theta, phi = healpy.pix2ang(nside, pixels, nest=True)
        frames.append(euler_to_matrix(np.degrees(phi), np.degrees(theta), 0.0))  # F^T and G^T
    m = frames[1] @ shortest @ np.swapaxes(frames[0], -1, -2)  # G^T T F = Rz(tau)
    return np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))


def children(grid_order: int, direction_index, psi_index) -> tuple[OrientationGrid, np.ndarray]:
    """The 8 orientations one order finer around each of P parent orientations.

    A parent (i, p) of order o has 4 child directions, the nested HEALPix sub-pixels 4 i + k
    (k in 0..3) of order o + 1, whose centres surround the parent's. Each takes two in-plane
    angles: those of order o + 1 just below and just above (half a parent step apart) the angle
    psi + tau that the parent's image frame takes on when the shortest rotation carries its
    direction onto the child's. Without tau (keeping psi, as RELION's oversampling does), a child
    direction whose rot differs from the parent's near a pole (tilt near 0 or 180) would come with
    an image turned by about that rot difference.

    The children are orientations of `global_grid(o + 1)`, each within three quarters of a parent
    step of its parent (geodesic angle); children of neighbouring parents can coincide.

    Parameters
    ----------
    grid_order : int
        Order o of the parents, 0..7.
    direction_index, psi_index : (P,) int arrays
        The parents' nested HEALPix pixels (0..12 * 4**o - 1) and psi indices (0..6 * 2**o - 1).

    Returns
    -------
    grid : OrientationGrid
        8 P orientations of order o + 1; parent q's children are rows 8 q .. 8 q + 7, sub-pixel k
        at rows 8 q + 2 k and 8 q + 2 k + 1.
    parent : (8 P,) int64
        Row of each child's parent in the arrays given.
    """
    order = _check_order(grid_order, largest=MAX_ORDER - 1,
                         hint=f"the finest children are those of order {MAX_ORDER - 1}")
    direction = _indices(direction_index, _n_directions(order), "direction_index")
    psi = _indices(psi_index, _n_psi(order), "psi_index")
    if len(direction) != len(psi):
        raise InputError(f"direction_index has {len(direction)} entries and psi_index {len(psi)}; "
                         "pass one of each per parent orientation")
    child_direction = (4 * direction[:, None] + np.arange(4)).reshape(-1)
    parent_psi_in_degrees = np.repeat(psi, 4) * angular_step_in_degrees(order)
    carried = parent_psi_in_degrees + _transported_psi_in_degrees(order, np.repeat(direction, 4), child_direction)
    below = np.floor(carried / angular_step_in_degrees(order + 1)).astype(np.int64)
    child_psi = (below[:, None] + np.arange(2)).reshape(-1) % _n_psi(order + 1)
    parent = np.repeat(np.arange(len(direction), dtype=np.int64), 8)
    return _grid(order + 1, np.repeat(child_direction, 2), child_psi), parent


def local_perturbations(step_in_degrees: float, radius_in_degrees: float) -> np.ndarray:
    """Small rotations around the identity for a local search, A' = delta @ A.

    The rotation vectors (axis times angle) on a cubic lattice of spacing `step_in_degrees` that lie
    in the ball of radius `radius_in_degrees` (any point of the ball is then within about
    step * sqrt(3) / 2 of one of them), in order of increasing angle.

    Parameters
    ----------
    step_in_degrees : float
        Lattice spacing, > 0.
    radius_in_degrees : float
        Largest rotation angle, in [0, 180).

    Returns
    -------
    np.ndarray
        (M, 3, 3) float64 rotation matrices, the identity first; M is about
        4/3 pi (radius / step)**3.
    """
    step = _positive_degrees(step_in_degrees, "perturbation step")
    radius = 0.0 if radius_in_degrees == 0 else _positive_degrees(radius_in_degrees, "perturbation radius")
    if radius >= 180:
        raise InputError(f"perturbation radius {radius_in_degrees!r} degrees is not in [0, 180)")
    n = int(np.floor(radius / step * (1 + 1e-12)))
    if (2 * n + 1) ** 3 > _MAX_PERTURBATIONS:
        raise InputError(f"a radius of {radius} degrees in steps of {step} degrees needs over "
                         f"{_MAX_PERTURBATIONS} lattice points; use a larger step or a smaller radius")
    k = np.arange(-n, n + 1)
    lattice = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)
    norm = np.linalg.norm(lattice, axis=1)
    inside = norm * step <= radius * (1 + 1e-12)  # keep points exactly on the sphere
    order = np.argsort(norm[inside], kind="stable")  # the identity (norm 0) first
    return Rotation.from_rotvec(np.radians(step) * lattice[inside][order]).as_matrix()


def nearest_orientation(grid: OrientationGrid, matrices) -> np.ndarray:
    """Row of `grid` nearest (geodesic angle) to each rotation.

    The angle between A and B grows as trace(A^T B), the sum of their elementwise products,
    falls, so the nearest row maximises a matrix product of the flattened matrices (computed in
    blocks of 2048 x 2048).

    Parameters
    ----------
    grid : OrientationGrid
        J > 0 orientations.
    matrices : (..., 3, 3) array
        Rotation matrices.

    Returns
    -------
    np.ndarray
        int64 indices into the grid, shape `(...)`.
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim < 2 or m.shape[-2:] != (3, 3) or not np.all(np.isfinite(m)):
        raise InputError(f"matrices must be finite rotation matrices of shape (..., 3, 3), got {m.shape}")
    if len(grid) == 0:
        raise InputError("the orientation grid is empty; build one with global_grid or children")
    queries = m.reshape(-1, 9)
    table = grid.matrices.reshape(-1, 9)
    best = np.zeros(len(queries), dtype=np.int64)
    for q in range(0, len(queries), _BLOCK):
        rows = queries[q:q + _BLOCK]
        score = np.full(len(rows), -np.inf)
        for t in range(0, len(table), _BLOCK):
            block = rows @ table[t:t + _BLOCK].T
            index = np.argmax(block, axis=1)
            value = block[np.arange(len(rows)), index]
            better = value > score
            score = np.where(better, value, score)
            best[q:q + _BLOCK] = np.where(better, t + index, best[q:q + _BLOCK])
    return best.reshape(m.shape[:-2])
