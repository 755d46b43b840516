"""Voxel maps in Fourier space: central-slice projection and the map <-> Fourier-grid round trip.

By the projection-slice theorem (thesis section 1.3) the 2D transform of the projection of a map
in orientation A (RELION matrix; a map point x lands at P_o A x + t in the image, CONVENTIONS.md)
is the central slice of the map's 3D transform F through the plane q = A^T (kx, ky, 0):

    I(k) = exp(-2 pi i k . t) F(A^T P_o^T k).

The map is zero-padded to `m = padding_factor * n` voxels before its transform, so that the slice
can be read by trilinear interpolation on a grid twice as fine as the image's frequencies;
trilinear interpolation multiplies the map in real space by sinc^2 per axis, which
`map_to_fourier` divides out beforehand ("gridding correction"). The transform is stored as the
half spectrum of `np.fft.rfftn` (`cryogmm.kernels.fourier_slices`). Units: a projection is the
sum of voxel values along the beam (voxel units, as `relion_project` makes them).

Image-side frequencies are integers `(fx, fy)` of the unpadded n-pixel image's `np.fft.rfft2` of
`np.fft.ifftshift(image)` (so pixel n // 2 is the origin); a `FourierPixels` set lists those
within a radius, in the order the E-step's matrices use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.errors import InputError
from cryogmm.kernels.fourier_slices import extract_rotated, extract_slices

DEFAULT_PADDING_FACTOR = 2


@dataclass(frozen=True, eq=False)
class FourierVolume:
    """The half spectrum of a zero-padded, gridding-corrected map.

    Attributes
    ----------
    spectrum : (m, m, m // 2 + 1) complex64
        `rfftn(ifftshift(padded / apodisation))`, `[kz, ky, kx]`.
    box : int
        n, the map's (and the images') box in voxels; m = padding_factor * n.
    """

    spectrum: np.ndarray
    box: int

    @property
    def size(self) -> int:
        return self.spectrum.shape[0]

    @property
    def padding_factor(self) -> float:
        return self.size / self.box

    @property
    def max_image_radius(self) -> float:
        """Largest image frequency radius (Fourier pixels) that can be sliced: (m / 2 - 1) / pad."""
        return (self.size / 2 - 1) / self.padding_factor


@dataclass(frozen=True, eq=False)
class FourierPixels:
    """Frequencies of an n-pixel image inside a radius, one of each Hermitian pair.

    Attributes
    ----------
    fx, fy : (S,) float64 integer frequencies in Fourier pixels (fx > 0, or fx = 0 and fy > 0;
        the zero frequency is left out unless `include_zero`).
    index : (S,) int64 flat index into an `(n, n // 2 + 1)` rfft2 array.
    shell : (S,) int64 the radius rounded to the nearest integer (shell of `cryogmm.metrics.fsc`).
    box : int, n.
    max_radius : float, every |(fx, fy)| < max_radius.
    """

    fx: np.ndarray
    fy: np.ndarray
    index: np.ndarray
    shell: np.ndarray
    box: int
    max_radius: float

    def __len__(self) -> int:
        return self.fx.size


def half_spectrum_radius(m: int) -> np.ndarray:
    """|k| in Fourier voxels of every coefficient of an `np.fft.rfftn` of an m^3 array: (m, m, m // 2 + 1)."""
    f = np.fft.fftfreq(m) * m
    h = np.arange(m // 2 + 1)
    return np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + h[None, None, :] ** 2)


def _apodisation(n: int, m: int) -> np.ndarray:
    """sinc^2 of the trilinear kernel on the n-box centred at n // 2, for a grid of m voxels."""
    return np.sinc((np.arange(n) - n // 2) / m) ** 2


def _check_cube(volume: np.ndarray, name: str = "map") -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or volume.shape[0] < 4:
        raise InputError(f"{name} must be a cubic (n, n, n) array with n >= 4, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{name} contains NaN or infinite values")
    return volume


def map_to_fourier(volume: np.ndarray, *, padding_factor: int = DEFAULT_PADDING_FACTOR) -> FourierVolume:
    """The padded, gridding-corrected half spectrum of an `(n, n, n)` map `[z, y, x]` (centre n // 2)."""
    volume = _check_cube(volume)
    if int(padding_factor) != padding_factor or padding_factor < 1:
        raise InputError(f"padding factor must be a positive integer, got {padding_factor}")
    n = volume.shape[0]
    m = int(padding_factor) * n
    a = _apodisation(n, m)
    padded = np.zeros((m, m, m), dtype=np.float64)
    start = m // 2 - n // 2
    padded[start:start + n, start:start + n, start:start + n] = volume / (a[:, None, None] * a[None, :, None] * a)
    spectrum = np.fft.rfftn(np.fft.ifftshift(padded)).astype(np.complex64)
    return FourierVolume(spectrum, n)


def spectrum_to_map(spectrum: np.ndarray, box: int, *, correction: str = "projection",
                    edge_mask_in_pixels: float = 0.0) -> np.ndarray:
    """Back to an `(n, n, n)` float32 map from a padded half spectrum `(m, m, m // 2 + 1)`.

    The padded grid is transformed and its central n^3 voxels kept.

    correction : "projection" undoes `map_to_fourier` (multiplies by the apodisation: the exact
        inverse); "insertion" divides by it, the gridding correction of a spectrum made by
        trilinear back-projection.
    edge_mask_in_pixels : if > 0, the padded map is first multiplied by a soft sphere that falls
        from 1 at n / 2 - width to 0 at n / 2 (raised cosine): a reconstruction fills the whole
        padded box with noise and ringing, and cutting that off sharply at the box would spread
        its strong low frequencies into every shell, the same in both half maps.
    """
    m = spectrum.shape[0]
    n = int(box)
    padded = np.fft.fftshift(np.fft.irfftn(spectrum, s=(m, m, m), axes=(0, 1, 2)))
    start = m // 2 - n // 2
    volume = padded[start:start + n, start:start + n, start:start + n]
    if edge_mask_in_pixels > 0:
        c = np.arange(n) - n // 2
        r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
        fall = np.clip((r - (n / 2 - edge_mask_in_pixels)) / edge_mask_in_pixels, 0.0, 1.0)
        volume = volume * (0.5 * (1.0 + np.cos(np.pi * fall)))
    a = _apodisation(n, m)
    a3 = a[:, None, None] * a[None, :, None] * a
    if correction == "projection":
        volume = volume * a3
    elif correction == "insertion":
        volume = volume / a3
    else:
        raise ValueError(f"correction must be 'projection' or 'insertion', got {correction!r}")
    return volume.astype(np.float32)


def fourier_to_map(fourier_volume: FourierVolume) -> np.ndarray:
    """The inverse of `map_to_fourier` (float32)."""
    return spectrum_to_map(fourier_volume.spectrum, fourier_volume.box, correction="projection")


def image_pixels(box: int, max_radius: float, *, include_zero: bool = False,
                 both_halves_of_x0: bool = False) -> FourierPixels:
    """The rfft2 frequencies of a `box`-pixel image with radius below `max_radius` (Fourier pixels).

    One of each Hermitian pair by default (fx > 0, or fx = 0 and fy > 0); `both_halves_of_x0`
    keeps fx = 0, fy < 0 too (every rfft2 pixel, as `project_images` needs to fill the array).
    Sorted by radius, so that a prefix is a smaller resolution limit.
    """
    n = int(box)
    fy = np.rint(np.fft.fftfreq(n) * n)
    fx = np.arange(n // 2 + 1, dtype=np.float64)
    gy, gx = np.meshgrid(fy, fx, indexing="ij")
    radius = np.hypot(gx, gy)
    keep = radius < max_radius
    if not both_halves_of_x0:
        keep &= (gx > 0) | (gy > 0) | (radius == 0)
    if not include_zero:
        keep &= radius > 0
    flat = np.flatnonzero(keep.ravel())
    order = np.argsort(radius.ravel()[flat], kind="stable")
    flat = flat[order]
    return FourierPixels(gx.ravel()[flat].copy(), gy.ravel()[flat].copy(), flat.astype(np.int64),
                         np.rint(radius.ravel()[flat]).astype(np.int64), n, float(max_radius))


def image_coefficients(images: np.ndarray, pixels: FourierPixels) -> np.ndarray:
    """Fourier coefficients `(B, S)` complex64 of images `(B, n, n)` (centre n // 2) at `pixels`."""
    images = np.asarray(images)
    spectra = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    return spectra.reshape(images.shape[0], -1)[:, pixels.index].astype(np.complex64)


def shift_phases(shifts_in_pixels: np.ndarray, pixels: FourierPixels) -> np.ndarray:
    """exp(-2 pi i k . t / n) `(T, S)` complex64: the transform of an image moved by t = (x, y) pixels."""
    t = np.asarray(shifts_in_pixels, dtype=np.float64).reshape(-1, 2)
    phase = -2.0 * np.pi / pixels.box * (t[:, :1] * pixels.fx[None] + t[:, 1:] * pixels.fy[None])
    return np.exp(1j * phase).astype(np.complex64)


def central_slices(fourier_volume: FourierVolume, rotations: np.ndarray, pixels: FourierPixels) -> np.ndarray:
    """The map's transform at `pixels` in each orientation: `(J, S)` complex64."""
    rotations = np.ascontiguousarray(np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3))
    if pixels.max_radius > fourier_volume.max_image_radius + 1e-9:
        raise ValueError(f"pixels reach radius {pixels.max_radius}, beyond the volume's "
                         f"{fourier_volume.max_image_radius:.1f}; use a larger padding factor")
    if pixels.box != fourier_volume.box:
        raise ValueError(f"pixels of a {pixels.box}-pixel image on a {fourier_volume.box}-voxel map")
    out = np.empty((rotations.shape[0], len(pixels)), dtype=np.complex64)
    extract_slices(fourier_volume.spectrum, rotations, pixels.fx, pixels.fy, float(fourier_volume.padding_factor), out)
    return out


def project_images(fourier_volume: FourierVolume, rotations: np.ndarray, shifts_in_pixels: np.ndarray | None = None,
                   *, ctf: np.ndarray | None = None) -> np.ndarray:
    """Real-space projections `(J, n, n)` float32 (centre n // 2) of the map in each orientation.

    shifts_in_pixels : (J, 2) particle centre positions t = (x, y), or None.
    ctf : (J, n, n // 2 + 1) CTF values on each image's rfft2 grid (e.g. `ctf_images(...)[..., :n//2+1]`
        times a polarity), or None. Frequencies beyond the volume's sliceable radius are zero.
    """
    n = fourier_volume.box
    pixels = image_pixels(n, min(n / 2, fourier_volume.max_image_radius), include_zero=True, both_halves_of_x0=True)
    values = central_slices(fourier_volume, rotations, pixels)
    if shifts_in_pixels is not None:
        t = np.asarray(shifts_in_pixels, dtype=np.float64).reshape(-1, 2)
        values = values * np.exp(-2j * np.pi / n * (t[:, :1] * pixels.fx + t[:, 1:] * pixels.fy))
    spectra = np.zeros((values.shape[0], n * (n // 2 + 1)), dtype=np.complex128)
    spectra[:, pixels.index] = values
    spectra = spectra.reshape(-1, n, n // 2 + 1)
    if ctf is not None:
        spectra = spectra * ctf
    return np.fft.fftshift(np.fft.irfft2(spectra, s=(n, n)), axes=(-2, -1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 2D: class images and their in-plane rotations (the 2D analogue of the above, for 2D classification)

def _apodisation_2d(n: int, m: int) -> np.ndarray:
    a = _apodisation(n, m)
    return a[:, None] * a[None, :]


def images_to_fourier(images: np.ndarray, *, padding_factor: int = DEFAULT_PADDING_FACTOR) -> np.ndarray:
    """Padded, gridding-corrected half spectra `(K, m, m // 2 + 1)` complex64 of images `(K, n, n)`.

    The 2D `map_to_fourier`: each image (centre n // 2) is divided by the bilinear kernel's sinc^2,
    zero-padded to m = padding_factor * n and transformed; `rotated_images` reads it.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be a (K, n, n) stack, got shape {images.shape}")
    n = images.shape[1]
    m = int(padding_factor) * n
    padded = np.zeros((images.shape[0], m, m))
    start = m // 2 - n // 2
    padded[:, start:start + n, start:start + n] = images / _apodisation_2d(n, m)
    return np.fft.rfft2(np.fft.ifftshift(padded, axes=(-2, -1))).astype(np.complex64)


def spectra_to_images(spectra: np.ndarray, box: int, *, correction: str = "insertion") -> np.ndarray:
    """Images `(K, n, n)` float32 from padded half spectra `(K, m, m // 2 + 1)` (the 2D `spectrum_to_map`).

    correction : "insertion" divides by the bilinear kernel's sinc^2 (spectra made by `insert_rotated`),
        "projection" multiplies by it (the exact inverse of `images_to_fourier`).
    """
    m = spectra.shape[-2]
    n = int(box)
    padded = np.fft.fftshift(np.fft.irfft2(spectra, s=(m, m), axes=(-2, -1)), axes=(-2, -1))
    start = m // 2 - n // 2
    images = padded[..., start:start + n, start:start + n]
    a = _apodisation_2d(n, m)
    if correction == "insertion":
        images = images / a
    elif correction == "projection":
        images = images * a
    else:
        raise ValueError(f"correction must be 'projection' or 'insertion', got {correction!r}")
    return images.astype(np.float32)


def rotated_images(spectra: np.ndarray, psi_in_degrees: np.ndarray, pixels: FourierPixels) -> np.ndarray:
    """Each class at each in-plane angle, at `pixels`: `(K, J, S)` complex64.

    The transform of a class image c rotated by psi (p(u) = c(Rz(psi) u)) at frequency f is the
    class's transform at Rz(psi) f, read from its padded half spectrum (`images_to_fourier`).
    """
    spectra = np.ascontiguousarray(spectra)
    pad = spectra.shape[-2] / pixels.box
    if pixels.max_radius > (spectra.shape[-2] / 2 - 1) / pad + 1e-9:
        raise ValueError(f"pixels reach radius {pixels.max_radius}, beyond what a {spectra.shape[-2]}-pixel padded "
                         "spectrum holds; use a larger padding factor")
    psi = np.radians(np.asarray(psi_in_degrees, dtype=np.float64).reshape(-1))
    out = np.empty((spectra.shape[0], psi.size, len(pixels)), dtype=np.complex64)
    extract_rotated(spectra, np.cos(psi), np.sin(psi), pixels.fx, pixels.fy, float(pad), out)
    return out
