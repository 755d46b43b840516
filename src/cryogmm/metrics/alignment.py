"""How well rotations and maps were recovered, up to a global rotation and the hand.

Rotations are RELION matrices `(..., 3, 3)` (`cryogmm.geometry.so3`). A reconstruction can only
be right up to a rotation A of the whole map and, from projections alone, a reflection
S = diag(1, 1, -1) (thesis section 3.4.3): the estimates are then R̂ᵢ = Rᵢ Aᵀ, or S Rᵢ Aᵀ S for
the other hand, and every relative rotation R̂ᵢᵀ Rᵢ (Eqn. 3.13), or (S R̂ᵢ S)ᵀ Rᵢ (Eqn. 3.18),
equals A. `rotation_errors` finds A as the consensus of the relative rotations and reports how far
each one is from it. `align_maps` finds the rotation, shift and hand that put one map onto another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryogmm.geometry.so3 import random_rotations
from cryogmm.metrics.correlation import cross_correlation

MIRROR = np.diag([1.0, 1.0, -1.0])  # S of Eqn. 3.14: z -> -z


@dataclass(frozen=True, eq=False)
class RotationErrors:
    """Angular errors of estimated rotations after the best global rotation and hand.

    Parameters
    ----------
    errors_in_degrees : (P,) float64
        Geodesic distance of each relative rotation from `global_rotation`, in degrees
        (the smallest over the symmetry operators, if any were given).
    global_rotation : (3, 3) float64
        A: the estimated map is the true one rotated by A (and then reflected in z if `mirrored`).
    mirrored : bool
        True when the estimates have the other hand (Eqn. 3.18 was used).
    """

    errors_in_degrees: np.ndarray
    global_rotation: np.ndarray
    mirrored: bool

    def n_within(self, threshold_in_degrees: float) -> int:
        """Number of rotations whose error is at most `threshold_in_degrees`."""
        return int(np.count_nonzero(self.errors_in_degrees <= threshold_in_degrees))


def _angle_in_degrees(squared_chord: np.ndarray) -> np.ndarray:
    """Rotation angle from the squared Frobenius distance |A - B|² = 8 sin²(angle / 2)."""
    return np.degrees(2.0 * np.arcsin(np.clip(np.sqrt(squared_chord / 8.0), 0.0, 1.0)))


def _project_to_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation nearest to a 3 x 3 matrix in the Frobenius norm."""
    u, _, vt = np.linalg.svd(m)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _errors(candidates: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the error in degrees of its closest candidate `(P, G, 3, 3)` to A, and that candidate."""
    chord = np.sum((candidates - a) ** 2, axis=(-2, -1))  # (P, G)
    best = np.argmin(chord, axis=1)
    rows = np.arange(len(candidates))
    return _angle_in_degrees(chord[rows, best]), candidates[rows, best]


def _consensus(candidates: np.ndarray, inlier_threshold_in_degrees: float, n_seeds: int = 100) -> np.ndarray:
    """Global rotation that the relative rotations `(P, G, 3, 3)` cluster around.

    Seeds are taken from the relative rotations themselves; the one with the smallest median
    error wins (so up to half the images can be wrong), and is refined by the chordal L2 mean of
    the inliers, projected onto SO(3).
    """
    seeds = candidates[np.unique(np.linspace(0, len(candidates) - 1, n_seeds).round().astype(int)), 0]
    medians = [np.median(_errors(candidates, seed)[0]) for seed in seeds]
    a = seeds[int(np.argmin(medians))]
    for _ in range(20):
        errors, closest = _errors(candidates, a)
        inliers = errors <= max(inlier_threshold_in_degrees, 3.0 * np.median(errors))
        new = _project_to_rotation(closest[inliers].sum(axis=0))
        if np.allclose(new, a, atol=1e-12):
            break
        a = new
    return a


def rotation_errors(estimated: np.ndarray, truth: np.ndarray, symmetry_operators: np.ndarray | None = None,
                    *, inlier_threshold_in_degrees: float = 10.0) -> RotationErrors:
    """Errors of estimated rotations against the true ones, after the best global rotation and hand.

    Parameters
    ----------
    estimated, truth : (P, 3, 3)
        Estimated and true RELION rotation matrices, image by image.
    symmetry_operators : (G, 3, 3), optional
        Rotations S_g with map(S_g x) = map(x) for the true map (in its own frame, e.g. C4 about
        z). Rᵢ and Rᵢ S_g then give the same image, so each image's error is the smallest over g
        of the distance of R̂ᵢᵀ Rᵢ S_g from A.
    inlier_threshold_in_degrees : float
        Relative rotations within this distance of A (or within 3 × the median error, if more)
        are averaged to refine A; the others do not pull it.

    Returns
    -------
    RotationErrors
        Per-image errors in degrees, A, and the hand (the one with the smaller median error;
        the unmirrored hand on a tie).
    """
    estimated = np.asarray(estimated, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimated.shape != truth.shape or estimated.ndim != 3 or estimated.shape[1:] != (3, 3) or not len(truth):
        raise ValueError(f"need two (P, 3, 3) arrays with P > 0, got {estimated.shape} and {truth.shape}")
    ops = np.eye(3)[None] if symmetry_operators is None else np.asarray(symmetry_operators, dtype=np.float64)
    if ops.ndim != 3 or ops.shape[1:] != (3, 3):
        raise ValueError(f"symmetry operators must be (G, 3, 3), got {ops.shape}")
    best = None
    for mirrored in (False, True):
        hand = MIRROR @ estimated @ MIRROR if mirrored else estimated
        relative = np.swapaxes(hand, -1, -2) @ truth  # Eqn. 3.13 or 3.18
        candidates = relative[:, None] @ ops[None]  # (P, G, 3, 3)
        a = _consensus(candidates, inlier_threshold_in_degrees)
        errors = _errors(candidates, a)[0]
        if best is None or np.median(errors) < np.median(best.errors_in_degrees):
            best = RotationErrors(errors, a, mirrored)
    return best


@dataclass(frozen=True, eq=False)
class MapAlignment:
    """The transform that puts a moving map onto a reference map.

    Coordinates are `(x, y, z)` about the box centre (index N // 2 on every axis). The moving
    map is the reference rotated by `rotation` R, then reflected in z if `mirrored` (F =
    diag(1, 1, -1), else F = I), then shifted by `shift_in_angstroms` t: the reference point x
    lies at F R x + t in the moving map, and `aligned(x) = moving(F R x + t)`.

    Parameters
    ----------
    rotation : (3, 3) float64
        R, a rotation matrix acting on map coordinates (`so3.matrix_to_euler` gives its RELION
        Euler angles).
    shift_in_angstroms : (3,) float64
        t in `(x, y, z)` order, in Å.
    mirrored : bool
        True when the moving map has the other hand.
    cross_correlation : float
        Eqn. 3.3 between the reference and `aligned`.
    aligned : (N, N, N) float32
        The moving map resampled onto the reference grid (cubic splines; zero outside the box).
    """

    rotation: np.ndarray
    shift_in_angstroms: np.ndarray
    mirrored: bool
    cross_correlation: float
    aligned: np.ndarray


def _downsample(volume: np.ndarray, n: int) -> np.ndarray:
    """Fourier-crop a cubic map to `n` voxels a side, keeping the box centre at index n // 2."""
    size = volume.shape[0]
    if n >= size:
        return volume
    f = np.fft.fftn(np.roll(volume, -(size // 2), axis=(0, 1, 2)))
    keep = np.r_[0:(n + 1) // 2, size - n // 2:size]
    small = np.fft.ifftn(f[np.ix_(keep, keep, keep)]).real * (n / size) ** 3
    return np.roll(small, n // 2, axis=(0, 1, 2))


def _positions(n: int) -> np.ndarray:
    """`(3, n³)` positions `(x, y, z)` of the voxels of an `(n, n, n)` box about its centre, in voxels."""
    z, y, x = np.indices((n, n, n)).reshape(3, -1) - n // 2
    return np.stack([x, y, z]).astype(np.float64)


def _sample(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Trilinear values of `volume` at `(3, M)` positions `(x, y, z)` about its centre (0 outside)."""
    return ndimage.map_coordinates(volume, positions[::-1] + volume.shape[0] // 2, order=1,
                                   mode="constant", cval=0.0, prefilter=False)


def _coarse_search(reference: np.ndarray, moving: np.ndarray, rotations: np.ndarray,
                   allow_mirror: bool, batch: int = 64) -> list[tuple[float, np.ndarray, bool, np.ndarray]]:
    """Score every rotation and hand, each with its best shift (FFT cross-correlation).

    For rotation R, q(y) = reference(Rᵀ y) (inside the sphere inscribed in the box) is
    correlated with the moving map over all cyclic shifts t; for the other hand q(F y) is used.
    Returns (score, R, mirrored, t in voxels) for each.
    """
    n = reference.shape[0]
    x = _positions(n)
    inside = np.sum(x**2, axis=0) <= (n / 2) ** 2  # corners would rotate out of the box: left at 0
    x = x[:, inside]
    spectrum = scipy.fft.rfftn(moving)
    norm = np.linalg.norm(moving)
    results = []
    for start in range(0, len(rotations), batch):
        rs = rotations[start:start + batch]
        positions = np.swapaxes(rs, 1, 2) @ x  # R^T x for each R, (B, 3, M)
        q = np.zeros((len(rs), n**3))
        q[:, inside] = _sample(reference, np.moveaxis(positions, 1, 0).reshape(3, -1)).reshape(len(rs), -1)
        q = q.reshape(len(rs), n, n, n)
        hands = [(False, q)]
        if allow_mirror:  # q(F y): index z -> 2c - z, cyclically
            hands.append((True, np.roll(q[:, ::-1], 2 * (n // 2) - n + 1, axis=1)))
        for mirrored, qh in hands:
            product = spectrum[None] * np.conj(scipy.fft.rfftn(qh, axes=(1, 2, 3), workers=-1))
            corr = scipy.fft.irfftn(product, s=(n, n, n), axes=(1, 2, 3), workers=-1).reshape(len(rs), -1)
            peak = np.argmax(corr, axis=1)
            flat = qh.reshape(len(rs), -1)
            scores = corr[np.arange(len(rs)), peak] / (np.sqrt(np.einsum("bm,bm->b", flat, flat)) * norm)
            shifts = np.stack(np.unravel_index(peak, (n, n, n)))[::-1].T  # (B, 3) as (x, y, z)
            shifts = np.where(shifts > n // 2, shifts - n, shifts).astype(np.float64)
            results += [(float(s), r, mirrored, t) for s, r, t in zip(scores, rs, shifts)]
    return results


def _refine(reference: np.ndarray, moving: np.ndarray, rotation: np.ndarray, shift: np.ndarray,
            mirrored: bool, max_steps: int = 30) -> tuple[float, np.ndarray, np.ndarray]:
    """Gauss-Newton on the cross-correlation over rotation (left perturbation) and shift (voxels).

    Minimises |a/|a| - r/|r||² = 2 - 2 CC, where a(x) = moving(F R x + t) (trilinear); a step
    is taken only if the cross-correlation improves, halving it up to 8 times otherwise.
    """
    flip = MIRROR if mirrored else np.eye(3)
    x = _positions(reference.shape[0])
    r = reference.ravel() / np.linalg.norm(reference)
    gradient = np.gradient(moving)[::-1]  # d/dx, d/dy, d/dz

    def warp(rot, t):
        y = flip @ (rot @ x) + t[:, None]
        a = _sample(moving, y)
        norm = np.linalg.norm(a)
        return (float(r @ a / norm) if norm > 0 else 0.0), a, y, norm

    cc, a, y, norm = warp(rotation, shift)
    for _ in range(max_steps):
        g = np.stack([_sample(d, y) for d in gradient])  # (3, M), at y
        u = rotation @ x
        jacobian = np.concatenate([np.cross(u, flip @ g, axis=0), g]).T  # da / d(omega, t), (M, 6)
        a_hat = a / norm
        jacobian = (jacobian - np.outer(a_hat, a_hat @ jacobian)) / norm
        step = np.linalg.lstsq(jacobian.T @ jacobian, -jacobian.T @ (a_hat - r), rcond=None)[0]
        for _ in range(8):
            new_rotation = Rotation.from_rotvec(step[:3]).as_matrix() @ rotation
            new = warp(new_rotation, shift + step[3:])
            if new[0] > cc:
                break
            step = step / 2
        else:
            break
        rotation, shift = new_rotation, shift + step[3:]
        cc, a, y, norm = new
        if np.linalg.norm(step[:3]) < 1e-5 and np.linalg.norm(step[3:]) < 1e-3:
            break
    return cc, rotation, shift


def align_maps(reference: np.ndarray, moving: np.ndarray, voxel_size_in_angstroms: float, *,
               allow_mirror: bool = True, rng: np.random.Generator | None = None, n_rotations: int = 3000,
               coarse_size: int = 24, n_candidates: int = 8) -> MapAlignment:
    """Rotate, shift and (optionally) mirror `moving` onto `reference`, maximising Eqn. 3.3.

    A global search on copies Fourier-cropped to `coarse_size` voxels scores `n_rotations`
    uniform rotations (and the identity), for both hands, each with its best shift from an FFT
    cross-correlation; the best `n_candidates` are refined by Gauss-Newton at that size, and the
    winner again at twice that size and at full size. Maps should have a background near 0:
    shifts found in the search are cyclic, and the box is padded with 0 when resampled.

    Parameters
    ----------
    reference, moving : (N, N, N) arrays on the same grid
    voxel_size_in_angstroms : float
        Voxel size in Å (for the shift).
    allow_mirror : bool
        Also try the other hand (the moving map reflected in z).
    rng : numpy Generator, optional
        Draws the search rotations (default: a fixed seed, so results are reproducible).
    n_rotations, coarse_size, n_candidates : int
        Search settings (see above).

    Returns
    -------
    MapAlignment (see there for the transform's convention).
    """
    reference = np.asarray(reference, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    if reference.shape != moving.shape or reference.ndim != 3 or len(set(reference.shape)) != 1:
        raise ValueError(f"need two cubic maps of the same shape, got {reference.shape} and {moving.shape}")
    size = reference.shape[0]
    rng = np.random.default_rng(0) if rng is None else rng
    rotations = np.concatenate([np.eye(3)[None], random_rotations(rng, n_rotations)])
    levels = sorted({min(size, coarse_size), min(size, 2 * coarse_size), size})

    n = levels[0]
    small_ref, small_mov = _downsample(reference, n), _downsample(moving, n)
    found = sorted(_coarse_search(small_ref, small_mov, rotations, allow_mirror), key=lambda c: -c[0])
    refined = [(*_refine(small_ref, small_mov, rot, t, mirrored), mirrored)
               for _, rot, mirrored, t in found[:n_candidates]]
    _, rotation, shift, mirrored = max(refined, key=lambda c: c[0])
    for level in levels[1:]:
        shift = shift * level / n
        n = level
        _, rotation, shift = _refine(_downsample(reference, n), _downsample(moving, n), rotation, shift, mirrored)

    # resample with cubic splines: index-space form of y = F R x + t (axes reversed to z, y, x)
    flip = MIRROR if mirrored else np.eye(3)
    reverse = np.eye(3)[::-1]
    matrix = reverse @ flip @ rotation @ reverse
    centre = np.full(3, size // 2, dtype=np.float64)
    offset = centre + reverse @ shift - matrix @ centre
    aligned = ndimage.affine_transform(moving, matrix, offset, order=3, mode="constant", cval=0.0)
    return MapAlignment(rotation, shift * float(voxel_size_in_angstroms), bool(mirrored),
                        cross_correlation(reference, aligned), aligned.astype(np.float32))
