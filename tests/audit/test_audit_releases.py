"""Privacy audits of the release kinds test_audit.py does not cover: a quantile away from the median,
histograms, and DP partition selection (groups nobody declared).

The method is test_audit.py's: two neighbouring datasets (one patient more), many releases of each
through the public path, Clopper-Pearson bounds on events chosen before any release, and
``eps_lb = ln(P_lower[E | D1] / P_upper[E | D2])`` in both directions. A correct mechanism gives
``eps_lb > epsilon`` with probability below ``TEST_ALPHA`` (4e-7); every ``*_power_*`` test breaks the
mechanism on purpose and must be caught, and ``test_release_audits_have_power`` computes from the
broken mechanisms' exact laws that each one is missed with probability below 1e-6.

Partition selection is (epsilon, delta): a group that only the added patient creates has probability 0
on the smaller dataset, so the audit checks ``P_lower[E | D] - delta <= e^eps * P_upper[E | D']``.
"""

from __future__ import annotations

import math
import uuid
import zlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic import session
from jupyter_dpmagic.accountant import SELECTION_RELEASES
from jupyter_dpmagic.engine.local import LocalEngine
from _stats import (
    TEST_ALPHA, Broken, DiscreteGaussian, DiscreteLaplace, audit, audit_miss_probability, cp_lower,
    cp_upper, draw, noisy_max_probabilities, protect,
)

pytestmark = pytest.mark.usefixtures("fast_ledger")

EPS = 1.0


def _data(tag: str):
    return np.random.default_rng(zlib.crc32(tag.encode()))


def _print(result):
    print(result)
    return result


# -------------------------------------------------------------------------------- 0.9 quantile
QUANTILE_M = 300  # P(quarter noise missed) = 2.5e-9 (test_release_audits_have_power)
QUANTILE_DATA = np.arange(400.0, 501.0)  # 101 values on the candidate grid of the bounds (0, 1024)
QUANTILE_EVENTS = (491, 492)  # out >= t; chosen from the exact laws (largest loss of the correct one: 0.74)


def _quantile_audit(m=QUANTILE_M):
    base = pd.DataFrame({"value": QUANTILE_DATA})
    plus = pd.DataFrame({"value": np.r_[QUANTILE_DATA, 1024.0]})  # a patient at the upper bound
    d, d2 = (protect(f, label, bounds={"value": (0, 1024)}) for f, label in ((base, "audit-q90"),
                                                                             (plus, "audit-q90-plus")))
    out = {"D": np.array([float(r) for r in draw(lambda: d["value"].quantile(0.9), m, epsilon=EPS)]),
           "D'": np.array([float(r) for r in draw(lambda: d2["value"].quantile(0.9), m, epsilon=EPS)])}
    events = [(f"out >= {t}", lambda x, t=t: x >= t) for t in QUANTILE_EVENTS]
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_quantile_90_extreme_patient():
    assert _quantile_audit().epsilon_lower <= EPS


def test_audit_quantile_90_power_quarter_noise(monkeypatch):
    # Half the noise moves the best event only from 0.74 to 1.37 nats, which 300 releases per side
    # cannot resolve above 1 (the median audit has the same limit); a quarter of it gives 2.76.
    Broken(monkeypatch).scale(actual=0.25)
    assert _quantile_audit().epsilon_lower > EPS


def _quantile_event_laws(scale):
    """(P[out >= t | D'], P[out >= t | D]) under the exponential mechanism with this noise scale."""
    candidates = np.arange(1025.0)

    def scores(data):  # q = 9/10: -|1 * below(c) - 9 * above(c)|, sensitivity 9
        below = np.array([np.count_nonzero(data < c) for c in candidates])
        above = np.array([np.count_nonzero(data > c) for c in candidates])
        return -np.abs(below - 9 * above).astype(float)

    p_base = noisy_max_probabilities(scores(QUANTILE_DATA), scale)
    p_plus = noisy_max_probabilities(scores(np.r_[QUANTILE_DATA, 1024.0]), scale)
    return [(p_plus[candidates >= t].sum(), p_base[candidates >= t].sum()) for t in QUANTILE_EVENTS]


# ---------------------------------------------------------------------------------- histogram
HIST_M = 700  # P(half noise missed) = 2.5e-9 (as the count: one bin moves by one row)
HIST_BOUNDS = (0.0, 100.0)
HIST_BINS = 10


def _histogram_audit(m=HIST_M):
    """D' adds a patient above the upper bound (clamped into the last bin); D'nan one without a value."""
    base = pd.DataFrame({"value": _data("hist").integers(0, 100, 300).astype(float)})
    frames = {"D": base,
              "D'max": pd.concat([base, pd.DataFrame({"value": [1e9]})], ignore_index=True),
              "D'nan": pd.concat([base, pd.DataFrame({"value": [np.nan]})], ignore_index=True)}
    out = {}
    for label, frame in frames.items():
        pf = protect(frame, "audit-hist", bounds={"value": HIST_BOUNDS})
        releases = draw(lambda: pf["value"].histogram(bins=HIST_BINS), m, epsilon=EPS)
        out[label] = np.array([np.asarray(r, dtype=np.int64) for r in releases])
    exact = np.histogram(base["value"], bins=HIST_BINS, range=HIST_BOUNDS)[0]
    last, first = int(exact[-1]), int(exact[0])
    # The extreme patient: thresholds on the last bin. The patient without a value: wherever a
    # kept NaN would land (the first bin when missing values fall to the lower bound, or the last).
    extreme = [(f"last bin >= {last + s}", lambda x, t=last + s: x[:, -1] >= t) for s in (1, 2)] + \
              [(f"last bin <= {last + 1 - s}", lambda x, t=last + 1 - s: x[:, -1] <= t) for s in (1, 2)]
    missing = [(f"first bin >= {first + 1}", lambda x: x[:, 0] >= first + 1),
               (f"first bin <= {first}", lambda x: x[:, 0] <= first),
               (f"last bin >= {last + 1}", lambda x: x[:, -1] >= last + 1),
               (f"last bin <= {last}", lambda x: x[:, -1] <= last)]
    return (_print(audit(out, [("D'max", "D")], extreme, TEST_ALPHA / 2)),
            _print(audit(out, [("D'nan", "D")], missing, TEST_ALPHA / 2)))


def test_audit_histogram_extreme_and_missing_patients():
    extreme, missing = _histogram_audit()
    assert extreme.epsilon_lower <= EPS
    assert missing.epsilon_lower <= EPS


def test_audit_histogram_power_half_noise(monkeypatch):
    # Half the noise, and missing values kept (they fall to the lower bound): both neighbours show it.
    Broken(monkeypatch).scale(actual=0.5)
    numeric = LocalEngine._numeric
    monkeypatch.setattr(LocalEngine, "_notna", lambda self, expr, cache: None)
    monkeypatch.setattr(LocalEngine, "_numeric",
                        lambda self, expr, cache: np.nan_to_num(numeric(self, expr, cache), nan=0.0))
    extreme, missing = _histogram_audit()
    assert extreme.epsilon_lower > EPS
    assert missing.epsilon_lower > EPS


# ------------------------------------------------------------------------- partition selection
SELECTION_BUDGETS = 3  # x SELECTION_RELEASES (100) releases per side
SELECTION_DELTA = 1e-6  # of each budget; a tenth is the selection reserve, 1e-9 per selection
SELECTION_RHO = 0.5  # per release: discrete Gaussian noise with sigma 1 on the counts


def _selection_releases(frame, label, budgets):
    """The keys shown by ``budgets`` x 100 releases of ``groupby("diagnosis").size()`` and one release's info."""
    shown, info = [], None
    for b in range(budgets):
        pf = protect(frame.assign(batch=f"{label}-{b}-{uuid.uuid4().hex[:6]}"), label, delta=SELECTION_DELTA)
        status = dp.budget(pf.name)
        with dp.spending(epsilon=SELECTION_RHO * status.epsilon_total / status.rho_total):
            for _ in range(SELECTION_RELEASES):
                r = pf.groupby("diagnosis").size()
                shown.append(set(r.index))
                info = dp.info(r)
    return shown, info


def _selection_audit(budgets=SELECTION_BUDGETS):
    """D adds one patient with a diagnosis nobody else has; the event: that diagnosis is shown."""
    rng = _data("selection")
    smaller = pd.DataFrame({"diagnosis": rng.choice(["asthma", "copd", "diabetes"], 300)})
    larger = pd.concat([smaller, pd.DataFrame({"diagnosis": ["fabry"]})], ignore_index=True)
    shown_d, info = _selection_releases(larger, "audit-selection-plus", budgets)
    shown_d2, _ = _selection_releases(smaller, "audit-selection", budgets)
    k_d, k_d2 = sum("fabry" in s for s in shown_d), sum("fabry" in s for s in shown_d2)
    m = len(shown_d)
    beta = TEST_ALPHA / 2  # two bounds
    low, high = cp_lower(k_d, m, beta), cp_upper(k_d2, m, beta)
    # P[E | D] <= e^eps P[E | D'] + delta; the release's stated epsilon (its share of the budget) is
    # far below its real (epsilon, delta) conversion, so the check is stricter than it needs to be.
    excess = low - info.delta
    eps_lb = math.log(excess / high) if excess > 0 else -math.inf
    threshold = float(next(n for n in info.notes if "partition selection" in n).split("exceeds ")[1].split(" ")[0])
    print(f"new diagnosis shown in {k_d}/{m} releases on D (P >= {low:.4g}), {k_d2}/{m} on D' (P <= {high:.4g}); "
          f"delta {info.delta:.3g}, stated epsilon {info.epsilon:.4g}, threshold {threshold}: eps_lb = {eps_lb:.3f}")
    common_missing = sum(len(s) < 3 + ("fabry" in s) for s in shown_d + shown_d2)
    assert common_missing == 0, "a diagnosis of ~100 patients was hidden"
    return eps_lb, info


def test_audit_partition_selection_new_group():
    eps_lb, info = _selection_audit()
    assert info.delta == pytest.approx(SELECTION_DELTA * 0.1 / SELECTION_RELEASES, rel=1e-9)
    assert eps_lb <= info.epsilon


def _lowered_threshold(monkeypatch, threshold=0.5):
    original = session._draft

    def broken(*args, **kwargs):
        planned = original(*args, **kwargs)
        return planned if planned.threshold is None else replace(planned, threshold=threshold)

    monkeypatch.setattr(session, "_draft", broken)


def test_audit_partition_selection_power_threshold_lowered(monkeypatch):
    # A threshold of 0.5 rows instead of 7 (1 + 6 sigma): the lone patient's group passes with
    # P(1 + Z > 0.5) = P(Z >= 0) = 0.70 (discrete Gaussian, sigma 1); missed with probability 1e-58.
    _lowered_threshold(monkeypatch)
    eps_lb, info = _selection_audit()
    assert eps_lb > info.epsilon


def _selection_miss(p, m, epsilon, delta):
    """P(the selection audit misses) when the new group shows with probability p on D, never on D'."""
    beta = TEST_ALPHA / 2
    high = cp_upper(0, m, beta)
    ks = np.arange(m + 1)
    missed = [k for k in ks if not (cp_lower(int(k), m, beta) - delta > math.exp(epsilon) * high)]
    from scipy import stats

    return float(stats.binom.cdf(max(missed), m, p))


# ------------------------------------------------------------------------------- sample sizes
def test_release_audits_have_power():
    """The probability that each power test above misses its break, from the exact laws (< 1e-6)."""
    count = DiscreteLaplace(0.5 / EPS)
    last = [(float(1 - count.cdf(s - 1 - 1)), float(1 - count.cdf(s - 1))) for s in (1, 2)]
    sigma = DiscreteGaussian(1.0)
    p_shown = float(1 - sigma.cdf(-1))  # 1 + Z > 0.5
    misses = {
        "quantile 0.9, quarter noise": audit_miss_probability(
            _quantile_event_laws(0.25 * 2 * 9 / EPS), QUANTILE_M, 4 * 2, TEST_ALPHA, EPS),
        # the extreme patient and the missing one (kept at the lower bound): one row more in a bin
        "histogram, half noise": audit_miss_probability(last, HIST_M, 4 * 4, TEST_ALPHA / 2, EPS),
        # the stated epsilon of a rho = 0.5 share of a (1e6, 1e-6) budget is below 0.01; 1 is stricter
        "partition selection, threshold 0.5": _selection_miss(
            p_shown, SELECTION_BUDGETS * SELECTION_RELEASES, 1.0, 1e-9),
    }
    print("\n".join(f"{k}: P(miss) = {v:.3g}" for k, v in misses.items()) + f"\nP(shown | threshold 0.5) = {p_shown:.3f}")
    assert all(v < 1e-6 for v in misses.values()), misses
