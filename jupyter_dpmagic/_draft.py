"""A release before the data is touched: its primitives, how the loss is split, and its noise.

Everything here depends only on the query and the budget, never on the data, which is what lets
``%dp explain`` and accuracy targets work without spending: the same draft that a release runs is
the one that is explained or searched for an epsilon.

Measures that need the same exact primitive share it (``describe()``'s count, mean and std all use
one noisy count and one noisy centred sum), so its loss is spent once and its noise is smaller.

Partition selection (groups nobody declared): every released group's noisy row count must exceed
``max_rows + a``, where the noise exceeds ``a`` with probability at most ``delta / reach`` and
``reach`` is how many groups one person can appear in. A group that exists only because of one
person holds at most ``max_rows`` of their rows, so it is released with probability at most
``delta`` over all of that person's groups; the counts of groups present either way are protected
by the noise as usual (together: approximate zCDP with that delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import mechanisms
from .errors import PolicyError
from .ledger import UNITS_PER_ONE
from .measures import Outcome, compile_measure
from .plan import BinCounts, Count, Histogram, QuantileScores, Query, RowCount

__all__ = ["Draft", "draft", "SELECTION_SHARE"]

SELECTION_SHARE = 1.0 / 3.0  # of the loss, for the selection count when no measure is that count


@dataclass(frozen=True)
class Draft:
    """A planned release: unique primitives, which of them each measure reads, and their noise."""

    query: Query
    compiled: tuple
    primitives: tuple
    slots: tuple  # per measure: indexes into primitives
    noises: tuple
    units: int
    selection_delta: float = 0.0
    selection: int | None = None  # index of the row count that selects groups
    threshold: float | None = None

    @property
    def mechanism(self) -> str:
        names = " + ".join(sorted({n.name for n in self.noises}))
        return names + (" + partition selection" if self.selection is not None else "")

    def measure_noises(self):
        """``(compiled measure, its noises)`` for each measure."""
        for comp, slot in zip(self.compiled, self.slots):
            yield comp, [self.noises[i] for i in slot]

    def notes(self) -> tuple:
        notes = []
        if self.query.unit is not None:
            text = f"at most {self.query.max_rows} row(s) per '{self.query.unit}' counted"
            if self.query.max_groups is not None:
                text += f", in at most {self.query.max_groups} group(s)"
            notes.append(text)
        if self.selection is not None:
            notes.append(f"groups nobody declared were chosen by DP partition selection: a group is shown only "
                          f"if its noisy row count exceeds {self.threshold:.1f} (δ={self.selection_delta:.2g}); "
                          "hidden groups are not reported, not even how many there are")
        if len(self.compiled) > 1 and len(set(self.primitives)) < sum(len(s) for s in self.slots):
            notes.append("measures that need the same count or sum share one noisy value")
        return tuple(notes)

    def finish(self, exact) -> tuple[list[Outcome], list | None]:
        """Noise, selection and post-processing: the released outcomes and, after selection, their keys.

        Call only after the release is charged: this draws the noise.
        """
        vector = bool(self.query.by)
        noisy = [_add_noise(noise, prim, values, vector)
                 for noise, prim, values in zip(self.noises, self.primitives, exact)]
        keys = exact.keys
        if self.selection is not None:
            shown = np.flatnonzero(np.asarray(noisy[self.selection], dtype=float) > self.threshold)
            # Released in the order of the keys, never in the order the data holds them.
            shown = sorted(shown.tolist(), key=lambda i: _sort_key(keys[i]))
            noisy = [[values[i] for i in shown] for values in noisy]
            keys = [keys[i] for i in shown]
        outcomes = [comp.finish([np.asarray(noisy[i]) for i in slot], [self.noises[i] for i in slot])
                    for comp, slot in zip(self.compiled, self.slots)]
        return outcomes, keys

    def placeholder_outcomes(self) -> list[Outcome]:
        """Outcomes of the right shape, for explaining a release without running it: NaN, and 1 for
        counts (so that ``len(df)`` and divisions by counts still evaluate)."""
        if self.query.selects_groups:
            groups = 0
        else:
            groups = math.prod(len(k.categories) for k in self.query.by) if self.query.by else 1
        out = []
        for comp in self.compiled:
            size = comp.measure.bins if isinstance(comp.measure, Histogram) else groups
            counted = isinstance(comp.measure, (Count, Histogram))
            edges = comp.primitives[0].edges if isinstance(comp.measure, Histogram) else None
            out.append(Outcome(np.full(size, 1.0 if counted else np.nan), None, None, "", integer=counted,
                               edges=edges))
        return out


def draft(query: Query, units: int, mode: str, selection_delta: float = 0.0) -> Draft:
    """Compile ``query``'s measures, share equal primitives and calibrate noise for ``units``."""
    compiled = [compile_measure(m) for m in query.measures]
    index: dict = {}
    primitives, weights, slots = [], [], []
    for comp in compiled:
        slot = []
        for prim, share in zip(comp.primitives, comp.shares):
            weight = share / len(compiled)
            if prim in index:
                weights[index[prim]] += weight
            else:
                index[prim] = len(primitives)
                primitives.append(prim)
                weights.append(weight)
            slot.append(index[prim])
        slots.append(tuple(slot))
    selection = threshold = None
    if query.selects_groups:
        count = RowCount(None)
        if count not in index:
            weights = [w * (1.0 - SELECTION_SHARE) for w in weights]
            index[count] = len(primitives)
            primitives.append(count)
            weights.append(SELECTION_SHARE)
        selection = index[count]
    noises = calibrate(primitives, weights, units, query, mode)
    if selection is not None:
        # One person's rows can create at most this many groups (each with at most max_rows rows).
        reach = min(query.max_groups or query.max_rows, query.max_rows) if query.unit is not None else 1
        threshold = query.max_rows + noises[selection].half_width(selection_delta / reach)
    return Draft(query, tuple(compiled), tuple(primitives), tuple(slots), tuple(noises), units,
                 selection_delta, selection, threshold)


def calibrate(primitives, weights: list[float], units: int, query: Query, mode: str) -> list:
    """One OpenDP measurement per primitive, splitting ``units`` in proportion to ``weights``."""
    measure = mechanisms.PURE if mode == "pure" else mechanisms.ZCDP
    noises = []
    for prim, part in zip(primitives, split_units(units, weights)):
        loss = Fraction(part, UNITS_PER_ONE)
        sensitivity = prim.sensitivity() * query.max_rows
        if isinstance(prim, QuantileScores):
            noises.append(mechanisms.noisy_max(sensitivity=sensitivity, loss=loss, measure=measure))
        else:
            vector = bool(query.by) or isinstance(prim, BinCounts)
            noises.append(mechanisms.additive(sensitivity=sensitivity, loss=loss, measure=measure, vector=vector))
    return noises


def split_units(units: int, weights: list[float]) -> list[int]:
    """Whole units per primitive, in proportion to ``weights``, adding up to exactly ``units``."""
    total = sum(weights)
    parts = [math.floor(units * w / total) for w in weights]
    parts[max(range(len(weights)), key=weights.__getitem__)] += units - sum(parts)
    if min(parts) < 1:
        raise PolicyError("epsilon is too small to split among the parts of this release; ask for more.")
    return parts


def _add_noise(noise, prim, values: list, vector: bool) -> list:
    """Noisy values, one per group (a histogram: one per bin; quantile scores: the chosen index)."""
    if isinstance(prim, QuantileScores):
        return [noise(values[0])]
    if isinstance(prim, BinCounts):
        return noise(values[0])
    if vector:
        return noise(values)
    return [noise(values[0])]


def _sort_key(key: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                 else (1, 0, str(v)) for v in key)
