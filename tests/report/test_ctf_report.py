"""Thon-ring profiles and agreement (cryogmm.report.ctf) on particles with a known CTF."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryogmm.forward.ctf import CTFParameters, apply_ctf, ctf_images
from cryogmm.report.ctf import (
    BINS_PER_PERIOD,
    agreement,
    ctf_phases,
    ctf_summary,
    plot_ctf_overview,
    power_spectra,
    thon_profiles,
)

BOX = 96
PIXEL_SIZE = 2.0


def _simulated(rng, parameters, box=BOX, noise=0.5):
    """White noise convolved with the CTF (a particle of flat spectrum), plus white noise."""
    signal = apply_ctf(rng.standard_normal((len(parameters), box, box)), ctf_images(parameters, box, PIXEL_SIZE))
    return signal + noise * rng.standard_normal(signal.shape)


PARAMETERS = CTFParameters([12000.0, 14000.0, 16000.0, 13000.0], [11500.0, 13000.0, 15800.0, 13000.0],
                           [30.0, -60.0, 0.0, 0.0], 300.0, 2.7, 0.1)


def test_phases_give_the_ctf():
    """-sin(chi) is the CTF of forward.ctf (without envelope), on the centred grid."""
    chi = ctf_phases(PARAMETERS, 32, PIXEL_SIZE)
    np.testing.assert_allclose(-np.sin(chi), ctf_images(PARAMETERS, 32, PIXEL_SIZE, centred=True), atol=1e-12)


def test_power_spectrum_of_a_plane_wave():
    y, x = np.indices((32, 32))
    power = power_spectra(np.cos(2 * np.pi * 5 * x / 32)[None])[0]
    peaks = np.argwhere(power > 0.5 * power.max())
    assert sorted(map(tuple, peaks)) == [(16, 11), (16, 21)]  # centred: zero frequency at 16


def test_agreement_is_high_for_the_true_ctf_and_drops_when_wrong():
    rng = np.random.default_rng(0)
    images = _simulated(rng, PARAMETERS)
    true = thon_profiles(images, PARAMETERS, PIXEL_SIZE)
    per_particle = agreement(true)
    assert per_particle.min() > 0.6, per_particle
    assert agreement(true.mean())[0] > 0.9
    for factor in (0.85, 1.15):
        wrong = dataclasses.replace(PARAMETERS, defocus_u_in_angstroms=PARAMETERS.defocus_u_in_angstroms * factor,
                                    defocus_v_in_angstroms=PARAMETERS.defocus_v_in_angstroms * factor)
        assert agreement(thon_profiles(images, wrong, PIXEL_SIZE).mean())[0] < 0.3
    # a pixel size 10% off moves the rings as much
    assert agreement(thon_profiles(images, PARAMETERS, 1.1 * PIXEL_SIZE).mean())[0] < 0.3
    # ignoring the astigmatism costs agreement too
    round_ = dataclasses.replace(PARAMETERS, defocus_u_in_angstroms=PARAMETERS.mean_defocus_in_angstroms,
                                 defocus_v_in_angstroms=PARAMETERS.mean_defocus_in_angstroms)
    assert agreement(thon_profiles(images[:2], round_[:2], PIXEL_SIZE))[1] < per_particle[1]


def test_images_without_ctf_do_not_agree():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((4, BOX, BOX))
    assert abs(agreement(thon_profiles(noise, PARAMETERS, PIXEL_SIZE).mean())[0]) < 0.3


def test_profiles_band_and_summary():
    rng = np.random.default_rng(2)
    images = _simulated(rng, PARAMETERS)
    profiles = thon_profiles(images, PARAMETERS, PIXEL_SIZE)
    assert profiles.observed.shape == profiles.model.shape == (4, profiles.phase.size)
    assert np.all(profiles.phase[profiles.band.any(axis=0)] >= np.pi)  # from the first zero on
    np.testing.assert_allclose(np.diff(profiles.phase), np.pi / BINS_PER_PERIOD)
    # the band ends below Nyquist: its frequencies are resolved
    assert np.nanmax(profiles.frequency_per_angstrom[profiles.band]) <= 0.5 / PIXEL_SIZE
    summary = ctf_summary(PARAMETERS, PIXEL_SIZE, profiles)
    assert summary["n_particles"] == 4 and summary["voltage_in_kv"] == [300.0]
    assert summary["defocus_in_angstroms"] == {"min": 11750.0, "median": 13250.0, "max": 15900.0}
    assert summary["astigmatism_in_angstroms"] == 1000.0
    rings = summary["thon_rings"]
    assert rings["agreement"] > 0.9 and len(rings["agreement_per_particle"]) == 4
    low, high = rings["band_in_angstroms"]
    assert low > high >= 2 * PIXEL_SIZE and rings["rings_in_band"] > 2
    # a low-frequency limit narrows the band
    narrow = thon_profiles(images, PARAMETERS, PIXEL_SIZE, low_frequency=0.1, high_frequency=0.2)
    used = narrow.frequency_per_angstrom[narrow.band]
    assert used.min() >= 0.1 and used.max() <= 0.2 + 0.01


def test_unresolvable_rings_give_no_agreement():
    """A small box at high defocus: rings narrower than 3 pixels from the first zero on."""
    far = CTFParameters([40000.0], [40000.0], 0.0, 300.0, 2.7, 0.1)
    profiles = thon_profiles(np.random.default_rng(3).standard_normal((1, 24, 24)), far, PIXEL_SIZE)
    assert not profiles.band.any() and np.isnan(agreement(profiles)[0])
    assert ctf_summary(far, PIXEL_SIZE, profiles)["thon_rings"]["agreement"] is None


def test_overview_png(tmp_path):
    rng = np.random.default_rng(4)
    images = _simulated(rng, PARAMETERS, box=64)
    profiles = thon_profiles(images, PARAMETERS, PIXEL_SIZE)
    plot_ctf_overview(images, PARAMETERS, PIXEL_SIZE, profiles, [0, 2], tmp_path / "ctf.png", title="test")
    assert (tmp_path / "ctf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ctf.png"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name, low, high", [
    ("cryodrgn_relion31/relion31.star", 0.7, 0.85),               # measured 0.777
    ("cryodrgn_empiar10076_7/empiar_10076_7.cs", 0.5, 0.65),     # measured 0.575 (the .star gives the same)
    ("aspire_sample/sample_relion_data.star", 0.75, 0.9),         # measured 0.83
    ("aspire_sample/sample_particles_relion31.star", -0.2, 0.3),  # 0.16: its 200 kV group and 1.4 Å are made up
])
def test_real_particle_sets(shared_data, name, low, high):
    from cryogmm.io.star import ctf_parameters, load_images, read_particles

    table = read_particles(shared_data / "particles" / name)
    images, pixel_size = load_images(table)
    assert low < agreement(thon_profiles(images, ctf_parameters(table), pixel_size).mean())[0] < high


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        thon_profiles(np.zeros((2, 16, 16)), PARAMETERS, PIXEL_SIZE)
