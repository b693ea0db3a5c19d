"""Every bad input gets a clear error that says what to do, and charges nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp

BAD_RELEASES = [
    ("epsilon nan", lambda pf: pf.age.mean(epsilon=float("nan")), "epsilon"),
    ("epsilon inf", lambda pf: pf.age.mean(epsilon=float("inf")), "epsilon"),
    ("epsilon zero", lambda pf: pf.age.mean(epsilon=0), "epsilon"),
    ("epsilon negative", lambda pf: pf.age.mean(epsilon=-0.5), "epsilon"),
    ("epsilon bool", lambda pf: pf.age.mean(epsilon=True), "epsilon"),
    ("epsilon text", lambda pf: pf.age.mean(epsilon="0.1"), "epsilon"),
    ("epsilon above what remains", lambda pf: pf.age.mean(epsilon=3.0), "remains"),
    ("delta on a pure budget", lambda pf: pf.age.mean(delta=1e-6), "delta"),
    ("delta negative", lambda pf: pf.age.mean(delta=-1e-6), "delta"),
    ("delta nan", lambda pf: pf.age.mean(delta=float("nan")), "delta"),
    ("unknown column", lambda pf: pf["agee"].mean(), "Did you mean 'age'"),
    ("text column mean", lambda pf: pf.ward.mean(), "numeric"),
    ("text column sum", lambda pf: pf.diagnosis.sum(), "numeric"),
    ("no bounds on a sensitive column", lambda pf: pf.hba1c.mean(), "bounds={'hba1c'"),
    ("accuracy with a mean", lambda pf: _with_accuracy(pf, lambda: pf.age.mean()), "--epsilon"),
    ("relative accuracy of a count", lambda pf: _with_accuracy(pf, lambda: len(pf), "5%"), "absolute"),
    ("unreachable accuracy", lambda pf: _with_accuracy(pf, lambda: pf.age.sum(bounds=(0, 1e15)), 1e-6),
     "looser accuracy"),
    ("partition selection on a pure budget", lambda pf: pf.diagnosis.value_counts(), "categories="),
    ("histogram of text", lambda pf: pf.ward.plot.hist(), "value_counts"),
    ("histogram with bins from data", lambda pf: pf.age.plot.hist(bins=[1, 2]), "never the data"),
    ("reversed call bounds", lambda pf: pf.age.mean(bounds=(110, 0)), "reversed"),
    ("single-value bounds", lambda pf: pf.age.mean(bounds=(5, 5)), "low < high"),
    ("non-finite bounds", lambda pf: pf.age.mean(bounds=(0, float("inf"))), "finite"),
    ("bounds too large to sum", lambda pf: pf.age.sum(bounds=(0, 1e300)), "rescale"),
    ("derived bounds too large", lambda pf: (pf.age * 1e300).mean(), "rescale"),
    ("groupby undeclared", lambda pf: pf.groupby("diagnosis").size(), "categories="),
    ("value_counts undeclared", lambda pf: pf.diagnosis.value_counts(), "categories="),
    ("isin nothing", lambda pf: pf[pf.ward.isin([])].age.mean(), "isin"),
    ("between reversed", lambda pf: pf[pf.age.between(60, 40)].age.mean(), "between"),
    ("contradicting filters", lambda pf: pf[(pf.age > 70) & (pf.age < 30)].age.mean(), "selects nothing"),
    ("undeclared category value", lambda pf: pf[pf.ward == "cardoi"].age.mean(), "Did you mean 'cardio'"),
    ("quantile out of range", lambda pf: pf.age.quantile(1.5), "between 0 and 1"),
    ("ddof negative", lambda pf: pf.age.var(ddof=-1), "ddof"),
    ("string arithmetic", lambda pf: (pf.ward + 1).mean(), "numeric"),
    ("and without parentheses", lambda pf: pf[pf.age > 3 and pf.age < 5], "&"),
    ("unknown purpose", lambda pf: _with_purpose(pf, "publsh"), "publish"),
]


def _with_purpose(pf, purpose):
    with dp.spending(purpose=purpose):
        return pf.age.mean()


def _with_accuracy(pf, release, accuracy=1):
    with dp.spending(accuracy=accuracy):
        return release()


@pytest.fixture
def frame():
    rng = np.random.default_rng(3)
    n = 200
    return pd.DataFrame({
        "age": rng.uniform(18, 90, n), "weight": rng.uniform(40, 120, n),
        "ward": rng.choice(["cardio", "onco"], n), "diagnosis": rng.choice(["a", "b"], n),
        "hba1c": rng.uniform(4, 12, n),
    })


@pytest.mark.parametrize("label, attempt, advice", BAD_RELEASES, ids=[b[0] for b in BAD_RELEASES])
def test_bad_release_inputs(ledger_path, dataset_name, frame, label, attempt, advice):
    pf = dp.protect(frame, name=dataset_name, epsilon=2.0, bounds={"age": (0, 110)},
                    categories={"ward": ["cardio", "onco", "ortho"]})
    with dp.spending(epsilon=0.5):
        pf.age.mean()  # something was spent before, so "nothing more" is meaningful
        before = dp.budget(dataset_name)
        with pytest.raises(dp.PrivacyError) as caught:
            attempt(pf)
    assert advice in str(caught.value), str(caught.value)
    after = dp.budget(dataset_name)
    assert (after.epsilon_spent, after.releases) == (before.epsilon_spent, before.releases)


BAD_PROTECTS = [
    ("epsilon zero", dict(epsilon=0), "epsilon"),
    ("epsilon nan", dict(epsilon=float("nan")), "epsilon"),
    ("delta one", dict(delta=1.0), "delta"),
    ("reversed bounds", dict(bounds={"age": (90, 18)}), "reversed"),
    ("bounds of unknown column", dict(bounds={"agee": (0, 1)}), "Did you mean 'age'"),
    ("categories of unknown column", dict(categories={"wardd": ["a"]}), "Did you mean 'ward'"),
    ("duplicate categories", dict(categories={"ward": ["a", "a"]}), "repeats"),
    ("unknown unit", dict(privacy_unit="pid"), "privacy_unit"),
    ("max rows without unit", dict(max_rows_per_unit=3), "privacy_unit"),
    ("max rows zero", dict(max_rows_per_unit=0), "max_rows_per_unit"),
    ("max groups zero", dict(privacy_unit="ward", max_groups_per_unit=0), "max_groups_per_unit"),
    ("max groups without unit", dict(max_groups_per_unit=2), "privacy_unit"),
    ("unit column all empty", dict(privacy_unit="nobody"), "empty in every row"),
    ("no name", dict(name=" "), "name"),
    ("policy of wrong type", dict(policy=3), "policy="),
]


@pytest.mark.parametrize("label, options, advice", BAD_PROTECTS, ids=[b[0] for b in BAD_PROTECTS])
def test_bad_protect_inputs(ledger_path, frame, label, options, advice):
    kwargs = dict(name="visits", epsilon=1.0)
    kwargs.update(options)
    with pytest.raises(dp.PrivacyError) as caught:
        dp.protect(frame.assign(nobody=None) if kwargs.get("privacy_unit") == "nobody" else frame, **kwargs)
    assert advice in str(caught.value), str(caught.value)


def test_an_all_missing_column_is_refused_when_protecting(ledger_path, frame):
    # At query time the refusal would itself reveal that no patient has a value; at protect() it is
    # said to whoever holds the data.
    with pytest.raises(dp.PolicyError, match="drop them before protect"):
        dp.protect(frame.assign(lab=np.nan), name="labs", epsilon=1.0)
    rare = frame.assign(lab=np.where(np.arange(len(frame)) == 0, 3.0, np.nan))
    pf = dp.protect(rare, name="labs", epsilon=1.0, bounds={"lab": (0, 10)})
    with dp.spending(epsilon=0.5):
        assert np.isfinite(pf.lab.mean())  # one value: a release like any other


def test_failures_never_depend_on_the_data(ledger_path, frame):
    # Each query below once failed or succeeded depending on one row (a negative integer power, a text
    # fill in a numeric column, text compared with a number): now all are total or refused statically.
    with_target = pd.concat([frame, pd.DataFrame({"age": [np.nan], "weight": [-2.0], "ward": [None],
                                                  "diagnosis": ["a"]})], ignore_index=True)
    outcomes = []
    for name, data in (("without", frame), ("with", with_target)):
        pf = dp.protect(data.assign(k=data.weight.fillna(1).astype(int)), name=name, epsilon=10.0,
                        bounds={"age": (0, 110), "k": (-5, 200)}, categories={"ward": ["cardio", "onco"]})
        row = []
        with dp.spending(epsilon=0.1):
            for attempt in (lambda: (2 ** pf.k).clip(0, 40).sum(), lambda: len(pf[pf.age.fillna("x") > 5]),
                            lambda: len(pf[pf.ward.between(2, 4)]), lambda: len(pf[pf.k ** -1 > 0.5]),
                            lambda: len(pf[pf.ward.fillna("x") == "cardio"])):
                try:
                    attempt()
                    row.append("ok")
                except dp.PrivacyError as error:
                    row.append(type(error).__name__)
        outcomes.append(row)
    assert outcomes[0] == outcomes[1] == ["ok", "PolicyError", "PolicyError", "ok", "ok"]


def test_unknown_attribute_stays_an_attribute_error(ledger_path, frame):
    # hasattr() and IPython's display machinery rely on AttributeError; the hint still helps.
    pf = dp.protect(frame, name="attr", epsilon=1.0)
    with pytest.raises(AttributeError, match="Did you mean 'age'"):
        pf.agee
    assert not hasattr(pf, "_repr_latex_")


def test_not_a_dataframe(ledger_path, frame):
    with pytest.raises(dp.PolicyError, match="DataFrame"):
        dp.protect(frame.to_numpy(), name="x", epsilon=1)
    pf = dp.protect(frame, name="x", epsilon=1)
    with pytest.raises(dp.PolicyError, match="already protected"):
        dp.protect(pf, name="y", epsilon=1)


def test_policy_file_with_a_typo_names_the_key(ledger_path, frame, tmp_path):
    path = tmp_path / "hospital.toml"
    path.write_text('[columns.age]\ntier = "quasi-identifier"\nbouds = [0, 110]\n')
    with pytest.raises(dp.PolicyError) as caught:
        dp.protect(frame, name="typo", epsilon=1.0, policy=str(path))
    text = str(caught.value)
    assert "bouds" in text and "Did you mean 'bounds'" in text and "hospital.toml" in text


def test_same_name_with_other_data_or_same_data_with_other_name(ledger_path, frame):
    dp.protect(frame, name="visits", epsilon=1.0)
    with pytest.raises(dp.PolicyError, match="another name"):
        dp.protect(frame.assign(age=frame.age + 1), name="visits", epsilon=1.0)
    with pytest.raises(dp.PolicyError, match="name='visits'"):
        dp.protect(frame, name="visits_copy", epsilon=1.0)
    with pytest.raises(dp.PolicyError, match="never changes"):
        dp.protect(frame, name="visits", epsilon=5.0)


def test_later_edits_of_the_original_frame_do_not_change_the_protected_data(ledger_path, frame):
    pf = dp.protect(frame, name="edits", epsilon=1e6, bounds={"age": (0, 1000)})
    frame.loc[:, "age"] = 1000.0
    with dp.spending(epsilon=1000):
        assert pf.age.mean() < 100


def test_a_data_dependent_empty_filter_is_a_release_not_an_error(ledger_path, frame):
    # Refusing because no row matched would reveal that no patient matched; it must stay a DP release.
    pf = dp.protect(frame, name="empty", epsilon=10.0, bounds={"age": (0, 110)})
    with dp.spending(epsilon=1.0):
        mean = pf[pf.age > 100].age.mean()
        count = pf[pf.age > 100].count_rows()
    assert 0 <= mean <= 110 and np.isfinite(mean) and count >= 0
    assert dp.info(mean).ci_low >= 0 and dp.info(mean).ci_high <= 110
