"""`cryogmm prepare` on small synthetic stacks and STAR files, and its refusals of bad input."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryogmm.cli import main
from cryogmm.io.mrc import read_stack, write_stack
from cryogmm.io.star import format_image_name, write_particles

PIXEL = 2.0
N = 48
OFFSETS = np.array([[3.4, -2.2], [-4.1, 1.5], [0.6, 3.8]])  # pixels
OUTPUTS = ["in.mrcs", "out.mrcs", "out_prepare.json", "out_prepare.png", "out_report.html"]


def blobs(offsets=OFFSETS, n=N):
    y, x = np.indices((n, n)) - n // 2
    return np.stack([np.exp(-((x - cx) ** 2 / 12.0 + (y - cy) ** 2 / 6.0)) for cx, cy in offsets])


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.mrcs"
    write_stack(path, blobs() + 2.0 + 0.01 * rng.standard_normal((len(OFFSETS), N, N)), PIXEL)
    return path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_writes_stack_record_and_figure(tmp_path, stack, capsys):
    out = tmp_path / "out.mrcs"
    assert main(["prepare", str(stack), "--output", str(out)]) == 0
    assert _listing(tmp_path) == OUTPUTS  # no temporary files left
    printed = capsys.readouterr().out
    assert "subtracted the background" in printed and "centred on the centre of mass" in printed
    prepared = read_stack(out)
    assert prepared.voxel_size_in_angstroms == PIXEL and prepared.data.shape == (3, N, N)
    assert prepared.data.min() >= 0.0
    with mrcfile.open(out) as mrc:
        assert mrc.is_image_stack()
    record = json.loads((tmp_path / "out_prepare.json").read_text())
    assert record["command"] == "prepare" and record["cryogmm_version"]
    assert record["settings"]["mask"] == "auto" and record["settings"]["center"] is True
    assert record["notes"] and record["n_images"] == 3 and record["pixel_size_in_angstroms"] == PIXEL
    shifts = np.array([[im["shift_x_in_angstroms"], im["shift_y_in_angstroms"]] for im in record["images"]])
    np.testing.assert_allclose(shifts, OFFSETS * PIXEL, atol=0.1)
    np.testing.assert_allclose([im["rlnOriginXAngst"] for im in record["images"]], -shifts[:, 0])
    assert [im["name"] for im in record["images"]] == [f"00000{i}@in.mrcs" for i in (1, 2, 3)]
    assert (tmp_path / "out_prepare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_existing_outputs_without_force(tmp_path, stack, capsys):
    out = tmp_path / "out.mrcs"
    assert main(["prepare", str(stack), "-o", str(out), "--no-center"]) == 0
    before = {name: (tmp_path / name).read_bytes() for name in OUTPUTS}
    for existing in ("out.mrcs", "out_prepare.png"):
        others = [name for name in OUTPUTS[1:] if name != existing]
        for name in others:
            (tmp_path / name).unlink()
        capsys.readouterr()
        assert main(["prepare", str(stack), "-o", str(out)]) == 2
        _one_line_error(capsys, "exists", "--force")
        assert _listing(tmp_path) == sorted(["in.mrcs", existing])  # nothing written
        assert (tmp_path / existing).read_bytes() == before[existing]
        for name in others:
            (tmp_path / name).write_bytes(before[name])
    assert main(["prepare", str(stack), "-o", str(out), "--force"]) == 0
    assert _listing(tmp_path) == OUTPUTS
    assert (tmp_path / "out.mrcs").read_bytes() != before["out.mrcs"]  # now centred


def test_star_input_box_and_radius(tmp_path, stack):
    names = [format_image_name(i, stack.name) for i in range(len(OFFSETS))]
    star = tmp_path / "in.star"
    write_particles(star, pd.DataFrame({"rlnImageName": names}),
                    {"rlnImagePixelSize": PIXEL, "rlnImageSize": N, "rlnVoltage": 300.0,
                     "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1})
    out = tmp_path / "small.mrcs"
    assert main(["prepare", str(star), "-o", str(out), "--box", "24", "--mask", "radius", "--radius", "20",
                 "--scale", "per-image"]) == 0
    prepared = read_stack(out)
    assert prepared.data.shape == (3, 24, 24) and prepared.voxel_size_in_angstroms == pytest.approx(2 * PIXEL)
    np.testing.assert_allclose(prepared.data.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    record = json.loads((tmp_path / "small_prepare.json").read_text())
    assert record["images"][0]["name"] == "000001@in.mrcs" and record["settings"]["radius_in_angstroms"] == 20.0


def test_placeholder_pixel_sizes(tmp_path, capsys):
    for header in (1.0, 0.0):
        path = tmp_path / f"header{header:g}.mrcs"
        write_stack(path, blobs(), header)
        capsys.readouterr()
        assert main(["prepare", str(path), "-o", str(tmp_path / "out.mrcs")]) == 2
        _one_line_error(capsys, str(path), "--pixel-size")
        assert not (tmp_path / "out.mrcs").exists()
    assert main(["prepare", str(path), "-o", str(tmp_path / "out.mrcs"), "--pixel-size", "3"]) == 0
    assert read_stack(tmp_path / "out.mrcs").voxel_size_in_angstroms == 3.0


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, capsys):
    good = blobs()
    cases = {}
    nan = good.copy()
    nan[1, 5, 5] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's header statistics
        write_stack(tmp_path / "nan.mrcs", nan, PIXEL)
    cases["nan.mrcs"] = ("NaN",)
    write_stack(tmp_path / "oblong.mrcs", good[:, :, :40], PIXEL)
    cases["oblong.mrcs"] = ("square",)
    empty = good.copy()
    empty[1] = 0.0
    write_stack(tmp_path / "empty.mrcs", empty, PIXEL)
    cases["empty.mrcs"] = ("image 2 of", "no particle found above the background", "--mask radius")
    cases["missing.mrcs"] = ("missing.mrcs", "not found")
    (tmp_path / "text.mrcs").write_text("not an image\n" * 200)
    cases["text.mrcs"] = ("not a readable MRC file",)
    inputs = _listing(tmp_path)
    for name, needles in cases.items():
        capsys.readouterr()
        assert main(["prepare", str(tmp_path / name), "-o", str(tmp_path / "out.mrcs")]) == 2, name
        _one_line_error(capsys, *needles)
        assert _listing(tmp_path) == inputs  # nothing written, no temporary files
    write_stack(tmp_path / "ok.mrcs", good, PIXEL)
    inputs = _listing(tmp_path)
    options = [(["--mask", "radius"], "--radius"), (["--radius", "-5"], "--radius -5"),
               (["--box", "100"], "--box 100"), (["-o", str(tmp_path / "out.txt")], "ending in .mrcs"),
               (["-o", str(tmp_path / "ok.mrcs"), "--force"], "would overwrite the input"),
               (["-o", str(tmp_path / "no" / "out.mrcs")], "does not exist")]
    for extra, needle in options:
        capsys.readouterr()
        assert main(["prepare", str(tmp_path / "ok.mrcs"), "-o", str(tmp_path / "out.mrcs")] + extra) == 2, extra
        _one_line_error(capsys, needle)
        assert _listing(tmp_path) == inputs


@pytest.mark.shared_data
def test_betagal(shared_data, tmp_path, capsys):
    out = tmp_path / "betagal.mrcs"
    source = shared_data / "class_averages" / "betagal_class_averages.mrcs"
    assert main(["prepare", str(source), "-o", str(out), "--pixel-size", "3.54"]) == 0
    prepared = read_stack(out).data
    assert prepared.shape == (16, 100, 100) and prepared.min() >= 0.0
    record = json.loads((tmp_path / "betagal_prepare.json").read_text())
    assert not record["inverted"]
    fractions = np.array([im["masked_fraction"] for im in record["images"]])
    # a particle of about 130-170 Å across at 3.54 Å/px covers 5-25% of the 100 x 100 box
    assert np.all((fractions > 0.05) & (fractions < 0.25))


def test_relion_model_star_input_drops_empty_classes(tmp_path):
    from pathlib import Path

    from cryogmm.io.classes import ClassAverageSet, write_class_averages
    from cryogmm.io.images import read_input_images

    images = np.concatenate([blobs() + 2.0, np.zeros((1, N, N))])  # the last class is empty
    classes = ClassAverageSet(images, PIXEL, tuple(f"{i + 1:06d}@run_it025_classes.mrcs" for i in range(4)),
                              np.array([0.4, 0.3, 0.3, 0.0]), np.full(4, 30.0), Path("run_it025_model.star"))
    write_class_averages(tmp_path / "run_it025_model.star", classes)
    model = tmp_path / "run_it025_model.star"
    read = read_input_images(model)
    assert read.images.shape == (3, N, N) and read.pixel_size_in_angstroms == pytest.approx(PIXEL)
    assert main(["prepare", str(model), "--output", str(tmp_path / "out.mrcs")]) == 0
    prepared = read_stack(tmp_path / "out.mrcs").data
    assert prepared.shape == (3, N, N) and prepared.min() >= 0
    record = json.loads((tmp_path / "out_prepare.json").read_text())
    assert [image["name"] for image in record["images"]] == [f"{i + 1:06d}@run_it025_classes.mrcs" for i in range(3)]
