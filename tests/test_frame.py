"""Private frames: row-wise pandas work, releases, and everything that must be refused."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp

# With epsilon this large the noise is tiny: a release further than 8 half-widths of its own 95%
# interval from the exact answer happens with probability below 1e-10 (Laplace tails are e^-x).
BIG = 1000.0


def assert_near(release, exact):
    info = dp.info(release)
    half = max(float(np.max(np.asarray(info.ci_high) - np.asarray(info.ci_low))) / 2, 1e-9)
    assert abs(float(release) - float(exact)) <= 8 * half + 1e-6, (float(release), float(exact), half)


def spent(name):
    status = dp.budget(name)
    return status.epsilon_spent, status.releases


# --------------------------------------------------------------------------------- row-wise work
def test_rowwise_operations_match_pandas(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e6)
    h = hospital
    clamp = lambda s, lo, hi: s.clip(lo, hi)  # noqa: E731
    with dp.spending(epsilon=BIG):
        assert_near(pf["age"].mean(), h.age.mean())
        assert_near(pf.age.sum(), h.age.sum())
        assert_near(pf.count_rows(), len(h))
        assert abs(len(pf) - len(h)) <= 1
        assert_near(pf.shape[0], len(h))
        assert pf.shape[1] == h.shape[1]
        assert_near(pf.bmi.count(), h.bmi.count())
        assert_near(pf.bmi.mean(), h.bmi.mean())  # missing values skipped, as in pandas
        assert_near(pf[pf.age > 65].bmi.mean(), h[h.age > 65].bmi.mean())
        assert_near((pf[(pf.age > 65) & (pf.sex == "F")]).count_rows(), len(h[(h.age > 65) & (h.sex == "F")]))
        assert_near((pf[(pf.age < 30) | ~(pf.ward == "onco")]).count_rows(), len(h[(h.age < 30) | ~(h.ward == "onco")]))
        assert_near((pf[pf.diagnosis.isin(["copd", "asthma"])]).count_rows(), len(h[h.diagnosis.isin(["copd", "asthma"])]))
        assert_near((pf[pf.age.between(40, 60)]).count_rows(), len(h[h.age.between(40, 60)]))
        assert_near((pf[pf.bmi.notna()]).count_rows(), h.bmi.notna().sum())
        assert_near((pf[pf.bmi.isna()]).count_rows(), h.bmi.isna().sum())
        assert_near((pf.dropna()).count_rows(), len(h.dropna()))
        assert_near(pf.loc[pf.age > 50, "stay_days"].mean(), h.loc[h.age > 50, "stay_days"].mean())
        # arithmetic between columns and with scalars; bounds follow by interval arithmetic
        assert_near((pf.stay_days * 2 + 1).mean(), (h.stay_days * 2 + 1).mean())
        assert_near((pf.age - pf.stay_days).mean(), (h.age - h.stay_days).mean())
        assert_near((pf.age / 10).sum(), (h.age / 10).sum())
        pf2 = pf.assign(old=pf.age > 70, bmi_filled=pf.bmi.fillna(25.0))
        assert_near(pf2.old.mean(), (h.age > 70).mean())
        assert_near(pf2.bmi_filled.mean(), h.bmi.fillna(25.0).mean())
        pf["decades"] = pf.age // 10
        assert_near(pf.decades.mean(), (h.age // 10).mean())
        assert_near(pf.age.clip(30, 60).mean(), clamp(h.age, 30, 60).mean())
        assert_near(pf.age.astype(int).mean(), h.age.astype(int).mean())
        assert_near(pf.fillna({"bmi": 0.0}).bmi.sum(), h.bmi.fillna(0).sum())
        assert_near(pf.age.var(), h.age.var())
        assert_near(pf.age.std(), h.age.std())


def test_grouped_releases_include_declared_empty_groups(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e6)
    with dp.spending(epsilon=BIG):
        sizes = pf.groupby("ward").size()
        means = pf.groupby("ward")["age"].mean()
        both = pf.groupby(["ward", "sex"]).mean()
        counts = pf.diagnosis.value_counts()
        shares = pf.sex.value_counts(normalize=True)
        by_sex = pf.groupby("sex").bmi.count()
    assert isinstance(sizes, pd.Series) and list(sizes.index) == ["cardio", "onco", "ortho", "icu"]
    exact = hospital.groupby("ward").size()
    for ward in ["cardio", "onco", "ortho"]:
        assert abs(sizes[ward] - exact[ward]) <= 2
        assert abs(means[ward] - hospital[hospital.ward == ward].age.mean()) < 1
    assert sizes["icu"] <= 2  # a declared category with no patient is still a group
    assert isinstance(both, pd.DataFrame) and both.index.nlevels == 2 and len(both) == 8
    assert {"age", "bmi", "stay_days"} <= set(both.columns) and "patient_id" not in both.columns
    assert list(counts.values) == sorted(counts.values, reverse=True)
    assert abs(shares.sum() - 1) < 1e-9
    assert abs(by_sex["F"] - hospital[hospital.sex == "F"].bmi.count()) <= 2
    info = dp.info(sizes)
    assert list(info.ci_low.index) == list(sizes.index)


def test_release_values_behave_like_numbers(protect_hospital):
    pf = protect_hospital()
    with dp.spending(epsilon=1.0):
        mean = pf.age.mean()
        count = len(pf)
        rows = pf.shape[0]
    assert isinstance(mean, float) and isinstance(count, int) and isinstance(rows, int)
    assert mean * 2 == float(mean) * 2 and f"{mean:.1f}" == f"{float(mean):.1f}" and str(mean) == repr(float(mean))
    assert 0 <= mean <= 110
    info = dp.info(mean)
    assert info.epsilon == pytest.approx(1.0) and info.delta == 0.0
    assert info.ci_low <= mean <= info.ci_high and "Laplace" in info.mechanism
    assert "95% CI" in repr(mean) and "ε=1" in repr(mean) and "95% CI" in mean._repr_html_()
    with pytest.raises(dp.PrivacyError, match="not a DP release"):
        dp.info(mean * 2)


def test_frame_level_aggregations_skip_identifiers(protect_hospital):
    pf = protect_hospital()
    with dp.spending(epsilon=1.0):
        means = pf[["age", "stay_days", "patient_id"]].mean()
        counts = pf.count()
    assert list(means.index) == ["age", "stay_days"]
    assert "patient_id" not in counts.index and "sex" in counts.index
    assert dp.info(means).epsilon == pytest.approx(1.0)  # one release, epsilon shared by the columns


# ------------------------------------------------------------------------------------- refusals
REFUSALS = [
    lambda pf: pf.head(), lambda pf: pf.tail(3), lambda pf: pf.sample(5), lambda pf: pf.iloc[0],
    lambda pf: pf.loc[0], lambda pf: pf.values, lambda pf: pf.to_numpy(), lambda pf: np.asarray(pf),
    lambda pf: pf.to_dict(), lambda pf: pf.to_csv("x.csv"), lambda pf: pf.to_json(), lambda pf: list(pf.age),
    lambda pf: pf.age.unique(), lambda pf: pf.age.min(), lambda pf: pf.age.max(), lambda pf: pf.age.nunique(),
    lambda pf: pf.age.apply(lambda v: v), lambda pf: pf.age.map(str), lambda pf: pf.apply(len),
    lambda pf: pf.age.values, lambda pf: np.asarray(pf.age), lambda pf: pf.age.tolist(),
    lambda pf: pf.age[0], lambda pf: pf.age.iloc[0], lambda pf: pf.age.head(), lambda pf: pf.index,
    lambda pf: pf.iterrows(), lambda pf: bool(pf), lambda pf: float(pf.age), lambda pf: pf[1:3],
    lambda pf: pf.groupby("ward").head(), lambda pf: list(pf.groupby("ward")), lambda pf: pf.plot,
    lambda pf: pf.empty, lambda pf: pf.age.to_list(), lambda pf: pf.sort_values("age"),
]


@pytest.mark.parametrize("attempt", REFUSALS)
def test_refusals_raise_and_charge_nothing(protect_hospital, attempt):
    pf = protect_hospital()
    before = spent(pf.name)
    with dp.spending(epsilon=0.5):
        with pytest.raises(dp.PrivacyError) as caught:
            attempt(pf)
    message = str(caught.value)
    assert len(message) > 30 and any(w in message for w in ("%%dp", "instead", "use", "write"))
    assert spent(pf.name) == before


def test_descriptions_never_show_values(protect_hospital, hospital, ledger_path):
    canary = hospital.copy()
    canary.loc[3, "ward"] = "CANARY-WARD-93417"
    canary.loc[5, "age"] = 93417.25
    pf = dp.protect(canary, name="canary", epsilon=1.0, bounds={"age": (0, 110)})
    texts = [repr(pf), str(pf), pf._repr_html_(), repr(pf.age), repr(pf[pf.age > 3]), repr(pf.groupby("sex")
             if False else pf.age), repr(dp.policy("canary")), repr(dp.budget("canary"))]
    for text in texts:
        assert "CANARY" not in text and "93417" not in text


def test_outside_a_dp_scope_nothing_is_released(protect_hospital):
    pf = protect_hospital()
    for attempt in (lambda: pf.age.mean(), lambda: len(pf), lambda: pf.shape, lambda: pf.groupby("ward").size()):
        with pytest.raises(dp.PrivacyError, match="%%dp"):
            attempt()
    assert spent(pf.name) == (0.0, 0)
    assert "age" in repr(pf) and "quasi-identifier" in repr(pf)  # the schema is public


def test_identifiers_are_never_released(protect_hospital):
    pf = protect_hospital()
    with dp.spending(epsilon=0.5):
        for attempt in (lambda: pf.patient_id.mean(bounds=(0, 1000)), lambda: len(pf[pf.patient_id == 3]),
                        lambda: pf.patient_id.count()):
            with pytest.raises(dp.PolicyError, match="identifier"):
                attempt()
    assert spent(pf.name) == (0.0, 0)


# ----------------------------------------------------------------------------- epsilon defaults
def test_epsilon_precedence_call_over_scope_over_policy(protect_hospital):
    pf = protect_hospital()
    with dp.spending():
        by_policy = pf.stay_days.mean()  # standard tier x explore 0.1
        sensitive = pf.bmi.mean()  # sensitive tier: 0.25 x 0.1
    with dp.spending(purpose="publish"):
        published = pf.stay_days.mean()
    with dp.spending(epsilon=0.3):
        by_scope = pf.stay_days.mean()
        by_call = pf.stay_days.mean(epsilon=0.2)
    assert dp.info(by_policy).epsilon == pytest.approx(0.1)
    assert dp.info(sensitive).epsilon == pytest.approx(0.025)
    assert dp.info(published).epsilon == pytest.approx(0.5)
    assert dp.info(by_scope).epsilon == pytest.approx(0.3)
    assert dp.info(by_call).epsilon == pytest.approx(0.2)
    assert dp.budget(pf.name).epsilon_spent == pytest.approx(0.1 + 0.025 + 0.5 + 0.3 + 0.2)


def test_scope_budget_caps_a_block(protect_hospital):
    pf = protect_hospital()
    with dp.spending(budget=0.5):
        pf.age.mean(epsilon=0.3)
        with pytest.raises(dp.BudgetExceededError, match="budget"):
            pf.age.mean(epsilon=0.3)
        pf.age.mean(epsilon=0.2)
    assert dp.budget(pf.name).epsilon_spent == pytest.approx(0.5)


def test_tier_share_caps_spending_on_a_tier(protect_hospital):
    policy = dp.Policy(tiers={"sensitive": {"max_share": 0.1}})
    pf = protect_hospital(epsilon=10.0, policy=policy)
    with dp.spending(epsilon=0.5):
        pf.bmi.mean()
        pf.bmi.mean()
        with pytest.raises(dp.BudgetExceededError, match="sensitive"):
            pf.bmi.mean()
        pf.age.mean()  # other tiers still spend
    assert dp.budget(pf.name).epsilon_spent == pytest.approx(1.5)


def test_approximate_budget_uses_gaussian_noise_and_zcdp(protect_hospital):
    pf = protect_hospital(epsilon=2.0, delta=1e-6)
    with dp.spending(epsilon=0.5):
        mean = pf.age.mean()
        with_delta = pf.age.mean(delta=1e-7)
    info = dp.info(mean)
    status = dp.budget(pf.name)
    # epsilon is the release's share of the budget: a quarter of the total rho
    assert "Gaussian" in info.mechanism and info.rho == pytest.approx(status.rho_total / 4, rel=1e-9)
    assert dp.info(with_delta).rho == pytest.approx(dp.accountant.epsilon_delta_to_rho(0.5, 1e-7), rel=1e-9)
    assert status.rho_spent == pytest.approx(info.rho + dp.info(with_delta).rho)
    assert 0 < status.epsilon_spent < 2.0
    with dp.spending(epsilon=0.5):
        pf.age.mean()
        pf.age.mean()
        with pytest.raises(dp.BudgetExceededError):
            pf.age.mean()


def test_privacy_unit_bounds_each_persons_rows(ledger_path):
    people = np.repeat(np.arange(40), 1)
    heavy = np.full(500, 999)  # one patient with 500 visits
    frame = pd.DataFrame({"pid": np.r_[people, heavy], "cost": np.r_[np.full(40, 10.0), np.full(500, 100.0)]})
    pf = dp.protect(frame, name="visits", epsilon=1e6, privacy_unit="pid", max_rows_per_unit=3,
                    bounds={"cost": (0, 100)})
    with dp.spending(epsilon=BIG):
        rows = pf.count_rows()
        total = pf.cost.sum()
    assert 40 + 3 - 2 <= rows <= 40 + 3 + 2
    assert abs(total - (40 * 10 + 3 * 100)) < 5
    assert "3 row(s) per 'pid'" in " ".join(dp.info(rows).notes)
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PolicyError, match="identifier"):
            pf.pid.count()


def test_a_tier_cap_bounds_every_release_that_touches_the_tier(protect_hospital):
    policy = dp.Policy(tiers={"quasi-identifier": {"max_share": 0.02}})
    pf = protect_hospital(epsilon=10.0, policy=policy)
    with dp.spending(epsilon=0.1):
        pf.age.mean()
        pf.age.mean()
        with pytest.raises(dp.BudgetExceededError, match="quasi-identifier"):
            pf[pf.bmi.notna() | pf.bmi.isna()].age.mean()  # a sensitive filter does not move it out
        with pytest.raises(dp.BudgetExceededError, match="quasi-identifier"):
            pf.groupby("ward")["age"].mean()
    assert dp.budget(pf.name).epsilon_spent == pytest.approx(0.2)


def test_one_sided_clips_outside_the_bounds(protect_hospital, hospital):
    pf = protect_hospital(epsilon=1e6)
    with dp.spending(epsilon=BIG):
        for constant in (lambda: pf.age.clip(lower=200).mean(), lambda: pf.age.clip(upper=-5).sum()):
            with pytest.raises(dp.PolicyError, match="can only take the value"):
                constant()
        upper_half = pf.age.clip(lower=50).mean()
        share = pf.age.astype(bool).mean()
    assert_near(upper_half, hospital.age.clip(lower=50).mean())
    assert dp.info(upper_half).ci_low >= 50
    assert_near(share, hospital.age.astype(bool).mean())
    assert dp.info(share).ci_high - dp.info(share).ci_low < 0.01  # bounds (0, 1), not the age bounds


def test_pandas_constructors_spend_nothing(protect_hospital):
    pf = protect_hospital()
    with dp.spending(epsilon=0.1):
        for attempt in (lambda: pd.Series(pf.age), lambda: pd.DataFrame({"a": pf.age}), lambda: len(pf.age)):
            with pytest.raises(dp.PrivacyError):
                attempt()
        with pytest.raises(dp.PrivacyError, match="pickled"):
            __import__("pickle").dumps(pf)
    assert spent(pf.name) == (0.0, 0)
