"""DP estimates of a column's bounds, for columns nobody declared bounds for.

Bounds never come from the data for free. When the policy's tier allows it (``missing_bounds =
"estimate"``), the first release that needs a column's bounds spends :data:`ESTIMATE_SHARE` of its
epsilon on a DP histogram of the column over a public logarithmic grid (bins a factor sqrt(2) wide,
from 2**-10 to 2**40 in size, on both sides of 0), and takes as bounds the outer edges of the lowest
and highest bins that hold data by :func:`bounds_from`'s rule, plus one bin of margin. The estimate is a release like any other: it is charged,
recorded, said in the release that uses it, and reused by every later release on that column, so it
is paid for once.

Values in sparse tail bins (fewer rows than the thresholds) lie beyond the bounds and are clamped to
them; with a few hundred rows and a small epsilon that can be a noticeable share, which the release's
note makes visible. The bounds can be up to a factor 2 wider than the values in the outer bins. A histogram
rather than private quantiles, because a quantile's score is flat below the smallest value, so the
exponential mechanism would often pick a far-off grid point there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PolicyError
from .plan import BinCounts, Col

__all__ = ["ESTIMATE_SHARE", "FALSE_BIN", "NEAR_BIN", "GRID", "EstimatedBounds", "estimation_primitive", "bounds_from",
           "missing_bounds_error", "estimation_refusal"]

ESTIMATE_SHARE = 0.25
FALSE_BIN = 1e-3
NEAR_BIN = 3e-3  # per bin: two empty bins within two steps of each other both pass it with probability < 1%
_ZERO = 101  # the bin [0, 2**-10): bins from here on hold no negative value
_MAGNITUDES = 2.0 ** (np.arange(-20, 81) / 2.0)
GRID: tuple = tuple(np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES]).tolist())


@dataclass(frozen=True)
class EstimatedBounds:
    """Bounds of one column released by a DP estimate, and what the estimate cost."""

    column: str
    low: float
    high: float
    epsilon: float
    charge_id: int

    def note(self, *, fresh: bool) -> str:
        when = "now" if fresh else "earlier"
        return (f"bounds of '{self.column}' estimated {when} as [{self.low:.4g}, {self.high:.4g}] "
                f"(DP histogram on a log grid, ε={self.epsilon:.3g}, charge #{self.charge_id}); "
                "values beyond them were clamped")


def estimation_primitive(column: str) -> BinCounts:
    """Rows per bin of the grid (values beyond it fall in the outer bins)."""
    return BinCounts(Col(column), GRID)


def bounds_from(noisy_counts, noise) -> tuple[float, float]:
    """Bounds from a noisy histogram over the grid (post-processing of a release).

    A bin holds data if its noisy count passes a high threshold (an empty bin passes it with
    probability below :data:`FALSE_BIN` over the whole grid), or a lower one (:data:`NEAR_BIN` per
    bin) when another bin within two steps passes too: real data fills neighbouring bins, noise rarely
    does, so sparse tails next to the bulk are kept without letting lone noisy bins far away stretch
    the bounds. The bounds are the outer edges of the outermost such bins, one more bin wide on each
    side, and include 0 when no negative value was found (most measurements are never below 0).
    When no bin passes (little data, little epsilon), the bin with the largest noisy count is used.
    """
    counts = np.asarray(noisy_counts, dtype=float)
    high = counts > noise.half_width(FALSE_BIN / len(counts))
    low = counts > noise.half_width(NEAR_BIN)
    near = np.zeros_like(low)
    for shift in (1, 2):  # another passing bin within two steps on either side
        near[shift:] |= low[:-shift]
        near[:-shift] |= low[shift:]
    passing = np.flatnonzero(high | (low & near))
    if len(passing) == 0:
        passing = np.asarray([int(np.argmax(counts))])
    first, last = int(passing[0]), int(passing[-1])
    lower = 0.0 if first >= _ZERO else GRID[max(first - 1, 0)]
    return lower, GRID[min(last + 2, len(GRID) - 1)]


def missing_bounds_error(label: str, tier: str | None = None) -> PolicyError:
    """The refusal for a column without bounds whose bounds may not be estimated."""
    why = f" (the policy does not estimate bounds for tier '{tier}': missing_bounds = \"refuse\")" if tier else ""
    return PolicyError(
        f"'{label}' has no bounds, and bounds never come from the data{why}. Declare them: "
        f"dp.protect(..., bounds={{'{label}': (low, high)}}) or in the policy file "
        f"([columns.{label}] bounds = [low, high]), or pass bounds=(low, high) to this call, or clip() the "
        "values first.")


def estimation_refusal(dataset, column: str, label: str | None = None) -> PolicyError | None:
    """Why the bounds of ``column`` may not be estimated (its tier refuses, or it is not numeric), as
    the error to raise, or None when they may. ``label`` names the column in the message."""
    tier = dataset.column(column).tier
    if dataset.policy.tier(tier).missing_bounds != "estimate":
        return missing_bounds_error(label or column, tier)
    if dataset.schema.get(column) not in ("numeric", "bool"):
        return missing_bounds_error(label or column)
    return None
