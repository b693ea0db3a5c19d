"""Empirical lower bounds on epsilon from neighbouring datasets (a black-box privacy audit).

For each release kind, D and D' differ by one person (an extreme patient at the bound, a patient
with a missing value, a patient in a declared but empty category, a patient with three rows under
``max_rows_per_unit=3``). Both are protected and released many times at a claimed epsilon through the
public path. For threshold events chosen from the exact answers before any release, Clopper-Pearson
bounds give ``eps_lb = ln(P_lower[E | D1] / P_upper[E | D2])`` in both directions; every bound holds
with probability 1 - alpha / (number of bounds), so a correct mechanism gives ``eps_lb > epsilon``
with probability below ``TEST_ALPHA`` (4e-7).

The ``*_power_*`` tests run the same audit with the noise scale halved (true epsilon twice the claim)
or the per-person row factor forgotten, and require ``eps_lb > epsilon``. The sample sizes are chosen
so that they miss with probability below 1e-6; ``test_audit_sample_sizes_have_power`` computes those
probabilities from the broken mechanisms' laws. The median is the exception: its threshold events
reveal far less than epsilon (about 0.8 of it), so halving the noise shows only with 1800 releases
per side; that pair of tests is marked slow, and the fast one quarters the noise.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: _stats

from jupyter_dpmagic.engine.local import LocalEngine  # noqa: E402
from _stats import (  # noqa: E402,F401
    LIMIT, TEST_ALPHA, Broken, DiscreteLaplace, audit, audit_miss_probability, draw, fast_ledger,
    noisy_max_probabilities, protect,
)

pytestmark = pytest.mark.usefixtures("fast_ledger")

EPS = 1.0  # the claimed epsilon of every audited release


def _data(tag: str):
    """A fixed generator per frame (the frames only; noise has no seed)."""
    return np.random.default_rng(zlib.crc32(tag.encode()))


def _print(result):
    print(result)
    return result


def _threshold_events(exact_a: float, exact_b: float, steps=(1.0, 0.5)):
    """Events on b's side of thresholds between the exact answers, and on a's side, in both orders.

    A step of 1 puts the threshold at the other dataset's exact answer (the strongest event for a
    shift of the noise); 0.5 puts it halfway; steps above 1 go beyond.
    """
    gap = exact_b - exact_a
    up = gap >= 0
    events = []
    for s in steps:
        toward_b, toward_a = exact_a + s * gap, exact_b - s * gap
        if up:
            events.append((f"out >= {toward_b:.8g}", lambda x, t=toward_b: x >= t))
            events.append((f"out <= {toward_a:.8g}", lambda x, t=toward_a: x <= t))
        else:
            events.append((f"out <= {toward_b:.8g}", lambda x, t=toward_b: x <= t))
            events.append((f"out >= {toward_a:.8g}", lambda x, t=toward_a: x >= t))
    return events


# ------------------------------------------------------------------------------------------- count
COUNT_M = 700  # P(half noise missed) = 9e-10 (exact: test_audit_sample_sizes_have_power)


def _count_audit(m=COUNT_M):
    base = pd.DataFrame({"value": _data("count").integers(0, 100, 300).astype(float)})
    plus = pd.concat([base, pd.DataFrame({"value": [100.0]})], ignore_index=True)  # one patient more
    d, d2 = protect(base, "audit-count"), protect(plus, "audit-count-plus")
    out = {"D": np.array(draw(lambda: len(d), m, epsilon=EPS)),
           "D'": np.array(draw(lambda: len(d2), m, epsilon=EPS))}
    events = _threshold_events(len(base), len(plus), steps=(1.0, 2.0))  # out >= N+1, N+2; <= N, N-1
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_count():
    assert _count_audit().epsilon_lower <= EPS


def test_audit_count_power_half_noise(monkeypatch):
    Broken(monkeypatch).scale(actual=0.5)
    assert _count_audit().epsilon_lower > EPS


# ------------------------------------------------------------------- three rows for one person
UNIT_M = 1000  # P(half noise missed) = 2e-7
UNIT_FACTOR_M = 400  # P(factor 3 forgotten missed) = 1.4e-9


def _unit_frame(people, rows, value):
    return pd.DataFrame({"pid": np.repeat(people, rows), "value": np.repeat(value, rows)})


def _unit_audit(m=UNIT_M):
    rng = _data("unit")
    rows = rng.integers(1, 5, 200)
    base = _unit_frame(np.arange(200), rows, rng.integers(0, 100, 200).astype(float))
    plus = pd.concat([base, _unit_frame([10_000], [3], [50.0])], ignore_index=True)  # three visits
    options = dict(privacy_unit="pid", max_rows_per_unit=3)
    d, d2 = protect(base, "audit-unit", **options), protect(plus, "audit-unit-plus", **options)
    exact = int(np.minimum(rows, 3).sum())
    out = {"D": np.array(draw(lambda: len(d), m, epsilon=EPS)),
           "D'": np.array(draw(lambda: len(d2), m, epsilon=EPS))}
    events = _threshold_events(exact, exact + 3, steps=(1.0, 2 / 3))
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_person_with_three_rows():
    assert _unit_audit().epsilon_lower <= EPS


def test_audit_person_with_three_rows_power_half_noise(monkeypatch):
    Broken(monkeypatch).scale(actual=0.5)
    assert _unit_audit().epsilon_lower > EPS


def test_audit_person_with_three_rows_power_multiplier_ignored(monkeypatch):
    # noise for one row per person: the same audit on 400 releases per side misses it with
    # probability 1.4e-9 (test_audit_sample_sizes_have_power)
    Broken(monkeypatch).ignore_max_rows(3)
    assert _unit_audit(m=UNIT_FACTOR_M).epsilon_lower > EPS


# ----------------------------------------------------------------- a new declared category
GROUP_M = 700  # P(half noise missed) = 6e-10


def _group_audit(m=GROUP_M):
    base = pd.DataFrame({"ward": _data("group").choice(["a", "b", "c"], 300)})
    plus = pd.concat([base, pd.DataFrame({"ward": ["d"]})], ignore_index=True)  # the first patient in d
    options = dict(categories={"ward": ["a", "b", "c", "d"]})
    d, d2 = protect(base, "audit-group", **options), protect(plus, "audit-group-plus", **options)
    out = {"D": np.array([int(r["d"]) for r in draw(lambda: d.groupby("ward").size(), m, epsilon=EPS)]),
           "D'": np.array([int(r["d"]) for r in draw(lambda: d2.groupby("ward").size(), m, epsilon=EPS)])}
    events = [("out >= 1", lambda x: x >= 1), ("out >= 2", lambda x: x >= 2), ("out <= 0", lambda x: x <= 0)]
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_grouped_count_new_category():
    assert _group_audit().epsilon_lower <= EPS


def test_audit_grouped_count_new_category_power_half_noise(monkeypatch):
    Broken(monkeypatch).scale(actual=0.5)
    assert _group_audit().epsilon_lower > EPS


# --------------------------------------------------------------------------------------------- sum
SUM_M = 1300  # P(half noise missed) = 3e-8
SUM_BOUNDS = (0.0, 10.0)


def _sum_audit(m=SUM_M):
    base = pd.DataFrame({"value": _data("sum").integers(0, 40, 300) / 4.0})
    plus = pd.concat([base, pd.DataFrame({"value": [SUM_BOUNDS[1]]})], ignore_index=True)  # at the bound
    d, d2 = (protect(f, label, bounds={"value": SUM_BOUNDS}) for f, label in ((base, "audit-sum"),
                                                                              (plus, "audit-sum-plus")))
    out = {"D": np.array([float(r) for r in draw(lambda: d["value"].sum(), m, epsilon=EPS)]),
           "D'": np.array([float(r) for r in draw(lambda: d2["value"].sum(), m, epsilon=EPS)])}
    events = _threshold_events(base["value"].sum(), plus["value"].sum(), steps=(1.0, 0.75, 0.5))
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_sum_extreme_patient():
    assert _sum_audit().epsilon_lower <= EPS


def test_audit_sum_extreme_patient_power_half_noise(monkeypatch):
    Broken(monkeypatch).scale(actual=0.5)
    assert _sum_audit().epsilon_lower > EPS


# -------------------------------------------------------------------------------------------- mean
MEAN_BOUNDS = (0.0, 100.0)
MEAN_M = 3500  # P(half noise missed) ~ 7e-8 (approximate law, see the sample-size test)


def _mean_audit(m=MEAN_M):
    """D: mean exactly at the centre; D'_max adds a patient at the upper bound, D'_nan one without a value."""
    half = _data("mean").integers(0, 50, 150).astype(float)
    base = pd.DataFrame({"value": np.r_[half, 100.0 - half]})  # clamped mean exactly 50
    plus_max = pd.concat([base, pd.DataFrame({"value": [MEAN_BOUNDS[1]]})], ignore_index=True)
    plus_nan = pd.concat([base, pd.DataFrame({"value": [np.nan]})], ignore_index=True)
    frames = {"D": base, "D'max": plus_max, "D'nan": plus_nan}
    out = {}
    for label, frame in frames.items():
        pf = protect(frame, "audit-mean", bounds={"value": MEAN_BOUNDS})
        out[label] = np.array([float(r) for r in draw(lambda: pf["value"].mean(), m, epsilon=EPS)])
    exact = {k: float(f["value"].mean()) for k, f in frames.items()}
    # A patient moves this mean by at most (H - L) / 2 / (n + 1) whatever the value (or its absence):
    # the missing-value patient is audited at the thresholds where such a shift would show.
    shift = (MEAN_BOUNDS[1] - MEAN_BOUNDS[0]) / 2 / (len(base) + 1)
    nan_events = (_threshold_events(exact["D"], exact["D"] + shift)
                  + _threshold_events(exact["D"], exact["D"] - shift))
    return (_print(audit(out, [("D'max", "D")], _threshold_events(exact["D"], exact["D'max"]), TEST_ALPHA / 2)),
            _print(audit(out, [("D'nan", "D")], nan_events, TEST_ALPHA / 2)))


def test_audit_mean_extreme_and_missing_patients():
    extreme, missing = _mean_audit()
    assert extreme.epsilon_lower <= EPS
    assert missing.epsilon_lower <= EPS


def _missing_counted_as_low_bound(monkeypatch):
    """A broken engine: missing values enter means as the lower bound (0) instead of being skipped."""
    numeric = LocalEngine._numeric
    monkeypatch.setattr(LocalEngine, "_notna", lambda self, expr, cache: None)
    monkeypatch.setattr(LocalEngine, "_numeric",
                        lambda self, expr, cache: np.nan_to_num(numeric(self, expr, cache), nan=0.0))


def test_audit_mean_power_half_noise(monkeypatch):
    # Half the noise, and missing values counted at the lower bound: both neighbours must show it.
    Broken(monkeypatch).scale(actual=0.5)
    _missing_counted_as_low_bound(monkeypatch)
    extreme, missing = _mean_audit()
    assert extreme.epsilon_lower > EPS
    assert missing.epsilon_lower > EPS


# ------------------------------------------------------------------------------------------ median
MEDIAN_M = 400  # P(quarter noise missed) = 2.4e-7; the slow test: half noise, 1800 (1e-8)
MEDIAN_SLOW_M = 1800
MEDIAN_DATA = np.arange(400.0, 501.0)  # 101 values on the candidate grid of the bounds (0, 1024)


def _median_audit(m=MEDIAN_M, epsilon=EPS):
    base = pd.DataFrame({"value": MEDIAN_DATA})
    plus = pd.DataFrame({"value": np.r_[MEDIAN_DATA, 1024.0]})  # a patient at the upper bound
    d, d2 = (protect(f, label, bounds={"value": (0, 1024)}) for f, label in ((base, "audit-median"),
                                                                             (plus, "audit-median-plus")))
    out = {"D": np.array([float(r) for r in draw(lambda: d["value"].median(), m, epsilon=epsilon)]),
           "D'": np.array([float(r) for r in draw(lambda: d2["value"].median(), m, epsilon=epsilon)])}
    # the exact medians are 450 (D) and 450.5 (D'); candidates are whole numbers
    events = [("out >= 451", lambda x: x >= 451), ("out >= 452", lambda x: x >= 452),
              ("out <= 450", lambda x: x <= 450)]
    return _print(audit(out, [("D'", "D")], events, TEST_ALPHA))


def test_audit_median_extreme_patient():
    assert _median_audit().epsilon_lower <= EPS


def test_audit_median_power_quarter_noise(monkeypatch):
    # A quarter of the noise (true epsilon 4x); half noise needs 1800 releases per side (slow test).
    Broken(monkeypatch).scale(actual=0.25)
    assert _median_audit().epsilon_lower > EPS


@pytest.mark.slow
def test_audit_median_slow():
    assert _median_audit(m=MEDIAN_SLOW_M).epsilon_lower <= EPS


@pytest.mark.slow
def test_audit_median_slow_power_half_noise(monkeypatch):
    Broken(monkeypatch).scale(actual=0.5)
    assert _median_audit(m=MEDIAN_SLOW_M).epsilon_lower > EPS


# ------------------------------------------------------------------------------- sample sizes
def _laplace_shift_events(scale, shift, thresholds):
    """(P[X >= t - shift], P[X >= t]) for discrete Laplace noise X: an output above t after a shift."""
    law = DiscreteLaplace(scale)
    return [(float(1 - law.cdf(t - shift - 1)), float(1 - law.cdf(t - 1))) for t in thresholds]


def _median_events(scale_rows):
    candidates = np.arange(1025.0)

    def errors(data):
        below = np.array([np.count_nonzero(data < c) for c in candidates])
        above = np.array([np.count_nonzero(data > c) for c in candidates])
        return np.abs(below - above) / 2.0

    p_base = noisy_max_probabilities(-errors(MEDIAN_DATA), scale_rows)
    p_plus = noisy_max_probabilities(-errors(np.r_[MEDIAN_DATA, 1024.0]), scale_rows)
    return [(p_plus[candidates >= t].sum(), p_base[candidates >= t].sum()) for t in (451, 452)]


def test_audit_sample_sizes_have_power():
    """The probability that each power test misses its break, from the exact laws (must be < 1e-6)."""
    # Bounds per audit: 4 per event and pair (two directions, a lower and an upper bound each).
    misses = {
        "count, half noise": audit_miss_probability(
            _laplace_shift_events(0.5 / EPS, 1, [1, 2]), COUNT_M, 4 * 4, TEST_ALPHA, EPS),
        "three rows, half noise": audit_miss_probability(
            _laplace_shift_events(1.5 / EPS, 3, [3, 2]), UNIT_M, 4 * 4, TEST_ALPHA, EPS),
        "three rows, factor 3 forgotten": audit_miss_probability(
            _laplace_shift_events(1.0 / EPS, 3, [3, 2]), UNIT_FACTOR_M, 4 * 4, TEST_ALPHA, EPS),
        "new category, half noise": audit_miss_probability(
            _laplace_shift_events(0.5 / EPS, 1, [1, 2]), GROUP_M, 4 * 3, TEST_ALPHA, EPS),
        "sum, half noise": audit_miss_probability(
            _laplace_shift_events(0.5 * LIMIT / EPS, LIMIT, [LIMIT, 3 * LIMIT // 4, LIMIT // 2]),
            SUM_M, 4 * 6, TEST_ALPHA, EPS),
        # mean: 80% of the loss on the centred sum, so a shift of 0.8 * (true epsilon) noise scales;
        # continuous Laplace, the count's noise (a 2.5% jitter of the denominator) left out
        "mean, half noise (approximate law)": audit_miss_probability(
            _laplace_shift_events(1e6 / (0.8 * 2 * EPS), 10**6, [10**6, 10**6 // 2]), MEAN_M, 4 * 4,
            TEST_ALPHA / 2, EPS),
        # exponential mechanism: scale 2 * max(q, 1 - q) / epsilon rows
        "median, quarter noise": audit_miss_probability(
            _median_events(0.25 / EPS), MEDIAN_M, 4 * 3, TEST_ALPHA, EPS),
        "median (slow), half noise": audit_miss_probability(
            _median_events(0.5 / EPS), MEDIAN_SLOW_M, 4 * 3, TEST_ALPHA, EPS),
    }
    print("\n".join(f"{k}: P(miss) = {v:.3g}" for k, v in misses.items()))
    assert all(v < 1e-6 for v in misses.values()), misses
