"""`cryogmm deconvolve` end to end on particles simulated with classes, CTFs and noise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cryogmm.cli import main
from cryogmm.io.mrc import read_stack
from cryogmm.io.star import read_particles, write_particles
from cryogmm.metrics.correlation import cross_correlation

ATOMS = [  # element, x, y, z in Å: an asymmetric cluster of heavy atoms
    ("S", 0.0, 0.0, 0.0), ("S", 12.0, 3.0, -4.0), ("P", -9.0, 8.0, 5.0), ("S", 4.0, -11.0, 2.0),
    ("P", -6.0, -6.0, -8.0), ("S", 15.0, -7.0, 6.0), ("P", -14.0, 2.0, -3.0),
]


OPTICS = {"rlnOpticsGroup": 1, "rlnImagePixelSize": 2.5, "rlnImageSize": 40, "rlnImageDimensionality": 2,
          "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}


def _pearson(a, b):
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def particles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deconvolve")
    lines = [f"ATOM  {i:5d}  {e:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{20.0:6.2f}          {e:>2s}"
             for i, (e, x, y, z) in enumerate(ATOMS, start=1)]
    model = folder / "model.pdb"
    model.write_text("\n".join(lines + ["END"]) + "\n")
    out = folder / "sim"
    assert main(["simulate-images", str(model), "--box", "40", "--pixel-size", "2.5", "--resolution", "8",
                 "--classes", "4", "--defocus-range", "0.8", "3.0", "--defocus-groups", "4",
                 "--particles-per-group", "15", "--snr", "2", "--max-shift", "3", "--seed", "2",
                 "--output", str(out)]) == 0
    return out


def test_multi_frame_beats_single_frame_and_recovers_the_class_projections(particles, tmp_path):
    truth = read_stack(particles / "class_projections.mrcs").data
    results = {}
    for groups in (4, 1):
        output = tmp_path / f"deconvolved_{groups}.mrcs"
        assert main(["deconvolve", str(particles / "particles.star"), "--groups", str(groups),
                     "--output", str(output)]) == 0
        images = read_stack(output).data
        assert images.shape == truth.shape and images.min() >= 0
        results[groups] = [_pearson(a, b) for a, b in zip(images, truth)]
        record = json.loads(output.with_name(f"deconvolved_{groups}_deconvolve.json").read_text())
        assert record["mode"] == "particles" and record["polarity"] == -1  # simulate-images writes bright particles
        assert [c["particles"] for c in record["classes"]] == [60] * 4
        assert record["alpha_rule"] == "gcv"
        table = read_particles(output.with_suffix(".star")).particles
        assert table["rlnClassNumber"].tolist() == [1, 2, 3, 4]
    # a small particle at 8 Å has much signal past the first CTF zeros, which one mean CTF loses:
    # measured multi-frame Pearson 0.95-0.96 per class, single-frame 0.78-0.87
    assert np.median(results[4]) > 0.93
    assert np.median(results[1]) > 0.75
    assert np.median(results[4]) > np.median(results[1]) + 0.05
    # the cross-correlation of Eqn. 3.3 (measured 0.93-0.95)
    assert all(cross_correlation(a, b) > 0.9 for a, b in zip(read_stack(tmp_path / "deconvolved_4.mrcs").data, truth))


def test_class_averages_with_one_ctf_each(particles, tmp_path):
    # a STAR listing class averages made of one defocus group each, with that defocus
    from cryogmm.io.mrc import write_stack
    from cryogmm.io.star import in_plane_poses
    from cryogmm.preprocess.class_average import class_averages

    table = read_particles(particles / "particles.star").particles
    defocus = table["rlnDefocusU"].to_numpy()
    level = np.unique(defocus)[1]
    keep = defocus == level
    images = read_stack(particles / "images.mrcs").data[keep]
    psi, shifts = in_plane_poses(table[keep], 2.5)
    averages = class_averages(images, psi, shifts, table["rlnClassNumber"].to_numpy()[keep], 2.5)
    write_stack(tmp_path / "averages.mrcs", averages.averages.astype(np.float32), 2.5)
    rows = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@averages.mrcs" for i in range(4)], "rlnDefocusU": level,
                         "rlnDefocusV": level, "rlnDefocusAngle": 0.0, "rlnOpticsGroup": 1})
    write_particles(tmp_path / "averages.star", rows, OPTICS)
    output = tmp_path / "single.mrcs"
    assert main(["deconvolve", str(tmp_path / "averages.star"), "--output", str(output)]) == 0
    record = json.loads((tmp_path / "single_deconvolve.json").read_text())
    assert record["mode"] == "class averages" and record["polarity"] == -1
    truth = read_stack(particles / "class_projections.mrcs").data
    # 15 particles at one known defocus each (measured Pearson 0.97-0.98)
    values = [_pearson(a, b) for a, b in zip(read_stack(output).data, truth)]
    assert min(values) > 0.9


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "0"], "--alpha 0"), (["--alpha", "-1"], "must be a positive number"), (["--groups", "0"], "--groups 0"),
])
def test_bad_options_exit_2_and_write_nothing(particles, tmp_path, capsys, extra, message):
    output = tmp_path / "out.mrcs"
    assert main(["deconvolve", str(particles / "particles.star"), "--output", str(output), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_ctf_columns_and_existing_outputs(particles, tmp_path, capsys):
    table = read_particles(particles / "particles.star")
    df = table.particles.drop(columns=["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                                       "rlnSphericalAberration", "rlnAmplitudeContrast"], errors="ignore")
    df["rlnImageName"] = [name.split("@")[0] + "@" + str(particles / "images.mrcs") for name in df["rlnImageName"]]
    # optics voltage, Cs and amplitude contrast but no defocus: no CTF
    write_particles(tmp_path / "no_ctf.star", df[["rlnImageName", "rlnClassNumber", "rlnAnglePsi"]].assign(rlnOpticsGroup=1),
                    OPTICS)
    assert main(["deconvolve", str(tmp_path / "no_ctf.star"), "--output", str(tmp_path / "x.mrcs")]) == 2
    assert "no CTF columns" in capsys.readouterr().err
    assert not (tmp_path / "x.mrcs").exists()
    output = tmp_path / "d.mrcs"
    assert main(["deconvolve", str(particles / "particles.star"), "--groups", "2", "--averages",
                 "--output", str(output)]) == 0
    averages = read_stack(tmp_path / "d_averages.mrcs").data
    assert averages.shape == (4, 40, 40) and averages.min() < 0  # CTF-weighted: negative fringes
    before = output.read_bytes()
    assert main(["deconvolve", str(particles / "particles.star"), "--output", str(output)]) == 2
    assert "exists" in capsys.readouterr().err and output.read_bytes() == before
