"""Class selection after 2D classification: keep the classes worth building a model from.

A user looking at a class gallery drops the empty classes, the small ones and the blurry ones
(junk, ice, overlapping particles). `select_classes` does the same by rules, each of the form
`QUANTITY OP VALUE` and all of which a class must meet:

- `size` : particles in the class (its MAP members);
- `fraction` : its share of all particles (0-1);
- `resolution` : its estimated resolution in Å (where the class's spectral SNR falls below 1;
  a class that never reaches SSNR 1 has an infinite resolution and fails every `resolution<=` rule);
- `rank` : its place by size (1 = largest), e.g. `rank<=10` keeps the ten largest.

OP is one of `>=`, `<=`, `>`, `<`. VALUE is a number, or a number times the mean class size
(`size>=0.2xmean`) or times the best (finest) class resolution (`resolution<=2xbest`).
The default, `DEFAULT_RULES`, drops empty classes, classes with less than a fifth of the mean class
size and classes whose resolution is worse than twice the best one's.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np

from cryogmm.errors import InputError

DEFAULT_RULES = "size>=1,size>=0.2xmean,resolution<=2xbest"

QUANTITIES = ("size", "fraction", "resolution", "rank")
REFERENCES = {"size": ("mean",), "fraction": ("mean",), "resolution": ("best",), "rank": ()}
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(r"^\s*([a-z]+)\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*(?:x\s*([a-z]+))?\s*$")


@dataclass(frozen=True)
class SelectionRule:
    """`quantity op value` or, with `reference` ("mean" or "best"), `quantity op value x reference`."""

    quantity: str
    op: str
    value: float
    reference: str | None = None

    def __str__(self) -> str:
        return f"{self.quantity}{self.op}{self.value:g}" + (f"x{self.reference}" if self.reference else "")


@dataclass(frozen=True, eq=False)
class ClassSelection:
    """Which classes pass (`kept`, (K,) bool) and, for each class, the rules it failed (`reasons`)."""

    rules: tuple[SelectionRule, ...]
    kept: np.ndarray
    reasons: tuple[tuple[str, ...], ...]
    thresholds: dict  # str(rule) -> the absolute threshold it used

    @property
    def empty(self) -> bool:
        return not self.kept.any()

    @property
    def kept_class_numbers(self) -> list[int]:
        return [int(i) + 1 for i in np.flatnonzero(self.kept)]

    def as_dict(self, sizes, resolution_in_angstroms) -> dict:
        """The record for summary.json: the rules, their thresholds and every class's verdict."""
        classes = []
        for c in range(self.kept.size):
            res = float(resolution_in_angstroms[c])
            classes.append({"class": c + 1, "size": int(sizes[c]),
                            "resolution_in_angstroms": res if np.isfinite(res) else None,
                            "kept": bool(self.kept[c]), "failed_rules": list(self.reasons[c])})
        return {"rules": [str(r) for r in self.rules], "thresholds": self.thresholds,
                "kept_classes": self.kept_class_numbers, "n_kept_classes": int(self.kept.sum()),
                "n_kept_particles": int(np.asarray(sizes)[self.kept].sum()), "classes": classes}


def parse_rules(text: str, option: str = "--select") -> tuple[SelectionRule, ...]:
    """`"size>=20, resolution<=2xbest"` -> rules; `"none"` -> no rule (every class kept);
    `"default"` -> `DEFAULT_RULES`. Raises InputError naming `option` on anything else."""
    text = text.strip()
    if text.lower() == "none":
        return ()
    if text.lower() in ("default", "auto"):
        text = DEFAULT_RULES
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RULE.match(part.lower())
        hint = (f"write rules as QUANTITY OP VALUE separated by commas, e.g. '{DEFAULT_RULES}' "
                f"(quantities: {', '.join(QUANTITIES)}; or 'none')")
        if match is None:
            raise InputError(f"{option} {part!r}: not a rule; {hint}")
        quantity, op, value, reference = match.groups()
        if quantity not in QUANTITIES:
            raise InputError(f"{option} {part!r}: unknown quantity {quantity!r}; {hint}")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"{option} {part!r}: {value!r} is not a number; {hint}") from None
        if not np.isfinite(number) or number < 0:
            raise InputError(f"{option} {part!r}: the value must be a non-negative number")
        if reference is not None and reference not in REFERENCES[quantity]:
            allowed = " or ".join(f"x{r}" for r in REFERENCES[quantity]) or "no multiple"
            raise InputError(f"{option} {part!r}: {quantity} takes {allowed}, not x{reference}")
        if quantity == "fraction" and reference is None and number > 1:
            raise InputError(f"{option} {part!r}: a fraction is between 0 and 1")
        rules.append(SelectionRule(quantity, op, number, reference))
    if not rules:
        raise InputError(f"{option} {text!r}: no rule given; pass 'none' to keep every class")
    return tuple(rules)


def select_classes(sizes, resolution_in_angstroms, rules: tuple[SelectionRule, ...]) -> ClassSelection:
    """Apply `rules` to K classes with `sizes` (particles each) and resolutions (Å, inf = none).

    No class may pass (`ClassSelection.empty`); `require_classes` turns that into an InputError.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    resolution = np.asarray(resolution_in_angstroms, dtype=np.float64)
    k = sizes.size
    if resolution.shape != (k,):
        raise ValueError("sizes and resolutions must have one entry per class")
    total = max(int(sizes.sum()), 1)
    occupied = sizes > 0
    finite = resolution[occupied & np.isfinite(resolution)]
    references = {"mean": total / k, "best": float(finite.min()) if finite.size else np.inf}
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(1, k + 1)
    values = {"size": sizes.astype(np.float64), "fraction": sizes / total, "resolution": resolution,
              "rank": rank.astype(np.float64)}
    kept = np.ones(k, dtype=bool)
    reasons: list[list[str]] = [[] for _ in range(k)]
    thresholds = {}
    for rule in rules:
        threshold = rule.value
        if rule.reference == "mean":
            threshold *= references["mean"] / (total if rule.quantity == "fraction" else 1)
        elif rule.reference == "best":
            threshold *= references["best"]
        thresholds[str(rule)] = float(threshold)
        passed = OPERATORS[rule.op](values[rule.quantity], threshold)
        for c in np.flatnonzero(~passed):
            reasons[c].append(str(rule))
        kept &= passed
    return ClassSelection(tuple(rules), kept, tuple(tuple(r) for r in reasons), thresholds)


def require_classes(selection: ClassSelection, sizes, resolution_in_angstroms, option: str = "--select") -> None:
    """One clear line when the rules leave no class."""
    if selection.empty:
        sizes = np.asarray(sizes)
        finite = np.asarray(resolution_in_angstroms)[np.isfinite(resolution_in_angstroms)]
        best = f"{finite.min():.1f} Å" if finite.size else "none estimated"
        raise InputError(f"{option} {','.join(map(str, selection.rules))}: no class passes (class sizes "
                         f"{sizes.min()}-{sizes.max()}, best resolution {best}); loosen the rules or pass "
                         f"{option} none")
