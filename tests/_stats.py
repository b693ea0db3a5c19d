"""Statistics shared by the noise-scale tests and the privacy audits.

* exact laws of the noise (discrete Laplace, discrete Gaussian, report-noisy-max with exponential
  noise) computed from epsilon and the sensitivity alone, never from the package;
* checks whose false-alarm probability is bounded exactly (binomial tails, Clopper-Pearson bounds,
  the Kolmogorov-Smirnov distribution, Bonferroni over everything a test checks);
* deliberately broken mechanisms (too little or too much noise, noise reused across releases, the
  per-person row multiplier forgotten) for the tests that show each check can fail.

Every check returns a :class:`Check` that says what was measured and where the limit lies, so a
failing assertion prints the numbers.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import pytest
from scipy import optimize, stats

import jupyter_dpmagic as dp
from jupyter_dpmagic import mechanisms

# Largest false-alarm probability of one test, all its checks together (Bonferroni; e.g. four checks
# at 1e-7 each). Below the 1e-6 allowed per test, and the same bound holds for each power test missing.
TEST_ALPHA = 4e-7
BIG_BUDGET = 1e6  # releases in these tests must never run out of budget
LIMIT = 2**23  # grid steps per bound of a fixed-point sum (measures.LIMIT)


# ------------------------------------------------------------------------------------ ledger, data
@pytest.fixture
def fast_ledger(monkeypatch, tmp_path):
    """A real SQLite ledger of its own for each test, on tmpfs when there is one (fast commits)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(tmp_path)
    path = os.path.join(base, f"dpmagic-stat-{uuid.uuid4().hex}.sqlite")
    monkeypatch.setenv("DPMAGIC_LEDGER", path)
    yield path
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def protect(frame, label: str, **options):
    """``dp.protect`` under a fresh dataset name with a budget no test can exhaust."""
    options.setdefault("epsilon", BIG_BUDGET)
    return dp.protect(frame, name=f"{label}-{uuid.uuid4().hex[:10]}", **options)


def draw(release, n: int, **spending):
    """``n`` releases made by ``release()`` inside one ``dp.spending(**spending)`` block."""
    with dp.spending(**spending):
        return [release() for _ in range(n)]


# ------------------------------------------------------------------------------------- noise laws
class DiscreteLaplace:
    """P(X = k) proportional to exp(-|k| / scale) on the integers (OpenDP's discrete Laplace)."""

    name = "discrete Laplace"

    def __init__(self, scale: float):
        self.scale = float(scale)
        self._a = 1.0 / self.scale
        self._r = math.exp(-self._a)

    def cdf(self, k):
        """P(X <= k)."""
        k = np.floor(np.asarray(k, dtype=float))
        neg = np.exp(np.minimum(k, 0.0) * self._a) / (1.0 + self._r)
        pos = 1.0 - np.exp(-(np.maximum(k, 0.0) + 1.0) * self._a) / (1.0 + self._r)
        return np.where(k < 0, neg, pos)

    def folded_cdf(self, k):
        """P(|X| <= k)."""
        k = np.floor(np.asarray(k, dtype=float))
        out = 1.0 - 2.0 * np.exp(-(np.maximum(k, 0.0) + 1.0) * self._a) / (1.0 + self._r)
        return np.where(k < 0, 0.0, out)

    def folded_quantile(self, q: float) -> int:
        """The smallest integer k with P(|X| <= k) >= q."""
        k = max(0, math.ceil(math.log((1.0 - q) * (1.0 + self._r) / 2.0) / -self._a) - 1)
        while self.folded_cdf(k) < q:
            k += 1
        while k > 0 and self.folded_cdf(k - 1) >= q:
            k -= 1
        return k


class DiscreteGaussian:
    """P(X = k) proportional to exp(-k^2 / (2 sigma^2)) on the integers (OpenDP's discrete Gaussian)."""

    name = "discrete Gaussian"

    def __init__(self, sigma: float):
        self.scale = float(sigma)
        reach = int(math.ceil(40.0 * sigma)) + 10  # exp(-800) beyond: nothing
        self._support = np.arange(-reach, reach + 1)
        weights = np.exp(-(self._support.astype(float) ** 2) / (2.0 * sigma * sigma))
        self._pmf = weights / weights.sum()
        self._cdf = np.cumsum(self._pmf)
        half = self._pmf[reach:].copy()
        half[1:] *= 2.0
        self._folded = np.cumsum(half)

    def cdf(self, k):
        k = np.floor(np.asarray(k, dtype=float)).astype(np.int64)
        idx = np.clip(k - self._support[0], -1, len(self._support) - 1)
        return np.where(idx < 0, 0.0, self._cdf[np.maximum(idx, 0)])

    def folded_cdf(self, k):
        k = np.floor(np.asarray(k, dtype=float)).astype(np.int64)
        idx = np.minimum(k, len(self._folded) - 1)
        return np.where(k < 0, 0.0, self._folded[np.maximum(idx, 0)])

    def folded_quantile(self, q: float) -> int:
        return int(np.searchsorted(self._folded, q))


def noisy_max_probabilities(scores, scale: float) -> np.ndarray:
    """P(candidate i is selected) by argmax(scores + Exp(scale)) (OpenDP's pure-DP noisy max).

    P(i) = integral over x of the density of score_i + E_i at x times P(score_j + E_j < x) for every
    other j. Candidates sharing a score are grouped; between consecutive scores the integrand is
    smooth, so Gauss-Legendre quadrature on those pieces is accurate to ~1e-12.
    """
    s = np.asarray(scores, dtype=float) / scale
    s -= s.max()
    levels, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    live = levels > -80.0  # lower scores never win (exp(-80)), and above them their CDF is 1 - exp(-80)
    lv, cnt = levels[live], counts[live]
    cuts = np.unique(np.r_[lv, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 80.0]])
    nodes, weights = np.polynomial.legendre.leggauss(48)
    x = np.concatenate([(v - u) / 2 * nodes + (u + v) / 2 for u, v in zip(cuts[:-1], cuts[1:])])
    w = np.concatenate([(v - u) / 2 * weights for u, v in zip(cuts[:-1], cuts[1:])])
    d = x[None, :] - lv[:, None]
    log_cdf = np.full(d.shape, -np.inf)
    above = d > 0
    log_cdf[above] = np.log1p(-np.exp(-d[above]))
    total = (cnt[:, None] * np.where(above, log_cdf, 0.0)).sum(axis=0)
    per_level = np.zeros(len(levels))
    for a in range(len(lv)):
        # x must exceed candidate a's own score and every other score (else some other wins surely)
        others_above_x = ((~above) & (np.arange(len(lv))[:, None] != a)).any(axis=0)
        mask = above[a] & ~others_above_x
        log_f = -d[a, mask] + total[mask] - log_cdf[a, mask]
        per_level[np.flatnonzero(live)[a]] = float(np.sum(w[mask] * np.exp(log_f)))
    return per_level[inverse]


def zcdp_rho_cap(epsilon: float, delta: float) -> float:
    """The largest rho for which rho-zCDP implies (epsilon, delta)-DP.

    Canonne, Kamath & Steinke (2020), Corollary 13: rho-zCDP gives (epsilon, delta)-DP with
    delta = inf over alpha > 1 of exp((alpha - 1)(alpha rho - epsilon)) / (alpha - 1) * (1 - 1/alpha)^alpha.
    Minimised over u = log(alpha - 1) on a grid refined by a bounded search, then solved for rho.
    """
    target = math.log(delta)

    def log_delta(rho):
        def g(u):
            t = math.exp(u)
            return t * ((1.0 + t) * rho - epsilon) - u - (1.0 + t) * math.log1p(1.0 / t)

        grid = np.linspace(-40.0, 40.0, 3201)
        values = []
        for u in grid:
            try:
                values.append(g(u))
            except OverflowError:
                values.append(math.inf)
        i = int(np.argmin(values))
        found = optimize.minimize_scalar(g, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                                         method="bounded", options={"xatol": 1e-12})
        return min(values[i], found.fun)

    return float(optimize.brentq(lambda rho: log_delta(rho) - target, 1e-12, epsilon, xtol=1e-15, rtol=1e-13))


# --------------------------------------------------------------------------- binomial bounds
def lower_critical(n: int, p: float, alpha: float) -> int:
    """The largest L with P(Bin(n, p) < L) <= alpha: values below L are rare under p."""
    low = int(stats.binom.ppf(alpha, n, p))
    while low > 0 and stats.binom.cdf(low - 1, n, p) > alpha:
        low -= 1
    while stats.binom.cdf(low, n, p) <= alpha:
        low += 1
    return low


def upper_critical(n: int, p: float, alpha: float) -> int:
    """The smallest H with P(Bin(n, p) > H) <= alpha: values above H are rare under p."""
    high = int(stats.binom.isf(alpha, n, p))
    while stats.binom.sf(high, n, p) > alpha:
        high += 1
    while high > 0 and stats.binom.sf(high - 1, n, p) <= alpha:
        high -= 1
    return high


def cp_lower(k: int, n: int, beta: float) -> float:
    """One-sided Clopper-Pearson lower bound: P(bound > p) <= beta."""
    return 0.0 if k == 0 else float(stats.beta.ppf(beta, k, n - k + 1))


def cp_upper(k: int, n: int, beta: float) -> float:
    """One-sided Clopper-Pearson upper bound: P(bound < p) <= beta."""
    return 1.0 if k == n else float(stats.beta.ppf(1.0 - beta, k + 1, n - k))


# -------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    observed: str
    limit: str

    def __str__(self):
        return f"{self.name}: {'ok' if self.ok else 'REJECTED'} (observed {self.observed}; limit {self.limit})"


def coverage_at_least(covered, level: float, alpha: float, name="coverage >= level") -> Check:
    """Binomial test that intervals cover with probability >= ``level`` (false alarm <= alpha)."""
    covered = np.asarray(covered, dtype=bool)
    n, misses = len(covered), int(np.count_nonzero(~covered))
    high = upper_critical(n, 1.0 - level, alpha)
    return Check(name, misses <= high, f"{n - misses}/{n} covered ({(n - misses) / n:.4f})",
                 f"at most {high} misses (P(Bin({n}, {1 - level:.4g}) > {high}) <= {alpha:.2g})")


def coverage_at_most(covered, expected: float, alpha: float, name="coverage not above the scale's") -> Check:
    """Binomial test that intervals do not cover more often than ``expected`` (false alarm <= alpha)."""
    covered = np.asarray(covered, dtype=bool)
    n, misses = len(covered), int(np.count_nonzero(~covered))
    low = lower_critical(n, 1.0 - expected, alpha)
    return Check(name, misses >= low, f"{n - misses}/{n} covered ({(n - misses) / n:.4f})",
                 f"at least {low} misses (P(Bin({n}, {1 - expected:.4g}) < {low}) <= {alpha:.2g})")


def counts_fit(counts, probs, alpha: float, name: str, bins: str = "") -> Check:
    """Exact simultaneous test of bin counts against bin probabilities.

    Each count is held to its exact two-sided binomial acceptance region at alpha / (2 * bins) per
    side (Bonferroni over bins and sides), so the false-alarm probability is at most ``alpha`` for
    any sample size; Pearson's X2 is shown for information.
    """
    counts, probs = np.asarray(counts, dtype=np.int64), np.asarray(probs, dtype=float)
    n = int(counts.sum())
    per_side = alpha / (2 * len(probs))
    rows, ok, worst = [], True, 0.0
    for c, p in zip(counts, probs):
        low, high = lower_critical(n, p, per_side), upper_critical(n, p, per_side)
        ok &= bool(low <= c <= high)
        worst = max(worst, abs(c - n * p) / math.sqrt(n * p * (1 - p)))
        rows.append(f"{c} in [{low}, {high}]")
    chi2 = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
    return Check(name, ok, f"bin counts {[int(c) for c in counts]} vs expected "
                 f"{[round(float(n * p), 1) for p in probs]}, max |z| {worst:.1f}, Pearson X2 {chi2:.1f}",
                 "; ".join(rows) + (f" ({bins})" if bins else ""))


def binned_fit(noise, law, alpha: float, quantiles=(0.4, 0.8), name=None) -> Check:
    """Goodness of fit of |noise| to ``law`` on bins of |X| cut at ``quantiles`` of the law.

    A scale off by 30% moves the inner bins by many standard deviations; identical noise in every
    release puts all the mass in one bin. False alarms: at most ``alpha`` (see :func:`counts_fit`).
    """
    folded = np.abs(np.asarray(noise, dtype=np.int64))
    edges = [law.folded_quantile(q) for q in quantiles]
    probs = np.diff(np.r_[0.0, law.folded_cdf(np.asarray(edges)), 1.0])
    counts = np.diff(np.r_[0, [np.count_nonzero(folded <= e) for e in edges], len(folded)])
    return counts_fit(counts, probs, alpha, name or f"|noise| bins vs {law.name}(scale {law.scale:.6g})",
                      f"edges |X| <= {edges}")


def ks_fit(noise, law, alpha: float, name=None) -> Check:
    """One-sample Kolmogorov-Smirnov test of integer noise against ``law``.

    The critical value is the exact KS quantile for continuous laws; for a law on the integers the
    test is conservative (its false-alarm probability is at most ``alpha``).
    """
    x = np.sort(np.asarray(noise, dtype=np.int64))
    n = len(x)
    points = np.unique(np.r_[x, x - 1])
    empirical = np.searchsorted(x, points, side="right") / n
    d = float(np.max(np.abs(empirical - law.cdf(points))))
    crit = float(stats.kstwo.isf(alpha, n))
    return Check(name or f"KS vs {law.name}(scale {law.scale:.6g})", d <= crit, f"D = {d:.4f} (n={n})",
                 f"D <= {crit:.4f} (KS quantile at {alpha:.2g})")


def finite_releases(kinds: dict, n: int, epsilon: float = 1.0) -> Check:
    """Run each release of ``kinds`` ``n`` times: no value or interval bound may be NaN or infinite."""
    bad = []
    with dp.spending(epsilon=epsilon):
        for kind, release in kinds.items():
            for _ in range(n):
                try:
                    r = release()
                except Exception as exc:  # noqa: BLE001 - a release that fails is not a finite release
                    bad.append(f"{kind}: {type(exc).__name__}: {exc}")
                    break
                parts = [np.asarray(r, dtype=float)]
                info = getattr(r, "_dp", None)
                if info is not None and info.ci_low is not None:
                    parts += [np.asarray(info.ci_low, dtype=float), np.asarray(info.ci_high, dtype=float)]
                if not all(np.all(np.isfinite(p)) for p in parts):
                    bad.append(f"{kind}: {r!r}")
                    break
    return Check("releases and intervals are finite", not bad, "; ".join(bad) or f"{len(kinds)} kinds x {n}",
                 "no NaN, no infinity, no failure")


def require(*checks: Check) -> None:
    """Assert every check passed, showing all of them."""
    text = "\n".join(map(str, checks))
    print(text)
    assert all(c.ok for c in checks), text


def reject(*checks: Check) -> None:
    """Assert every check was rejected (the power tests)."""
    text = "\n".join(map(str, checks))
    print(text)
    assert not any(c.ok for c in checks), text


# ------------------------------------------------------------------------------------- the audit
@dataclass(frozen=True)
class Audit:
    epsilon_lower: float
    event: str
    rows: tuple

    def __str__(self):
        return f"eps_lb = {self.epsilon_lower:.3f} from {self.event}\n" + "\n".join(self.rows)


def audit(outputs: dict, pairs, events, alpha: float) -> Audit:
    """Empirical lower bound on epsilon from releases on neighbouring datasets.

    ``outputs`` maps a dataset label to its array of releases; ``pairs`` lists (label, label)
    neighbours; ``events`` lists (description, predicate on the array). For each pair, event and
    direction, ln(CP lower bound of P[E | one] / CP upper bound of P[E | other]). Every bound holds
    with probability >= 1 - beta, beta = alpha / (number of bounds), so with probability >= 1 - alpha
    all of them hold and then no ratio can exceed the true privacy loss.
    """
    n_bounds = 4 * len(pairs) * len(events)
    beta = alpha / n_bounds
    best, where, rows = -math.inf, "", []
    for a, b in pairs:
        for text, event in events:
            ka = int(np.count_nonzero(event(outputs[a])))
            kb = int(np.count_nonzero(event(outputs[b])))
            na, nb = len(outputs[a]), len(outputs[b])
            for (num, kn, nn), (den, kd, nd) in (((a, ka, na), (b, kb, nb)), ((b, kb, nb), (a, ka, na))):
                low, high = cp_lower(kn, nn, beta), cp_upper(kd, nd, beta)
                value = math.log(low / high) if low > 0 else -math.inf
                rows.append(f"  {text}: P[{num}] >= {low:.4f} ({kn}/{nn}), P[{den}] <= {high:.4f} "
                            f"({kd}/{nd}) -> {value:.3f}")
                if value > best:
                    best, where = value, f"{text} ({num} vs {den})"
    return Audit(best, where, tuple(rows))


# ------------------------------------------------------------------------ broken mechanisms
_LOSS_ARG = {"laplace": "epsilon", "gaussian": "rho", "noisy_max": "loss"}


def _scaled_loss(kind: str, kwargs: dict, factor: float) -> dict:
    """Keyword arguments that make OpenDP's noise scale ``factor`` times the calibrated one."""
    arg = _LOSS_ARG[kind]
    loss = Fraction(kwargs[arg])
    squared = kind == "gaussian" or (kind == "noisy_max" and kwargs.get("measure") == mechanisms.ZCDP)
    f = Fraction(factor).limit_denominator(1000)
    return {**kwargs, arg: loss / (f * f if squared else f)}


class Broken:
    """Monkeypatches of ``jupyter_dpmagic.mechanisms`` that under- or over-noise on purpose.

    ``actual`` scales the noise actually drawn; ``reported`` scales the scale the release reports (its
    interval or rank accuracy); the loss charged is always the correct one, as a real bug would keep it.
    """

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def _wrap(self, kind, make):
        original = getattr(mechanisms, kind)

        def patched(**kwargs):
            return make(original, kwargs)

        self.monkeypatch.setattr(mechanisms, kind, patched)

    def scale(self, actual: float = 1.0, reported: float | None = None, kinds=("laplace", "gaussian", "noisy_max")):
        """Noise ``actual`` x the right scale; the release reports ``reported`` x (default: actual)."""
        reported = actual if reported is None else reported

        def make(original, kwargs, kind):
            drawn = original(**_scaled_loss(kind, kwargs, actual))
            # the loss the session asked for (what the ledger charges), the scale it is told
            return replace(drawn, loss=float(kwargs[_LOSS_ARG[kind]]), scale=drawn.scale * reported / actual)

        for kind in kinds:
            self._wrap(kind, lambda original, kwargs, kind=kind: make(original, kwargs, kind))
        return self

    def repeated(self):
        """Every release reuses the first release's noise (per mechanism and sensitivity)."""
        memo = {}

        def make(original, kwargs, kind):
            right = original(**kwargs)
            key = (kind, kwargs.get("sensitivity"), kwargs.get("vector"))
            measurement = right._measurement

            def call(value):
                if key not in memo:
                    memo[key] = np.asarray(measurement(value), dtype=np.int64) - np.asarray(value, dtype=np.int64)
                out = np.asarray(value, dtype=np.int64) + memo[key]
                return out.tolist() if isinstance(value, list) else int(out)

            return replace(right, _measurement=call)

        for kind in ("laplace", "gaussian"):
            self._wrap(kind, lambda original, kwargs, kind=kind: make(original, kwargs, kind))
        return self

    def ignore_max_rows(self, k: int):
        """Noise calibrated as if each person had one row (the max_rows_per_unit factor forgotten)."""

        def make(original, kwargs):
            return original(**{**kwargs, "sensitivity": max(1, kwargs["sensitivity"] // k)})

        for kind in ("laplace", "gaussian", "noisy_max"):
            self._wrap(kind, make)
        return self


def audit_miss_probability(events, m: int, n_bounds: int, alpha: float, epsilon: float) -> float:
    """Probability that an audit with ``m`` releases per side finds no eps_lb > ``epsilon``.

    ``events`` lists (P[E | one], P[E | other]) under the broken mechanism; the audit uses bounds at
    beta = alpha / n_bounds. Exact: a sum over the binomial law of the first count of the
    probability that the second count is too large; the smallest value over the events bounds the
    probability that all of them miss.
    """
    beta = alpha / n_bounds
    k = np.arange(m + 1)
    with np.errstate(all="ignore"):
        lows = np.where(k == 0, 0.0, stats.beta.ppf(beta, np.maximum(k, 1), m - k + 1))
        highs = np.where(k == m, 1.0, stats.beta.ppf(1.0 - beta, k + 1, np.maximum(m - k, 1)))
    best = 1.0
    for p, q in events:
        miss = 0.0
        pk = stats.binom.pmf(k, m, p)
        for i in np.flatnonzero(pk > 1e-300):
            j = int(np.searchsorted(highs, lows[i] / math.exp(epsilon))) - 1  # largest count still detected
            miss += pk[i] * (stats.binom.sf(j, m, q) if j >= 0 else 1.0)
        best = min(best, miss)
    return float(best)
