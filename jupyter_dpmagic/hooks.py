"""Ordinary pandas and scikit-learn functions that also accept private columns.

``pandas.crosstab`` is a function, not a method, so a private column cannot answer it by itself. The
wrapper installed here sends calls whose arguments are private columns to the DP version and every
other call, unchanged, to pandas.

scikit-learn estimators read their input themselves. For the estimators that have a DP version
(:data:`jupyter_dpmagic.models.SUPPORTED`), ``fit`` on a private frame trains that version; methods
that would return one value per private row (``predict``, ``transform``, ...) are refused; and
scikit-learn's input check (``sklearn.utils.validation.check_array``) refuses private frames for
every other estimator with a message naming the supported ones. Calls on ordinary data are passed
on unchanged.
"""

from __future__ import annotations

import functools
import importlib.util

import pandas as pd

__all__ = ["install"]

# Where scikit-learn defines the estimators that have a DP version (class name -> module).
_SKLEARN_CLASSES = {
    "LogisticRegression": "sklearn.linear_model",
    "LinearRegression": "sklearn.linear_model",
    "GaussianNB": "sklearn.naive_bayes",
    "KMeans": "sklearn.cluster",
    "PCA": "sklearn.decomposition",
    "StandardScaler": "sklearn.preprocessing",
    "RandomForestClassifier": "sklearn.ensemble",
    "DecisionTreeClassifier": "sklearn.tree",
}

# Methods that return one value per input row, or a statistic of the rows without noise.
_ROW_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform",
                "inverse_transform", "score", "score_samples", "fit_transform", "fit_predict", "partial_fit")


def install() -> None:
    """Wrap ``pandas.crosstab`` and, when scikit-learn is installed, its estimators (idempotent)."""
    _install_crosstab()
    if importlib.util.find_spec("sklearn") is not None:
        _install_sklearn()


def _install_crosstab() -> None:
    original = pd.crosstab
    if getattr(original, "_dpmagic", False):
        return

    @functools.wraps(original)
    def crosstab(index, columns, *args, **kwargs):
        from .frame import PrivateSeries, crosstab as private_crosstab

        if isinstance(index, PrivateSeries) or isinstance(columns, PrivateSeries):
            return private_crosstab(index, columns, *args, **kwargs)
        return original(index, columns, *args, **kwargs)

    crosstab._dpmagic = True
    pd.crosstab = crosstab


# ------------------------------------------------------------------------------------- scikit-learn
def _install_sklearn() -> None:
    import importlib

    import sklearn.utils.validation as validation

    for name, module in _SKLEARN_CLASSES.items():
        cls = getattr(importlib.import_module(module), name)
        _wrap(cls, "fit", _routed("fit_private"))
        for method in _ROW_METHODS:
            if hasattr(cls, method):
                _wrap(cls, method, _routed("score_private") if method == "score" else _refuse_rows)
    _install_pipeline()
    _install_metrics()
    _install_split()
    if not getattr(validation.check_array, "_dpmagic", False):
        # validate_data and check_X_y look check_array up in this module at call time, so every
        # estimator's input check passes through here.
        validation.check_array = _guarded_check_array(validation.check_array)


def _wrap(cls, method: str, make) -> None:
    original = cls.__dict__.get(method)
    if original is None:
        # Inherited: wrap what the class would call, on the class itself.
        original = getattr(cls, method)
    if getattr(original, "_dpmagic", False):
        return
    if hasattr(original, "check") and hasattr(original, "fn"):
        # scikit-learn's available_if: wrap the function and keep the availability check, so that
        # hasattr(pipeline, "predict_proba") still answers as scikit-learn would.
        wrapper = make(original.fn, method)
        wrapper._dpmagic = True
        replacement = type(original)(wrapper, original.check, attribute_name=original.attribute_name)
        replacement._dpmagic = True
        setattr(cls, method, replacement)
        return
    wrapper = make(original, method)
    wrapper._dpmagic = True
    setattr(cls, method, wrapper)


def _is_private(value) -> bool:
    from .frame import _Private

    return isinstance(value, _Private)


def _routed(private_name: str):
    """A wrapper maker: calls with private X or y go to ``models.<private_name>``, others unchanged."""
    def make(original, method):
        @functools.wraps(original)
        def wrapper(self, X, y=None, *args, **kwargs):
            if _is_private(X) or _is_private(y):
                from . import models

                if args:
                    raise TypeError(f"{type(self).__name__}.{method} on private data takes X, y and keywords only.")
                return getattr(models, private_name)(self, X, y, **kwargs)
            return original(self, X, y, *args, **kwargs)

        return wrapper

    return make


def _refuse_rows(original, method):
    @functools.wraps(original)
    def refused(self, *args, **kwargs):
        if any(_is_private(a) for a in (*args, *kwargs.values())):
            from .errors import PrivacyError

            raise PrivacyError(_row_message(type(self).__name__, method))
        return original(self, *args, **kwargs)

    return refused


def _install_pipeline() -> None:
    from sklearn.pipeline import Pipeline

    _wrap(Pipeline, "fit", _routed("fit_pipeline"))
    _wrap(Pipeline, "score", _routed("score_pipeline"))
    for method in ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform",
                   "fit_transform", "fit_predict"):
        if hasattr(Pipeline, method):
            _wrap(Pipeline, method, _refuse_rows)


def _install_split() -> None:
    """``sklearn.model_selection.train_test_split`` of private frames gives private halves."""
    import sklearn.model_selection as model_selection

    original = model_selection.train_test_split
    if getattr(original, "_dpmagic", False):
        return

    @functools.wraps(original)
    def train_test_split(*arrays, **options):
        if any(_is_private(value) for value in (*arrays, *options.values())):
            from .split import train_test_split as private_split

            return private_split(*arrays, **options)
        return original(*arrays, **options)

    train_test_split._dpmagic = True
    model_selection.train_test_split = train_test_split


def _install_metrics() -> None:
    """``sklearn.metrics`` functions given private columns release DP values instead."""
    import sklearn.metrics as metrics

    from . import models

    for name in ("accuracy_score", "mean_squared_error", "confusion_matrix"):
        original = getattr(metrics, name)
        if getattr(original, "_dpmagic", False):
            continue
        private = getattr(models, name)

        def wrapper(*args, _original=original, _private=private, **kwargs):
            if any(_is_private(a) for a in (*args, *kwargs.values())):
                return _private(*args, **kwargs)
            return _original(*args, **kwargs)

        functools.update_wrapper(wrapper, original)
        wrapper._dpmagic = True
        setattr(metrics, name, wrapper)


def _row_message(name: str, method: str) -> str:
    if method in ("fit_transform", "fit_predict"):
        return (f"{name}.{method} on private data would return rows; fit on the private frame inside %%dp "
                f"(model.fit(X)) and call {method.split('_')[1]} on public data.")
    if method == "partial_fit":
        return f"{name}.partial_fit on private data has no DP version; call fit(X, y) inside %%dp."
    return (f"{name}.{method} on private data would return rows (one value per patient); call it on public "
            "data (a numpy array or DataFrame), or use model.score(X, y) inside %%dp for a DP accuracy.")


def _guarded_check_array(original):
    @functools.wraps(original)
    def check_array(array, *args, **kwargs):
        if _is_private(array):
            from .errors import PrivacyError
            from .models import supported_names

            raise PrivacyError("scikit-learn cannot read the rows of a private frame. Fitting is a DP release "
                               f"only for the supported estimators, inside %%dp: {supported_names()}; "
                               "predict, transform and score take public data only.")
        return original(array, *args, **kwargs)

    check_array._dpmagic = True
    return check_array
