"""dp.protect on Spark: the same pandas-style releases, charges and refusals as the pandas engine.

With noise switched off (the internal hook below, not reachable from the public API) every release
of a Spark-backed frame equals the pandas engine's on the same data: the exact aggregates are equal
and everything after them (selection, post-processing, accounting) is the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jupyter_dpmagic as dp
import jupyter_dpmagic.steward_client as remote_module
from jupyter_dpmagic import _draft
from jupyter_dpmagic.errors import PolicyError, PrivacyError
from jupyter_dpmagic.plan import BinCounts, QuantileScores
from jupyter_dpmagic.session import get_session
from jupyter_dpmagic.steward import Analyst, Registry, Steward
from jupyter_dpmagic.steward.cli import main as steward_cli

from _spark import spark  # noqa: F401 - the fixture
from _steward import Served, TokenTable

BOUNDS = {"age": (0, 110), "stay_days": (0, 60), "cost": (0, 5000)}
CATEGORIES = {"ward": ["cardio", "onco", "ortho", "icu"], "sex": ["F", "M"]}


def _visits(n_people: int = 240, seed: int = 5) -> pd.DataFrame:
    """Visits: one to four rows per patient; some costs missing; diagnoses not declared."""
    rng = np.random.default_rng(seed)  # the data only; noise never takes a seed
    rows = rng.integers(1, 5, n_people)
    patient = np.repeat(np.arange(n_people), rows)
    n = len(patient)
    frame = pd.DataFrame({
        "patient": patient,
        "age": rng.integers(18, 95, n_people)[patient].astype(float),
        "sex": rng.choice(["F", "M"], n_people)[patient],
        "ward": rng.choice(["cardio", "onco", "ortho"], n),
        "stay_days": rng.integers(1, 30, n),
        "cost": np.round(rng.gamma(2.0, 400.0, n), 2),
        "diagnosis": rng.choice(["asthma", "copd", "diabetes", "sepsis"], n, p=[0.4, 0.3, 0.25, 0.05]),
    })
    frame.loc[frame.index % 7 == 0, "cost"] = np.nan
    return frame


@pytest.fixture
def visits():
    return _visits()


@pytest.fixture
def noise_off(monkeypatch):
    """Releases without noise: counts and sums exact, quantiles the best-scoring candidate."""
    def exact(noise, prim, values, vector):
        if isinstance(prim, QuantileScores):
            return [int(np.argmax(values[0]))]
        if isinstance(prim, BinCounts):
            return list(values[0])
        return list(values) if vector else [values[0]]

    monkeypatch.setattr(_draft, "_add_noise", exact)


def _protect(data, name, **overrides):
    options = dict(name=name, epsilon=1e6, delta=1e-6, bounds=BOUNDS, categories=CATEGORIES,
                   privacy_unit="patient", max_rows_per_unit=4)
    options.update(overrides)
    return dp.protect(data, **options)


def _releases(pf) -> dict:
    """Every kind of release of guardrail mode, on one frame (max_rows_per_unit covers every
    patient's rows, so no row is dropped at random and both engines see the same rows)."""
    with dp.spending(epsilon=1000.0):
        return {
            "rows": pf.count_rows(),
            "len": len(pf),
            "mean": pf.age.mean(),
            "sum": pf.stay_days.sum(),
            "var": pf.age.var(),
            "std": pf.cost.std(),
            "count": pf.cost.count(),
            "filtered mean": pf[(pf.age > 60) & (pf.sex == "F")].stay_days.mean(),
            "derived": (pf.cost / pf.stay_days.clip(1, 60)).mean(),
            "median": pf.age.median(),
            "quantile": pf.cost.quantile(0.9),
            "sizes": pf.groupby("ward").size(),
            "grouped": pf.groupby(["ward", "sex"]).stay_days.mean(),
            "selected": pf.diagnosis.value_counts(),
            "selected mean": pf.groupby("diagnosis").cost.mean(),
            "crosstab": dp.crosstab(pf.ward, pf.diagnosis),
            "describe": pf[["age", "stay_days"]].describe(),
            "histogram": pf.age.histogram(bins=5),
        }


def _value(release):
    if isinstance(release, (pd.Series, pd.DataFrame)):
        return release
    return float(release)


def test_spark_frame_releases_equal_the_pandas_engine_without_noise(spark, visits, noise_off):  # noqa: F811
    on_pandas = _releases(_protect(visits, "visits_pandas"))
    on_spark = _releases(_protect(spark.createDataFrame(visits), "visits_spark"))
    assert on_pandas.keys() == on_spark.keys()
    for what in on_pandas:
        expected, got = _value(on_pandas[what]), _value(on_spark[what])
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, obj=what)
        elif isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(got, expected, check_exact=False, rtol=1e-12, obj=what)
        else:
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), what
    # Spot checks against pandas itself: noise is off, and no patient has more rows than the bound.
    assert float(on_spark["rows"]) == len(visits)
    assert float(on_spark["sum"]) == pytest.approx(visits.stay_days.sum(), rel=1e-6)  # fixed-point grid
    assert on_spark["mean"] == pytest.approx(visits.age.mean(), rel=1e-6)
    assert list(on_spark["sizes"].index) == CATEGORIES["ward"]
    assert on_spark["sizes"].tolist() == [int((visits.ward == w).sum()) for w in CATEGORIES["ward"]]
    # Groups nobody declared are chosen by partition selection, and sorted by key.
    shown = list(on_spark["selected"].index)
    assert shown == sorted(shown) and set(shown) <= set(visits.diagnosis)
    # One charge per release, the same on both.
    pandas_budget, spark_budget = dp.budget("visits_pandas"), dp.budget("visits_spark")
    assert spark_budget.releases == pandas_budget.releases == len(on_pandas)
    assert spark_budget.epsilon_spent == pytest.approx(pandas_budget.epsilon_spent)


def test_contributions_are_bounded_on_spark(spark, visits, noise_off):  # noqa: F811
    pf = _protect(spark.createDataFrame(visits), "bounded", max_rows_per_unit=1)
    with dp.spending(epsilon=10.0):
        rows = float(pf.count_rows())
        per_ward = pf.groupby("ward").size()
    assert rows == visits.patient.nunique()  # one row per patient, whoever has more
    assert per_ward.sum() == visits.patient.nunique()
    assert all(per_ward[w] <= visits[visits.ward == w].patient.nunique() for w in CATEGORIES["ward"])


def test_parquet_path_with_the_spark_engine(spark, visits, tmp_path):  # noqa: F811
    path = tmp_path / "visits.parquet"
    visits.to_parquet(path)
    pf = _protect(str(path), "from_parquet", engine="spark", spark=spark)
    with dp.spending(epsilon=20.0):
        rows = pf.count_rows()
    # Further than 8 half-widths of its 95% interval from the exact count: probability below 1e-10.
    half = (dp.info(rows).ci_high - dp.info(rows).ci_low) / 2
    assert abs(float(rows) - len(visits)) <= 8 * half
    assert dp.budget("from_parquet").releases == 1
    # The same table again under the same name continues its budget (same engine, same fingerprint).
    again = _protect(str(path), "from_parquet", engine="spark", spark=spark)
    with dp.spending(epsilon=1.0):
        again.count_rows()
    assert dp.budget("from_parquet").releases == 2


def test_pandas_frame_sent_to_spark(spark, visits, noise_off):  # noqa: F811
    pf = _protect(visits, "sent", engine="spark", spark=spark)
    with dp.spending(epsilon=1.0):
        assert float(pf.stay_days.sum()) == pytest.approx(visits.stay_days.sum(), rel=1e-6)


def test_what_is_refused_says_what_to_do(spark, visits, tmp_path):  # noqa: F811
    path = tmp_path / "visits.parquet"
    visits.to_parquet(path)
    with pytest.raises(PolicyError, match="engine='spark'"):
        _protect(str(path), "no_engine")
    with pytest.raises(PolicyError, match="toPandas"):
        _protect(spark.createDataFrame(visits), "wrong_engine", engine="pandas")
    with pytest.raises(PolicyError, match="'pandas' or 'spark'"):
        _protect(visits, "bad_engine", engine="dask")
    pf = _protect(spark.createDataFrame(visits), "refusals")
    with pytest.raises(PrivacyError):
        pf.head()  # rows never leave, on any engine
    assert dp.budget("refusals").releases == 0


def test_models_on_spark(spark):  # noqa: F811
    pytest.importorskip("diffprivlib")
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 10, 2000), rng.uniform(0, 10, 2000)
    frame = pd.DataFrame({"a": a, "b": b, "label": np.where(a + b > 10, "high", "low")})
    pf = dp.protect(spark.createDataFrame(frame), name="models", epsilon=10.0,
                    bounds={"a": (0, 10), "b": (0, 10)}, categories={"label": ["high", "low"]})
    with dp.spending(epsilon=2.0):
        with pytest.raises(PrivacyError, match="Spark") as refused:
            LogisticRegression().fit(pf[["a", "b"]], pf.label)
    assert "GaussianNB" in str(refused.value) and "pandas engine" in str(refused.value)
    assert dp.budget("models").releases == 0  # a refused fit spends nothing
    with dp.spending(epsilon=2.0):
        model = GaussianNB().fit(pf[["a", "b"]], pf.label)  # fitted from the session's grouped release
    assert set(model.classes_) == {"high", "low"}
    public = np.array([[1.0, 1.0], [9.0, 9.0]])
    assert model.predict(public).tolist() == ["low", "high"]
    assert dp.budget("models").releases == 1


def test_the_steward_serves_a_dataset_with_the_spark_engine(spark, visits, tmp_path, noise_off):  # noqa: F811
    data, registry, ledger = tmp_path / "visits.parquet", tmp_path / "registry.json", str(tmp_path / "steward.sqlite")
    visits.to_parquet(data)
    assert steward_cli(["register", "--registry", str(registry), "--ledger", ledger, "--file", str(data),
                        "--name", "visits", "--engine", "spark", "--epsilon", "2", "--per-user-epsilon", "1",
                        "--delta", "1e-6", "--privacy-unit", "patient", "--max-rows-per-unit", "4"]) == 0
    steward = Steward(Registry.load(registry), ledger=ledger)
    assert type(steward.dataset("visits", Analyst("alice")).engine).__name__ == "SparkEngine"
    server = Served(steward, TokenTable({"alice-token": Analyst("alice")}))
    try:
        dp.connect(server.url, token="alice-token", timeout=60)
        pf = dp.remote("visits")
        with dp.spending(epsilon=0.5):
            rows = pf.count_rows()
            per_ward = pf.groupby("ward").size()
        assert float(rows) == len(visits)  # noise is off in this process, where the steward runs too
        assert per_ward.sum() == len(visits)
        status = dp.budget("visits")
        assert status.releases == 2 and status.epsilon_spent == pytest.approx(1.0)
    finally:
        server.stop()
        for name in [n for n, d in get_session().datasets.items() if d.remote is not None]:
            del get_session().datasets[name]
        remote_module._connection = None
