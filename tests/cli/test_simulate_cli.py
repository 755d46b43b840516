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
from cryogmm.io.star import columns_to_poses, read_particles
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
    assert _listing(tmp_path) == ["map.mrc", "map_slices.png", "tiny.pdb"]  # the central slices beside the map


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
                                "reference_slices.png", "run.log", "settings.json"]
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
    assert _listing(again) == ["images.mrcs", "particles.star", "reference.mrc", "reference_slices.png", "run.log",
                               "settings.json"]


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


# --- CTF, defocus groups and classes -------------------------------------------------------------

CLASS_BOX, CLASS_PIXEL, CLASS_RESOLUTION = 32, 2.0, 15.0  # atom sigma 1.7 px


def _simulate_classes(model_path, output, *extra):
    return main(["simulate-images", str(model_path), "--box", str(CLASS_BOX), "--pixel-size", str(CLASS_PIXEL),
                 "--resolution", str(CLASS_RESOLUTION), "--max-shift", "4", "--output", str(output), *extra])


def _pearson(a, b, mask):
    return float(np.corrcoef(np.ravel(a[..., mask]), np.ravel(b[..., mask]))[0, 1])


def _disc(n, margin=2):
    y, x = np.mgrid[:n, :n] - n // 2
    return x * x + y * y < (n // 2 - margin) ** 2


def test_classes_with_ctf_write_poses_ctf_classes_and_settings(model_path, tmp_path):
    from cryogmm.io.star import ctf_parameters
    from cryogmm.simulate import ctf_particle_images

    output = tmp_path / "run"
    assert _simulate_classes(model_path, output, "--classes", "3", "--defocus-range", "0.5", "1.5",
                             "--defocus-groups", "3", "--particles-per-group", "2", "--astigmatism", "300",
                             "--snr", "2", "--seed", "5") == 0
    assert _listing(output) == ["class_poses.star", "class_projections.mrcs", "clean_images.mrcs", "images.mrcs",
                                "particles.star", "reference.mrc", "reference_slices.png", "run.log", "settings.json"]
    table = read_particles(output / "particles.star")
    particles = table.particles
    assert len(particles) == 18 and read_stack(output / "images.mrcs").data.shape == (18, 32, 32)
    np.testing.assert_array_equal(particles["rlnClassNumber"], np.repeat([1, 2, 3], 6))
    # CTF columns round trip, with every defocus value twice per class
    ctf = ctf_parameters(table)
    np.testing.assert_allclose(ctf.defocus_u_in_angstroms - ctf.defocus_v_in_angstroms, 300.0)
    means = ctf.mean_defocus_in_angstroms.reshape(3, 6)
    np.testing.assert_allclose(np.sort(means, axis=1), np.tile(np.repeat([5000.0, 10000.0, 15000.0], 2), (3, 1)))
    assert np.all((ctf.defocus_angle_in_degrees >= 0) & (ctf.defocus_angle_in_degrees < 180))
    np.testing.assert_allclose(ctf.voltage_in_kv, 300.0)
    # the class poses: rot and tilt shared within a class, psi 0 and no shift for the projections
    poses = read_particles(output / "class_poses.star").particles
    assert poses["rlnImageName"].tolist() == [f"00000{i}@class_projections.mrcs" for i in (1, 2, 3)]
    np.testing.assert_array_equal(poses["rlnClassNumber"], [1, 2, 3])
    np.testing.assert_array_equal(poses[["rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]], 0.0)
    for name in ("rlnAngleRot", "rlnAngleTilt"):
        np.testing.assert_allclose(particles[name].to_numpy().reshape(3, 6), np.repeat(poses[name].to_numpy()[:, None], 6, 1))
    assert read_stack(output / "class_projections.mrcs").data.shape == (3, 32, 32)
    settings = json.loads((output / "settings.json").read_text())["settings"]
    assert (settings["defocus_range"], settings["defocus_groups"], settings["astigmatism"], settings["classes"],
            settings["particles_per_group"], settings["particles_per_class"], settings["number"]) == (
        [0.5, 1.5], 3, 300.0, 3, 2, 6, 18)
    assert settings["polarity"] == -1 and "bright" in settings["particle_contrast"]
    assert settings["defocus_range_in_angstroms"] == [5000.0, 15000.0]
    # the clean images are the exact projections with the STAR poses under -CTF (bright particles)
    model = read_atoms(model_path)
    coordinates = model.coordinates_in_angstroms - model_center(model.coordinates_in_angstroms, model.atomic_numbers)
    rotations, shifts = columns_to_poses(particles)
    exact = ctf_particle_images(coordinates, model.atomic_numbers, rotations, shifts, CLASS_RESOLUTION, CLASS_BOX,
                                CLASS_PIXEL, ctf, polarity=-1, dtype=np.float64)
    clean = read_stack(output / "clean_images.mrcs").data
    assert np.abs(clean - exact).max() < 1e-4 * np.abs(exact).max()  # interpolated from the class projections
    assert np.abs(clean + exact).max() > 1.0 * np.abs(exact).max()  # the dark polarity would not match


def test_class_averages_of_simulated_particles_are_the_class_projections(model_path, tmp_path):
    """Noise-free, CTF-free particles aligned with their STAR poses average to the class projections."""
    from cryogmm.preprocess.class_average import class_averages

    output = tmp_path / "run"
    assert _simulate_classes(model_path, output, "--classes", "3", "--particles-per-class", "5", "--seed", "2") == 0
    assert _listing(output) == ["class_poses.star", "class_projections.mrcs", "images.mrcs", "particles.star",
                                "reference.mrc", "reference_slices.png", "run.log", "settings.json"]
    particles = read_particles(output / "particles.star").particles
    assert "rlnDefocusU" not in particles.columns
    images = read_stack(output / "images.mrcs").data
    truth = read_stack(output / "class_projections.mrcs").data
    _, shifts = columns_to_poses(particles)
    result = class_averages(images, particles["rlnAnglePsi"], shifts, particles["rlnClassNumber"], CLASS_PIXEL)
    np.testing.assert_array_equal(result.class_ids, [1, 2, 3])
    disc = _disc(CLASS_BOX)
    for c in range(3):
        assert _pearson(result.averages[c], truth[c], disc) > 0.99999  # measured 0.9999998
    # with the in-plane angles negated (a rotation sign error) the averages are blurred
    wrong = class_averages(images, -particles["rlnAnglePsi"], shifts, particles["rlnClassNumber"], CLASS_PIXEL)
    assert min(_pearson(wrong.averages[c], truth[c], disc) for c in range(3)) < 0.99


def test_group_averages_of_simulated_ctf_particles_follow_the_group_ctfs(model_path, tmp_path):
    """Noise-free CTF particles: each defocus-group average is -f_g * (class projection)."""
    from cryogmm.io.star import ctf_parameters
    from cryogmm.preprocess.class_average import class_averages

    output = tmp_path / "run"
    assert _simulate_classes(model_path, output, "--classes", "2", "--defocus-range", "0.6", "1.2",
                             "--defocus-groups", "3", "--particles-per-group", "3", "--astigmatism", "400",
                             "--seed", "3") == 0
    table = read_particles(output / "particles.star")
    particles = table.particles
    images = read_stack(output / "images.mrcs").data
    truth = read_stack(output / "class_projections.mrcs").data.astype(np.float64)
    _, shifts = columns_to_poses(particles)
    padded = 2 * CLASS_BOX  # the simulation's linear convolution: compare in a padded box
    result = class_averages(images, particles["rlnAnglePsi"], shifts, particles["rlnClassNumber"], CLASS_PIXEL,
                            ctf_parameters=ctf_parameters(table), n_defocus_groups=3, ctf_box=padded)
    np.testing.assert_array_equal(result.group_weights, np.full((2, 3), 3.0))
    start = padded // 2 - CLASS_BOX // 2
    # CTF particles have signal up to the box edge: undoing a shift of up to 2 px wraps the edge
    # around, and the rotation reaches 2 px further; compare inside a disc 5 px from the edge
    disc = _disc(CLASS_BOX, margin=5)
    for c in range(2):
        y = np.zeros((padded, padded))
        y[start:start + CLASS_BOX, start:start + CLASS_BOX] = truth[c]
        for g in range(3):
            model = result.polarity * np.fft.ifft2(result.group_ctfs[c, g] * np.fft.fft2(y)).real
            model = model[start:start + CLASS_BOX, start:start + CLASS_BOX]
            z = result.group_images[c, g]
            error = np.abs(z - model)[disc].max() / np.abs(z).max()
            assert error < 2e-3, (c, g, error)  # measured 0.34e-3 to 0.80e-3


@pytest.mark.parametrize("extra, message", [
    (["--defocus-range", "0", "2"], "--defocus-range"),
    (["--defocus-range", "-1", "2"], "--defocus-range"),
    (["--defocus-range", "3", "1"], "--defocus-range"),
    (["--defocus-range", "nan", "1"], "--defocus-range"),
    (["--defocus-groups", "3"], "--defocus-range"),
    (["--astigmatism", "100"], "--defocus-range"),
    (["--defocus-range", "1", "2", "--astigmatism", "-5"], "--astigmatism"),
    (["--defocus-range", "1", "2", "--astigmatism", "30000"], "--astigmatism"),
    (["--defocus-range", "1", "2", "--defocus-groups", "0"], "--defocus-groups"),
    (["--classes", "3"], "--particles-per-class"),
    (["--classes", "0", "--particles-per-class", "2"], "--classes"),
    (["--classes", "3", "--particles-per-class", "0"], "--particles-per-class"),
    (["--particles-per-class", "4"], "--classes"),
    (["--particles-per-group", "4"], "--classes"),
    (["--classes", "2", "--particles-per-group", "4"], "--defocus-groups"),
    (["--classes", "2", "--particles-per-class", "4", "--particles-per-group", "2",
      "--defocus-range", "1", "2", "--defocus-groups", "2"], "exactly one"),
    (["--classes", "2", "--particles-per-class", "4", "--number", "8"], "--number"),
])
def test_ctf_and_class_options_are_checked(model_path, tmp_path, capsys, extra, message):
    assert _simulate_classes(model_path, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and message in err[0], err
    assert _listing(tmp_path) == ["tiny.pdb"]


def test_uniform_defocus_without_classes(model_path, tmp_path):
    output = tmp_path / "run"
    assert _simulate_classes(model_path, output, "--number", "40", "--defocus-range", "0.8", "3.0",
                             "--seed", "4") == 0
    particles = read_particles(output / "particles.star").particles
    assert len(particles) == 40 and "rlnClassNumber" not in particles.columns
    defocus = particles["rlnDefocusU"].to_numpy()
    np.testing.assert_array_equal(defocus, particles["rlnDefocusV"])
    np.testing.assert_array_equal(particles["rlnDefocusAngle"], 0.0)
    assert defocus.min() >= 8000 and defocus.max() <= 30000 and np.unique(defocus).size == 40
    assert "class_projections.mrcs" not in _listing(output)
    # the poses are those of the CTF-free run with the same seed
    again = tmp_path / "again"
    assert _simulate_classes(model_path, again, "--number", "40", "--seed", "4") == 0
    plain = read_particles(again / "particles.star").particles
    np.testing.assert_allclose(particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]],
                               plain[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]])
