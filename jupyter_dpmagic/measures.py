"""How each kind of release is made from exact integer primitives and noise.

For every measure this module says which primitives an engine must compute, how the release's privacy
loss is split among them, and how their noisy values become the released number and its 95% interval
(post-processing only: nothing here reads data).

Choices, with the reasons:

* Sums map clamped values onto a grid of ``2**23`` steps per bound and sum exact integers, so the
  sensitivity holds in finite arithmetic (float sums of crafted inputs can otherwise exceed it).
* Means and variances centre values on the middle of the bounds: under add/remove neighbours that
  halves the sum's sensitivity. The mean gives 80% of its loss to the centred sum and 20% to the count.
  The count's noise only matters in proportion to how far the mean lies from the centre, so a sum-heavy
  split is best near the centre; 80/20 keeps the error's standard deviation within 1.25x of the best
  split's whenever the mean lies in the middle 40% of the bounds, and within 1.82x at the very edge
  (where 50/50 would be best). No split can know where the mean is without spending on it.
* Quantiles use the exponential mechanism over 1025 public candidates spread evenly on the bounds; its
  accuracy is stated in ranks (rows) relative to the best candidate, because turning ranks into values,
  or saying how far the best candidate lies from the true quantile, would need the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import ndtri

from .errors import PolicyError
from .mechanisms import Noise
from .plan import (BinCounts, Count, FixedSum, Histogram, Mean, Measure, Quantile, QuantileScores, RowCount, Sum,
                   Variance, describe)

__all__ = ["compile_measure", "Compiled", "Outcome", "LEVEL"]

LEVEL = 0.95
ALPHA = 1.0 - LEVEL
LIMIT = 2**23
# Bounds beyond this size are refused: squares and sums of as many rows as a table can hold would
# overflow a float, and the release would be infinite or its interval meaningless.
MAX_MAGNITUDE = 1e100
CANDIDATES = 1025
Q_DEN = 10_000
MEAN_SUM_SHARE = 0.8
VAR_SHARES = (0.5, 0.25, 0.25)  # centred squares, centred sum, count


@dataclass(frozen=True)
class Outcome:
    """Released values (one per group) and the 95% interval of their noise."""

    values: np.ndarray
    ci_low: np.ndarray | None
    ci_high: np.ndarray | None
    accuracy: str
    integer: bool = False
    edges: tuple | None = None  # a histogram's bin edges


@dataclass(frozen=True)
class Compiled:
    measure: Measure
    primitives: tuple
    shares: tuple

    def finish(self, noisy: list[np.ndarray], noises: list[Noise]) -> Outcome:
        return _FINISH[type(self.measure)](self, noisy, noises)

    def half_width(self, noises: list[Noise]) -> float | None:
        """The 95% half-width of each released value, or None when it depends on the data (a mean's
        depends on how many values there are)."""
        if isinstance(self.measure, (Count, Histogram)):
            return noises[0].half_width(ALPHA)
        if isinstance(self.measure, Sum):
            return noises[0].half_width(ALPHA) * self.primitives[0].grid
        return None

    def noise_text(self, noises: list[Noise]) -> str:
        """The accuracy of this measure in words that need no data (what ``%dp explain`` shows)."""
        width = self.half_width(noises)
        if isinstance(self.measure, Histogram):
            return f"± {width:.0f} rows per bin (95%)"
        if width is not None:
            return f"± {width:.4g} (95%)"
        if isinstance(self.measure, Quantile):
            return _rank_text(self, noises[0])
        parts = [f"± {n.half_width(ALPHA) * getattr(p, 'grid', 1.0):.4g} on the {_PART_NAMES[type(p)](p)}"
                 for p, n in zip(self.primitives, noises)]
        lead = "the sum's noise divided by the number of values" if isinstance(self.measure, Mean) else \
            "from the noise of its parts"
        return f"{lead}: " + ", ".join(parts) + " (95% each)"


def compile_measure(measure: Measure) -> Compiled:
    """The primitives and loss shares that make ``measure``."""
    _check_magnitude(measure)
    if isinstance(measure, Count):
        return Compiled(measure, (RowCount(measure.expr),), (1.0,))
    if isinstance(measure, Sum):
        magnitude = max(abs(measure.low), abs(measure.high))
        grid = magnitude / LIMIT if magnitude > 0 else 1.0
        return Compiled(measure, (FixedSum(measure.expr, measure.low, measure.high, 0.0, grid, LIMIT),), (1.0,))
    if isinstance(measure, Mean):
        centre, half = _centre(measure)
        prims = (FixedSum(measure.expr, measure.low, measure.high, centre, half / LIMIT, LIMIT),
                 RowCount(measure.expr))
        return Compiled(measure, prims, (MEAN_SUM_SHARE, 1.0 - MEAN_SUM_SHARE))
    if isinstance(measure, Variance):
        centre, half = _centre(measure)
        offset = half * half / 2.0
        prims = (FixedSum(measure.expr, measure.low, measure.high, offset, offset / LIMIT, LIMIT,
                          square=True, centre=centre),
                 FixedSum(measure.expr, measure.low, measure.high, centre, half / LIMIT, LIMIT),
                 RowCount(measure.expr))
        return Compiled(measure, prims, VAR_SHARES)
    if isinstance(measure, Quantile):
        candidates = tuple(np.linspace(measure.low, measure.high, CANDIDATES).tolist())
        num = int(round(measure.q * Q_DEN))
        prim = QuantileScores(measure.expr, measure.low, measure.high, candidates, num, Q_DEN)
        return Compiled(measure, (prim,), (1.0,))
    if isinstance(measure, Histogram):
        edges = tuple(np.linspace(measure.low, measure.high, measure.bins + 1).tolist())
        return Compiled(measure, (BinCounts(measure.expr, edges),), (1.0,))
    raise TypeError(f"unknown measure {measure!r}")


def _check_magnitude(measure) -> None:
    low, high = getattr(measure, "low", None), getattr(measure, "high", None)
    if low is None or high is None or max(abs(low), abs(high)) <= MAX_MAGNITUDE:
        return
    raise PolicyError(f"the bounds [{low:.4g}, {high:.4g}] of {describe(measure.expr)} are too large to compute "
                      f"with (at most {MAX_MAGNITUDE:g} in size); rescale the values (e.g. divide by 1e6) and give "
                      "bounds in that unit.")


def _centre(measure) -> tuple[float, float]:
    return (measure.low + measure.high) / 2.0, (measure.high - measure.low) / 2.0


def _count_outcome(compiled, noisy, noises) -> Outcome:
    raw = np.asarray(noisy[0], dtype=float)
    half = noises[0].half_width(ALPHA)
    values = np.maximum(raw, 0.0)
    return Outcome(values, np.maximum(raw - half, 0.0), np.maximum(raw + half, 0.0),
                   f"± {half:.0f} (95%)", integer=True)


def _sum_outcome(compiled, noisy, noises) -> Outcome:
    grid = compiled.primitives[0].grid
    values = np.asarray(noisy[0], dtype=float) * grid
    half = noises[0].half_width(ALPHA) * grid
    return Outcome(values, values - half, values + half, f"± {half:.4g} (95%)")


def _mean_outcome(compiled, noisy, noises) -> Outcome:
    m = compiled.measure
    centre, half = _centre(m)
    grid = compiled.primitives[0].grid
    sums = np.asarray(noisy[0], dtype=float) * grid
    counts = np.asarray(noisy[1], dtype=float)
    values = np.clip(centre + sums / np.maximum(counts, 1.0), m.low, m.high)
    low, high = _mean_interval(sums, counts, noises[0], noises[1], grid, half)
    return Outcome(values, centre + low, centre + high, _spread_text(centre + low, centre + high, values))


def _mean_interval(sums, counts, sum_noise, count_noise, grid: float, half: float):
    """95% intervals of centred means, by inverting a pivot.

    With ``m`` the true centred mean and ``n`` the true count, the centred sum is ``m * n`` exactly, so
    ``S - m * N = Z_S - m * Z_N`` for the noisy sum ``S`` and count ``N``: its law depends on ``m``
    alone (and the noise scales, which are public). The interval holds every ``m`` in the bounds at
    which the observed ``|S - m N|`` lies within that law's central 95% (``q(m)``), so it covers the
    truth 95% of the time, not more as a union bound of two intervals would.

    ``q`` is tabulated on a grid of ``|m|`` and taken at the next grid point up (never below the true
    quantile), so it is constant on each cell of the grid and the condition solves exactly there:
    ``m`` in the cell and in ``[(S - q) / N, (S + q) / N]``. The interval is the hull of those pieces
    (a superset: still at least 95%). Without a positive noisy count it is the whole range.
    """
    low_edges, high_edges, cell_q = _pivot_cells(sum_noise.measure, sum_noise.scale * grid, count_noise.scale, half)
    low, high = np.full(len(sums), -half), np.full(len(sums), half)
    for start in range(0, len(sums), 512):  # a block of groups at a time keeps the work arrays small
        block = slice(start, start + 512)
        s, n = sums[block, None], counts[block, None]
        usable = n[:, 0] > 0
        n = np.where(n > 0, n, 1.0)
        piece_low = np.maximum(low_edges, (s - cell_q) / n)
        piece_high = np.minimum(high_edges, (s + cell_q) / n)
        found = piece_low <= piece_high
        some = usable & found.any(axis=1)
        low[block] = np.where(some, np.where(found, piece_low, np.inf).min(axis=1), -half)
        high[block] = np.where(some, np.where(found, piece_high, -np.inf).max(axis=1), half)
    return low, high


@lru_cache(maxsize=256)
def _pivot_cells(measure: str, s1: float, count_scale: float, half: float):
    """Cells of ``m`` in ``[-half, half]`` and the quantile ``q`` used on each (public numbers only, so
    cached: the same epsilon and bounds give the same cells)."""
    w = np.linspace(0.0, half, 513)
    q = _difference_quantile(measure, s1, count_scale * w)
    cells = (np.concatenate([-w[1:][::-1], w[:-1]]), np.concatenate([-w[:-1][::-1], w[1:]]),
             np.concatenate([q[1:][::-1], q[1:]]))
    for array in cells:
        array.flags.writeable = False
    return cells


def _difference_quantile(measure: str, s1: float, s2: np.ndarray) -> np.ndarray:
    """For each pair of scales: ``t`` with ``P(|Z_S - Z| > t) = ALPHA``, where ``Z_S`` has scale ``s1``
    and ``Z`` scale ``s2`` (Laplace, or Gaussian under zCDP)."""
    if measure == "zcdp":
        return float(ndtri(1.0 - ALPHA / 2)) * np.sqrt(s1 * s1 + s2 * s2)
    # Difference of two independent Laplace variables with scales b1, b2: its characteristic
    # function splits into partial fractions, so P(X > t) = (b1^2 e^{-t/b1} - b2^2 e^{-t/b2}) / (2 (b1^2 - b2^2)).
    # Solved for t by bisection, all weights at once.
    b1 = np.full_like(s2, s1)
    b2 = np.where(np.isclose(s2, s1, rtol=1e-9), s1 * (1 + 1e-6), s2)

    def tail(t):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return (b1 * b1 * np.exp(-t / b1) - b2 * b2 * np.exp(-t / b2)) / (2 * (b1 * b1 - b2 * b2))

    lo = np.zeros_like(s2)
    hi = (b1 + b2) * math.log(2 / ALPHA) * 2
    for _ in range(80):
        mid = (lo + hi) / 2
        above = tail(mid) > ALPHA / 2
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return hi


def _variance_outcome(compiled, noisy, noises) -> Outcome:
    m = compiled.measure
    _, half = _centre(m)
    sq_prim, sum_prim = compiled.primitives[0], compiled.primitives[1]
    squares = np.asarray(noisy[0], dtype=float) * sq_prim.grid
    sums = np.asarray(noisy[1], dtype=float) * sum_prim.grid
    counts = np.asarray(noisy[2], dtype=float)
    hw = [noises[0].half_width(ALPHA / 3) * sq_prim.grid, noises[1].half_width(ALPHA / 3) * sum_prim.grid,
          noises[2].half_width(ALPHA / 3)]
    top = half * half
    offset = sq_prim.shift

    def var(s2, s1, n):
        n = max(n, 1.0)
        v = s2 / n + offset - (s1 / n) ** 2
        if n > m.ddof + 1:
            v *= n / (n - m.ddof)
        return min(max(v, 0.0), top)

    values, low, high = [], [], []
    for s2, s1, n in zip(squares, sums, counts):
        values.append(var(s2, s1, n))
        if n - hw[2] < 1.0:
            low.append(0.0), high.append(top)
            continue
        # var is monotone in s2; in s1 its extremes are at the ends or at 0; in n at the ends or at
        # the stationary point 2 * s1^2 / (s2 + n * offset)-ish, so also try the middle of the n range.
        s1_points = [s1 - hw[1], s1 + hw[1]] + ([0.0] if s1 - hw[1] < 0 < s1 + hw[1] else [])
        n_points = np.linspace(n - hw[2], n + hw[2], 9)
        grid = [var(a, b, c) for a in (s2 - hw[0], s2 + hw[0]) for b in s1_points for c in n_points]
        low.append(min(grid)), high.append(max(grid))
    values, low, high = np.asarray(values), np.asarray(low), np.asarray(high)
    if m.root:
        values, low, high = np.sqrt(values), np.sqrt(low), np.sqrt(high)
    return Outcome(values, low, high, _spread_text(low, high, values))


def _quantile_outcome(compiled, noisy, noises) -> Outcome:
    prim = compiled.primitives[0]
    values = np.asarray([prim.candidates[int(i)] for i in noisy[0]], dtype=float)
    return Outcome(values, None, None, _rank_text(compiled, noises[0]))


def _rank_text(compiled, noise: Noise) -> str:
    # Report-noisy-max picks a candidate whose score is below the best by more than
    # scale * ln(C / alpha) with probability at most alpha; one rank step moves the score by `den`.
    # The guarantee is relative to the best candidate: on dense data the true quantile can lie many
    # rows away from every grid point, and no statement free of the data can say how many.
    prim = compiled.primitives[0]
    rows = math.ceil(noise.scale * math.log(len(prim.candidates) / ALPHA) / prim.den)
    step = (prim.high - prim.low) / (len(prim.candidates) - 1)
    return (f"rank within ± {rows} rows of the best of {len(prim.candidates)} grid points "
            f"(step {step:.3g}) for the {compiled.measure.q:g}-quantile (95%)")


def _histogram_outcome(compiled, noisy, noises) -> Outcome:
    raw = np.asarray(noisy[0], dtype=float)
    half = noises[0].half_width(ALPHA)
    return Outcome(np.maximum(raw, 0.0), np.maximum(raw - half, 0.0), np.maximum(raw + half, 0.0),
                   f"± {half:.0f} rows per bin (95%)", integer=True, edges=compiled.primitives[0].edges)


def _spread_text(low, high, values) -> str:
    if len(values) == 1:
        return f"95% CI [{float(low[0]):.4g}, {float(high[0]):.4g}]"
    widest = float(np.max(np.asarray(high) - np.asarray(low))) / 2
    return f"± up to {widest:.4g} (95%)"


_PART_NAMES = {
    RowCount: lambda p: "count",
    FixedSum: lambda p: "sum of squares" if p.square else "sum",
}

_FINISH = {Count: _count_outcome, Sum: _sum_outcome, Mean: _mean_outcome, Variance: _variance_outcome,
           Quantile: _quantile_outcome, Histogram: _histogram_outcome}
