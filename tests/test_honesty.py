"""Released intervals are honest, and a rare diagnosis stays hidden.

* Intervals: over many releases, the stated 95% intervals of grouped counts, sums and means cover
  the exact value (computed here with pandas on the same data) 94%-96% of the time, under a pure
  epsilon budget (discrete Laplace) and under a budget with delta (discrete Gaussian, zCDP).
* Rare diagnosis: a diagnosis held by 1 to 3 patients never shows up in a grouped count whose keys
  are chosen by DP partition selection, over 2000 releases, while every common diagnosis always does.

Each check's false-alarm probability for a correct implementation is below 1e-6 (computed below),
and the ``*_broken_*`` tests show the same checks fail on a deliberately broken implementation:
intervals 30% too narrow, and a partition-selection threshold of 0.5 rows.
"""

from __future__ import annotations

import math
import re
import sys
import zlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jupyter_dpmagic as dp  # noqa: E402
from jupyter_dpmagic import measures, mechanisms, session  # noqa: E402
from jupyter_dpmagic.accountant import SELECTION_DELTA_SHARE, SELECTION_RELEASES  # noqa: E402
from _honesty_stats import (  # noqa: E402
    TRUE_COVERAGE, band_check, band_false_alarm, binomial_miss, count_coverage, discrete_gaussian_tail,
    mean_coverage, samples_needed, smallest_selection_margin,
)
from _stats import LIMIT, Check, fast_ledger, protect, reject, require  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("fast_ledger")


def _data(tag: str):
    """A fixed generator per frame (the data only: noise never takes a seed)."""
    return np.random.default_rng(zlib.crc32(tag.encode()))


# ======================================================================== 1. honest intervals
GROUPS = [f"g{i:03d}" for i in range(1000)]
BOUNDS = (0.0, 64.0)  # sums on a grid of 64 / 2**23 = 2**-17, means (centred) of 2**-18
CENTRE, HALF = 32.0, 32.0

# Samples: the band [94%, 96%] is left with probability at most
# P(Bin(n, 0.947) < 0.94 n) + P(Bin(n, 0.953) > 0.96 n) when the true coverage lies anywhere in
# [0.947, 0.953] (see _honesty_stats.band_false_alarm). That is below 1e-6 from n = 24,050 on, and for
# every n >= 24,284 (it is not monotone: the band's edges are whole samples); 26 releases x 1000
# groups = 26,000 samples give 3.8e-7.
RELEASES = 26
SAMPLES = RELEASES * len(GROUPS)
FALSE_ALARM = 1e-6

# Noise scales. Discrete noise of a small scale covers more than 95% (its interval can only end on
# whole steps), so every scale is large compared with one step:
# * counts: discrete Laplace of scale 20 rows (epsilon 0.05), covering 0.9515 with the stated
#   half-width 60.4; discrete Gaussian of scale 100 (rho 1/20000). (At scale 20 one whole step of the
#   Gaussian's interval is worth about 0.002 of coverage, close to the edge of the range [0.947, 0.953]
#   assumed above; each test checks the exact coverage of the stated half-width before counting.)
# * sums: scale 128 in value units (Laplace: epsilon 0.5; Gaussian: rho 1/8), 2**24 grid steps;
# * means: 80% of the loss to the centred sum, 20% to the count. Count noise of scale 2 (Laplace:
#   epsilon 2.5; Gaussian: rho 0.625) and sum noise of scale 16 (Laplace) / 32 (Gaussian) in value
#   units. The count's noise enters the pivot only times the centred mean and smoothed by the
#   sum's noise, so its integer steps move coverage by at most +0.0015 (exact, in the test); a
#   larger count scale would make groups of 20 rows too small for an interval narrower than the
#   bounds (the pivot needs a noisy count above 2 * scale * ln 40), which also pushes coverage up.
COUNT_SCALE = {"laplace": 20.0, "gaussian": 100.0}
SUM_SCALE, MEAN_COUNT_SCALE = 128.0, 2.0
PURE_EPSILON = {"count": 1.0 / COUNT_SCALE["laplace"], "sum": BOUNDS[1] / SUM_SCALE,
                "mean": 1.0 / ((1.0 - measures.MEAN_SUM_SHARE) * MEAN_COUNT_SCALE)}
ZCDP_RHO = {"count": 1.0 / (2.0 * COUNT_SCALE["gaussian"] ** 2), "sum": (BOUNDS[1] / SUM_SCALE) ** 2 / 2.0,
            "mean": 1.0 / (2.0 * (1.0 - measures.MEAN_SUM_SHARE) * MEAN_COUNT_SCALE**2)}
ZCDP_DELTA = 1e-6
KINDS = ("laplace", "gaussian")
MEASURES = ("count", "sum", "mean")


@lru_cache(maxsize=1)
def _grouped_frame() -> pd.DataFrame:
    """1000 groups of 20 to 500 rows; each group's values spread around its own level in [1, 63].

    Values are quarters inside the bounds, so clamping changes nothing and every sum and centred
    sum lies exactly on the engine's grid: the exact answers below are the engine's exact answers.
    """
    rng = _data("honest-groups")
    sizes = rng.integers(20, 501, len(GROUPS))
    levels = rng.uniform(1.0, 63.0, len(GROUPS))
    values = np.repeat(levels, sizes) + rng.normal(0.0, 4.0, int(sizes.sum()))
    values = np.clip(np.round(values * 4.0) / 4.0, *BOUNDS)
    return pd.DataFrame({"g": np.repeat(GROUPS, sizes), "x": values})


@lru_cache(maxsize=1)
def _truth() -> dict:
    grouped = _grouped_frame().groupby("g")["x"]
    return {"count": grouped.size().reindex(GROUPS).to_numpy(dtype=float),
            "sum": grouped.sum().reindex(GROUPS).to_numpy(),
            "mean": grouped.mean().reindex(GROUPS).to_numpy()}


def _release_epsilon(pf_name: str, kind: str, measure: str) -> float:
    """The release epsilon that buys the planned noise: itself (pure) or the rho's share of the budget."""
    if kind == "laplace":
        return PURE_EPSILON[measure]
    status = dp.budget(pf_name)
    return ZCDP_RHO[measure] * status.epsilon_total / status.rho_total


def _coverage(kind: str, measure: str, releases: int = RELEASES):
    """``releases`` grouped releases of ``measure``; per (release, group): is the exact value covered?"""
    options = {"delta": ZCDP_DELTA} if kind == "gaussian" else {}
    pf = protect(_grouped_frame(), f"honest-{kind}-{measure}", bounds={"x": BOUNDS}, categories={"g": GROUPS},
                 **options)
    make = {"count": lambda: pf.groupby("g").size(), "sum": lambda: pf.groupby("g")["x"].sum(),
            "mean": lambda: pf.groupby("g")["x"].mean()}[measure]
    with dp.spending(epsilon=_release_epsilon(pf.name, kind, measure)):
        out = [make() for _ in range(releases)]
    exact = _truth()[measure]
    covered, halves = [], set()
    for r in out:
        info = dp.info(r)
        assert list(r.index) == GROUPS
        assert info.mechanism == ("discrete Laplace" if kind == "laplace" else "discrete Gaussian")
        if kind == "gaussian":  # the planned scale is the one charged
            assert info.rho == pytest.approx(ZCDP_RHO[measure], rel=1e-6)
        low = info.ci_low.reindex(GROUPS).to_numpy(dtype=float)
        high = info.ci_high.reindex(GROUPS).to_numpy(dtype=float)
        covered.append((low <= exact) & (exact <= high))
        if measure != "mean":
            halves.add(float(np.round(np.max(high - np.asarray(r, dtype=float)), 6)))
    return np.concatenate(covered), halves


def _expected_coverage(kind: str, measure: str, halves) -> tuple[float, float]:
    """What a correct implementation covers on average, from the noise laws (not from the package)."""
    if measure == "mean":
        if kind == "laplace":
            sum_scale = HALF / (measures.MEAN_SUM_SHARE * PURE_EPSILON["mean"])
        else:
            sum_scale = HALF / math.sqrt(2.0 * measures.MEAN_SUM_SHARE * ZCDP_RHO["mean"])
        truth = _truth()
        return mean_coverage(truth["mean"] - CENTRE, truth["count"], kind, sum_scale, MEAN_COUNT_SCALE,
                             usable_above=2.0 * MEAN_COUNT_SCALE * math.log(2.0 / 0.05))
    assert len(halves) == 1, f"one half-width per release kind, got {sorted(halves)[:5]}"
    half = halves.pop()
    if measure == "count":
        p = count_coverage(kind, COUNT_SCALE[kind], half)
    else:  # in grid steps of 64 / 2**23
        grid = BOUNDS[1] / LIMIT
        p = count_coverage(kind, SUM_SCALE / grid, half / grid)
    return p, p


def _honest(kind, measure):
    covered, halves = _coverage(kind, measure)
    expected = _expected_coverage(kind, measure, halves)
    print(f"{kind} {measure}: expected coverage in [{expected[0]:.5f}, {expected[1]:.5f}]")
    # The false-alarm bound holds for a true coverage in [0.947, 0.953]: these parameters keep it there.
    assert TRUE_COVERAGE[0] <= expected[0] <= expected[1] <= TRUE_COVERAGE[1], expected
    assert covered.size == SAMPLES >= samples_needed(FALSE_ALARM) and band_false_alarm(SAMPLES) < FALSE_ALARM
    return band_check(covered, f"{kind} grouped {measure}: 95% intervals cover 94%-96%")


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("kind", KINDS)
def test_intervals_cover_94_to_96_percent(kind, measure):
    require(_honest(kind, measure))


# ---------------------------------------------------------------- the same check, intervals too narrow
NARROWER = 0.7


def _narrow_intervals(monkeypatch, factor: float = NARROWER):
    """Every count, sum and mean interval ``factor`` times as wide, around the same midpoint."""
    half_width = mechanisms.Noise.half_width
    monkeypatch.setattr(mechanisms.Noise, "half_width", lambda self, alpha: factor * half_width(self, alpha))
    mean_interval = measures._mean_interval

    def narrow(*args, **kwargs):
        low, high = mean_interval(*args, **kwargs)
        mid, half = (low + high) / 2.0, (high - low) / 2.0
        return mid - factor * half, mid + factor * half

    monkeypatch.setattr(measures, "_mean_interval", narrow)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("kind", KINDS)
def test_broken_narrow_intervals_are_caught(monkeypatch, kind, measure):
    # Intervals 30% narrower cover P(|X| <= 0.7 x half-width) under the laws: counts 0.881 (Laplace)
    # and 0.831 (Gaussian), sums 1 - 20**-0.7 = 0.877 and 2 Phi(0.7 x 1.96) - 1 = 0.830; the means'
    # measure about the same (0.87, 0.83). With 26,000 samples a true coverage of 0.92 would still
    # reach 94% with probability 1.7e-35.
    _narrow_intervals(monkeypatch)
    covered, _ = _coverage(kind, measure)
    check = band_check(covered, f"{kind} grouped {measure}, intervals {NARROWER:g}x as wide")
    reject(check)
    assert covered.mean() < 0.92, check
    assert binomial_miss(covered.size, 0.92) < 1e-30


# ===================================================================== 2. a rare diagnosis stays hidden
MAX_ROWS = 3
COMMON = ("hypertension", "type 2 diabetes", "copd")
RARE = {"fabry disease": 3, "pompe disease": 2, "gaucher disease": 1}  # diagnosis: patients holding it
RUNS_PER_DATASET = SELECTION_RELEASES  # each budget's delta reserve pays for this many selections
DATASETS = 20  # 2000 releases
# The budget's delta: 1e-9 reserved for selection, 1e-11 per release. With delta 1e-6 (1e-9 per
# release) the bound below would be 2.1e-6 over 2000 releases, 1e-7 gives 2.0e-7, 1e-8 gives 2.0e-8.
RARE_DELTA = 1e-8
RARE_SIGMA = 30.0  # the count's discrete Gaussian; the common diagnoses hold >= 600 rows
RARE_BUDGET = 1000.0


@lru_cache(maxsize=1)
def _patients() -> pd.DataFrame:
    """900 patients with 1-5 visits each and one diagnosis on all of them.

    The rare diagnoses' patients have 5 visits each, more than the 3 rows per patient a release
    counts: after bounding, each of them puts exactly 3 rows into their diagnosis.
    """
    rng = _data("rare-diagnosis")
    n = 900
    visits = rng.integers(1, 6, n)
    diagnosis = rng.choice(COMMON, n, p=[0.4, 0.3, 0.3]).astype(object)
    start = 0
    for name, holders in RARE.items():
        diagnosis[start:start + holders] = name
        visits[start:start + holders] = 5
        start += holders
    patient = np.repeat(np.arange(n), visits)
    return pd.DataFrame({"patient_id": patient, "diagnosis": diagnosis[patient].astype(str)})


def _bounded_counts() -> dict:
    """Rows per diagnosis once each patient counts at most MAX_ROWS (all of a patient's rows share it)."""
    frame = _patients()
    per_patient = frame.groupby("patient_id").agg(diagnosis=("diagnosis", "first"), rows=("diagnosis", "size"))
    bounded = per_patient.assign(rows=per_patient["rows"].clip(upper=MAX_ROWS))
    return bounded.groupby("diagnosis")["rows"].sum().to_dict()


def _selection_runs(datasets: int, runs: int = RUNS_PER_DATASET):
    """``datasets`` fresh budgets x ``runs`` releases of counts by diagnosis; the keys shown in each."""
    shown, infos = [], []
    for d in range(datasets):
        # New data for each budget (the ledger refuses the same data under a second name).
        frame = _patients().assign(batch=f"run-{d}")
        pf = protect(frame, "rare-diagnosis", epsilon=RARE_BUDGET, delta=RARE_DELTA, privacy_unit="patient_id",
                     max_rows_per_unit=MAX_ROWS)
        status = dp.budget(pf.name)
        per_release = status.selection_delta_total / SELECTION_RELEASES
        rho = MAX_ROWS**2 / (2.0 * RARE_SIGMA**2)
        with dp.spending(epsilon=rho * status.epsilon_total / status.rho_total):
            for i in range(runs):
                r = pf.groupby("diagnosis").size() if i % 2 else pf["diagnosis"].value_counts()
                info = dp.info(r)
                assert info.delta == pytest.approx(per_release, rel=1e-9)  # no Gaussian delta: all selection
                assert info.rho == pytest.approx(rho, rel=1e-6)
                shown.append(set(r.index))
                infos.append(info)
    return shown, infos


def _threshold(info) -> float:
    note = next(n for n in info.notes if "partition selection" in n)
    return float(re.search(r"exceeds (\d+(?:\.\d+)?)", note).group(1))


def _hidden_checks(shown, infos):
    rare_seen = {name: sum(name in keys for keys in shown) for name in RARE}
    common_missing = {name: sum(name not in keys for keys in shown) for name in COMMON}
    n = len(shown)
    return (Check("rare diagnoses (1-3 patients) never shown", not any(rare_seen.values()),
                  f"shown in {rare_seen} of {n} releases", "never"),
            Check("common diagnoses shown in every release", not any(common_missing.values()),
                  f"missing from {common_missing} of {n} releases", "never"))


def test_rare_diagnosis_stays_hidden():
    shown, infos = _selection_runs(DATASETS)
    assert len(shown) == DATASETS * RUNS_PER_DATASET == 2000
    delta = infos[0].delta  # 1e-11 per release: a 1e-9 reserve / 100 releases
    assert delta == pytest.approx(RARE_DELTA * SELECTION_DELTA_SHARE / SELECTION_RELEASES, rel=1e-9)
    # The design: a group is shown if its noisy count exceeds MAX_ROWS + a, with P(|Z| >= a) <= delta / 3
    # (one patient's 3 rows can reach at most 3 groups). For sigma 30 and delta / 3 = 3.3e-12 the
    # smallest integer j with P(|Z| >= j) <= delta / 3 is 210, so a > 209 (the package shows 213.0).
    j = smallest_selection_margin(RARE_SIGMA, delta / MAX_ROWS)
    assert all(_threshold(info) > MAX_ROWS + j - 1 - 0.05 for info in infos[:: RUNS_PER_DATASET])
    # A diagnosis of k patients holds 3k rows and is shown when 3k + Z > 3 + a, so with probability
    # at most P(Z >= j + 3 - 3k): 1.4e-12 (k=1, below delta / 6), 2.9e-12 (k=2), 5.9e-12 (k=3: group
    # privacy's price, 3.5 x delta / 6), together 1.02e-11 per release. Over 2000 releases any of
    # them is shown with probability at most 2.0e-8.
    per_release = sum(discrete_gaussian_tail(RARE_SIGMA, j + MAX_ROWS - MAX_ROWS * k) for k in RARE.values())
    leak_bound = len(shown) * per_release
    # A common diagnosis (614 to 884 rows after bounding) is missing when its count + Z <= the
    # threshold shown (213): P(Z <= -401) < 1e-40 per release and diagnosis, 1.2e-37 in all.
    counts = _bounded_counts()
    threshold = max(_threshold(info) for info in infos)
    miss_bound = len(shown) * sum(discrete_gaussian_tail(RARE_SIGMA, int(counts[c] - math.floor(threshold)))
                                  for c in COMMON)
    print(f"per-release delta {delta:.3g}, j={j}, threshold {threshold}, rare rows "
          f"{ {k: counts[k] for k in RARE} }, common rows { {k: counts[k] for k in COMMON} }; "
          f"P(rare shown in a release) <= {per_release:.3g}, in any of {len(shown)}: <= {leak_bound:.3g}; "
          f"P(a common one missing anywhere) <= {miss_bound:.3g}")
    assert {k: counts[k] for k in RARE} == {k: MAX_ROWS * v for k, v in RARE.items()}
    assert min(counts[c] for c in COMMON) >= 600
    assert leak_bound + miss_bound < 1e-6
    require(*_hidden_checks(shown, infos))


def test_rare_diagnosis_broken_threshold_is_caught(monkeypatch):
    # A threshold of 0.5 rows instead of 213: the 9 rows of the 3-patient diagnosis pass with
    # probability P(Z >= -8) = 0.61, the 3 rows of the 1-patient one with P(Z >= -2) = 0.53. One
    # budget's 100 releases show none of them with probability below 0.39**100 = 1e-41, and the
    # 3-patient diagnosis in at most 30 of them with probability P(Bin(100, 0.61) <= 30) < 1e-9.
    original = session._draft

    def broken(*args, **kwargs):
        planned = original(*args, **kwargs)
        return planned if planned.threshold is None else replace(planned, threshold=0.5)

    monkeypatch.setattr(session, "_draft", broken)
    shown, infos = _selection_runs(1)
    rare_check, _ = _hidden_checks(shown, infos)
    rates = {name: sum(name in keys for keys in shown) / len(shown) for name in RARE}
    print(f"threshold 0.5: rare diagnoses shown in {rates} of {len(shown)} releases")
    reject(rare_check)
    assert rates["fabry disease"] > 0.3, rates
