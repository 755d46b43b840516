"""Aligned class averages and per-defocus-group averages with their CTFs (thesis section 4.1.2).

The in-plane pose of a particle (RELION convention, CONVENTIONS.md) is its angle psi and its
centre t = -(rlnOriginXAngst, rlnOriginYAngst): the particle image is the class image c (the
projection at in-plane angle 0) rotated and shifted,

    p(u) = c(Rz(psi) (u - t)),      u = (x, y) in Å from the box centre (pixel n // 2),

with Rz(psi) the counter-clockwise rotation of (x, y) by psi. This holds for 3D poses
(rot, tilt, psi), whose matrix is Rz(-psi) A(rot, tilt, 0), and for RELION 2D classification,
whose particles carry only rlnAnglePsi and the origin. Aligning undoes it:
a(v) = p(Rz(-psi) v + t) = c(v), the shift by a Fourier phase ramp and the rotation by cubic
spline interpolation.

A particle recorded with CTF f_i is p = polarity * f_i * (rotated, shifted c) (see
`cryogmm.forward.ctf` for the sign of f; polarity -1 for bright particles as RELION extracts
them). Its aligned image is a = polarity * g_i * c, where g_i(k) = f_i(Rz(-psi) k): the same CTF
with its astigmatism angle turned by +psi (`aligned_ctf_parameters`). A linear average over a
group of aligned images is therefore z_g = polarity * (mean_i g_i) * c: the effective CTF of the
group is the mean of its members' aligned CTFs, the model of multi-frame deconvolution (Eqn. 4.3,
with weights = member counts) and, with one group, of single-frame deconvolution (Eqn. 4.4).

Defocus groups: the range [min, max] of the mean defocus (U + V) / 2 within each class is split
into G intervals of equal width, as in the thesis (not into quantiles): equal widths bound the
defocus spread, hence the CTF mismatch, inside every group, whereas quantile groups would be
wide where particles are sparse. Groups may then be empty (weight 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_images

CHUNK_SIZE = 256  # particles aligned at a time


@dataclass(frozen=True)
class ClassAverages:
    """Aligned averages of the particles of C classes, whole and per defocus group.

    Attributes
    ----------
    class_ids : (C,) int, the class labels in increasing order.
    averages : (C, n, n) float64, the aligned class averages `[c, y, x]` (in-plane angle 0).
    counts : (C,) int, particles per class.
    group_images : (C, G, n, n) float64, the aligned average of each defocus group (zero if empty).
    group_weights : (C, G) float64, members per group (0 for an empty group).
    group_defocus_ranges : (C, G, 2) float64, the mean-defocus interval of each group in Å
        (NaN without CTF parameters).
    ctfs : (C, m, m) float64 or None, the effective CTF of each class average (the mean aligned
        CTF of all its particles), `np.fft.fft2` order, on the grid of an m x m image of the same
        pixel size (m = n unless `ctf_box` is given); None without CTF parameters.
    group_ctfs : (C, G, m, m) float64 or None, the effective CTF of each group (zero if empty).
    polarity : -1 or +1, the contrast of the particles: the model of an average z with effective
        CTF f is z = polarity * IFFT(f * FFT(y)) for the CTF-free class image y.
    pixel_size_in_angstroms : float
    """

    class_ids: np.ndarray
    averages: np.ndarray
    counts: np.ndarray
    group_images: np.ndarray
    group_weights: np.ndarray
    group_defocus_ranges: np.ndarray
    ctfs: np.ndarray | None
    group_ctfs: np.ndarray | None
    polarity: int
    pixel_size_in_angstroms: float

    def __post_init__(self):
        n_classes, n_groups = self.group_weights.shape
        n = self.averages.shape[-1]
        m = n if self.ctfs is None else self.ctfs.shape[-1]
        expected = {"class_ids": (n_classes,), "averages": (n_classes, n, n), "counts": (n_classes,),
                    "group_images": (n_classes, n_groups, n, n), "group_defocus_ranges": (n_classes, n_groups, 2),
                    "ctfs": (n_classes, m, m), "group_ctfs": (n_classes, n_groups, m, m)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"ClassAverages.{name} has shape {value.shape}, expected {shape}")
            if value is not None:
                value.setflags(write=False)
        self.group_weights.setflags(write=False)
        if self.polarity not in (-1, 1):
            raise ValueError(f"polarity must be -1 (bright particles) or +1 (dark), got {self.polarity}")
        if (self.ctfs is None) != (self.group_ctfs is None):
            raise ValueError("ctfs and group_ctfs must both be given or both be None")

    @property
    def n_groups(self) -> int:
        return self.group_weights.shape[1]


def class_averages(
    images: np.ndarray,
    psi_in_degrees: np.ndarray,
    shifts_in_angstroms: np.ndarray | None,
    classes: np.ndarray,
    pixel_size_in_angstroms: float,
    *,
    ctf_parameters: CTFParameters | None = None,
    n_defocus_groups: int = 1,
    polarity: int = -1,
    ctf_box: int | None = None,
) -> ClassAverages:
    """Aligned class averages, defocus-group averages and their effective CTFs.

    Parameters
    ----------
    images : (P, n, n) particle images `[i, y, x]`.
    psi_in_degrees : (P,) in-plane angles (rlnAnglePsi).
    shifts_in_angstroms : (P, 2) particle centres t = (x, y) in Å, i.e. minus
        (rlnOriginXAngst, rlnOriginYAngst); None for centred particles.
    classes : (P,) integer class labels (e.g. rlnClassNumber); every distinct label is a class.
    pixel_size_in_angstroms : float
    ctf_parameters : CTFParameters of the P particles, or None (no CTF, one group only).
    n_defocus_groups : G >= 1, equal-width intervals of each class's mean-defocus range.
    polarity : -1 (bright particles, RELION; default) or +1 (dark); only recorded in the result.
    ctf_box : int >= n, optional
        Size m of the grid of the effective CTFs (default n). Particles are cut from micrographs,
        so their CTF acts as a linear, not circular, convolution; a deconvolution that models
        this solves for the class image in a padded m x m box and needs the CTFs on that grid
        (the same pixel size, hence a finer frequency spacing).

    Returns
    -------
    ClassAverages
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] == 0:
        raise InputError(f"class averages need a non-empty stack of square images, got shape {images.shape}")
    n_images, n = images.shape[0], images.shape[-1]
    classes = np.asarray(classes).reshape(-1)
    if classes.size != n_images:
        raise InputError(f"{classes.size} class labels for {n_images} images; give one per particle")
    if not np.issubdtype(classes.dtype, np.integer):
        if not np.all(np.isfinite(classes)) or np.any(classes != np.round(classes)):
            raise InputError("class labels must be integers (rlnClassNumber); check the STAR file")
        classes = classes.astype(np.int64)
    if int(n_defocus_groups) != n_defocus_groups or n_defocus_groups < 1:
        raise InputError(f"{n_defocus_groups} defocus groups: must be a positive integer")
    n_groups = int(n_defocus_groups)
    if polarity not in (-1, 1):
        raise InputError(f"polarity {polarity}: must be -1 (bright particles) or +1 (dark)")
    if ctf_parameters is None:
        if n_groups > 1:
            raise InputError("defocus groups need the particles' CTF parameters (rlnDefocusU/V/Angle)")
    elif len(ctf_parameters) != n_images:
        raise InputError(f"{len(ctf_parameters)} CTF parameter sets for {n_images} images; give one per particle")

    m = n if ctf_box is None else int(ctf_box)
    if m < n:
        raise InputError(f"CTF box {ctf_box}: must be at least the image size {n}")
    psi, shifts = _check_poses(psi_in_degrees, shifts_in_angstroms, n_images, pixel_size_in_angstroms)
    class_ids = np.unique(classes)
    n_classes = class_ids.size
    counts = np.zeros(n_classes, dtype=np.int64)
    averages = np.zeros((n_classes, n, n))
    group_images = np.zeros((n_classes, n_groups, n, n))
    group_weights = np.zeros((n_classes, n_groups))
    ranges = np.full((n_classes, n_groups, 2), np.nan)
    with_ctf = ctf_parameters is not None
    ctfs = np.zeros((n_classes, m, m)) if with_ctf else None
    group_ctfs = np.zeros((n_classes, n_groups, m, m)) if with_ctf else None
    aligned_ctf = aligned_ctf_parameters(ctf_parameters, psi) if with_ctf else None
    for c, label in enumerate(class_ids):
        members = np.flatnonzero(classes == label)
        counts[c] = members.size
        if with_ctf:
            group, edges = defocus_groups(ctf_parameters.mean_defocus_in_angstroms[members], n_groups)
            ranges[c, :, 0], ranges[c, :, 1] = edges[:-1], edges[1:]
        else:
            group = np.zeros(members.size, dtype=np.int64)
        group_weights[c] = np.bincount(group, minlength=n_groups)
        # sums over chunks of particles, so memory does not grow with the class size
        for first in range(0, members.size, CHUNK_SIZE):
            chunk, chunk_group = members[first:first + CHUNK_SIZE], group[first:first + CHUNK_SIZE]
            aligned = align_images(images[chunk], psi[chunk], None if shifts is None else shifts[chunk],
                                   pixel_size_in_angstroms)
            chunk_ctfs = ctf_images(aligned_ctf[chunk], m, pixel_size_in_angstroms) if with_ctf else None
            for g in np.unique(chunk_group):
                in_group = chunk_group == g
                group_images[c, g] += aligned[in_group].sum(axis=0)
                if with_ctf:
                    group_ctfs[c, g] += chunk_ctfs[in_group].sum(axis=0)
        averages[c] = group_images[c].sum(axis=0) / members.size
        occupied = group_weights[c] > 0
        group_images[c, occupied] /= group_weights[c, occupied, None, None]
        if with_ctf:
            ctfs[c] = group_ctfs[c].sum(axis=0) / members.size
            group_ctfs[c, occupied] /= group_weights[c, occupied, None, None]
    return ClassAverages(class_ids=class_ids, averages=averages, counts=counts, group_images=group_images,
                         group_weights=group_weights, group_defocus_ranges=ranges, ctfs=ctfs,
                         group_ctfs=group_ctfs, polarity=int(polarity),
                         pixel_size_in_angstroms=float(pixel_size_in_angstroms))


def align_images(images: np.ndarray, psi_in_degrees: np.ndarray, shifts_in_angstroms: np.ndarray | None,
                 pixel_size_in_angstroms: float, *, order: int = 3) -> np.ndarray:
    """Particle images brought into their class frame (in-plane angle 0, centred).

    a(v) = p(Rz(-psi) v + t): the shift t is undone by a Fourier phase ramp (exact for a
    band-limited periodic image), then the rotation by spline interpolation of `order` about the
    centre pixel n // 2. Points that come from outside the box are zero.

    Parameters
    ----------
    images : (P, n, n) `[i, y, x]`.
    psi_in_degrees : (P,) in-plane angles (rlnAnglePsi).
    shifts_in_angstroms : (P, 2) particle centres t = (x, y) in Å (minus rlnOriginX/YAngst), or None.
    pixel_size_in_angstroms : float
    order : spline order of the rotation (3: cubic).

    Returns
    -------
    (P, n, n) float64
    """
    images = np.asarray(images, dtype=np.float64)
    n_images, n = images.shape[0], images.shape[-1]
    psi, shifts = _check_poses(psi_in_degrees, shifts_in_angstroms, n_images, pixel_size_in_angstroms)
    psi = np.radians(psi)
    if shifts is not None:
        images = _shift_images(images, -shifts, pixel_size_in_angstroms)
    y, x = np.mgrid[0:n, 0:n] - n // 2  # pixels from the centre
    aligned = np.empty_like(images)
    for i in range(n_images):
        cos, sin = math.cos(psi[i]), math.sin(psi[i])
        # source point Rz(-psi) v = (cos x + sin y, -sin x + cos y), as [row, column]
        source = np.stack([cos * y - sin * x, cos * x + sin * y]) + n // 2
        aligned[i] = ndimage.map_coordinates(images[i], source, order=order, mode="constant", cval=0.0)
    return aligned


def _check_poses(psi_in_degrees, shifts_in_angstroms, n_images: int, pixel_size_in_angstroms: float
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """In-plane angles (P,) in degrees and shifts (P, 2) in Å (or None) as float arrays, checked."""
    psi = np.asarray(psi_in_degrees, dtype=np.float64).reshape(-1)
    if psi.size != n_images:
        raise InputError(f"{psi.size} in-plane angles for {n_images} images; give one per particle")
    if not np.all(np.isfinite(psi)):
        raise InputError("in-plane angles (rlnAnglePsi) contain NaN or infinite values; fix the STAR file")
    if not math.isfinite(pixel_size_in_angstroms) or pixel_size_in_angstroms <= 0:
        raise InputError(f"pixel size {pixel_size_in_angstroms} Å: must be positive")
    if shifts_in_angstroms is None:
        return psi, None
    shifts = np.asarray(shifts_in_angstroms, dtype=np.float64)
    if shifts.shape != (n_images, 2) or not np.all(np.isfinite(shifts)):
        raise InputError(f"shifts: need {n_images} finite (x, y) pairs in Å (rlnOriginX/YAngst), "
                         f"got shape {shifts.shape}")
    return psi, shifts


def _shift_images(images: np.ndarray, shifts_in_angstroms: np.ndarray, pixel_size_in_angstroms: float) -> np.ndarray:
    """Images moved by `shifts` (x, y) in Å: out(u) = image(u - s), by a Fourier phase ramp."""
    n = images.shape[-1]
    ky = np.fft.fftfreq(n, d=pixel_size_in_angstroms)[:, None]
    kx = np.fft.rfftfreq(n, d=pixel_size_in_angstroms)[None, :]
    ramp = np.exp(-2j * np.pi * (kx[None] * shifts_in_angstroms[:, 0, None, None]
                                 + ky[None] * shifts_in_angstroms[:, 1, None, None]))
    return np.fft.irfft2(np.fft.rfft2(images) * ramp, s=images.shape[-2:])


def aligned_ctf_parameters(parameters: CTFParameters, psi_in_degrees: np.ndarray) -> CTFParameters:
    """The CTFs of particles as seen in their class frame: astigmatism angle + psi.

    Aligning rotates the image by -psi about the centre; the CTF g of the aligned image is
    g(k) = f(Rz(-psi) k), whose defocus at azimuth theta is that of f at theta - psi, i.e. the
    same defocus with angle `defocus_angle + psi`.
    """
    psi = np.asarray(psi_in_degrees, dtype=np.float64).reshape(-1)
    if psi.size != len(parameters):
        raise InputError(f"{psi.size} in-plane angles for {len(parameters)} CTF parameter sets")
    fields = {name: getattr(parameters, name) for name in parameters.__dataclass_fields__}
    fields["defocus_angle_in_degrees"] = np.mod(parameters.defocus_angle_in_degrees + psi, 360.0)
    return CTFParameters(**fields)


def defocus_groups(mean_defocus_in_angstroms: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Split defocus values into `n_groups` intervals of equal width over their range.

    Returns
    -------
    group : (P,) int in [0, n_groups), the interval of each value (the maximum goes into the last).
    edges : (n_groups + 1,) interval edges in Å (all equal when the values are).
    """
    values = np.asarray(mean_defocus_in_angstroms, dtype=np.float64).reshape(-1)
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high, int(n_groups) + 1)
    if high <= low:
        return np.zeros(values.size, dtype=np.int64), edges
    group = np.floor((values - low) / (high - low) * n_groups).astype(np.int64)
    return np.clip(group, 0, n_groups - 1), edges
