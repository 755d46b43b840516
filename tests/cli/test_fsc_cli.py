"""`cryogmm fsc` on small synthetic maps, and its refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryogmm.cli import main
from cryogmm.geometry.so3 import euler_to_matrix, random_rotations, rotation_angle_in_degrees
from cryogmm.io.mrc import write_map

VOXEL = 2.0
N = 32
S = np.diag([1.0, 1.0, -1.0])


def _blobs(centres, n=N, sigma=1.5):
    z, y, x = np.indices((n, n, n)) - n // 2
    total = np.zeros((n, n, n))
    for cx, cy, cz in centres:
        total += np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return total.astype(np.float32)


CENTRES = np.random.default_rng(0).standard_normal((20, 3)) * np.array([5.0, 3.5, 2.5])


@pytest.fixture
def maps(tmp_path):
    """A blob map and a noisy copy of it."""
    clean = _blobs(CENTRES)
    noisy = clean + 0.2 * clean.std() * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32)
    write_map(tmp_path / "a.mrc", clean, VOXEL)
    write_map(tmp_path / "b.mrc", noisy, VOXEL)
    return tmp_path / "a.mrc", tmp_path / "b.mrc"


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_prints_resolutions_and_correlations(maps, capsys):
    a, b = maps
    assert main(["fsc", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "resolution at FSC 0.5:" in out and "resolution at FSC 0.143:" in out
    assert "cross-correlation (Eqn. 3.3)" in out and "Pearson correlation" in out
    line = next(line for line in out.splitlines() if line.startswith("resolution at FSC 0.143"))
    assert float(line.split(":")[1].split()[0]) >= 2 * VOXEL


def test_a_map_with_itself_never_crosses(maps, capsys):
    a, _ = maps
    assert main(["fsc", str(a), str(a)]) == 0
    out = capsys.readouterr().out
    assert "not reached up to Nyquist (4.00 Å)" in out
    assert "cross-correlation (Eqn. 3.3): 1.0000" in out


def test_writes_plot_and_json(maps, tmp_path, capsys):
    a, b = maps
    plot, report = tmp_path / "fsc.png", tmp_path / "fsc.json"
    assert main(["fsc", str(a), str(b), "--plot", str(plot), "--json", str(report)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _listing(tmp_path) == ["a.mrc", "b.mrc", "fsc.json", "fsc.png"]  # no temporary files left
    results = json.loads(report.read_text())
    assert set(results["resolution_in_angstroms"]) == {"0.5", "0.143"}
    assert len(results["fsc"]["correlation"]) == N // 2 + 1
    assert 0 < results["pearson_correlation"] <= results["cross_correlation"] <= 1
    # an existing plot is kept unless --force
    capsys.readouterr()
    assert main(["fsc", str(a), str(b), "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--force" in err
    assert main(["fsc", str(a), str(b), "--plot", str(plot), "--json", str(report), "--force"]) == 0


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_reports_the_rotation_and_hand(tmp_path, capsys, mirrored):
    rotation = random_rotations(np.random.default_rng(2), 1)[0]
    flip = S if mirrored else np.eye(3)
    write_map(tmp_path / "ref.mrc", _blobs(CENTRES), VOXEL)
    write_map(tmp_path / "moved.mrc", _blobs(CENTRES @ (flip @ rotation).T + [1.0, -2.0, 0.5]), VOXEL)
    report = tmp_path / "fsc.json"
    assert main(["fsc", str(tmp_path / "ref.mrc"), str(tmp_path / "moved.mrc"), "--align",
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert f"mirrored: {'yes' if mirrored else 'no'}" in out
    results = json.loads(report.read_text())
    angles = results["alignment"]["euler_rot_tilt_psi_in_degrees"]
    assert rotation_angle_in_degrees(euler_to_matrix(*angles), rotation) < 2.0
    np.testing.assert_allclose(results["alignment"]["shift_in_angstroms"], [2.0, -4.0, 1.0], atol=0.5)
    assert results["cross_correlation"] > 0.99
    turn = results["alignment"]["rotation_angle_in_degrees"]
    assert turn == pytest.approx(rotation_angle_in_degrees(np.eye(3), euler_to_matrix(*angles)), abs=1e-6)
    assert f"a turn of {turn:.2f} degrees about" in out


def test_aligning_a_map_with_itself_prints_no_turn(tmp_path, capsys):
    """The identity reads as (0.00, 0.00, 0.00), not as a large rot cancelled by psi."""
    write_map(tmp_path / "ref.mrc", _blobs(CENTRES), VOXEL)
    assert main(["fsc", str(tmp_path / "ref.mrc"), str(tmp_path / "ref.mrc"), "--align", "--no-mirror"]) == 0
    out = capsys.readouterr().out
    assert "rotation (rot, tilt, psi) = (0.00, 0.00, 0.00) degrees, a turn of 0.00 degrees" in out, out


def test_no_mirror_keeps_the_hand(tmp_path, capsys):
    write_map(tmp_path / "ref.mrc", _blobs(CENTRES), VOXEL)
    write_map(tmp_path / "mirror.mrc", _blobs(CENTRES @ S.T), VOXEL)
    assert main(["fsc", str(tmp_path / "ref.mrc"), str(tmp_path / "mirror.mrc"), "--align", "--no-mirror"]) == 0
    assert "mirrored: no" in capsys.readouterr().out


def _write(path, shape=(N, N, N), voxel=VOXEL):
    write_map(path, np.random.default_rng(3).random(shape).astype(np.float32), voxel)


BAD_INPUTS = {
    # name: (writer of the second map, extra options, words the message must contain)
    "missing file": (None, [], ["absent.mrc", "not found"]),
    "not MRC": (lambda p: p.write_text("not a map\n" * 200), [], ["second.mrc", "MRC"]),
    "different box": (lambda p: _write(p, (24, 24, 24)), [], ["24x24x24", "32x32x32", "resample"]),
    "different voxel size": (lambda p: _write(p, voxel=3.0), [], ["3 Å", "2 Å", "resample"]),
    "bad pixel size": (lambda p: _write(p), ["--pixel-size", "0"], ["--pixel-size"]),
    "plot not png": (lambda p: _write(p), ["--plot", "fsc.pdf"], ["--plot", ".png"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_returns_2_with_one_line(maps, tmp_path, capsys, case):
    writer, options, words = BAD_INPUTS[case]
    second = tmp_path / ("absent.mrc" if writer is None else "second.mrc")
    if writer is not None:
        writer(second)
    before = _listing(tmp_path)
    capsys.readouterr()
    assert main(["fsc", str(maps[0]), str(second)] + options) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cryogmm fsc: error:") and all(word in err for word in words), err
    assert _listing(tmp_path) == before


def test_non_cubic_maps_are_refused(tmp_path, capsys):
    for name in ("p.mrc", "q.mrc"):
        _write(tmp_path / name, (N, N, 24))
    assert main(["fsc", str(tmp_path / "p.mrc"), str(tmp_path / "q.mrc")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cubic" in err, err
