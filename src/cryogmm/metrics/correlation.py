"""Similarity of maps and images."""

from __future__ import annotations

import numpy as np


def cross_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised cross-correlation <x, y> / (|x| |y|) of two arrays (thesis Eqn. 3.3).

    Not mean-subtracted, as in the thesis: for non-negative maps it lies in [0, 1].
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"arrays differ in size: {x.size} and {y.size}")
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm > 0 else 0.0


def best_match_correlations(images: np.ndarray, references: np.ndarray, *, psi_step_in_degrees: float = 3.0,
                            max_shift_in_pixels: float | None = None, chunk: int = 64
                            ) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the best normalised cross-correlation with any reference over in-plane
    rotations and shifts, and which reference gave it.

    images : (K, n, n), e.g. class averages; references : (R, n, n), e.g. true projections.
    Each image is rotated by every multiple of `psi_step_in_degrees` (Fourier interpolation on a
    2x padded grid, `cryogmm.forward.fourier.rotated_images`) and circularly cross-correlated with
    every zero-mean reference (by FFT); the correlation at shift t is sum_u a(u) r(u - t) / (|a| |r|)
    for zero-mean a and r, maximised over |t| <= max_shift_in_pixels (None: every shift).
    Returns (K,) correlations and (K,) reference indices.
    """
    from cryogmm.forward.fourier import image_pixels, images_to_fourier, rotated_images

    images = np.asarray(images, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    if images.ndim != 3 or references.ndim != 3 or images.shape[1:] != references.shape[1:]:
        raise ValueError(f"images {images.shape} and references {references.shape} must be (K, n, n) and (R, n, n)")
    n = images.shape[-1]
    refs = references - references.mean(axis=(1, 2), keepdims=True)
    ref_spectra = np.conj(np.fft.rfft2(np.fft.ifftshift(refs, axes=(-2, -1))))  # origin at n // 2, as the images'
    ref_norm = np.linalg.norm(refs.reshape(len(refs), -1), axis=1)
    pixels = image_pixels(n, n / 2 - 0.5, include_zero=True, both_halves_of_x0=True)
    psi = np.arange(0.0, 360.0, psi_step_in_degrees)
    c = np.fft.fftfreq(n) * n
    shift_ok = np.ones((n, n), bool) if max_shift_in_pixels is None else (
        np.hypot(c[:, None], c[None, :]) <= max_shift_in_pixels + 1e-9)
    best = np.full(len(images), -np.inf)
    which = np.zeros(len(images), dtype=np.int64)
    for k in range(len(images)):  # one image at a time: (J, R) correlation maps in chunks
        rotated = rotated_images(images_to_fourier(images[k:k + 1]), psi, pixels)[0]
        spectra = np.zeros((psi.size, n * (n // 2 + 1)), np.complex128)
        spectra[:, pixels.index] = rotated
        spectra = spectra.reshape(psi.size, n, n // 2 + 1)
        spectra[:, 0, 0] = 0.0  # zero mean
        real = np.fft.irfft2(spectra, s=(n, n))
        norms = np.linalg.norm(real.reshape(psi.size, -1), axis=1)
        for start in range(0, len(refs), chunk):
            maps = np.fft.irfft2(spectra[:, None] * ref_spectra[None, start:start + chunk], s=(n, n))
            maps = np.where(shift_ok, maps, -np.inf).max(axis=(-2, -1))  # (J, chunk)
            cc = maps / np.maximum(norms[:, None] * ref_norm[None, start:start + chunk], 1e-300)
            r = int(np.argmax(cc.max(axis=0)))
            if cc.max() > best[k]:
                best[k], which[k] = float(cc.max()), start + r
    return best, which
