"""Medical-grade semantics: patients with many rows, undeclared groups, estimated bounds, describe, crosstab."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic import plan as P
from jupyter_dpmagic.engine.local import LocalEngine
from jupyter_dpmagic.measures import LIMIT, compile_measure

ESTIMATE = dp.Policy(tiers={t: {"missing_bounds": "estimate"} for t in ("public", "standard", "quasi-identifier")})


def spent(name):
    status = dp.budget(name)
    return status.releases, status.epsilon_spent


@pytest.fixture
def cohort():
    return dp.synthetic_cohort(1500, seed=11)


# ----------------------------------------------------------------------------- patients with many rows
@pytest.mark.parametrize("k", [1, 3, 10])
def test_a_patient_with_500_visits_moves_no_release_more_than_the_bound(cohort, k):
    assert (cohort.patient_id == 0).sum() == 500
    # Everyone else already has at most k rows, so only patient 0's rows are drawn at random and the
    # two tables differ by exactly that one patient (the neighbouring datasets of the guarantee).
    without = cohort[cohort.patient_id != 0].groupby("patient_id").head(k).reset_index(drop=True)
    cohort = pd.concat([cohort[cohort.patient_id == 0], without], ignore_index=True)
    ward = P.GroupKey("ward", P.Col("ward"), tuple(dp.COHORT_CATEGORIES["ward"]))
    stay = P.Sum(P.Col("length_of_stay"), 0.0, 60.0)
    count, total = P.RowCount(), compile_measure(stay).primitives[0]
    for by in ((), (ward,)):
        query = P.Query("v", (stay,), by=by, unit="patient_id", max_rows=k)
        engines = LocalEngine(cohort), LocalEngine(without)
        for _ in range(20):  # the rows kept are drawn afresh each time: the bound holds for every draw
            with_counts, with_sums = engines[0].run(query, [count, total])
            base_counts, base_sums = engines[1].run(query, [count, total])
            # L1 distance over groups: at most k rows of one person, each moving a sum by one term's bound.
            assert sum(abs(a - b) for a, b in zip(with_counts, base_counts)) == k
            assert sum(abs(a - b) for a, b in zip(with_sums, base_sums)) <= k * LIMIT


def test_noise_follows_the_contribution_bound(cohort, dataset_name):
    scales = []
    for k in (1, 4):
        pf = dp.protect(cohort.assign(run=str(k)), name=f"{dataset_name}{k}", epsilon=10.0, privacy_unit="patient_id",
                        max_rows_per_unit=k, bounds=dp.COHORT_BOUNDS, categories=dp.COHORT_CATEGORIES)
        with dp.spending(epsilon=1.0):
            info = dp.info(pf.count_rows())
        scales.append(float(info.accuracy.split("±")[1].split()[0]))
        assert f"at most {k} row(s) per 'patient_id'" in " ".join(info.notes)
    assert 3.5 <= scales[1] / scales[0] <= 4.5  # four times the rows per person, four times the noise


def test_max_groups_keeps_each_person_in_few_groups():
    frame = pd.DataFrame({"pid": np.repeat(np.arange(200), 5), "g": np.tile(list("abcde"), 200)})
    key = P.GroupKey("g", P.Col("g"), tuple("abcde"))
    query = P.Query("d", (P.Count(),), by=(key,), unit="pid", max_rows=5, max_groups=2)
    full = LocalEngine(frame).run(query, [P.RowCount()])[0]
    assert sum(full) == 200 * 2  # every person keeps rows of exactly two of their five groups
    alone = LocalEngine(frame[frame.pid == 0]).run(query, [P.RowCount()])[0]
    assert sum(1 for c in alone if c) == 2


def test_the_unit_column_is_never_released_or_a_group_key(cohort, dataset_name):
    pf = dp.protect(cohort, name=dataset_name, epsilon=5.0, delta=1e-6, privacy_unit="patient_id",
                    max_rows_per_unit=3, bounds=dp.COHORT_BOUNDS, categories=dp.COHORT_CATEGORIES)
    with dp.spending(epsilon=0.5):
        for attempt in (lambda: pf.patient_id.mean(bounds=(0, 2000)), lambda: pf.groupby("patient_id").size(),
                        lambda: pf.patient_id.value_counts()):
            with pytest.raises(dp.PolicyError, match="identifier"):
                attempt()
    assert spent(dataset_name) == (0, 0.0)


# ----------------------------------------------------------------------------- partition selection
def test_partition_selection_needs_a_delta_and_names_categories(cohort, dataset_name):
    pf = dp.protect(cohort, name=dataset_name, epsilon=5.0, privacy_unit="patient_id", max_rows_per_unit=3,
                    bounds=dp.COHORT_BOUNDS)
    with dp.spending(epsilon=0.5):
        for attempt in (lambda: pf.diagnosis.value_counts(), lambda: pf.groupby("ward").size(),
                        lambda: pd.crosstab(pf.sex, pf.ward)):
            with pytest.raises(dp.PolicyError, match="categories=") as caught:
                attempt()
            assert "delta" in str(caught.value)
    assert spent(dataset_name) == (0, 0.0)


def test_partition_selection_releases_common_groups_and_spends_its_delta(cohort, dataset_name):
    pf = dp.protect(cohort, name=dataset_name, epsilon=50.0, delta=1e-6, privacy_unit="patient_id",
                    max_rows_per_unit=3, bounds=dp.COHORT_BOUNDS)
    with dp.spending(epsilon=1.0):
        counts = pf.diagnosis.value_counts()
        stays = pf.groupby("diagnosis")["length_of_stay"].mean()
    common = {"hypertension", "type 2 diabetes", "copd", "asthma", "heart failure"}
    assert set(counts.index) == common == set(stays.index)
    info = dp.info(counts)
    assert "partition selection" in info.mechanism and any("partition selection" in n for n in info.notes)
    status = dp.budget(dataset_name)
    assert status.selection_delta_spent == pytest.approx(2 * status.selection_delta_total / 100)
    assert info.delta >= status.selection_delta_total / 100
    # Released groups come sorted by key, never in the order the data holds them.
    assert list(counts.sort_index().index) == sorted(common)


def test_partition_selection_stops_when_its_delta_is_used_up(dataset_name):
    frame = pd.DataFrame({"code": np.repeat(["a", "b"], 500)})
    pf = dp.protect(frame, name=dataset_name, epsilon=1e6, delta=1e-6)
    with dp.spending(epsilon=1.0):
        for _ in range(100):
            pf.code.value_counts()
        with pytest.raises(dp.BudgetExceededError, match="categories"):
            pf.code.value_counts()
    assert dp.budget(dataset_name).releases == 100


def test_max_groups_lowers_the_selection_threshold(cohort, dataset_name):
    thresholds = []
    for g in (None, 1):
        pf = dp.protect(cohort.assign(g=str(g)), name=f"{dataset_name}{g}", epsilon=50.0, delta=1e-6,
                        privacy_unit="patient_id", max_rows_per_unit=10, max_groups_per_unit=g,
                        bounds=dp.COHORT_BOUNDS)
        with dp.spending(epsilon=1.0):
            note = next(n for n in dp.info(pf.ward.value_counts()).notes if "exceeds" in n)
        thresholds.append(float(note.split("exceeds ")[1].split()[0]))
    assert thresholds[1] < thresholds[0]


# ---------------------------------------------------------------------------------- estimated bounds
def test_estimated_bounds_are_paid_once_and_said(dataset_name):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"stay": rng.integers(1, 40, 20_000).astype(float)})
    pf = dp.protect(frame, name=dataset_name, epsilon=10.0, policy=ESTIMATE)
    with dp.spending(epsilon=1.0):
        first = pf.stay.mean()
        second = pf.stay.sum()
    history = dp.history(dataset_name).charges
    assert [c.query for c in history] == ["bounds of stay", "mean(stay)", "sum(stay)"]
    assert [round(c.epsilon, 9) for c in history] == [0.25, 0.75, 1.0]  # a stated share, once
    notes = " ".join(dp.info(first).notes)
    assert "estimated now" in notes and "ε=0.25" in notes
    assert "estimated earlier" in " ".join(dp.info(second).notes)
    low, high = (float(x) for x in notes.split("as [")[1].split("]")[0].split(", "))
    # Non-negative data starts at 0; the top is the data's top bin on the log grid plus one bin of margin.
    assert low == 0 and 45.25 <= high <= 64
    assert abs(first - frame.stay.mean()) < 2


def test_sensitive_columns_refuse_missing_bounds_and_charge_nothing(dataset_name):
    frame = pd.DataFrame({"hba1c": np.linspace(4, 12, 300), "stay": np.arange(300.0)})
    pf = dp.protect(frame, name=dataset_name, epsilon=5.0, policy=ESTIMATE)
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PolicyError, match="tier 'sensitive'") as caught:
            pf.hba1c.mean()
        assert "bounds={'hba1c': (low, high)}" in str(caught.value)
        with pytest.raises(dp.PolicyError, match="bounds"):
            (pf.hba1c + pf.stay).sum()
    assert spent(dataset_name) == (0, 0.0)


def test_a_constant_column_is_refused_before_any_budget_exists(dataset_name):
    frame = pd.DataFrame({"site": np.ones(50), "stay": np.arange(50.0)})
    with pytest.raises(dp.PolicyError, match="single value") as caught:
        dp.protect(frame, name=dataset_name, epsilon=1.0, policy=ESTIMATE)
    assert "bounds=" in str(caught.value) and "drop" in str(caught.value)
    with pytest.raises(dp.PolicyError, match="no dataset named"):
        dp.budget(dataset_name)
    # With declared bounds there is nothing to estimate, and the column is fine.
    dp.protect(frame, name=dataset_name, epsilon=1.0, policy=ESTIMATE, bounds={"site": (0, 2)})


def test_an_estimate_the_budget_cannot_finish_charges_nothing(dataset_name):
    frame = pd.DataFrame({"stay": np.arange(1000.0)})
    pf = dp.protect(frame, name=dataset_name, epsilon=0.5, policy=ESTIMATE)
    with dp.spending(epsilon=0.8):
        with pytest.raises(dp.BudgetExceededError, match="nothing was charged"):
            pf.stay.mean()
    assert spent(dataset_name) == (0, 0.0)


# ----------------------------------------------------------------------------- describe, crosstab...
def test_describe_is_one_release_with_a_shared_split(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e6)
    with dp.spending(epsilon=500.0):
        table = pf[["age", "bmi"]].describe()
        column = pf.age.describe()
    assert list(table.index) == ["count", "mean", "std", "25%", "50%", "75%"]
    assert list(table.columns) == ["age", "bmi"]
    exact = hospital[["age", "bmi"]].describe()
    for name in ("age", "bmi"):
        assert abs(table.loc["count", name] - exact.loc["count", name]) <= 3
        assert abs(table.loc["mean", name] - exact.loc["mean", name]) < 0.5
        assert abs(table.loc["std", name] - exact.loc["std", name]) < 1.0
        assert abs(table.loc["50%", name] - exact.loc["50%", name]) < 2.0
    assert dp.budget(pf.name).releases == 2  # each describe() is one charge
    info = dp.info(table)
    assert any("split evenly over 12 statistics" in n for n in info.notes)
    assert info.ci_low.loc["mean", "age"] <= table.loc["mean", "age"] <= info.ci_high.loc["mean", "age"]
    assert np.isnan(info.ci_low.loc["50%", "age"])  # quantiles state rank accuracy, not an interval
    assert list(column.index) == list(table.index) and column.name == "age"


def test_crosstab_and_normalized_counts(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e6)
    with dp.spending(epsilon=500.0):
        table = pd.crosstab(pf.sex, pf.ward)
        shares = pd.crosstab(pf.sex, pf.ward, normalize="index")
        proportions = pf.diagnosis.value_counts(normalize=True)
    exact = pd.crosstab(hospital.sex, hospital.ward).reindex(columns=["cardio", "onco", "ortho", "icu"], fill_value=0)
    assert (table.loc[exact.index, exact.columns] - exact).abs().to_numpy().max() <= 3
    assert table.loc["F", "icu"] <= 3  # declared but empty: released, near 0
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert proportions.sum() == pytest.approx(1.0)
    assert dp.budget(pf.name).releases == 3
    # Outside private data pandas is untouched.
    assert pd.crosstab(hospital.sex, hospital.ward).equals(exact.drop(columns="icu"))


def test_several_quantiles_and_refused_nunique(protect_hospital):
    pf = protect_hospital(epsilon=1e6)
    with dp.spending(epsilon=100.0):
        qs = pf.age.quantile([0.9, 0.1, 0.5])
        with pytest.raises(dp.PrivacyError, match="not supported"):
            pf.ward.nunique()
    assert list(qs.index) == [0.9, 0.1, 0.5] and qs[0.1] <= qs[0.5] <= qs[0.9]
    assert dp.budget(pf.name).releases == 1


def test_estimated_bounds_survive_a_restart(dataset_name, monkeypatch):
    import jupyter_dpmagic.session as session_module

    frame = pd.DataFrame({"stay": np.arange(1, 2001) % 37 + 1.0})
    pf = dp.protect(frame, name=dataset_name, epsilon=10.0, policy=ESTIMATE)
    with dp.spending(epsilon=1.0):
        pf.stay.mean()
    monkeypatch.setattr(session_module, "_session", None)  # a new kernel: nothing in memory
    again = dp.protect(frame, name=dataset_name, epsilon=10.0, policy=ESTIMATE)
    with dp.spending(epsilon=1.0):
        later = again.stay.mean()
    assert [c.query for c in dp.history(dataset_name).charges] == ["bounds of stay", "mean(stay)", "mean(stay)"]
    assert "estimated earlier" in " ".join(dp.info(later).notes)


@pytest.mark.parametrize("total, parts", [(100.0, 100), (10.0, 10), (1.0, 10), (3.0, 7)])
def test_equal_shares_fill_a_delta_budget_exactly(dataset_name, total, parts):
    pf = dp.protect(pd.DataFrame({"x": np.arange(50)}), name=dataset_name, epsilon=total, delta=1e-6)
    with dp.spending(epsilon=total / parts):
        for _ in range(parts):
            pf.count_rows()
        with pytest.raises(dp.BudgetExceededError):
            pf.count_rows()
    status = dp.budget(dataset_name)
    assert status.releases == parts and status.rho_total - status.rho_spent < parts * 1e-12


def test_rows_kept_are_uniform_within_a_person():
    # Person 0 has 10 rows, persons 1..50 have 1 to 3 rows (kept whole), person 51 has 4.
    people = np.r_[np.zeros(10, int), np.repeat(np.arange(1, 51), np.arange(50) % 3 + 1), np.full(4, 51)]
    engine = LocalEngine(pd.DataFrame({"pid": people}))
    runs, kept = 6000, np.zeros(len(people))
    for _ in range(runs):
        mask = engine._bound(None, "pid", 3)
        assert mask[:10].sum() == 3 and mask[-4:].sum() == 3 and mask[10:-4].all()
        kept += mask
    # Each of person 0's rows is kept with probability 3/10: Binomial(6000, 0.3) has sd 35.5, and
    # 6 sd on either side fails with probability 2e-9 per row (below 1e-6 for all 14 rows).
    assert np.all(np.abs(kept[:10] - 0.3 * runs) <= 6 * np.sqrt(runs * 0.3 * 0.7))
    assert np.all(np.abs(kept[-4:] - 0.75 * runs) <= 6 * np.sqrt(runs * 0.75 * 0.25))


def test_a_publish_reserve_is_kept_from_exploration(dataset_name):
    policy = dp.Policy(purposes={"publish": {"epsilon": 0.5, "reserve": 0.4}})
    pf = dp.protect(pd.DataFrame({"x": np.arange(100)}), name=dataset_name, epsilon=1.0, policy=policy)
    with dp.spending(purpose="explore", epsilon=0.2):
        pf.count_rows(), pf.count_rows(), pf.count_rows()
        with pytest.raises(dp.BudgetExceededError, match="publish"):
            pf.count_rows()  # 0.8 would eat into the 0.4 kept for publish
    with dp.spending(purpose="publish", epsilon=0.4):
        pf.count_rows()
    status = dp.budget(dataset_name)
    assert status.purpose_spent == pytest.approx({"explore": 0.6, "publish": 0.4})
    assert status.purpose_remaining["explore"] == pytest.approx(0.0)
    text = str(status)
    assert "publish" in text and "reserved" in text


def test_bound_estimates_keep_neighbouring_bins_and_ignore_lone_noise():
    from fractions import Fraction

    from jupyter_dpmagic import bounds, mechanisms

    noise = mechanisms.laplace(sensitivity=1, epsilon=Fraction(1, 4), vector=True)
    high = noise.half_width(bounds.FALSE_BIN / (len(bounds.GRID) - 1))
    near = noise.half_width(bounds.NEAR_BIN)
    at = {edge: i for i, edge in enumerate(bounds.GRID)}
    counts = np.zeros(len(bounds.GRID) - 1)
    counts[at[16.0]] = counts[at[16.0 * 2 ** 0.5]] = high + 100  # the bulk: [16, 32)
    counts[at[32.0]] = counts[at[32.0 * 2 ** 0.5]] = (near + high) / 2  # a sparse tail next to it
    counts[at[2.0 ** 30]] = (near + high) / 2  # a lone noisy bin far away
    assert bounds.bounds_from(counts, noise) == (0.0, 2.0 ** 6.5)  # tail kept, one bin of margin, from 0
    counts[at[-4.0]] = high + 1  # a negative value: the lower bound follows it, one bin wider
    assert bounds.bounds_from(counts, noise)[0] == -(2.0 ** 2.5)
