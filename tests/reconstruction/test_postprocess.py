"""Post-processing (cryogmm.reconstruction.postprocess) against analytic truths: the Guinier B of
Gaussian blobs and known blurs, sharpening that undoes a blur, masks that hold a blob, the masked
FSC of half maps with known signal and noise, amplitude-keeping phase randomisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cryogmm.errors import InputError
from cryogmm.metrics.fsc import FSCCurve, fourier_shell_correlation
from cryogmm.reconstruction.postprocess import (
    _randomise_phases,
    auto_mask,
    full_map_fsc_weight,
    guinier_bfactor,
    masked_fsc,
    sharpen,
)

N = 48
VOXEL = 2.0  # Å
SHELLS = N // 2 + 1


def _coordinates_in_angstroms(n=N):
    """(z, y, x) of every voxel in Å from the box centre (index n // 2)."""
    return tuple((np.indices((n, n, n)) - n // 2) * VOXEL)


def _radius_in_voxels(n=N):
    return np.sqrt(sum(c**2 for c in _coordinates_in_angstroms(n))) / VOXEL


def _gaussian(centre_xyz, sigma_in_angstroms, n=N):
    z, y, x = _coordinates_in_angstroms(n)
    cx, cy, cz = centre_xyz
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_in_angstroms**2))


def _frequency_squared(n=N):
    """k^2 in 1/Å^2 of every coefficient of a full `np.fft.fftn` of an (n, n, n) map."""
    k = np.fft.fftfreq(n, d=VOXEL)
    return k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2


def _blur(volume, bfactor):
    """The map with its transform multiplied by exp(-B k^2 / 4), on the full FFT (independent of
    the module's rfftn helpers)."""
    return np.fft.ifftn(np.fft.fftn(volume) * np.exp(-0.25 * bfactor * _frequency_squared(volume.shape[0]))).real


def _shell_sums(volume, values_of_spectrum):
    """Sum over each shell (radius rounded, in Fourier voxels) of values_of_spectrum(fftn(volume))."""
    n = volume.shape[0]
    shells = np.rint(np.sqrt(_frequency_squared(n)) * n * VOXEL).astype(int).ravel()
    keep = shells < n // 2 + 1
    values = values_of_spectrum(np.fft.fftn(volume)).ravel()
    return np.bincount(shells[keep], weights=values[keep], minlength=n // 2 + 1)


def _blobs(rng, n_blobs=4, sigma=2.5):
    """A few Gaussian blobs of `sigma` Å near the centre."""
    return sum(_gaussian(rng.uniform(-12.0, 12.0, 3), sigma) for _ in range(n_blobs))


# ---- Guinier B-factor -----------------------------------------------------------------------------------


def test_guinier_of_a_gaussian_is_8_pi2_sigma2():
    """A Gaussian of sigma has the transform (2 pi)^(3/2) sigma^3 exp(-2 pi^2 sigma^2 k^2): B = 8 pi^2 sigma^2
    (the B-factor of an atom of that sigma), intercept ln((2 pi)^(3/2) (sigma / voxel)^3)."""
    sigma = 3.0
    fit = guinier_bfactor(_gaussian((0.0, 0.0, 0.0), sigma), VOXEL, fit_from_angstroms=10.0, fit_to_angstroms=6.0)
    assert fit.bfactor_in_angstroms2 == pytest.approx(8 * np.pi**2 * sigma**2, rel=0.01)
    assert fit.intercept == pytest.approx(np.log((2 * np.pi) ** 1.5 * (sigma / VOXEL) ** 3), abs=0.02)
    # shells 10 .. 16 of a 96 Å box lie between 1/10 and 1/6 per Å
    assert np.count_nonzero(fit.used) == 7
    np.testing.assert_allclose(1.0 / np.sqrt(fit.squared_frequency_per_angstrom2[fit.used]),
                               N * VOXEL / np.arange(10, 17), rtol=0.01)
    assert fit.fit_from_angstroms == 10.0 and fit.fit_to_angstroms == 6.0


def test_guinier_gains_the_b_of_a_blur():
    rng = np.random.default_rng(3)
    volume = _blobs(rng)
    bfactor = 150.0
    sharp = guinier_bfactor(volume, VOXEL, fit_to_angstroms=5.0)
    blurred = guinier_bfactor(_blur(volume, bfactor), VOXEL, fit_to_angstroms=5.0)
    assert blurred.bfactor_in_angstroms2 - sharp.bfactor_in_angstroms2 == pytest.approx(bfactor, rel=0.1)
    assert blurred.bfactor_in_angstroms2 > sharp.bfactor_in_angstroms2 > 0


@pytest.mark.parametrize("fit_from, fit_to", [(10.0, 3.0), (6.0, 8.0), (10.0, 9.0), (np.nan, 5.0)])
def test_guinier_refuses_a_bad_range(fit_from, fit_to):
    with pytest.raises(InputError):
        guinier_bfactor(_gaussian((0.0, 0.0, 0.0), 3.0), VOXEL, fit_from_angstroms=fit_from, fit_to_angstroms=fit_to)


# ---- sharpening ---------------------------------------------------------------------------------------


def test_sharpen_undoes_a_blur_below_the_lowpass_and_removes_everything_beyond():
    rng = np.random.default_rng(4)
    volume = _blobs(rng)
    bfactor, resolution, width = 150.0, 6.0, 3.0
    sharpened = sharpen(_blur(volume, bfactor), VOXEL, bfactor_in_angstroms2=bfactor,
                        resolution_in_angstroms=resolution, lowpass_width_in_shells=width)
    assert sharpened.dtype == np.float32 and sharpened.shape == volume.shape
    amplitude = _shell_sums(sharpened.astype(np.float64), np.abs)
    truth = _shell_sums(volume, np.abs)
    edge = N * VOXEL / resolution  # 16: the filter is 1/2 there, 1 up to 14.5, 0 from 17.5
    below = np.arange(SHELLS) < edge - width / 2 - 0.5
    np.testing.assert_allclose(amplitude[below] / truth[below], 1.0, rtol=0.01)
    beyond = np.arange(SHELLS) > edge + width / 2 + 0.5
    assert amplitude[beyond].max() < 1e-5 * amplitude[0]
    # a coefficient on the x axis at the resolution itself: exactly half of the unblurred one
    ratio = np.fft.fftn(sharpened)[0, 0, int(edge)] / np.fft.fftn(volume)[0, 0, int(edge)]
    assert abs(ratio) == pytest.approx(0.5, rel=1e-3)


def test_full_map_weight_by_hand():
    fsc = np.array([1.0, 0.6, 1.0 / 3.0, 0.0, -0.2])
    curve = FSCCurve(np.arange(5) / 10.0, fsc, np.ones(5, dtype=np.int64))
    np.testing.assert_allclose(full_map_fsc_weight(curve), [1.0, np.sqrt(0.75), np.sqrt(0.5), 0.0, 0.0], atol=1e-12)


def test_sharpen_weights_each_shell_by_the_fsc():
    rng = np.random.default_rng(5)
    volume = rng.standard_normal((N, N, N))  # every coefficient non-zero
    fsc = np.linspace(1.0, -0.4, SHELLS)
    curve = FSCCurve(np.arange(SHELLS) / (N * VOXEL), fsc, np.ones(SHELLS, dtype=np.int64))
    options = dict(bfactor_in_angstroms2=0.0, resolution_in_angstroms=2 * VOXEL)
    weighted = np.fft.fftn(sharpen(volume, VOXEL, fsc=curve, **options))
    plain = np.fft.fftn(sharpen(volume, VOXEL, **options))
    shells = np.arange(1, 20)  # coefficients (0, 0, i) on the x axis, before the low-pass edge
    expected = np.where(fsc[shells] > 0, np.sqrt(2 * np.clip(fsc[shells], 0, 1) / (1 + fsc[shells])), 0.0)
    np.testing.assert_allclose(np.abs(weighted[0, 0, shells]), expected * np.abs(plain[0, 0, shells]),
                               atol=1e-4 * np.abs(plain[0, 0, shells]).max())
    assert (fsc[shells] <= 0).any() and (fsc[shells] > 0).any()


def test_sharpen_refuses_bad_options():
    volume = _gaussian((0.0, 0.0, 0.0), 3.0)
    with pytest.raises(InputError):
        sharpen(volume, VOXEL, bfactor_in_angstroms2=100.0, resolution_in_angstroms=3.0)  # finer than Nyquist
    with pytest.raises(InputError):
        sharpen(volume, VOXEL, bfactor_in_angstroms2=np.nan, resolution_in_angstroms=6.0)
    short = fourier_shell_correlation(volume[:32, :32, :32], volume[:32, :32, :32], VOXEL)
    with pytest.raises(InputError):
        sharpen(volume, VOXEL, bfactor_in_angstroms2=100.0, resolution_in_angstroms=6.0, fsc=short)


# ---- automatic mask -----------------------------------------------------------------------------------


def test_auto_mask_holds_the_blob_excludes_the_corners_and_has_the_requested_soft_edge():
    rng = np.random.default_rng(6)
    blob = _gaussian((2.0, -1.0, 0.0), 8.0) + 0.6 * _gaussian((-10.0, 4.0, 3.0), 5.0)
    noisy = blob + 0.05 * rng.standard_normal(blob.shape)
    edge_in_angstroms = 10.0
    mask = auto_mask(noisy, VOXEL, soft_edge_in_angstroms=edge_in_angstroms)
    assert mask.dtype == np.float32 and mask.shape == blob.shape
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert (mask * blob).sum() >= 0.99 * blob.sum()
    corners = _radius_in_voxels() > 0.45 * N * np.sqrt(3)
    assert corners.any() and mask[corners].max() == 0.0
    # soft: between the region at 1 and the zero level lie intermediate values, the width asked for
    ones = mask == 1.0
    distance = ndimage.distance_transform_edt(~ones) * VOXEL
    reach = distance[mask > 0].max()
    assert edge_in_angstroms - VOXEL < reach <= edge_in_angstroms + VOXEL
    soft = (mask > 0) & (mask < 1)
    assert np.count_nonzero(soft) > np.count_nonzero(ones) / 2
    # half way across the edge the raised cosine is near 1/2
    middle = np.abs(distance - edge_in_angstroms / 2) < 0.5
    assert np.median(mask[middle]) == pytest.approx(0.5, abs=0.1)


def test_auto_mask_extension_dilates_the_binary_region():
    blob = _gaussian((0.0, 0.0, 0.0), 6.0)
    tight = auto_mask(blob, VOXEL, extend_in_angstroms=0.0, soft_edge_in_angstroms=0.0)
    wide = auto_mask(blob, VOXEL, extend_in_angstroms=4 * VOXEL, soft_edge_in_angstroms=0.0)
    assert set(np.unique(tight)) == {0.0, 1.0}
    # a sphere dilated by 4 voxels: the radius of its far edge grows by 4 voxels along the x axis
    profile_tight = np.flatnonzero(tight[N // 2, N // 2, N // 2:] == 1).max()
    profile_wide = np.flatnonzero(wide[N // 2, N // 2, N // 2:] == 1).max()
    assert profile_wide - profile_tight == 4


def test_auto_mask_keeps_only_the_largest_region():
    blob = _gaussian((-20.0, 0.0, 0.0), 6.0) + _gaussian((22.0, 0.0, 0.0), 4.0)
    options = dict(lowpass_in_angstroms=0.0, threshold=0.3)
    mask = auto_mask(blob, VOXEL, **options)
    small = _gaussian((22.0, 0.0, 0.0), 4.0)
    assert (mask * small).sum() < 0.01 * small.sum()
    # the mask of the larger blob alone (the smaller one adds < 1e-10 near it)
    np.testing.assert_array_equal(mask, auto_mask(_gaussian((-20.0, 0.0, 0.0), 6.0), VOXEL, **options))


def test_auto_mask_refuses_an_empty_or_full_mask():
    blob = _gaussian((0.0, 0.0, 0.0), 6.0)
    with pytest.raises(InputError, match="nothing"):
        auto_mask(blob, VOXEL, threshold=2.0)
    with pytest.raises(InputError, match="whole box"):
        auto_mask(blob, VOXEL, threshold=-1.0)


# ---- masked FSC ---------------------------------------------------------------------------------------


def _fourier_radii():
    k = np.fft.fftfreq(N) * N
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.fft.rfftfreq(N)[None, None, :] ** 2 * N**2)


def _half_maps(rng, truth, noise_sigma):
    return (truth + noise_sigma * rng.standard_normal(truth.shape),
            truth + noise_sigma * rng.standard_normal(truth.shape))


def _soft_sphere(radius_in_voxels, width_in_voxels):
    d = np.clip((_radius_in_voxels() - radius_in_voxels) / width_in_voxels, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * d))


def _compact_truth(rng):
    """A smooth random density (Gaussian fall-off of its spectrum) confined to radius 13 voxels."""
    field = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((N, N, N))) * np.exp(-0.5 * (_fourier_radii() / 8) ** 2),
                          s=(N, N, N), axes=(0, 1, 2))
    truth = field * _soft_sphere(10.0, 3.0)
    return truth / truth.std()


def _noise_bound(mask, curve):
    """Five standard deviations of the FSC of two independent noise maps times `mask` in each shell:
    1 / sqrt(voxels in the shell x effective mask fraction)."""
    fraction = (mask**2).sum() ** 2 / (mask.size * (mask**4).sum())
    return 5.0 / np.sqrt(curve.n_voxels * fraction)


def test_masked_fsc_of_truth_plus_independent_noise():
    rng = np.random.default_rng(7)
    truth = _compact_truth(rng)
    noise_sigma = 1.0
    half1, half2 = _half_maps(rng, truth, noise_sigma)
    mask = _soft_sphere(15.0, 4.0)  # 1 wherever the truth is: masking changes only the noise
    result = masked_fsc(half1, half2, mask, VOXEL, rng=np.random.default_rng(8))
    first = int(np.flatnonzero(result.unmasked.correlation[1:] < 0.8)[0]) + 1
    assert 5 < first < SHELLS - 6
    assert result.randomisation_frequency_per_angstrom == pytest.approx(first / (N * VOXEL))
    assert result.randomisation_resolution_in_angstroms == pytest.approx(N * VOXEL / first)
    # expected FSC of the masked halves: signal power over signal + masked-noise power in each shell
    # (white noise times the mask has the power noise_sigma^2 * sum(mask^2) at every frequency)
    signal = _shell_sums(truth, lambda f: np.abs(f) ** 2)
    n_voxels = result.masked.n_voxels
    expected = signal / (signal + n_voxels * noise_sigma**2 * (mask**2).sum())
    c = result.corrected.correlation
    # within five standard errors of a correlation estimate, (1 - rho^2) / sqrt(effective samples),
    # in every shell but the two at the randomisation edge, which the mask smears across it
    bound = _noise_bound(mask, result.masked)
    shells = np.arange(SHELLS)
    compared = (shells >= 1) & ((shells < first) | (shells >= first + 2))
    assert (np.abs(c - expected)[compared] < (bound * (1 - expected**2))[compared]).all()
    assert expected[1:6].min() > 0.98  # so at low frequency the corrected FSC is near 1
    # below the randomisation shell the corrected curve is the masked one
    np.testing.assert_array_equal(c[:first], result.masked.correlation[:first])
    # beyond it (away from the edge the mask smears) the randomised halves agree within noise only
    beyond = shells >= first + 2
    assert (np.abs(result.phase_randomised.correlation[beyond]) < bound[beyond]).all()
    assert (result.masked.correlation[beyond] > bound[beyond]).any()  # so the check above can fail
    # masking raised the FSC over the unmasked one where the noise matters
    middle = slice(first - 3, first + 3)
    assert (result.masked.correlation[middle] > result.unmasked.correlation[middle] + 0.02).all()


def test_correction_removes_the_correlation_a_sharp_mask_adds():
    """A truth with no power beyond shell 10 under a sharp mask that cuts through it: the masked FSC
    stays high to Nyquist (the mask's edge), the corrected one falls to noise beyond shell 10."""
    rng = np.random.default_rng(9)
    band = 10
    truth = np.fft.irfftn(np.fft.rfftn(rng.standard_normal((N, N, N))) * (np.rint(_fourier_radii()) <= band),
                          s=(N, N, N), axes=(0, 1, 2))
    truth /= truth.std()
    half1, half2 = _half_maps(rng, truth, 0.1)
    mask = (_radius_in_voxels() <= 9.0).astype(np.float64)
    result = masked_fsc(half1, half2, mask, VOXEL, rng=np.random.default_rng(10))
    assert result.randomisation_frequency_per_angstrom == pytest.approx((band + 1) / (N * VOXEL))
    beyond = np.arange(SHELLS) >= band + 4
    bound = _noise_bound(mask, result.masked)
    assert (result.masked.correlation[beyond] > 0.5).all()
    assert (np.abs(result.corrected.correlation[beyond]) < bound[beyond]).all()
    # the resolution is where the truth ends (between shells 10 and 11 the FSC drops to 0)
    assert N * VOXEL / (band + 1) <= result.resolution_in_angstroms <= N * VOXEL / (band - 1)


@pytest.mark.parametrize("randomise_beyond", [None, 8.0])
def test_identical_noise_free_halves_reach_nyquist(randomise_beyond):
    rng = np.random.default_rng(11)
    volume = rng.standard_normal((N, N, N)) * _soft_sphere(12.0, 3.0)
    mask = _soft_sphere(15.0, 4.0)
    result = masked_fsc(volume, volume.copy(), mask, VOXEL, rng=rng, randomise_beyond_in_angstroms=randomise_beyond)
    assert result.resolution_in_angstroms is None
    np.testing.assert_allclose(result.corrected.correlation, 1.0, atol=1e-9)
    if randomise_beyond is None:  # the unmasked FSC never falls below 0.8: nothing randomised
        assert result.randomisation_frequency_per_angstrom is None
    else:
        assert result.randomisation_frequency_per_angstrom == pytest.approx(12 / (N * VOXEL))
        assert abs(result.phase_randomised.correlation[14:]).max() < 0.5


def test_phase_randomisation_keeps_every_amplitude_and_the_map_real():
    rng = np.random.default_rng(12)
    volume = rng.standard_normal((N, N, N)) * _soft_sphere(12.0, 3.0)
    first = 9
    randomised = _randomise_phases(volume, first, np.random.default_rng(13))
    assert randomised.shape == volume.shape and np.isrealobj(randomised)
    before, after = np.fft.fftn(volume), np.fft.fftn(randomised)
    # every coefficient of the full spectrum keeps its amplitude: the rfftn planes kx = 0 and
    # kx = N/2, whose coefficients pair up, stayed Hermitian (irfftn would have averaged them away)
    np.testing.assert_allclose(np.abs(after), np.abs(before), rtol=1e-6, atol=1e-9 * np.abs(before).max())
    power = lambda f: np.abs(f) ** 2  # noqa: E731
    np.testing.assert_allclose(_shell_sums(randomised, power), _shell_sums(volume, power), rtol=1e-6)
    shells = np.rint(np.sqrt(_frequency_squared()) * N * VOXEL)
    np.testing.assert_allclose(after[shells < first], before[shells < first], atol=1e-9 * np.abs(before).max())
    outside = (shells >= first) & (np.abs(before) > 1e-6 * np.abs(before).max())
    phase_change = np.angle(after[outside] / before[outside])
    # uniform phases: the mean of exp(i change) is near 0 (it is 1 if nothing changed)
    assert abs(np.exp(1j * phase_change).mean()) < 0.05
    # two draws for two copies of one map: uncorrelated beyond the first shell
    other = _randomise_phases(volume, first, np.random.default_rng(14))
    curve = fourier_shell_correlation(randomised, other, VOXEL)
    np.testing.assert_allclose(curve.correlation[:first], 1.0, atol=1e-9)
    assert (np.abs(curve.correlation[first:]) < 5 / np.sqrt(curve.n_voxels[first:])).all()


def test_odd_box_phase_randomisation_keeps_amplitudes():
    rng = np.random.default_rng(15)
    volume = rng.standard_normal((15, 15, 15))
    randomised = _randomise_phases(volume, 3, rng)
    np.testing.assert_allclose(np.abs(np.fft.fftn(randomised)), np.abs(np.fft.fftn(volume)), rtol=1e-6, atol=1e-9)


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(16)
    half = rng.standard_normal((16, 16, 16))
    mask = np.ones((16, 16, 16))
    with pytest.raises(InputError, match="differ in shape"):
        masked_fsc(half, rng.standard_normal((18, 18, 18)), np.ones((18, 18, 18)), VOXEL, rng=rng)
    with pytest.raises(InputError, match="cubic"):
        masked_fsc(half[:, :, :12], half[:, :, :12], mask[:, :, :12], VOXEL, rng=rng)
    with_nan = half.copy()
    with_nan[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        masked_fsc(half, with_nan, mask, VOXEL, rng=rng)
    with pytest.raises(InputError, match="mask has shape"):
        masked_fsc(half, half, np.ones((14, 14, 14)), VOXEL, rng=rng)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        masked_fsc(half, half, 2.0 * mask, VOXEL, rng=rng)
    with pytest.raises(InputError, match="voxel size"):
        masked_fsc(half, half, mask, 0.0, rng=rng)
    with pytest.raises(InputError, match="cubic"):
        auto_mask(half[0], VOXEL)
    with pytest.raises(InputError, match="NaN"):
        guinier_bfactor(with_nan, VOXEL, fit_to_angstroms=5.0)
    with pytest.raises(InputError, match="NaN"):
        sharpen(with_nan, VOXEL, bfactor_in_angstroms2=0.0, resolution_in_angstroms=5.0)
