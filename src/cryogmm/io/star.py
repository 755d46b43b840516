"""RELION particle STAR files (via `starfile`): tables, image names, image loading and poses.

Written files use the RELION 3.1 layout: a `data_optics` block with one optics group and a
`data_particles` block whose rows carry `rlnOpticsGroup`. Reading also accepts the older
single-block files, where the optics columns (voltage, magnification, ...) sit in every row.

CTF (CONVENTIONS.md): `ctf_parameters` reads `rlnDefocusU/V` (Å), `rlnDefocusAngle` (degrees),
`rlnVoltage` (kV), `rlnSphericalAberration` (mm), `rlnAmplitudeContrast` and the optional
`rlnPhaseShift` (degrees), `rlnCtfBfactor` (Å^2) and `rlnCtfScalefactor`; `ctf_columns` writes them.

cryoSPARC: STAR files converted by pyem's `csparc2star.py` are ordinary RELION files; their image
names may point at `.mrc` stacks and carry cryoSPARC's `>` prefix (`000001@>J12/extract/x.mrc`,
"relative to the exported job"), which is dropped. The pixel size then often comes only from
`rlnMagnification` and `rlnDetectorPixelSize`. cryoSPARC's own `.cs` files (numpy record arrays)
are read by `read_cryosparc` (also through `read_particles`) into the same RELION columns.

Poses (CONVENTIONS.md): `rlnAngleRot, rlnAngleTilt, rlnAnglePsi` (degrees, ZYZ) give the matrix
A of `cryogmm.geometry.so3`; `rlnOriginXAngst, rlnOriginYAngst` (Å) is the shift that centres the
particle, so a particle whose centre sits at `+t` in the image has origin `-t`. Here `shifts`
always means `t`, the particle centre position relative to the box centre, in Å.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters
from cryogmm.geometry.so3 import euler_to_matrix, matrix_to_euler
from cryogmm.io.mrc import _check_finite, _decimal, _looks_like_volume, _open_mrc, atomic_output
from cryogmm.io.paths import format_image_name, require_file  # noqa: F401 (format_image_name: API)

logger = logging.getLogger(__name__)

# header pixel sizes that tools write when they do not know the real one (cryoDRGN, EMAN, ...)
PLACEHOLDER_HEADER_PIXEL_SIZES = (0.0, 1.0)
PIXEL_SIZE_TOLERANCE = 0.01  # relative disagreement between STAR and MRC header that is refused

_OPTICS_NAMES = {
    "group": "rlnOpticsGroup",
    "name": "rlnOpticsGroupName",
    "pixel_size_in_angstroms": "rlnImagePixelSize",
    "image_size": "rlnImageSize",
    "dimensionality": "rlnImageDimensionality",
    "voltage_in_kv": "rlnVoltage",
    "spherical_aberration_in_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}
_REQUIRED_OPTICS = ("rlnImagePixelSize", "rlnImageSize")
# written when known (RELION 3.1 itself needs the first two to read a file)
_MICROSCOPE_OPTICS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")

# RELION CTF column -> CTFParameters field (see ctf_parameters for which are required)
CTF_COLUMNS = {
    "rlnDefocusU": "defocus_u_in_angstroms",
    "rlnDefocusV": "defocus_v_in_angstroms",
    "rlnDefocusAngle": "defocus_angle_in_degrees",
    "rlnVoltage": "voltage_in_kv",
    "rlnSphericalAberration": "spherical_aberration_in_mm",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnPhaseShift": "phase_shift_in_degrees",
    "rlnCtfBfactor": "bfactor_in_angstroms2",
    "rlnCtfScalefactor": "scale",
}
_DEFOCUS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_REQUIRED_CTF = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                 "rlnAmplitudeContrast")


@dataclass(frozen=True, eq=False)
class ParticleTable:
    """Particles read from a STAR file.

    Parameters
    ----------
    particles : DataFrame
        One row per particle, in file order, with the optics columns of its group merged in.
    optics : DataFrame or None
        The `data_optics` block (None for older single-block files).
    pixel_size_in_angstroms : float or None
        The pixel size shared by all particles (None when absent or when groups differ).
    path : Path
        The STAR file; relative image paths are resolved against its folder.
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None
    pixel_size_in_angstroms: float | None
    path: Path


def split_image_name(name: str) -> tuple[int, str]:
    """`"000001@stack.mrcs"` -> `(0, "stack.mrcs")`: 0-based index and stack path.

    A name without `@` is a single-image file (index 0). A leading `>` on the path (cryoSPARC
    exports, `000001@>J1/extract/x.mrc`) is dropped.
    """
    name = str(name).strip()
    index, sep, stack = name.partition("@")
    if not sep:
        return 0, name.removeprefix(">")
    stack = stack.strip().removeprefix(">")  # cryoSPARC's mark for "next to the exported file"
    if not index.strip().isdigit() or int(index) < 1 or not stack:
        raise ValueError(f"image name {name!r} is not of the form N@stack with N >= 1")
    return int(index) - 1, stack


def _pixel_sizes(df: pd.DataFrame) -> np.ndarray | None:
    """Distinct pixel sizes in Å of the rows, or None if the table has none."""
    if "rlnImagePixelSize" in df.columns:
        values = df["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    elif "rlnPixelSize" in df.columns:
        values = df["rlnPixelSize"].to_numpy(dtype=np.float64)
    elif "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        # detector pixel in µm, magnification dimensionless: Å per pixel = µm * 1e4 / mag
        values = (df["rlnDetectorPixelSize"].to_numpy(dtype=np.float64) * 1e4
                  / df["rlnMagnification"].to_numpy(dtype=np.float64))
    else:
        return None
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    _, first = np.unique(np.round(values, 6), return_index=True)
    return values[np.sort(first)]


def read_particles(path: str | os.PathLike) -> ParticleTable:
    """Read a RELION 3.1+ particle file or an older single-block one (or a cryoSPARC `.cs` file).

    Pixel size comes from `rlnImagePixelSize`, else `rlnPixelSize`, else
    `rlnDetectorPixelSize * 1e4 / rlnMagnification`.

    Raises
    ------
    InputError
        Missing or unreadable file, no particle block, no `rlnImageName` column, or particles
        whose optics group is not in the optics block.
    """
    path = Path(path)
    require_file(path)
    if path.suffix.lower() == ".cs":
        return read_cryosparc(path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise InputError(f"{path}: not a readable STAR file ({reason}); check the file") from exc
    frames = {name: block for name, block in blocks.items() if isinstance(block, pd.DataFrame)}
    particles = frames.get("particles")
    if particles is None:
        others = [block for name, block in frames.items() if name != "optics"]
        with_names = [block for block in others if "rlnImageName" in block.columns]
        particles = with_names[0] if with_names else (others[0] if len(others) == 1 else None)
    if particles is None or len(particles) == 0:
        raise InputError(f"{path}: no particle table (a data_particles block or one loop of particles); "
                         "check that this is a RELION particle STAR file")
    if "rlnImageName" not in particles.columns:
        raise InputError(f"{path}: the particle table has no rlnImageName column; "
                         "pass a STAR file of extracted particles")
    optics = frames.get("optics")
    if optics is not None:
        particles = _merge_optics(particles, optics, path)
    sizes = _pixel_sizes(particles)
    pixel_size = float(sizes[0]) if sizes is not None and sizes.size == 1 else None
    if sizes is not None and sizes.size > 1:
        logger.warning("%s: particles have %d different pixel sizes", path, sizes.size)
    return ParticleTable(particles.reset_index(drop=True), optics, pixel_size, path)


def _merge_optics(particles: pd.DataFrame, optics: pd.DataFrame, path: Path) -> pd.DataFrame:
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(f"{path}: the data_optics block has no rlnOpticsGroup column; fix the file")
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) != 1:
            raise InputError(f"{path}: particles have no rlnOpticsGroup but there are {len(optics)} "
                             "optics groups; add the rlnOpticsGroup column")
        particles = particles.assign(rlnOpticsGroup=optics["rlnOpticsGroup"].iloc[0])
    unknown = set(particles["rlnOpticsGroup"].tolist()) - set(optics["rlnOpticsGroup"].tolist())
    if unknown:
        raise InputError(f"{path}: particles use optics groups {sorted(unknown)} that are not in "
                         "data_optics; fix the file")
    columns = ["rlnOpticsGroup"] + [c for c in optics.columns if c not in particles.columns]
    return particles.merge(optics[columns].drop_duplicates("rlnOpticsGroup"), on="rlnOpticsGroup",
                           how="left", sort=False)


def write_particles(path: str | os.PathLike, particles: pd.DataFrame, optics: dict) -> None:
    """Write a RELION 3.1 particle file with one optics group (atomically).

    Parameters
    ----------
    path : output `.star` path
    particles : DataFrame
        One row per particle with `rlnImageName` and any other RELION columns. Columns that
        belong to the optics block are moved there; `rlnOpticsGroup` is set to the group.
    optics : dict
        `pixel_size_in_angstroms` and `image_size` (pixels); `voltage_in_kv`,
        `spherical_aberration_in_mm` and `amplitude_contrast` when known (class averages and
        simulated images without a CTF have none, and none are invented: RELION 3.1 needs the
        voltage and Cs to read the file); optional `name`, `dimensionality` (default 2) and
        `group` (default 1); RELION names (`rlnImagePixelSize`, ...) are accepted too. An entry
        left out is taken from the particle column of the same RELION name when that holds one
        value (as `ctf_columns` gives).

    Raises
    ------
    ValueError
        A required optics entry is missing, or a particle column such as `rlnVoltage` disagrees
        with the optics value.
    """
    row = {"rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1", "rlnImageDimensionality": 2}
    for key, value in optics.items():
        row[_OPTICS_NAMES.get(key, key)] = value
    for name in _REQUIRED_OPTICS + _MICROSCOPE_OPTICS:
        if name in particles.columns:
            values = pd.unique(particles[name])
            if name not in row and len(values) == 1:
                row[name] = values[0]  # e.g. rlnVoltage from ctf_columns
            elif name in row and not np.allclose(np.asarray(values, dtype=np.float64), float(row[name])):
                raise ValueError(f"particle column {name} holds {values[:3].tolist()}, not the optics value "
                                 f"{row[name]}; write particles of different optics to different files")
    missing = [name for name in _REQUIRED_OPTICS if name not in row]
    if missing:
        raise ValueError(f"optics lacks {', '.join(missing)}")
    keys = [k for k in _OPTICS_NAMES.values() if k in row] + [k for k in row if k not in _OPTICS_NAMES.values()]
    optics_frame = pd.DataFrame([{k: row[k] for k in keys}])
    if "rlnImageName" not in particles.columns:
        raise ValueError("particles need an rlnImageName column")
    table = particles.drop(columns=[c for c in optics_frame.columns if c in particles.columns])
    table = table.assign(rlnOpticsGroup=row["rlnOpticsGroup"])
    with atomic_output(path) as tmp:
        starfile.write({"optics": optics_frame, "particles": table}, tmp)


def resolve_image_path(name: str, star_path: str | os.PathLike,
                       data_dir: str | os.PathLike | None = None) -> Path:
    """Find the stack file `name` referenced by a STAR file.

    `data_dir` overrides everything (tried as `data_dir/name`, then `data_dir/basename`);
    otherwise a relative `name` is looked up in the STAR file's folder, then the current folder,
    then as its basename in the STAR file's folder (a RELION job's own outputs, such as
    `Class2D/job008/run_it025_classes.mrcs`, sit next to the job's STAR files).
    """
    name_path = Path(name)
    if data_dir is not None:
        candidates = [Path(data_dir) / name_path, Path(data_dir) / name_path.name]
    elif name_path.is_absolute():
        candidates = [name_path]
    else:
        folder = Path(star_path).parent
        candidates = [folder / name_path, Path.cwd() / name_path, folder / name_path.name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise InputError(f"{star_path}: image stack {name} not found (tried {tried}); "
                     "pass --data-dir with the folder that holds the stacks")


def load_images(table: ParticleTable, data_dir: str | os.PathLike | None = None, *,
                pixel_size_in_angstroms: float | None = None) -> tuple[np.ndarray, float]:
    """Read every particle image, in table order.

    Each stack is opened once (memory-mapped). The pixel size is `pixel_size_in_angstroms`
    if given, else the STAR file's, else the MRC header's. A STAR and a header pixel size that
    differ by more than 1% are refused, unless the header holds a placeholder (0 or 1.0 Å).

    Returns
    -------
    images : (n, ny, nx) float32
    pixel_size_in_angstroms : float
    """
    path = table.path
    try:
        parsed = [split_image_name(name) for name in table.particles["rlnImageName"].astype(str)]
    except ValueError as exc:
        raise InputError(f"{path}: {exc}; fix rlnImageName") from exc
    rows_by_stack: dict[str, list[int]] = {}
    for row, (_, stack) in enumerate(parsed):
        rows_by_stack.setdefault(stack, []).append(row)
    images = None
    header_sizes: dict[Path, float] = {}
    for stack, rows in rows_by_stack.items():
        file = resolve_image_path(stack, path, data_dir)
        indices = np.array([parsed[r][0] for r in rows])
        with _open_mrc(file, mmap=True) as mrc:
            if _looks_like_volume(mrc, file):
                raise InputError(f"{path}: {file} is a 3D map of {int(mrc.header.nx)}^3 voxels, not a stack of "
                                 "images; check rlnImageName (rename the file to .mrcs if it really is a stack)")
            data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            if indices.max() >= data.shape[0]:
                bad = format_image_name(int(indices.max()), stack)
                raise InputError(f"{path}: image {bad} is out of range, {file} holds {data.shape[0]} "
                                 "images; check rlnImageName")
            if images is None:
                images = np.empty((len(parsed),) + data.shape[1:], dtype=np.float32)
            elif data.shape[1:] != images.shape[1:]:
                raise InputError(f"{path}: {file} holds {data.shape[1:]} images but others are "
                                 f"{images.shape[1:]}; use particles of one box size")
            images[rows] = data[indices]
            header_sizes[file] = _decimal(mrc.voxel_size.x)
    _check_finite(images, path)
    return images, _choose_pixel_size(table, header_sizes, pixel_size_in_angstroms)


def _choose_pixel_size(table: ParticleTable, header_sizes: dict[Path, float],
                       pixel_size_in_angstroms: float | None) -> float:
    path = table.path
    if pixel_size_in_angstroms is not None:
        if not np.isfinite(pixel_size_in_angstroms) or pixel_size_in_angstroms <= 0:
            raise InputError(f"--pixel-size {pixel_size_in_angstroms}: must be a positive number of Å")
        return float(pixel_size_in_angstroms)
    star_sizes = _pixel_sizes(table.particles)
    if star_sizes is not None and star_sizes.size > 1:
        raise InputError(f"{path}: particles have different pixel sizes {star_sizes.tolist()} Å; "
                         "rescale them to one pixel size or pass --pixel-size")
    star = float(star_sizes[0]) if star_sizes is not None else None
    if star is not None:
        for file, header in header_sizes.items():
            if header not in PLACEHOLDER_HEADER_PIXEL_SIZES and abs(header - star) > PIXEL_SIZE_TOLERANCE * star:
                raise InputError(f"{path}: pixel size {star:g} Å disagrees with {header:g} Å in the header of "
                                 f"{file}; pass --pixel-size with the right value")
        return star
    known = sorted({h for h in header_sizes.values() if h > 0})
    if len(known) != 1:
        raise InputError(f"{path}: no pixel size in the STAR file and {known or 'none'} in the stack "
                         "headers; pass --pixel-size")
    return known[0]


def poses_to_columns(matrices: np.ndarray, shifts_in_angstroms: np.ndarray | None = None) -> dict:
    """STAR columns for poses.

    Parameters
    ----------
    matrices : (n, 3, 3) rotation matrices A (CONVENTIONS.md)
    shifts_in_angstroms : (n, 2), optional
        Particle centre positions `t = (x, y)` in the image, in Å. Stored as
        `rlnOriginXAngst, rlnOriginYAngst = -t` (RELION's origin undoes the shift).

    Returns
    -------
    dict of column name -> (n,) array: `rlnAngleRot, rlnAngleTilt, rlnAnglePsi` in degrees and,
    with shifts, `rlnOriginXAngst, rlnOriginYAngst` in Å.
    """
    rot, tilt, psi = matrix_to_euler(np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3))
    columns = {"rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi}
    if shifts_in_angstroms is not None:
        shifts = np.asarray(shifts_in_angstroms, dtype=np.float64).reshape(-1, 2)
        columns["rlnOriginXAngst"] = -shifts[:, 0]
        columns["rlnOriginYAngst"] = -shifts[:, 1]
    return columns


def columns_to_poses(df: pd.DataFrame, pixel_size_in_angstroms: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrices and particle centre shifts from STAR columns (inverse of `poses_to_columns`).

    Shifts come from `rlnOriginXAngst/YAngst`, else from the pre-3.1 `rlnOriginX/Y` (pixels,
    times `pixel_size_in_angstroms` or the table's pixel size), else they are zero.

    Returns
    -------
    matrices : (n, 3, 3)
    shifts_in_angstroms : (n, 2), the particle centre positions `t = -origin`
    """
    missing = [name for name in _ANGLES if name not in df.columns]
    if missing:
        raise InputError(f"the particle table has no {', '.join(missing)} column; "
                         "use a STAR file with refined orientations")
    matrices = euler_to_matrix(*(df[name].to_numpy(dtype=np.float64) for name in _ANGLES))
    return matrices.reshape(-1, 3, 3), -_origins_in_angstroms(df, pixel_size_in_angstroms)


def _origins_in_angstroms(df: pd.DataFrame, pixel_size_in_angstroms: float | None) -> np.ndarray:
    """(n, 2) rlnOriginXAngst/YAngst, else the pre-3.1 rlnOriginX/Y in pixels times the pixel
    size, else zeros."""
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(df.columns):
        return df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    if {"rlnOriginX", "rlnOriginY"} <= set(df.columns):
        sizes = _pixel_sizes(df) if pixel_size_in_angstroms is None else np.array([pixel_size_in_angstroms])
        if sizes is None or sizes.size != 1:
            raise InputError("the particle table gives origins in pixels (rlnOriginX/Y) without one pixel "
                             "size; pass --pixel-size")
        return df[["rlnOriginX", "rlnOriginY"]].to_numpy(dtype=np.float64) * float(sizes[0])
    return np.zeros((len(df), 2))


def in_plane_poses(df: pd.DataFrame, pixel_size_in_angstroms: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """In-plane angle (rlnAnglePsi, degrees; 0 when absent) and particle centre shifts t = -origin
    in Å of each row: the poses of 2D classification, which has no rot and tilt."""
    psi = df["rlnAnglePsi"].to_numpy(dtype=np.float64) if "rlnAnglePsi" in df.columns else np.zeros(len(df))
    origin = _origins_in_angstroms(df, pixel_size_in_angstroms)
    if not (np.all(np.isfinite(psi)) and np.all(np.isfinite(origin))):
        raise InputError("rlnAnglePsi or the origins have NaN or infinite values; fix the STAR file")
    return psi, -origin


def select_rows(table: ParticleTable, rows) -> ParticleTable:
    """The particles `rows` (0-based positions, a mask or a slice) of a table, renumbered from 0."""
    particles = table.particles.iloc[rows].reset_index(drop=True)
    return ParticleTable(particles, table.optics, table.pixel_size_in_angstroms, table.path)


def _row_label(df: pd.DataFrame, row: int) -> str:
    name = f" ({df['rlnImageName'].iloc[row]})" if "rlnImageName" in df.columns else ""
    return f"row {row + 1}{name}"


def _ctf_column(df: pd.DataFrame, name: str, path: Path) -> np.ndarray:
    """Numeric values of a CTF column; NaN, infinite or non-numeric entries are refused."""
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        others = f" and {bad.size - 1} other rows" if bad.size > 1 else ""
        value = df[name].iloc[bad[0]]
        value = f"{value:g}" if isinstance(value, (int, float, np.number)) else repr(str(value))
        raise InputError(f"{path}: {name} is {value} (not a finite number) in "
                         f"{_row_label(df, int(bad[0]))}{others}; fix or remove those rows")
    return values


# column -> (test of valid values, what valid values are)
_CTF_RANGES = {
    "rlnDefocusU": (lambda v: v > 0, "defocus must be positive (underfocus, in Å)"),
    "rlnDefocusV": (lambda v: v > 0, "defocus must be positive (underfocus, in Å)"),
    "rlnVoltage": (lambda v: v > 0, "the voltage must be positive (in kV)"),
    "rlnSphericalAberration": (lambda v: v >= 0, "the spherical aberration must be >= 0 (in mm)"),
    "rlnAmplitudeContrast": (lambda v: (v >= 0) & (v < 1), "the amplitude contrast must be in [0, 1)"),
}


def ctf_parameters(table: ParticleTable) -> CTFParameters | None:
    """The CTF of every particle from the STAR columns, or None when the file has no defocus.

    `rlnDefocusU`, `rlnDefocusV`, `rlnDefocusAngle` are read per particle; `rlnVoltage`,
    `rlnSphericalAberration`, `rlnAmplitudeContrast` per particle or from the optics group
    (`read_particles` merges them into the rows); `rlnPhaseShift`, `rlnCtfBfactor` and
    `rlnCtfScalefactor` are optional (0, 0 and 1 when absent).

    A file without any defocus column has no CTF (None), even if it names a voltage. Once a
    defocus is given, all six columns (U, V, angle, voltage, spherical aberration, amplitude
    contrast) must be there: a partial set is refused rather than completed by guesses (RELION
    itself reads a missing V as U and a missing angle as 0; the message says how to add them).

    Raises
    ------
    InputError
        A partial set of CTF columns (naming the missing ones), a NaN or non-numeric value, a
        defocus <= 0 or another value out of range (naming the row and image).
    """
    df, path = table.particles, table.path
    defocus = [name for name in _DEFOCUS if name in df.columns]
    if not defocus:
        return None
    missing = [name for name in _REQUIRED_CTF if name not in df.columns]
    if missing:
        hint = ""
        if {"rlnDefocusV", "rlnDefocusAngle"} & set(missing) and "rlnDefocusU" not in missing:
            hint = " (without astigmatism: rlnDefocusV = rlnDefocusU and rlnDefocusAngle = 0)"
        raise InputError(f"{path}: has {', '.join(defocus)} but not {', '.join(missing)}; "
                         f"provide all CTF columns or none{hint}")
    values = {}
    for name, field in CTF_COLUMNS.items():
        if name in df.columns:
            values[field] = _ctf_column(df, name, path)
            check = _CTF_RANGES.get(name)
            if check is not None:
                bad = np.flatnonzero(~check[0](values[field]))
                if bad.size:
                    raise InputError(f"{path}: {name} is {values[field][bad[0]]:g} in {_row_label(df, int(bad[0]))}; "
                                     f"{check[1]}; fix or remove the row")
    return CTFParameters(**values)


def ctf_columns(parameters: CTFParameters) -> dict:
    """STAR columns for CTF parameters (inverse of `ctf_parameters`), for `write_particles`.

    Returns
    -------
    dict of RELION column name -> (P,) array: defocus U, V (Å), angle (degrees), voltage (kV),
    spherical aberration (mm) and amplitude contrast always; `rlnPhaseShift`, `rlnCtfBfactor`,
    `rlnCtfScalefactor` only when some particle has a value other than 0, 0, 1.
    `write_particles` moves voltage, aberration and contrast into the optics block.
    """
    defaults = {"phase_shift_in_degrees": 0.0, "bfactor_in_angstroms2": 0.0, "scale": 1.0}
    columns = {}
    for name, field in CTF_COLUMNS.items():
        values = np.array(getattr(parameters, field), dtype=np.float64)
        if field not in defaults or np.any(values != defaults[field]):
            columns[name] = values
    return columns


# cryoSPARC .cs field -> (RELION column, factor to RELION units)
_CRYOSPARC_FIELDS = {
    "blob/psize_A": ("rlnImagePixelSize", 1.0),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi),
    "ctf/bfactor": ("rlnCtfBfactor", 1.0),
    "ctf/scale": ("rlnCtfScalefactor", 1.0),
}


def read_cryosparc(path: str | os.PathLike) -> ParticleTable:
    """Read the particles of a cryoSPARC `.cs` file (a numpy record array) as RELION columns.

    `blob/path` and `blob/idx` (0-based) become `rlnImageName` (a leading `>` of exported jobs is
    dropped; paths are resolved like STAR image names, `--data-dir` included), `blob/psize_A`
    `rlnImagePixelSize`, `blob/shape` `rlnImageSize`, the `ctf/` fields the RELION CTF columns
    (radians -> degrees) and `alignments2D/class` (0-based) `rlnClassNumber`. Poses are not read.

    Raises
    ------
    InputError
        Not a numpy record array, or no `blob/path` and `blob/idx` fields (e.g. a passthrough file).
    """
    path = Path(path)
    try:
        records = np.load(path, allow_pickle=False)
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{path}: not a readable cryoSPARC .cs file ({reason}); check the file") from exc
    names = records.dtype.names or ()
    if not {"blob/path", "blob/idx"} <= set(names):
        raise InputError(f"{path}: no blob/path and blob/idx fields (no particle images); pass the particles "
                         ".cs file of an extraction, classification or refinement job, not a passthrough file")
    stacks = [p.decode() if isinstance(p, bytes) else str(p) for p in records["blob/path"]]
    columns = {"rlnImageName": [format_image_name(i, split_image_name(s)[1])
                                for i, s in zip(records["blob/idx"].tolist(), stacks)]}
    if "blob/shape" in names:
        columns["rlnImageSize"] = np.asarray(records["blob/shape"]).reshape(len(records), -1)[:, -1]
    for field, (column, factor) in _CRYOSPARC_FIELDS.items():
        if field in names:
            columns[column] = np.asarray(records[field], dtype=np.float64) * factor
    if "alignments2D/class" in names:
        columns["rlnClassNumber"] = np.asarray(records["alignments2D/class"], dtype=np.int64) + 1
    particles = pd.DataFrame(columns)
    sizes = _pixel_sizes(particles)
    pixel_size = float(sizes[0]) if sizes is not None and sizes.size == 1 else None
    return ParticleTable(particles, None, pixel_size, path)


def write_refined_particles(path: str | os.PathLike, table: ParticleTable, matrices: np.ndarray,
                            shifts_in_angstroms: np.ndarray, extra: dict | None = None) -> None:
    """The input particles with new poses (RELION 3.1 layout, the input's optics block kept).

    Pose columns (`poses_to_columns`) and `extra` columns replace those of the input; every other
    column of the input is kept; the optics columns merged into the rows on reading go back to the
    optics block (a single-block input gets one from `write_particles`'s rules).
    """
    particles = table.particles.copy()
    for name in ("rlnOriginX", "rlnOriginY"):  # pre-3.1 pixel origins would contradict the new ones
        if name in particles.columns:
            particles = particles.drop(columns=name)
    columns = poses_to_columns(matrices, shifts_in_angstroms)
    columns.update(extra or {})
    for name, values in columns.items():
        particles[name] = np.asarray(values)
    if table.optics is None:
        optics = {}
        if table.pixel_size_in_angstroms is not None:
            optics["pixel_size_in_angstroms"] = table.pixel_size_in_angstroms
        write_particles(path, particles, optics)
        return
    merged = [c for c in table.optics.columns if c != "rlnOpticsGroup" and c in particles.columns]
    with atomic_output(path) as tmp:
        starfile.write({"optics": table.optics, "particles": particles.drop(columns=merged)}, tmp)
