"""scikit-learn estimators trained on private frames, as diffprivlib's DP equivalents.

Inside ``%%dp`` (or ``with dp.spending():``) ordinary scikit-learn code works on protected data::

    from sklearn.linear_model import LogisticRegression
    model = LogisticRegression(C=0.5).fit(visits[["age", "bmi"]], visits.sex)
    model.predict(public_array)

The call is sent to :func:`fit_private`, which trains diffprivlib's estimator with bounds, norms and
classes taken from the policy only (never from the data), charges the ledger what diffprivlib
reports it spent, and then fills the user's own scikit-learn instance with the fitted DP state.
Attributes that diffprivlib computes exactly from the data (row labels, counts, inertia) are not
copied: they are not covered by the privacy guarantee. PCA's ``explained_variance_`` and
``noise_variance_`` are divided by the exact row count, so they are NaN; use
``explained_variance_ratio_``. GaussianNB is the exception: it is fitted from one grouped release of
the session (see :func:`_fit_gaussian_nb`).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from . import plan as P
from ._analysis import BOOL, NUMERIC, bounds_of, kind_of
from .engine.local import LocalEngine
from .errors import PolicyError, PrivacyError
from .frame import PrivateFrame, PrivateSeries
from .session import get_session

__all__ = ["SUPPORTED", "fit_private", "score_private", "accuracy_score", "mean_squared_error",
           "confusion_matrix", "supported_names"]

# Fitted attributes diffprivlib computes exactly from the rows: never handed to the user.
_EXACT_ATTRIBUTES = frozenset({
    "labels_",                # KMeans: one label per training row
    "inertia_",               # KMeans: exact sum of distances
    "n_iter_",                # optimiser iterations depend on the exact data
    "n_samples_seen_",        # StandardScaler: exact row count (row counts are private)
    "n_samples_",             # PCA: exact row count
})

# Fitted attributes diffprivlib derives from the exact row count: the user gets NaN of the same
# shape (scikit-learn reads them in transform), and explained_variance_ratio_ has the information.
_COUNT_SCALED = frozenset({"explained_variance_", "noise_variance_"})

# Parameters that never change what is released (noise never takes a seed; threads and copies do
# not change results).
_IGNORED = frozenset({"random_state", "n_jobs", "verbose", "copy", "copy_X", "copy_x"})


@dataclass(frozen=True)
class _Spec:
    """How one scikit-learn estimator maps to diffprivlib."""

    passed: tuple = ()              # hyper-parameters handed to diffprivlib as they are
    supervised: bool = False        # needs a label y
    label: str = ""                 # "classes" (declared categories) or "bounds" (declared bounds)
    needs: tuple = ()               # "bounds", "data_norm", "bounds_X", "classes" for the constructor
    defaults: dict = field(default_factory=dict)  # diffprivlib's value where scikit-learn's None has no DP meaning
    solver: tuple = ()              # how scikit-learn searches; diffprivlib runs its own search


SUPPORTED = {
    "LogisticRegression": _Spec(("C", "max_iter", "fit_intercept", "tol"), True, "classes", ("data_norm",)),
    "LinearRegression": _Spec(("fit_intercept",), True, "bounds", ("bounds_X",)),
    "GaussianNB": _Spec(("priors", "var_smoothing"), True, "classes"),  # fitted by _fit_gaussian_nb
    "KMeans": _Spec(("n_clusters",), False, "", ("bounds",), solver=("n_init", "algorithm")),
    "PCA": _Spec(("n_components",), False, "", ("bounds", "data_norm"),
                 solver=("svd_solver", "tol", "iterated_power", "n_oversamples", "power_iteration_normalizer")),
    "StandardScaler": _Spec(("with_mean", "with_std"), False, "", ("bounds",)),
    "RandomForestClassifier": _Spec(("n_estimators", "max_depth"), True, "classes", ("bounds", "classes"),
                                    {"max_depth": 5}),
    "DecisionTreeClassifier": _Spec(("max_depth",), True, "classes", ("bounds", "classes"), {"max_depth": 5}),
}


def supported_names() -> str:
    """The supported scikit-learn estimators, as a sentence fragment for messages."""
    return ", ".join(SUPPORTED)


def fit_private(estimator, X, y=None, *, epsilon=None, sample_weight=None):
    """Train ``estimator`` on a private frame as a DP release, and return it fitted.

    Parameters
    ----------
    estimator : scikit-learn estimator
        An unfitted (or previously fitted) instance of a supported class; its hyper-parameters
        are kept. It is returned fitted with diffprivlib's DP state.
    X : PrivateFrame
        Numeric source columns with declared bounds (``bounds={'col': (low, high)}``).
    y : PrivateSeries, optional
        The label, a column of the same protected frame. Classifiers need its declared
        categories (``categories={'col': [...]}``); LinearRegression its declared bounds.
    epsilon : float, optional
        The epsilon to spend; the cell's (``%%dp --epsilon``) or the policy's default when omitted.
    sample_weight : None
        Not supported on private data.

    Returns
    -------
    estimator
        The same instance, fitted; ``dp.info(estimator)`` gives its release information.

    Raises
    ------
    PrivacyError
        Outside ``%%dp``/``dp.spending()``, or when the fit would need information from the data.
    PolicyError
        When bounds, categories or hyper-parameters are missing or not supported.
    BudgetExceededError
        When the budget cannot pay for the fit (nothing is charged).
    """
    name = type(estimator).__name__
    spec = _spec_of(estimator)
    if sample_weight is not None:
        raise PolicyError(f"sample_weight is not supported when fitting {name} on private data; fit without it.")
    features, label, where = _columns(name, spec, X, y)
    options = _hyper_parameters(estimator, spec)
    dataset = X._ds
    describe_text = f"{name}({features.text()}" + (f" -> {label})" if label else ")")
    if name == "GaussianNB":
        return _fit_gaussian_nb(estimator, options, dataset, features, label, where, epsilon, describe_text)
    constructor = _constructor_arguments(dataset, spec, features, label)

    def fit(rows, budget):
        return _fit_diffprivlib(name, {**options, **constructor}, rows, features, label, spec, budget, dataset)

    model, info = get_session().release_model(dataset, columns=list(features.sources) + ([label] if label else []),
                                              where=where, epsilon=epsilon, describe_text=describe_text, fit=fit)
    _adopt(estimator, model)
    estimator._dp = info  # read by dp.info(); a trailing underscore would mark fitted state for sklearn
    return estimator


# ------------------------------------------------------------------------------------------ checks
def _spec_of(estimator) -> _Spec:
    name = type(estimator).__name__
    if not _is_sklearn(type(estimator)) or name not in SUPPORTED:
        raise PrivacyError(f"{name} has no DP version here; on private data fit one of the supported "
                           f"estimators inside %%dp: {supported_names()}.")
    return SUPPORTED[name]


def _is_sklearn(cls) -> bool:
    """Only scikit-learn's own classes map to diffprivlib (a user subclass may change what fit does)."""
    return cls.__module__.startswith("sklearn.")


@dataclass(frozen=True)
class _Features:
    """The columns of X: row-wise expressions over source columns, with bounds from declared ones."""

    labels: tuple
    exprs: tuple
    sources: tuple  # source columns read
    lows: np.ndarray
    highs: np.ndarray

    def matrix(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The feature values of ``rows`` clamped to their bounds, and which rows have every value."""
        engine = LocalEngine(rows.reset_index(drop=True))
        columns = []
        for expr in self.exprs:
            value = engine.evaluate(expr)
            columns.append(value.to_numpy(dtype=float, na_value=np.nan) if isinstance(value, pd.Series)
                           else np.full(len(rows), float(value)))
        X = np.column_stack(columns) if columns else np.zeros((len(rows), 0))
        present = np.isfinite(X).all(axis=1)  # x / 0 has no value: such rows are left out, row by row
        return np.clip(X, self.lows, self.highs), present

    def text(self) -> str:
        return ", ".join(self.labels)


def _columns(name: str, spec: _Spec, X, y) -> tuple[_Features, str | None, tuple]:
    """The features, label name and row filters, after checking they can train a DP model."""
    if not isinstance(X, PrivateFrame):
        raise PrivacyError(f"fit {name} on a private frame's columns for both X and y (X = df[['age', 'bmi']], "
                           "y = df.label); mixing public X with a private y would read private rows.")
    if not len(X.columns):
        raise PolicyError(f"X has no columns; select the features to train {name} on (df[['age', 'bmi']]).")
    features = _features(name, X)
    if not spec.supervised:
        if y is not None and not isinstance(y, PrivateSeries):
            raise PolicyError(f"{name} is unsupervised; call fit(X) without y.")
        return features, None, X._where
    if not isinstance(y, PrivateSeries):
        raise PolicyError(f"{name} needs a label: pass y as a column of the same private frame (fit(X, df.label)).")
    label = _source_column(y, y.name, expr=y._expr)
    return features, label, X._merge_where(y)


def _features(name: str, X) -> _Features:
    dataset = X._ds
    labels, exprs, lows, highs, sources = [], [], [], [], set()
    for column, expr in X._cols.items():
        if kind_of(expr, dataset.schema) not in (NUMERIC, BOOL):
            raise PolicyError(f"column '{column}' is not numeric; {name} trains on numeric columns only. "
                              "Encode it as a number first (df['is_f'] = df.sex == 'F'), or leave it out of X.")
        used = P.columns_of(expr)
        bounds = bounds_of(expr, lambda c: dataset.column(c).bounds, dataset.schema)
        if bounds is None or not bounds[0] < bounds[1]:
            missing = sorted(c for c in used if dataset.column(c).bounds is None) or [column]
            raise _no_bounds(missing[0], "a feature")
        labels.append(column), exprs.append(expr), sources.update(used)
        lows.append(bounds[0]), highs.append(bounds[1])
    return _Features(tuple(labels), tuple(exprs), tuple(sorted(sources)), np.array(lows, float), np.array(highs, float))


def _source_column(private, column: str, expr=None) -> str:
    expr = private._cols[column] if expr is None else expr
    if not isinstance(expr, P.Col):
        raise PolicyError(f"column '{column}' is computed from other columns; models train on the protected "
                          "source columns only for now. Add it to the DataFrame before dp.protect (with its "
                          "bounds) or train on the original columns.")
    return expr.name


def _hyper_parameters(estimator, spec: _Spec) -> dict:
    """The user's hyper-parameters diffprivlib understands; refuse any other that was changed."""
    name = type(estimator).__name__
    defaults = {p.name: p.default for p in inspect.signature(type(estimator).__init__).parameters.values()}
    passed = {}
    for key, value in estimator.get_params(deep=False).items():
        if key in spec.passed:
            if value is None and key in spec.defaults:
                value = spec.defaults[key]
            passed[key] = value
        elif _changed(key, value, defaults, spec):
            allowed = ", ".join(spec.passed) or "none"
            raise PolicyError(f"{name}({key}={value!r}) has no DP version here; leave {key} at its default. "
                              f"Hyper-parameters that work on private data: {allowed}.")
    if name == "PCA":
        _check_components(passed.get("n_components"))
    return passed


def _check_components(n_components) -> None:
    if n_components is not None and not (isinstance(n_components, (int, np.integer)) and n_components > 0):
        raise PolicyError(f"PCA(n_components={n_components!r}) would choose the number of components from the "
                          "data; give a whole number of components (PCA(n_components=2)).")


def _changed(key: str, value, defaults: dict, spec: _Spec) -> bool:
    """Whether a parameter diffprivlib does not take was set to something that would change the model."""
    if key in _IGNORED or key in spec.solver:
        return False
    return not _same(value, defaults.get(key, inspect.Parameter.empty))


def _same(value, default) -> bool:
    if value is default:
        return True
    try:
        return bool(value == default)
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- what the policy says
def _constructor_arguments(dataset, spec: _Spec, features: _Features, label: str | None) -> dict:
    """Bounds, norms and classes for diffprivlib, from the declared policy only."""
    lows, highs = features.lows, features.highs
    out = {}
    if "bounds" in spec.needs:
        out["bounds"] = (lows, highs)
    if "bounds_X" in spec.needs:
        out["bounds_X"] = (lows, highs)
    if "data_norm" in spec.needs:
        out["data_norm"] = float(np.linalg.norm(np.maximum(np.abs(lows), np.abs(highs))))
    if spec.label == "classes":
        classes = _label_classes(dataset, label)
        if "classes" in spec.needs:
            out["classes"] = classes
    elif spec.label == "bounds":
        out["bounds_y"] = _declared_bounds(dataset, label, "the label")
    return out


def _declared_bounds(dataset, column: str, role: str) -> tuple[float, float]:
    bounds = dataset.column(column).bounds
    if bounds is None:
        raise _no_bounds(column, role)
    return float(bounds[0]), float(bounds[1])


def _no_bounds(column: str, role: str) -> PolicyError:
    # Estimated bounds are spent for pandas releases; a model's sensitivity must rest on declared ones.
    return PolicyError(f"column '{column}' ({role}) has no declared bounds, and a model's noise is scaled to "
                       f"them; declare them with bounds={{'{column}': (low, high)}} in dp.protect (or the policy).")


def _label_classes(dataset, label: str) -> list:
    categories = dataset.column(label).categories
    if not categories:
        raise PolicyError(f"the label '{label}' has no declared categories, and the classes of a model must not "
                          f"come from the data; declare them with categories={{'{label}': [...]}} in dp.protect "
                          "(or the policy).")
    if len(categories) < 2:
        raise PolicyError(f"the label '{label}' declares one category; a classifier needs at least two "
                          f"(categories={{'{label}': [..., ...]}}).")
    try:
        return sorted(categories)
    except TypeError:  # mixed types: keep the declared order
        return list(categories)


# ------------------------------------------------------------------------------------------ fitting
def _fit_diffprivlib(name: str, arguments: dict, rows, features, label, spec: _Spec, epsilon: float, dataset):
    """Train diffprivlib's estimator on exact rows with its own fresh accountant (never the global one)."""
    import diffprivlib
    import diffprivlib.models
    from diffprivlib.utils import DiffprivlibCompatibilityWarning, PrivacyLeakWarning

    accountant = diffprivlib.BudgetAccountant()
    model = getattr(diffprivlib.models, name)(epsilon=epsilon, accountant=accountant, **arguments)
    X, present = features.matrix(rows)
    y = _label_values(rows, label, spec, dataset)
    X, y = X[present], (None if y is None else y[present])
    classes = _label_classes(dataset, label) if spec.label == "classes" else None
    with warnings.catch_warnings():
        # A leak warning means diffprivlib read something from the data it should have been told.
        warnings.simplefilter("error", PrivacyLeakWarning)
        warnings.simplefilter("error", DiffprivlibCompatibilityWarning)
        _train(model, X, y, classes, (features.lows + features.highs) / 2)
    spent_epsilon, spent_delta = accountant.total()
    return model, float(spent_epsilon), float(spent_delta), f"diffprivlib {name}"


def _label_values(rows, label, spec: _Spec, dataset):
    if label is None:
        return None
    values = rows[label].to_numpy()
    if spec.label == "bounds":
        low, high = _declared_bounds(dataset, label, "the label")
        return np.clip(values.astype(float), low, high)
    return values


def _train(model, X, y, classes, centre) -> None:
    if y is None:
        model.fit(X)
        return
    if classes is None:
        model.fit(X, y)
        return
    # A label outside the declared categories is dropped row by row, like a filter: the model's
    # classes are the declared ones, never the ones found in the data.
    keep = np.isin(y.astype(object), classes)
    X, y = X[keep], y[keep]
    if type(model).__name__ == "GaussianNB":
        model.partial_fit(X, y, classes=_as_label_array(classes, y))
        return
    if type(model).__name__ == "LogisticRegression":
        # diffprivlib takes the classes from the labels it sees, so a declared class without rows
        # would change the model's classes (or fail) depending on the data. One public row per
        # declared class, at the centre of the bounds and the same whatever the data, keeps every
        # class present: neighbouring datasets stay neighbours after adding them.
        X = np.vstack([X, np.tile(centre, (len(classes), 1))])
        y = np.concatenate([y.astype(object), np.asarray(list(classes), dtype=object)])
        y = y.astype(type(classes[0])) if all(type(c) is type(classes[0]) for c in classes) else y
    model.fit(X, y)


def _as_label_array(classes, y):
    return np.asarray(list(classes), dtype=y.dtype if y.dtype != object else object)


def _fit_gaussian_nb(estimator, options: dict, dataset, features: _Features, label: str, where: tuple, epsilon,
                     describe_text: str):
    """GaussianNB from one grouped release: per declared class, a DP count and each feature's mean and variance.

    diffprivlib's GaussianNB is private for neighbours that replace a row: it forces its noisy class
    counts to add up to the exact number of rows, and a declared class without rows keeps a count
    of exactly 0, so the fitted model tells whether one more patient is in the data. Here every
    number comes from the session's own release (add/remove neighbours, a person's rows bounded,
    OpenDP's exact noise, charged to the ledger), and the model is post-processing of it.
    """
    classes = _label_classes(dataset, label)
    key = P.GroupKey(label, P.Col(label), tuple(classes))
    measures = [P.Count()]
    for expr, low, high in zip(features.exprs, features.lows, features.highs):
        measures += [P.Mean(expr, float(low), float(high)), P.Variance(expr, float(low), float(high), ddof=0)]
    labels = ["count"] + [f"{kind} {i}" for i in range(len(features.exprs)) for kind in ("mean", "var")]
    released = get_session().release(dataset, measures, where=where, by=(key,), epsilon=epsilon, shape="frame",
                                     labels=labels, what=describe_text)
    info = replace(released._dp, query=describe_text)
    table = pd.DataFrame(released).to_numpy(dtype=float)
    counts = np.clip(np.nan_to_num(table[:, 0]), 0.0, None)
    lows, highs = features.lows, features.highs
    centre, widest = (lows + highs) / 2, ((highs - lows) / 2) ** 2
    theta = np.clip(np.where(np.isfinite(table[:, 1::2]), table[:, 1::2], centre), lows, highs)
    # Each variance's upper 95% bound, not its noisy value: a variance that noise pushed towards 0
    # would make one feature decide every prediction, while one too large only weakens that feature.
    upper = info.ci_high.to_numpy(dtype=float)[:, 2::2] if info.ci_high is not None else table[:, 2::2]
    variance = np.clip(np.where(np.isfinite(upper), upper, widest), 0.0, widest)
    smoothing = options.get("var_smoothing", 1e-9)
    # scikit-learn adds var_smoothing times the largest variance of the data; the largest released
    # variance stands in for it (a floor keeps predict from dividing by zero).
    epsilon_ = smoothing * max(float(variance.max()), float(widest.max()) * 1e-6)
    priors = options.get("priors")
    if priors is None:
        # Released counts can be 0 for a rare class; a prior of 0 would make it impossible to predict.
        floored = np.maximum(counts, 1.0)
        priors = floored / floored.sum()
    _forget_fit(estimator)
    estimator.classes_ = np.asarray(classes)
    estimator.class_count_ = counts
    estimator.class_prior_ = np.asarray(priors, dtype=float)
    estimator.theta_ = theta
    estimator.var_ = variance + epsilon_
    estimator.epsilon_ = epsilon_
    estimator.n_features_in_ = len(features.exprs)
    estimator._dp = info
    return estimator


# ------------------------------------------------------------------------------------- adoption
def _forget_fit(estimator) -> None:
    """Drop the fitted state of an earlier fit: it must not mix with this one."""
    for key in [k for k in vars(estimator) if k.endswith("_") and not k.startswith("_")]:
        delattr(estimator, key)


def _adopt(estimator, model) -> None:
    """Give the user's instance diffprivlib's fitted DP state (and only that)."""
    _forget_fit(estimator)
    for key, value in vars(model).items():
        if key.endswith("_") and not key.startswith("_") and key not in _EXACT_ATTRIBUTES:
            setattr(estimator, key, np.full_like(value, np.nan, dtype=float) if key in _COUNT_SCALED else value)
    if type(estimator).__name__ == "KMeans":
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        # scikit-learn's KMeans.predict reads its thread count from fit.
        estimator._n_threads = _openmp_effective_n_threads()


# ------------------------------------------------------------------------------- scores and metrics
_CLASSIFIERS = ("LogisticRegression", "GaussianNB", "RandomForestClassifier", "DecisionTreeClassifier")


def score_private(estimator, X, y=None, *, epsilon=None, sample_weight=None):
    """``model.score(X, y)`` on private data, as a DP release.

    Classifiers: the DP share of rows whose predicted class equals the label (accuracy), a DP mean
    of a 0/1 value with its 95% interval. LinearRegression: the DP coefficient of determination
    ``1 - MSE / Var(y)`` from one release of the mean squared error (predictions and labels clamped
    to the label's bounds) and the label's variance; a post-processed ratio without an interval.
    Predictions are computed inside the session from each person's bounded rows and never leave it.
    """
    from .release import DPFloat
    from .session import Derived

    name = type(estimator).__name__
    if name not in _CLASSIFIERS + ("LinearRegression",) or not _is_sklearn(type(estimator)):
        raise PrivacyError(f"{name}.score on private data has no DP version; score one of "
                           f"{', '.join(_CLASSIFIERS + ('LinearRegression',))} inside %%dp, or score on public data.")
    if sample_weight is not None:
        raise PolicyError("sample_weight is not supported when scoring on private data; score without it.")
    if not hasattr(estimator, "n_features_in_"):
        raise PolicyError(f"this {name} is not fitted yet; fit it first (inside %%dp for private data).")
    spec = SUPPORTED[name]
    features, label, where = _columns(name, spec, X, y)
    dataset = X._ds
    inputs = tuple(dict.fromkeys(features.sources + (label,)))

    def predictions(rows):
        X, present = features.matrix(rows)
        # A row without a value for some feature cannot be predicted; it counts as wrong (or as the
        # largest error), so no row is dropped depending on the model.
        guess = estimator.predict(np.where(present[:, None], X, (features.lows + features.highs) / 2))
        return guess, present

    if name in _CLASSIFIERS:
        def correct(rows):
            guess, present = predictions(rows)
            return pd.DataFrame({"correct": ((guess == rows[label].to_numpy()) & present).astype(float)})

        derived = Derived(inputs, correct, f"{name}.score (accuracy) on {features.text()} -> {label}")
        return get_session().release(dataset, [P.Mean(P.Col("correct"), 0.0, 1.0)], where=where, epsilon=epsilon,
                                     derived=derived)
    low, high = _declared_bounds(dataset, label, "the label")

    def errors(rows):
        truth = np.clip(rows[label].to_numpy(float), low, high)
        guess, present = predictions(rows)
        error = np.where(present, (np.clip(guess, low, high) - truth) ** 2, (high - low) ** 2)
        return pd.DataFrame({"squared_error": error, "label": truth})

    derived = Derived(inputs, errors, f"{name}.score (R²) on {features.text()} -> {label}")
    parts = get_session().release(
        dataset, [P.Mean(P.Col("squared_error"), 0.0, (high - low) ** 2), P.Variance(P.Col("label"), low, high)],
        where=where, epsilon=epsilon, derived=derived, shape="series", labels=["mse", "variance"])
    mse, variance = float(parts["mse"]), float(parts["variance"])
    info = replace(parts._dp, ci_low=None, ci_high=None, accuracy="no interval (a ratio of two DP values)",
                   notes=parts._dp.notes + (f"R² = 1 - MSE / Var(y) with DP MSE {mse:.4g} and Var(y) {variance:.4g}",))
    return DPFloat(1.0 - mse / variance if variance > 0 else float("nan"), info)


def accuracy_score(y_true, y_pred, *, normalize=True, sample_weight=None, epsilon=None):
    """``sklearn.metrics.accuracy_score`` of two private columns: the DP share (or count) of equal rows."""
    agree = _pair(y_true, y_pred, "accuracy_score", sample_weight) == y_pred
    return agree.mean(epsilon=epsilon) if normalize else agree.sum(epsilon=epsilon)


def mean_squared_error(y_true, y_pred, *, sample_weight=None, epsilon=None, **unsupported):
    """``sklearn.metrics.mean_squared_error`` of two private columns with declared (or derivable) bounds."""
    if unsupported:
        raise PolicyError(f"mean_squared_error on private data does not take {', '.join(sorted(unsupported))}.")
    difference = _pair(y_true, y_pred, "mean_squared_error", sample_weight) - y_pred
    return (difference * difference).mean(epsilon=epsilon)


def confusion_matrix(y_true, y_pred, *, labels=None, sample_weight=None, normalize=None, epsilon=None):
    """``sklearn.metrics.confusion_matrix`` of two private columns: a DP table of counts (true x predicted).

    Unlike scikit-learn it returns a DataFrame (rows: true class, columns: predicted class), so the
    classes and the 95% intervals stay attached; ``.to_numpy()`` gives the plain array.
    """
    from .frame import crosstab

    _pair(y_true, y_pred, "confusion_matrix", sample_weight)
    if normalize is not None:
        raise PolicyError("confusion_matrix(normalize=...) on private data: normalize the released table "
                          "yourself (table / table.sum()), which is free post-processing.")
    table = crosstab(y_true, y_pred, epsilon=epsilon)
    if labels is not None:
        info = table._dp
        table = type(table)(table.reindex(index=list(labels), columns=list(labels)))
        table._dp = info
    return table


def _pair(y_true, y_pred, what: str, sample_weight):
    if not (isinstance(y_true, PrivateSeries) and isinstance(y_pred, PrivateSeries)):
        raise PrivacyError(f"{what} on private data takes two private columns of one frame (the label and a "
                           "column of predictions); a model's predictions on private rows stay private: use "
                           "model.score(X, y) inside %%dp for its DP accuracy.")
    if sample_weight is not None:
        raise PolicyError(f"{what} on private data does not take sample_weight.")
    return y_true


# ------------------------------------------------------------------------------------------ pipelines
_TRANSFORMERS = ("StandardScaler",)


def fit_pipeline(pipeline, X, y=None, *, epsilon=None):
    """``Pipeline([...]).fit(X, y)`` on private data: each step is fitted as its own DP release.

    The steps before the last must be DP transformers (StandardScaler); each is fitted on the private
    frame, and its fitted transformation is applied to the private columns as row-wise arithmetic,
    with bounds carried through by interval arithmetic. The last step is any supported estimator.
    Every step is charged (the cell's or the call's epsilon, or the policy's default, for each).
    """
    steps = list(pipeline.steps)
    for step_name, step in steps[:-1]:
        if type(step).__name__ not in _TRANSFORMERS or not _is_sklearn(type(step)):
            raise PolicyError(f"pipeline step '{step_name}' ({type(step).__name__}) has no DP version before the "
                              f"last step; on private data a Pipeline chains {', '.join(_TRANSFORMERS)} and ends with "
                              f"one of: {supported_names()}.")
        fit_private(step, X, epsilon=epsilon)
        X = _transformed(step, X)
    last_name, last = steps[-1]
    if last is None or last == "passthrough":
        raise PolicyError("a Pipeline on private data must end with an estimator, not 'passthrough'.")
    fit_private(last, X, y, epsilon=epsilon)
    pipeline._dp = last._dp
    return pipeline


def score_pipeline(pipeline, X, y=None, *, epsilon=None, sample_weight=None):
    """``pipeline.score(X, y)`` on private data: the last step's DP score on the transformed columns."""
    for _, step in pipeline.steps[:-1]:
        if type(step).__name__ not in _TRANSFORMERS:
            raise PolicyError(f"{type(step).__name__} has no DP version; score this Pipeline on public data.")
        X = _transformed(step, X)
    return score_private(pipeline.steps[-1][1], X, y, epsilon=epsilon, sample_weight=sample_weight)


def _transformed(scaler, X):
    """A fitted StandardScaler applied to the private columns as arithmetic (nothing is read)."""
    if not isinstance(X, PrivateFrame):
        raise PrivacyError("a Pipeline on private data needs X as a private frame (df[['age', 'bmi']]).")
    columns = {}
    for i, (name, expr) in enumerate(X._cols.items()):
        if getattr(scaler, "mean_", None) is not None and scaler.with_mean:
            expr = P.BinOp("-", expr, P.Lit(float(scaler.mean_[i])))
        if getattr(scaler, "scale_", None) is not None and scaler.with_std:
            expr = P.BinOp("/", expr, P.Lit(float(scaler.scale_[i])))
        columns[name] = expr
    return PrivateFrame(X._ds, columns, X._where)
