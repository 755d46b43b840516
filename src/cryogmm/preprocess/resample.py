"""Resampling images by Fourier cropping (downsampling without aliasing)."""

from __future__ import annotations

import numpy as np


def fourier_crop(images: np.ndarray, new_box: int) -> np.ndarray:
    """Downsample square images `(..., n, n)` to `(..., m, m)` (m <= n) by keeping the lowest
    m x m Fourier coefficients; the pixel size grows by n / m. The image centre (pixel n // 2)
    maps to the new centre (pixel m // 2). Values stay samples of the same band-limited function
    (a density per Å^2 keeps its values; the sum over pixels shrinks by (m / n)^2). Cropping can
    leave small negative ringing near sharp edges.
    """
    images = np.asarray(images, dtype=np.float64)
    n = images.shape[-1]
    m = int(new_box)
    if images.shape[-2] != n:
        raise ValueError(f"images must be square, got {images.shape[-2:]}")
    if not 1 <= m <= n:
        raise ValueError(f"the new box {m} must be between 1 and {n}")
    if m == n:
        return images.copy()
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))
    c = n // 2
    lo = c - m // 2
    cropped = f[..., lo:lo + m, lo:lo + m]
    if m % 2 == 0:
        # the Nyquist row/column of the small box must stay real: keep its Hermitian part
        cropped = cropped.copy()
        cropped[..., 0, :] = 0.5 * (cropped[..., 0, :] + np.conj(cropped[..., 0, ::-1][..., np.r_[-1, 0:m - 1]]))
        cropped[..., :, 0] = 0.5 * (cropped[..., :, 0] + np.conj(cropped[..., ::-1, 0][..., np.r_[-1, 0:m - 1]]))
    out = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(cropped, axes=(-2, -1))), axes=(-2, -1)).real
    return out * (m * m) / (n * n)


def resample_map(volume: np.ndarray, voxel_size_in_angstroms: float, new_voxel_size_in_angstroms: float,
                 new_box: int) -> np.ndarray:
    """A map on another grid: `new_box`^3 voxels of `new_voxel_size_in_angstroms`, same centre (voxel n // 2).

    Cubic-spline interpolation, after a Fourier low-pass at the new grid's Nyquist frequency when
    the new voxels are larger (no aliasing). Values stay densities per voxel volume of the input
    (sample values are interpolated, not summed).
    """
    from scipy.ndimage import map_coordinates

    volume = np.asarray(volume, dtype=np.float64)
    n = volume.shape[0]
    ratio = new_voxel_size_in_angstroms / voxel_size_in_angstroms
    if ratio > 1:
        f = np.fft.fftfreq(n)
        h = np.fft.rfftfreq(n)
        radius = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + h[None, None, :] ** 2)
        volume = np.fft.irfftn(np.fft.rfftn(volume) * (radius <= 0.5 / ratio), s=volume.shape, axes=(0, 1, 2))
    axis = (np.arange(new_box) - new_box // 2) * ratio + n // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    out = map_coordinates(volume, np.stack([z, y, x]), order=3, mode="constant", cval=0.0)
    return out.astype(np.float32)
