"""Every public entry point given bad values: a readable PrivacyError or ValueError, never a crash or a charge.

Bad values: wrong types, NaN, infinities, huge and negative numbers, empty frames, unicode and odd
column names. An error must be a :class:`PrivacyError` (``PolicyError`` is also a ``ValueError``) or
a ``ValueError``, its message must say what to do (an advice word or the option's name), and the
ledger must be exactly as before.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

import jupyter_dpmagic as dp
from jupyter_dpmagic.api import budgets

def fast(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
ADVICE = re.compile(r"\b(e\.g\.|use|pass|give|declare|write|rename|drop|must|takes?|needs?|did you mean|instead|set|"
                    r"ask|run|protect|select|filter|aggregate|choose|fill|leave|name|only|between|accepts?|"
                    r"usage|expected|required|invalid|not available|no column|no dataset|unknown|list|load|columns|below|once|"
                    r"first|less|more)\b", re.IGNORECASE)

# Bad scalars, shared by many parameters.
BAD_NUMBERS = [0, -1, -0.0, -1e-300, float("nan"), float("inf"), -float("inf"), 1e308, 10**30, "0.1", "", None,
               True, False, [0.1], (0.1,), {"epsilon": 1}, 1j, np.float64("nan"), np.int64(-3), object(),
               pd.NA, pd.NaT, np.datetime64("2020-01-01")]
WEIRD_NAMES = ["âge", "年龄", "🙂 score", "", " ", "a b", "a\nb", "a'b\"c", "__class__", "_ds", "columns", "mean",
               "count", "x" * 300, "\x00", "ü" * 40, "groupby", "shape", "-1", "1e5", "None", "NaN"]


def readable(error: BaseException, *names: str) -> None:
    """A refusal a person can act on: the right type, a message, advice or the option's name."""
    assert isinstance(error, (dp.PrivacyError, ValueError)), f"{type(error).__name__}: {error}"
    text = str(error)
    assert text.strip(), f"empty message of {type(error).__name__}"
    assert len(text) < 3000, f"message of {len(text)} characters"
    assert "Traceback" not in text, text
    assert ADVICE.search(text) or any(n and n in text for n in names), f"no advice in: {text}"


def ledger_state():
    """Every budget of the user: what it has spent and how many charges it holds."""
    return sorted((s.name, s.epsilon_total, s.releases, round(s.epsilon_spent, 12), round(s.delta_spent, 15))
                  for s in budgets().statuses)


def outcome(call, *names):
    """Call; on an error check it is readable and that the ledger did not move."""
    before = ledger_state()
    try:
        value = call()
    except Exception as error:  # noqa: BLE001 - the type is what is checked
        readable(error, *names)
        assert ledger_state() == before, f"charged on failure: {error}"
        return error
    return value


@pytest.fixture
def frame():
    rng = np.random.default_rng(5)
    n = 120
    return pd.DataFrame({"age": rng.uniform(18, 90, n), "weight": rng.uniform(40, 120, n),
                         "ward": rng.choice(["cardio", "onco"], n), "sex": rng.choice(["F", "M"], n),
                         "pid": np.repeat(np.arange(60), 2)})


@pytest.fixture
def pf(ledger_path, frame, dataset_name):
    return dp.protect(frame, name=dataset_name, epsilon=1e4, bounds={"age": (0, 110), "weight": (0, 200)},
                      categories={"ward": ["cardio", "onco"], "sex": ["F", "M"]})


# ------------------------------------------------------------------------------------ protect()
def bad_frames():
    rng = np.random.default_rng(1)
    base = pd.DataFrame({"age": rng.uniform(0, 90, 30), "ward": rng.choice(["a", "b"], 30)})
    weird = st.sampled_from(WEIRD_NAMES)
    return st.one_of(
        st.sampled_from([
            None, 3, "df", [1, 2], {"age": [1, 2]}, base.to_numpy(), base.age, base.to_dict(), pd.DataFrame(),
            base.iloc[:0], base.iloc[:, :0], base.set_axis([0, 1], axis=1), base.set_axis(["a", "a"], axis=1),
            base.assign(age=np.nan), base.assign(age=np.inf), base.assign(age=-np.inf), base.assign(age=1e308),
            base.assign(age=-1e308), base.assign(age=7.0), base.assign(mixed=[1, "a"] * 15),
            base.assign(when=pd.Timestamp("2020-01-01")), base.assign(ward=None), base.iloc[:1],
            base.assign(obj=[object()] * 30), base.assign(big=10**30), base.assign(cat=base.ward.astype("category")),
            base.assign(flag=True), base.set_axis(pd.MultiIndex.from_tuples([("a", "b"), ("c", "d")]), axis=1),
            base.astype({"age": "Float64"}).assign(age=pd.NA), base.assign(lst=[[1]] * 30),
        ]),
        st.lists(weird, min_size=1, max_size=3).map(
            lambda names: pd.DataFrame({n: rng.uniform(0, 9, 30) for n in names})),
    )


_fresh = itertools.count()


@fast(150)
@given(data=st.data())
def test_protect_fuzzed(ledger_path, data):
    df = data.draw(bad_frames(), label="df")
    kwargs = {"name": data.draw(st.one_of(st.just(None), st.sampled_from(WEIRD_NAMES + [None, 3, b"x"])),
                                label="name") or f"fuzz_{next(_fresh)}",
              "epsilon": data.draw(st.one_of(st.just(1.0), st.sampled_from(BAD_NUMBERS)), label="epsilon")}
    columns = list(df.columns) if isinstance(df, pd.DataFrame) else ["age"]
    column = data.draw(st.sampled_from(columns + ["nope"]) if columns else st.just("nope"), label="column")
    for key, choices in {
        "delta": BAD_NUMBERS + [1.0, 0.5, 1e-6],
        "bounds": [{column: (5, 1)}, {column: (np.nan, 1)}, {column: ("a", "b")}, {column: (0, np.inf)},
                   {column: (0,)}, {column: 5}, {column: None}, 5, "age", [(0, 1)], {column: {0, 1}},
                   {column: (True, False)}, {column: (-1e308, 1e308)}, {column: (0, 10**400)}, {3: (0, 1)},
                   {column: (1, 1)}, {column: (0, 1, 2)}, {column: np.array([0, 1])}],
        "categories": [{column: []}, {column: ["a", "a"]}, {column: [[1], [2]]}, {column: "abc"}, {column: None},
                       {column: [None]}, {column: [np.nan]}, {column: ["a", 1, 2.5]}, {column: [{}]}, ["a"], 3,
                       {column: {"a", "b"}}, {column: ["é", "🙂"]}, {column: range(3)}],
        "privacy_unit": [column, "nope", 3, "", None, ["age"], np.nan],
        "max_rows_per_unit": [0, -1, 1.5, "2", np.nan, True, 10**30, np.int64(2), None],
        "max_groups_per_unit": [0, -1, 1.5, "2", np.nan, True, 10**30, np.int64(2)],
        "policy": [3, "no/such/policy.toml", {}, {"bogus": 1}, [], {"columns": {column: {"tier": "nope"}}},
                   {"columns": {column: {"bounds": [1, 0]}}}, {"purposes": {"explore": {"epsilon": -1}}}],
    }.items():
        if data.draw(st.integers(0, 3), label=f"use {key}") == 0:
            kwargs[key] = data.draw(st.sampled_from(choices), label=key)
    names = [*kwargs, "DataFrame", "column", "max_rows", "max_groups"]
    result = outcome(lambda: dp.protect(df, **kwargs), *names)
    if isinstance(result, dp.PrivateFrame):
        # Whatever protect() accepted must work or refuse readably, and nothing is charged at protect().
        if result.name.startswith("fuzz_"):  # a fresh budget: nothing is charged at protect()
            status = dp.budget(result.name)
            assert (status.releases, status.epsilon_spent) == (0, 0)
        repr(result), result._repr_html_(), dp.policy(result.name), dp.budget(result.name)
        first = result.columns[0] if len(result.columns) else "none"
        for attempt in (lambda: len(result), lambda: result.describe(), lambda: result[first].mean(bounds=(0, 1)),
                        lambda: result.groupby(first).size()):
            with dp.spending(epsilon=0.01):
                outcome(attempt, *result.columns)


# ------------------------------------------------------------------------------------ spending()
@fast(80)
@given(option=st.sampled_from(["epsilon", "delta", "budget", "accuracy", "purpose"]),
       value=st.one_of(st.sampled_from(BAD_NUMBERS + ["5%", "100%", "-5%", "nan%", "abc", "publsh", "🙂", "", " ",
                                                     "explore ", "PUBLISH", 0.5, 1e-13]),
                       st.floats(allow_nan=True, allow_infinity=True)))
def test_spending_fuzzed(pf, option, value):
    def run():
        with dp.spending(**{option: value}):
            return pf.age.count() if option != "delta" else len(pf)
    result = outcome(run, option, "epsilon", "accuracy")
    if not isinstance(result, Exception):
        assert dp.info(result).epsilon > 0


# ------------------------------------------------------------------------------- release calls
RELEASES = {
    "mean": lambda pf, kw: pf.age.mean(**kw),
    "sum": lambda pf, kw: pf.weight.sum(**kw),
    "count": lambda pf, kw: pf.age.count(**kw),
    "median": lambda pf, kw: pf.age.median(**kw),
    "var": lambda pf, kw: pf.age.var(**kw),
    "std": lambda pf, kw: pf[pf.ward == "onco"].age.std(**kw),
    "quantile": lambda pf, kw: pf.age.quantile([0.1, 0.9], **kw),
    "describe": lambda pf, kw: pf.describe(**kw),
    "histogram": lambda pf, kw: pf.age.histogram(bins=4, **kw),
    "value_counts": lambda pf, kw: pf.ward.value_counts(**kw),
    "groupby size": lambda pf, kw: pf.groupby("ward").size(**kw),
    "groupby mean": lambda pf, kw: pf.groupby(["ward", "sex"]).age.mean(**kw),
    "crosstab": lambda pf, kw: dp.crosstab(pf.ward, pf.sex, **kw),
    "count_rows": lambda pf, kw: pf.count_rows(**kw),
    "frame mean": lambda pf, kw: pf[["age", "weight"]].mean(**kw),
}
BAD_ARGUMENTS = {
    "mean": ("bounds", [(5, 1), (np.nan, 1), ("a", "b"), (0, np.inf), (0,), 5, (1, 1), (-1e308, 1e308)]),
    "median": ("bounds", [(5, 1), (0, np.nan), "ab", (0, 10**400)]),
    "var": ("ddof", [-1, 1.5, "1", np.nan, 10**9, None]),
    "quantile": ("q", [1.5, -0.1, np.nan, "0.5", [], [0.5, 2], None, [[0.5]], np.inf]),
    "histogram": ("bins", [0, -3, 1.5, "4", np.nan, 10**9, None, [0, 1, 2], True]),
    "value_counts": ("normalize", ["yes", 2, None]),
    "describe": ("percentiles", [(2,), ("a",), None, (np.nan,), 0.5]),
}


@fast(200)
@given(what=st.sampled_from(sorted(RELEASES)), key=st.sampled_from(["epsilon", "delta"]),
       value=st.one_of(st.sampled_from(BAD_NUMBERS + [1e9, 1e-13, 1e-6, 0.5]),
                       st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20)),
       inside=st.booleans())
def test_release_with_bad_epsilon_or_delta(pf, what, key, value, inside):
    def run():
        if inside:
            with dp.spending(epsilon=0.01):
                return RELEASES[what](pf, {key: value})
        return RELEASES[what](pf, {key: value})
    result = outcome(run, key, "%%dp")
    if not isinstance(result, Exception):
        # Accepted: then it was inside a spending block, and a valid value (or None: the block's).
        assert inside and (value is None or (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0))


@fast(80)
@given(data=st.data())
def test_release_with_bad_arguments(pf, data):
    what = data.draw(st.sampled_from(sorted(BAD_ARGUMENTS)))
    key, values = BAD_ARGUMENTS[what]
    value = data.draw(st.sampled_from(values))
    call = {"mean": lambda: pf.age.mean(bounds=value), "median": lambda: pf.age.median(bounds=value),
            "var": lambda: pf.age.var(ddof=value), "quantile": lambda: pf.age.quantile(value),
            "histogram": lambda: pf.age.histogram(bins=value), "describe": lambda: pf.describe(percentiles=value),
            "value_counts": lambda: pf.ward.value_counts(normalize=value)}[what]

    def run():
        with dp.spending(epsilon=0.01):
            return call()
    outcome(run, key)


@fast(60)
@given(literal=st.one_of(st.sampled_from([np.nan, np.inf, -np.inf, 1e308, 10**400, "", "🙂", None, [1], {}, (1, 2),
                                          object(), pd.NA, b"x", 1j, np.array([1, 2])]),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)),
       op=st.sampled_from(["==", "!=", "<", ">", "+", "*", "/", "**", "%", "//", "&", "|", "isin", "between",
                           "fillna", "clip", "astype"]),
       column=st.sampled_from(["age", "ward", "sex"]))
def test_row_wise_operations_with_bad_literals(pf, literal, op, column):
    series = pf[column]

    def run():
        if op == "isin":
            built = series.isin(literal)
        elif op == "between":
            built = series.between(literal, literal)
        elif op in ("fillna", "clip", "astype"):
            built = getattr(series, op)(literal)
        else:
            built = eval(f"series {op} literal", {"series": series, "literal": literal})  # noqa: S307
        with dp.spending(epsilon=0.01):
            target = pf[built] if built.dtype == "bool" else None
            return len(target) if target is not None else built.count()
    outcome(run, column, op, "number", "private")


# ---------------------------------------------------------------------- budget/history/policy/explain
@fast(60)
@given(name=st.one_of(st.sampled_from(WEIRD_NAMES + [None, 3, 1.5, b"x", "nope"]), st.text(max_size=20)))
def test_reading_functions_with_bad_names(pf, name):
    for reader in (dp.budget, dp.history, dp.policy, dp.budget_widget):
        result = outcome(lambda: reader(name), "name", "dataset")
        if not isinstance(result, Exception):
            repr(result)


@pytest.mark.parametrize("reader", [
    dp.budget, dp.history, dp.policy, dp.budget_widget,
])
def test_reading_functions_with_an_unhashable_name(pf, reader):
    outcome(lambda: reader(["a"]), "name", "dataset")


@pytest.mark.parametrize("what", [None, 3, "df.age.mean()", lambda: 1 / 0, lambda: [].pop(), lambda x: x])
def test_explain_with_bad_callables(pf, what):
    # Only the library's own errors are checked: an error of the user's expression stays theirs.
    before = ledger_state()
    try:
        dp.explain(what)
    except (ZeroDivisionError, IndexError):
        pass
    except Exception as error:  # noqa: BLE001
        if not isinstance(error, TypeError):
            readable(error, "explain")
    assert ledger_state() == before


@fast(60)
@given(option=st.sampled_from(["epsilon", "delta", "purpose", "accuracy"]),
       value=st.sampled_from(BAD_NUMBERS + ["5%", "abc", "publsh", ""]))
def test_explain_with_bad_options(pf, option, value):
    outcome(lambda: dp.explain(lambda: pf.age.mean(), **{option: value}), option)


# ------------------------------------------------------------------------------------ magics
@pytest.fixture
def shell(pf, frame):
    sh = InteractiveShell.instance()
    assert sh.run_cell("%load_ext jupyter_dpmagic").success
    sh.user_ns.update(raw=frame, df=pf, notframe=3)
    yield sh
    for name in ("raw", "df", "notframe"):
        sh.user_ns.pop(name, None)


MAGICS = [
    "%dp", "%dp bogus", "%dp protec raw", "%dp protect", "%dp protect nothere --name x --epsilon 1",
    "%dp protect notframe --name x --epsilon 1", "%dp protect raw --name x", "%dp protect raw --epsilon 1",
    "%dp protect raw --name x --epsilon abc", "%dp protect raw --name x --epsilon nan",
    "%dp protect raw --name x --epsilon -1", "%dp protect raw --name x --epsilon inf",
    "%dp protect raw --name x --epsilon 1 --delta 2", "%dp protect raw --name x --epsilon 1 --bounds age=1",
    "%dp protect raw --name x --epsilon 1 --bounds age=a:b", "%dp protect raw --name x --epsilon 1 --bounds age=5:1",
    "%dp protect raw --name x --epsilon 1 --bounds =1:2", "%dp protect raw --name x --epsilon 1 --bounds age",
    "%dp protect raw --name x --epsilon 1 --bounds nope=0:1", "%dp protect raw --name x --epsilon 1 --bounds age=nan:1",
    "%dp protect raw --name x --epsilon 1 --categories ward=", "%dp protect raw --name x --epsilon 1 --categories ward",
    "%dp protect raw --name x --epsilon 1 --categories ward=a,a", "%dp protect raw --name x --epsilon 1 --max-rows 0",
    "%dp protect raw --name x --epsilon 1 --unit pid --max-rows 1.5", "%dp protect raw --name x --epsilon 1 --unit nope",
    "%dp protect raw --name x --epsilon 1 --policy /no/such.toml", "%dp protect raw --name 🙂 --epsilon 0",
    "%dp protect raw --name x --epsilon 1 --max-groups -2",
    "%dp budget a b", "%dp budget nope", "%dp history nope", "%dp history a b", "%dp policy nope", "%dp policy 🙂",
    "%dp explain", "%dp explain --epsilon abc df.age.mean()", "%dp explain df.age.mean(",
    "%dp explain --epsilon -1 df.age.mean()", "%dp explain --accuracy 0 len(df)", "%dp explain --purpose publsh len(df)",
    "%dp explain --delta 2 df.age.mean()", "%dp explain df.head()",
    "%%dp --epsilon\nlen(df)", "%%dp --bogus\nlen(df)", "%%dp --accuracy abc\nlen(df)", "%%dp --accuracy 0%\nlen(df)",
    "%%dp --budget -1\nlen(df)", "%%dp --budget nan\nlen(df)", "%%dp --epsilon inf\nlen(df)",
    "%%dp --epsilon 1e-300\nlen(df)", "%%dp --delta -1\nlen(df)", "%%dp --purpose\nlen(df)",
    "%%dp --epsilon 0.1 --accuracy 1\nlen(df)", "%%dp --epsilon 1e9\nlen(df)",
    "%%dp --purpose 🙂\nlen(df)", "%%dp --accuracy 200%\nlen(df)",
]


@pytest.mark.parametrize("code", MAGICS)
def test_magics_with_bad_arguments(shell, code):
    before = ledger_state()
    result = shell.run_cell(code)
    assert not result.success, f"{code!r} was accepted"
    readable(result.error_in_exec, "%dp", "--", "usage")
    assert ledger_state() == before


def test_a_misspelt_column_in_explain_stays_an_attribute_error(shell):
    # As in plain Python (hasattr and IPython rely on it), with the close match as advice.
    before = ledger_state()
    result = shell.run_cell("%dp explain df.agee.mean()")
    assert isinstance(result.error_in_exec, AttributeError) and "Did you mean 'age'" in str(result.error_in_exec)
    assert ledger_state() == before


@pytest.mark.parametrize("code", ["%%dp 'unclosed\nlen(df)", "%dp protect raw --name 'x --epsilon 1"])
def test_magics_with_unclosed_quotes(shell, code):
    result = shell.run_cell(code)
    assert not result.success
    readable(result.error_in_exec, "%dp", "--", "usage")


# ------------------------------------------------------------------------- train_test_split, fit
@fast(80)
@given(test_size=st.one_of(st.none(), st.sampled_from(BAD_NUMBERS + [0.3, 1.0, 0.999999999, 3, 0.0]),
                           st.floats(allow_nan=True, allow_infinity=True)),
       train_size=st.one_of(st.none(), st.sampled_from([0.8, 1.0, 0, -0.5, np.nan, "0.7", 2])),
       shuffle=st.sampled_from([True, False, None, 0, "yes"]),
       stratify=st.sampled_from([None, "ward", [1, 2]]),
       arrays=st.sampled_from(["X", "X,y", "none", "frame", "list", "mixed", "two datasets", "filters"]))
def test_train_test_split_fuzzed(pf, frame, test_size, train_size, shuffle, stratify, arrays):
    other = dp.protect(frame.assign(age=frame.age + 1), name=f"{pf.name}_other", epsilon=1.0) \
        if arrays == "two datasets" else None
    chosen = {"X": (pf[["age", "weight"]],), "X,y": (pf[["age"]], pf.sex), "none": (), "frame": (frame,),
              "list": ([1, 2, 3],), "mixed": (pf.age, frame.age),
              "two datasets": (pf.age, other.age) if other is not None else (),
              "filters": (pf[pf.age > 3].age, pf.sex)}[arrays]
    stratify = pf.ward if stratify == "ward" else stratify
    result = outcome(lambda: dp.train_test_split(*chosen, test_size=test_size, train_size=train_size,
                                                 shuffle=shuffle, stratify=stratify),
                     "test_size", "train_size", "shuffle", "stratify", "train_test_split")
    if not isinstance(result, Exception):
        assert len(result) == 2 * len(chosen)
        assert all(isinstance(part, (dp.PrivateFrame, dp.PrivateSeries)) for part in result)


@fast(40)
@given(epsilon=st.one_of(st.sampled_from(BAD_NUMBERS + [1e9]), st.floats(allow_nan=True, allow_infinity=True)),
       model=st.sampled_from(["LogisticRegression", "LinearRegression", "GaussianNB", "KMeans", "PCA",
                              "StandardScaler", "KNeighborsClassifier"]))
def test_fit_with_bad_epsilon(pf, epsilon, model):
    pytest.importorskip("diffprivlib")
    import sklearn.cluster
    import sklearn.decomposition
    import sklearn.linear_model
    import sklearn.naive_bayes
    import sklearn.neighbors
    import sklearn.preprocessing

    estimator = {"LogisticRegression": sklearn.linear_model.LogisticRegression,
                 "LinearRegression": sklearn.linear_model.LinearRegression,
                 "GaussianNB": sklearn.naive_bayes.GaussianNB, "KMeans": lambda: sklearn.cluster.KMeans(2),
                 "PCA": lambda: sklearn.decomposition.PCA(1),
                 "StandardScaler": sklearn.preprocessing.StandardScaler,
                 "KNeighborsClassifier": sklearn.neighbors.KNeighborsClassifier}[model]()
    y = pf.weight if model == "LinearRegression" else pf.sex

    def run():
        with dp.spending(epsilon=1.0):
            return dp.fit_private(estimator, pf[["age", "weight"]], y, epsilon=epsilon)
    result = outcome(run, "epsilon", model)
    if not isinstance(result, Exception):
        assert epsilon is None or (isinstance(epsilon, numbers.Real) and math.isfinite(epsilon) and epsilon > 0)


@pytest.mark.parametrize("key", ["epsilon", "delta"])
def test_an_integer_too_large_for_a_float(pf, key):
    def run():
        with dp.spending(epsilon=0.01):
            return pf.age.mean(**{key: 10**400})
    outcome(run, key)
