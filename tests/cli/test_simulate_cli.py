"""`cryogmm simulate-map` and `cryogmm simulate-images` end to end on a tiny synthetic model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryogmm.cli import main
from cryogmm.io.atoms import read_atoms
from cryogmm.io.mrc import read_map, read_stack
from cryogmm.io.star import read_particles
from cryogmm.simulate import model_center

ATOMS = [  # element, x, y, z in Å: an asymmetric cluster away from the origin
    ("C", 40.0, 12.0, -7.0), ("N", 48.0, 12.0, -7.0), ("O", 40.0, 17.0, -7.0),
    ("S", 40.0, 12.0, -13.0), ("C", 36.0, 9.0, -5.0), ("P", 43.0, 15.0, -4.0),
]


@pytest.fixture
def model_path(tmp_path):
    lines = []
    for i, (element, x, y, z) in enumerate(ATOMS, start=1):
        lines.append(f"ATOM  {i:5d}  {element:<3s} ALA A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                     f"{1.0:6.2f}{20.0:6.2f}          {element:>2s}")
    path = tmp_path / "tiny.pdb"
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_simulate_map_overlays_the_model(model_path, tmp_path):
    output = tmp_path / "map.mrc"
    assert main(["simulate-map", str(model_path), "--resolution", "10", "--pixel-size", "1.5",
                 "--output", str(output)]) == 0
    result = read_map(output)
    model = read_atoms(model_path)
    n = result.data.shape[0]
    assert result.data.shape == (n, n, n) and n % 2 == 0
    assert result.voxel_size_in_angstroms == pytest.approx(1.5)
    center = model_center(model.coordinates_in_angstroms, model.atomic_numbers)
    np.testing.assert_allclose(result.origin_in_angstroms, center - (n // 2) * 1.5, atol=1e-3)
    # the density integrates to the total atomic number, with its centre of mass on the model's
    density = result.data.astype(np.float64)
    assert density.sum() * 1.5**3 == pytest.approx(model.atomic_numbers.sum(), rel=1e-3)
    points = result.grid.points()
    np.testing.assert_allclose(density.ravel() @ points / density.sum(), center, atol=1e-3)
    # a fixed box, and --force to replace
    assert main(["simulate-map", str(model_path), "--resolution", "10", "--pixel-size", "1.5",
                 "--box", "20", "--output", str(output), "--force"]) == 0
    assert read_map(output).data.shape == (20, 20, 20)


@pytest.mark.parametrize("change", [
    {"model": "missing.pdb"},
    {"--resolution": "-5"},
    {"--pixel-size": "0"},
    {"--box": "4"},
    {"existing": True},
])
def test_simulate_map_refuses_bad_input(model_path, tmp_path, capsys, change):
    output = tmp_path / "out" / "map.mrc"
    options = {"--resolution": "10", "--pixel-size": "2"}
    options.update({k: v for k, v in change.items() if k.startswith("--")})
    model = str(tmp_path / change["model"]) if "model" in change else str(model_path)
    if change.get("existing"):
        output.parent.mkdir()
        output.write_text("keep me")
    argv = ["simulate-map", model, "--output", str(output)]
    for key, value in options.items():
        argv += [key, value]
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err
    if change.get("existing"):
        assert output.read_text() == "keep me" and _listing(output.parent) == ["map.mrc"]
    else:
        assert not output.parent.exists()


def _simulate_images(model_path, output, *extra):
    return main(["simulate-images", str(model_path), "--number", "6", "--box", "40", "--pixel-size", "1.5",
                 "--resolution", "12", "--max-shift", "4", "--output", str(output), *extra])


def test_simulate_images_writes_a_complete_run_folder(model_path, tmp_path):
    output = tmp_path / "run"
    assert _simulate_images(model_path, output, "--snr", "0.5", "--seed", "7",
                            "--reference-resolution", "20") == 0
    assert _listing(output) == ["clean_images.mrcs", "images.mrcs", "particles.star", "reference.mrc",
                                "run.log", "settings.json"]
    assert _listing(tmp_path) == ["run", "tiny.pdb"]  # no temporary folders left
    images = read_stack(output / "images.mrcs")
    clean = read_stack(output / "clean_images.mrcs")
    assert images.data.shape == clean.data.shape == (6, 40, 40)
    assert images.voxel_size_in_angstroms == pytest.approx(1.5)
    assert clean.data.min() >= 0 and images.data.min() < 0
    table = read_particles(output / "particles.star")
    assert table.pixel_size_in_angstroms == pytest.approx(1.5)
    assert table.particles["rlnImageName"].tolist()[0] == "000001@images.mrcs"
    row = table.particles.iloc[0]
    assert (row["rlnImageSize"], row["rlnVoltage"], row["rlnSphericalAberration"],
            row["rlnAmplitudeContrast"]) == (40, 300.0, 2.7, 0.1)
    reference = read_map(output / "reference.mrc")
    assert reference.data.shape == (40, 40, 40) and reference.origin_in_angstroms == (0.0, 0.0, 0.0)
    settings = json.loads((output / "settings.json").read_text())
    assert settings["seed"] == 7 and settings["settings"]["snr"] == 0.5
    assert "seed 7" in (output / "run.log").read_text()
    # same seed, same images; the poses do not depend on the noise level
    again = tmp_path / "again"
    assert _simulate_images(model_path, again, "--seed", "7") == 0
    np.testing.assert_array_equal(read_stack(again / "images.mrcs").data, clean.data)
    assert _listing(again) == ["images.mrcs", "particles.star", "reference.mrc", "run.log", "settings.json"]


def test_unseeded_runs_record_a_seed_that_reproduces_them(model_path, tmp_path):
    assert _simulate_images(model_path, tmp_path / "a") == 0
    seed = json.loads((tmp_path / "a" / "settings.json").read_text())["seed"]
    assert isinstance(seed, int)
    assert _simulate_images(model_path, tmp_path / "b", "--seed", str(seed)) == 0
    np.testing.assert_array_equal(read_stack(tmp_path / "a" / "images.mrcs").data,
                                  read_stack(tmp_path / "b" / "images.mrcs").data)


def test_reference_projected_with_the_star_poses_reproduces_the_images(model_path, tmp_path):
    """The whole convention chain: STAR angles and origins, reference frame, image frame."""
    output = tmp_path / "run"
    assert _simulate_images(model_path, output, "--seed", "3") == 0
    images = read_stack(output / "images.mrcs").data.astype(np.float64)
    volume = read_map(output / "reference.mrc").data.astype(np.float64)
    particles = read_particles(output / "particles.star").particles
    box, pixel = 40, 1.5
    center = np.full(3, box // 2)
    reverse = np.eye(3)[::-1]  # (x, y, z) <-> [z, y, x]

    def project(a, t):
        """Image of the map point x at P_o (A x + t): resample the moved map, sum along z."""
        m = reverse @ a.T @ reverse
        shift = reverse @ np.array([t[0], t[1], 0.0]) / pixel
        moved = ndimage.affine_transform(volume, m, offset=center - m @ (center + shift), order=3)
        return moved.sum(axis=0) * pixel

    for i in range(len(images)):
        row = particles.iloc[i]
        a = Rotation.from_euler("ZYZ", [row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"]],
                                degrees=True).as_matrix().T
        t = -np.array([row["rlnOriginXAngst"], row["rlnOriginYAngst"]])  # centre at +t, origin -t
        error = np.abs(project(a, t) - images[i]).max() / images[i].max()
        assert error < 3e-3, (i, error)  # cubic-spline resampling error
        if np.linalg.norm(t) > 1.0:  # the opposite sign of the origin would not match
            assert np.abs(project(a, -t) - images[i]).max() / images[i].max() > 0.05


@pytest.mark.parametrize("extra", [
    ["--resolution", "-1"],
    ["--snr", "0"],
    ["--number", "0"],
    ["--box", "6"],
    ["--max-shift", "-2"],
])
def test_simulate_images_refuses_bad_options(model_path, tmp_path, capsys, extra):
    output = tmp_path / "run"
    assert _simulate_images(model_path, output, *extra) == 2
    assert "error" in capsys.readouterr().err
    assert _listing(tmp_path) == ["tiny.pdb"]


def test_simulate_images_refuses_a_missing_model_or_an_existing_folder(model_path, tmp_path):
    assert _simulate_images(tmp_path / "missing.pdb", tmp_path / "run") == 2
    assert _listing(tmp_path) == ["tiny.pdb"]
    existing = tmp_path / "run"
    existing.mkdir()
    (existing / "keep.txt").write_text("keep me")
    assert _simulate_images(model_path, existing) == 2
    assert _listing(existing) == ["keep.txt"]
    assert _simulate_images(model_path, existing, "--force") == 0
    assert "keep.txt" not in _listing(existing)
    assert _listing(tmp_path) == ["run", "tiny.pdb"]


@pytest.mark.shared_data
def test_simulate_map_of_groel(shared_data, tmp_path):
    path = shared_data / "models" / "1oel_groel.pdb.gz"
    output = tmp_path / "groel.mrc"
    assert main(["simulate-map", str(path), "--resolution", "15", "--pixel-size", "3",
                 "--output", str(output)]) == 0
    result = read_map(output)
    model = read_atoms(path)
    density = result.data.astype(np.float64)
    assert density.sum() * 3.0**3 == pytest.approx(model.atomic_numbers.sum(), rel=1e-3)
    center = model_center(model.coordinates_in_angstroms, model.atomic_numbers)
    np.testing.assert_allclose(density.ravel() @ result.grid.points() / density.sum(), center, atol=0.01)


def test_simulate_images_with_given_poses_reproduces_a_random_run(model_path, tmp_path):
    first, second = tmp_path / "random", tmp_path / "given"
    assert _simulate_images(model_path, first, "--number", "4", "--max-shift", "6", "--seed", "5") == 0
    assert _simulate_images(model_path, second, "--poses", str(first / "particles.star")) == 0
    a, b = read_stack(first / "images.mrcs").data, read_stack(second / "images.mrcs").data
    assert a.shape == b.shape == (4, 40, 40)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * a.max())


def test_simulate_images_refuses_poses_without_angles(model_path, tmp_path, capsys):
    star = tmp_path / "no_angles.star"
    star.write_text("data_particles\n\nloop_\n_rlnImageName #1\n000001@x.mrcs\n")
    code = _simulate_images(model_path, tmp_path / "out", "--poses", str(star))
    assert code == 2
    assert "rlnAngleRot" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
