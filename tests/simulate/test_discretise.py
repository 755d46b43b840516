"""Counts from real values (Eqn. 2.52)."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.simulate import discretise


def test_counts_follow_eqn_2_52():
    values = np.array([0.0, 1.0, 2.0, 7.0])
    counts = discretise(values, 100)
    assert counts.dtype == np.int32
    np.testing.assert_array_equal(counts, [0, 10, 20, 70])


def test_counts_sum_to_about_n0():
    values = np.random.default_rng(0).gamma(2.0, size=(30, 40))
    for n0 in (1e3, 1e5):
        counts = discretise(values, n0)
        assert counts.shape == values.shape
        assert abs(counts.sum() - n0) <= 0.5 * values.size  # each pixel rounds by at most 1/2
    assert counts.sum() == pytest.approx(1e5, rel=0.01)  # many counts per pixel: close to N0


def test_per_image_scales_each_image_separately():
    rng = np.random.default_rng(1)
    stack = rng.gamma(2.0, size=(3, 16, 16)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    counts = discretise(stack, 5000, per_image=True)
    np.testing.assert_allclose(counts.sum(axis=(1, 2)), 5000, rtol=0.02)
    for i in range(3):
        np.testing.assert_array_equal(counts[i], discretise(stack[i], 5000))
    # without per_image the brightest image takes most counts
    assert discretise(stack, 5000).sum(axis=(1, 2)).argmax() == 2


@pytest.mark.parametrize("values, match", [
    (np.array([1.0, -0.5]), "negative"),
    (np.array([1.0, np.nan]), "NaN"),
    (np.array([1.0, np.inf]), "NaN or inf"),
    (np.zeros(4), "all zero"),
])
def test_bad_values_are_refused(values, match):
    with pytest.raises(InputError, match=match):
        discretise(values, 100)


def test_an_empty_image_in_a_stack_is_refused():
    stack = np.ones((2, 4, 4))
    stack[1] = 0
    with pytest.raises(InputError, match="all zero"):
        discretise(stack, 100, per_image=True)
    with pytest.raises(InputError):
        discretise(stack, -5)
