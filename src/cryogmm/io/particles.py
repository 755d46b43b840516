"""Particle stacks read lazily: memory-mapped MRC stacks, images read a batch at a time.

`StackReader` holds only file names and indices (it pickles small, so Dask workers and process
pools can take it), and opens each stack memory-mapped on first use in each process. A whole
refinement then keeps in memory only the batches it works on, not the stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryogmm.errors import InputError
from cryogmm.io.mrc import _decimal, _open_mrc
from cryogmm.io.star import (ParticleTable, _choose_pixel_size, format_image_name, resolve_image_path,
                             split_image_name)

_OPEN: dict[str, object] = {}  # stack path -> open mrcfile (per process)


def _stack_data(path: str) -> np.ndarray:
    mrc = _OPEN.get(path)
    if mrc is None:
        mrc = _open_mrc(Path(path), mmap=True)
        _OPEN[path] = mrc
    data = mrc.data
    return data if data.ndim == 3 else data[None]


@dataclass(frozen=True, eq=False)
class StackReader:
    """rows -> (len(rows), n, n) float32 images of a particle table, read from memory-mapped stacks.

    files : the stack paths; file_index, image_index : (P,) the stack and 0-based image of each row.
    """

    files: tuple[str, ...]
    file_index: np.ndarray
    image_index: np.ndarray
    box: int
    labels: tuple[str, ...] = field(default=())

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((rows.size, self.box, self.box), dtype=np.float32)
        which = self.file_index[rows]
        for f in np.unique(which):
            positions = np.flatnonzero(which == f)
            indices = self.image_index[rows[positions]]
            order = np.argsort(indices, kind="stable")  # read each stack in file order
            out[positions[order]] = _stack_data(self.files[f])[indices[order]]
        return out

    def __len__(self) -> int:
        return self.file_index.size

    def check_finite(self, star_path, chunk: int = 1000) -> None:
        """Refuse NaN or infinite pixels, naming the first particle that has them."""
        for start in range(0, len(self), chunk):
            rows = np.arange(start, min(start + chunk, len(self)))
            images = self(rows)
            bad = ~np.all(np.isfinite(images.reshape(len(rows), -1)), axis=1)
            if np.any(bad):
                row = int(rows[np.argmax(bad)])
                raise InputError(f"{star_path}: particle {row + 1} ({self.labels[row] if self.labels else row}) "
                                 f"and {int(bad.sum()) - 1} more in its block have NaN or infinite pixels; "
                                 "remove them from the STAR file or re-extract them")


def stack_reader(table: ParticleTable, data_dir: str | os.PathLike | None = None, *,
                 pixel_size_in_angstroms: float | None = None) -> tuple[StackReader, float]:
    """A lazy reader of the table's images (every index checked against its stack) and their pixel size."""
    path = table.path
    names = table.particles["rlnImageName"].astype(str).tolist()
    try:
        parsed = [split_image_name(name) for name in names]
    except ValueError as exc:
        raise InputError(f"{path}: {exc}; fix rlnImageName") from exc
    stacks: dict[str, int] = {}
    files: list[str] = []
    file_index = np.empty(len(parsed), dtype=np.int64)
    image_index = np.empty(len(parsed), dtype=np.int64)
    for row, (index, stack) in enumerate(parsed):
        if stack not in stacks:
            stacks[stack] = len(files)
            files.append(str(resolve_image_path(stack, path, data_dir)))
        file_index[row] = stacks[stack]
        image_index[row] = index
    header_sizes = {}
    box = None
    for f, file in enumerate(files):
        data = _stack_data(file)
        if data.shape[1] != data.shape[2]:
            raise InputError(f"{file}: images of {data.shape[2]} x {data.shape[1]} pixels are not square; "
                             "re-extract square particles")
        if box is None:
            box = int(data.shape[-1])
        elif data.shape[-1] != box:
            raise InputError(f"{path}: {file} holds {data.shape[-1]}-pixel images, others {box}; "
                             "use particles of one box size")
        mine = image_index[file_index == f]
        if mine.max() >= data.shape[0]:
            stack = next(name for name, i in stacks.items() if i == f)
            raise InputError(f"{path}: image {format_image_name(int(mine.max()), stack)} is out of range, {file} "
                             f"holds {data.shape[0]} images; check rlnImageName or the stack")
        header_sizes[Path(file)] = _decimal(_OPEN[file].voxel_size.x)
    pixel = _choose_pixel_size(table, header_sizes, pixel_size_in_angstroms)
    return StackReader(tuple(files), file_index, image_index, int(box), tuple(names)), pixel
