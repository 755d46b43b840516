"""Direct Fourier inversion with known poses: the baseline of thesis section 3.2.3.

By the projection-slice theorem the 2D Fourier transform of image i is the central slice of the
3D transform F of the map through the plane k3 = A_i^T (kx, ky, 0): a map point x lands at
P_o A_i x + t_i in the image (CONVENTIONS.md), so

    I_i(k) = exp(-2 pi i k . t_i) F(A_i^T P_o^T k).

Each image is zero-padded, transformed, phase-shifted by +t_i to undo its shift and inserted into
a 3D Fourier volume by trilinear gridding of both the values and the weights (half of each
image's transform, `rfft2`; the other half follows from Hermitian symmetry); the volume is
divided by (weights + wiener_constant), transformed back, cropped to the image box and divided by
the real-space apodisation of the trilinear kernel (sinc^2 per axis, "gridding correction").
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.ndimage import map_coordinates

from cryogmm.errors import InputError

DEFAULT_WIENER_CONSTANT = 1e-3


@numba.njit(nogil=True, cache=True)
def _insert_half_slice(data, weights, values, sample_weights, rotation, max_radius):
    """Add half of one central slice to `data` and `weights` (`(m, m, m)`, `[z, y, x]`, FFT order).

    values, sample_weights : (m, m // 2 + 1) arrays `[y, x]`, the `np.fft.rfft2` half-plane
        (frequencies fx >= 0). Only one pixel of each pair (k, -k) is inserted (fx > 0, or fx = 0
        and fy >= 0; the zero frequency with half weight); `_add_mirror` adds the other one.
    rotation : (3, 3) RELION matrix A; the pixel at integer frequency (fx, fy) goes to
        k3 = A^T (fx, fy, 0) (in Fourier voxels), spread over its 8 neighbours with trilinear
        weights; frequencies with |(fx, fy)| >= max_radius are skipped.
    """
    m = data.shape[0]
    half = (m + 1) // 2
    for iy in range(m):
        fy = iy if iy < half else iy - m
        for fx in range(values.shape[1]):
            if fx * fx + fy * fy >= max_radius * max_radius or (fx == 0 and fy < 0):
                continue
            k = (rotation[0, 0] * fx + rotation[1, 0] * fy,
                 rotation[0, 1] * fx + rotation[1, 1] * fy,
                 rotation[0, 2] * fx + rotation[1, 2] * fy)
            x0, y0, z0 = np.floor(k[0]), np.floor(k[1]), np.floor(k[2])
            dx, dy, dz = k[0] - x0, k[1] - y0, k[2] - z0
            scale = 0.5 if fx == 0 and fy == 0 else 1.0
            v = scale * values[iy, fx]
            s = scale * sample_weights[iy, fx]
            for cz in range(2):
                wz = dz if cz else 1.0 - dz
                iz = (int(z0) + cz) % m
                for cy in range(2):
                    wzy = wz * (dy if cy else 1.0 - dy)
                    jy = (int(y0) + cy) % m
                    for cx in range(2):
                        w = wzy * (dx if cx else 1.0 - dx)
                        jx = (int(x0) + cx) % m
                        data[iz, jy, jx] += w * v
                        weights[iz, jy, jx] += w * s


def _mirror(volume: np.ndarray) -> np.ndarray:
    """volume[-i mod m] on every axis: the value at frequency -k, in FFT order."""
    return np.roll(volume[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))


def fourier_inversion(images, rotations, shifts_in_angstroms, pixel_size_in_angstroms, *, ctf=None,
                      wiener_constant: float = DEFAULT_WIENER_CONSTANT, padding_factor: float = 2,
                      dtype=np.float32) -> np.ndarray:
    """Reconstruct a map from images with known poses by direct Fourier inversion (section 3.2.3).

    Parameters
    ----------
    images : (P, n, n) array `[i, y, x]`
        Projections (line integrals of the density) on the grid `Grid.centered((n, n), pixel)`:
        pixel `n // 2` is the image centre.
    rotations : (P, 3, 3) array
        RELION matrices A: a map point x lands at P_o A x + t in image i.
    shifts_in_angstroms : (P, 2) array or None
        Position t = (x, y) of the particle centre in each image, in Å from the image centre
        (the negative of `rlnOriginX/YAngst`); the image is the projection translated by +t.
        None means no shifts.
    pixel_size_in_angstroms : float
        Pixel size of the images, which becomes the voxel size of the map.
    ctf : (P, n, n) array, optional
        CTF value of each image at each frequency of the unpadded image's FFT, in `np.fft.fft2`
        order (index [0, 0] is the zero frequency; frequencies `np.fft.fftfreq(n, pixel)`), so
        that FFT(image) = CTF * FFT(projection). It is interpolated (bilinearly) to the padded
        grid; CTF * image is inserted with weight CTF^2, giving the Wiener-like estimate
        sum(CTF I) / (sum(CTF^2) + wiener_constant). None means CTF = 1.
    wiener_constant : float, >= 0
        Added to the gridded weights before dividing. Weights count Fourier samples (each image
        pixel adds its trilinear fractions, times CTF^2), so 1 is one fully weighted sample;
        the default 1e-3 only damps voxels that no slice really reaches (0 is allowed: plain
        normalised gridding; voxels with no weight are then zero).
    padding_factor : float, >= 1
        Images are zero-padded to round(padding_factor * n) pixels before the FFT; 2, the usual
        choice, keeps the trilinear gridding error below a per cent on smooth maps.
    dtype : numpy float dtype of the result.

    Returns
    -------
    (n, n, n) array `[z, y, x]`: the density whose line integrals the images are (in 1/Å^3 for
    images in 1/Å^2, as `mixture.evaluate` of a projected mixture gives), voxel size
    `pixel_size_in_angstroms`, the origin at index n // 2 on each axis
    (the grid `Grid.centered((n, n, n), pixel)`). Fourier components beyond the images'
    Nyquist sphere are zero.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 2:
        raise InputError(f"images must be a (P, n, n) stack of square images, got shape {images.shape}")
    n_images, n = images.shape[0], images.shape[1]
    if n_images == 0:
        raise InputError("no images to reconstruct from")
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.shape != (n_images, 3, 3):
        raise InputError(f"rotations must have shape ({n_images}, 3, 3) for {n_images} images, "
                         f"got {rotations.shape}")
    if shifts_in_angstroms is None:
        shifts = np.zeros((n_images, 2))
    else:
        shifts = np.asarray(shifts_in_angstroms, dtype=np.float64)
        if shifts.shape != (n_images, 2):
            raise InputError(f"shifts must have shape ({n_images}, 2) for {n_images} images, got {shifts.shape}")
    if ctf is not None:
        ctf = np.asarray(ctf, dtype=np.float64)
        if ctf.shape != images.shape:
            raise InputError(f"ctf must have the images' shape {images.shape}, got {ctf.shape}")
    pixel = float(pixel_size_in_angstroms)
    if not np.isfinite(pixel) or pixel <= 0:
        raise InputError(f"pixel size must be positive, got {pixel_size_in_angstroms} Å")
    if not np.isfinite(wiener_constant) or wiener_constant < 0:
        raise InputError(f"wiener_constant must be non-negative, got {wiener_constant}")
    if not np.isfinite(padding_factor) or padding_factor < 1:
        raise InputError(f"padding_factor must be at least 1, got {padding_factor}")
    for name, array in (("images", images), ("rotations", rotations), ("shifts", shifts), ("ctf", ctf)):
        if array is not None and not np.all(np.isfinite(array)):
            raise InputError(f"{name} contain NaN or infinite values")

    m = max(n, int(round(padding_factor * n)))
    start = m // 2 - n // 2  # image pixel n // 2 (the centre) goes to padded pixel m // 2
    fy = np.rint(np.fft.fftfreq(m) * m)  # integer frequencies, FFT order
    fx = fy[: m // 2 + 1].copy()
    fx[-1] = abs(fx[-1])  # the rfft2 columns: 0 .. m // 2
    # bilinear interpolation of the CTF: padded frequency f / (m p) is unpadded index f n / m
    ctf_coords = np.stack(np.meshgrid(fy * n / m, fx * n / m, indexing="ij"))
    data = np.zeros((m, m, m), dtype=np.complex128)
    weights = np.zeros((m, m, m), dtype=np.float64)
    padded = np.zeros((m, m), dtype=np.float64)
    ones = np.ones((m, m // 2 + 1), dtype=np.float64)
    phase = 2j * np.pi / (m * pixel)  # undo the shift t: multiply by exp(+2 pi i k . t)
    for i in range(n_images):
        padded[start:start + n, start:start + n] = images[i]
        values = np.fft.rfft2(np.fft.ifftshift(padded))  # the box centre is the origin
        values *= np.exp(phase * fy * shifts[i, 1])[:, None] * np.exp(phase * fx * shifts[i, 0])[None, :]
        sample_weights = ones
        if ctf is not None:
            ctf_padded = map_coordinates(ctf[i], ctf_coords, order=1, mode="grid-wrap")
            values *= ctf_padded
            sample_weights = ctf_padded**2
        _insert_half_slice(data, weights, values, sample_weights, rotations[i], m / 2)
    # the image is real, so pixel -k holds conj(pixel k): add the mirrored half (Hermitian volume)
    data += np.conj(_mirror(data))
    weights += _mirror(weights)

    denominator = weights + wiener_constant  # voxels no slice reaches stay zero
    data = np.divide(data, denominator, out=np.zeros_like(data), where=denominator > 0)
    # continuous transforms: image FT = p^2 DFT, map FT = p^3 DFT, so map DFT = image DFT / p
    volume = np.fft.fftshift(np.fft.irfftn(data[:, :, : m // 2 + 1], s=(m, m, m), axes=(0, 1, 2))) / pixel
    volume = volume[start:start + n, start:start + n, start:start + n]
    apodisation = np.sinc((np.arange(n) - n // 2) / m) ** 2  # FT of the trilinear tent, per axis
    volume /= apodisation[:, None, None] * apodisation[None, :, None] * apodisation[None, None, :]
    return volume.astype(dtype)
