"""Figures of runs: what they say about what they show (counts, scale, angles, titles)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from cryogmm.report.abinitio import plot_projections, plot_restarts
from cryogmm.report.maps import plot_central_slices
from cryogmm.report.plots import nice_length


def _texts(fig) -> list[str]:
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    return texts + [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]


def test_projections_say_how_many_are_shown_with_a_scale_bar_and_angles(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((25, 16, 16))
    angles = rng.uniform(-180, 180, (25, 3))
    texts = plot_projections(images, images, tmp_path / "p.png", pixel_size_in_angstroms=4.0,
                             angles_in_degrees=angles, max_images=12, title="x.mrcs")
    assert "x.mrcs; the first 12 of 25 images shown; under each projection its (rot, tilt, psi) in degrees" in texts
    assert "10 Å" in texts  # 30% of the 64 Å box (19.2 Å), rounded down to 1, 2 or 5 times a power of ten
    rot, tilt, psi = angles[11]
    assert f"({rot:.0f}, {tilt:.0f}, {psi:.0f})" in texts and "12 input" in texts and "12 model" in texts
    assert "13 input" not in texts
    everything = plot_projections(images[:5], images[:5], tmp_path / "q.png", title="all")
    assert "all" in everything and not any("shown" in t for t in everything)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_restart_panels_have_titles_and_no_offset(tmp_path):
    traces = [np.linspace(-1.25e6, -1.2e6, 30) + i for i in range(3)]
    fig = plot_restarts(traces, 1, np.linspace(-1.21e6, -1.19e6, 40), tmp_path / "r.png", refine_burn_in=10)
    assert [ax.get_title() for ax in fig.axes] == ["initial stage: 3 independent restarts", "refinement of restart 2"]
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        formatter = ax.yaxis.get_major_formatter()
        assert formatter.get_offset() == ""
        assert "-1200000" in [label.get_text().replace("\u2212", "-") for label in ax.get_yticklabels()]


def test_central_slices_cut_the_map_through_its_centre(tmp_path):
    z, y, x = np.indices((20, 24, 28))
    volume = np.exp(-((x - 14 - 5) ** 2 + (y - 12) ** 2 + (z - 10 + 3) ** 2) / 4.0)  # blob at (+5, 0, -3) voxels
    fig = plot_central_slices(volume, 2.0, tmp_path / "s.png", title="map.mrc")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == [f"{p} plane through the centre" for p in ("xy", "xz", "yz")]
    xy, xz, yz = (ax.images[0].get_array() for ax in panels)
    assert xy.shape == (24, 28) and xz.shape == (20, 28) and yz.shape == (20, 24)
    np.testing.assert_array_equal(xy, volume[10])
    np.testing.assert_array_equal(xz, volume[:, 12, :])
    np.testing.assert_array_equal(yz, volume[:, :, 14])
    assert [ax.get_xlabel() for ax in panels] == ["x (Å)", "x (Å)", "y (Å)"]
    # ticks in Å from the box centre: the label "10" sits 5 voxels right of the centre, where the blob is
    labels = {label.get_text(): position for label, position in zip(panels[0].get_xticklabels(),
                                                                     panels[0].get_xticks())}
    assert labels["10"] == pytest.approx(14 + 5) and labels["0"] == pytest.approx(14)
    assert fig._suptitle.get_text() == "map.mrc"


@pytest.mark.parametrize("limit, expected", [(64 * 0.3, 10.0), (19.9, 10.0), (20.0, 20.0), (0.7, 0.5), (480, 200)])
def test_nice_length(limit, expected):
    assert nice_length(limit) == pytest.approx(expected)
