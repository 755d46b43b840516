"""`cryogmm ctf`: outputs, refusals, and two real particle sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryogmm.cli import main
from cryogmm.forward.ctf import CTFParameters, apply_ctf, ctf_images
from cryogmm.io.mrc import write_stack
from cryogmm.io.star import ctf_columns, format_image_name, write_particles

BOX, PIXEL_SIZE = 64, 2.0
GEOMETRY = {"pixel_size_in_angstroms": PIXEL_SIZE, "image_size": BOX}


@pytest.fixture
def particles(tmp_path):
    """Six noise particles convolved with their CTF (bright, as RELION extracts them), with a STAR file."""
    rng = np.random.default_rng(0)
    params = CTFParameters(rng.uniform(9000, 12000, 6), rng.uniform(9000, 12000, 6), rng.uniform(-90, 90, 6),
                           300.0, 2.7, 0.1)
    images = -apply_ctf(rng.standard_normal((6, BOX, BOX)), ctf_images(params, BOX, PIXEL_SIZE))
    images += 0.5 * rng.standard_normal(images.shape)
    write_stack(tmp_path / "particles.mrcs", images, PIXEL_SIZE)
    names = [format_image_name(i, "particles.mrcs") for i in range(6)]
    write_particles(tmp_path / "particles.star", pd.DataFrame({"rlnImageName": names}).assign(**ctf_columns(params)),
                    GEOMETRY)
    return tmp_path / "particles.star"


def test_writes_figure_json_and_log(particles, tmp_path, capsys):
    out = tmp_path / "check"
    assert main(["ctf", str(particles), "--output", str(out), "--max-images", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ctf.json", "ctf.png", "report.html", "run.log", "settings.json"]
    summary = json.loads((out / "ctf.json").read_text())
    assert summary["n_particles"] == 4 and summary["n_particles_in_file"] == 6
    assert summary["analysed_rows"] == [1, 3, 4, 6] and summary["pixel_size_in_angstroms"] == PIXEL_SIZE
    assert summary["thon_rings"]["agreement"] > 0.8
    assert "Thon-ring agreement" in (out / "run.log").read_text()
    assert "Thon-ring agreement" in capsys.readouterr().err


def test_refuses_existing_output_without_force(particles, tmp_path, capsys):
    out = tmp_path / "check"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["ctf", str(particles), "--output", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["ctf", str(particles), "--output", str(out), "--force", "--show", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ctf.json", "ctf.png", "report.html", "run.log", "settings.json"]


def test_star_without_ctf_is_refused(tmp_path, capsys):
    write_stack(tmp_path / "s.mrcs", np.zeros((2, 8, 8)), 2.0)
    write_particles(tmp_path / "p.star", pd.DataFrame({"rlnImageName": ["000001@s.mrcs", "000002@s.mrcs"]}),
                    {**GEOMETRY, "image_size": 8, "voltage_in_kv": 300.0, "spherical_aberration_in_mm": 2.7,
                     "amplitude_contrast": 0.1})
    assert main(["ctf", str(tmp_path / "p.star"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'p.star'}: has no CTF columns (rlnDefocusU, rlnDefocusV, rlnDefocusAngle" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--max-images", "0"], ["--pixel-size", "-1"], ["--show", "20"]])
def test_bad_options(particles, tmp_path, option, capsys):
    assert main(["ctf", str(particles), "--output", str(tmp_path / "o"), *option]) == 2
    assert option[0] in capsys.readouterr().err


@pytest.mark.shared_data
def test_real_relion31(shared_data, tmp_path):
    out = tmp_path / "check"
    star = shared_data / "particles" / "cryodrgn_relion31" / "relion31.star"
    assert main(["ctf", str(star), "--output", str(out), "--show", "1"]) == 0
    assert 0.7 < json.loads((out / "ctf.json").read_text())["thon_rings"]["agreement"] < 0.85  # measured 0.777


@pytest.mark.shared_data
def test_real_tomo_tilts_have_no_resolvable_rings(shared_data, tmp_path):
    star = shared_data / "particles" / "cryodrgn_tomo_ribosome_tilts" / "sta_testing_bin8.star"
    assert main(["ctf", str(star), "--output", str(tmp_path / "check"), "--max-images", "40", "--show", "1"]) == 0
    summary = json.loads((tmp_path / "check" / "ctf.json").read_text())
    assert summary["thon_rings"]["agreement"] is None and summary["pixel_size_in_angstroms"] == 1.96
