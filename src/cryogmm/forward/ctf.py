"""The contrast transfer function (CTF) of the electron microscope (thesis section 4.1.1).

Convention (RELION / CTFFIND4, ../shared/CONVENTIONS.md):

    CTF(k) = -(sqrt(1 - A^2) sin(gamma) + A cos(gamma)) * exp(-B |k|^2 / 4)
    gamma  = pi lambda df(theta) |k|^2 - pi/2 Cs lambda^3 |k|^4 + phase_shift
    df(theta) = (U + V)/2 + (U - V)/2 cos(2 (theta - angle))

with |k| the spatial frequency in 1/Å, theta its angle from the image x axis, U and V the
defocus in Å (positive = underfocus), Cs in Å, A the amplitude contrast and lambda the
relativistic electron wavelength. With this sign the CTF is negative at low frequency: a density
imaged with it appears dark, as in raw micrographs. An image whose particles appear bright
(contrast inverted, as RELION extracts them) is the density convolved with -CTF.

An observed image is z = IFFT(CTF * FFT(y)) (+ noise) for the projection y (Eqn. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryogmm.errors import InputError

ELECTRON_REST_ENERGY_IN_EV = 510998.95
PLANCK_TIMES_C_IN_EV_ANGSTROMS = 12398.419843320026


def electron_wavelength_in_angstroms(voltage_in_kv):
    """Relativistic electron wavelength (Å) at an accelerating voltage in kV (0.0197 Å at 300 kV)."""
    energy_in_ev = np.asarray(voltage_in_kv, dtype=np.float64) * 1e3
    momentum_times_c = np.sqrt(energy_in_ev * (energy_in_ev + 2.0 * ELECTRON_REST_ENERGY_IN_EV))
    return PLANCK_TIMES_C_IN_EV_ANGSTROMS / momentum_times_c


def _as_column(values, n: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        array = np.full(n, array[0])
    if array.size != n:
        raise InputError(f"CTF parameter {name}: got {array.size} values for {n} images")
    if not np.all(np.isfinite(array)):
        raise InputError(f"CTF parameter {name} has NaN or infinite values; fix the STAR file")
    return array


@dataclass(frozen=True)
class CTFParameters:
    """CTF parameters of P images (scalars are broadcast to all images).

    Attributes
    ----------
    defocus_u_in_angstroms, defocus_v_in_angstroms : (P,) arrays, positive = underfocus
    defocus_angle_in_degrees : (P,) angle of the U axis from the image x axis
    voltage_in_kv, spherical_aberration_in_mm, amplitude_contrast : (P,) arrays
    phase_shift_in_degrees : (P,) array, default 0
    bfactor_in_angstroms2 : (P,) array, envelope exp(-B |k|^2 / 4), default 0
    scale : (P,) array, default 1
    """

    defocus_u_in_angstroms: np.ndarray
    defocus_v_in_angstroms: np.ndarray
    defocus_angle_in_degrees: np.ndarray = field(default=0.0)
    voltage_in_kv: np.ndarray = field(default=300.0)
    spherical_aberration_in_mm: np.ndarray = field(default=2.7)
    amplitude_contrast: np.ndarray = field(default=0.1)
    phase_shift_in_degrees: np.ndarray = field(default=0.0)
    bfactor_in_angstroms2: np.ndarray = field(default=0.0)
    scale: np.ndarray = field(default=1.0)

    def __post_init__(self):
        n = np.asarray(self.defocus_u_in_angstroms).size
        for name in ("defocus_u_in_angstroms", "defocus_v_in_angstroms", "defocus_angle_in_degrees",
                     "voltage_in_kv", "spherical_aberration_in_mm", "amplitude_contrast",
                     "phase_shift_in_degrees", "bfactor_in_angstroms2", "scale"):
            values = _as_column(getattr(self, name), n, name)
            values.setflags(write=False)
            object.__setattr__(self, name, values)
        if np.any(self.defocus_u_in_angstroms <= 0) or np.any(self.defocus_v_in_angstroms <= 0):
            raise InputError("defocus must be positive (underfocus, in Å); check rlnDefocusU/V")
        if np.any(self.voltage_in_kv <= 0):
            raise InputError("voltage must be positive (in kV); check rlnVoltage")
        if np.any(self.amplitude_contrast < 0) or np.any(self.amplitude_contrast >= 1):
            raise InputError("amplitude contrast must be in [0, 1); check rlnAmplitudeContrast")

    def __len__(self) -> int:
        return self.defocus_u_in_angstroms.size

    def __getitem__(self, index) -> "CTFParameters":
        """The parameters of a subset of images (an index array, mask or slice)."""
        return CTFParameters(**{name: np.atleast_1d(getattr(self, name)[index])
                                for name in self.__dataclass_fields__})

    @property
    def mean_defocus_in_angstroms(self) -> np.ndarray:
        return 0.5 * (self.defocus_u_in_angstroms + self.defocus_v_in_angstroms)


def frequency_grid(box: int, pixel_size_in_angstroms: float, *, centred: bool = False):
    """Spatial frequencies (kx, ky) in 1/Å of a box x box image, `[y, x]` arrays.

    In `np.fft.fft2` order by default; with `centred=True` in `np.fft.fftshift` order (zero
    frequency at index box // 2, matching the image centre convention).
    """
    f = np.fft.fftfreq(box, d=pixel_size_in_angstroms)
    if centred:
        f = np.fft.fftshift(f)
    ky, kx = np.meshgrid(f, f, indexing="ij")
    return kx, ky


def ctf_of_frequencies(parameters: CTFParameters, kx, ky, *, dtype=np.float64) -> np.ndarray:
    """CTF values of every image at frequencies (kx, ky) in 1/Å (any equal shapes S): (P, *S)."""
    kx = np.asarray(kx, dtype=np.float64)
    ky = np.asarray(ky, dtype=np.float64)
    expand = (slice(None),) + (None,) * kx.ndim
    k2 = kx * kx + ky * ky
    theta = np.arctan2(ky, kx)
    p = parameters
    wavelength = electron_wavelength_in_angstroms(p.voltage_in_kv)[expand]
    cs_in_angstroms = (p.spherical_aberration_in_mm * 1e7)[expand]
    mean = 0.5 * (p.defocus_u_in_angstroms + p.defocus_v_in_angstroms)[expand]
    half_difference = 0.5 * (p.defocus_u_in_angstroms - p.defocus_v_in_angstroms)[expand]
    angle = np.deg2rad(p.defocus_angle_in_degrees)[expand]
    defocus = mean + half_difference * np.cos(2.0 * (theta - angle))
    gamma = (np.pi * wavelength * defocus * k2
             - 0.5 * np.pi * cs_in_angstroms * wavelength**3 * k2 * k2
             + np.deg2rad(p.phase_shift_in_degrees)[expand])
    a = p.amplitude_contrast[expand]
    values = -(np.sqrt(1.0 - a * a) * np.sin(gamma) + a * np.cos(gamma))
    values = values * p.scale[expand]
    if np.any(p.bfactor_in_angstroms2 != 0):
        values = values * np.exp(-p.bfactor_in_angstroms2[expand] * k2 / 4.0)
    return values.astype(dtype, copy=False)


def ctf_images(parameters: CTFParameters, box: int, pixel_size_in_angstroms: float, *,
               dtype=np.float64, centred: bool = False) -> np.ndarray:
    """CTF of every image on the FFT grid of a box x box image: (P, box, box).

    `np.fft.fft2` order by default (multiply `np.fft.fft2(image)` by it); `centred=True` gives
    the `fftshift`ed layout for display.
    """
    if box < 1 or not np.isfinite(pixel_size_in_angstroms) or pixel_size_in_angstroms <= 0:
        raise InputError(f"CTF grid: box {box} and pixel size {pixel_size_in_angstroms} Å must be positive")
    kx, ky = frequency_grid(box, pixel_size_in_angstroms, centred=centred)
    return ctf_of_frequencies(parameters, kx, ky, dtype=dtype)


def apply_ctf(images: np.ndarray, ctf: np.ndarray) -> np.ndarray:
    """Convolve images `(P, n, n)` with the PSF whose Fourier transform is `ctf` (fft2 order)."""
    return np.fft.irfft2(np.fft.rfft2(images) * ctf[..., : images.shape[-1] // 2 + 1],
                         s=images.shape[-2:])


def ctf_zero_frequencies(defocus_in_angstroms: float, voltage_in_kv: float,
                         spherical_aberration_in_mm: float, amplitude_contrast: float,
                         max_frequency: float, phase_shift_in_degrees: float = 0.0) -> np.ndarray:
    """Frequencies |k| (1/Å, up to max_frequency) where the CTF of an unastigmatic image is zero.

    The CTF is zero where gamma + atan(A / sqrt(1 - A^2)) = n pi; gamma is a quadratic in |k|^2,
    so each n gives its roots in closed form.
    """
    wavelength = float(electron_wavelength_in_angstroms(voltage_in_kv))
    cs = spherical_aberration_in_mm * 1e7
    offset = np.arctan2(amplitude_contrast, np.sqrt(1.0 - amplitude_contrast**2)) + np.deg2rad(phase_shift_in_degrees)
    # gamma(u) + offset = n pi with u = |k|^2: a u^2 + b u + (offset - n pi) = 0,
    # a = -pi/2 Cs lambda^3, b = pi lambda df
    a = -0.5 * np.pi * cs * wavelength**3
    b = np.pi * wavelength * defocus_in_angstroms
    u_max = max_frequency**2
    phase = offset + b * np.linspace(0.0, u_max, 2001) + a * np.linspace(0.0, u_max, 2001) ** 2
    zeros = []
    for n in range(int(np.floor(phase.min() / np.pi)), int(np.ceil(phase.max() / np.pi)) + 1):
        c = offset - n * np.pi
        if a == 0:
            roots = np.array([-c / b])
        else:
            disc = b * b - 4 * a * c
            if disc < 0:
                continue
            roots = (-b + np.array([1.0, -1.0]) * np.sqrt(disc)) / (2 * a)
        zeros.extend(np.sqrt(u) for u in roots if 0 < u <= u_max)
    return np.unique(np.asarray(zeros, dtype=np.float64))
