"""MRC maps and stacks: round trips, header conventions, one-line errors."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.io.mrc import MapData, read_map, read_stack, write_map, write_stack


def _volume(shape=(6, 7, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_map_round_trip_with_origin(tmp_path):
    data = _volume()
    path = tmp_path / "map.mrc"
    write_map(path, data, 1.5, (-4.5, 3.0, 12.0))
    result = read_map(path)
    np.testing.assert_array_equal(result.data, data)
    assert result.data.dtype == np.float32
    assert result.voxel_size_in_angstroms == 1.5
    assert result.origin_in_angstroms == (-4.5, 3.0, 12.0)
    assert result.grid.shape == (6, 7, 8)
    assert result.grid.origin_in_angstroms == (-4.5, 3.0, 12.0)
    with mrcfile.open(path) as mrc:
        header = mrc.header
        assert int(header.ispg) == 1
        assert (int(header.mx), int(header.my), int(header.mz)) == (8, 7, 6)
        assert int(header.nxstart) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["map.mrc"]  # no temporary file left


def test_origin_from_nstart_when_origin_is_zero(tmp_path):
    path = tmp_path / "nstart.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(_volume((4, 4, 4)))
        mrc.voxel_size = 2.0
        mrc.header.nxstart, mrc.header.nystart, mrc.header.nzstart = -2, 1, 3
    assert read_map(path).origin_in_angstroms == (-4.0, 2.0, 6.0)


def test_pixel_size_overrides_header(tmp_path):
    path = tmp_path / "map.mrc"
    write_map(path, _volume(), 1.5)
    assert read_map(path, pixel_size_in_angstroms=3.0).voxel_size_in_angstroms == 3.0


def test_stack_round_trip(tmp_path):
    images = _volume((5, 8, 8))
    path = tmp_path / "stack.mrcs"
    write_stack(path, images, 2.5)
    result = read_stack(path)
    np.testing.assert_array_equal(result.data, images)
    assert result.voxel_size_in_angstroms == 2.5
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.ispg) == 0
        assert (int(mrc.header.mx), int(mrc.header.my), int(mrc.header.mz)) == (8, 8, 1)


def test_single_image_reads_as_stack_of_one(tmp_path):
    path = tmp_path / "image.mrc"
    write_stack(path, _volume((8, 9)), 1.0)
    assert read_stack(path).data.shape == (1, 8, 9)


def test_permissive_fallback_for_odd_space_group(tmp_path):
    path = tmp_path / "odd.mrc"
    write_map(path, _volume(), 1.0)
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.ispg = 1065353216
    assert read_map(path).data.shape == (6, 7, 8)


def test_map_data_grid_needs_3d():
    with pytest.raises(ValueError):
        MapData(np.zeros((4, 4)), 1.0).grid


def _write_raw(path, data, voxel_size=1.0, stack=False):
    with mrcfile.new(path, overwrite=True) as mrc:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mrcfile warns when it computes statistics of NaNs
            mrc.set_data(np.asarray(data, dtype=np.float32))
        if stack:
            mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def _with_nan():
    data = _volume()
    data[1, 2, 3] = np.nan
    return data


def _not_mrc(path):
    path.write_text("this is not a map\n" * 200)
    return path


def _short(path):
    path.write_bytes(b"\x00" * 100)
    return path


ERROR_CASES = {
    "missing": (read_map, lambda d: d / "absent.mrc", "not found"),
    "not mrc": (read_map, lambda d: _not_mrc(d / "notes.mrc"), "not a readable MRC"),
    "short file": (read_map, lambda d: _short(d / "short.mrc"), "not a readable MRC"),
    "2D image": (read_map, lambda d: _write_raw(d / "image.mrc", _volume((8, 8))), "2D image"),
    "ispg 0 stack": (read_map, lambda d: _write_raw(d / "s.mrc", _volume((3, 8, 8)), stack=True), "stack"),
    "mrcs": (read_map, lambda d: _write_raw(d / "map.mrcs", _volume((8, 8, 8))), "stack"),
    "nan": (read_map, lambda d: _write_raw(d / "nan.mrc", _with_nan()), "NaN"),
    "zeros": (read_map, lambda d: _write_raw(d / "zeros.mrc", np.zeros((4, 4, 4))), "zero"),
    "voxel 0": (read_map, lambda d: _write_raw(d / "v0.mrc", _volume(), voxel_size=0.0), "--pixel-size"),
    "stack voxel 0": (read_stack, lambda d: _write_raw(d / "s0.mrcs", _volume(), 0.0, True), "--pixel-size"),
    "stack nan": (read_stack, lambda d: _write_raw(d / "snan.mrcs", _with_nan(), stack=True), "NaN"),
    "stack not mrc": (read_stack, lambda d: _not_mrc(d / "notes.mrcs"), "not a readable MRC"),
    "stack missing": (read_stack, lambda d: d / "absent.mrcs", "not found"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_input_errors_name_the_file(tmp_path, case):
    reader, make, words = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and words in message
    assert "\n" not in message


@pytest.mark.shared_data
def test_read_emd_1997(shared_data):
    result = read_map(shared_data / "maps" / "emd_1997_groel.map")
    assert result.data.shape == (100, 100, 100)
    assert result.voxel_size_in_angstroms == pytest.approx(2.02)
    np.testing.assert_allclose(result.origin_in_angstroms, [-50 * 2.02] * 3)


@pytest.mark.shared_data
def test_read_real_files_needing_care(shared_data):
    # RELION reconstruction with space group 0 and mz == nz: a volume, not a stack
    relion = read_map(shared_data / "maps" / "empiar10499_ribosome_sta_32_12A.mrc")
    assert relion.voxel_size_in_angstroms == pytest.approx(12.0024, abs=1e-4)
    # odd ispg: read permissively; origin from nstart 1
    gmm = read_map(shared_data / "maps" / "emd_1883_polII_gmm50.mrc")
    assert gmm.origin_in_angstroms == (4.0, 4.0, 4.0)
    # header voxel size 0 needs the user's pixel size
    with pytest.raises(InputError, match="--pixel-size"):
        read_map(shared_data / "maps" / "aspire_clean70SRibosome_vol_65p.mrc")
    ribosome = read_map(shared_data / "maps" / "aspire_clean70SRibosome_vol_65p.mrc", pixel_size_in_angstroms=5.0)
    assert ribosome.grid.spacing_in_angstroms == 5.0
    stack = read_stack(shared_data / "particles" / "cryodrgn_relion31" / "relion31.mrcs")
    assert stack.data.shape == (5, 256, 256)


def test_written_files_are_labelled_with_the_cryogmm_version(tmp_path):
    from cryogmm import __version__

    write_map(tmp_path / "map.mrc", np.ones((4, 4, 4)), 2.0)
    write_stack(tmp_path / "stack.mrcs", np.ones((2, 4, 4)), 2.0)
    for name in ("map.mrc", "stack.mrcs"):
        with mrcfile.open(tmp_path / name) as mrc:
            labels = mrc.get_labels()
        assert len(labels) == 1 and labels[0].startswith(f"cryogmm {__version__} ")
