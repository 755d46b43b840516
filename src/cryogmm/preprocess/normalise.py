"""Background, polarity, clipping and scale of images before the Poisson model.

The Poisson sampler treats an image as counts proportional to density: it needs non-negative
images whose background is exactly zero. These helpers work on stacks `(P, n, n)` `[y, x]`,
vectorised over images.
"""

from __future__ import annotations

import numpy as np

# pixels at least this fraction of the box from the centre (index n // 2) form the outer ring
OUTER_RING_FRACTION = 0.45
SCALES = ("common", "per-image", None)


def radii_in_pixels(box: int) -> np.ndarray:
    """Distance of every pixel of an `(n, n)` image from the box centre (index n // 2), in pixels."""
    y, x = np.indices((box, box)) - box // 2
    return np.hypot(x, y)


def outer_ring(box: int, fraction: float = OUTER_RING_FRACTION) -> np.ndarray:
    """`(n, n)` bool: the pixels at least `fraction * n` from the centre (the corners included).

    With the default 0.45 that is about a third of the box, far from a particle that fits in it.
    """
    return radii_in_pixels(box) >= fraction * box


def background_levels(images: np.ndarray) -> np.ndarray:
    """Median of the outer ring of each image, `(P,)` (robust to a particle that reaches into it)."""
    images = np.asarray(images)
    return np.median(images[:, outer_ring(images.shape[-1])], axis=1)


def subtract_background(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images minus their outer-ring median.

    Returns
    -------
    images : (P, n, n) float64, background level 0
    levels : (P,) the subtracted levels, in the input's units
    """
    images = np.asarray(images, dtype=np.float64)
    levels = background_levels(images)
    return images - levels[:, None, None], levels


def central_contrast(images: np.ndarray, radius_in_pixels: float | None = None) -> np.ndarray:
    """Mean of each image over the central disc minus its outer-ring median, `(P,)`, input units.

    Positive: the particle is brighter than the background (RELION class averages, extracted
    particles); negative: darker (raw micrograph contrast, CONVENTIONS' CTF is negative at low
    frequency). The disc has `radius_in_pixels` (default a quarter of the box).
    """
    images = np.asarray(images, dtype=np.float64)
    box = images.shape[-1]
    radius = box / 4 if radius_in_pixels is None else float(radius_in_pixels)
    disc = radii_in_pixels(box) <= max(radius, 1.0)
    return images[:, disc].mean(axis=1) - background_levels(images)


def apply_masks(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`max(images * masks, 0)`: the background outside the masks becomes exactly 0 and the
    negative values left inside (CTF ripples, noise) are set to 0. Shapes broadcast."""
    return np.clip(np.asarray(images, dtype=np.float64) * masks, 0.0, None)


def negative_mass_fraction(images: np.ndarray, masks: np.ndarray) -> float:
    """Share of the absolute mass inside the masks that is negative (what clipping removes)."""
    weighted = np.asarray(images, dtype=np.float64) * masks
    total = float(np.abs(weighted).sum())
    return float(np.abs(weighted[weighted < 0]).sum() / total) if total > 0 else 0.0


def negative_part(images: np.ndarray) -> tuple[int, float]:
    """Number of clearly negative pixels (below -1e-6 of the largest absolute value) and their
    share of the absolute mass."""
    images = np.asarray(images, dtype=np.float64)
    scale = float(np.abs(images).max()) if images.size else 0.0
    negative = images < -1e-6 * scale
    mass = float(np.abs(images).sum())
    return int(negative.sum()), float(-images[negative].sum() / mass) if mass > 0 else 0.0


def clip_negatives(images: np.ndarray) -> np.ndarray:
    """Subtract each image's background level (median of its outermost ring of pixels) and set
    what is still negative to zero (`cryogmm abinitio --clip-negatives`)."""
    images = np.asarray(images, dtype=np.float64)
    return np.clip(images - background_levels(images)[:, None, None], 0.0, None)


def scale_images(images: np.ndarray, scale: str | None = "common") -> tuple[np.ndarray, np.ndarray]:
    """Put non-negative images on a convenient intensity scale.

    The Poisson model draws a fixed number of counts per image in proportion to its density, so
    scaling changes nothing downstream; it only makes files and figures comparable.

    Parameters
    ----------
    images : (P, n, n) non-negative
    scale : "common" (default): one factor for the whole stack, so that the median image sums
        to 1; relative intensities between images are kept (useful to spot a faint or saturated
        class average). "per-image": every image sums to 1 (each image a probability
        distribution over pixels, the Poisson model's view). None: unchanged.

    Returns
    -------
    images : (P, n, n) float64
    factors : (P,) what each image was divided by
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    images = np.asarray(images, dtype=np.float64)
    sums = images.sum(axis=(1, 2))
    if scale is None:
        factors = np.ones(len(images))
    elif scale == "per-image":
        factors = np.where(sums > 0, sums, 1.0)
    else:
        positive = sums[sums > 0]
        factors = np.full(len(images), float(np.median(positive)) if positive.size else 1.0)
    return images / factors[:, None, None], factors
