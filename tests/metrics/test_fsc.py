"""Fourier shell/ring correlation, resolution at a threshold, Pearson correlation."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.metrics.fsc import FSCCurve, fourier_shell_correlation, normalised_cross_correlation, resolution_at


def _radius(n: int, ndim: int) -> np.ndarray:
    """Radius in Fourier voxels of every coefficient of a full (n,)*ndim FFT."""
    k = np.meshgrid(*[np.fft.fftfreq(n) * n] * ndim, indexing="ij")
    return np.sqrt(sum(a**2 for a in k))


@pytest.mark.parametrize("n, ndim", [(16, 3), (15, 3), (16, 2), (15, 2)])
def test_matches_a_full_fft_shell_by_shell(n, ndim):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n,) * ndim)
    b = a + rng.standard_normal((n,) * ndim)
    curve = fourier_shell_correlation(a, b, 1.5)
    fa, fb, shell = np.fft.fftn(a), np.fft.fftn(b), np.rint(_radius(n, ndim)).astype(int)
    for i in range(n // 2 + 1):
        s = shell == i
        expected = (fa[s] * np.conj(fb[s])).real.sum() / np.sqrt((abs(fa[s]) ** 2).sum() * (abs(fb[s]) ** 2).sum())
        assert curve.correlation[i] == pytest.approx(expected, abs=1e-12)
        assert curve.n_voxels[i] == np.count_nonzero(s)
    np.testing.assert_allclose(curve.frequency_per_angstrom, np.arange(n // 2 + 1) / (n * 1.5))


def test_map_with_itself_is_one_in_every_shell():
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((32, 32, 32)).astype(np.float32)
    curve = fourier_shell_correlation(volume, volume, 2.0)
    assert len(curve.correlation) == 17
    np.testing.assert_allclose(curve.correlation, 1.0, atol=1e-12)
    assert curve.frequency_per_angstrom[-1] == pytest.approx(0.25)  # Nyquist, 1 / (2 * 2 Å)
    assert curve.nyquist_resolution_in_angstroms == pytest.approx(4.0)
    assert resolution_at(curve, 0.143) is None


def _noisy_pair(rng, n, noise_amplitude):
    """Two copies of a white-spectrum map with independent noise of power noise_amplitude(radius)² per shell."""
    signal = rng.standard_normal((n, n, n))
    radius = np.sqrt(sum(a**2 for a in np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n,
                                                    np.fft.rfftfreq(n) * n, indexing="ij")))
    noise = [np.fft.irfftn(np.fft.rfftn(rng.standard_normal((n, n, n))) * noise_amplitude(radius),
                          s=(n, n, n), axes=(0, 1, 2))
             for _ in range(2)]
    return signal + noise[0], signal + noise[1]


def test_white_noise_at_snr_one_gives_one_half():
    rng = np.random.default_rng(2)
    a, b = _noisy_pair(rng, 48, lambda r: np.ones_like(r))
    curve = fourier_shell_correlation(a, b, 1.0)
    shells = slice(4, None)  # enough voxels per shell for a tight estimate
    sd = 1.0 / np.sqrt(curve.n_voxels[shells] / 2)  # (1 - rho²) / sqrt(independent pairs), generously
    assert np.all(np.abs(curve.correlation[shells] - 0.5) < 4 * sd)
    assert abs(np.average(curve.correlation[shells], weights=curve.n_voxels[shells]) - 0.5) < 0.01


def test_fsc_follows_snr_over_one_plus_snr_per_shell():
    n = 48
    rng = np.random.default_rng(3)
    nyquist = n // 2

    def snr(r):  # signal power 1 everywhere; the noise rises with frequency
        return 20.0 * np.exp(-4.0 * r / nyquist)

    a, b = _noisy_pair(rng, n, lambda r: 1.0 / np.sqrt(snr(r)))
    curve = fourier_shell_correlation(a, b, 1.0)
    shells = np.arange(4, nyquist + 1)
    expected = snr(shells) / (1.0 + snr(shells))
    sd = (1.0 - expected**2) / np.sqrt(curve.n_voxels[shells] / 2)
    assert np.all(np.abs(curve.correlation[shells] - expected) < 5 * sd)
    # and the resolution sits where SNR / (1 + SNR) = 0.5, i.e. SNR = 1
    crossing = nyquist * np.log(20.0) / 4.0  # shell where SNR = 1
    assert 1.0 / resolution_at(curve, 0.5) == pytest.approx(crossing / n, rel=0.03)


def test_frc_of_images():
    rng = np.random.default_rng(4)
    image = rng.standard_normal((64, 64))
    curve = fourier_shell_correlation(image, image, 1.2)
    assert len(curve.correlation) == 33
    np.testing.assert_allclose(curve.correlation, 1.0, atol=1e-12)
    noisy = [image + rng.standard_normal((64, 64)) for _ in range(2)]
    curve = fourier_shell_correlation(*noisy, 1.2)
    assert abs(np.average(curve.correlation[4:], weights=curve.n_voxels[4:]) - 0.5) < 0.02
    assert curve.nyquist_resolution_in_angstroms == pytest.approx(2.4)


def test_resolution_is_interpolated_between_shells():
    frequency = np.arange(6) / (10 * 2.0)  # 0 .. 0.25 /Å in steps of 0.05
    curve = FSCCurve(frequency, np.array([1.0, 0.9, 0.7, 0.3, 0.1, 0.05]), np.ones(6, dtype=np.int64))
    # 0.5 lies halfway between shells 2 (0.7) and 3 (0.3): 0.125 /Å
    assert resolution_at(curve, 0.5) == pytest.approx(1 / 0.125)
    # 0.143 between shells 3 (0.3) and 4 (0.1): 0.15 + 0.05 * 0.157 / 0.2
    assert resolution_at(curve, 0.143) == pytest.approx(1 / (0.15 + 0.05 * 0.157 / 0.2))
    # a shell exactly at the threshold is not below it
    assert resolution_at(curve, 0.3) == pytest.approx(1 / (0.15 + 0.05 * 0.0 / 0.2))
    # only the first crossing counts, even if the curve rises again
    bumpy = FSCCurve(frequency, np.array([1.0, 0.9, 0.4, 0.8, 0.1, 0.05]), np.ones(6, dtype=np.int64))
    assert resolution_at(bumpy, 0.5) == pytest.approx(1 / (0.05 + 0.05 * 0.4 / 0.5))
    # never below: None, and the Nyquist resolution is 2 voxels
    assert resolution_at(curve, 0.01) is None
    assert curve.nyquist_resolution_in_angstroms == pytest.approx(4.0)


def test_pearson_is_mean_subtracted():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1000)
    assert normalised_cross_correlation(x, 3 * x + 7) == pytest.approx(1.0)
    assert normalised_cross_correlation(x, -x) == pytest.approx(-1.0)
    assert normalised_cross_correlation(x, np.ones_like(x)) == 0.0
    assert normalised_cross_correlation(x + 100, rng.standard_normal(1000) + 100) == pytest.approx(0.0, abs=0.1)
    with pytest.raises(ValueError):
        normalised_cross_correlation(x, x[:10])


def test_rejects_mismatched_or_non_cubic_maps():
    with pytest.raises(ValueError, match="shape"):
        fourier_shell_correlation(np.ones((8, 8, 8)), np.ones((8, 8, 10)), 1.0)
    with pytest.raises(ValueError, match="cubic"):
        fourier_shell_correlation(np.ones((8, 8, 10)), np.ones((8, 8, 10)), 1.0)
