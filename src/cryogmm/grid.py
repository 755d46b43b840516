"""Regular grids in Ångström: where each voxel or pixel centre lies.

Arrays follow the mrcfile layout (`[z, y, x]` for volumes, `[y, x]` for images, `[x]` in 1D);
coordinates and origins are vectors in `(x, y, z)` order. The voxel with index `i` on an axis has
its centre at `origin + i * spacing` on that axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular grid of `shape` (array order) with cubic voxels.

    Parameters
    ----------
    shape : tuple of int
        Array shape, `(nz, ny, nx)`, `(ny, nx)` or `(nx,)`.
    spacing_in_angstroms : float
        Voxel (pixel) size in Å.
    origin_in_angstroms : tuple of float
        Centre of the voxel with index 0 on each axis, in `(x, y, z)` order.
    """

    shape: tuple[int, ...]
    spacing_in_angstroms: float
    origin_in_angstroms: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        origin = tuple(float(o) for o in self.origin_in_angstroms)
        if not 1 <= len(shape) <= 3 or min(shape) < 1:
            raise ValueError(f"grid shape must have 1 to 3 positive sizes, got {self.shape}")
        if len(origin) != len(shape):
            raise ValueError(f"origin has {len(origin)} coordinates for a {len(shape)}D grid")
        if not np.isfinite(self.spacing_in_angstroms) or self.spacing_in_angstroms <= 0:
            raise ValueError(f"voxel size must be positive, got {self.spacing_in_angstroms} Å")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "origin_in_angstroms", origin)
        object.__setattr__(self, "spacing_in_angstroms", float(self.spacing_in_angstroms))

    @classmethod
    def centered(cls, shape: tuple[int, ...], spacing_in_angstroms: float) -> "Grid":
        """Grid whose index `n // 2` on every axis sits at coordinate 0 (the CONVENTIONS centre)."""
        shape = tuple(int(n) for n in shape)
        origin = tuple(-(n // 2) * float(spacing_in_angstroms) for n in reversed(shape))
        return cls(shape, spacing_in_angstroms, origin)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def axes(self) -> list[np.ndarray]:
        """Voxel-centre coordinates along each axis in `(x, y, z)` order, in Å (float64)."""
        sizes = tuple(reversed(self.shape))
        return [o + self.spacing_in_angstroms * np.arange(n) for o, n in zip(self.origin_in_angstroms, sizes)]

    def points(self) -> np.ndarray:
        """All voxel centres as an `(n_voxels, ndim)` array of `(x, y, z)` coordinates, C order."""
        mesh = np.meshgrid(*reversed(self.axes()), indexing="ij")  # [z, y, x] order arrays
        return np.stack([m.ravel() for m in reversed(mesh)], axis=1)

    def center_in_angstroms(self) -> np.ndarray:
        """Coordinates of the voxel with index `n // 2` on each axis, `(x, y, z)` order."""
        return np.array([ax[len(ax) // 2] for ax in self.axes()])
