"""Chain diagnostics."""

from __future__ import annotations

import numpy as np


def effective_sample_size(chain) -> float:
    """ESS of a 1D chain by Geyer's initial positive sequence of autocorrelation pairs."""
    x = np.asarray(chain, dtype=float) - np.mean(chain)
    n = x.size
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n] / (n * np.var(x))
    pairs = acf[: n - n % 2].reshape(-1, 2).sum(axis=1)
    first_negative = np.argmax(pairs < 0) if np.any(pairs < 0) else pairs.size
    tau = -1.0 + 2.0 * np.sum(pairs[:first_negative])
    return float(n / max(tau, 1.0 / n))
