"""Exact Gibbs draws of the Gaussian-noise model (thesis chapter 5).

The weight lam enters the prediction linearly, yhat = lam * ytilde, so under its flat prior
(Eqn. 5.9) its conditional is Gaussian (Eqns. 5.38-5.40); the noise precision beta has a Gamma
conditional (Eqns. 5.46-5.48). The thesis' text prints the shape as PN + a_beta; the energy
(Eqn. 5.16, -PN/2 log beta from P N Gaussian factors) gives PN/2 + a_beta, used here.
"""

from __future__ import annotations

import numpy as np


def weight_conditional(images, unit_predictions, noise_precision):
    """Mean and precision of q(lam | s) (Eqns. 5.39-5.40); arrays of any matching shape."""
    yy = float(np.sum(unit_predictions**2))
    if yy <= 0:
        raise ValueError("the prediction is zero on every pixel: the weight is undetermined; "
                         "put the components inside the images or widen them")
    return float(np.sum(images * unit_predictions)) / yy, noise_precision * yy


def draw_weight(rng: np.random.Generator, images, unit_predictions, noise_precision) -> float:
    """One draw of lam from N(mu_lam, 1/s_lam) (Eqn. 5.38)."""
    mean, precision = weight_conditional(images, unit_predictions, noise_precision)
    return float(mean + rng.standard_normal() / np.sqrt(precision))


def noise_precision_conditional(images, predictions, *, a_beta=1.0, b_beta=0.0):
    """Shape and rate of the Gamma conditional of beta (Eqns. 5.46-5.48)."""
    residual = np.asarray(images) - np.asarray(predictions)
    return 0.5 * residual.size + a_beta, 0.5 * float(np.sum(residual**2)) + b_beta


def draw_noise_precision(rng: np.random.Generator, images, predictions, *, a_beta=1.0, b_beta=0.0) -> float:
    """One draw of beta from its Gamma conditional (Eqn. 5.46)."""
    shape, rate = noise_precision_conditional(images, predictions, a_beta=a_beta, b_beta=b_beta)
    return float(rng.gamma(shape, 1.0 / rate))
