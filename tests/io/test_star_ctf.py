"""CTF columns of STAR files, cryoSPARC STAR and .cs files, and the real particle sets."""

from __future__ import annotations


import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters
from cryogmm.io.star import (
    ctf_columns,
    ctf_parameters,
    format_image_name,
    load_images,
    read_cryosparc,
    read_particles,
    select_rows,
    split_image_name,
    write_particles,
)

GEOMETRY = {"pixel_size_in_angstroms": 2.0, "image_size": 8}
OPTICS = {**GEOMETRY, "voltage_in_kv": 300.0, "spherical_aberration_in_mm": 2.7, "amplitude_contrast": 0.1}
FIELDS = ("defocus_u_in_angstroms", "defocus_v_in_angstroms", "defocus_angle_in_degrees", "voltage_in_kv",
          "spherical_aberration_in_mm", "amplitude_contrast", "phase_shift_in_degrees", "bfactor_in_angstroms2",
          "scale")


def _assert_same(a: CTFParameters, b: CTFParameters, rtol=1e-12):
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=rtol, err_msg=name)


def _names(n, stack="s.mrcs"):
    return [format_image_name(i, stack) for i in range(n)]


def _old_star(path, columns: dict):
    """A single-block RELION 3.0 STAR file with the given columns."""
    names = list(columns)
    rows = zip(*(columns[n] for n in names))
    header = "".join(f"_{n} #{i + 1}\n" for i, n in enumerate(names))
    path.write_text("data_\n\nloop_\n" + header + "".join(" ".join(str(v) for v in row) + "\n" for row in rows))
    return path


def test_ctf_round_trip_through_write_particles(tmp_path):
    rng = np.random.default_rng(0)
    params = CTFParameters(rng.uniform(8000, 20000, 6), rng.uniform(8000, 20000, 6), rng.uniform(-90, 90, 6),
                           300.0, 2.7, 0.07, phase_shift_in_degrees=rng.uniform(0, 90, 6),
                           bfactor_in_angstroms2=-rng.uniform(0, 50, 6), scale=rng.uniform(0.5, 1, 6))
    frame = pd.DataFrame({"rlnImageName": _names(6)}).assign(**ctf_columns(params))
    write_particles(tmp_path / "p.star", frame, GEOMETRY)  # voltage, Cs, contrast from the columns
    table = read_particles(tmp_path / "p.star")
    assert table.optics["rlnVoltage"].tolist() == [300.0]
    assert "rlnVoltage" not in starfile.read(tmp_path / "p.star")["particles"].columns  # moved to optics
    _assert_same(ctf_parameters(table), params, rtol=1e-6)


def test_ctf_columns_leave_out_defaults():
    columns = ctf_columns(CTFParameters([10000.0, 12000.0], [9000.0, 11000.0], 30.0))
    assert list(columns) == ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                             "rlnSphericalAberration", "rlnAmplitudeContrast"]
    np.testing.assert_array_equal(columns["rlnDefocusAngle"], [30.0, 30.0])


def test_no_defocus_means_no_ctf(tmp_path):
    write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": _names(3)}), OPTICS)
    assert ctf_parameters(read_particles(tmp_path / "p.star")) is None  # voltage alone is no CTF


def test_partial_ctf_columns_are_refused(tmp_path):
    path = _old_star(tmp_path / "partial.star", {"rlnImageName": _names(2), "rlnDefocusU": [1e4, 1e4],
                                                 "rlnDefocusV": [1e4, 1e4], "rlnDefocusAngle": [0, 0],
                                                 "rlnVoltage": [300, 300]})
    with pytest.raises(InputError) as info:
        ctf_parameters(read_particles(path))
    assert str(info.value) == (f"{path}: has rlnDefocusU, rlnDefocusV, rlnDefocusAngle but not "
                               "rlnSphericalAberration, rlnAmplitudeContrast; provide all CTF columns or none")
    path = _old_star(tmp_path / "v_only.star", {"rlnImageName": _names(1), "rlnDefocusV": [1e4], "rlnVoltage": [300],
                                                "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    with pytest.raises(InputError, match="has rlnDefocusV but not rlnDefocusU, rlnDefocusAngle;"):
        ctf_parameters(read_particles(path))


def test_u_only_files_are_refused_with_the_fix(tmp_path):
    # all CTF columns or none: an old U-only file is refused, and told how to complete it
    path = _old_star(tmp_path / "old.star", {"rlnImageName": _names(2), "rlnDefocusU": [15000.0, 16000.0],
                                             "rlnVoltage": [200, 200], "rlnSphericalAberration": [2.0, 2.0],
                                             "rlnAmplitudeContrast": [0.1, 0.1]})
    with pytest.raises(InputError, match=r"has rlnDefocusU but not rlnDefocusV, rlnDefocusAngle; provide all CTF "
                                         r"columns or none \(without astigmatism: rlnDefocusV = rlnDefocusU"):
        ctf_parameters(read_particles(path))


@pytest.mark.parametrize("column, value, words", [
    ("rlnDefocusU", -100.0, "rlnDefocusU is -100 in row 2 (000002@s.mrcs); defocus must be positive"),
    ("rlnDefocusV", 0.0, "rlnDefocusV is 0 in row 2 (000002@s.mrcs); defocus must be positive"),
    ("rlnDefocusU", "nan", "rlnDefocusU is nan (not a finite number) in row 2 (000002@s.mrcs)"),
    ("rlnDefocusAngle", "abc", "rlnDefocusAngle is 'abc' (not a finite number) in row 2 (000002@s.mrcs)"),
    ("rlnAmplitudeContrast", 1.5, "rlnAmplitudeContrast is 1.5 in row 2 (000002@s.mrcs); the amplitude contrast"),
])
def test_bad_values_name_the_row(tmp_path, column, value, words):
    columns = {"rlnImageName": _names(3), "rlnDefocusU": [1e4] * 3, "rlnDefocusV": [1e4] * 3,
               "rlnDefocusAngle": [0] * 3, "rlnVoltage": [300] * 3, "rlnSphericalAberration": [2.7] * 3,
               "rlnAmplitudeContrast": [0.1] * 3}
    columns[column] = [columns[column][0], value, columns[column][0]]
    path = _old_star(tmp_path / "bad.star", columns)
    with pytest.raises(InputError) as info:
        ctf_parameters(read_particles(path))
    assert str(info.value).startswith(f"{path}: {words}"), str(info.value)
    assert "\n" not in str(info.value)


def test_optics_groups_give_per_particle_voltage(tmp_path):
    path = tmp_path / "groups.star"
    path.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnOpticsGroupName\n_rlnVoltage\n_rlnSphericalAberration\n"
        "_rlnAmplitudeContrast\n_rlnImagePixelSize\n_rlnImageSize\n"
        "1 g1 300 2.7 0.1 1.0 8\n2 g2 200 2.0 0.07 1.0 8\n\n"
        "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n"
        "1@s.mrcs 2 10000 9000 10\n2@s.mrcs 1 11000 10500 20\n3@s.mrcs 2 12000 11000 30\n")
    params = ctf_parameters(read_particles(path))
    np.testing.assert_array_equal(params.voltage_in_kv, [200, 300, 200])
    np.testing.assert_array_equal(params.spherical_aberration_in_mm, [2.0, 2.7, 2.0])
    np.testing.assert_array_equal(params.amplitude_contrast, [0.07, 0.1, 0.07])
    np.testing.assert_array_equal(params.defocus_v_in_angstroms, [9000, 10500, 11000])


def test_write_particles_refuses_columns_that_disagree_with_optics():
    frame = pd.DataFrame({"rlnImageName": _names(2), "rlnVoltage": [300.0, 200.0]})
    with pytest.raises(ValueError, match="rlnVoltage"):
        write_particles("never.star", frame, OPTICS)


def test_select_rows_keeps_order_and_path(tmp_path):
    write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": _names(5)}), OPTICS)
    table = read_particles(tmp_path / "p.star")
    subset = select_rows(table, [4, 1])
    assert subset.particles["rlnImageName"].tolist() == ["000005@s.mrcs", "000002@s.mrcs"]
    assert subset.path == table.path and subset.pixel_size_in_angstroms == 2.0


# --- cryoSPARC -----------------------------------------------------------------------------------

def _cryosparc_mrc_stack(path, images, pixel_size):
    """An .mrc particle stack as cryoSPARC writes it: space group 1, mz = nz (looks like a volume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path) as mrc:
        mrc.set_data(images.astype(np.float32))
        mrc.voxel_size = pixel_size


def test_cryosparc_style_star(tmp_path):
    """csparc2star.py output: one block, `>` paths to .mrc stacks, pixel size only from magnification."""
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 8, 8))
    _cryosparc_mrc_stack(tmp_path / "J12" / "extract" / "042_particles.mrc", images, 1.5)
    path = _old_star(tmp_path / "from_cryosparc.star", {
        "rlnImageName": [f"{i:06d}@>J12/extract/042_particles.mrc" for i in (3, 1)],
        "rlnDefocusU": [15301.1, 15303.0], "rlnDefocusV": [14916.4, 14918.4], "rlnDefocusAngle": [5.28, 5.28],
        "rlnVoltage": [300, 300], "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.07, 0.07],
        "rlnPhaseShift": [0, 0], "rlnMagnification": [10000, 10000], "rlnDetectorPixelSize": [1.5, 1.5]})
    table = read_particles(path)
    assert table.pixel_size_in_angstroms == pytest.approx(1.5)
    loaded, pixel_size = load_images(table)
    np.testing.assert_array_equal(loaded, images[[2, 0]].astype(np.float32))
    assert pixel_size == pytest.approx(1.5)
    np.testing.assert_allclose(ctf_parameters(table).defocus_u_in_angstroms, [15301.1, 15303.0])
    assert split_image_name("000001@>J1/x.mrc") == (0, "J1/x.mrc")


def _cs_records(n, stack):
    dtype = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/phase_shift_rad", "<f4"),
             ("ctf/scale", "<f4"), ("ctf/bfactor", "<f4"), ("alignments2D/class", "<u4")]
    records = np.zeros(n, dtype=dtype)
    records["blob/path"] = f">{stack}".encode()
    records["blob/idx"] = np.arange(n)[::-1]
    records["blob/shape"] = 8
    records["blob/psize_A"] = 1.5
    records["ctf/accel_kv"], records["ctf/cs_mm"], records["ctf/amp_contrast"] = 300, 2.7, 0.07
    records["ctf/df1_A"] = 10000 + 100 * np.arange(n)
    records["ctf/df2_A"] = 9000 + 100 * np.arange(n)
    records["ctf/df_angle_rad"] = np.pi / 6
    records["ctf/scale"] = 1
    records["alignments2D/class"] = np.arange(n) % 2
    return records


def test_cryosparc_cs_file(tmp_path):
    images = np.random.default_rng(3).standard_normal((4, 8, 8))
    _cryosparc_mrc_stack(tmp_path / "J3" / "p.mrc", images, 1.5)
    with open(tmp_path / "J3_particles.cs", "wb") as stream:
        np.save(stream, _cs_records(4, "J3/p.mrc"))
    table = read_particles(tmp_path / "J3_particles.cs")
    assert table.particles["rlnImageName"].tolist() == [f"{i:06d}@J3/p.mrc" for i in (4, 3, 2, 1)]
    np.testing.assert_array_equal(table.particles["rlnClassNumber"], [1, 2, 1, 2])
    params = ctf_parameters(table)
    np.testing.assert_allclose(params.defocus_angle_in_degrees, 30.0, rtol=1e-6)
    np.testing.assert_allclose(params.defocus_v_in_angstroms, [9000, 9100, 9200, 9300])
    loaded, pixel_size = load_images(table)
    np.testing.assert_array_equal(loaded, images[::-1].astype(np.float32))
    assert pixel_size == pytest.approx(1.5)


def test_cryosparc_files_without_images_are_refused(tmp_path):
    with open(tmp_path / "passthrough.cs", "wb") as stream:
        np.save(stream, np.zeros(2, dtype=[("uid", "<u8"), ("ctf/df1_A", "<f4")]))
    (tmp_path / "text.cs").write_text("not numpy\n")
    for name, words in [("passthrough.cs", "no blob/path and blob/idx"), ("text.cs", "not a readable cryoSPARC")]:
        with pytest.raises(InputError, match=words):
            read_cryosparc(tmp_path / name)


# --- the real particle sets (SOURCES.md) ---------------------------------------------------------

def _load(path):
    table = read_particles(path)
    images, pixel_size = load_images(table)
    return table, images, pixel_size, ctf_parameters(table)


@pytest.mark.shared_data
def test_real_empiar10076_star_and_cs_agree(shared_data):
    folder = shared_data / "particles" / "cryodrgn_empiar10076_7"
    table, images, pixel_size, params = _load(folder / "empiar_10076_7.star")
    assert images.shape == (7, 320, 320)
    assert pixel_size == pytest.approx(5.0 * 1e4 / 38168)  # 1.31 Å from magnification and detector
    np.testing.assert_allclose(params.defocus_u_in_angstroms[[0, 2, 4]], [15301.1, 15150.7, 15366.8])
    np.testing.assert_allclose(params.defocus_v_in_angstroms[0], 14916.4)
    assert set(params.defocus_angle_in_degrees) == {5.28}
    assert (set(params.voltage_in_kv), set(params.spherical_aberration_in_mm), set(params.amplitude_contrast)) == \
        ({300.0}, {2.7}, {0.07})
    cs_table, cs_images, cs_pixel_size, cs_params = _load(folder / "empiar_10076_7.cs")
    _assert_same(cs_params, params, rtol=1e-6)  # float32 in the .cs file
    assert cs_pixel_size == pytest.approx(pixel_size, rel=1e-6)
    np.testing.assert_array_equal(cs_images, images)


@pytest.mark.shared_data
def test_real_relion31(shared_data):
    table, images, pixel_size, params = _load(shared_data / "particles" / "cryodrgn_relion31" / "relion31.star")
    assert images.shape == (5, 256, 256) and pixel_size == 2.806
    assert params.defocus_u_in_angstroms.min() == pytest.approx(12506.042289)
    assert params.defocus_u_in_angstroms.max() == pytest.approx(13108.082418)
    assert set(params.spherical_aberration_in_mm) == {0.01} and set(params.amplitude_contrast) == {0.1}
    assert set(params.defocus_angle_in_degrees) == {-160.39} and set(params.bfactor_in_angstroms2) == {0.0}


@pytest.mark.shared_data
def test_real_aspire_two_optics_groups(shared_data):
    folder = shared_data / "particles" / "aspire_sample"
    table, images, pixel_size, params = _load(folder / "sample_particles_relion31.star")
    assert images.shape == (17, 200, 200) and pixel_size == 1.4
    groups = table.particles["rlnOpticsGroup"].to_numpy()
    np.testing.assert_array_equal(params.voltage_in_kv, np.where(groups == 1, 300.0, 200.0))
    assert (groups == 2).sum() == 9
    assert set(params.defocus_u_in_angstroms) == {21186.804688} and set(params.defocus_v_in_angstroms) == {21363.109375}
    _, _, old_pixel_size, old_params = _load(folder / "sample_relion_data.star")
    assert old_pixel_size == pytest.approx(5.0 * 1e4 / 37369.207031)  # 1.338 Å: the two files disagree
    assert set(old_params.voltage_in_kv) == {300.0}


@pytest.mark.shared_data
def test_real_tomo_tilts_219_rows_for_220_images(shared_data):
    table, images, pixel_size, params = _load(shared_data / "particles" / "cryodrgn_tomo_ribosome_tilts"
                                              / "sta_testing_bin8.star")
    assert images.shape == (219, 64, 64)  # the 220th image of the stack is not referenced
    assert pixel_size == pytest.approx(1.96)  # magnification 10000, detector 1.96 µm (header says 1.0)
    assert params.defocus_u_in_angstroms.min() == 17879.0 and params.defocus_u_in_angstroms.max() == 24323.5
    assert params.bfactor_in_angstroms2.max() == -13.0 and params.scale.min() == 0.5
