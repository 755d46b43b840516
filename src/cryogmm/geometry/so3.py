"""Rotation matrices and RELION/Xmipp ZYZ Euler angles (CONVENTIONS.md).

The matrix A built from (rot, tilt, psi) is A = (Rz(rot) Ry(tilt) Rz(psi))^T with active,
right-handed rotations; a map point x lands at P_o A x in the image. Angles are in degrees in
files and in the arguments named `_in_degrees`; matrices are `(..., 3, 3)` arrays.
"""

from __future__ import annotations

import numpy as np


def _rz(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _ry(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def euler_to_matrix(rot_in_degrees, tilt_in_degrees, psi_in_degrees) -> np.ndarray:
    """RELION matrices A for arrays of Euler angles (broadcast); shape `(..., 3, 3)`."""
    rot, tilt, psi = np.broadcast_arrays(*(np.radians(np.asarray(a, dtype=np.float64))
                                            for a in (rot_in_degrees, tilt_in_degrees, psi_in_degrees)))
    active = _rz(rot) @ _ry(tilt) @ _rz(psi)
    return np.swapaxes(active, -1, -2)


def matrix_to_euler(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of `euler_to_matrix`: (rot, tilt, psi) in degrees, tilt in [0, 180].

    At tilt 0 or 180 only rot + psi (or rot - psi) is defined; psi is then set to 0.
    """
    a = np.asarray(matrices, dtype=np.float64)
    m = np.swapaxes(a, -1, -2)  # the active matrix Rz(rot) Ry(tilt) Rz(psi)
    cos_tilt = np.clip(m[..., 2, 2], -1.0, 1.0)
    tilt = np.arccos(cos_tilt)
    sin_tilt = np.sqrt(np.clip(1.0 - cos_tilt**2, 0.0, None))
    regular = sin_tilt > 1e-9
    rot = np.where(regular, np.arctan2(m[..., 1, 2], m[..., 0, 2]), np.arctan2(m[..., 1, 0], m[..., 0, 0]))
    psi = np.where(regular, np.arctan2(m[..., 2, 1], -m[..., 2, 0]), 0.0)
    # at tilt = 180 the active matrix is Rz(rot - psi) diag(-1, 1, -1); recover rot with psi = 0
    flipped = ~regular & (cos_tilt < 0)
    rot = np.where(flipped, np.arctan2(-m[..., 0, 1], m[..., 1, 1]), rot)
    return np.degrees(rot), np.degrees(tilt), np.degrees(psi)


def canonical_euler_in_degrees(matrix: np.ndarray, tolerance_in_degrees: float = 0.005) -> tuple[float, float, float]:
    """(rot, tilt, psi) of one rotation in the form a reader expects: rot and psi in (-180, 180],
    tilt in [0, 180]. Within `tolerance_in_degrees` of tilt 0 or 180 only rot + psi (or rot - psi)
    is defined, and rounding noise in the matrix shows up as large opposite rot and psi (the
    identity printed as (-115.96, 0.00, 115.96)); there tilt is snapped and the whole in-plane turn
    put in rot, psi 0."""
    a = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    rot, tilt, psi = (float(v) for v in matrix_to_euler(a))
    m = a.T  # the active matrix Rz(rot) Ry(tilt) Rz(psi)
    if tilt < tolerance_in_degrees:
        rot, tilt, psi = float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))), 0.0, 0.0
    elif tilt > 180.0 - tolerance_in_degrees:
        rot, tilt, psi = float(np.degrees(np.arctan2(-m[0, 1], m[1, 1]))), 180.0, 0.0

    def wrapped(angle: float) -> float:
        return -((-angle + 180.0) % 360.0 - 180.0)  # (-180, 180]

    return wrapped(rot), tilt, wrapped(psi)


def axis_and_angle_in_degrees(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit axis `(x, y, z)` and angle in degrees (0 to 180) of the active rotation `matrix`
    (right-handed); the axis is (0, 0, 1) for the identity."""
    from scipy.spatial.transform import Rotation

    vector = Rotation.from_matrix(np.asarray(matrix, dtype=np.float64).reshape(3, 3)).as_rotvec()
    angle = float(np.linalg.norm(vector))
    axis = vector / angle if angle > 1e-12 else np.array([0.0, 0.0, 1.0])
    return axis, float(np.degrees(angle))


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """n rotations drawn uniformly (Haar measure) from SO(3), via random unit quaternions."""
    return quaternion_to_matrix(rng.standard_normal((n, 4)))


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices from (w, x, y, z) quaternions (normalised here); shape `(..., 3, 3)`."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rotation_angle_in_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic distance between rotation matrices (broadcast), in degrees."""
    rel = np.swapaxes(np.asarray(a), -1, -2) @ np.asarray(b)
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def mean_rotation(samples: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotation samples (S, P, 3, 3) per image: the SO(3) matrix nearest the
    arithmetic mean of the matrices (SVD with the sign fixed), shape (P, 3, 3)."""
    u, _, vt = np.linalg.svd(np.asarray(samples).mean(axis=0))
    d = np.ones(u.shape[:-1])
    d[..., -1] = np.sign(np.linalg.det(u @ vt))
    return (u * d[..., None, :]) @ vt
