"""Pictures of a 3D map without a 3D library: a shaded isosurface seen along an axis.

The surface at `level` is found along each ray of the view (the first voxel above the level, with
the crossing placed between voxels by linear interpolation) and lit by the map's gradient there,
the surface normal of an isosurface. Arrays are `[z, y, x]`; views are along the box axes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# view name -> (axis of the [z, y, x] array looked along, whether the viewer sits at its high end)
# the picture's horizontal and vertical axes are those of the central slices in report.maps
VIEWS = {"along z": (0, True), "along y": (1, False), "along x": (2, True)}


def surface_level(volume: np.ndarray, mass_fraction: float = 0.8) -> float:
    """A contour level for showing `volume`: the level above which the voxels hold
    `mass_fraction` of the map's positive mass (a smooth map shows the particle at about its
    size; noise far below the particle's density does not count for much).

    Returns a level above 0 for any map with a positive voxel.
    """
    values = np.asarray(volume, dtype=np.float64).ravel()
    values = np.sort(values[values > 0])[::-1]
    if values.size == 0:
        return 0.0
    cumulative = np.cumsum(values)
    index = int(np.searchsorted(cumulative, mass_fraction * cumulative[-1]))
    return float(values[min(index, values.size - 1)])


def _first_crossing(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Along axis 0 of `volume` (rays from index 0): the fractional index where each ray first
    rises above `level` (linear interpolation) and whether it does at all."""
    above = volume > level
    hit = above.any(axis=0)
    first = np.argmax(above, axis=0)
    previous = np.clip(first - 1, 0, None)
    v1 = np.take_along_axis(volume, first[None], axis=0)[0]
    v0 = np.take_along_axis(volume, previous[None], axis=0)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where((first > 0) & (v1 > v0), (level - v0) / (v1 - v0), 1.0)
    return previous + np.clip(fraction, 0.0, 1.0), hit


def render_isosurface(volume: np.ndarray, level: float, views=tuple(VIEWS), *, upsample: int | None = None,
                      color: tuple[float, float, float] = (0.55, 0.72, 0.90)) -> list[np.ndarray]:
    """The isosurface of `volume` at `level` seen along box axes, as RGB images.

    Parameters
    ----------
    volume : (nz, ny, nx) map
    level : contour level (e.g. `surface_level(volume)`)
    views : names from `VIEWS`
    upsample : the map is interpolated (cubic spline) onto a grid this many times finer first,
        for a smoother surface on small boxes (default: up to 4, to about 160 voxels a side; maps
        of more than 192 voxels a side are interpolated down to 160)
    color : RGB of the surface in [0, 1]

    Returns
    -------
    one (rows, cols, 4) RGBA float array in [0, 1] per view: alpha is the share of the pixel the
    surface covers (0 where no ray meets it; between 0 and 1 along the outline, which is drawn
    smooth); shown with `imshow(..., origin="lower")` each has the orientation of the central slices
    (along z: x right, y up; along y: x right, z up; along x: y right, z up), as seen from
    outside the box (not mirrored).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"a 3D map is needed, got shape {volume.shape}")
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"views must be among {list(VIEWS)}, got {unknown}")
    if upsample is None:
        upsample = int(np.clip(160 // max(volume.shape), 1, 4))
    if upsample > 1:
        volume, smoothed = _zoom_and_smooth(volume, upsample, 3, 0.5 * upsample)
    elif max(volume.shape) > 192:  # the pictures are a few hundred pixels wide: large maps are thinned
        volume, smoothed = _zoom_and_smooth(volume, 160 / max(volume.shape), 1, 0.5)
    else:
        volume, smoothed = _zoom_and_smooth(volume, 1, 0, 0.5)
    return [_render_view(volume, smoothed, level, view, np.asarray(color, dtype=float)) for view in views]


def _zoom_and_smooth(volume: np.ndarray, factor: float, order: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """`ndimage.zoom(volume, factor, order=order, mode="nearest")` and that map smoothed by a
    Gaussian of `sigma` voxels (`ndimage.gaussian_filter`), whose gradient is the surface normal.

    Zooming and smoothing each act along one axis at a time, so they are applied as one (out, in)
    matrix per axis: the same maps as calling them on the zoomed volume, in a fraction of the time
    (the cubic zoom of a 50-voxel map to 150 took over a second).
    """
    zooms = [ndimage.zoom(np.eye(n), (factor, 1), order=order, mode="nearest") for n in volume.shape]
    smooths = [ndimage.gaussian_filter1d(np.eye(z.shape[0]), sigma, axis=0) @ z for z in zooms]
    return _along_axes(volume, zooms), _along_axes(volume, smooths)


def _gradient_at(volume: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`np.gradient(volume)` (central differences, one-sided at the edges) at the voxels `index`
    (3, N): (3, N), without the gradient of the whole map."""
    gradient = []
    for axis, n in enumerate(volume.shape):
        low, high = index.copy(), index.copy()
        low[axis] = np.maximum(index[axis] - 1, 0)
        high[axis] = np.minimum(index[axis] + 1, n - 1)
        gradient.append((volume[tuple(high)] - volume[tuple(low)]) / (high[axis] - low[axis]))
    return np.stack(gradient)


def _along_axes(volume: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """`volume` with `matrices[a]` (out, in) applied along each of its axes `a`."""
    for axis, matrix in enumerate(matrices):
        volume = np.moveaxis(np.tensordot(matrix, volume, axes=(1, axis)), 0, axis)
    return volume


def _render_view(volume: np.ndarray, smoothed: np.ndarray, level: float, view: str, color: np.ndarray) -> np.ndarray:
    axis, from_high = VIEWS[view]
    rays = np.moveaxis(volume, axis, 0)
    if from_high:  # the viewer looks from the high end of the axis towards 0
        rays = rays[::-1]
    depth, hit = _first_crossing(rays, level)
    index = np.clip(np.round(depth).astype(int), 0, rays.shape[0] - 1)
    rows, cols = [a for a in range(3) if a != axis]  # the picture's vertical and horizontal axes
    voxels = np.empty((3, *index.shape), dtype=int)  # where each ray meets the surface, [z, y, x]
    voxels[axis] = rays.shape[0] - 1 - index if from_high else index
    voxels[rows], voxels[cols] = np.indices(index.shape)
    n = _gradient_at(smoothed, voxels.reshape(3, -1)).reshape(voxels.shape)  # (3, rows, cols), [z, y, x]
    n = -n / np.maximum(np.linalg.norm(n, axis=0), 1e-12)  # outward normal
    # direction to the viewer in the array's [z, y, x] components
    towards_viewer = np.zeros(3)
    towards_viewer[axis] = 1.0 if from_high else -1.0
    light = 0.8 * towards_viewer
    light[rows] += 0.45  # from above the picture
    light[cols] -= 0.35  # and from its left
    light /= np.linalg.norm(light)
    diffuse = np.clip(np.tensordot(light, n, axes=1), 0.0, 1.0)
    half = light + towards_viewer
    half /= np.linalg.norm(half)
    specular = np.clip(np.tensordot(half, n, axes=1), 0.0, 1.0) ** 24
    fog = 1.0 - 0.35 * depth / max(rays.shape[0] - 1, 1)  # farther surfaces darker
    shade = (0.25 + 0.75 * diffuse) * fog
    rgb = np.clip(shade[..., None] * color[None, None] + 0.35 * specular[..., None], 0.0, 1.0)
    if not hit.any():
        return np.zeros(hit.shape + (4,))
    # the outline: the ray's maximum crosses the level there; how far it lies above or below, in
    # units of its change per pixel, says how much of the pixel the surface covers
    peak = rays.max(axis=0)
    slope = np.hypot(*np.gradient(peak))
    alpha = np.clip(0.5 + (peak - level) / np.maximum(slope, 1e-12 * max(abs(level), 1e-30)), 0.0, 1.0)
    alpha = np.where(hit, np.maximum(alpha, 0.5), np.minimum(alpha, 0.5))
    # pixels just outside take the colour of the nearest surface pixel
    nearest = ndimage.distance_transform_edt(~hit, return_distances=False, return_indices=True)
    rgb = rgb[nearest[0], nearest[1]]
    return np.concatenate([rgb, alpha[..., None]], axis=-1)
