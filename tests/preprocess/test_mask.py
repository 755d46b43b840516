"""Automatic and circular soft masks: coverage of a blob, exclusion of the background, soft edges,
no-signal refusals; background and scale helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.preprocess.mask import auto_masks, circular_mask, masked_fractions, soft_edge
from cryogmm.preprocess.normalise import (
    apply_masks,
    central_contrast,
    radii_in_pixels,
    scale_images,
    subtract_background,
)

PIXEL = 2.0
N = 64


def blob(centre_xy=(0.0, 0.0), sigma=(5.0, 3.0), n=N, amplitude=1.0):
    """An elongated Gaussian blob centred at `centre_xy` pixels from the box centre."""
    y, x = np.indices((n, n)) - n // 2
    return amplitude * np.exp(-0.5 * (((x - centre_xy[0]) / sigma[0]) ** 2 + ((y - centre_xy[1]) / sigma[1]) ** 2))


def noisy_stack(rng, n_images=3, background=5.0, noise=0.05):
    clean = np.stack([blob((3.0 * i - 3.0, 2.0 - i)) for i in range(n_images)])
    return clean, clean + background + noise * rng.standard_normal(clean.shape)


def test_mask_covers_the_blob_and_excludes_far_background():
    rng = np.random.default_rng(0)
    clean, images = noisy_stack(rng)
    centred, levels = subtract_background(images)
    np.testing.assert_allclose(levels, 5.0, atol=0.01)
    masks = auto_masks(centred, PIXEL, source="blobs.mrcs")
    assert masks.shape == images.shape and masks.min() >= 0 and masks.max() <= 1
    for mask, truth in zip(masks, clean):
        # everything above 5% of the blob's peak is fully kept, 99.9% of its mass at least partly
        assert np.all(mask[truth > 0.05] == 1.0)
        assert (mask * truth).sum() > 0.99 * truth.sum()
        # far from the blob (where it is below 1e-6) the mask is 0
        assert np.all(mask[truth < 1e-6] == 0.0)
    fractions = masked_fractions(masks)
    assert np.all((fractions > 0.05) & (fractions < 0.4))


def test_mask_ignores_a_small_speck_and_fills_holes():
    image = blob(sigma=(6.0, 6.0)) - 0.9 * blob(sigma=(1.5, 1.5))  # a ring: a hole in the middle
    speck = blob((-22.0, -22.0), sigma=(1.0, 1.0), amplitude=2.0)  # bright but small
    mask = auto_masks((image + speck)[None], PIXEL, lowpass_in_angstroms=4.0)[0]
    assert mask[N // 2, N // 2] == 1.0  # the hole is filled
    assert mask[N // 2 - 22, N // 2 - 22] == 0.0  # the speck is not part of the particle


def test_search_radius_excludes_a_neighbour():
    image = blob(sigma=(4.0, 4.0)) + 3.0 * blob((-24.0, 0.0), sigma=(4.0, 4.0))
    without = auto_masks(image[None], PIXEL)[0]
    assert without[N // 2, N // 2 - 24] == 1.0 and without[N // 2, N // 2] == 0.0  # the brighter one wins
    within = auto_masks(image[None], PIXEL, search_radius_in_angstroms=30.0)[0]
    assert within[N // 2, N // 2] == 1.0 and within[N // 2, N // 2 - 24] == 0.0


def test_margin_and_soft_edge_widths():
    disc = (radii_in_pixels(N) <= 8.0).astype(float)
    # a 1-pixel low-pass spreads the disc's edge by about a pixel: the core radius is 8 to 10 px
    mask = auto_masks(disc[None], PIXEL, lowpass_in_angstroms=1.0, margin_in_angstroms=4.0,
                      soft_edge_in_angstroms=6.0)[0]
    r = radii_in_pixels(N)
    assert np.all(mask[r <= 8.0 + 2.0] == 1.0)  # core plus the 2-pixel margin
    assert np.all(mask[r >= 10.0 + 2.0 + 3.0 + 0.5] == 0.0)  # ... plus the 3-pixel edge
    profile = mask[N // 2, N // 2:]
    assert np.count_nonzero((profile > 0) & (profile < 1)) in (2, 3)  # the edge, sampled on the axis
    assert np.all(np.diff(profile) <= 0)


def test_soft_edge_is_a_raised_cosine():
    d = np.array([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(soft_edge(d, 4.0), [1, 1, 0.5 * (1 + np.cos(np.pi / 4)), 0.5,
                                                   0.5 * (1 + np.cos(3 * np.pi / 4)), 0, 0], atol=1e-15)
    np.testing.assert_array_equal(soft_edge(d, 0.0), [1, 1, 0, 0, 0, 0, 0])


def test_circular_mask():
    mask = circular_mask(N, PIXEL, 20.0, soft_edge_in_angstroms=8.0)
    r = radii_in_pixels(N)
    assert np.all(mask[r <= 10.0] == 1.0) and np.all(mask[r >= 14.0] == 0.0)
    np.testing.assert_allclose(mask[N // 2, N // 2 + 12], 0.5)  # half-way through the 4-pixel edge
    with pytest.raises(InputError, match="--radius"):
        circular_mask(N, PIXEL, 0.0)


def test_image_without_signal_raises_with_its_number():
    rng = np.random.default_rng(1)
    _, images = noisy_stack(rng, n_images=7)
    images[6] = 5.0 + 0.05 * rng.standard_normal((N, N))  # pure noise
    centred, _ = subtract_background(images)
    with pytest.raises(InputError, match=r"^image 7 of X\.mrcs: no particle found above the background; "
                                         r"check the image or pass --mask radius$"):
        auto_masks(centred, PIXEL, source="X.mrcs")
    with pytest.raises(InputError, match="image 1 of 1: no particle"):
        auto_masks(np.zeros((1, N, N)), PIXEL)


def test_central_contrast_sign_and_clipping():
    bright = blob() + 1.0
    contrast = central_contrast(np.stack([bright, 2.0 - bright]))
    assert contrast[0] > 0 > contrast[1]
    out = apply_masks(np.stack([bright - 1.5]), np.ones((N, N)))
    assert out.min() == 0.0 and out.max() == pytest.approx(bright.max() - 1.5)


def test_scales():
    images = np.stack([blob(amplitude=a) for a in (1.0, 2.0, 4.0)])
    common, factors = scale_images(images, "common")
    np.testing.assert_allclose(common.sum(axis=(1, 2)), [0.5, 1.0, 2.0])  # relative intensities kept
    assert np.all(factors == factors[0])
    per_image, _ = scale_images(images, "per-image")
    np.testing.assert_allclose(per_image.sum(axis=(1, 2)), 1.0)
    same, factors = scale_images(images, None)
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(factors, 1.0)
