"""RELION 2D classification outputs: model.star + classes.mrcs, and the job's data.star."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.io.classes import ClassAverageSet, drop_empty_classes, read_class_averages, write_class_averages
from cryogmm.io.mrc import write_stack
from cryogmm.io.star import ctf_parameters, read_particles

JOB = "Class2D/job008"


def _blobs(k=4, n=16, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.indices((n, n)) - n // 2
    centres = rng.uniform(-3, 3, (k, 2))
    return np.stack([np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0) for cx, cy in centres]).astype(np.float32)


def _relion_job(project, images, distribution, pixel_size=3.54):
    """A Class2D job folder as RELION 3.1 writes it (model.star, classes.mrcs, data.star)."""
    job = project / JOB
    job.mkdir(parents=True)
    k = len(images)
    write_stack(job / "run_it025_classes.mrcs", images, pixel_size)
    rows = "".join(f"{i + 1:06d}@{JOB}/run_it025_classes.mrcs {d:.6f} {2.5 + i:.3f} {1.2:.3f} {12.0 + i:.2f} 1.000 "
                   "0.0 0.0\n" for i, d in enumerate(distribution))
    (job / "run_it025_model.star").write_text(
        "\n# version 30001\n\ndata_model_general\n\n"
        f"_rlnReferenceDimensionality 2\n_rlnDataDimensionality 2\n_rlnOriginalImageSize {images.shape[-1]}\n"
        f"_rlnCurrentResolution 11.5\n_rlnCurrentImageSize {images.shape[-1]}\n_rlnPaddingFactor 2\n"
        f"_rlnPixelSize {pixel_size}\n_rlnNrClasses {k}\n_rlnNrBodies 1\n_rlnNrGroups 1\n_rlnTau2FudgeFactor 2\n"
        "_rlnSigmaOffsetsAngst 5.5\n_rlnAveragePmax 0.61\n\n"
        "# version 30001\n\ndata_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
        "_rlnAccuracyRotations #3\n_rlnAccuracyTranslationsAngst #4\n_rlnEstimatedResolution #5\n"
        "_rlnOverallFourierCompleteness #6\n_rlnClassPriorOffsetX #7\n_rlnClassPriorOffsetY #8\n" + rows +
        "\n# version 30001\n\ndata_model_class_1\n\nloop_\n_rlnSpectralIndex #1\n_rlnResolution #2\n"
        "_rlnAngstromResolution #3\n_rlnSsnrMap #4\n0 0.000 999.0 10.0\n1 0.018 56.6 8.0\n\n"
        "# version 30001\n\ndata_model_groups\n\nloop_\n_rlnGroupNumber #1\n_rlnGroupName #2\n"
        "_rlnGroupNrParticles #3\n_rlnGroupScaleCorrection #4\n1 group_1 6 1.0\n")
    particle_rows = "".join(
        f"000{i + 1:03d}@Extract/job005/Micrographs/mic1.mrcs 1 {2000 + 10 * i:.1f} {1000 + 7 * i:.1f} "
        f"{15000 + 50 * i:.1f} {14500 + 50 * i:.1f} 33.0 {1 + i % k} {-170 + 60 * i:.2f} {0.5 * i:.2f} "
        f"{-0.3 * i:.2f} 1.0 0.0 1\n" for i in range(6))
    (job / "run_it025_data.star").write_text(
        "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n"
        "_rlnMicrographOriginalPixelSize #3\n_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\n"
        f"_rlnImagePixelSize #7\n_rlnImageSize #8\n_rlnImageDimensionality #9\nopticsGroup1 1 0.885 300.0 2.7 0.1 "
        f"{pixel_size} {images.shape[-1]} 2\n\n# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n"
        "_rlnOpticsGroup #2\n_rlnCoordinateX #3\n_rlnCoordinateY #4\n_rlnDefocusU #5\n_rlnDefocusV #6\n"
        "_rlnDefocusAngle #7\n_rlnClassNumber #8\n_rlnAnglePsi #9\n_rlnOriginXAngst #10\n_rlnOriginYAngst #11\n"
        "_rlnNormCorrection #12\n_rlnCtfBfactor #13\n_rlnGroupNumber #14\n" + particle_rows)
    return job


def test_relion_class2d_job(tmp_path, monkeypatch):
    images = _blobs(3)
    job = _relion_job(tmp_path, images, [0.5, 0.3, 0.2])
    monkeypatch.chdir(tmp_path / "Class2D")  # neither the project folder nor the job folder
    classes = read_class_averages(job / "run_it025_model.star")
    np.testing.assert_array_equal(classes.images, images)
    assert classes.pixel_size_in_angstroms == 3.54 and classes.current_resolution_in_angstroms == 11.5
    assert classes.names == tuple(f"00000{i}@{JOB}/run_it025_classes.mrcs" for i in (1, 2, 3))
    np.testing.assert_allclose(classes.distribution, [0.5, 0.3, 0.2])
    np.testing.assert_allclose(classes.resolution_in_angstroms, [12.0, 13.0, 14.0])
    np.testing.assert_allclose(classes.accuracy_rotations_in_degrees, [2.5, 3.5, 4.5])
    np.testing.assert_allclose(classes.accuracy_translations_in_angstroms, 1.2)
    np.testing.assert_array_equal(classes.class_numbers, [1, 2, 3])
    # the stack alone finds its model.star
    again = read_class_averages(job / "run_it025_classes.mrcs")
    np.testing.assert_allclose(again.distribution, classes.distribution)

    data = read_particles(job / "run_it025_data.star")
    assert data.pixel_size_in_angstroms == 3.54
    assert set(data.particles["rlnClassNumber"]) <= set(classes.class_numbers.tolist())
    np.testing.assert_allclose(data.particles["rlnAnglePsi"], [-170, -110, -50, 10, 70, 130])
    params = ctf_parameters(data)
    np.testing.assert_allclose(params.defocus_u_in_angstroms, 15000 + 50 * np.arange(6))
    assert set(params.voltage_in_kv) == {300.0} and set(params.amplitude_contrast) == {0.1}


def test_model_star_round_trip(tmp_path):
    images = _blobs(4)
    written = ClassAverageSet(images, 2.5, [f"c{i}" for i in range(4)], [0.4, 0.3, 0.2, 0.1],
                              [10.0, 11.0, 12.5, 20.0], tmp_path / "x", accuracy_rotations_in_degrees=[1, 2, 3, 4],
                              accuracy_translations_in_angstroms=[0.5, 0.6, 0.7, 0.8],
                              current_resolution_in_angstroms=9.5)
    stack = write_class_averages(tmp_path / "run_it010_model.star", written)
    assert stack == tmp_path / "run_it010_classes.mrcs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_it010_classes.mrcs", "run_it010_model.star"]
    read = read_class_averages(tmp_path / "run_it010_model.star")
    np.testing.assert_array_equal(read.images, images)
    assert read.pixel_size_in_angstroms == 2.5 and read.current_resolution_in_angstroms == 9.5
    assert read.names == tuple(f"00000{i}@run_it010_classes.mrcs" for i in (1, 2, 3, 4))
    for name in ("distribution", "resolution_in_angstroms", "accuracy_rotations_in_degrees",
                 "accuracy_translations_in_angstroms"):
        np.testing.assert_allclose(getattr(read, name), getattr(written, name), err_msg=name)


def test_drop_empty_classes(tmp_path):
    images = _blobs(5)
    images[3] = 0.0  # RELION writes an empty class as a zero image
    job = _relion_job(tmp_path, images, [0.5, 0.0, 0.3, 0.1, 0.1])
    classes = read_class_averages(job / "run_it025_model.star")
    kept = drop_empty_classes(classes)
    np.testing.assert_array_equal(kept.class_numbers, [1, 3, 5])
    np.testing.assert_array_equal(kept.images, images[[0, 2, 4]])
    assert kept.notes == (f"dropped class 2 (000002@{JOB}/run_it025_classes.mrcs): distribution 0 (no particles)",
                          f"dropped class 4 (000004@{JOB}/run_it025_classes.mrcs): all-zero image")
    assert drop_empty_classes(kept) is kept
    np.testing.assert_array_equal(drop_empty_classes(classes, min_distribution=0.1).class_numbers, [1, 3])


def test_stack_without_model_and_relion30_accuracy(tmp_path):
    images = _blobs(2)
    write_stack(tmp_path / "averages.mrcs", images, 4.0)
    alone = read_class_averages(tmp_path / "averages.mrcs")
    assert alone.pixel_size_in_angstroms == 4.0 and np.isnan(alone.distribution).all()
    assert drop_empty_classes(alone) is alone  # unknown distribution drops nothing
    write_stack(tmp_path / "old_classes.mrcs", images, 4.0)
    (tmp_path / "old_model.star").write_text(
        "data_model_general\n_rlnPixelSize 4.0\n\ndata_model_classes\nloop_\n_rlnReferenceImage\n"
        "_rlnClassDistribution\n_rlnAccuracyTranslations\n1@old_classes.mrcs 0.6 0.5\n2@old_classes.mrcs 0.4 1.5\n")
    old = read_class_averages(tmp_path / "old_model.star")
    np.testing.assert_allclose(old.accuracy_translations_in_angstroms, [2.0, 6.0])  # pixels in RELION 3.0
    assert np.isnan(old.resolution_in_angstroms).all()


def test_bad_class_files(tmp_path):
    images = _blobs(2)
    write_stack(tmp_path / "a_classes.mrcs", images, 3.0)
    (tmp_path / "particles_model.star").write_text("data_particles\nloop_\n_rlnImageName\n1@a_classes.mrcs\n")
    (tmp_path / "wrong_model.star").write_text(
        "data_model_general\n_rlnPixelSize 5.0\n\ndata_model_classes\nloop_\n_rlnReferenceImage\n"
        "_rlnClassDistribution\n1@a_classes.mrcs 1.0\n")
    (tmp_path / "empty_model.star").write_text(
        "data_model_general\n_rlnPixelSize 3.0\n\ndata_model_classes\nloop_\n_rlnReferenceImage\n"
        "_rlnClassDistribution\n1@a_classes.mrcs 0.0\n2@a_classes.mrcs 0.0\n")
    cases = [("particles_model.star", "no data_model_classes block"), ("wrong_model.star", "disagrees"),
             ("absent_model.star", "not found")]
    for name, words in cases:
        with pytest.raises(InputError, match=words):
            read_class_averages(tmp_path / name)
    with pytest.raises(InputError, match="every class is empty"):
        drop_empty_classes(read_class_averages(tmp_path / "empty_model.star"))
    with pytest.raises(ValueError):
        ClassAverageSet(images, 3.0, ["a"], [1.0, 0.0], [10.0, 10.0], tmp_path)
