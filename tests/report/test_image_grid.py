"""Image grids written with Pillow: where each image lands, its orientation and grey scale."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cryogmm.report.image_grid import Cell, grey_levels, image_grid, write_image_grid


def test_grey_levels_span_black_to_white_with_row_0_at_the_bottom():
    image = np.array([[1.0, 2.0], [3.0, 5.0]])  # row 0 (1, 2) is shown at the bottom
    np.testing.assert_array_equal(grey_levels(image), [[128, 255], [0, 64]])
    np.testing.assert_array_equal(grey_levels(np.full((2, 2), 7.0)), np.zeros((2, 2)))


def test_each_image_lands_in_its_cell_unmirrored(tmp_path):
    marked = np.zeros((10, 10))
    marked[:3, :3] = 1.0  # lower left corner, as imshow(origin="lower") shows it
    texts = write_image_grid(tmp_path / "g.png", [Cell(np.zeros((10, 10)), "first"), None, Cell(marked, "third", "x")],
                             2, heading="two rows")
    assert texts == ["two rows", "first", "third", "x"]
    picture = np.asarray(Image.open(tmp_path / "g.png").convert("L"), dtype=float)
    assert picture.shape[1] == 2 * 176  # two cells of 1.6 in at 110 dpi
    assert (picture[60:, 176:] > 250).all()  # below the heading the second column is empty
    cell = picture[-192:, :176]  # the third image's: the last row of cells 1.75 in high
    dark = cell < 5
    rows, cols = np.flatnonzero(dark.sum(1) > 100), np.flatnonzero(dark.sum(0) > 100)  # the image, not the text
    assert rows.size == cols.size and 150 <= cols.size <= 160  # 1.4 in at 110 dpi
    image = cell[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    white = np.argwhere(image > 250)
    side = cols.size
    assert abs(len(white) - (0.3 * side) ** 2) < 0.1 * (0.3 * side) ** 2
    assert white[:, 1].max() < 0.35 * side and white[:, 0].min() > 0.65 * side  # lower left, not mirrored


def test_rgba_goes_over_white_and_dots_land_where_the_points_are():
    picture = np.zeros((20, 20, 4))
    picture[..., 2] = 1.0
    picture[:10, :, 3] = 1.0  # opaque blue in the lower half, transparent above
    canvas, texts = image_grid([Cell(picture, "view", points=np.array([[15.0], [15.0]]))], 1, image_inches=1.0,
                               dot_points=6)
    assert texts == ["view"]
    pixels = np.asarray(canvas, dtype=int)
    blue = np.argwhere((pixels[..., 2] > 250) & (pixels[..., 0] < 5))
    white_above = pixels[blue[:, 0].min() - 20:blue[:, 0].min() - 5, blue[:, 1].min():blue[:, 1].max()]
    assert (white_above > 250).all()  # the transparent upper half of the image is white
    orange = np.argwhere((pixels[..., 0] > 150) & (pixels[..., 0] > pixels[..., 2] + 50))  # tab:orange at alpha 0.7
    # the point (15, 15) of a 20-pixel image shown 110 px wide: 82 px right of its left edge, 82 px above its bottom
    left, bottom = blue[:, 1].min(), blue[:, 0].max()
    centre = orange.mean(axis=0)
    assert abs(centre[1] - left - 82.5) < 2 and abs(bottom - centre[0] - 82.5) < 3
