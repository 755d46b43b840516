"""Real-valued images and maps to counts (thesis section 2.3, Eqn. 2.52).

    y_j = [ lambda_j / sum_l lambda_l * N0 ]

with [x] the nearest integer (halves to even), so that the counts sum to about N0.
"""

from __future__ import annotations

import numpy as np

from cryogmm.errors import InputError

_MAX_COUNTS = np.iinfo(np.int32).max


def discretise(values: np.ndarray, n_counts: float, *, per_image: bool = False) -> np.ndarray:
    """Scale non-negative `values` to sum to `n_counts` and round to integers (Eqn. 2.52).

    Parameters
    ----------
    values : array
        A map `[z, y, x]`, an image `[y, x]` or, with `per_image`, a stack `[n, y, x]`;
        non-negative and finite.
    n_counts : float
        N0, the desired number of counts (per image with `per_image`).
    per_image : bool
        Scale each `values[i]` separately so that every image has about N0 counts.

    Returns
    -------
    int32 array of the shape of `values`.
    """
    values = np.asarray(values, dtype=np.float64)
    n_counts = float(n_counts)
    if not np.isfinite(n_counts) or n_counts <= 0 or n_counts > _MAX_COUNTS:
        raise InputError(f"number of counts must be positive and below {_MAX_COUNTS}, got {n_counts}")
    if values.size == 0:
        raise InputError("cannot discretise an empty array")
    if not np.all(np.isfinite(values)):
        raise InputError("values contain NaN or inf; check the input map or images")
    if values.min() < 0:
        raise InputError(
            f"values contain negative numbers (min {values.min():.3g}); discretise noise-free "
            "densities, or threshold them first (e.g. set values below a contour level to 0)")
    if per_image:
        if values.ndim < 2:
            raise InputError(f"per_image needs a stack of images, got shape {values.shape}")
        totals = values.reshape(values.shape[0], -1).sum(axis=1)
        totals = totals.reshape((-1,) + (1,) * (values.ndim - 1))
    else:
        totals = values.sum()
    if np.any(totals <= 0):
        which = "an image is" if per_image else "values are"
        raise InputError(f"{which} all zero, so there is nothing to discretise; check the input")
    return np.rint(values / totals * n_counts).astype(np.int32)  # Eqn. 2.52
