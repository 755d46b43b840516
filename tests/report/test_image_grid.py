"""Image grids written with Pillow: where each image lands, its orientation and grey scale."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cryogmm.report.image_grid import Cell, grey_levels, write_image_grid


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
