"""An ab initio result as files: the map, the pseudo-atoms and the orientations (what `cryogmm
abinitio` writes, for callers of the Python API)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryogmm.io.mrc import write_map
from cryogmm.io.pseudoatoms import write_pseudoatom_files
from cryogmm.io.star import poses_to_columns, write_particles
from cryogmm.mixture import GaussianMixture


def abinitio_volume(result, images: np.ndarray, pixel_size_in_angstroms: float) -> np.ndarray:
    """map.mrc `(n, n, n)` in the images' units (line integrals per Å^2): the run's chosen final map
    (`pipelines.final_map`) when it has one, else its posterior mean, which integrates to one,
    given the images' mean mass."""
    from cryogmm.pipelines.final_map import scale_to_images

    if getattr(result, "final_map", None) is not None:
        return result.final_map.volume
    return scale_to_images(result.posterior_mean, images, pixel_size_in_angstroms)


def star_optics(pixel_size_in_angstroms: float, box: int, extra: dict | None = None) -> dict:
    """The optics block of a STAR file that cryogmm writes for images of `box` pixels; `extra`
    (voltage, Cs, amplitude contrast copied from the input) is added when known."""
    return {"rlnOpticsGroupName": "opticsGroup1", "rlnImagePixelSize": float(pixel_size_in_angstroms),
            "rlnImageSize": int(box), "rlnImageDimensionality": 2, **(extra or {})}


def write_abinitio_results(folder: str | os.PathLike, result, images: np.ndarray, pixel_size_in_angstroms: float,
                           names: list[str], *, centring_shifts_in_angstroms: np.ndarray | None = None,
                           optics: dict | None = None) -> list[Path]:
    """Write `map.mrc`, `pseudoatoms.pdb`/`.cif` and `orientations.star` of `run_abinitio`'s result.

    Parameters
    ----------
    folder : created if needed; files in it are replaced
    result : `cryogmm.pipelines.abinitio.AbinitioResult`
    images : the `(P, n, n)` images the result was computed from (their mass scales the map)
    names : one RELION image name per image for orientations.star (`000001@stack.mrcs`)
    centring_shifts_in_angstroms : `(P, 2)`, optional: where the particle centre lies in the named
        images relative to the images used, e.g. `PreparedImages.shifts_in_angstroms` when `names`
        are those of the images before `prepare_images` centred them; added to the origins
    optics : voltage, Cs and amplitude contrast to write (RELION names), if known

    The map has MRC origin 0 (rotation centre at voxel n // 2, RELION's frame); the pseudo-atoms
    overlay it, one chain per symmetric copy, the box as unit cell. Returns the paths written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = np.asarray(images).shape[-1]
    pixel = float(pixel_size_in_angstroms)
    write_map(folder / "map.mrc", abinitio_volume(result, images, pixel), pixel)
    # map.mrc has MRC origin 0, so the rotation centre (mixture coordinate 0) is at (n // 2) * pixel
    full = result.full_mixture
    moved = GaussianMixture(full.means_in_angstroms + (n // 2) * pixel, full.weights, full.precision_per_square_angstrom)
    paths = [folder / "map.mrc"]
    final = getattr(result, "final_map", None)
    if final is not None:  # both candidates beside map.mrc
        write_map(folder / "posterior_mean.mrc", final.posterior_mean, pixel)
        write_map(folder / "fourier_inversion.mrc", final.inversion, pixel)
        paths += [folder / "posterior_mean.mrc", folder / "fourier_inversion.mrc"]
    paths += write_pseudoatom_files(folder / "pseudoatoms", moved,
                                    copies=full.n_components // result.mixture.n_components,
                                    symmetry=result.settings.symmetry, cell_in_angstroms=n * pixel)
    shifts = result.translations_in_angstroms
    if centring_shifts_in_angstroms is not None:
        shifts = shifts + np.asarray(centring_shifts_in_angstroms, dtype=np.float64).reshape(-1, 2)
    table = pd.DataFrame({"rlnImageName": list(names), **poses_to_columns(result.rotations, shifts),
                          "rlnOpticsGroup": 1})
    write_particles(folder / "orientations.star", table, star_optics(pixel, n, optics))
    return paths + [folder / "orientations.star"]


def abinitio_traces(result) -> dict:
    """What `traces.json` of an ab initio run holds: each restart's log-posterior per step and the
    refinement's log-posterior, component sigma and median pose changes per step (degrees, Å);
    samples are averaged from step `sampling_starts_at_step` of the refinement on."""
    settings = result.settings
    return {"restarts": [{"restart": r.index + 1, "log_posterior": r.trace} for r in result.restarts],
            "chosen_restart": result.best_restart + 1,
            "refinement": {"log_posterior": result.refine_trace, "sigma_in_angstroms": result.sigma_trace,
                           "rotation_change_median_degrees": result.rotation_change_trace,
                           "shift_change_median_angstroms": result.shift_change_trace,
                           # the warm-up and burn-in may end early (adaptive stopping): the steps run
                           "mixture_only_steps": getattr(result, "stopping", {}).get("refinement_warmup", {}).get(
                               "step", settings.refine_mixture_steps),
                           "sampling_starts_at_step": getattr(result, "sampling_start", None)
                           or settings.refine_mixture_steps + 1 + settings.refine_burn_in}}
