"""MRC maps and image stacks (via `mrcfile`), read into float32 arrays with voxel size and origin.

Arrays follow the mrcfile layout: volumes `[z, y, x]`, stacks `[n, y, x]`, images `[y, x]`.
Origins are `(x, y, z)` in Å: the physical coordinate of the voxel with index 0 (as in ChimeraX:
the header `origin` when it is non-zero, otherwise `nxstart, nystart, nzstart` times the voxel size).
Files are written under a temporary name in the target folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryogmm import __version__
from cryogmm.errors import InputError
from cryogmm.grid import Grid
from cryogmm.io.paths import require_file

STACK_SUFFIXES = (".mrcs",)


@dataclass(frozen=True, eq=False)
class MapData:
    """A map, image or image stack with its sampling.

    Parameters
    ----------
    data : ndarray, float32
        `[z, y, x]` volume, `[n, y, x]` stack or `[y, x]` image.
    voxel_size_in_angstroms : float
        Voxel (pixel) size in Å.
    origin_in_angstroms : tuple of 3 floats
        `(x, y, z)` coordinate in Å of the voxel with index 0.
    """

    data: np.ndarray
    voxel_size_in_angstroms: float
    origin_in_angstroms: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", np.asarray(self.data, dtype=np.float32))
        object.__setattr__(self, "voxel_size_in_angstroms", float(self.voxel_size_in_angstroms))
        origin = tuple(float(o) for o in self.origin_in_angstroms)
        if len(origin) != 3:
            raise ValueError(f"origin must be (x, y, z), got {self.origin_in_angstroms}")
        object.__setattr__(self, "origin_in_angstroms", origin)

    @property
    def grid(self) -> Grid:
        """The voxel grid of a 3D map (`Grid(shape, voxel size, origin)`)."""
        if self.data.ndim != 3:
            raise ValueError(f"a grid needs a 3D map, this data has shape {self.data.shape}")
        return Grid(self.data.shape, self.voxel_size_in_angstroms, self.origin_in_angstroms)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plausible_header(path: Path) -> bool:
    """Cheap guard before a permissive open: sizes, mode and extended header length make sense.

    Without it mrcfile may try to allocate gigabytes for the "extended header" of a text file.
    """
    with open(path, "rb") as stream:
        raw = stream.read(1024)
    if len(raw) < 1024:
        return False
    file_size = path.stat().st_size
    for order in "<>":
        nx, ny, nz, mode = np.frombuffer(raw[:16], dtype=f"{order}i4").tolist()
        n_extended = int(np.frombuffer(raw[92:96], dtype=f"{order}i4")[0])
        if (min(nx, ny, nz) > 0 and mode in (0, 1, 2, 3, 4, 6, 12, 101)
                and 0 <= n_extended <= file_size - 1024):
            return True
    return False


def _open_mrc(path: Path, mmap: bool = False):
    """Open an MRC file read-only; retry permissively (e.g. odd ispg or no map ID) if that fails.

    Raises InputError when the file is missing or is not an MRC file at all.
    """
    require_file(path)
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        return opener(path, mode="r")
    except Exception:
        pass
    if not _plausible_header(path):
        raise InputError(f"{path}: not a readable MRC file (no valid MRC header); "
                         "check the file or convert it to MRC")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # permissive mode reports header defects as warnings
            mrc = opener(path, mode="r", permissive=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise InputError(f"{path}: not a readable MRC file ({reason}); "
                         "check the file or convert it to MRC") from exc
    if mrc.data is None:
        mrc.close()
        raise InputError(f"{path}: not a readable MRC file (header or data block invalid); "
                         "check the file or convert it to MRC")
    return mrc


def _voxel_size(mrc, path: Path, pixel_size_in_angstroms: float | None) -> float:
    if pixel_size_in_angstroms is not None:
        size = float(pixel_size_in_angstroms)
        if not np.isfinite(size) or size <= 0:
            raise InputError(f"--pixel-size {pixel_size_in_angstroms}: must be a positive number of Å")
        return size
    sizes = np.array([_decimal(v) for v in mrc.voxel_size.tolist()], dtype=np.float64)
    if mrc.data.ndim < 3 or _looks_like_stack(mrc, path):
        sizes = sizes[:2]  # the z spacing of a stack is meaningless
    if not np.all(np.isfinite(sizes)) or np.all(sizes == 0):
        raise InputError(f"{path}: voxel size is 0 in the header; pass --pixel-size")
    if np.any(sizes <= 0) or not np.allclose(sizes, sizes[0], rtol=1e-3):
        raise InputError(f"{path}: voxel size {tuple(sizes.tolist())} Å is not cubic; "
                         "resample to cubic voxels or pass --pixel-size")
    return float(sizes[0])


def _decimal(value) -> float:
    """A float32 header value as the shortest decimal that float32 rounds to it (2.02, not 2.0199999)."""
    return float(str(np.float32(value)))


def _origin(mrc, voxel_size: float) -> tuple[float, float, float]:
    header = mrc.header
    origin = tuple(_decimal(v) for v in (header.origin.x, header.origin.y, header.origin.z))
    if any(origin):
        return origin
    start = (int(header.nxstart), int(header.nystart), int(header.nzstart))
    return tuple(float(s * voxel_size) for s in start)


def _looks_like_stack(mrc, path: Path) -> bool:
    """A `.mrcs` file, or space group 0 with several sections whose cell is not `nz` deep.

    Real RELION reconstructions may carry ispg 0 with `mz == nz`; those are read as volumes.
    """
    header = mrc.header
    if path.suffix.lower() in STACK_SUFFIXES:
        return True
    return int(header.ispg) == 0 and int(header.nz) > 1 and int(header.mz) != int(header.nz)


def _looks_like_volume(mrc, path: Path) -> bool:
    """A cubic 3D block that nothing marks as a stack (`.mrcs`, or space group 0 with `mz != nz`).

    The header alone cannot tell: stacks written as `.mrc` with space group 1 and `mz == nz` are
    common (cryoDRGN, ASPIRE), but their images are rarely as many as their side is long.
    """
    nz, ny, nx = (int(v) for v in (mrc.header.nz, mrc.header.ny, mrc.header.nx))
    return nz > 1 and nz == ny == nx and not _looks_like_stack(mrc, path)


def _check_finite(data: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(data)):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"{path}: {n_bad} values are NaN or infinite; fix or replace the file")


def read_map(path: str | os.PathLike, pixel_size_in_angstroms: float | None = None) -> MapData:
    """Read a 3D map.

    Parameters
    ----------
    path : path to an MRC/CCP4 map
    pixel_size_in_angstroms : float, optional
        Voxel size in Å; overrides the header (needed when the header says 0).

    Returns
    -------
    MapData with `data` float32 `[z, y, x]`, voxel size in Å and origin `(x, y, z)` in Å.

    Raises
    ------
    InputError
        Missing or non-MRC file, a 2D image or image stack, NaN/inf values, an all-zero map,
        or voxel size 0 without `pixel_size_in_angstroms`.
    """
    path = Path(path)
    with _open_mrc(path) as mrc:
        if mrc.data.ndim != 3 or mrc.data.shape[0] == 1:
            raise InputError(f"{path}: a single 2D image of shape {mrc.data.shape[-2:]}, "
                             "but a 3D map is needed; pass a volume")
        if _looks_like_stack(mrc, path):
            raise InputError(f"{path}: an image stack of {mrc.data.shape[0]} images, but a 3D map is "
                             "needed; pass a volume (rename it to .mrc if it really is a map)")
        n_sections, ny, nx = mrc.data.shape
        if ny == nx and n_sections < nx // 2:
            raise InputError(f"{path}: {n_sections} sections of {ny} x {nx} pixels, an image stack rather than "
                             "a 3D map; pass a volume")
        voxel_size = _voxel_size(mrc, path, pixel_size_in_angstroms)
        origin = _origin(mrc, voxel_size)
        data = np.array(mrc.data, dtype=np.float32)
    _check_finite(data, path)
    if not np.any(data):
        raise InputError(f"{path}: every voxel is zero; check that this is the right map")
    return MapData(data, voxel_size, origin)


def read_stack(path: str | os.PathLike, pixel_size_in_angstroms: float | None = None) -> MapData:
    """Read an image stack `[n, y, x]`; a single 2D image becomes a stack of one.

    Parameters
    ----------
    path : path to an MRC file (`.mrcs` or `.mrc`)
    pixel_size_in_angstroms : float, optional
        Pixel size in Å; overrides the header (needed when the header says 0).

    Raises
    ------
    InputError
        Missing or non-MRC file, a 3D map (a cubic block not marked as a stack, see
        `_looks_like_volume`), NaN/inf values, or pixel size 0 without `pixel_size_in_angstroms`.
    """
    path = Path(path)
    with _open_mrc(path) as mrc:
        if _looks_like_volume(mrc, path):
            n = int(mrc.header.nx)
            raise InputError(f"{path}: a 3D map of {n} x {n} x {n} voxels, but a stack of 2D images is needed; "
                             "pass the images (rename the file to .mrcs if it really is a stack of images)")
        pixel_size = _voxel_size(mrc, path, pixel_size_in_angstroms)
        origin = _origin(mrc, pixel_size)
        data = np.array(mrc.data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    _check_finite(data, path)
    return MapData(data, pixel_size, origin)


def _label(mrc) -> None:
    """Header label 1 says who wrote the file, with the version and time (mrcfile's own label names
    mrcfile); the other nine are left empty."""
    mrc.header.label[0] = f"cryogmm {__version__}  {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()[:80]
    mrc.header.nlabl = 1


def write_map(path: str | os.PathLike, data: np.ndarray, voxel_size_in_angstroms: float,
              origin_in_angstroms: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    """Write a 3D map `[z, y, x]` as float32 (space group 1, `origin` set, `nxstart` 0).

    Parameters
    ----------
    path : output path
    data : (nz, ny, nx) array
    voxel_size_in_angstroms : float
    origin_in_angstroms : (x, y, z) coordinate in Å of the voxel with index 0
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"write_map needs a 3D array, got shape {data.shape}")
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_volume()
        header = mrc.header
        header.mx, header.my, header.mz = data.shape[2], data.shape[1], data.shape[0]
        mrc.voxel_size = float(voxel_size_in_angstroms)
        header.nxstart = header.nystart = header.nzstart = 0
        header.origin.x, header.origin.y, header.origin.z = (float(o) for o in origin_in_angstroms)
        _label(mrc)


def write_stack(path: str | os.PathLike, images: np.ndarray, pixel_size_in_angstroms: float) -> None:
    """Write images `[n, y, x]` (or one `[y, x]`) as a float32 stack (space group 0).

    `mx, my` equal the image box and `mz` is 1 (one section per image, the mrcfile and RELION
    convention for stacks), so the cell matches the pixel size.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"write_stack needs [n, y, x] images, got shape {images.shape}")
    with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.header.mx, mrc.header.my, mrc.header.mz = images.shape[2], images.shape[1], 1
        mrc.voxel_size = float(pixel_size_in_angstroms)
        mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
        mrc.header.origin.x = mrc.header.origin.y = mrc.header.origin.z = 0.0
        _label(mrc)
