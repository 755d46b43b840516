"""Input images for inference: an MRC stack, a STAR file of particles or class averages, or
point clouds (`.npz` of (N, 2) arrays in pixels, one per image) turned into count images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.mrc import read_stack
from cryogmm.io.paths import format_image_name, require_file

MIN_IMAGES = 3


@dataclass(frozen=True)
class InputImages:
    """images (P, n, n) float64 [y, x]; names: one RELION image name per image; counts: the images
    are integer counts (point clouds) and must not be rescaled."""

    images: np.ndarray
    pixel_size_in_angstroms: float
    names: list[str]
    path: Path
    counts: bool = False


def _point_clouds(path: Path, pixel_size_in_angstroms: float | None) -> InputImages:
    if pixel_size_in_angstroms is None:
        raise InputError(f"{path}: point clouds carry no pixel size; pass --pixel-size")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = sorted(data.files, key=lambda k: (len(k), k))
            clouds = [np.asarray(data[k], dtype=np.float64) for k in keys]
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz of point clouds ({exc})") from exc
    if not clouds or any(c.ndim != 2 or c.shape[1] != 2 or c.shape[0] == 0 for c in clouds):
        raise InputError(f"{path}: every array must be an (N, 2) point cloud in pixels")
    if any(not np.all(np.isfinite(c)) for c in clouds):
        raise InputError(f"{path}: point clouds contain NaN or infinite coordinates")
    # centre each cloud on its centre of mass (thesis 5.3.2) and bin it on a common square grid
    centred = [c - c.mean(0) for c in clouds]
    radius = max(float(np.abs(c).max()) for c in centred)
    box = 2 * int(np.ceil(radius)) + 4
    images = np.zeros((len(clouds), box, box))
    for i, c in enumerate(centred):
        ix = np.rint(c[:, 0]).astype(int) + box // 2
        iy = np.rint(c[:, 1]).astype(int) + box // 2
        np.add.at(images[i], (iy, ix), 1.0)
    names = [f"{k}@{path.name}" for k in keys]
    return InputImages(images, float(pixel_size_in_angstroms), names, path, counts=True)


def is_model_star(path: Path) -> bool:
    """A RELION 2D-classification `_model.star` (class averages), not a particle STAR."""
    with open(path, "rb") as handle:
        return b"data_model_classes" in handle.read(1 << 20)


def read_input_images(path: str | os.PathLike, pixel_size_in_angstroms: float | None = None) -> InputImages:
    """Read images for `abinitio`/`reconstruct`: `.mrcs`/`.mrc` stack, `.star` (particles or class
    averages, or a RELION 2D-classification `_model.star` with its `_classes.mrcs`, empty classes
    dropped), or `.npz` clouds.

    Refuses (InputError): missing files, non-square images, fewer than 3 images, NaN/inf,
    all-zero images.
    """
    path = Path(path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        result = _point_clouds(path, pixel_size_in_angstroms)
    elif suffix == ".star" and is_model_star(path):
        from cryogmm.io.classes import drop_empty_classes, read_class_averages

        classes = drop_empty_classes(read_class_averages(path, pixel_size_in_angstroms=pixel_size_in_angstroms))
        result = InputImages(np.asarray(classes.images, dtype=np.float64), classes.pixel_size_in_angstroms,
                             list(classes.names), path)
    elif suffix == ".star":
        from cryogmm.io.star import load_images, read_particles  # here: pandas is 0.25 s of start-up

        table = read_particles(path)
        images, pixel = load_images(table, pixel_size_in_angstroms=pixel_size_in_angstroms)
        result = InputImages(images.astype(np.float64), pixel,
                             table.particles["rlnImageName"].astype(str).tolist(), path)
    else:
        stack = read_stack(path, pixel_size_in_angstroms)
        names = [format_image_name(i, str(path)) for i in range(stack.data.shape[0])]
        result = InputImages(stack.data.astype(np.float64), stack.voxel_size_in_angstroms, names, path)
    images = result.images
    if images.shape[1] != images.shape[2]:
        raise InputError(f"{path}: images are {images.shape[2]} x {images.shape[1]} pixels; they must be "
                         "square (pad or crop them to a square box)")
    if images.shape[0] < MIN_IMAGES:
        raise InputError(f"{path}: {images.shape[0]} image(s); at least {MIN_IMAGES} are needed to infer "
                         "orientations (25 or more work best)")
    empty = np.flatnonzero(~np.any(images.reshape(images.shape[0], -1), axis=1))
    if empty.size:
        raise InputError(f"{path}: image(s) {', '.join(str(i + 1) for i in empty[:5])} are all zero; "
                         "remove them")
    return result


OPTICS_COPIED = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")


def optics_values(path: str | os.PathLike) -> dict:
    """Voltage, Cs and amplitude contrast of the input, to copy into a STAR file cryogmm writes:
    from a particle STAR's first row, or for a RELION `_model.star` from the `_data.star` of the
    same iteration beside it; those it does not hold are left out (stacks, point clouds and class
    averages carry no microscope values, and none are invented). RELION 3.1 reads a STAR file only
    with rlnVoltage and rlnSphericalAberration: add the microscope's values if RELION is to read it."""
    path = Path(path)
    if path.suffix.lower() != ".star":
        return {}
    if is_model_star(path):
        path = path.with_name(path.name.replace("_model.star", "_data.star"))
        if not path.name.endswith("_data.star") or not path.is_file():
            return {}
    from cryogmm.io.star import read_particles

    particles = read_particles(path).particles
    return {key: float(particles[key].iloc[0]) for key in OPTICS_COPIED if key in particles.columns}
