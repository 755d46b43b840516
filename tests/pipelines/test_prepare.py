"""`prepare_images`: offset, polarity, off-centre and noisy blobs come out non-negative, centred,
zero outside the masks; options and refusals; the real beta-galactosidase class averages."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.pipelines.prepare import PreparedImages, prepare_images
from cryogmm.preprocess.center import centers_of_mass
from cryogmm.preprocess.normalise import radii_in_pixels

PIXEL = 2.0
N = 64
OFFSETS = np.array([[4.3, -2.6], [-3.1, 5.2], [0.0, 0.0], [6.7, 1.9]])  # pixels


def particle(centre_xy, n=N):
    """An asymmetric particle: two Gaussian lobes, the pair's centre of mass at `centre_xy`."""
    y, x = np.indices((n, n)) - n // 2
    cx, cy = centre_xy
    mass_big, mass_small = np.pi * np.sqrt(18.0 * 8.0), 0.5 * np.pi * 6.0
    # move the lobes so that their joint centre of mass is exactly (cx, cy)
    dx = (mass_big * -1.5 + mass_small * 3.0) / (mass_big + mass_small)
    dy = mass_small * 1.0 / (mass_big + mass_small)
    big = np.exp(-((x - cx + 1.5 + dx) ** 2 / 18.0 + (y - cy + dy) ** 2 / 8.0))
    small = 0.5 * np.exp(-((x - cx - 3.0 + dx) ** 2 + (y - cy - 1.0 + dy) ** 2) / 6.0)
    return big + small


def stack(offsets=OFFSETS, background=3.0, noise=0.0, seed=0, sign=1.0):
    rng = np.random.default_rng(seed)
    clean = np.stack([particle(o) for o in offsets])
    return sign * clean + background + noise * rng.standard_normal(clean.shape), clean


def test_centres_masks_and_clips_offset_blobs():
    images, clean = stack()
    result = prepare_images(images, PIXEL, scale=None)
    assert isinstance(result, PreparedImages) and not result.inverted
    assert result.images.shape == images.shape and result.pixel_size_in_angstroms == PIXEL
    assert result.images.min() >= 0.0
    np.testing.assert_allclose(result.background_levels, 3.0, atol=1e-3)
    # shifts are t = particle centre relative to the box centre, in Å
    np.testing.assert_allclose(result.shifts_in_angstroms / PIXEL, OFFSETS, atol=0.05)
    centred = np.stack([particle((0.0, 0.0))] * len(OFFSETS))
    np.testing.assert_allclose(result.images, centred, atol=0.02)
    np.testing.assert_allclose(centers_of_mass(result.images), 0.0, atol=0.02)
    assert np.all(result.images[:, radii_in_pixels(N) > 25] == 0.0)  # zero background
    assert np.all((result.masked_fractions > 0.03) & (result.masked_fractions < 0.3))
    assert any(note.startswith("centred on the centre of mass") for note in result.notes)
    assert any(note.startswith("masked (auto): kept") for note in result.notes)
    assert not any(note.startswith("warning") for note in result.notes)


def test_large_shifts_are_reported():
    images, _ = stack(offsets=[[14.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    result = prepare_images(images, PIXEL)
    np.testing.assert_allclose(result.shifts_in_angstroms[0], [28.0, 0.0], atol=0.1)
    assert any(note.startswith("warning: image(s) 1 moved by more than 20% of the box") for note in result.notes)


def test_noisy_dark_particles_are_inverted():
    bright, _ = stack(noise=0.03, seed=1)
    dark, _ = stack(noise=0.03, seed=1, sign=-1.0)
    result = prepare_images(dark, PIXEL, scale=None)
    assert result.inverted
    assert "inverted the contrast (detected)" in result.notes[1]
    np.testing.assert_allclose(result.shifts_in_angstroms / PIXEL, OFFSETS, atol=0.15)
    forced = prepare_images(dark, PIXEL, scale=None, invert=True)
    np.testing.assert_array_equal(result.images, forced.images)
    kept = prepare_images(bright, PIXEL, scale=None)
    assert not kept.inverted and "kept the contrast (detected)" in kept.notes[1]
    # the same particles; only the noise (0.03) differs in sign: below 7 standard deviations of the
    # difference everywhere, and small on average
    np.testing.assert_allclose(kept.images, result.images, atol=7 * 0.03 * np.sqrt(2))
    assert np.abs(kept.images - result.images).mean() < 0.01


def test_box_and_radius_options():
    images, _ = stack()
    cropped = prepare_images(images, PIXEL, box=32, scale="per-image")
    assert cropped.images.shape == (len(OFFSETS), 32, 32) and cropped.pixel_size_in_angstroms == 2 * PIXEL
    assert cropped.images.min() >= 0.0
    np.testing.assert_allclose(cropped.images.sum(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(cropped.shifts_in_angstroms, OFFSETS * PIXEL, atol=0.1)
    assert cropped.notes[0].startswith("Fourier-cropped 4 images from 64 to 32 px")
    disc = prepare_images(images, PIXEL, mask="radius", radius_in_angstroms=24.0)
    np.testing.assert_allclose(disc.shifts_in_angstroms / PIXEL, OFFSETS, atol=0.05)
    assert np.all(disc.images[:, radii_in_pixels(N) >= 12 + 5] == 0.0)  # 24 Å radius + 10 Å edge
    np.testing.assert_allclose(disc.masked_fractions, disc.masked_fractions[0])
    unmoved = prepare_images(images, PIXEL, center=False, mask=None)
    np.testing.assert_array_equal(unmoved.shifts_in_angstroms, 0.0)
    np.testing.assert_array_equal(unmoved.masks, 1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask="radius"), "--mask radius needs --radius"),
    (dict(mask="circle"), "--mask circle: choose auto, radius or none"),
    (dict(box=100), "--box 100: must be between 8 and the image size 64"),
    (dict(invert="maybe"), "--invert maybe"),
    (dict(radius_in_angstroms=-3.0), "--radius -3.0"),
])
def test_bad_options(kwargs, message):
    images, _ = stack()
    with pytest.raises(InputError, match=message):
        prepare_images(images, PIXEL, **kwargs)


def test_bad_images():
    images, _ = stack()
    with pytest.raises(InputError, match="must be square"):
        prepare_images(images[:, :, :-1], PIXEL)
    broken = images.copy()
    broken[1, 3, 3] = np.nan
    with pytest.raises(InputError, match="1 values are NaN"):
        prepare_images(broken, PIXEL, source="a.mrcs")
    flat = images.copy()
    flat[2] = 3.0
    with pytest.raises(InputError, match="image 3 of a.mrcs: no particle found"):
        prepare_images(flat, PIXEL, source="a.mrcs")
    with pytest.raises(InputError, match="image.s. 3 have no positive density inside the mask"):
        prepare_images(flat, PIXEL, mask="radius", radius_in_angstroms=20.0, center=False)


@pytest.mark.shared_data
def test_betagal_class_averages(shared_data):
    from cryogmm.io.mrc import read_stack

    pixel = 3.54  # the header says 0
    images = read_stack(shared_data / "class_averages" / "betagal_class_averages.mrcs", pixel).data
    result = prepare_images(images, pixel, source="betagal")
    assert not result.inverted  # RELION class averages: bright particles
    assert result.images.min() >= 0.0
    assert np.all(result.images[:, radii_in_pixels(100) > 38] == 0.0)  # background is exactly 0
    # beta-galactosidase is about 170 x 135 x 90 Å: masks of 100 to 180 Å equivalent diameter
    equivalent_diameter = 2 * np.sqrt((result.masks > 0.5).sum(axis=(1, 2)) / np.pi) * pixel
    assert np.all((equivalent_diameter > 100) & (equivalent_diameter < 180))
    assert np.all(result.masks[:, radii_in_pixels(100) > 35] == 0.0)  # no mask reaches the box edge
    # RELION centres class averages: the centre-of-mass shifts are small
    assert np.abs(result.shifts_in_angstroms).max() < 1.0
    # the masks cut off the negative halo but keep the particle: all its positive mass survives
    positive = np.clip(images - np.median(images[:, radii_in_pixels(100) > 45], axis=1)[:, None, None], 0, None)
    kept = (result.images * result.scale_factors[:, None, None]).sum(axis=(1, 2)) / positive.sum(axis=(1, 2))
    assert np.all((kept > 0.99) & (kept < 1.001))


def test_a_zero_background_is_said_plainly():
    """No "median of the outer ring: 0 to 0" (issue 14, point 8)."""
    _, clean = stack()
    notes = prepare_images(clean, PIXEL).notes
    assert notes[0] == "no background to subtract: the median of the outer ring is 0 in all 4 images"
    assert not any("0 to 0" in note for note in notes)
    lifted = prepare_images(clean + 0.1, PIXEL).notes
    assert lifted[0].startswith("subtracted the background (median of the outer ring: ")
