"""Statistics for the honesty tests: the 94%-96% coverage band and the laws the tests rely on.

* :func:`band_check` holds an observed coverage to the band [94%, 96%]; :func:`band_false_alarm`
  bounds the probability that an implementation whose coverage is anywhere in [0.947, 0.953]
  leaves the band, and :func:`samples_needed` the number of samples that keeps it below 1e-6;
* :func:`count_coverage` and :func:`mean_coverage` compute, from the noise laws alone, how often a
  correct interval covers, so each test can show its parameters keep it within [0.947, 0.953];
* :func:`discrete_gaussian_tail` gives the far tail of the discrete Gaussian (partition selection).

Nothing here reads the package: laws come from the scales, thresholds from scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from _stats import Check, DiscreteGaussian, DiscreteLaplace

LEVEL = 0.95
BAND = (94, 96)  # percent: the "94-96% of the time"
TRUE_COVERAGE = (0.947, 0.953)  # where a correct implementation's coverage lies (discrete noise: a bit above 95%)


# ------------------------------------------------------------------------------------ the band
def band_limits(n: int) -> tuple[int, int]:
    """The fewest and the most covered samples out of ``n`` inside the band (exact integers)."""
    return -(-BAND[0] * n // 100), BAND[1] * n // 100


def band_false_alarm(n: int, low: float = TRUE_COVERAGE[0], high: float = TRUE_COVERAGE[1]) -> float:
    """The largest probability that ``n`` samples leave the band, over true coverages in [low, high].

    The samples are independent with coverage probabilities p_i whose mean p lies in [low, high]
    (groups differ: a mean's coverage depends on where it lies in the bounds). By Hoeffding (1956,
    Theorem 4) the number covered is then more concentrated than Bin(n, p) on each side (the band's
    edges lie more than one sample from n * p), and a binomial's lower tail falls and its upper tail
    rises with p, so the worst case is P(Bin(n, low) < lower edge) + P(Bin(n, high) > upper edge).
    """
    first, last = band_limits(n)
    return float(stats.binom.cdf(first - 1, n, low) + stats.binom.sf(last, n, high))


@lru_cache(maxsize=None)
def samples_needed(alpha: float = 1e-6, start: int = 1000, stop: int = 100_000) -> int:
    """The smallest n from which on every sample count keeps :func:`band_false_alarm` below ``alpha``.

    (The bound is not monotone in n, because the band's edges are rounded to whole samples.)
    """
    ns = np.arange(start, stop + 1)
    first = -(-BAND[0] * ns // 100)
    last = BAND[1] * ns // 100
    bound = stats.binom.cdf(first - 1, ns, TRUE_COVERAGE[0]) + stats.binom.sf(last, ns, TRUE_COVERAGE[1])
    above = ns[bound >= alpha]
    return int(above.max()) + 1 if len(above) else start


def band_check(covered, name: str) -> Check:
    """Whether the share of True in ``covered`` lies in [94%, 96%]."""
    covered = np.asarray(covered, dtype=bool).ravel()
    n, k = covered.size, int(np.count_nonzero(covered))
    first, last = band_limits(n)
    return Check(name, first <= k <= last, f"{k}/{n} covered ({k / n:.4f})",
                 f"between {first} and {last} covered ({BAND[0]}%-{BAND[1]}%); false alarm <= "
                 f"{band_false_alarm(n):.2g} for a true coverage in {list(TRUE_COVERAGE)}")


def binomial_miss(n: int, coverage: float) -> float:
    """Probability that a broken implementation of true ``coverage`` < 94% still reaches the band."""
    first, _ = band_limits(n)
    return float(stats.binom.sf(first - 1, n, coverage))


# ------------------------------------------------------------------- coverage under the laws
def count_coverage(kind: str, scale: float, half: float) -> float:
    """P(|X| <= half) for integer noise X of ``kind`` ("laplace" or "gaussian") with ``scale``."""
    if kind == "laplace":
        return float(DiscreteLaplace(scale).folded_cdf(math.floor(half)))
    if scale <= 1e4:
        return float(DiscreteGaussian(scale).folded_cdf(math.floor(half)))
    # A discrete Gaussian this wide has the continuous law's probabilities to far below 1e-12.
    return float(2.0 * stats.norm.cdf((math.floor(half) + 0.5) / scale) - 1.0)


def _laplace_difference_quantile(b1: float, b2: float) -> float:
    """t with P(|Y1 - Y2| > t) = 1 - LEVEL for independent Laplace Y1, Y2 of scales b1, b2."""
    alpha = 1.0 - LEVEL
    if b2 < 1e-9 * b1:
        return b1 * math.log(1.0 / alpha)
    if abs(b1 - b2) <= 1e-7 * b1:
        # Equal scales: P(Y1 - Y2 > t) = (1 + t / (2b)) exp(-t / b) / 2
        return optimize.brentq(lambda t: (1 + t / (2 * b1)) * math.exp(-t / b1) / 2 - alpha / 2, 0, 100 * b1,
                               xtol=1e-12)

    def tail(t):  # P(Y1 - Y2 > t), from the partial fractions of the characteristic function
        return (b1 * b1 * math.exp(-t / b1) - b2 * b2 * math.exp(-t / b2)) / (2 * (b1 * b1 - b2 * b2))

    return optimize.brentq(lambda t: tail(t) - alpha / 2, 0.0, 100.0 * (b1 + b2), xtol=1e-12)


def mean_pivot_coverage(m: float, kind: str, sum_scale: float, count_scale: float) -> float:
    """P(|Z_S - m Z_N| <= q(m)): how often the exact 95% pivot of a centred mean ``m`` covers.

    ``Z_S`` is the centred sum's noise in value units (a grid far finer than its scale: continuous
    to ~1e-7), ``Z_N`` the count's integer noise, whose steps are what can push coverage off 95%;
    ``q(m)`` is the pivot's 95% quantile with both laws taken as continuous (what an implementation
    that treats the count's noise as continuous states).
    """
    m = abs(m)
    if kind == "laplace":
        q = _laplace_difference_quantile(sum_scale, count_scale * m)
        reach = int(60 * count_scale) + 10
        k = np.arange(-reach, reach + 1)
        r = math.exp(-1.0 / count_scale)
        p = (1 - r) / (1 + r) * r ** np.abs(k)

        def cdf(x):
            return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / sum_scale),
                            1 - 0.5 * np.exp(-np.maximum(x, 0) / sum_scale))
    else:
        q = float(stats.norm.isf((1.0 - LEVEL) / 2)) * math.hypot(sum_scale, count_scale * m)
        reach = int(40 * count_scale) + 10
        k = np.arange(-reach, reach + 1)
        p = np.exp(-(k.astype(float) ** 2) / (2 * count_scale**2))
        p /= p.sum()

        def cdf(x):
            return stats.norm.cdf(x / sum_scale)
    return float(np.sum(p * (cdf(q + m * k) - cdf(-q + m * k))))


def count_below(kind: str, scale: float, t: float) -> float:
    """P(X <= t) for the count's integer noise X."""
    if kind == "laplace":
        return float(DiscreteLaplace(scale).cdf(math.floor(t)))
    return float(DiscreteGaussian(scale).cdf(math.floor(t)))


def mean_coverage(centred_means, sizes, kind: str, sum_scale: float, count_scale: float,
                  usable_above: float) -> tuple[float, float]:
    """Bounds on the average coverage of grouped means (true centred means, true group sizes).

    A group whose noisy count is at most ``usable_above`` gets the whole range of the bounds (always
    covers); otherwise the pivot decides. So each group covers with probability between
    pivot - P(unusable) and pivot + P(unusable).
    """
    pivots = np.array([mean_pivot_coverage(m, kind, sum_scale, count_scale) for m in centred_means])
    unusable = np.array([count_below(kind, count_scale, usable_above - n) for n in sizes])
    return float(np.mean(pivots - unusable)), float(np.mean(np.minimum(pivots + unusable, 1.0)))


# ------------------------------------------------------------------------ partition selection
def discrete_gaussian_tail(sigma: float, t: int) -> float:
    """P(Z >= t) for the discrete Gaussian of scale ``sigma`` (t >= 0), summed from the tail up."""
    reach = int(math.ceil(40.0 * sigma)) + 10
    k = np.arange(-reach, reach + 1, dtype=float)
    weights = np.exp(-(k**2) / (2.0 * sigma * sigma))
    total = weights.sum()
    upper = np.arange(t, t + reach + 1, dtype=float)
    return float(np.exp(-(upper**2) / (2.0 * sigma * sigma)).sum() / total)


def smallest_selection_margin(sigma: float, tail: float) -> int:
    """The smallest integer j with P(|Z| >= j) <= ``tail`` (Z discrete Gaussian of scale ``sigma``).

    A threshold margin a with P(|Z| >= a) <= tail (the design) has ceil(a) >= j, so a > j - 1.
    """
    j = max(1, int(sigma * stats.norm.isf(tail / 2)) - 5)
    while 2.0 * discrete_gaussian_tail(sigma, j) > tail:
        j += 1
    while j > 1 and 2.0 * discrete_gaussian_tail(sigma, j - 1) <= tail:
        j -= 1
    return j
