"""train_test_split on private frames: random, disjoint halves that are private proxies themselves."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp
from jupyter_dpmagic import plan as P
from jupyter_dpmagic._analysis import BOOL, kind_of
from jupyter_dpmagic.errors import PolicyError


def spent(name):
    status = dp.budget(name)
    return status.epsilon_spent, status.releases


def part_of(proxy) -> P.Part:
    parts = [w for w in proxy._where if isinstance(w, P.Part)]
    assert len(parts) == 1
    return parts[0]


def side_mask(proxy) -> np.ndarray:
    """The rows of the protected table on ``proxy``'s side of its split, read through the engine."""
    value = proxy._ds.engine.evaluate(part_of(proxy))
    assert isinstance(value, pd.Series) and value.dtype == bool
    return value.to_numpy()


@pytest.fixture
def visits(ledger_path, dataset_name):
    """2000 patients with 1 to 5 visits each (about 6000 rows)."""
    rng = np.random.default_rng(3)  # the data only; noise never takes a seed
    visits_per_patient = rng.integers(1, 6, 2000)
    patient = np.repeat(np.arange(2000), visits_per_patient)
    frame = pd.DataFrame({"patient_id": patient, "age": rng.integers(18, 95, len(patient)).astype(float),
                          "ward": rng.choice(["cardio", "onco"], len(patient))})
    return frame, lambda **kw: dp.protect(frame, name=dataset_name, epsilon=1000.0, bounds={"age": (0, 110)},
                                          categories={"ward": ["cardio", "onco"]}, **kw)


@pytest.fixture
def big(ledger_path, dataset_name):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.integers(18, 95, 20000).astype(float), "flag": rng.integers(0, 2, 20000)})
    return dp.protect(frame, name=dataset_name, epsilon=1000.0, bounds={"age": (0, 110), "flag": (0, 1)})


def test_returns_train_and_test_proxies_in_sklearn_order(protect_hospital):
    pf = protect_hospital()
    X, y = pf[["age", "bmi"]], pf["stay_days"]
    out = dp.train_test_split(X, y, test_size=0.3, random_state=42)
    assert len(out) == 4
    X_train, X_test, y_train, y_test = out
    assert isinstance(X_train, dp.PrivateFrame) and isinstance(X_test, dp.PrivateFrame)
    assert isinstance(y_train, dp.PrivateSeries) and isinstance(y_test, dp.PrivateSeries)
    assert list(X_train.columns) == ["age", "bmi"]
    assert part_of(X_train) == part_of(y_train) and part_of(X_test) == part_of(y_test)
    assert part_of(X_train).side is False and part_of(X_test).side is True
    assert "split#" in repr(X_train) and "train 70%" in repr(X_train) and "test 30%" in repr(X_test)


def test_dp_counts_of_halves_add_up_and_split_is_75_25(big, dataset_name):
    train, test = dp.train_test_split(big)
    with dp.spending(epsilon=100.0):
        n_train, n_test, n_all = len(train), len(test), len(big)
    assert n_train + n_test == pytest.approx(n_all, abs=10)
    assert n_all == pytest.approx(20000, abs=10)
    assert n_test / n_all == pytest.approx(0.25, abs=0.015)  # sd of the share is about 0.003
    assert spent(dataset_name)[1] == 3  # both halves charge the one budget, in full


def test_halves_are_disjoint_and_cover_every_row(big):
    train, test = dp.train_test_split(big, test_size=0.4)
    tr, te = side_mask(train), side_mask(test)
    assert not (tr & te).any()
    assert (tr | te).all()
    assert te.mean() == pytest.approx(0.4, abs=0.02)


def test_train_size_only_and_both_sizes(big):
    train, test = dp.train_test_split(big, train_size=0.6)
    assert part_of(test).fraction == pytest.approx(0.4)
    assert (side_mask(train) ^ side_mask(test)).all()
    train, test = dp.train_test_split(big, test_size=0.2, train_size=0.5)
    tr, te = side_mask(train), side_mask(test)
    assert not (tr & te).any()
    assert tr.mean() == pytest.approx(0.5, abs=0.02) and te.mean() == pytest.approx(0.2, abs=0.02)


def test_a_person_is_wholly_on_one_side(visits):
    frame, protect = visits
    pf = protect(privacy_unit="patient_id", max_rows_per_unit=5)
    train, test = dp.train_test_split(pf, test_size=0.25)
    assert part_of(test).unit == "patient_id"
    te = side_mask(test)
    per_person = pd.Series(te).groupby(frame["patient_id"].to_numpy()).agg(["min", "max"])
    assert (per_person["min"] == per_person["max"]).all()
    share = per_person["min"].mean()
    assert share == pytest.approx(0.25, abs=0.04)  # 2000 people: sd about 0.01
    assert not (te & side_mask(train)).any() and (te | side_mask(train)).all()


def test_the_privacy_unit_is_not_a_touched_column(visits, dataset_name):
    frame, protect = visits
    pf = protect(privacy_unit="patient_id", max_rows_per_unit=5)
    train, test = dp.train_test_split(pf)
    assert P.columns_of(train._where) == set()
    with dp.spending(epsilon=50.0):
        n_test = len(test)
        mean_train = train["age"].mean()
    assert 0 < n_test < len(frame)
    assert 18 <= mean_train <= 95
    assert spent(dataset_name)[1] == 2


def test_repeated_queries_see_the_same_rows(big):
    train, test = dp.train_test_split(big)
    first = side_mask(test).copy()
    with dp.spending(epsilon=1.0):
        train["age"].mean()  # a query on the other half does not redraw the split
    assert np.array_equal(first, side_mask(test))
    # A derived proxy of the same half (filtered further) carries the same split.
    older = test[test.age > 50]
    assert part_of(older) == part_of(test)
    assert np.array_equal(side_mask(older), first)
    with dp.spending(epsilon=200.0):
        counts = [len(test) for _ in range(3)]
    exact = int(first.sum())
    assert all(abs(c - exact) <= 10 for c in counts)


def test_two_splits_differ(big):
    _, test_a = dp.train_test_split(big, random_state=0)
    _, test_b = dp.train_test_split(big, random_state=0)  # a seed does not make splits repeat
    assert part_of(test_a).token != part_of(test_b).token
    a, b = side_mask(test_a), side_mask(test_b)
    assert not np.array_equal(a, b)
    assert (a & b).mean() == pytest.approx(0.25 * 0.25, abs=0.02)  # independent draws


def test_columns_and_filters_of_one_frame_split_together(protect_hospital):
    pf = protect_hospital()
    old = pf[pf.age > 40]
    X_train, X_test, y_train, y_test = dp.train_test_split(old[["age"]], old["bmi"])
    assert (old.age > 40)._expr in X_train._where and (old.age > 40)._expr in y_test._where
    # Filtering a half again and combining it with a column of the same half works as in pandas.
    with dp.spending(epsilon=5.0):
        mean = y_train[X_train.age < 90].mean()
    assert 10 <= mean <= 60


def test_combining_both_halves_is_refused_as_empty(protect_hospital, dataset_name):
    pf = protect_hospital()
    train, test = dp.train_test_split(pf)
    with dp.spending(epsilon=5.0):
        with pytest.raises(PolicyError, match="share no row"):
            train[test.age > 3].age.mean()
    assert spent(dataset_name) == (0, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(shuffle=False), "shuffle=False"),
    (dict(stratify="sex"), "stratify"),
    (dict(test_size=100), "number of rows"),
    (dict(train_size=300), "number of rows"),
    (dict(test_size=0.0), "strictly between 0 and 1"),
    (dict(test_size=1.5), "strictly between 0 and 1"),
    (dict(test_size=True), "share of the rows"),
    (dict(test_size="a quarter"), "share of the rows"),
    (dict(test_size=0.5, train_size=0.7), "add up to more than 1"),
])
def test_refusals_charge_nothing(protect_hospital, dataset_name, kwargs, message):
    pf = protect_hospital()
    with dp.spending(epsilon=5.0):
        with pytest.raises(PolicyError, match=message):
            dp.train_test_split(pf[["age"]], pf["bmi"], **kwargs)
    assert spent(dataset_name) == (0, 0)


def test_mixed_inputs_are_refused(protect_hospital, hospital, dataset_name, ledger_path):
    pf = protect_hospital()
    other = dp.protect(hospital.iloc[:200], name=dataset_name + "_other", epsilon=5.0, bounds={"age": (0, 110)})
    with dp.spending(epsilon=5.0):
        with pytest.raises(PolicyError, match="two datasets"):
            dp.train_test_split(pf[["age"]], other["age"])
        with pytest.raises(PolicyError, match="different filters"):
            dp.train_test_split(pf[["age"]], pf[pf.age > 30]["bmi"])
        with pytest.raises(PolicyError, match="private frames and columns only"):
            dp.train_test_split(pf[["age"]], hospital["bmi"])
        with pytest.raises(PolicyError, match="private frames and columns only"):
            dp.train_test_split(pf.groupby("sex"))
        with pytest.raises(PolicyError, match="at least one"):
            dp.train_test_split()
    assert spent(dataset_name) == (0, 0)
    assert spent(dataset_name + "_other") == (0, 0)


def test_part_round_trips_and_describes_without_data():
    for unit in (None, "patient_id"):
        node = P.Part(7, 0.25, True, unit)
        query = P.Query("d", (P.Count(),), where=(node, P.BinOp(">", P.Col("age"), P.Lit(3))), unit=unit)
        data = json.loads(json.dumps(P.to_dict(query)))
        assert P.from_dict(data) == query
        assert P.from_dict(P.to_dict(node)) == node
    assert P.describe(P.Part(3, 0.25, True, "patient_id")) == "split#3(test 25%)"
    assert P.describe(P.Part(3, 0.25, False, None)) == "split#3(train 75%)"
    assert kind_of(P.Part(3, 0.25, True), {}) == BOOL
    assert P.columns_of(P.Part(3, 0.25, True, "patient_id")) == set()


def test_model_fits_on_the_train_half(ledger_path, dataset_name):
    pytest.importorskip("diffprivlib")
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(11)
    a = rng.uniform(0, 10, 4000)
    pf = dp.protect(pd.DataFrame({"a": a, "target": 2 * a + 1}), name=dataset_name, epsilon=50.0,
                    bounds={"a": (0, 10), "target": (0, 25)})
    X_train, X_test, y_train, y_test = dp.train_test_split(pf[["a"]], pf["target"], test_size=0.25)
    rows = pf._ds.engine.rows(P.Query(dataset_name, (), where=X_train._where), ["a", "target"])
    assert len(rows) == int(side_mask(X_train).sum())
    with dp.spending(epsilon=20.0):
        model = LinearRegression().fit(X_train, y_train)
    assert model.coef_[0] == pytest.approx(2.0, abs=0.5)
    assert spent(dataset_name)[1] == 1
