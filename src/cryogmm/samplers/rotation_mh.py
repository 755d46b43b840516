"""Random-walk Metropolis-Hastings on SO(3) in exponential coordinates (thesis 5.2.2-5.2.3).

A proposal turns the current rotation by expm([w]_x) with w ~ N(0, step_size^2 I) (radians),
about the current rotation as Eqns. 5.26-5.27 parametrise it; the proposal is symmetric under
the Haar measure, so samplers.mh's acceptance min(1, exp(E(R) - E(R'))) applies unchanged, with
the same adaptation of the width.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation

from cryogmm.samplers.mh import RandomWalkMH


def rotation_proposal(rng: np.random.Generator, rotation: np.ndarray, step_size: float) -> np.ndarray:
    """expm([w]_x) @ rotation, w ~ N(0, step_size^2 I); (3, 3) -> (3, 3)."""
    return Rotation.from_rotvec(step_size * rng.standard_normal(3)).as_matrix() @ rotation


def rotation_mh(energy: Callable[[np.ndarray], float], **options) -> RandomWalkMH:
    """A RandomWalkMH whose positions are (3, 3) rotation matrices; options as RandomWalkMH's."""
    return RandomWalkMH(energy=energy, propose=rotation_proposal, **options)
