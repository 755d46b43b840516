"""Soft particle masks for class averages (automatic, replacing the hand-traced masks of thesis 4.1).

Deconvolved class averages keep small non-zero values near the edges and RELION class averages
carry negative CTF-correction ripples around the particle (thesis 4.1, 5.3.2); the Poisson model
needs them removed. Two masks, both `(n, n)` per image with values in [0, 1]:

- automatic (`auto_masks`): low-pass the image, threshold it against robust statistics of the
  outer ring (median + a multiple of the MAD, at least a fraction of the peak), keep the
  connected component with the most signal, fill its holes, dilate it by a margin and give it a
  raised-cosine edge;
- circular (`circular_mask`): the particle's expected radius around the box centre, soft edge.

Images are `(P, n, n)` `[y, x]` with the particle bright on a background near 0 (subtract the
background and fix the polarity first: `cryogmm.preprocess.normalise`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cryogmm.errors import InputError
from cryogmm.preprocess.normalise import outer_ring, radii_in_pixels

# a Gaussian filter of standard deviation s falls to one half at frequency 0.187 / s
# (exp(-2 pi^2 s^2 k^2) = 1/2), so a low-pass "to resolution d" uses s = 0.187 d
_HALF_POWER = float(np.sqrt(np.log(2.0) / 2.0) / np.pi)
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_IN_PLANE = ndimage.generate_binary_structure(2, 1)


def soft_edge(distance_in_pixels: np.ndarray, width_in_pixels: float) -> np.ndarray:
    """Raised cosine: 1 at distance <= 0, `(1 + cos(pi d / w)) / 2` for 0 < d < w, 0 beyond."""
    d = np.asarray(distance_in_pixels, dtype=np.float64)
    if width_in_pixels <= 0:
        return (d <= 0).astype(np.float64)
    ramp = 0.5 * (1.0 + np.cos(np.pi * np.clip(d / width_in_pixels, 0.0, 1.0)))
    return np.where(d <= 0, 1.0, ramp)


def circular_mask(box: int, pixel_size_in_angstroms: float, radius_in_angstroms: float, *,
                  soft_edge_in_angstroms: float = 10.0) -> np.ndarray:
    """A disc of `radius_in_angstroms` around the box centre (index n // 2) with a raised-cosine
    edge of `soft_edge_in_angstroms` outside it; `(n, n)` float64 in [0, 1]."""
    if not radius_in_angstroms > 0:
        raise InputError(f"--radius {radius_in_angstroms}: must be a positive number of Å")
    distance = radii_in_pixels(box) - radius_in_angstroms / pixel_size_in_angstroms
    return soft_edge(distance, soft_edge_in_angstroms / pixel_size_in_angstroms)


def lowpass(images: np.ndarray, pixel_size_in_angstroms: float, resolution_in_angstroms: float) -> np.ndarray:
    """Gaussian low-pass of each image `(P, n, n)` to `resolution_in_angstroms` (the filter is 1/2
    there); at least one pixel of blur. Zero outside the box (the background is 0)."""
    sigma = max(_HALF_POWER * resolution_in_angstroms / pixel_size_in_angstroms, 1.0)
    return ndimage.gaussian_filter(np.asarray(images, dtype=np.float64), (0.0, sigma, sigma),
                                   mode="constant", cval=0.0)


def mask_thresholds(smooth: np.ndarray, *, threshold_in_mads: float = 3.0,
                    min_fraction_of_peak: float = 0.1, search: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image: background median and noise (MAD of the outer ring, as a standard deviation),
    the peak (within `search`, an `(n, n)` bool, if given) and the threshold `median + max(threshold_in_mads * noise, min_fraction_of_peak * (peak - median))`.

    The fraction of the peak keeps the threshold meaningful when the ring is exactly constant
    (RELION class averages are zero outside their circular mask, so the MAD is 0).

    Returns
    -------
    median, noise, peak, threshold : each (P,)
    """
    ring = smooth[:, outer_ring(smooth.shape[-1])]
    median = np.median(ring, axis=1)
    noise = _MAD_TO_SIGMA * np.median(np.abs(ring - median[:, None]), axis=1)
    region = smooth if search is None else np.where(search, smooth, -np.inf)
    peak = region.max(axis=(1, 2))
    threshold = median + np.maximum(threshold_in_mads * noise, min_fraction_of_peak * (peak - median))
    return median, noise, peak, threshold


def _support(above: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The connected component of `above` with the most weight (signal above the threshold),
    holes filled; `(n, n)` bool."""
    labels, count = ndimage.label(above, structure=_IN_PLANE)
    if count == 0:
        return np.zeros_like(above)
    mass = ndimage.sum_labels(weights, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(mass)), structure=_IN_PLANE)


def _image_name(index: int, n_images: int, source: str | None) -> str:
    return f"image {index + 1} of {source}" if source else f"image {index + 1} of {n_images}"


def auto_masks(images: np.ndarray, pixel_size_in_angstroms: float, *, lowpass_in_angstroms: float = 20.0,
               threshold_in_mads: float = 3.0, min_fraction_of_peak: float = 0.1,
               detection_in_mads: float = 8.0, margin_in_angstroms: float = 7.0,
               soft_edge_in_angstroms: float = 10.0, search_radius_in_angstroms: float | None = None,
               source: str | None = None) -> np.ndarray:
    """Automatic soft masks of the particles.

    Parameters
    ----------
    images : (P, n, n) bright particles on a background near 0
    pixel_size_in_angstroms : float
    lowpass_in_angstroms : resolution of the Gaussian low-pass applied before thresholding
    threshold_in_mads : threshold above the ring median, in ring noise standard deviations (MAD)
    min_fraction_of_peak : the threshold is at least this fraction of (low-passed peak - median)
    detection_in_mads : an image whose low-passed peak is less than this many noise standard
        deviations above the ring median holds no particle (InputError)
    margin_in_angstroms : the thresholded region is dilated by this much ...
    soft_edge_in_angstroms : ... and then falls to 0 with a raised cosine over this width
    search_radius_in_angstroms : optional; look for the particle only within this radius of the
        box centre (e.g. to ignore a neighbour at the edge of the box)
    source : name of the input for messages ("image 7 of X.mrcs: ...")

    Returns
    -------
    masks : (P, n, n) float64 in [0, 1]

    Raises
    ------
    InputError
        An image with no signal: nothing above the background.
    """
    images = np.asarray(images, dtype=np.float64)
    n_images, box = images.shape[0], images.shape[-1]
    smooth = lowpass(images, pixel_size_in_angstroms, lowpass_in_angstroms)
    search = None
    if search_radius_in_angstroms is not None:
        search = radii_in_pixels(box) <= search_radius_in_angstroms / pixel_size_in_angstroms
    median, noise, peak, threshold = mask_thresholds(smooth, threshold_in_mads=threshold_in_mads,
                                                     min_fraction_of_peak=min_fraction_of_peak, search=search)
    margin = margin_in_angstroms / pixel_size_in_angstroms
    width = soft_edge_in_angstroms / pixel_size_in_angstroms
    masks = np.empty_like(images)
    for i in range(n_images):
        above = smooth[i] > threshold[i]
        if search is not None:
            above &= search
        detected = peak[i] - median[i] > detection_in_mads * noise[i]
        core = _support(above, smooth[i] - threshold[i]) if detected else None
        if core is None or not core.any():
            raise InputError(f"{_image_name(i, n_images, source)}: no particle found above the background; "
                             "check the image or pass --mask radius")
        distance = ndimage.distance_transform_edt(~core)  # 0 inside the core, pixels outside
        masks[i] = soft_edge(distance - margin, width)
    return masks


def masked_fractions(masks: np.ndarray) -> np.ndarray:
    """Share of each image's pixels that the mask keeps (the mean of the soft mask), `(P,)`."""
    return np.asarray(masks, dtype=np.float64).mean(axis=(-2, -1))
