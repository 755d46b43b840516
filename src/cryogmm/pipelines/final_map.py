"""The map an ab initio run hands out as `map.mrc`: the pseudo-atom posterior mean, or the direct
Fourier inversion of the images with the run's final poses, whichever the data say is sharper.

Once the poses have converged, direct Fourier inversion (section 3.2.3) uses every image at its
full resolution, while the posterior mean of a mixture of K Gaussians of width sigma is smooth at
the scale sigma; on noisy images the inversion carries the noise, which the mixture averages out.
Which one is better is measured, not assumed, with the usual half-set relations:

- the images are split into two halves (even and odd index), each inverted alone; their FSC F(k)
  gives the full inversion D an expected correlation with the truth C_D(k) = sqrt(2F / (1 + F))
  (Rosenthal & Henderson's C_ref);
- the posterior mean M (fitted to all images, smooth) correlates with D as
  FSC(M, D) ~ C_M C_D when their errors are independent, so C_M(k) ~ FSC(M, D) / C_D(k);
- within the shells where D is itself reliable (C_D >= 0.5, the half-set 0.143 criterion), D is
  chosen when C_M falls below 0.5 there (the mixture is then blurrier than the inversion);
  otherwise M is kept: where D is unreliable it cannot show M to be worse.

The inversion handed out is weighted shell by shell by C_D (which leaves its FSC as it is and damps
the shells that hold mostly noise). The figures (both estimated resolutions and the choice) go to
`summary.json`. Both maps are in the images' units (line integrals per Å^2): the inversion as
`fourier_inversion` gives it, the posterior mean scaled by `scale_to_images`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryogmm.geometry.symmetry import symmetry_operators
from cryogmm.metrics.fsc import FSCCurve, fourier_shell_correlation, resolution_at

FINAL_MAPS = ("auto", "posterior_mean", "fourier_inversion")


def scale_to_images(density: np.ndarray, images: np.ndarray, pixel_size_in_angstroms: float) -> np.ndarray:
    """A posterior-mean density (integrating to one) in the images' units: times the images' mean
    integral (sum of each image times the pixel area, averaged), so that its line integrals are
    the images, as `fourier_inversion`'s maps are. The one place a posterior mean is scaled."""
    images = np.asarray(images, dtype=np.float64)
    mass = float(images.reshape(images.shape[0], -1).sum(1).mean()) * float(pixel_size_in_angstroms) ** 2
    return np.asarray(density) * mass


def invert_with_symmetry(images, rotations, shifts_in_angstroms, pixel_size_in_angstroms: float,
                         symmetry: str = "C1") -> np.ndarray:
    """Direct Fourier inversion, each image inserted once per symmetry operator S_g with rotation
    A_i S_g (the projection of a symmetric map under A_i S_g is the same image)."""
    images = np.asarray(images, dtype=np.float64)
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.zeros((len(images), 2)) if shifts_in_angstroms is None else np.asarray(shifts_in_angstroms, float)
    ops = symmetry_operators(symmetry)
    g = ops.shape[0]
    if g > 1:
        rotations = np.einsum("pij,gjk->pgik", rotations, ops).reshape(-1, 3, 3)
        images = np.repeat(images, g, axis=0)
        shifts = np.repeat(shifts, g, axis=0)
    from cryogmm.reconstruction.fourier_inversion import fourier_inversion  # here: scipy.ndimage is slow to import

    return fourier_inversion(images, rotations, shifts, pixel_size_in_angstroms, dtype=np.float64)


@dataclass(frozen=True)
class FinalMap:
    """volume: map.mrc (images' units); source: "posterior_mean" or "fourier_inversion";
    posterior_mean and inversion: both candidates; figures: the estimates behind the choice."""

    volume: np.ndarray
    source: str
    posterior_mean: np.ndarray
    inversion: np.ndarray
    figures: dict


def choose_final_map(images, pixel_size_in_angstroms: float, rotations, shifts_in_angstroms,
                     posterior_mean: np.ndarray, *, symmetry: str = "C1", rule: str = "auto") -> FinalMap:
    """map.mrc of a run: `rule` "auto" chooses between the scaled `posterior_mean` (a density
    integrating to one) and the direct inversion with the final poses as the module docstring
    says; "posterior_mean" or "fourier_inversion" take that one (the figures are still computed)."""
    from cryogmm.reconstruction.postprocess import sharpen  # here: scipy.ndimage is slow to import

    if rule not in FINAL_MAPS:
        raise ValueError(f"final map rule must be one of {', '.join(FINAL_MAPS)}, got {rule!r}")
    images = np.asarray(images, dtype=np.float64)
    pixel = float(pixel_size_in_angstroms)
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.zeros((len(images), 2)) if shifts_in_angstroms is None else np.asarray(shifts_in_angstroms, float)
    mean = scale_to_images(posterior_mean, images, pixel)
    inversion = invert_with_symmetry(images, rotations, shifts, pixel, symmetry)
    figures = {"rule": rule}
    if len(images) >= 4:
        halves = [invert_with_symmetry(images[h::2], rotations[h::2], shifts[h::2], pixel, symmetry) for h in (0, 1)]
        half = fourier_shell_correlation(*halves, pixel)
        f = np.clip(half.correlation, 0.0, 1.0)
        c_inversion = np.sqrt(2.0 * f / (1.0 + f))
        agreement = fourier_shell_correlation(mean, inversion, pixel)
        c_mean = np.clip(agreement.correlation / np.maximum(c_inversion, 1e-12), -1.0, 1.0)
        reliable = c_inversion >= 0.5
        reliable[0] = True
        # the shells up to the first where the inversion stops being reliable
        last = int(np.argmin(reliable)) - 1 if not reliable.all() else len(reliable) - 1
        mean_worse = bool(np.any(c_mean[1:last + 1] < 0.5))
        figures.update({
            "inversion_half_set_fsc_0.143_in_angstroms": resolution_at(half, 0.143),
            "posterior_mean_estimated_resolution_in_angstroms": resolution_at(
                FSCCurve(agreement.frequency_per_angstrom, c_mean, agreement.n_voxels), 0.5),
            "posterior_mean_worse_within_reliable_shells": mean_worse})
        auto = "fourier_inversion" if mean_worse else "posterior_mean"
        # each shell of the inversion weighted by its expected correlation with the truth: this
        # leaves its FSC as it is and damps the shells that hold mostly noise
        inversion = sharpen(inversion, pixel, bfactor_in_angstroms2=0.0, resolution_in_angstroms=2.0 * pixel,
                            fsc=half, lowpass_width_in_shells=0.0).astype(np.float64)
    else:  # too few images to split
        figures["note"] = "fewer than 4 images: no half sets, the posterior mean is kept"
        auto = "posterior_mean"
    source = auto if rule == "auto" else rule
    figures["map_mrc"] = source
    volume = inversion if source == "fourier_inversion" else mean
    return FinalMap(volume, source, mean, inversion, figures)
