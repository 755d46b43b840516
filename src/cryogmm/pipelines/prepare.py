"""Prepare class averages for the Poisson model: non-negative, zero background, centred.

Thesis 4.1 masked deconvolved class averages by hand and 5.3.2 centred them on their centre of
mass; this does both automatically and reproducibly. Steps, in order (the order matters):

1. Fourier-crop to `box` (optional). First, so that every later step works at the pixel size the
   images are used at, and so that the crop's ringing cannot bring back negative values or a
   non-zero background after masking.
2. Subtract the background: the median of the outer ring of each image.
3. Polarity: if the central region is darker than the background, invert (raw particle contrast,
   CONVENTIONS' CTF is negative at low frequency); decided once for the whole stack.
4. Mask (automatic from the low-passed image, or circular), then centre: shift each image by
   Fourier phase ramps so the centre of mass of its masked non-negative part lands at n // 2.
   The mask is recomputed on the shifted image and the centre of mass checked again (up to
   `MAX_CENTERING_PASSES` times), so the final mask belongs to the centred particle.
5. Multiply by the mask and clip negatives: background exactly 0, no negative pixels.
6. Scale (one factor for the stack by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from cryogmm.errors import InputError
from cryogmm.preprocess.center import centers_of_mass, fourier_shift
from cryogmm.preprocess.mask import auto_masks, circular_mask, masked_fractions
from cryogmm.preprocess.normalise import (
    SCALES,
    apply_masks,
    central_contrast,
    negative_mass_fraction,
    scale_images,
    subtract_background,
)
from cryogmm.preprocess.resample import fourier_crop

logger = logging.getLogger(__name__)

MASKS = ("auto", "radius", None)
INVERT = ("auto", True, False)
MAX_CENTERING_PASSES = 4
CENTERING_TOLERANCE_IN_PIXELS = 0.01
LARGE_SHIFT_FRACTION = 0.2  # shifts beyond this share of the box are reported as suspicious


@dataclass(frozen=True, eq=False)
class PreparedImages:
    """Images ready for the Poisson model and a record of what was done to them.

    Attributes
    ----------
    images : (P, m, m) float64, non-negative, zero outside the masks, particle centre at m // 2
    pixel_size_in_angstroms : float, after cropping
    masks : (P, m, m) float64 in [0, 1], the masks applied (on the centred images)
    shifts_in_angstroms : (P, 2) `t = (x, y)`: particle centre in the input image relative to the
        box centre, Å (`cryogmm.io.star` convention; RELION origin `-t`); zeros without centring
    inverted : bool, the contrast was inverted
    masked_fractions : (P,) mean of each mask (share of the pixels kept)
    background_levels : (P,) outer-ring medians subtracted, in input units
    scale_factors : (P,) what each image was divided by at the end
    notes : human-readable lines, one per step
    settings : every option used
    """

    images: np.ndarray
    pixel_size_in_angstroms: float
    masks: np.ndarray
    shifts_in_angstroms: np.ndarray
    inverted: bool
    masked_fractions: np.ndarray
    background_levels: np.ndarray
    scale_factors: np.ndarray
    notes: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = np.asarray(self.images, dtype=np.float64)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (P, m, m), got {images.shape}")
        if np.any(images < 0):
            raise ValueError("prepared images must be non-negative")
        n = images.shape[0]
        for name, shape in (("masks", images.shape), ("shifts_in_angstroms", (n, 2)), ("masked_fractions", (n,)),
                            ("background_levels", (n,)), ("scale_factors", (n,))):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "pixel_size_in_angstroms", float(self.pixel_size_in_angstroms))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.pixel_size_in_angstroms > 0:
            raise ValueError(f"pixel_size_in_angstroms must be positive, got {self.pixel_size_in_angstroms}")


def _check_inputs(images, pixel_size_in_angstroms, mask, radius_in_angstroms, invert, box, scale, source):
    name = source or "the images"
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0:
        raise InputError(f"{name}: expected a stack of images (P, n, n), got shape {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise InputError(f"{name}: images are {images.shape[2]} x {images.shape[1]} pixels; they must be "
                         "square (pad or crop them to a square box)")
    if not np.all(np.isfinite(images)):
        raise InputError(f"{name}: {int(np.count_nonzero(~np.isfinite(images)))} values are NaN or infinite; "
                         "fix or replace the images")
    if not (np.isfinite(pixel_size_in_angstroms) and pixel_size_in_angstroms > 0):
        raise InputError(f"--pixel-size {pixel_size_in_angstroms}: must be a positive number of Å")
    if mask not in MASKS:
        raise InputError(f"--mask {mask}: choose auto, radius or none")
    if mask == "radius" and radius_in_angstroms is None:
        raise InputError("--mask radius needs --radius (the particle radius in Å)")
    if radius_in_angstroms is not None and not (np.isfinite(radius_in_angstroms) and radius_in_angstroms > 0):
        raise InputError(f"--radius {radius_in_angstroms}: must be a positive number of Å")
    if invert not in INVERT:
        raise InputError(f"--invert {invert}: choose auto, yes or no")
    if box is not None and not 8 <= int(box) <= images.shape[-1]:
        raise InputError(f"--box {box}: must be between 8 and the image size {images.shape[-1]}")
    if scale not in SCALES:
        raise InputError(f"--scale {scale}: choose common, per-image or none")
    return images


def _percent(values) -> str:
    return f"{100 * float(np.mean(values)):.0f}% of pixels on average (range {100 * float(np.min(values)):.0f}-" \
           f"{100 * float(np.max(values)):.0f}%)"


def prepare_images(images: np.ndarray, pixel_size_in_angstroms: float, *, mask: str | None = "auto",
                   radius_in_angstroms: float | None = None, center: bool = True, box: int | None = None,
                   invert: str | bool = "auto", scale: str | None = "common",
                   lowpass_in_angstroms: float = 20.0, margin_in_angstroms: float = 7.0,
                   soft_edge_in_angstroms: float = 10.0, source: str | None = None) -> PreparedImages:
    """Background, polarity, mask, centre, clip and scale a stack of class averages (module docstring).

    Parameters
    ----------
    images : (P, n, n) `[y, x]`, any offset and polarity
    pixel_size_in_angstroms : float
    mask : "auto" (threshold of the low-passed image, `cryogmm.preprocess.mask.auto_masks`),
        "radius" (a disc of `radius_in_angstroms` around the box centre) or None (no mask: only
        the negative values are clipped; background noise stays)
    radius_in_angstroms : particle radius; required with mask="radius"; with mask="auto" the
        particle is looked for only within this radius of the box centre
    center : shift each image so its centre of mass lands at index n // 2
    box : Fourier-crop to this box first (the pixel size grows by n / box)
    invert : "auto" (invert when the central region is darker than the background), True, False
    scale : "common", "per-image" or None (`cryogmm.preprocess.normalise.scale_images`)
    lowpass_in_angstroms, margin_in_angstroms, soft_edge_in_angstroms : automatic mask options
    source : name of the input for messages ("image 7 of X.mrcs: ...")

    Raises
    ------
    InputError
        Bad shapes or options, NaNs, or an image in which no particle is found.
    """
    images = _check_inputs(images, pixel_size_in_angstroms, mask, radius_in_angstroms, invert, box, scale, source)
    settings = dict(mask=mask or "none", radius_in_angstroms=radius_in_angstroms, center=center, box=box,
                    invert=invert, scale=scale or "none", lowpass_in_angstroms=lowpass_in_angstroms,
                    margin_in_angstroms=margin_in_angstroms, soft_edge_in_angstroms=soft_edge_in_angstroms)
    n_images, n = images.shape[0], images.shape[-1]
    pixel = float(pixel_size_in_angstroms)
    notes = []
    if box is not None and int(box) != n:
        images = fourier_crop(images, int(box))
        notes.append(f"Fourier-cropped {n_images} images from {n} to {int(box)} px: pixel size {pixel:.4g} -> "
                     f"{pixel * n / int(box):.4g} Å")
        pixel *= n / int(box)
        n = int(box)

    peak = float(np.abs(images).max())
    images, levels = subtract_background(images)
    if np.all(np.abs(levels) <= 1e-6 * peak):
        notes.append(f"no background to subtract: the median of the outer ring is 0 in all {n_images} images")
    else:
        notes.append(f"subtracted the background (median of the outer ring: {levels.min():.3g} to "
                     f"{levels.max():.3g}) from {n_images} images")

    radius_in_pixels = None if radius_in_angstroms is None else radius_in_angstroms / pixel
    contrast = central_contrast(images, radius_in_pixels)
    n_dark = int(np.count_nonzero(contrast < 0))
    inverted = bool(n_dark * 2 > n_images) if invert == "auto" else bool(invert)
    if inverted:
        images = -images
    how = "detected" if invert == "auto" else "as asked"
    polarity = (f"{n_dark} of {n_images} images have a centre darker than the background")
    notes.append(f"inverted the contrast ({how}): {polarity}" if inverted
                 else f"kept the contrast ({how}): {polarity}")
    if invert == "auto" and 0 < min(n_dark, n_images - n_dark):
        odd = np.flatnonzero((contrast < 0) != inverted) + 1
        notes.append(f"warning: image(s) {', '.join(map(str, odd[:10]))} look the other polarity; check them")

    def make_masks(current: np.ndarray) -> np.ndarray:
        if mask == "auto":
            return auto_masks(current, pixel, lowpass_in_angstroms=lowpass_in_angstroms,
                              margin_in_angstroms=margin_in_angstroms, soft_edge_in_angstroms=soft_edge_in_angstroms,
                              search_radius_in_angstroms=radius_in_angstroms, source=source)
        if mask == "radius":
            disc = circular_mask(n, pixel, radius_in_angstroms, soft_edge_in_angstroms=soft_edge_in_angstroms)
            return np.broadcast_to(disc, current.shape)
        return np.ones_like(current)

    shifted = images
    masks = make_masks(shifted)
    total = np.zeros((n_images, 2))
    if center:
        for _ in range(MAX_CENTERING_PASSES):
            try:
                residual = centers_of_mass(shifted * masks)
            except ValueError as exc:
                raise InputError(f"{source or 'the images'}: {exc} inside the mask; check the images or the "
                                 "--invert/--mask options") from exc
            if np.abs(residual).max() < CENTERING_TOLERANCE_IN_PIXELS:
                break
            total += residual
            shifted = fourier_shift(images, -total)
            masks = make_masks(shifted)

    negative = negative_mass_fraction(shifted, masks)
    prepared = apply_masks(shifted, masks)
    empty = np.flatnonzero(~np.any(prepared > 0, axis=(1, 2)))
    if empty.size:
        raise InputError(f"{source or 'the images'}: image(s) {', '.join(str(i + 1) for i in empty[:5])} have no "
                         "positive density inside the mask; check them or the --invert/--mask options")
    fractions = masked_fractions(masks)
    if mask is not None:
        notes.append(f"masked ({mask}): kept {_percent(fractions)}")
    if center:
        lengths = np.hypot(total[:, 0], total[:, 1]) * pixel
        notes.append(f"centred on the centre of mass: median shift {np.median(lengths):.1f} Å, largest "
                     f"{lengths.max():.1f} Å (image {int(np.argmax(lengths)) + 1})")
        far = np.flatnonzero(lengths > LARGE_SHIFT_FRACTION * n * pixel) + 1
        if far.size:
            # noise-dominated images (single particles) have a wandering centre of mass
            notes.append(f"warning: image(s) {', '.join(map(str, far[:10]))} moved by more than "
                         f"{100 * LARGE_SHIFT_FRACTION:.0f}% of the box; check them (or pass --no-center)")
    notes.append(f"clipped negative values: {100 * negative:.1f}% of the absolute mass inside the masks")
    prepared, factors = scale_images(prepared, scale)
    if scale == "common":
        notes.append(f"scaled all images by one factor (1/{factors[0]:.4g}): the median image sums to 1")
    elif scale == "per-image":
        notes.append("scaled every image to sum to 1")
    for note in notes:  # the caller reports them (`notes`), once
        logger.debug(note)
    return PreparedImages(prepared, pixel, np.array(masks), total * pixel, inverted, fractions, levels,
                          factors, tuple(notes), settings)
