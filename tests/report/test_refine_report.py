"""The post-processing figure (cryogmm.report.refine) is written and decodes as a PNG."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from cryogmm.reconstruction.postprocess import guinier_bfactor, masked_fsc
from cryogmm.report.refine import plot_postprocess

N = 32
VOXEL = 2.0


def test_plot_postprocess_writes_a_png_of_the_figure_size(tmp_path):
    rng = np.random.default_rng(0)
    radius = np.sqrt(((np.indices((N, N, N)) - N // 2) ** 2).sum(axis=0))
    truth = np.exp(-0.5 * (radius / 3.0) ** 2) + 0.3 * rng.standard_normal((N, N, N)) * (radius < 8)
    half1 = truth + 0.3 * rng.standard_normal(truth.shape)
    half2 = truth + 0.3 * rng.standard_normal(truth.shape)
    mask = np.clip((12.0 - radius) / 3.0, 0.0, 1.0)
    result = masked_fsc(half1, half2, mask, VOXEL, rng=rng)
    assert result.randomisation_frequency_per_angstrom is not None  # all four curves differ
    guinier = guinier_bfactor((half1 + half2) / 2 * mask, VOXEL, fit_to_angstroms=5.0)
    path = tmp_path / "postprocess.png"
    plot_postprocess(result, guinier, path)
    image = imread(path)
    assert image.shape[:2] == (440, 1100)  # 11 x 4.4 inches at 100 dpi
    assert image.ndim == 3 and image[..., :3].std() > 0.05  # drawn, not blank
    assert [p.name for p in tmp_path.iterdir()] == ["postprocess.png"]  # no temporary left behind
