"""The CTF against values computed by hand from the formula in CONVENTIONS.md."""

import math

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.forward.ctf import (CTFParameters, apply_ctf, ctf_images, ctf_of_frequencies,
                                 ctf_zero_frequencies, electron_wavelength_in_angstroms)


def hand_ctf(kx, ky, u, v, angle_deg, kv=300.0, cs_mm=2.7, a=0.1, phase_deg=0.0, b=0.0):
    # relativistic wavelength: lambda = h c / sqrt(E (E + 2 m c^2)), E in eV, h c = 12398.42 eV Å
    e = kv * 1000.0
    lam = 12398.419843320026 / math.sqrt(e * (e + 2 * 510998.95))
    k2 = kx * kx + ky * ky
    theta = math.atan2(ky, kx)
    df = (u + v) / 2 + (u - v) / 2 * math.cos(2 * (theta - math.radians(angle_deg)))
    gamma = math.pi * lam * df * k2 - math.pi / 2 * cs_mm * 1e7 * lam**3 * k2 * k2 + math.radians(phase_deg)
    return -(math.sqrt(1 - a * a) * math.sin(gamma) + a * math.cos(gamma)) * math.exp(-b * k2 / 4)


def test_wavelength_matches_textbook_values():
    assert electron_wavelength_in_angstroms(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_in_angstroms(200) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength_in_angstroms(100) == pytest.approx(0.037014, abs=2e-6)


@pytest.mark.parametrize("u, v, angle, kx, ky, kv, cs, a, phase, b", [
    (15000.0, 15000.0, 0.0, 0.05, 0.0, 300, 2.7, 0.1, 0.0, 0.0),
    (20000.0, 10000.0, 30.0, 0.05, 0.02, 300, 2.7, 0.07, 0.0, 0.0),
    (8000.0, 7000.0, -45.0, -0.03, 0.1, 200, 2.0, 0.1, 0.0, 50.0),
    (25000.0, 24000.0, 120.0, 0.12, -0.09, 300, 0.01, 0.1, 90.0, 0.0),
    (30000.0, 30000.0, 0.0, 0.0, 0.0, 300, 2.7, 0.1, 0.0, 0.0),
])
def test_ctf_equals_hand_computed_value(u, v, angle, kx, ky, kv, cs, a, phase, b):
    p = CTFParameters(defocus_u_in_angstroms=u, defocus_v_in_angstroms=v, defocus_angle_in_degrees=angle,
                      voltage_in_kv=kv, spherical_aberration_in_mm=cs, amplitude_contrast=a,
                      phase_shift_in_degrees=phase, bfactor_in_angstroms2=b)
    value = ctf_of_frequencies(p, np.array(kx), np.array(ky))[0]
    assert value == pytest.approx(hand_ctf(kx, ky, u, v, angle, kv, cs, a, phase, b), abs=1e-12)


def test_ctf_at_zero_frequency_is_minus_amplitude_contrast():
    p = CTFParameters(defocus_u_in_angstroms=[10000, 20000], defocus_v_in_angstroms=[10000, 21000],
                      amplitude_contrast=[0.07, 0.1])
    values = ctf_images(p, 32, 2.0)
    np.testing.assert_allclose(values[:, 0, 0], [-0.07, -0.1], atol=1e-12)


def test_zeros_are_where_the_formula_puts_them():
    defocus, kmax = 15000.0, 0.25
    zeros = ctf_zero_frequencies(defocus, 300, 2.7, 0.1, kmax)
    # first zero in the small-Cs limit: pi lambda df k^2 = pi - atan(A / sqrt(1 - A^2))
    lam = electron_wavelength_in_angstroms(300)
    first = math.sqrt((math.pi - math.atan(0.1 / math.sqrt(0.99))) / (math.pi * lam * defocus))
    assert zeros[0] == pytest.approx(first, rel=2e-3)
    p = CTFParameters(defocus_u_in_angstroms=defocus, defocus_v_in_angstroms=defocus)
    k = np.linspace(1e-4, kmax, 200001)
    values = ctf_of_frequencies(p, k, 0 * k)[0]
    crossings = k[np.nonzero(np.sign(values[1:]) != np.sign(values[:-1]))[0]]
    assert len(crossings) == len(zeros)
    np.testing.assert_allclose(crossings, zeros, atol=2 * (k[1] - k[0]))
    # and the CTF is zero at them in every direction when there is no astigmatism
    angles = np.linspace(0, np.pi, 7)
    kx = np.outer(zeros, np.cos(angles))
    ky = np.outer(zeros, np.sin(angles))
    assert np.abs(ctf_of_frequencies(p, kx, ky)).max() < 1e-9


def test_astigmatism_rotates_with_the_angle():
    n, pixel = 64, 2.0
    base = dict(defocus_u_in_angstroms=25000.0, defocus_v_in_angstroms=15000.0)
    c0 = ctf_images(CTFParameters(**base, defocus_angle_in_degrees=0.0), n, pixel, centred=True)[0]
    c90 = ctf_images(CTFParameters(**base, defocus_angle_in_degrees=90.0), n, pixel, centred=True)[0]
    # rotating the angle by 90 degrees transposes the centred pattern (x <-> y)
    np.testing.assert_allclose(c90, c0.T, atol=1e-12)
    # a general angle: the value along direction theta equals the unrotated one along theta - angle
    angle = 37.0
    k, theta = 0.08, np.deg2rad(50.0)
    rotated = CTFParameters(**base, defocus_angle_in_degrees=angle)
    unrotated = CTFParameters(**base, defocus_angle_in_degrees=0.0)
    t2 = theta - np.deg2rad(angle)
    a = ctf_of_frequencies(rotated, np.array(k * np.cos(theta)), np.array(k * np.sin(theta)))[0]
    b = ctf_of_frequencies(unrotated, np.array(k * np.cos(t2)), np.array(k * np.sin(t2)))[0]
    assert a == pytest.approx(b, abs=1e-12)
    # the defocus along the U axis is U: equals an unastigmatic CTF with defocus U there
    iso = CTFParameters(defocus_u_in_angstroms=25000.0, defocus_v_in_angstroms=25000.0)
    ua = np.deg2rad(angle)
    assert ctf_of_frequencies(rotated, np.array(k * np.cos(ua)), np.array(k * np.sin(ua)))[0] == pytest.approx(
        ctf_of_frequencies(iso, np.array(k), np.array(0.0))[0], abs=1e-12)


def test_vectorised_over_images_and_dtypes():
    rng = np.random.default_rng(0)
    u = rng.uniform(8000, 30000, 5)
    p = CTFParameters(defocus_u_in_angstroms=u, defocus_v_in_angstroms=u - 500, defocus_angle_in_degrees=rng.uniform(0, 180, 5))
    all_at_once = ctf_images(p, 47, 1.5)
    for i in range(5):
        np.testing.assert_allclose(all_at_once[i], ctf_images(p[[i]], 47, 1.5)[0], atol=0)
    single = ctf_images(p, 47, 1.5, dtype=np.float32)
    assert single.dtype == np.float32 and all_at_once.dtype == np.float64
    np.testing.assert_allclose(single, all_at_once, atol=1e-6)
    # Hermitian symmetry: CTF(-k) = CTF(k), so it maps real images to real images (odd box: an
    # even box's Nyquist row has no partner and astigmatism breaks the symmetry there)
    flipped = np.roll(all_at_once[:, ::-1, ::-1], 1, axis=(1, 2))
    np.testing.assert_allclose(flipped, all_at_once, atol=1e-12)


def test_apply_ctf_is_multiplication_in_fourier_space():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 41, 41))
    p = CTFParameters(defocus_u_in_angstroms=[9000, 15000, 21000], defocus_v_in_angstroms=[9000, 14000, 20000],
                      defocus_angle_in_degrees=[0, 20, 140])
    c = ctf_images(p, 41, 3.0)
    expected = np.fft.ifft2(np.fft.fft2(images) * c).real
    np.testing.assert_allclose(apply_ctf(images, c), expected, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(defocus_u_in_angstroms=0.0, defocus_v_in_angstroms=100.0), "defocus must be positive"),
    (dict(defocus_u_in_angstroms=-5.0, defocus_v_in_angstroms=100.0), "defocus must be positive"),
    (dict(defocus_u_in_angstroms=1e4, defocus_v_in_angstroms=1e4, amplitude_contrast=1.0), "amplitude contrast"),
    (dict(defocus_u_in_angstroms=1e4, defocus_v_in_angstroms=np.nan), "NaN"),
    (dict(defocus_u_in_angstroms=[1e4, 2e4], defocus_v_in_angstroms=[1e4, 2e4, 3e4]), "3 values for 2 images"),
])
def test_bad_parameters_raise_one_line(kwargs, match):
    with pytest.raises(InputError, match=match):
        CTFParameters(**kwargs)
