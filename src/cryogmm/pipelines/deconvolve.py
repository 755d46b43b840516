"""CTF deconvolution of class averages, from particles or from class averages (section 4.1.2).

Two inputs:
- particles with classes, in-plane poses and CTFs (a RELION 2D-classification `_data.star`, or
  `simulate-images --classes`): each class's aligned particles are averaged per defocus group
  (equal-width intervals of the class's defocus range) and the group averages are deconvolved
  together (multi-frame, Eqn. 4.3); one group is the single-frame case (Eqn. 4.4) of the
  CTF-weighted class average;
- class averages with one CTF each (a STAR listing the averages with their CTF columns):
  each is deconvolved alone (Eqn. 4.4).

Particles are cut from micrographs, so their CTF acts as a linear convolution: with `pad` the
class image is solved in a box twice the size (the data zero-padded, the CTFs sampled on the
larger grid) with the image constrained to zero outside the original box, which keeps the CTF's
spread of the particle beyond the box edge from wrapping round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cryogmm.errors import InputError
from cryogmm.forward.ctf import CTFParameters, ctf_images
from cryogmm.preprocess.class_average import class_averages
from cryogmm.preprocess.deconvolve import DeconvolutionResult, deconvolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeconvolvedClasses:
    """images (C, n, n) >= 0, bright particles on zero; class_ids (C,); counts (C,) particles per
    class (1 per class average); averages (C, n, n) the plain averages that went in (as read, for
    figures); group_weights (C, G); result: the DeconvolutionResult (alpha, polarity, losses...);
    box: the box of the solve (2n with padding); notes: what was done, one line each."""

    images: np.ndarray
    class_ids: np.ndarray
    counts: np.ndarray
    averages: np.ndarray
    group_weights: np.ndarray
    result: DeconvolutionResult
    box: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _padded(images: np.ndarray, box: int) -> tuple[np.ndarray, int]:
    n = images.shape[-1]
    offset = (box - n) // 2
    out = np.zeros(images.shape[:-2] + (box, box))
    out[..., offset:offset + n, offset:offset + n] = images
    return out, offset


def _solve(group_images, group_ctfs, group_weights, n, box, alpha, polarity):
    padded, offset = _padded(group_images, box)
    result = deconvolve(padded, group_ctfs, group_weights, alpha=alpha, polarity=polarity, support_box=n)
    return result, result.images[:, offset:offset + n, offset:offset + n]


def _polarity_note(result: DeconvolutionResult) -> str:
    kind = "bright particles (z = -CTF * y)" if result.polarity < 0 else "dark particles (z = CTF * y)"
    return f"polarity: {kind}; {result.polarity_rule}"


def deconvolve_particles(images, psi_in_degrees, shifts_in_angstroms, classes, ctf_parameters: CTFParameters,
                         pixel_size_in_angstroms: float, *, n_groups: int = 7, alpha=None, polarity="auto",
                         pad: bool = True) -> DeconvolvedClasses:
    """Multi-frame (n_groups > 1) or single-frame (n_groups = 1) deconvolution of the classes of
    aligned particles. images (P, n, n); psi (P,) degrees; shifts (P, 2) particle centres in Å
    (minus rlnOriginX/YAngst) or None; classes (P,) labels; ctf_parameters of the P particles."""
    start = time.perf_counter()
    images = np.asarray(images, dtype=np.float64)
    if n_groups < 1:
        raise InputError(f"--groups {n_groups}: must be at least 1")
    n = images.shape[-1]
    box = 2 * n if pad else n
    averages = class_averages(images, psi_in_degrees, shifts_in_angstroms, classes, pixel_size_in_angstroms,
                              ctf_parameters=ctf_parameters, n_defocus_groups=n_groups, ctf_box=box)
    result, out = _solve(averages.group_images, averages.group_ctfs, averages.group_weights, n, box, alpha, polarity)
    used = (averages.group_weights > 0).sum(1)
    notes = [f"{images.shape[0]} particles in {averages.class_ids.size} classes "
             f"({int(averages.counts.min())}-{int(averages.counts.max())} each)",
             f"{'multi-frame' if n_groups > 1 else 'single-frame'} deconvolution: {n_groups} defocus group"
             f"{'s' if n_groups > 1 else ''} per class ({int(used.min())}-{int(used.max())} non-empty)",
             f"alpha ({result.alpha_rule}): median {np.median(result.alpha):.3g}, "
             f"range {result.alpha.min():.3g}-{result.alpha.max():.3g}",
             _polarity_note(result),
             f"solved in a {box} px box (linear convolution)" if pad else f"solved in the {n} px box (circular)"]
    if not np.all(result.converged):
        notes.append(f"{int((~result.converged).sum())} classes stopped at the iteration limit")
    return DeconvolvedClasses(out, averages.class_ids, averages.counts, averages.averages, averages.group_weights,
                              result, box, notes, time.perf_counter() - start)


def deconvolve_class_averages(images, ctf_parameters: CTFParameters, pixel_size_in_angstroms: float, *,
                              alpha=None, polarity="auto", pad: bool = True) -> DeconvolvedClasses:
    """Single-frame deconvolution (Eqn. 4.4) of class averages (C, n, n), each with its own CTF
    (for an average over particles of several defoci: their mean CTF)."""
    start = time.perf_counter()
    images = np.asarray(images, dtype=np.float64)
    if len(ctf_parameters) != images.shape[0]:
        raise InputError(f"{len(ctf_parameters)} CTFs for {images.shape[0]} class averages")
    n = images.shape[-1]
    box = 2 * n if pad else n
    ctfs = ctf_images(ctf_parameters, box, pixel_size_in_angstroms)[:, None]
    weights = np.ones((images.shape[0], 1))
    result, out = _solve(images[:, None], ctfs, weights, n, box, alpha, polarity)
    notes = [f"single-frame deconvolution of {images.shape[0]} class averages, one CTF each",
             f"alpha ({result.alpha_rule}): median {np.median(result.alpha):.3g}", _polarity_note(result)]
    return DeconvolvedClasses(out, np.arange(1, images.shape[0] + 1), np.ones(images.shape[0], dtype=int), images,
                              weights, result, box, notes, time.perf_counter() - start)
