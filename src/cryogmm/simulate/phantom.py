"""A built-in asymmetric test particle, so `cryogmm demo` needs no download.

The phantom is a set of pseudo-atoms (carbon-like, Z = 6) along a curved, branched chain with
three lobes of different sizes: no rotational symmetry and a definite hand, about 100 Å across.
"""

from __future__ import annotations

import numpy as np

PHANTOM_SEED = 20161128


def asymmetric_phantom(n_atoms: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """(n_atoms, 3) coordinates in Å centred on their centroid, and atomic numbers (all 6)."""
    rng = np.random.default_rng(PHANTOM_SEED)
    # lobes: centre (Å), radius (Å), share of atoms
    lobes = [((-22.0, -8.0, 0.0), 18.0, 0.45), ((20.0, -12.0, 6.0), 13.0, 0.25),
             ((4.0, 22.0, -10.0), 10.0, 0.15)]
    pieces = []
    n_lobes = 0
    for center, radius, share in lobes:
        n = int(share * n_atoms)
        direction = rng.standard_normal((n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        r = radius * rng.uniform(0, 1, n) ** (1 / 3)
        pieces.append(np.asarray(center) + direction * r[:, None])
        n_lobes += n
    # a right-handed helical arm joining the lobes and sticking out on one side
    n_arm = n_atoms - n_lobes
    t = np.linspace(0, 1, n_arm)
    arm = np.stack([-30 + 60 * t, 6 * np.cos(4 * np.pi * t), 18 + 6 * np.sin(4 * np.pi * t) + 10 * t], 1)
    pieces.append(arm + rng.normal(0, 1.5, arm.shape))
    coordinates = np.concatenate(pieces)
    coordinates -= coordinates.mean(0)
    return coordinates, np.full(coordinates.shape[0], 6)
