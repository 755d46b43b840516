"""Point-group symmetry operators (C1, Cn, Dn, T, O, I1-I4) in RELION's orientation of the axes.

A group is a stack `(G, 3, 3)` of proper rotations S_g acting on map coordinates (x, y, z) in Å as
x' = S_g x. Every group is closed under inversion, so the same stack serves for S_g and S_g^T.

Orientations follow RELION (verified against `SymList::fill_symmetry_class` in RELION's
src/symmetries.cpp, which lists generator axes for each group, and against the "Symmetry" table in
relion-documents, source/Reference/Conventions.rst):

- Cn: n-fold along z.
- Dn: n-fold along z, 2-fold along x.
- T: 3-fold along z, a 2-fold along (0, sqrt(2/3), sqrt(1/3)), i.e. in the yz-plane (RELION
  deviates here from Heymann et al. 2005; no 2-fold of T lies in the xz-plane).
- O: 3-fold along (1, 1, 1)/sqrt(3), 4-folds along x, y and z.
- I2 (RELION's default for "I", Crowther 222 setting): 2-folds along x, y, z; the 5-folds nearest
  +z lie in the xz-plane, along (+-1, 0, phi), and the 3-folds nearest +z in the yz-plane.
- I1 (non-Crowther 222 setting, standard in Heymann et al.): I2 turned by 90 degrees about z:
  2-folds along x, y, z; the 5-folds nearest +z lie in the yz-plane, along (0, +-1, phi).
- I3 (52 setting): 5-fold along z, 2-folds along y and along (-1, 0, phi); the other 5-folds
  nearest +z include one in the -x half of the xz-plane, along (-2, 0, 1)/sqrt(5).
- I4 (alternative 52 setting): I3 mirrored through the yz-plane: 2-fold along (1, 0, phi) and a
  5-fold along (2, 0, 1)/sqrt(5).

phi is the golden ratio. `canonical_symmetry_name` maps "I" to "I2" (RELION treats both alike), so
one canonical name stands for one set of operators.
"""

from __future__ import annotations

import re

import numpy as np

from cryogmm.errors import InputError

_PHI = (1.0 + np.sqrt(5.0)) / 2.0
_S = np.hypot(1.0, _PHI)  # |(1, 0, phi)|
_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
_ACCEPTED = "use C1, Cn, Dn (n >= 2), T, O or I (I1-I4), case-insensitive"
_PATTERN = re.compile(r"([CD])(\d+)|T|O|I[1-4]?")
_DUPLICATE_TOLERANCE = 1e-6  # distinct elements of these groups differ by far more

# Generators per fixed group: (axis, fold), the axes as RELION lists them, written in closed form.
_GENERATORS = {
    "T": [(_Z, 3), ((0.0, np.sqrt(2.0 / 3.0), np.sqrt(1.0 / 3.0)), 2)],
    "O": [((1.0, 1.0, 1.0), 3), (_Z, 4)],
    "I1": [(_X, 2), ((_PHI, 0.0, -1.0), 5), ((_PHI, 1.0 / _PHI, 0.0), 3)],
    "I2": [(_Z, 2), ((1.0, 0.0, _PHI), 5), ((0.0, 1.0 / _PHI, _PHI), 3)],
    "I3": [((-1.0, 0.0, _PHI), 2), (_Z, 5), ((-_PHI / _S, 1.0 / _PHI, _PHI**2 / _S), 3)],
    "I4": [((1.0, 0.0, _PHI), 2), ((2.0, 0.0, 1.0), 5), ((_PHI / _S, 1.0 / _PHI, _PHI**2 / _S), 3)],
}
# I3/I4 3-folds are (-+phi/s, 1/phi, phi^2/s)/sqrt(3); axis_angle_matrix normalises every axis.


def axis_angle_matrix(axis, angle_in_degrees: float) -> np.ndarray:
    """Right-handed (active) rotation by `angle_in_degrees` about `axis` (shape `(3,)`, any length > 0).

    Returns
    -------
    np.ndarray
        float64 rotation matrix, shape `(3, 3)` (Rodrigues' formula).
    """
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    angle = np.radians(angle_in_degrees)
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * np.outer(u, u)


def _parse(name) -> tuple[str, int]:
    """(canonical name, n) for a symmetry name; n is 0 for T, O and I."""
    text = name.strip().upper() if isinstance(name, str) else None
    match = _PATTERN.fullmatch(text) if text is not None else None
    if match is None:
        raise InputError(f"unknown symmetry {name!r}: {_ACCEPTED}")
    if match.group(1) is None:
        return ("I2" if text == "I" else text), 0
    letter, n = match.group(1), int(match.group(2))
    if n < (1 if letter == "C" else 2):
        raise InputError(f"unknown symmetry {name!r}: {letter}{n} does not exist; {_ACCEPTED}")
    return f"{letter}{n}", n


def canonical_symmetry_name(name: str) -> str:
    """Upper-case RELION name of a symmetry group, e.g. "d7" -> "D7", "c04" -> "C4", "I" -> "I2".

    Raises `InputError` for an unknown or malformed name.
    """
    return _parse(name)[0]


def _snap(matrix: np.ndarray) -> np.ndarray:
    """Entries within 1e-12 of a multiple of 1/2 set to it exactly (removes rounding noise)."""
    nearest = np.round(2.0 * matrix) / 2.0
    return np.where(np.abs(matrix - nearest) < 1e-12, nearest, matrix)


def _closure(generators: list[np.ndarray]) -> np.ndarray:
    """All products of the generators, identity first, in breadth-first order; shape `(G, 3, 3)`."""
    elements = [np.eye(3)]
    i = 0
    while i < len(elements):  # right-multiply every element found so far by every generator
        for generator in generators:
            candidate = _snap(elements[i] @ generator)
            if np.abs(np.asarray(elements) - candidate).max(axis=(1, 2)).min() > _DUPLICATE_TOLERANCE:
                elements.append(candidate)
        i += 1
    return np.asarray(elements)


def asymmetric_unit_components(n_components: int, symmetry: str) -> int:
    """Components sampled in the asymmetric unit so that the whole model has about `n_components`
    (K / |G|, at least 4): K counts the pseudo-atoms of the full particle."""
    return max(4, int(round(n_components / symmetry_operators(symmetry).shape[0])))


def symmetry_operators(name: str) -> np.ndarray:
    """Rotation matrices of a point group in RELION's orientation (module docstring).

    Parameters
    ----------
    name : str
        C1, Cn (n >= 1), Dn (n >= 2), T, O, I (= I2), I1, I2, I3 or I4; case-insensitive.

    Returns
    -------
    np.ndarray
        float64 array, shape `(G, 3, 3)`, G = n, 2n, 12, 24 or 60: distinct proper rotations,
        the identity first, in a fixed order; apply as x' = S_g x to coordinates in Å.

    Raises
    ------
    InputError
        For an unknown or malformed name.
    """
    canonical, n = _parse(name)
    if canonical[0] == "C":
        axes = [(_Z, n)]
    elif canonical[0] == "D":
        axes = [(_Z, n), (_X, 2)]
    else:
        axes = _GENERATORS[canonical]
    return _closure([_snap(axis_angle_matrix(axis, 360.0 / fold)) for axis, fold in axes if fold > 1])
