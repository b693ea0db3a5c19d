"""scikit-learn on private frames: diffprivlib's DP estimators, charged to the ledger."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("diffprivlib")
sklearn = pytest.importorskip("sklearn")

import diffprivlib  # noqa: E402
import sklearn.utils.validation as validation  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

import jupyter_dpmagic as dp  # noqa: E402
from jupyter_dpmagic import models  # noqa: E402

BOUNDS = {"a": (0, 10), "b": (0, 10), "target": (0, 25)}
CATEGORIES = {"label": ["high", "low"]}


def synthetic(n, seed):
    """Two features on [0, 10]; the label says whether a + b > 10 (well separated away from the line)."""
    rng = np.random.default_rng(seed)  # the data only; noise never takes a seed
    a, b = rng.uniform(0, 10, n), rng.uniform(0, 10, n)
    return pd.DataFrame({"a": a, "b": b, "label": np.where(a + b > 10, "high", "low"), "target": 2 * a + 1})


@pytest.fixture
def data():
    return synthetic(3000, seed=11)


@pytest.fixture
def protected(ledger_path, dataset_name, data):
    def make(**overrides):
        options = dict(name=dataset_name, epsilon=50.0, bounds=BOUNDS, categories=CATEGORIES)
        options.update(overrides)
        return dp.protect(data, **options)

    return make


def spent(name):
    status = dp.budget(name)
    return status.epsilon_spent, status.releases


PUBLIC = synthetic(500, seed=99)
PUBLIC_X = PUBLIC[["a", "b"]].to_numpy()

CASES = [
    (LogisticRegression, {"C": 0.5}, "label"),
    (LinearRegression, {}, "target"),
    (GaussianNB, {}, "label"),
    (KMeans, {"n_clusters": 2}, None),
    (PCA, {"n_components": 1}, None),
    (StandardScaler, {}, None),
    (RandomForestClassifier, {"n_estimators": 5, "max_depth": 3}, "label"),
    (DecisionTreeClassifier, {"max_depth": 3}, "label"),
]


@pytest.mark.parametrize("cls, params, label", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_supported_estimator_trains_and_charges_exactly(protected, dataset_name, cls, params, label):
    pf = protected()
    model = cls(**params)
    with dp.spending(epsilon=2.0):
        fitted = model.fit(pf[["a", "b"]], pf[label]) if label else model.fit(pf[["a", "b"]])
    assert fitted is model and type(model) is cls
    assert spent(dataset_name) == (pytest.approx(2.0), 1)
    info = dp.info(model)
    # GaussianNB is fitted from the session's own grouped release (add/remove neighbours).
    mechanism = "discrete Laplace" if cls is GaussianNB else f"diffprivlib {cls.__name__}"
    assert info.epsilon == pytest.approx(2.0) and info.mechanism == mechanism
    sklearn.utils.validation.check_is_fitted(model)
    assert model.n_features_in_ == 2
    out = model.predict(PUBLIC_X) if hasattr(model, "predict") else model.transform(PUBLIC_X)
    assert len(out) == len(PUBLIC_X)
    if label == "label":
        assert set(model.classes_) == {"high", "low"}
        assert model.predict_proba(PUBLIC_X).shape == (len(PUBLIC_X), 2)
        assert 0 <= model.score(PUBLIC_X, PUBLIC.label) <= 1


def test_unfitted_instance_then_fit_then_predict(protected):
    pf = protected()
    with dp.spending(epsilon=1.0):
        model = LogisticRegression()
        model.fit(pf[["a", "b"]], pf.label)
    assert model.predict(PUBLIC_X).shape == (len(PUBLIC_X),)


def test_logistic_regression_learns_from_the_data(protected):
    pf = protected()
    with dp.spending(epsilon=20.0):
        model = LogisticRegression().fit(pf[["a", "b"]], pf.label)
    # Points within 1 of the boundary are excluded: the remaining test problem is cleanly separated.
    clear = np.abs(PUBLIC.a + PUBLIC.b - 10) > 1
    assert model.score(PUBLIC_X[clear], PUBLIC.label[clear]) >= 0.9


def test_linear_regression_recovers_the_slope(protected):
    pf = protected()
    with dp.spending(epsilon=20.0):
        model = LinearRegression().fit(pf[["a", "b"]], pf.target)
    assert model.coef_[0] == pytest.approx(2.0, abs=0.5)


def test_model_epsilon_from_the_call(protected, dataset_name):
    pf = protected()
    with dp.spending(epsilon=3.0):
        model = models.fit_private(LogisticRegression(), pf[["a", "b"]], pf.label, epsilon=0.5)
    assert spent(dataset_name) == (pytest.approx(0.5), 1)
    assert dp.info(model).epsilon == pytest.approx(0.5)


def test_fitted_state_of_an_earlier_fit_is_replaced(protected):
    pf = protected()
    model = KMeans(n_clusters=3, n_init=1).fit(PUBLIC_X)
    assert hasattr(model, "labels_")
    with dp.spending(epsilon=1.0):
        model.set_params(n_clusters=2).fit(pf[["a", "b"]])
    assert model.cluster_centers_.shape == (2, 2)
    # Row labels and the exact inertia come from the training rows without noise: never handed out.
    assert not hasattr(model, "labels_") and not hasattr(model, "inertia_")


def test_row_counts_are_not_handed_out(protected):
    pf = protected()
    with dp.spending(epsilon=1.0):
        scaler = StandardScaler().fit(pf[["a", "b"]])
        pca = PCA(n_components=2).fit(pf[["a", "b"]])
    assert not hasattr(scaler, "n_samples_seen_") and not hasattr(pca, "n_samples_")
    assert np.isnan(pca.explained_variance_).all()
    assert pca.explained_variance_ratio_.sum() == pytest.approx(1.0)


def test_diffprivlib_default_accountant_is_never_used(protected):
    pf = protected()
    before = diffprivlib.BudgetAccountant.load_default(None).total()
    with dp.spending(epsilon=1.0):
        GaussianNB().fit(pf[["a", "b"]], pf.label)
    assert diffprivlib.BudgetAccountant.load_default(None).total() == before


# -------------------------------------------------------------------------------------- refusals
def test_missing_bounds_refused_naming_the_option(protected, dataset_name):
    pf = protected(bounds={"a": (0, 10)})
    with dp.spending(epsilon=1.0), pytest.raises(dp.PolicyError, match=r"bounds=\{'b': \(low, high\)\}"):
        LogisticRegression().fit(pf[["a", "b"]], pf.label)
    with dp.spending(epsilon=1.0), pytest.raises(dp.PolicyError, match=r"bounds=\{'target'"):
        LinearRegression().fit(pf[["a"]], pf.target)
    assert spent(dataset_name) == (0, 0)


def test_estimated_bounds_are_not_used_for_models(protected, dataset_name):
    pf = protected(bounds={"a": (0, 10)})
    with dp.spending(epsilon=1.0):
        pf.b.mean()  # estimates the bounds of b (a standard-tier column) as a release of its own
    before = spent(dataset_name)
    assert before[1] >= 1
    with dp.spending(epsilon=1.0), pytest.raises(dp.PolicyError, match=r"bounds=\{'b'"):
        StandardScaler().fit(pf[["a", "b"]])
    assert spent(dataset_name) == before


def test_missing_categories_refused_naming_the_option(protected, dataset_name):
    pf = protected(categories={})
    for cls in (LogisticRegression, GaussianNB, DecisionTreeClassifier):
        with dp.spending(epsilon=1.0), pytest.raises(dp.PolicyError, match=r"categories=\{'label'"):
            cls().fit(pf[["a", "b"]], pf.label)
    assert spent(dataset_name) == (0, 0)


def test_unaffordable_fit_charges_nothing(protected, dataset_name):
    pf = protected(epsilon=1.0)
    with dp.spending(epsilon=0.6):
        LogisticRegression().fit(pf[["a", "b"]], pf.label)
    with dp.spending(epsilon=0.6), pytest.raises(dp.BudgetExceededError):
        LogisticRegression().fit(pf[["a", "b"]], pf.label)
    assert spent(dataset_name) == (pytest.approx(0.6), 1)


def test_private_fit_outside_a_spending_scope_refused(protected, dataset_name):
    pf = protected()
    model = LogisticRegression()
    with pytest.raises(dp.PrivacyError, match="%%dp"):
        model.fit(pf[["a", "b"]], pf.label)
    assert not hasattr(model, "coef_")
    assert spent(dataset_name) == (0, 0)


def test_privacy_leak_warning_is_an_error(protected, dataset_name, monkeypatch):
    pf = protected()
    # Without the declared norm diffprivlib would read it from the data and only warn.
    monkeypatch.setattr(models, "_constructor_arguments", lambda *args: {})
    with dp.spending(epsilon=1.0), pytest.raises(dp.PrivacyError, match="nothing was charged"):
        LogisticRegression().fit(pf[["a", "b"]], pf.label)
    assert spent(dataset_name) == (0, 0)


def test_unsupported_hyper_parameters_refused(protected, dataset_name):
    pf = protected()
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PolicyError, match="penalty.*C, max_iter"):
            LogisticRegression(penalty="l1", solver="liblinear").fit(pf[["a", "b"]], pf.label)
        with pytest.raises(dp.PolicyError, match="n_components=2"):
            PCA(n_components=0.9).fit(pf[["a", "b"]])
        with pytest.raises(dp.PolicyError, match="sample_weight"):
            LinearRegression().fit(pf[["a"]], pf.target, sample_weight=np.ones(3))
        # A seed never reaches the noise, so it is accepted and ignored.
        LogisticRegression(random_state=0).fit(pf[["a", "b"]], pf.label)
    assert spent(dataset_name)[1] == 1


def test_derived_features_train_and_unbounded_or_text_ones_are_refused(protected, dataset_name):
    pf = protected()
    X = pf[["a", "b"]]
    X["sum"] = pf.a + pf.b  # bounds [0, 20] by interval arithmetic on the declared ones
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PolicyError, match="bounds"):
            LogisticRegression().fit(pf[["a"]].assign(ratio=pf.a / pf.b), pf.label)  # b can be 0
        with pytest.raises(dp.PolicyError, match="not numeric"):
            StandardScaler().fit(pf[["a", "label"]])
        assert spent(dataset_name) == (0, 0)
        model = LogisticRegression().fit(X, pf.label)
    assert model.coef_.shape == (1, 3) and spent(dataset_name)[1] == 1


def test_identifier_columns_refused(protect_hospital, dataset_name):
    pf = protect_hospital(bounds={"age": (0, 110), "patient_id": (0, 400)})
    with dp.spending(epsilon=1.0), pytest.raises(dp.PrivacyError, match="patient_id"):
        StandardScaler().fit(pf[["age", "patient_id"]])
    assert spent(dataset_name) == (0, 0)


def test_public_features_with_a_private_label_refused(protected):
    pf = protected()
    with dp.spending(epsilon=1.0), pytest.raises(dp.PrivacyError, match="both X and y"):
        LogisticRegression().fit(PUBLIC_X, pf.label)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "transform"])
def test_row_outputs_on_private_data_refused(protected, method):
    pf = protected()
    with dp.spending(epsilon=2.0):
        classifier = LogisticRegression().fit(pf[["a", "b"]], pf.label)
        scaler = StandardScaler().fit(pf[["a", "b"]])
        model = scaler if method == "transform" else classifier
        with pytest.raises(dp.PrivacyError, match="would return rows"):
            getattr(model, method)(pf[["a", "b"]])


def test_score_on_private_data_is_a_dp_release(protected, dataset_name, data):
    pf = protected(epsilon=1e4)
    with dp.spending(epsilon=20.0):
        classifier = LogisticRegression().fit(pf[["a", "b"]], pf.label)
        regression = LinearRegression().fit(pf[["a", "b"]], pf.target)
    with dp.spending(epsilon=500.0):
        accuracy = classifier.score(pf[["a", "b"]], pf.label)
        r2 = regression.score(pf[["a", "b"]], pf.target)
    exact = (classifier.predict(data[["a", "b"]].to_numpy()) == data.label).mean()
    assert abs(accuracy - exact) <= 0.01 and dp.info(accuracy).ci_low <= accuracy <= dp.info(accuracy).ci_high
    assert "score (accuracy)" in dp.info(accuracy).query
    truth = regression.score(data[["a", "b"]].to_numpy(), data.target.clip(0, 25))
    assert abs(r2 - truth) <= 0.02
    assert [c.query.split(" on ")[0] for c in dp.history(dataset_name).charges[-2:]] == [
        "LogisticRegression.score (accuracy)", "LinearRegression.score (R²)"]
    with dp.spending(epsilon=1.0):
        with pytest.raises(dp.PrivacyError, match="no DP version"):
            KMeans(n_clusters=2).fit(pf[["a", "b"]]).score(pf[["a", "b"]])


def test_metrics_of_private_columns_are_dp_releases(dataset_name):
    from sklearn import metrics

    rng = np.random.default_rng(8)
    truth = rng.choice(["a", "b"], 2000)
    guess = np.where(rng.random(2000) < 0.8, truth, np.where(truth == "a", "b", "a"))
    values = rng.uniform(0, 10, 2000)
    frame = pd.DataFrame({"truth": truth, "guess": guess, "y": values, "y_hat": values + rng.normal(0, 1, 2000)})
    pf = dp.protect(frame, name=dataset_name, epsilon=1e4, bounds={"y": (0, 10), "y_hat": (-5, 15)},
                    categories={"truth": ["a", "b"], "guess": ["a", "b"]})
    with dp.spending(epsilon=200.0):
        accuracy = metrics.accuracy_score(pf.truth, pf.guess)
        mse = metrics.mean_squared_error(pf.y, pf.y_hat)
        table = metrics.confusion_matrix(pf.truth, pf.guess)
    assert abs(accuracy - (truth == guess).mean()) < 0.01
    assert abs(mse - ((frame.y - frame.y_hat.clip(-5, 15)) ** 2).mean()) < 0.1
    exact = pd.crosstab(frame.truth, frame.guess)
    assert np.abs(table.to_numpy() - exact.to_numpy()).max() <= 3
    assert dp.budget(dataset_name).releases == 3
    assert metrics.accuracy_score(truth, guess) == (truth == guess).mean()  # public data: plain scikit-learn


def test_fit_transform_on_private_data_refused_before_charging(protected, dataset_name):
    pf = protected()
    with dp.spending(epsilon=1.0), pytest.raises(dp.PrivacyError, match="would return rows"):
        StandardScaler().fit_transform(pf[["a", "b"]])
    assert spent(dataset_name) == (0, 0)


def test_unsupported_estimator_refused_with_the_list(protected, dataset_name):
    pf = protected()
    with dp.spending(epsilon=1.0), pytest.raises(dp.PrivacyError, match="supported") as error:
        SVC().fit(pf[["a"]], pf.label)
    assert "LogisticRegression" in str(error.value) and "RandomForestClassifier" in str(error.value)
    assert spent(dataset_name) == (0, 0)


# ------------------------------------------------------------------------- public data unchanged
def test_plain_sklearn_on_public_data_is_unchanged(protected):
    protected()  # installs the wrappers
    X, y = PUBLIC_X, PUBLIC.label.to_numpy()
    wrapped = LogisticRegression().fit(X, y)
    original = LogisticRegression()
    LogisticRegression.fit.__wrapped__(original, X, y)
    np.testing.assert_array_equal(wrapped.coef_, original.coef_)
    np.testing.assert_array_equal(wrapped.predict(X), original.predict(X))
    scaled = StandardScaler().fit_transform(X)
    np.testing.assert_allclose(scaled, (X - X.mean(0)) / X.std(0))
    assert not hasattr(wrapped, "_dp")
    with pytest.raises(dp.PrivacyError, match="not a DP release"):
        dp.info(wrapped)
    np.testing.assert_array_equal(validation.check_array(X), X)
    assert SVC().fit(X, y).score(X, y) > 0.9
    assert len(DecisionTreeClassifier(random_state=0).fit(X, y).predict(X)) == len(X)


def test_public_fit_inside_a_spending_scope_is_not_charged(protected, dataset_name):
    protected()
    with dp.spending(epsilon=1.0), warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearRegression().fit(PUBLIC_X, PUBLIC.target)
    assert spent(dataset_name) == (0, 0)


def test_install_is_idempotent(protected):
    from jupyter_dpmagic import hooks

    protected()
    fit, check = LogisticRegression.fit, validation.check_array
    hooks.install()
    assert LogisticRegression.fit is fit and validation.check_array is check


def test_ordinary_sklearn_code_in_a_dp_cell(protected, dataset_name):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert shell.run_cell("%load_ext jupyter_dpmagic").success
    shell.user_ns["visits"] = protected()
    shell.user_ns["public_X"] = PUBLIC_X
    try:
        result = shell.run_cell("%%dp --epsilon 1.5\n"
                                "from sklearn.linear_model import LogisticRegression\n"
                                "model = LogisticRegression()\n"
                                "model.fit(visits[['a', 'b']], visits.label)\n"
                                "predicted = model.predict(public_X)")
        assert result.success, result.error_in_exec
        assert len(shell.user_ns["predicted"]) == len(PUBLIC_X)
        assert spent(dataset_name) == (pytest.approx(1.5), 1)
    finally:
        for name in ("visits", "model", "predicted", "public_X"):
            shell.user_ns.pop(name, None)


def test_a_declared_class_without_rows_neither_fails_nor_disappears(dataset_name):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"x": rng.uniform(0, 1, 400), "label": rng.choice(["a", "b"], 400)})
    pf = dp.protect(frame, name=dataset_name, epsilon=10.0, bounds={"x": (0, 1)},
                    categories={"label": ["a", "b", "rare"]})
    with dp.spending(epsilon=1.0):
        model = LogisticRegression().fit(pf[["x"]], pf.label)
    assert list(model.classes_) == ["a", "b", "rare"]  # the declared classes, whatever the rows hold
    assert dp.budget(dataset_name).releases == 1


def test_a_pipeline_of_a_dp_scaler_and_a_dp_model(protected, dataset_name, data):
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.svm import SVC as PlainSVC

    pf = protected(epsilon=1e4)
    pipe = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())])
    with dp.spending(epsilon=20.0):
        fitted = pipe.fit(pf[["a", "b"]], pf.label)
        accuracy = pipe.score(pf[["a", "b"]], pf.label)
        with pytest.raises(dp.PrivacyError, match="would return rows"):
            pipe.predict(pf[["a", "b"]])
        with pytest.raises(dp.PolicyError, match="StandardScaler"):
            make_pipeline(PlainSVC(), LogisticRegression()).fit(pf[["a", "b"]], pf.label)
    assert fitted is pipe and [c.query.split("(")[0] for c in dp.history(dataset_name).charges] == [
        "StandardScaler", "LogisticRegression", "LogisticRegression.score "]
    clear = np.abs(PUBLIC.a + PUBLIC.b - 10) > 1
    assert pipe.score(PUBLIC_X[clear], PUBLIC.label[clear]) >= 0.85  # ordinary pipeline on public data
    exact = (pipe.predict(data[["a", "b"]].to_numpy()) == data.label).mean()
    assert abs(accuracy - exact) <= 0.01


def test_sklearn_train_test_split_of_private_frames(protected, dataset_name):
    from sklearn.model_selection import train_test_split

    pf = protected(epsilon=1e4)
    X_train, X_test, y_train, y_test = train_test_split(pf[["a", "b"]], pf.label, test_size=0.3)
    assert all(isinstance(part, (dp.PrivateFrame, dp.PrivateSeries)) for part in (X_train, X_test, y_train, y_test))
    with dp.spending(epsilon=20.0):
        model = LogisticRegression().fit(X_train, y_train)
        held_out = model.score(X_test, y_test)
        rows = X_train.count_rows(), X_test.count_rows()
    assert held_out >= 0.9 and abs(rows[1] / (rows[0] + rows[1]) - 0.3) < 0.05
    plain = train_test_split(np.arange(10), test_size=0.3, random_state=0)  # public data: scikit-learn's own
    assert len(plain[0]) == 7 and len(plain[1]) == 3
