"""The noise of each mechanism follows its claimed law, and the tests can tell when it does not.

Mechanisms not covered by test_statistics.py's scalar and grouped-count checks: the histogram's vector
discrete Laplace, the exponential mechanism of quantiles, and the discrete Gaussian counts of a release
whose groups are chosen by partition selection. Each is checked against the exact law computed from
epsilon (or rho) and the sensitivity alone (binned exact-binomial test and Kolmogorov-Smirnov for
additive noise, exact binomial bins on the selected candidate for the exponential mechanism), with a
false-alarm probability below TEST_ALPHA (4e-7). Each check is shown to reject noise whose scale is
30% too large (``test_laws_reject_scale_30_percent_off`` computes the miss probabilities, all below
1e-6) and noise that repeats across releases (rejected with certainty: every pair of releases then has
equal noise, which independent draws have with probability about 0.06; a repeated quantile choice puts
every release in one bin).
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jupyter_dpmagic as dp
from jupyter_dpmagic import mechanisms
from jupyter_dpmagic.accountant import SELECTION_RELEASES
from _stats import (
    TEST_ALPHA, Broken, Check, DiscreteGaussian, DiscreteLaplace, binned_fit, counts_fit, draw, ks_fit,
    lower_critical, noisy_max_probabilities, protect, reject, require, upper_critical,
)

pytestmark = pytest.mark.usefixtures("fast_ledger")

OFF = 1.3  # the wrong scale the checks must reject
A = TEST_ALPHA / 3  # three checks per law


def _data(tag: str):
    return np.random.default_rng(zlib.crc32(tag.encode()))


# ---------------------------------------------------------------------------------- histogram
HIST_EPS = 0.25  # scale 4 per bin
HIST_RELEASES = 400  # x 10 bins = 4000 draws
HIST_BOUNDS = (0.0, 100.0)


def repeats_fit(noise, law, alpha: float) -> Check:
    """Noise drawn afresh for each release: pairs of releases (1st and 2nd, 3rd and 4th, ...) rarely agree.

    ``noise`` has one row per release. Under the law two independent draws are equal with probability
    ``sum_k P(X = k)^2``; the number of equal pairs is then binomial, and a count above its upper
    critical value is a false alarm with probability at most ``alpha``. Noise reused across releases
    makes every pair equal.
    """
    noise = np.asarray(noise, dtype=np.int64)
    pairs = len(noise) // 2
    first, second = noise[0:2 * pairs:2], noise[1:2 * pairs:2]
    reach = int(60 * law.scale) + 10
    support = np.arange(-reach, reach + 1)
    p_equal = float(np.sum((law.cdf(support) - law.cdf(support - 1)) ** 2))
    equal, n = int(np.count_nonzero(first == second)), first.size
    limit = upper_critical(n, p_equal, alpha)
    return Check(f"equal noise in pairs of releases vs {law.name}(scale {law.scale:.6g})", equal <= limit,
                 f"{equal} of {n} pairs", f"<= {limit} (P(equal) = {p_equal:.4f})")


def _histogram_law():
    return DiscreteLaplace(1.0 / HIST_EPS)


def _histogram_checks():
    frame = pd.DataFrame({"value": _data("hist-law").integers(0, 100, 500).astype(float)})
    exact = np.histogram(frame["value"], bins=10, range=HIST_BOUNDS)[0]
    pf = protect(frame, "hist-law", bounds={"value": HIST_BOUNDS})
    releases = draw(lambda: pf["value"].histogram(bins=10), HIST_RELEASES, epsilon=HIST_EPS)
    noise = np.array([np.asarray(r, dtype=np.int64) for r in releases]) - exact
    law = _histogram_law()
    return binned_fit(noise.ravel(), law, A), ks_fit(noise.ravel(), law, A), repeats_fit(noise, law, A)


# ------------------------------------------------------------------------------------ quantile
Q_EPS = 1.0
Q_RELEASES = 2000  # 1800 would miss a 30% scale error with probability 6e-7, 2000: 3e-8
Q_DATA = np.arange(400.0, 501.0)  # the exact median 450 is a candidate of the grid on (0, 1024)
Q_EDGES = (0, 2)  # bins of |selected - 450|: 0, 1-2, 3 and more


def _quantile_bin_probs(scale):
    candidates = np.arange(1025.0)
    below = np.array([np.count_nonzero(Q_DATA < c) for c in candidates])
    above = np.array([np.count_nonzero(Q_DATA > c) for c in candidates])
    p = noisy_max_probabilities(-np.abs(below - above).astype(float), scale)  # q = 1/2: sensitivity 1
    off = np.abs(candidates - 450.0)
    cuts = [-1, *Q_EDGES, np.inf]
    return np.array([p[(off > lo) & (off <= hi)].sum() for lo, hi in zip(cuts[:-1], cuts[1:])])


def _quantile_counts(values):
    off = np.abs(np.asarray(values) - 450.0)
    cuts = [-1, *Q_EDGES, np.inf]
    return np.array([np.count_nonzero((off > lo) & (off <= hi)) for lo, hi in zip(cuts[:-1], cuts[1:])])


def _quantile_checks():
    pf = protect(pd.DataFrame({"value": Q_DATA}), "q-law", bounds={"value": (0, 1024)})
    values = [float(r) for r in draw(lambda: pf["value"].median(), Q_RELEASES, epsilon=Q_EPS)]
    probs = _quantile_bin_probs(2.0 / Q_EPS)
    return (counts_fit(_quantile_counts(values), probs, TEST_ALPHA, "selected candidate vs the exponential "
                       f"mechanism (scale {2.0 / Q_EPS:g})", f"|out - 450| bins cut at {Q_EDGES}"),)


# ------------------------------------------------------------- counts after partition selection
SEL_RHO = 0.02  # sigma 5 on each group's count
SEL_BUDGETS = 4  # x 100 releases x 10 groups = 4000 draws
SEL_GROUPS = [f"g{i}" for i in range(10)]


def _selection_checks():
    rng = _data("selection-law")
    frame = pd.DataFrame({"diagnosis": rng.choice(SEL_GROUPS, 2000)})
    exact = frame["diagnosis"].value_counts().reindex(SEL_GROUPS).to_numpy()
    noise = []
    for b in range(SEL_BUDGETS):
        pf = protect(frame.assign(batch=f"{b}-{uuid.uuid4().hex[:6]}"), "selection-law", delta=1e-6)
        status = dp.budget(pf.name)
        with dp.spending(epsilon=SEL_RHO * status.epsilon_total / status.rho_total):
            for _ in range(SELECTION_RELEASES):
                r = pf.groupby("diagnosis").size()
                assert list(r.index) == SEL_GROUPS  # ~200 rows each against a threshold near 35
                noise.append(r.to_numpy(dtype=np.int64) - exact)
    noise = np.array(noise)
    law = DiscreteGaussian(1.0 / np.sqrt(2 * SEL_RHO))
    return binned_fit(noise.ravel(), law, A), ks_fit(noise.ravel(), law, A), repeats_fit(noise, law, A)


LAWS = {"histogram": _histogram_checks, "quantile": _quantile_checks, "partition_selection": _selection_checks}


@pytest.mark.parametrize("kind", LAWS)
def test_noise_follows_claimed_law(kind):
    require(*LAWS[kind]())


@pytest.mark.parametrize("kind", LAWS)
def test_noise_law_power_scale_30_percent_larger(monkeypatch, kind):
    Broken(monkeypatch).scale(actual=OFF)
    reject(LAWS[kind]()[0])


def _repeated_choice(monkeypatch):
    """Every quantile release reuses the first release's choice (per sensitivity)."""
    original, memo = mechanisms.noisy_max, {}

    def patched(**kwargs):
        right = original(**kwargs)
        key = kwargs["sensitivity"]

        def call(value):
            if key not in memo:
                memo[key] = right._measurement(value)
            return memo[key]

        return replace(right, _measurement=call)

    monkeypatch.setattr(mechanisms, "noisy_max", patched)


@pytest.mark.parametrize("kind", LAWS)
def test_noise_law_power_repeated_noise(monkeypatch, kind):
    # Repeated additive noise takes at most 10 values (one vector): each |X| bin then holds a multiple
    # of a tenth of the draws, never inside its acceptance band, and KS sees atoms of mass >= 0.1.
    # A repeated choice puts all releases in one bin, whose share is at most 0.57 under the law.
    if kind == "quantile":
        _repeated_choice(monkeypatch)
    else:
        Broken(monkeypatch).repeated()
    checks = LAWS[kind]()
    print("\n".join(map(str, checks)))
    # The law is accepted only when every check passes; repeated noise must fail at least one (for
    # additive noise the pairs check fails with certainty: every pair is equal).
    assert not all(c.ok for c in checks)


def _binned_miss(n, true_probs, claimed_probs, alpha_per_side):
    """P(every bin count lands in its acceptance band) <= the smallest such probability of one bin."""
    best = 1.0
    for p, q in zip(true_probs, claimed_probs):
        low, high = lower_critical(n, q, alpha_per_side), upper_critical(n, q, alpha_per_side)
        best = min(best, float(stats.binom.cdf(high, n, p) - stats.binom.cdf(low - 1, n, p)))
    return best


def _folded_probs(law, edges):
    return np.diff(np.r_[0.0, law.folded_cdf(np.asarray(edges)), 1.0])


def test_laws_reject_scale_30_percent_off():
    """Miss probabilities of the 30% checks above, from the exact laws (each must be below 1e-6)."""
    misses = {}
    for name, right, wrong, n in (
            ("histogram", _histogram_law(), DiscreteLaplace(OFF / HIST_EPS), HIST_RELEASES * 10),
            ("partition selection", DiscreteGaussian(1 / np.sqrt(2 * SEL_RHO)),
             DiscreteGaussian(OFF / np.sqrt(2 * SEL_RHO)), SEL_BUDGETS * SELECTION_RELEASES * len(SEL_GROUPS))):
        edges = [right.folded_quantile(q) for q in (0.4, 0.8)]
        misses[name] = _binned_miss(n, _folded_probs(wrong, edges), _folded_probs(right, edges), A / 6)
    right = _quantile_bin_probs(2.0 / Q_EPS)
    misses["quantile"] = _binned_miss(Q_RELEASES, _quantile_bin_probs(OFF * 2.0 / Q_EPS), right,
                                      TEST_ALPHA / (2 * len(right)))
    print("\n".join(f"{k}: P(scale x{OFF} missed) <= {v:.3g}" for k, v in misses.items()))
    assert all(v < 1e-6 for v in misses.values()), misses
