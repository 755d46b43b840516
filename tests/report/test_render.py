"""The shaded isosurface: where a known blob appears in each view, the area of a sphere's
silhouette, the lighting, and the contour level's mass fraction."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import ndimage

from cryogmm.report.render import VIEWS, _gradient_at, _zoom_and_smooth, render_isosurface, surface_level

N = 32


def blob(centre_xyz, radius=3.0, n=N):
    z, y, x = np.indices((n, n, n)) - n // 2
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * radius**2))


def covered(picture):
    return picture[..., 3] > 0.5


def centroid(mask):
    rows, cols = np.nonzero(mask)
    return cols.mean(), rows.mean()  # (horizontal, vertical) in pixels, vertical up with origin="lower"


@pytest.mark.parametrize("view, expected", [("along z", (8, 0)), ("along y", (8, -6)), ("along x", (0, -6))])
def test_a_blob_appears_where_the_central_slices_show_it(view, expected):
    """A blob at x = +8, z = -6 voxels (y = 0): right of centre along z and y, below it along y
    and x (the pictures' axes are those of the central slices)."""
    picture = render_isosurface(blob((8, 0, -6)), 0.5, (view,), upsample=1)[0]
    h, v = centroid(covered(picture))
    assert h - N // 2 == pytest.approx(expected[0], abs=0.6)
    assert v - N // 2 == pytest.approx(expected[1], abs=0.6)


def test_sphere_silhouette_has_the_sphere_area_and_is_lit_from_the_upper_left():
    radius = 4.0
    volume = blob((0, 0, 0), radius)
    level = float(np.exp(-0.5 * 2.0**2))  # the surface at 2 sigma: a sphere of radius 8 voxels
    for upsample in (1, 2):
        picture = render_isosurface(volume, level, tuple(VIEWS), upsample=upsample)
        for image in picture:
            for area in (covered(image).sum(), image[..., 3].sum()):  # pixels mostly covered; coverage
                assert area / upsample**2 == pytest.approx(np.pi * (2 * radius) ** 2, rel=0.05)
            outline = (image[..., 3] > 0.02) & (image[..., 3] < 0.98)
            assert 0 < outline.sum() < 4 * np.pi * (2 * radius * upsample)  # about the circumference, smooth
    image = render_isosurface(volume, level, ("along z",), upsample=2)[0]
    grey = image[..., :3].mean(axis=-1)
    c = image.shape[0] // 2
    d = int(0.5 * 2 * radius * 2)  # half-way to the rim, in upsampled pixels
    upper_left, lower_right = grey[c + d, c - d], grey[c - d, c + d]
    assert upper_left > lower_right + 0.2  # the light comes from the upper left
    assert image[0, 0, 3] == 0.0  # nothing drawn in the corner


def test_surface_level_encloses_the_requested_share_of_the_mass():
    rng = np.random.default_rng(0)
    volume = blob((2, -3, 1), 4.0) + 0.01 * rng.standard_normal((N, N, N))
    for fraction in (0.5, 0.8):
        level = surface_level(volume, fraction)
        positive = np.clip(volume, 0, None)
        share = positive[volume >= level].sum() / positive.sum()
        assert share == pytest.approx(fraction, abs=0.01)
    assert surface_level(-np.ones((4, 4, 4))) == 0.0


def test_rejects_a_stack_and_an_unknown_view():
    with pytest.raises(ValueError, match="3D"):
        render_isosurface(np.ones((4, 4)), 0.5)
    with pytest.raises(ValueError, match="views"):
        render_isosurface(blob((0, 0, 0)), 0.5, ("sideways",))


@pytest.mark.parametrize("view, axis, viewer_side", [("along z", 2, +1), ("along y", 1, -1), ("along x", 0, +1)])
def test_the_viewer_sits_on_the_side_that_keeps_the_picture_unmirrored(view, axis, viewer_side):
    """Looking along z with x right and y up, a right-handed frame puts the viewer at +z (along y
    with x right, z up: at -y; along x with y right, z up: at +x): a blob nearer the viewer is
    drawn brighter (less fog) than the same blob as far behind the centre."""
    brightness = {}
    for side in (+1, -1):
        centre = [0, 0, 0]
        centre[axis] = 8 * side
        picture = render_isosurface(blob(tuple(centre)), 0.5, (view,), upsample=1)[0]
        brightness[side] = picture[N // 2, N // 2, :3].mean()
    assert brightness[viewer_side] > brightness[-viewer_side] + 0.05


def test_a_large_map_is_drawn_at_160_pixels_with_its_blob_in_place():
    n = 200
    z, y, x = (np.indices((n, n, n), dtype=np.float32) - n // 2)
    volume = np.exp(-((x - 50) ** 2 + y**2 + z**2) / (2 * 10.0**2))
    (picture,) = render_isosurface(volume, 0.5, ("along z",))
    assert picture.shape == (160, 160, 4)
    h, v = centroid(covered(picture))
    assert (h - 80) * n / 160 == pytest.approx(50, abs=2) and (v - 80) * n / 160 == pytest.approx(0, abs=2)


@pytest.mark.parametrize("shape, factor, order", [((12, 14, 10), 3, 3), ((20, 18, 20), 0.7, 1), ((9, 9, 9), 1, 0)])
def test_zoom_and_smoothing_by_axis_matrices_are_scipys(shape, factor, order):
    volume = ndimage.gaussian_filter(np.random.default_rng(0).random(shape), 1.5)
    zoomed, smoothed = _zoom_and_smooth(volume, factor, order, 0.8)
    expected = ndimage.zoom(volume, factor, order=order, mode="nearest")
    np.testing.assert_allclose(zoomed, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(smoothed, ndimage.gaussian_filter(expected, 0.8), rtol=0,
                               atol=1e-12 * np.abs(expected).max())


def test_gradient_at_voxels_is_numpys_gradient_there():
    volume = np.random.default_rng(1).random((5, 6, 7))
    index = np.array([[0, 4, 2, 1], [0, 5, 3, 5], [6, 0, 3, 2]])  # corners, edges and inside
    expected = np.stack(np.gradient(volume))[(slice(None), *index)]
    np.testing.assert_allclose(_gradient_at(volume, index), expected, rtol=1e-14)
