"""RELION 2D classification outputs: class averages with their model.star.

A RELION Class2D job writes, per iteration, `run_it025_classes.mrcs` (the K class averages),
`run_it025_model.star` and `run_it025_data.star`. The model file holds
- `data_model_general`: `rlnPixelSize` (Å), `rlnOriginalImageSize` (pixels),
  `rlnCurrentResolution` (Å), `rlnNrClasses`, ...;
- `data_model_classes`: one row per class, `rlnReferenceImage` (`000001@.../run_it025_classes.mrcs`),
  `rlnClassDistribution` (fraction of the particles), `rlnAccuracyRotations` (degrees),
  `rlnAccuracyTranslationsAngst` (Å; `rlnAccuracyTranslations` in pixels before RELION 3.1) and
  `rlnEstimatedResolution` (Å).
The data file is a particle STAR file (`cryogmm.io.star.read_particles`, `ctf_parameters`) whose
rows carry `rlnClassNumber` (1-based), `rlnAnglePsi`, `rlnOriginXAngst/YAngst` and the CTF.

RELION class averages are CTF-corrected (Wiener-like) and usually bright on a zero-mean background.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryogmm.errors import InputError
from cryogmm.io.mrc import atomic_output, read_stack, write_stack
from cryogmm.io.paths import require_file
from cryogmm.io.star import ParticleTable, format_image_name, load_images

logger = logging.getLogger(__name__)

NOT_ESTIMATED_IN_ANGSTROMS = 999.0  # what RELION writes for a resolution it has not estimated


@dataclass(frozen=True, eq=False)
class ClassAverageSet:
    """K class averages and what RELION's model.star says about them.

    Attributes
    ----------
    images : (K, n, n) float32, read-only
    pixel_size_in_angstroms : float
    names : tuple of K str, the `rlnReferenceImage` of each class (`000003@run_it025_classes.mrcs`)
    distribution : (K,) fraction of the particles in each class (NaN when unknown)
    resolution_in_angstroms : (K,) `rlnEstimatedResolution` (999 = not estimated; NaN when unknown)
    path : Path of the model.star (or of the stack when read without one)
    class_numbers : (K,) 1-based class numbers, as `rlnClassNumber` of the particles (default 1..K)
    accuracy_rotations_in_degrees, accuracy_translations_in_angstroms : (K,) (NaN when unknown)
    current_resolution_in_angstroms : float, `rlnCurrentResolution` of the iteration (NaN when unknown)
    notes : what was done to the set (e.g. classes dropped), one line each
    """

    images: np.ndarray
    pixel_size_in_angstroms: float
    names: tuple[str, ...]
    distribution: np.ndarray
    resolution_in_angstroms: np.ndarray
    path: Path
    class_numbers: np.ndarray | None = None
    accuracy_rotations_in_degrees: np.ndarray | None = None
    accuracy_translations_in_angstroms: np.ndarray | None = None
    current_resolution_in_angstroms: float = float("nan")
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        images = np.array(self.images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"class averages must be a (K, n, n) stack, got shape {images.shape}")
        k = images.shape[0]
        images.setflags(write=False)
        object.__setattr__(self, "images", images)
        pixel_size = float(self.pixel_size_in_angstroms)
        if not np.isfinite(pixel_size) or pixel_size <= 0:
            raise ValueError(f"pixel size {self.pixel_size_in_angstroms} Å must be positive")
        object.__setattr__(self, "pixel_size_in_angstroms", pixel_size)
        names = tuple(str(n) for n in self.names)
        if len(names) != k:
            raise ValueError(f"{len(names)} names for {k} class averages")
        object.__setattr__(self, "names", names)
        defaults = {"class_numbers": np.arange(1, k + 1), "accuracy_rotations_in_degrees": np.full(k, np.nan),
                    "accuracy_translations_in_angstroms": np.full(k, np.nan)}
        for name in ("distribution", "resolution_in_angstroms", "class_numbers", "accuracy_rotations_in_degrees",
                     "accuracy_translations_in_angstroms"):
            value = getattr(self, name)
            value = defaults[name] if value is None else value
            array = np.array(value, dtype=np.int64 if name == "class_numbers" else np.float64).reshape(-1)
            if array.size != k:
                raise ValueError(f"{name} has {array.size} values for {k} class averages")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "current_resolution_in_angstroms", float(self.current_resolution_in_angstroms))
        object.__setattr__(self, "notes", tuple(self.notes))

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, keep, note: str | None = None) -> "ClassAverageSet":
        """The classes `keep` (indices or a mask), with `note` appended to the notes."""
        keep = np.arange(len(self))[keep]
        per_class = {name: getattr(self, name)[keep] for name in (
            "images", "distribution", "resolution_in_angstroms", "class_numbers",
            "accuracy_rotations_in_degrees", "accuracy_translations_in_angstroms")}
        notes = self.notes + ((note,) if note else ())
        return dataclasses.replace(self, names=tuple(self.names[i] for i in keep), notes=notes, **per_class)


def _general_value(general: dict, name: str) -> float:
    try:
        return float(general.get(name, np.nan))
    except (TypeError, ValueError):
        return float("nan")


def _model_blocks(path: Path) -> tuple[dict, pd.DataFrame]:
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{path}: not a readable STAR file ({reason}); check the file") from exc
    classes = blocks.get("model_classes")
    if not isinstance(classes, pd.DataFrame) or "rlnReferenceImage" not in classes.columns or len(classes) == 0:
        raise InputError(f"{path}: no data_model_classes block with rlnReferenceImage; pass the "
                         "run_itNNN_model.star of a RELION 2D classification")
    general = blocks.get("model_general")
    if isinstance(general, pd.DataFrame):  # a general block written as a one-row loop
        general = general.iloc[0].to_dict() if len(general) else {}
    return dict(general or {}), classes


def _column(classes: pd.DataFrame, name: str, path: Path, scale: float = 1.0) -> np.ndarray:
    if name not in classes.columns:
        return np.full(len(classes), np.nan)
    values = pd.to_numeric(classes[name], errors="coerce").to_numpy(dtype=np.float64) * scale
    if np.isnan(values).any():
        row = int(np.flatnonzero(np.isnan(values))[0])
        raise InputError(f"{path}: {name} is {classes[name].iloc[row]!r} (not a number) in class {row + 1}; fix the file")
    return values


def read_class_averages(path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                        pixel_size_in_angstroms: float | None = None) -> ClassAverageSet:
    """Read RELION 2D class averages: a `*_model.star`, or a `*_classes.mrcs` (with its model.star
    next to it when there is one).

    Parameters
    ----------
    path : the model.star, or the classes stack
    data_dir : folder holding the classes stack (default: as in the model file, then next to it)
    pixel_size_in_angstroms : overrides `rlnPixelSize` and the stack header

    Returns
    -------
    ClassAverageSet, classes in model.star order. Read without a model.star, distribution and
    resolutions are NaN and the pixel size is the header's.

    Raises
    ------
    InputError
        Missing or unreadable files, no `data_model_classes` block, a stack that lacks an image,
        or no pixel size.
    """
    path = Path(path)
    require_file(path)
    if path.suffix.lower() in (".mrcs", ".mrc"):
        model = path.with_name(path.name.replace("_classes.mrcs", "_model.star"))
        if model == path or not model.is_file():
            stack = read_stack(path, pixel_size_in_angstroms)
            k = stack.data.shape[0]
            logger.info("%s: no model.star next to it; class distribution and resolution unknown", path)
            return ClassAverageSet(stack.data, stack.voxel_size_in_angstroms,
                                   [format_image_name(i, path.name) for i in range(k)], np.full(k, np.nan),
                                   np.full(k, np.nan), path)
        path = model
    general, classes = _model_blocks(path)
    names = classes["rlnReferenceImage"].astype(str).tolist()
    star_pixel_size = _general_value(general, "rlnPixelSize")
    frame = pd.DataFrame({"rlnImageName": names})
    if np.isfinite(star_pixel_size) and star_pixel_size > 0:
        frame["rlnImagePixelSize"] = star_pixel_size  # checked against the stack header
    images, pixel_size = load_images(ParticleTable(frame, None, None, path), data_dir,
                                     pixel_size_in_angstroms=pixel_size_in_angstroms)
    if "rlnAccuracyTranslationsAngst" in classes.columns:
        translations = _column(classes, "rlnAccuracyTranslationsAngst", path)
    else:  # RELION 3.0: in pixels
        translations = _column(classes, "rlnAccuracyTranslations", path, pixel_size)
    return ClassAverageSet(images, pixel_size, names, _column(classes, "rlnClassDistribution", path),
                           _column(classes, "rlnEstimatedResolution", path), path,
                           accuracy_rotations_in_degrees=_column(classes, "rlnAccuracyRotations", path),
                           accuracy_translations_in_angstroms=translations,
                           current_resolution_in_angstroms=_general_value(general, "rlnCurrentResolution"))


def drop_empty_classes(classes: ClassAverageSet, *, min_distribution: float = 0.0) -> ClassAverageSet:
    """Leave out classes that hold no particles or no image.

    A class is dropped when its distribution is <= `min_distribution` (0: empty; RELION leaves
    such classes in its output) or when its image is constant (all zero, as RELION writes for an
    empty class). Each dropped class gets a line in `notes`; class numbers are kept, so particles'
    `rlnClassNumber` still point at the right class.
    """
    images = classes.images
    flat = images.reshape(len(classes), -1)
    constant = flat.max(axis=1) == flat.min(axis=1)
    empty = np.nan_to_num(classes.distribution, nan=np.inf) <= min_distribution
    notes = []
    for i in np.flatnonzero(constant | empty):
        why = []
        if empty[i]:
            why.append(f"distribution {classes.distribution[i]:g}"
                       + (" (no particles)" if classes.distribution[i] == 0 else f" <= {min_distribution:g}"))
        if constant[i]:
            why.append("all-zero image" if flat[i, 0] == 0 else f"constant image ({flat[i, 0]:g})")
        notes.append(f"dropped class {classes.class_numbers[i]} ({classes.names[i]}): {', '.join(why)}")
    if not notes:
        return classes
    if (constant | empty).all():
        raise InputError(f"{classes.path}: every class is empty ({'; '.join(notes[:3])}...); "
                         "pass the model.star of a later iteration or another job")
    for note in notes:
        logger.info("%s: %s", classes.path, note)
    kept = classes.subset(~(constant | empty))
    return dataclasses.replace(kept, notes=classes.notes + tuple(notes))


def write_class_averages(model_path: str | os.PathLike, classes: ClassAverageSet) -> Path:
    """Write class averages as RELION does: `NAME_model.star` and `NAME_classes.mrcs` next to it.

    The model file has `data_model_general` (`rlnPixelSize`, `rlnOriginalImageSize`,
    `rlnCurrentResolution`, `rlnNrClasses`, `rlnReferenceDimensionality` 2) and
    `data_model_classes` (`rlnReferenceImage` naming the stack next to it, distribution,
    accuracies, estimated resolution); unknown values are written as RELION does (0 for the
    distribution, 999 for accuracies and resolutions). Both files are written atomically.

    Returns
    -------
    Path of the stack.
    """
    model_path = Path(model_path)
    if not model_path.name.endswith("_model.star"):
        raise ValueError(f"{model_path}: the model file name must end in _model.star")
    stack_path = model_path.with_name(model_path.name[: -len("_model.star")] + "_classes.mrcs")
    k = len(classes)

    def known(values, fill):
        return np.where(np.isfinite(values), values, fill)

    general = {"rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2,
               "rlnOriginalImageSize": int(classes.images.shape[-1]),
               "rlnCurrentResolution": float(known(classes.current_resolution_in_angstroms, NOT_ESTIMATED_IN_ANGSTROMS)),
               "rlnPixelSize": classes.pixel_size_in_angstroms, "rlnNrClasses": k}
    table = pd.DataFrame({
        "rlnReferenceImage": [format_image_name(i, stack_path.name) for i in range(k)],
        "rlnClassDistribution": known(classes.distribution, 0.0),
        "rlnAccuracyRotations": known(classes.accuracy_rotations_in_degrees, NOT_ESTIMATED_IN_ANGSTROMS),
        "rlnAccuracyTranslationsAngst": known(classes.accuracy_translations_in_angstroms, NOT_ESTIMATED_IN_ANGSTROMS),
        "rlnEstimatedResolution": known(classes.resolution_in_angstroms, NOT_ESTIMATED_IN_ANGSTROMS),
    })
    write_stack(stack_path, classes.images, classes.pixel_size_in_angstroms)
    with atomic_output(model_path) as tmp:
        starfile.write({"model_general": general, "model_classes": table}, tmp)
    return stack_path


def image_names_relative_to(table: ParticleTable, folder: str | os.PathLike,
                            data_dir: str | os.PathLike | None = None) -> list[str]:
    """The particles' `rlnImageName`s rewritten so that a STAR file in `folder` finds the same stacks."""
    from cryogmm.io.star import resolve_image_path, split_image_name

    folder = Path(folder).resolve()
    resolved: dict[str, str] = {}
    names = []
    for name in table.particles["rlnImageName"].astype(str):
        index, stack = split_image_name(name)
        if stack not in resolved:
            path = resolve_image_path(stack, table.path, data_dir).resolve()
            resolved[stack] = os.path.relpath(path, folder)
        names.append(format_image_name(index, resolved[stack]))
    return names


def write_classification(folder: str | os.PathLike, table: ParticleTable, *, classes: np.ndarray,
                         distribution: np.ndarray, resolution_in_angstroms: np.ndarray,
                         accuracy_rotations_in_degrees: np.ndarray, accuracy_translations_in_angstroms: np.ndarray,
                         current_resolution_in_angstroms: float, pixel_size_in_angstroms: float,
                         tau2_fudge: float, particle_columns: dict, data_dir: str | os.PathLike | None = None,
                         prefix: str = "run") -> dict[str, Path]:
    """A 2D classification's outputs in RELION's layout, which `read_class_averages` and RELION read.

    `folder/{prefix}_classes.mrcs` (K class images), `{prefix}_model.star` (data_model_general and
    data_model_classes; rlnReferenceImage names the stack next to it) and `{prefix}_data.star` (the
    input particles with `particle_columns` set, e.g. rlnClassNumber, rlnAnglePsi,
    rlnOriginXAngst/YAngst; their 3D angles rlnAngleRot/Tilt dropped, image names rewritten relative
    to `folder`). Unestimated resolutions (inf) are written as 999, as RELION does.
    """
    folder = Path(folder)
    k, n = classes.shape[0], classes.shape[-1]
    stack_name = f"{prefix}_classes.mrcs"
    paths = {"classes": folder / stack_name, "model": folder / f"{prefix}_model.star",
             "data": folder / f"{prefix}_data.star"}
    write_stack(paths["classes"], classes, pixel_size_in_angstroms)

    def finite(values):
        values = np.asarray(values, dtype=np.float64)
        return np.where(np.isfinite(values), values, NOT_ESTIMATED_IN_ANGSTROMS)

    current = float(current_resolution_in_angstroms)
    general = {"rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2, "rlnOriginalImageSize": n,
               "rlnCurrentResolution": current if np.isfinite(current) else NOT_ESTIMATED_IN_ANGSTROMS,
               "rlnPixelSize": float(pixel_size_in_angstroms), "rlnNrClasses": k, "rlnNrBodies": 1,
               "rlnNrGroups": 1, "rlnTau2FudgeFactor": float(tau2_fudge)}
    model_classes = pd.DataFrame({
        "rlnReferenceImage": [format_image_name(i, stack_name) for i in range(k)],
        "rlnClassDistribution": np.asarray(distribution, dtype=np.float64),
        "rlnAccuracyRotations": finite(accuracy_rotations_in_degrees),
        "rlnAccuracyTranslationsAngst": finite(accuracy_translations_in_angstroms),
        "rlnEstimatedResolution": finite(resolution_in_angstroms)})
    with atomic_output(paths["model"]) as tmp:
        starfile.write({"model_general": general, "model_classes": model_classes}, tmp)
    particles = table.particles.copy()
    particles = particles.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnOriginX", "rlnOriginY")
                                        if c in particles.columns])
    particles["rlnImageName"] = image_names_relative_to(table, folder, data_dir)
    for name, values in particle_columns.items():
        particles[name] = np.asarray(values)
    from cryogmm.io.star import write_particles

    if table.optics is None:
        write_particles(paths["data"], particles, {"pixel_size_in_angstroms": float(pixel_size_in_angstroms),
                                                   "image_size": n})
    else:
        merged = [c for c in table.optics.columns if c != "rlnOpticsGroup" and c in particles.columns]
        with atomic_output(paths["data"]) as tmp:
            starfile.write({"optics": table.optics, "particles": particles.drop(columns=merged)}, tmp)
    return paths


def write_selected_classes(folder: str | os.PathLike, table: ParticleTable, kept: np.ndarray, class_index: np.ndarray,
                           *, classes: np.ndarray, distribution: np.ndarray, resolution_in_angstroms: np.ndarray,
                           accuracy_rotations_in_degrees: np.ndarray, accuracy_translations_in_angstroms: np.ndarray,
                           particle_columns: dict, prefix: str = "selected", **options) -> dict[str, Path]:
    """The kept classes of a classification and their particles, in the layout of `write_classification`.

    `kept` (K,) bool selects classes; `class_index` (P,) is each particle's class (0-based). The
    kept classes are renumbered 1..K' in their order, in `{prefix}_model.star` and in the
    particles' rlnClassNumber of `{prefix}_data.star`, which hold only the particles of kept classes.
    """
    kept = np.asarray(kept, dtype=bool)
    class_index = np.asarray(class_index)
    members = kept[class_index]
    new_numbers = np.cumsum(kept)  # class c (0-based, kept) -> its 1-based number among the kept
    subset = dataclasses.replace(table, particles=table.particles.loc[members].reset_index(drop=True))
    columns = {name: np.asarray(values)[members] for name, values in particle_columns.items()}
    columns["rlnClassNumber"] = new_numbers[class_index[members]]
    return write_classification(
        folder, subset, classes=np.asarray(classes)[kept], distribution=np.asarray(distribution)[kept],
        resolution_in_angstroms=np.asarray(resolution_in_angstroms)[kept],
        accuracy_rotations_in_degrees=np.asarray(accuracy_rotations_in_degrees)[kept],
        accuracy_translations_in_angstroms=np.asarray(accuracy_translations_in_angstroms)[kept],
        particle_columns=columns, prefix=prefix, **options)
