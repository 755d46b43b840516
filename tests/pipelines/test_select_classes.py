"""Class selection rules: parsing, thresholds relative to the classification, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from cryogmm.errors import InputError
from cryogmm.pipelines.select_classes import DEFAULT_RULES, parse_rules, require_classes, select_classes


def test_default_rules_drop_empty_small_and_blurry_classes():
    sizes = np.array([400, 300, 0, 20, 280])  # mean 200: class 4 (20 < 40) is small, class 3 empty
    resolution = np.array([12.0, 14.0, np.inf, 13.0, 30.0])  # class 5 worse than 2 x 12 Å
    selection = select_classes(sizes, resolution, parse_rules("default"))
    assert selection.kept.tolist() == [True, True, False, False, False]
    assert selection.kept_class_numbers == [1, 2]
    assert selection.thresholds == {"size>=1": 1.0, "size>=0.2xmean": 40.0, "resolution<=2xbest": 24.0}
    assert selection.reasons[2] == ("size>=1", "size>=0.2xmean", "resolution<=2xbest")
    assert selection.reasons[3] == ("size>=0.2xmean",) and selection.reasons[4] == ("resolution<=2xbest",)
    record = selection.as_dict(sizes, resolution)
    assert record["n_kept_particles"] == 700 and record["classes"][2]["resolution_in_angstroms"] is None
    assert [str(r) for r in parse_rules("default")] == DEFAULT_RULES.split(",")


def test_absolute_fraction_and_rank_rules():
    sizes = np.array([10, 50, 30, 5, 5])
    resolution = np.array([20.0, 10.0, 15.0, 9.0, 40.0])
    assert select_classes(sizes, resolution, parse_rules("rank<=2")).kept_class_numbers == [2, 3]
    assert select_classes(sizes, resolution, parse_rules("fraction>=0.1")).kept_class_numbers == [1, 2, 3]
    assert select_classes(sizes, resolution, parse_rules("resolution<=15, size>5")).kept_class_numbers == [2, 3]
    assert select_classes(sizes, resolution, parse_rules("fraction>=0.5xmean")).kept_class_numbers == [1, 2, 3]
    assert select_classes(sizes, resolution, parse_rules("none")).kept.all()


def test_no_class_passing_is_reported_with_the_fix():
    selection = select_classes(np.array([3, 4]), np.array([30.0, np.inf]), parse_rules("size>=10"))
    assert selection.empty
    with pytest.raises(InputError, match=r"--select size>=10: no class passes .* --select none"):
        require_classes(selection, [3, 4], [30.0, np.inf])


@pytest.mark.parametrize("text, message", [
    ("size=>3", "not a rule"), ("colour>=3", "unknown quantity 'colour'"), ("resolution<=2xmean", "takes xbest"),
    ("rank<=2xmean", "takes no multiple"), ("fraction>=2", "between 0 and 1"), ("size>=-1", "non-negative number"),
    (" , ", "no rule given"),
])
def test_bad_rules_are_refused_with_the_option_named(text, message):
    with pytest.raises(InputError, match="--select") as err:
        parse_rules(text)
    assert message in str(err.value)
