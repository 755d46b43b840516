"""Centring images on their centre of mass (thesis 5.3.2) by sub-pixel Fourier shifts.

Shifts follow `cryogmm.io.star`: `t = (x, y)` is the particle centre relative to the box centre
(index n // 2 on each axis), in pixels or Å as the name says. Centring moves the particle by `-t`;
the STAR origin that undoes the centring of the original image is `rlnOrigin{X,Y}Angst = -t`.
"""

from __future__ import annotations

import numpy as np


def centers_of_mass(images: np.ndarray) -> np.ndarray:
    """Centre of mass of the non-negative part of each image, relative to the box centre.

    Parameters
    ----------
    images : (P, n, n) `[y, x]`; negative values are ignored (weights are `max(image, 0)`)

    Returns
    -------
    (P, 2) `(x, y)` in pixels: the centre of mass minus index `n // 2`.

    Raises
    ------
    ValueError
        An image has no positive value.
    """
    weights = np.clip(np.asarray(images, dtype=np.float64), 0.0, None)
    box = weights.shape[-1]
    coordinates = np.arange(box, dtype=np.float64) - box // 2
    mass = weights.sum(axis=(1, 2))
    if np.any(mass <= 0):
        bad = np.flatnonzero(mass <= 0)
        raise ValueError(f"image(s) {', '.join(str(i + 1) for i in bad[:5])} have no positive values")
    x = weights.sum(axis=1) @ coordinates / mass
    y = weights.sum(axis=2) @ coordinates / mass
    return np.stack([x, y], axis=1)


def fourier_shift(images: np.ndarray, shifts_in_pixels: np.ndarray) -> np.ndarray:
    """Translate each image by `(dx, dy)` pixels (content at `p` moves to `p + shift`), periodically.

    Multiplies the Fourier transform by the phase ramp `exp(-2 pi i (kx dx + ky dy))`. Exact for
    band-limited images; for even boxes the Nyquist row and column, whose shifted versions are
    not real, keep only their real part (so round trips are exact only without Nyquist content).

    Parameters
    ----------
    images : (P, n, n)
    shifts_in_pixels : (P, 2) or (2,) `(dx, dy)`

    Returns
    -------
    (P, n, n) float64
    """
    images = np.asarray(images, dtype=np.float64)
    ny, nx = images.shape[-2:]
    shifts = np.broadcast_to(np.asarray(shifts_in_pixels, dtype=np.float64), (images.shape[0], 2))
    kx = np.fft.rfftfreq(nx)
    ky = np.fft.fftfreq(ny)
    ramp = np.exp(-2j * np.pi * (shifts[:, 0, None, None] * kx[None, None, :]
                                 + shifts[:, 1, None, None] * ky[None, :, None]))
    return np.fft.irfft2(np.fft.rfft2(images) * ramp, s=(ny, nx))


def center_images(images: np.ndarray, pixel_size_in_angstroms: float, *,
                  weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shift each image so that the centre of mass of `max(images * weights, 0)` lands on index n // 2.

    Parameters
    ----------
    images : (P, n, n)
    pixel_size_in_angstroms : float
    weights : (P, n, n) or (n, n), optional; e.g. soft masks, so that background noise does not
        pull the centre of mass towards the box centre

    Returns
    -------
    centred : (P, n, n) float64, the whole images shifted (negative values kept)
    shifts_in_angstroms : (P, 2) `t = (x, y)`, the particle centre before centring relative to the
        box centre, in Å (record `rlnOriginXAngst, rlnOriginYAngst = -t` to undo it)
    """
    images = np.asarray(images, dtype=np.float64)
    weighted = images if weights is None else images * weights
    shifts_in_pixels = centers_of_mass(weighted)
    return fourier_shift(images, -shifts_in_pixels), shifts_in_pixels * float(pixel_size_in_angstroms)
