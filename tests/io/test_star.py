"""STAR particle files: RELION 3.1 round trips, older files, image loading, poses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryogmm.errors import InputError
from cryogmm.geometry.so3 import euler_to_matrix, random_rotations
from cryogmm.io.mrc import write_stack
from cryogmm.io.star import (
    columns_to_poses,
    format_image_name,
    load_images,
    poses_to_columns,
    read_particles,
    resolve_image_path,
    split_image_name,
    write_particles,
)

OPTICS = {"pixel_size_in_angstroms": 2.5, "image_size": 16, "voltage_in_kv": 300.0,
          "spherical_aberration_in_mm": 2.7, "amplitude_contrast": 0.1}


def _particles(n, stack="stack.mrcs", seed=0):
    rng = np.random.default_rng(seed)
    matrices = random_rotations(rng, n)
    shifts = rng.uniform(-5, 5, (n, 2))
    frame = pd.DataFrame({"rlnImageName": [format_image_name(i, stack) for i in range(n)],
                          "rlnDefocusU": rng.uniform(10000, 20000, n)})
    return frame.assign(**poses_to_columns(matrices, shifts)), matrices, shifts


def test_image_names():
    assert split_image_name("000001@stack.mrcs") == (0, "stack.mrcs")
    assert split_image_name("12@sub/dir/s.mrcs") == (11, "sub/dir/s.mrcs")
    assert split_image_name("image.mrc") == (0, "image.mrc")
    assert format_image_name(0, "stack.mrcs") == "000001@stack.mrcs"
    assert split_image_name(format_image_name(41, "a.mrcs")) == (41, "a.mrcs")
    with pytest.raises(ValueError):
        split_image_name("0@stack.mrcs")


def test_poses_columns_follow_the_origin_sign():
    columns = poses_to_columns(np.eye(3)[None], np.array([[3.0, -2.0]]))
    assert columns["rlnOriginXAngst"][0] == -3.0 and columns["rlnOriginYAngst"][0] == 2.0
    np.testing.assert_allclose([columns[k][0] for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")], 0.0,
                               atol=1e-12)
    matrix = euler_to_matrix(30.0, 40.0, 50.0)
    rot, tilt, psi = (poses_to_columns(matrix[None])[k][0] for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    np.testing.assert_allclose([rot, tilt, psi], [30.0, 40.0, 50.0])


def test_write_read_round_trip(tmp_path):
    frame, matrices, shifts = _particles(20)
    path = tmp_path / "particles.star"
    write_particles(path, frame, OPTICS)
    table = read_particles(path)
    assert table.pixel_size_in_angstroms == 2.5
    assert table.path == path
    assert list(table.optics.columns[:8]) == [
        "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize",
        "rlnImageDimensionality", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]
    assert (table.particles["rlnOpticsGroup"] == 1).all()
    assert (table.particles["rlnVoltage"] == 300.0).all()  # optics merged into every row
    assert list(table.particles["rlnImageName"]) == list(frame["rlnImageName"])
    read_matrices, read_shifts = columns_to_poses(table.particles)
    np.testing.assert_allclose(read_matrices, matrices, atol=1e-6)
    np.testing.assert_allclose(read_shifts, shifts, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["particles.star"]

    # a table that was read (optics merged) can be written again unchanged
    write_particles(tmp_path / "again.star", table.particles, OPTICS)
    again = read_particles(tmp_path / "again.star")
    pd.testing.assert_frame_equal(again.particles, table.particles)


def test_old_single_block_file(tmp_path):
    path = tmp_path / "old.star"
    path.write_text("data_\n\nloop_\n_rlnImageName #1\n_rlnMagnification #2\n_rlnDetectorPixelSize #3\n"
                    "_rlnAngleRot #4\n_rlnAngleTilt #5\n_rlnAnglePsi #6\n_rlnOriginX #7\n_rlnOriginY #8\n"
                    "1@s.mrcs 10000 2.0 0 0 0 1.5 -0.5\n2@s.mrcs 10000 2.0 0 90 0 0 0\n")
    table = read_particles(path)
    assert table.optics is None
    assert table.pixel_size_in_angstroms == pytest.approx(2.0)
    _, shifts = columns_to_poses(table.particles)
    np.testing.assert_allclose(shifts, [[-3.0, 1.0], [0.0, 0.0]])


def test_load_images_in_table_order(tmp_path):
    rng = np.random.default_rng(1)
    first, second = rng.standard_normal((3, 8, 8)), rng.standard_normal((2, 8, 8))
    (tmp_path / "stacks").mkdir()
    write_stack(tmp_path / "stacks" / "a.mrcs", first, 2.5)
    write_stack(tmp_path / "stacks" / "b.mrcs", second, 0.0)
    names = ["000002@stacks/b.mrcs", "000003@stacks/a.mrcs", "000001@stacks/b.mrcs", "000001@stacks/a.mrcs"]
    write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": names}), OPTICS)
    images, pixel_size = load_images(read_particles(tmp_path / "p.star"))
    assert images.dtype == np.float32 and pixel_size == 2.5
    np.testing.assert_array_equal(images, np.stack([second[1], first[2], second[0], first[0]]).astype(np.float32))


def test_resolve_image_path(tmp_path, monkeypatch):
    (tmp_path / "star").mkdir()
    (tmp_path / "data").mkdir()
    star = tmp_path / "star" / "p.star"
    (tmp_path / "star" / "s.mrcs").write_bytes(b"")
    (tmp_path / "data" / "s.mrcs").write_bytes(b"")
    (tmp_path / "here.mrcs").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_image_path("s.mrcs", star) == tmp_path / "star" / "s.mrcs"
    assert resolve_image_path("here.mrcs", star).resolve() == (tmp_path / "here.mrcs").resolve()
    assert resolve_image_path("Extract/job1/s.mrcs", star, tmp_path / "data") == tmp_path / "data" / "s.mrcs"
    with pytest.raises(InputError) as info:
        resolve_image_path("absent.mrcs", star)
    assert str(star) in str(info.value) and "absent.mrcs" in str(info.value) and "--data-dir" in str(info.value)


def _star(path, text):
    path.write_text(text)
    return path


def test_read_errors_name_the_file(tmp_path):
    cases = {
        tmp_path / "absent.star": "not found",
        _star(tmp_path / "garbage.star", "this is not a star file\n"): "no particle table",
        _star(tmp_path / "ragged.star", "data_\nloop_\n_rlnA #1\n_rlnB #2\n1 2 3\n4\n"): "not a readable STAR",
        _star(tmp_path / "optics_only.star", "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n"
              "1 1.0\n"): "no particle table",
        _star(tmp_path / "no_names.star", "data_particles\nloop_\n_rlnDefocusU #1\n1000\n"): "rlnImageName",
    }
    for path, words in cases.items():
        with pytest.raises(InputError) as info:
            read_particles(path)
        assert str(path) in str(info.value) and words in str(info.value), str(info.value)


def test_load_images_errors(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.ones((2, 8, 8)), 3.0)
    write_particles(tmp_path / "range.star", pd.DataFrame({"rlnImageName": ["000003@s.mrcs"]}),
                    {**OPTICS, "pixel_size_in_angstroms": 3.0})
    write_particles(tmp_path / "size.star", pd.DataFrame({"rlnImageName": ["000001@s.mrcs"]}), OPTICS)
    write_particles(tmp_path / "gone.star", pd.DataFrame({"rlnImageName": ["000001@gone.mrcs"]}), OPTICS)
    for name, words in [("range", "out of range"), ("size", "disagrees"), ("gone", "not found")]:
        path = tmp_path / f"{name}.star"
        with pytest.raises(InputError) as info:
            load_images(read_particles(path))
        assert str(path) in str(info.value) and words in str(info.value), str(info.value)
    # an explicit pixel size settles the disagreement
    _, pixel_size = load_images(read_particles(tmp_path / "size.star"), pixel_size_in_angstroms=3.0)
    assert pixel_size == 3.0


PARTICLES = "particles"


@pytest.mark.shared_data
@pytest.mark.parametrize("folder, name, n, pixel_size, has_optics", [
    ("cryodrgn_relion31", "relion31.star", 5, 2.806, True),
    ("aspire_sample", "sample_particles_relion31.star", 17, 1.4, True),
    ("aspire_sample", "sample_relion_data.star", 17, 5.0 * 1e4 / 37369.207031, False),
    ("cryodrgn_empiar10076_7", "empiar_10076_7.star", 7, 5.0 * 1e4 / 38168, False),
    ("cryodrgn_tomo_ribosome_tilts", "sta_testing_bin8.star", 219, 1.96, False),
])
def test_read_real_star_files(shared_data, folder, name, n, pixel_size, has_optics):
    table = read_particles(shared_data / PARTICLES / folder / name)
    assert len(table.particles) == n
    assert table.pixel_size_in_angstroms == pytest.approx(pixel_size, rel=1e-6)
    assert (table.optics is not None) == has_optics
    images, loaded_pixel_size = load_images(table)
    assert images.shape[0] == n and images.dtype == np.float32
    assert loaded_pixel_size == pytest.approx(pixel_size, rel=1e-6)


@pytest.mark.shared_data
def test_relion31_images_and_poses(shared_data):
    table = read_particles(shared_data / PARTICLES / "cryodrgn_relion31" / "relion31.star")
    images, pixel_size = load_images(table)  # header says 1.0 (placeholder): the STAR wins
    assert images.shape == (5, 256, 256) and pixel_size == 2.806
    assert abs(float(images.mean()) - 0.011) < 0.01 and abs(float(images.std()) - 1.01) < 0.05
    matrices, shifts = columns_to_poses(table.particles)
    np.testing.assert_allclose(matrices[0], euler_to_matrix(-102.30296, 82.318041, 124.706463))
    np.testing.assert_allclose(shifts[0], [-0.019324, 0.64686])
    assert table.particles["rlnVoltage"].iloc[0] == 300.0
