"""DP estimates of a column's bounds, for columns nobody declared bounds for.

Bounds never come from the data for free. When the policy's tier allows it (``missing_bounds =
"estimate"``), the first release that needs a column's bounds spends :data:`ESTIMATE_SHARE` of its
epsilon on a DP histogram of the column over a public logarithmic grid (bins a factor sqrt(2) wide,
from 2**-10 to 2**40 in size, on both sides of 0), and takes as bounds the outer edges of the lowest
and highest bins whose noisy count passes a threshold that an empty bin passes with probability
below 1 in 1000 (:data:`FALSE_BIN`). The estimate is a release like any other: it is charged,
recorded, said in the release that uses it, and reused by every later release on that column, so it
is paid for once.

Values in sparse tail bins (fewer rows than the threshold) lie beyond the bounds and are clamped to
them; the bounds can be up to a factor sqrt(2) wider than the values in the outer bins. A histogram
rather than private quantiles, because a quantile's score is flat below the smallest value, so the
exponential mechanism would often pick a far-off grid point there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PolicyError
from .plan import BinCounts, Col

__all__ = ["ESTIMATE_SHARE", "FALSE_BIN", "GRID", "EstimatedBounds", "estimation_primitive", "bounds_from",
           "missing_bounds_error"]

ESTIMATE_SHARE = 0.25
FALSE_BIN = 1e-3
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

    When no bin passes the threshold (little data, little epsilon), the bin with the largest noisy
    count gives both edges.
    """
    counts = np.asarray(noisy_counts, dtype=float)
    threshold = noise.half_width(FALSE_BIN / len(counts))
    passing = np.flatnonzero(counts > threshold)
    if len(passing) == 0:
        passing = np.asarray([int(np.argmax(counts))])
    return GRID[int(passing[0])], GRID[int(passing[-1]) + 1]


def missing_bounds_error(label: str, tier: str | None = None) -> PolicyError:
    """The refusal for a column without bounds whose bounds may not be estimated."""
    why = f" (the policy does not estimate bounds for tier '{tier}': missing_bounds = \"refuse\")" if tier else ""
    return PolicyError(
        f"'{label}' has no bounds, and bounds never come from the data{why}. Declare them: "
        f"dp.protect(..., bounds={{'{label}': (low, high)}}) or in the policy file "
        f"([columns.{label}] bounds = [low, high]), or pass bounds=(low, high) to this call, or clip() the "
        "values first.")
