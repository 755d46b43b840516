"""Ab initio 3D mixtures with the Gaussian-noise model (thesis chapter 5).

Class averages are taken as they are (any sign, any background level): image i is
lam_i sum_k exp(-s/2 |x - (Po R_i mu_k + t_i)|^2) plus white Gaussian noise of precision beta_i
(Eqns. 5.1-5.2, with the per-image scale and noise level that 5.2.3 and 5.2.5 mention).

One Gibbs sweep over the mixture (section 5.2): an HMC trajectory on all means (5.2.1); the
component precision s by random-walk MH on log s with every lam_i integrated out (Eqns.
5.32-5.37), then each lam_i exactly from its Gaussian conditional (5.38-5.40); each beta_i from its
Gamma conditional (5.46-5.48). Pose moves: random-walk MH on every image's rotation in exponential
coordinates and on its translation, one accept/reject per image (`samplers.image_mh`).

Initial stage (as the Poisson pipeline's, section 3.4.1): a small mixture on Fourier-cropped
images, started from the prior with uniform random rotations, alternating mixture sweeps with a
global rotation step (every image's rotation drawn from its marginal posterior over fresh uniform
rotations and its current one, the Gaussian likelihood with lam_i integrated out, Eqn. 5.41) and
pose moves; independent restarts ranked by log-posterior. Refinement: the best restart's poses, a
larger mixture drawn from the best restart's density, the images at full size; warm-up sweeps with
fixed poses, one global step, then sweeps with pose moves; step sizes adapt during warm-up and
burn-in and are frozen after; every `refine_thin`-th sample after burn-in is averaged into the
posterior mean map.

Both stages run through the one driver (`samplers.driver.run_chain`): a restart is a chain of
annealed cycles, the refinement one chain of sweeps (with its replicas, when tempered).

Checkpoints (`load(name)`, `save(name, dict)`, as `pipelines.abinitio`): each finished restart and
the refinement every `checkpoint_every` steps, with the generator's state and the samplers' step
sizes, so that a resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numba
import numpy as np
from scipy.spatial.transform import Rotation

from cryogmm.forward.ctf import CTFParameters, ctf_images
from cryogmm.forward.gaussian import (energy_and_gradients_on_grid, energy_and_gradients_with_ctf, filter_and_crop,
                                      padded_unit_predictions)
from cryogmm.geometry.so3 import random_rotations, rotation_angle_in_degrees
from cryogmm.geometry.symmetry import asymmetric_unit_components, canonical_symmetry_name, symmetry_operators
from cryogmm.grid import Grid
from cryogmm.kernels.gaussian_noise import residual_sums_of_squares_kernel
from cryogmm.kernels.projections import projected_densities_kernel
from cryogmm.mixture import GaussianMixture, evaluate
from cryogmm.pipelines.abinitio import AbinitioResult, RestartResult
from cryogmm.pipelines.deconvolve import deconvolve_class_averages
from cryogmm.preprocess.resample import fourier_crop
from cryogmm.samplers.driver import ChainCheckpoint, run_chain
from cryogmm.samplers.gaussian_noise import draw_noise_precision, draw_weight
from cryogmm.samplers.hmc import HMC, HMCState, adapted_step_size
from cryogmm.samplers.image_mh import BlockMH, BlockMHState
from cryogmm.samplers.mh import gaussian_proposal
from cryogmm.samplers.tempering import ReplicaExchange, ReplicaState, check_ladder

logger = logging.getLogger(__name__)

CTF_INITIAL_STAGES = ("deconvolved", "model")


@dataclass(frozen=True, kw_only=True)
class GaussianAbinitioSettings:
    """All settings of a Gaussian-noise ab initio run (defaults: thesis 5.3, scaled for speed)."""

    symmetry: str = "C1"
    n_restarts: int = 4
    # initial stage
    n_components_initial: int = 50
    initial_box: int = 24
    n_rotations: int = 1000
    n_cycles: int = 20
    mixture_steps: int = 5
    pose_steps: int = 10
    # the initial stage's energy is divided by a temperature falling geometrically from this
    # value to 1 over the cycles (annealing: the sharp Gaussian likelihood otherwise freezes
    # the first, wrong rotations)
    initial_temperature: float = 30.0
    local_spreads_in_degrees: tuple[float, ...] = (8.0, 4.0, 2.0)
    local_candidates: int = 20
    # refinement stage
    n_components: int = 500
    refine_mixture_steps: int = 20
    refine_steps: int = 120
    refine_burn_in: int = 60
    refine_thin: int = 3
    refine_pose_steps: int = 2
    refine_translations: bool = True
    max_shift_in_angstroms: float | None = None
    # with a CTF: "deconvolved" runs the initial stage on the images deconvolved of their CTFs
    # (single-frame, non-negative, as `deconvolve`) with a CTF-free model, and the refinement on
    # the images as they are with the CTF in the model; "model" keeps the CTF in the model in
    # both stages
    ctf_initial_stage: str = "deconvolved"
    # samplers
    # replica exchange in the refinement: the ladder T_0 = 1 < T_1 < ... (one temperature: none)
    temperatures: tuple[float, ...] = (1.0,)
    n_leapfrog: int = 10
    cutoff_sigmas: float = 4.0
    a_beta: float = 1.0
    b_beta: float = 0.0
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "symmetry", canonical_symmetry_name(self.symmetry))
        for name in ("n_restarts", "n_components_initial", "initial_box", "n_rotations", "n_cycles",
                     "n_components", "refine_thin", "n_leapfrog", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("mixture_steps", "pose_steps", "refine_mixture_steps", "refine_steps", "refine_burn_in",
                     "refine_pose_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.refine_burn_in >= self.refine_steps and self.refine_steps > 0:
            raise ValueError(f"refine_burn_in ({self.refine_burn_in}) must be below refine_steps ({self.refine_steps})")
        object.__setattr__(self, "temperatures", check_ladder(self.temperatures))
        if not self.initial_temperature >= 1.0:
            raise ValueError(f"initial_temperature must be at least 1, got {self.initial_temperature}")
        if not self.cutoff_sigmas > 0:
            raise ValueError(f"cutoff_sigmas must be positive, got {self.cutoff_sigmas}")
        if self.ctf_initial_stage not in CTF_INITIAL_STAGES:
            raise ValueError(f"ctf_initial_stage must be one of {', '.join(CTF_INITIAL_STAGES)}, "
                             f"got {self.ctf_initial_stage!r}")


@dataclass(frozen=True)
class GaussianState:
    """means (K, 3) of the asymmetric unit in Å; size s in 1/Å²; scales lam_i (N,);
    noise_precisions beta_i (N,); rotations (N, 3, 3) RELION matrices; translations (N, 2) Å."""

    means: np.ndarray
    size: float
    scales: np.ndarray
    noise_precisions: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray


@dataclass(frozen=True)
class GaussianAbinitioResult(AbinitioResult):
    noise_model: str = "gaussian"
    # acceptance rates and step sizes of every sampler, per stage
    sampler_report: dict = field(default_factory=dict)
    scales: np.ndarray | None = None
    noise_precisions: np.ndarray | None = None


@dataclass(frozen=True)
class GaussianModel:
    """The images and the fixed parts of the model: prior precision r of the means, symmetry
    operators (G, 3, 3) (the state holds the asymmetric unit; its copies S_g mu_k each enter
    Eqn. 5.2), the k-sigma cut-off and the Gamma prior of each beta_i."""

    images: np.ndarray  # (N, n, n)
    pixel_size_in_angstroms: float
    mean_precision: float
    operators: np.ndarray
    cutoff_sigmas: float = 4.0
    a_beta: float = 1.0
    b_beta: float = 0.0
    # each image's CTF: its prediction is convolved with -CTF (particles bright, as RELION
    # extracts them) on a grid padded to twice the box, so that the convolution is linear
    ctf: CTFParameters | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", np.ascontiguousarray(self.images, dtype=np.float64))
        n = self.images.shape[-1]
        object.__setattr__(self, "origin", np.full(2, -(n // 2) * self.pixel_size_in_angstroms))
        transfer = None
        if self.ctf is not None:
            m = 2 * n
            transfer = -ctf_images(self.ctf, m, self.pixel_size_in_angstroms)[..., : m // 2 + 1]
        object.__setattr__(self, "transfer", transfer)

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def box(self) -> int:
        return self.images.shape[-1]

    def full_means(self, means: np.ndarray) -> np.ndarray:
        """(G K, 3) means S_g mu_k, g-major (as samplers.projected.expand_symmetry)."""
        return (means[None] @ self.operators.transpose(0, 2, 1)).reshape(-1, 3)

    def centres(self, means, rotations, translations) -> np.ndarray:
        """(N, G K, 2) projected centres Po R_i S_g mu_k + t_i."""
        rotated = self.full_means(means) @ rotations.transpose(0, 2, 1)
        return np.ascontiguousarray(rotated[..., :2] + translations[:, None, :])

    def energy_and_mean_gradient(self, state: GaussianState, means: np.ndarray) -> tuple[float, np.ndarray]:
        """E (Eqns. 5.15-5.17) at `means` (K, 3) with the rest of `state`, and dE/dmeans (K, 3)."""
        g = self.operators.shape[0]
        # r / G on each of the G copies is the prior r on the asymmetric unit
        options = dict(scale=state.scales, size=state.size, noise_precision=state.noise_precisions,
                       mean_precision=self.mean_precision / g, a_beta=self.a_beta, b_beta=self.b_beta,
                       cutoff_sigmas=self.cutoff_sigmas)
        if self.transfer is not None:
            energy, gradients = energy_and_gradients_with_ctf(
                self.images, self.pixel_size_in_angstroms, self.full_means(means), state.rotations,
                state.translations, transfer=self.transfer, **options)
        else:
            energy, gradients = energy_and_gradients_on_grid(
                self.images, self.origin, self.pixel_size_in_angstroms, self.full_means(means), state.rotations,
                state.translations, **options)
        pooled = np.einsum("gka,gab->kb", gradients.means.reshape(g, -1, 3), self.operators)
        return energy, pooled

    def energy(self, state: GaussianState) -> float:
        return self.energy_and_mean_gradient(state, state.means)[0]

    def sums_of_squares(self, means, rotations, translations, scales, size) -> np.ndarray:
        """(N,) sum_j (y_ij - yhat_ij)^2."""
        if self.transfer is not None:
            unit = self.unit_predictions(means, rotations, translations, size)
            residual = self.images - np.asarray(scales)[:, None, None] * unit
            return np.sum(residual.reshape(self.n_images, -1) ** 2, axis=1)
        return residual_sums_of_squares_kernel(self.images, self.centres(means, rotations, translations),
                                               np.asarray(scales, dtype=np.float64), float(size), self.origin,
                                               self.pixel_size_in_angstroms, float(self.cutoff_sigmas),
                                               np.empty_like(self.images))

    def unit_predictions(self, means, rotations, translations, size) -> np.ndarray:
        """(N, n, n) predictions with lam = 1: the residual of zero images at scale -1."""
        if self.transfer is not None:
            padded = padded_unit_predictions(self.pixel_size_in_angstroms, self.transfer.shape[-2],
                                             self.full_means(means), rotations, translations, size=size,
                                             cutoff_sigmas=self.cutoff_sigmas)
            return filter_and_crop(padded, self.transfer, self.box)
        out = np.empty_like(self.images)
        residual_sums_of_squares_kernel(np.zeros_like(self.images), self.centres(means, rotations, translations),
                                        -np.ones(self.n_images), float(size), self.origin,
                                        self.pixel_size_in_angstroms, float(self.cutoff_sigmas), out)
        return out

    def pose_energies(self, state: GaussianState, rotations, translations) -> np.ndarray:
        """(N,) E_i = beta_i / 2 sum_j (y_ij - yhat_ij)^2 (Eqns. 5.28, 5.45): the energy of each pose."""
        squares = self.sums_of_squares(state.means, rotations, translations, state.scales, state.size)
        return 0.5 * state.noise_precisions * squares


def default_mean_precision(images: np.ndarray, pixel_size_in_angstroms: float) -> float:
    """r = 2 / (mean square 2D distance from the image centre, weighted by the positive part of the
    images), the thesis' default (3.1.5) read on class averages of any sign."""
    n = images.shape[-1]
    coords = (np.arange(n) - n // 2) * pixel_size_in_angstroms
    r2 = coords[None, :] ** 2 + coords[:, None] ** 2
    weights = np.clip(images, 0.0, None).sum(0)
    if weights.sum() <= 0:
        raise ValueError("the images have no positive pixels: the particles must be brighter than the background")
    return 2.0 / max(float((weights * r2).sum() / weights.sum()), 1e-12)


# ---------------------------------------------------------------------------------------------
# Gibbs blocks


def _rotation_proposal(rng: np.random.Generator, rotations: np.ndarray, step_size: float) -> np.ndarray:
    """expm([w_i]_x) R_i for every image, w_i ~ N(0, step_size^2 I) (samplers.rotation_mh, batched)."""
    return Rotation.from_rotvec(step_size * rng.standard_normal((len(rotations), 3))).as_matrix() @ rotations


@dataclass
class _Tuning:
    """Step sizes and adaptation counters of every sampler in one chain (mutable, checkpointed)."""

    means_step: float = 0.1
    size_step: float = 0.05
    rotation_step: float = 0.02
    translation_step: float = 0.5
    iteration: int = 0
    acceptance: dict = field(default_factory=dict)

    def record(self, name: str, value: float) -> None:
        total, count = self.acceptance.get(name, (0.0, 0))
        self.acceptance[name] = (total + float(value), count + 1)

    def report(self) -> dict:
        return {"acceptance_rates": {k: t / max(c, 1) for k, (t, c) in self.acceptance.items()},
                "step_sizes": {"means": self.means_step, "log_size": self.size_step,
                               "rotations_in_radians": self.rotation_step,
                               "translations_in_angstroms": self.translation_step}}

    def to_arrays(self, prefix: str = "tuning_") -> dict:
        names = sorted(self.acceptance)
        return {f"{prefix}steps": np.array([self.means_step, self.size_step, self.rotation_step,
                                            self.translation_step, self.iteration]),
                f"{prefix}names": np.array(names or [""]),
                f"{prefix}acceptance": np.array([self.acceptance[n] for n in names] or [(0.0, 0)], dtype=float)}

    @classmethod
    def from_arrays(cls, d: dict, prefix: str = "tuning_") -> "_Tuning":
        steps = np.asarray(d[f"{prefix}steps"])
        acceptance = {str(n): (float(t), int(c)) for n, (t, c) in zip(d[f"{prefix}names"], d[f"{prefix}acceptance"])
                      if str(n)}
        return cls(float(steps[0]), float(steps[1]), float(steps[2]), float(steps[3]), int(steps[4]), acceptance)


def _integrated_size_energy(model: GaussianModel, state: GaussianState, size: float):
    """E~(s) of Eqns. 5.36/5.41 with each lam_i integrated out under its flat prior:
    sum_i [log(beta_i A_i) / 2 - beta_i B_i^2 / (2 A_i)], A_i = |ytilde_i|^2, B_i = y_i . ytilde_i;
    also returns the unit predictions ytilde (N, n, n)."""
    unit = model.unit_predictions(state.means, state.rotations, state.translations, size)
    flat = unit.reshape(model.n_images, -1)
    a = np.einsum("ij,ij->i", flat, flat)
    if np.any(a <= 0):
        return np.inf, unit
    b = np.einsum("ij,ij->i", model.images.reshape(model.n_images, -1), flat)
    beta = state.noise_precisions
    return float(np.sum(0.5 * np.log(beta * a) - 0.5 * beta * b**2 / a)), unit


def mixture_sweep(rng: np.random.Generator, model: GaussianModel, state: GaussianState, tuning: _Tuning, *,
                  n_leapfrog: int, adapt: bool, temperature: float = 1.0) -> tuple[GaussianState, dict]:
    """One sweep: HMC on the means, MH on log s with lam integrated out, exact lam_i, exact beta_i.
    `temperature` divides the energy (tempering); 1 is the posterior. The info gives the
    (untempered) energy of the incoming state and that after the HMC trajectory."""
    adapt_steps = tuning.iteration + 1 if adapt else 0
    hmc = HMC(energy_and_gradient=lambda q: _scaled(model.energy_and_mean_gradient(
        state, q.reshape(-1, 3)), temperature), n_leapfrog=n_leapfrog, adapt_steps=adapt_steps,
        target_acceptance=0.8, adaptation_rate=0.5)
    h = hmc.init(rng, state.means.ravel(), step_size=tuning.means_step)
    incoming_energy = h.energy * temperature  # the untempered energy of the incoming state
    h, info = hmc.step(rng, HMCState(h.position, h.energy, h.gradient, h.step_size, tuning.iteration))
    tuning.means_step = h.step_size
    tuning.record("means", info["acceptance"])
    state = replace(state, means=h.position.reshape(-1, 3))

    # s by MH on log s (flat prior on s: the Jacobian s'/s), lam_i integrated out (Eqn. 5.36)
    e_old, unit_old = _integrated_size_energy(model, state, state.size)
    proposed = state.size * math.exp(tuning.size_step * rng.standard_normal())
    e_new, unit_new = _integrated_size_energy(model, state, proposed)
    log_ratio = (e_old - e_new) / temperature + math.log(proposed / state.size)
    acceptance = math.exp(min(0.0, log_ratio)) if np.isfinite(log_ratio) else 0.0
    accepted = rng.random() < acceptance
    tuning.size_step = adapted_step_size(tuning.size_step, acceptance, tuning.iteration + 1, adapt_steps=adapt_steps,
                                         target=0.4, rate=0.05)
    tuning.record("size", acceptance)
    size, unit = (proposed, unit_new) if accepted else (state.size, unit_old)

    # lam_i | s (Eqns. 5.38-5.40) and beta_i (Eqns. 5.46-5.48), image by image; at temperature T
    # the conditionals of the tempered target are those of beta_i / T
    betas = state.noise_precisions
    scales = np.array([draw_weight(rng, y, u, b / temperature) for y, u, b in zip(model.images, unit, betas)])
    residual = model.images - scales[:, None, None] * unit
    if temperature == 1.0:
        betas = np.array([draw_noise_precision(rng, r, 0.0, a_beta=model.a_beta, b_beta=model.b_beta)
                          for r in residual])
    else:
        betas = _tempered_noise_precisions(rng, model, residual, temperature)
    tuning.iteration += 1
    state = replace(state, size=float(size), scales=scales, noise_precisions=betas)
    return state, {"energy": h.energy * temperature, "incoming_energy": incoming_energy}


def _scaled(value, temperature):
    energy, gradient = value
    return energy / temperature, gradient.ravel() / temperature


def _tempered_noise_precisions(rng, model, residual, temperature):
    """beta_i from p(beta_i | rest)^(1/T): Gamma((P/2 + a - 1) / T + 1, (|e_i|^2 / 2 + b) / T)."""
    n_values = residual[0].size
    shape = (0.5 * n_values + model.a_beta - 1.0) / temperature + 1.0
    rate = (0.5 * np.sum(residual.reshape(len(residual), -1) ** 2, axis=1) + model.b_beta) / temperature
    return rng.gamma(shape, 1.0 / rate)


def pose_moves(rng: np.random.Generator, model: GaussianModel, state: GaussianState, tuning: _Tuning, *,
               n_steps: int, translations: bool, adapt: bool, max_shift_in_angstroms: float,
               temperature: float = 1.0) -> GaussianState:
    """`n_steps` rounds of per-image MH on the rotations, then on the translations (within a disc
    of `max_shift_in_angstroms`: a flat prior on it)."""
    adapt_steps = tuning.iteration + n_steps if adapt else 0

    def run(name, energies, propose, position, step_size):
        sampler = BlockMH(energies=energies, propose=propose, adapt_steps=adapt_steps)
        s = sampler.init(rng, position, step_size=step_size)
        s = BlockMHState(s.position, s.energies, s.step_size, tuning.iteration)
        for _ in range(n_steps):
            s, info = sampler.step(rng, s)
            tuning.record(name, info["acceptance"])
        return s.position, s.step_size

    def rotation_energies(rotations):
        return model.pose_energies(state, rotations, state.translations) / temperature

    rotations, tuning.rotation_step = run("rotations", rotation_energies, _rotation_proposal, state.rotations,
                                          tuning.rotation_step)
    state = replace(state, rotations=rotations)
    if not translations:
        return state

    def translation_energies(t):
        e = model.pose_energies(state, state.rotations, t) / temperature
        return np.where(np.sum(t**2, axis=1) <= max_shift_in_angstroms**2, e, np.inf)

    shifts, tuning.translation_step = run("translations", translation_energies, gaussian_proposal,
                                          state.translations, tuning.translation_step)
    return replace(state, translations=shifts)


def rotation_table(model: GaussianModel, state: GaussianState, candidates: np.ndarray, chunk: int = 128) -> np.ndarray:
    """(N, M) log p(y_i | R_m, rest) with lam_i integrated out (Eqn. 5.41): beta_i B_im^2 / (2 A_im)
    - log(beta_i A_im) / 2 with A_im = |ytilde_im|^2, B_im = max(y_i . ytilde_im, 0) (a positive
    weight); each image at its current translation (the projections are made at zero shift
    and the images moved back by their translations to the nearest pixel). With a CTF, B_im is
    the projection against the image filtered back through its CTF on the padded grid, and A_im
    the power of the filtered projection by Parseval, the crop left out."""
    full = model.full_means(state.means)
    n = model.box
    pixel = model.pixel_size_in_angstroms
    shifts = np.rint(state.translations / pixel).astype(int)
    images = np.stack([np.roll(y, (-dy, -dx), axis=(0, 1)) for y, (dx, dy) in zip(model.images, shifts)])
    size = n
    if model.transfer is not None:
        size = model.transfer.shape[-2]
        start = size // 2 - n // 2
        padded = np.zeros((model.n_images, size, size))
        padded[:, start:start + n, start:start + n] = images
        images = filter_and_crop(padded, model.transfer, size)
        # |T_i(k)|^2 on the rfft2 half plane, each column counted as often as it stands in the full plane
        multiplicity = np.full(size // 2 + 1, 2.0)
        multiplicity[0] = 1.0
        if size % 2 == 0:
            multiplicity[-1] = 1.0
        power = (model.transfer**2 * multiplicity).reshape(model.n_images, -1) / size**2
    flat_images = images.reshape(model.n_images, -1)
    origin = np.full(3, -(size // 2) * pixel)
    origin[2] = 0.0
    table = np.empty((model.n_images, len(candidates)))
    beta = state.noise_precisions[:, None]
    for first in range(0, len(candidates), chunk):
        rotations = candidates[first:first + chunk]
        means = np.ascontiguousarray(full @ rotations.transpose(0, 2, 1))
        means[:, :, 2] = 0.0
        out = np.empty((len(rotations), size, size))
        projected_densities_kernel(means, np.ones(len(full)), float(state.size), origin, pixel,
                                   float(model.cutoff_sigmas), out)
        unit = out.reshape(len(rotations), -1)
        if model.transfer is None:
            a = np.einsum("mj,mj->m", unit, unit)[None, :]
        else:
            spectra = np.abs(np.fft.rfft2(out)) ** 2
            a = np.einsum("if,mf->im", power, spectra.reshape(len(rotations), -1))
        a = np.maximum(a, 1e-300)
        # einsum's own loop, not BLAS: a threaded BLAS spun 0.37 s per table on a loaded 2-core machine
        b = np.maximum(np.einsum("ij,mj->im", flat_images, unit), 0.0)
        table[:, first:first + len(rotations)] = 0.5 * beta * b**2 / a - 0.5 * np.log(beta * a)
    return table


def global_rotation_step(rng: np.random.Generator, model: GaussianModel, state: GaussianState, n_rotations: int,
                         temperature: float = 1.0) -> tuple[GaussianState, dict]:
    """Every image's rotation drawn from its marginal posterior over `n_rotations` fresh uniform
    rotations, its current one and the current one turned by 180 degrees about the image's x and
    y axes (the flipped view, whose projection is nearly the mirror image: a basin that local moves
    cannot reach) (discrete approximation, Eqns. 3.8-3.11 with the Gaussian likelihood):
    Gumbel-max on the table."""
    flips = [np.diag([1.0, -1.0, -1.0]) @ state.rotations, np.diag([-1.0, 1.0, -1.0]) @ state.rotations]
    candidates = np.concatenate([random_rotations(rng, n_rotations), state.rotations] + flips)
    table = rotation_table(model, state, candidates) / temperature
    choice = np.argmax(table + rng.gumbel(size=table.shape), axis=1)
    n = model.n_images
    info = {"kept_current": int(((choice >= n_rotations) & (choice < n_rotations + n)).sum()),
            "flipped": int((choice >= n_rotations + n).sum())}
    return replace(state, rotations=candidates[choice]), info


def local_rotation_search(rng: np.random.Generator, model: GaussianModel, state: GaussianState, n_candidates: int,
                          spread_in_degrees: float, temperature: float = 1.0) -> GaussianState:
    """Each rotation drawn from its conditional by sampling-importance-resampling with a local
    proposal (as the Poisson pipeline's `local_rotation_search`): the current rotation and
    `n_candidates` turns expm([w]_x) R_i, w ~ N(0, spread^2 I), weighted by likelihood over
    proposal density, one kept per image (Gumbel-max). It moves a rotation across the spacing of
    the global table in one step, where the random-walk moves creep."""
    spread = math.radians(spread_in_degrees)
    n = model.n_images
    log_weights = np.empty((n, n_candidates + 1))
    candidates = np.empty((n, n_candidates + 1, 3, 3))
    candidates[:, 0] = state.rotations
    log_weights[:, 0] = -model.pose_energies(state, state.rotations, state.translations) / temperature
    for c in range(1, n_candidates + 1):
        w = spread * rng.standard_normal((n, 3))
        candidates[:, c] = Rotation.from_rotvec(w).as_matrix() @ state.rotations
        log_weights[:, c] = -model.pose_energies(state, candidates[:, c], state.translations) / temperature
    # the proposal density of a candidate, N(w; 0, spread^2) (the current one: at w = 0)
    angles = np.degrees(np.arccos(np.clip((np.einsum("nij,ncij->nc", state.rotations, candidates) - 1) / 2, -1, 1)))
    log_weights += 0.5 * (np.radians(angles) / spread) ** 2
    choice = np.argmax(log_weights + rng.gumbel(size=log_weights.shape), axis=1)
    return replace(state, rotations=candidates[np.arange(n), choice])


# ---------------------------------------------------------------------------------------------
# stages


def _initial_state(rng: np.random.Generator, model: GaussianModel, n_components: int, sigma_in_angstroms: float,
                   rotations=None, means=None) -> GaussianState:
    n = model.n_images
    if means is None:
        means = rng.normal(scale=1.0 / math.sqrt(model.mean_precision), size=(n_components, 3))
    if rotations is None:
        rotations = random_rotations(rng, n)
    state = GaussianState(np.asarray(means, dtype=np.float64), 1.0 / sigma_in_angstroms**2, np.ones(n),
                          np.ones(n), np.asarray(rotations, dtype=np.float64), np.zeros((n, 2)))
    return _draw_scales_and_noise(rng, model, state)


def _draw_scales_and_noise(rng, model: GaussianModel, state: GaussianState) -> GaussianState:
    """lam_i at its conditional mean, then beta_i exactly, so that a chain starts consistent."""
    unit = model.unit_predictions(state.means, state.rotations, state.translations, state.size)
    flat = unit.reshape(model.n_images, -1)
    a = np.maximum(np.einsum("ij,ij->i", flat, flat), 1e-300)
    scales = np.maximum(np.einsum("ij,ij->i", model.images.reshape(model.n_images, -1), flat) / a, 1e-6)
    residual = model.images - scales[:, None, None] * unit
    betas = np.array([draw_noise_precision(rng, r, 0.0, a_beta=model.a_beta, b_beta=model.b_beta) for r in residual])
    return replace(state, scales=scales, noise_precisions=betas)


def crop_images(images: np.ndarray, pixel_size_in_angstroms: float, box: int) -> tuple[np.ndarray, float]:
    """Fourier-crop to `box` (not above the input size); the new pixel size."""
    n = images.shape[-1]
    box = min(int(box), n)
    small = fourier_crop(images, box) if box < n else np.asarray(images, dtype=np.float64)
    return np.asarray(small, dtype=np.float64), pixel_size_in_angstroms * n / box


def _model(images, pixel, settings: GaussianAbinitioSettings, box: int, ctf: CTFParameters | None) -> GaussianModel:
    """The model of the images Fourier-cropped to `box` (the CTF evaluated at the new pixel size)."""
    small, small_pixel = crop_images(images, pixel, box)
    return GaussianModel(small, small_pixel, default_mean_precision(small, small_pixel),
                         symmetry_operators(settings.symmetry), settings.cutoff_sigmas, settings.a_beta,
                         settings.b_beta, ctf)


def annealing_temperature(initial: float, cycle: int, n_cycles: int) -> float:
    """initial^(1 - cycle / (n_cycles - 1)): from `initial` at the first cycle to 1 at the last."""
    return float(initial ** (1.0 - cycle / max(n_cycles - 1, 1)))


@dataclass(frozen=True)
class _Cycle:
    """The initial stage's state for the driver: the model state, the samplers' tuning (updated
    in place by the sweeps), the cycles done and the last cycle's log-posterior per sweep."""

    state: GaussianState
    tuning: _Tuning
    cycle: int
    trace: np.ndarray


@dataclass(frozen=True)
class _InitialCycle:
    """One annealed cycle of the initial stage as one step of the driver: mixture sweeps, the
    global rotation step, the local searches and the pose moves, all at the cycle's temperature
    (falling from `initial_temperature` to 1 over `n_cycles`)."""

    model: GaussianModel
    settings: GaussianAbinitioSettings
    max_shift_in_angstroms: float

    def step(self, rng, cycle: _Cycle) -> tuple[_Cycle, dict]:
        settings, model, state, tuning = self.settings, self.model, cycle.state, cycle.tuning
        temperature = annealing_temperature(settings.initial_temperature, cycle.cycle, settings.n_cycles)
        trace, incoming = [], None
        for _ in range(settings.mixture_steps):
            state, info = mixture_sweep(rng, model, state, tuning, n_leapfrog=settings.n_leapfrog, adapt=True,
                                        temperature=temperature)
            incoming = info["incoming_energy"] if incoming is None else incoming
            trace.append(-info["energy"])
        if incoming is None:
            incoming = model.energy(state)
        state, _ = global_rotation_step(rng, model, state, settings.n_rotations, temperature=temperature)
        for spread in settings.local_spreads_in_degrees:
            state = local_rotation_search(rng, model, state, settings.local_candidates, spread, temperature)
        translations = settings.refine_translations and self.max_shift_in_angstroms > 0
        state = pose_moves(rng, model, state, tuning, n_steps=settings.pose_steps, translations=translations,
                           adapt=True, max_shift_in_angstroms=self.max_shift_in_angstroms, temperature=temperature)
        return (_Cycle(state, tuning, cycle.cycle + 1, np.asarray(trace)),
                {"log_posterior": -incoming, "temperature": temperature})

    def log_posterior(self, cycle: _Cycle) -> float:
        return -self.model.energy(cycle.state)


def run_restart(index: int, seed_sequence: np.random.SeedSequence, model: GaussianModel,
                settings: GaussianAbinitioSettings, max_shift_in_angstroms: float,
                progress: bool = False) -> tuple[RestartResult, GaussianState, dict]:
    """One run of the initial stage (`n_cycles` cycles through the driver); returns the result,
    its final state and its sampler report."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed_sequence)
    k = asymmetric_unit_components(settings.n_components_initial, settings.symmetry)
    # components start at 0.4 of the particle's per-axis spread (1 / sqrt(r))
    sigma = max(0.4 / math.sqrt(model.mean_precision), 2.0 * model.pixel_size_in_angstroms)
    state = _initial_state(rng, model, k, sigma)
    traces = []
    chain = run_chain(_InitialCycle(model, settings, max_shift_in_angstroms), rng,
                      _Cycle(state, _Tuning(), 0, np.zeros(0)), settings.n_cycles,
                      on_sample=lambda i, cycle: traces.append(cycle.trace), progress=progress,
                      description=f"restart {index + 1}")
    state = chain.final_state.state
    log_posterior = float(chain.traces["log_posterior"][-1])
    mixture = GaussianMixture(state.means, np.full(k, 1.0 / k), state.size)
    result = RestartResult(index, log_posterior, mixture, state.rotations,
                           np.concatenate(traces + [[log_posterior]]), time.perf_counter() - start,
                           chain.stop.as_dict())
    return result, state, chain.final_state.tuning.report()


def _state_arrays(prefix: str, state: GaussianState) -> dict:
    return {f"{prefix}means": state.means, f"{prefix}size": np.array(state.size), f"{prefix}scales": state.scales,
            f"{prefix}noise_precisions": state.noise_precisions, f"{prefix}rotations": state.rotations,
            f"{prefix}translations": state.translations}


def _state_from(prefix: str, d: dict) -> GaussianState:
    return GaussianState(np.asarray(d[f"{prefix}means"]), float(d[f"{prefix}size"]), np.asarray(d[f"{prefix}scales"]),
                         np.asarray(d[f"{prefix}noise_precisions"]), np.asarray(d[f"{prefix}rotations"]),
                         np.asarray(d[f"{prefix}translations"]))


def default_max_shift_in_angstroms(box: int, pixel_size_in_angstroms: float) -> float:
    """10% of the box, at least 2 pixels (as the Poisson pipeline)."""
    return max(0.1 * box, 2.0) * pixel_size_in_angstroms


def run_gaussian_abinitio(images: np.ndarray, pixel_size_in_angstroms: float, settings: GaussianAbinitioSettings,
                          seed: int, *, checkpoint=None, progress: bool = False,
                          threads: int | None = None, ctf: CTFParameters | None = None) -> GaussianAbinitioResult:
    """The whole Gaussian-noise ab initio pipeline on square images `(N, n, n)` of any sign.

    checkpoint : optional object with `load(name) -> dict | None` and `save(name, dict)`.
    threads : numba threads of the kernels (over images) during the run (default: numba's).
    ctf : each image's CTF (`cryogmm.io.star.ctf_parameters`): the predictions are convolved with
        -CTF (particles bright on a zero background, as RELION extracts them), so CTF-affected
        class averages go in as they are.
    The restarts run one after another.
    """
    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        return _run(images, pixel_size_in_angstroms, settings, seed, checkpoint, progress, ctf)
    finally:
        numba.set_num_threads(previous)


def _run(images, pixel_size_in_angstroms, settings, seed, checkpoint, progress, ctf) -> GaussianAbinitioResult:
    images = np.asarray(images, dtype=np.float64)
    pixel = float(pixel_size_in_angstroms)
    timings: dict = {}
    report: dict = {"restarts": {}}
    t0 = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn(settings.n_restarts + 1)
    max_shift = settings.max_shift_in_angstroms
    if max_shift is None:
        max_shift = default_max_shift_in_angstroms(images.shape[-1], pixel)
    if not settings.refine_translations:
        max_shift = 0.0
    initial_images, initial_ctf = images, ctf
    if ctf is not None and settings.ctf_initial_stage == "deconvolved":
        t_deconvolve = time.perf_counter()
        deconvolved = deconvolve_class_averages(images, ctf, pixel, polarity=-1)
        initial_images, initial_ctf = deconvolved.images, None
        timings["deconvolution_seconds"] = time.perf_counter() - t_deconvolve
        report["initial_stage_images"] = deconvolved.notes
        logger.info("initial stage on the images deconvolved of their CTFs (%s); the refinement keeps the CTF in "
                    "the model", "; ".join(deconvolved.notes[1:]))
    model = _model(initial_images, pixel, settings, settings.initial_box, initial_ctf)
    logger.info("noise model gaussian: initial stage: %d restarts, K = %d, %d images of %d px at %.3g Å/px, "
                "N_R = %d, symmetry %s", settings.n_restarts, settings.n_components_initial, model.n_images,
                model.box, model.pixel_size_in_angstroms, settings.n_rotations, settings.symmetry)
    restarts: dict[int, RestartResult] = {}
    states: dict[int, GaussianState] = {}
    before = 0.0
    for i in range(settings.n_restarts):
        saved = checkpoint.load(f"restart_{i}") if checkpoint is not None else None
        if saved is not None:
            restarts[i] = RestartResult(i, float(saved["log_posterior"]),
                                        GaussianMixture(saved["means"], np.full(len(saved["means"]), 1.0 / len(saved["means"])),
                                                        float(saved["size"])),
                                        np.asarray(saved["rotations"]), np.asarray(saved["trace"]), float(saved["seconds"]))
            states[i] = _state_from("", saved)
            report["restarts"][str(i + 1)] = {"resumed": True}
            before = max(before, float(saved["stage_elapsed_seconds"]))
            timings["resumed"] = True
            continue
        result, state, tuning = run_restart(i, seeds[i], model, settings, max_shift, progress)
        restarts[i], states[i] = result, state
        report["restarts"][str(i + 1)] = tuning
        logger.info("restart %d: log-posterior %.6g (%.1f s); acceptance %s; step sizes %s", i + 1,
                    result.log_posterior, result.seconds, _rounded(tuning["acceptance_rates"]),
                    _rounded(tuning["step_sizes"]))
        if checkpoint is not None:
            checkpoint.save(f"restart_{i}", {
                **_state_arrays("", state), "log_posterior": np.array(result.log_posterior), "trace": result.trace,
                "seconds": np.array(result.seconds),
                "stage_elapsed_seconds": np.array(before + time.perf_counter() - t0)})
    best = max(restarts.values(), key=lambda r: r.log_posterior)
    timings["initial_stage_seconds"] = before + time.perf_counter() - t0 if len(report["restarts"]) else before
    logger.info("best restart: %d (log-posterior %.6g)", best.index + 1, best.log_posterior)

    refined = _refine(images, pixel, settings, seeds[-1], states[best.index], max_shift, checkpoint, progress, timings,
                      ctf)
    report["refinement"] = refined.pop("report")
    timings["total_seconds"] = timings["initial_stage_seconds"] + timings["refinement_seconds"]
    return GaussianAbinitioResult(settings=settings, restarts=[restarts[i] for i in range(settings.n_restarts)],
                                  best_restart=best.index, timings=timings, sampler_report=report, **refined)


def _rounded(d: dict) -> dict:
    return {k: float(f"{v:.3g}") for k, v in d.items()}


@dataclass(frozen=True)
class _RefineChain:
    """The refinement's state for the driver: the replicas (replica 0 at T = 1, the posterior),
    each replica's sampler tuning (updated in place by its sweeps) and the sweeps done."""

    replicas: ReplicaState
    tunings: tuple
    step: int


@dataclass(frozen=True)
class _Refinement:
    """One refinement sweep of every replica, then the replica exchange, as one step of the
    driver: mixture sweeps with fixed poses for the first `warm` steps, one global rotation step at
    step `warm` (the poses came from coarse images), then mixture sweeps with pose moves; step
    sizes adapt until step `adapt_until` and are frozen after."""

    model: GaussianModel
    settings: GaussianAbinitioSettings
    max_shift_in_angstroms: float
    warm: int
    adapt_until: int

    def step(self, rng, chain: _RefineChain) -> tuple[_RefineChain, dict]:
        model, settings, ladder = self.model, self.settings, self.settings.temperatures
        incoming = {}

        def sweep(rng, state, temperature):
            tuning = chain.tunings[ladder.index(temperature)]
            adapt = chain.step < self.adapt_until
            if chain.step == self.warm:
                if temperature == 1.0:
                    incoming["energy"] = model.energy(state)
                state, info = global_rotation_step(rng, model, state, settings.n_rotations, temperature)
                if temperature == 1.0:
                    logger.info("refinement: global rotation step kept %d of %d rotations, flipped %d",
                                info["kept_current"], model.n_images, info["flipped"])
            state, info = mixture_sweep(rng, model, state, tuning, n_leapfrog=settings.n_leapfrog, adapt=adapt,
                                        temperature=temperature)
            if temperature == 1.0:
                incoming.setdefault("energy", info["incoming_energy"])
            if chain.step >= self.warm:
                state = pose_moves(rng, model, state, tuning, n_steps=settings.refine_pose_steps,
                                   translations=self.max_shift_in_angstroms > 0, adapt=adapt,
                                   max_shift_in_angstroms=self.max_shift_in_angstroms, temperature=temperature)
            return state

        exchange = ReplicaExchange(sweep=sweep, energy=model.energy, temperatures=ladder)
        replicas, info = exchange.step(rng, chain.replicas)
        old, new = chain.replicas.replicas[0], replicas.replicas[0]
        info.update(log_posterior=-incoming["energy"], sigma_in_angstroms=1.0 / math.sqrt(old.size),
                    rotation_change_in_degrees=float(np.median(rotation_angle_in_degrees(old.rotations,
                                                                                          new.rotations))),
                    shift_change_in_angstroms=float(np.median(np.linalg.norm(new.translations - old.translations,
                                                                             axis=-1))))
        return _RefineChain(replicas, chain.tunings, chain.step + 1), info

    def log_posterior(self, chain: _RefineChain) -> float:
        return -self.model.energy(chain.replicas.replicas[0])

    def final_info(self, chain: _RefineChain) -> dict:
        state = chain.replicas.replicas[0]
        return {"log_posterior": -self.model.energy(state), "sigma_in_angstroms": 1.0 / math.sqrt(state.size)}


def _chain_arrays(chain: _RefineChain) -> dict:
    r = chain.replicas
    return {"step": np.array(chain.step), "replica_energies": r.energies, "swaps_attempted": r.attempted,
            "swaps_accepted": r.accepted, "exchange_iteration": np.array(r.iteration),
            **{k: v for j, s in enumerate(r.replicas) for k, v in _state_arrays(f"replica{j}_", s).items()},
            **{k: v for j, t in enumerate(chain.tunings) for k, v in t.to_arrays(f"tuning{j}_").items()}}


def _chain_from(d: dict) -> _RefineChain:
    n = len(np.asarray(d["replica_energies"]))
    replicas = ReplicaState(tuple(_state_from(f"replica{j}_", d) for j in range(n)), np.asarray(d["replica_energies"]),
                            np.asarray(d["swaps_attempted"]), np.asarray(d["swaps_accepted"]),
                            int(d["exchange_iteration"]))
    return _RefineChain(replicas, tuple(_Tuning.from_arrays(d, f"tuning{j}_") for j in range(n)), int(d["step"]))


def _refine(images, pixel, settings: GaussianAbinitioSettings, seed_sequence, start: GaussianState,
            max_shift: float, checkpoint, progress: bool, timings: dict, ctf: CTFParameters | None = None) -> dict:
    """The refinement stage as one chain of the driver (`samplers.driver.run_chain`): its
    `refine_mixture_steps` warm-up sweeps and `refine_steps` sweeps, every `refine_thin`-th state
    after the burn-in averaged into the posterior mean, the best state tracked from the first pose
    move, checkpoints every `checkpoint_every` sweeps. Returns the fields of
    GaussianAbinitioResult it owns; sets timings["refinement_seconds"] and, for a chain resumed
    from a checkpoint, timings["resumed"]."""
    model = _model(images, pixel, settings, images.shape[-1], ctf)
    g = model.operators.shape[0]
    k = asymmetric_unit_components(settings.n_components, settings.symmetry)
    n_box = images.shape[-1]
    grid = Grid.centered((n_box,) * 3, pixel)
    warm = settings.refine_mixture_steps
    ladder = settings.temperatures
    rng = np.random.default_rng(seed_sequence)
    # K components drawn from the initial stage's density; sigma shrinks as K^(-1/3). (On a
    # resume the driver replaces this state by the checkpoint's, generator included.)
    k0 = len(start.means)
    sigma0 = 1.0 / math.sqrt(start.size)
    means = start.means[rng.integers(k0, size=k)] + sigma0 * rng.standard_normal((k, 3))
    sigma = sigma0 * (k0 / k) ** (1.0 / 3.0)
    state = replace(_initial_state(rng, model, k, sigma, rotations=start.rotations, means=means),
                    translations=start.translations.copy())
    state = _draw_scales_and_noise(rng, model, state)
    tunings = tuple(_Tuning(rotation_step=0.01, translation_step=0.25 * pixel) for _ in ladder)
    logger.info("refinement: K = %d, %d images of %d px, translations %s; %d warm-up sweeps, %d sweeps (burn-in %d)",
                settings.n_components, model.n_images, model.box,
                f"within {max_shift:.3g} Å" if max_shift > 0 else "fixed", warm, settings.refine_steps,
                settings.refine_burn_in)
    sampler = _Refinement(model, settings, max_shift, warm, warm + settings.refine_burn_in)
    # the replicas' starting energies (init does not sweep; the sweeps live in _Refinement.step)
    exchange = ReplicaExchange(sweep=lambda rng, s, t: s, energy=model.energy, temperatures=ladder)
    replicas = (exchange.init(rng, [state] * len(ladder)) if len(ladder) > 1
                else ReplicaState((state,), np.zeros(1), np.zeros(0), np.zeros(0)))
    store = None if checkpoint is None else ChainCheckpoint(checkpoint, "refinement", settings.checkpoint_every,
                                                            _chain_arrays, _chain_from)
    chain = run_chain(sampler, rng, _RefineChain(replicas, tunings, 0), warm + settings.refine_steps,
                      burn_in=warm + settings.refine_burn_in, thin=settings.refine_thin,
                      mean_of=lambda c: evaluate(_full_mixture(model, c.replicas.replicas[0]), grid),
                      best_from=warm + 1, final_info=sampler.final_info, progress=progress,
                      description="refinement", checkpoint=store)
    timings["refinement_seconds"] = chain.seconds
    if chain.resumed:
        timings["resumed"] = True
    final = chain.final_state
    state = final.replicas.replicas[0]
    best_state = chain.best_state.replicas.replicas[0] if chain.best_state is not None else state
    mean = chain.posterior_mean if chain.posterior_mean is not None else evaluate(_full_mixture(model, state), grid)
    report = final.tunings[0].report()
    logger.info("refinement: acceptance %s; step sizes %s", _rounded(report["acceptance_rates"]),
                _rounded(report["step_sizes"]))
    if len(ladder) > 1:
        report["temperatures"] = list(ladder)
        report["swap_rates"] = [float(r) for r in final.replicas.swap_rates()]
        report["hot_replicas"] = [final.tunings[j].report() for j in range(1, len(ladder))]
        logger.info("replica exchange over temperatures %s: swap rates between neighbours %s", list(ladder),
                    [round(r, 3) for r in report["swap_rates"]])
    traces = chain.traces
    mixture = GaussianMixture(best_state.means, np.full(k, 1.0 / k), best_state.size)
    return dict(mixture=mixture, full_mixture=_full_mixture(model, best_state), rotations=state.rotations,
                translations_in_angstroms=state.translations, posterior_mean=mean,
                n_samples=max(chain.n_averaged, 1), refine_trace=traces["log_posterior"],
                sigma_trace=traces["sigma_in_angstroms"],
                rotation_change_trace=traces["rotation_change_in_degrees"][:-1],
                shift_change_trace=traces["shift_change_in_angstroms"][:-1],
                log_posterior=float(traces["log_posterior"][-1]), sampling_start=warm + settings.refine_burn_in,
                stopping={"refinement": chain.stop.as_dict()},
                report=report | {"frozen_after_sweep": warm + settings.refine_burn_in, "n_images": model.n_images,
                                 "groups": g})


def _full_mixture(model: GaussianModel, state: GaussianState) -> GaussianMixture:
    full = model.full_means(state.means)
    return GaussianMixture(full, np.full(len(full), 1.0 / len(full)), state.size)
