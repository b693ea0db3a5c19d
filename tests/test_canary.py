"""Canaries planted in a private frame never reach anything a user can see.

Every refusal path and a fuzzed mix of valid and invalid ``%%dp`` cells run through a real IPython
shell; then the shell's output, each formatted traceback (and every chained exception), log records,
warnings, the history and budget tables, ``%dp policy``, ``%dp explain``, the sidebar's payload and the
ledger file (as SQL and as raw bytes) are searched for the canaries. The fuzzed cells also check that
a cell that fails charges nothing beyond what it released before failing.
"""

from __future__ import annotations

import logging
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

import jupyter_dpmagic as dp
from jupyter_dpmagic.api import budgets
from _canary import (BOUNDS, CATEGORIES, assert_no_canary, canary_frame, exception_text, find_canaries,
                     ledger_holds_binary_canary, ledger_text, log_text, payload_text)

# What a failing cell may raise: refusals, and the errors pandas itself raises for the same mistakes
# (a misspelt attribute, a wrong argument). Anything else (ZeroDivisionError, IndexError from our
# internals, RuntimeError...) is a crash.
ACCEPTED = (dp.PrivacyError, ValueError, TypeError, KeyError, AttributeError)


class Watch:
    """Runs cells in a real shell and collects everything they show."""

    def __init__(self, shell, capfd, caplog, name):
        self.shell, self.capfd, self.caplog, self.name = shell, capfd, caplog, name
        self.seen: list[tuple[str, str]] = []

    def run(self, code: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.shell.run_cell(code)
        out, err = self.capfd.readouterr()
        shown = [("stdout", out), ("stderr", err), ("traceback", exception_text(result.error_in_exec)),
                 ("warnings", "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)),
                 ("log", log_text(self.caplog.records))]
        if result.success and result.result is not None:
            value = result.result
            shown.append(("result repr", repr(value)))
            html = getattr(value, "_repr_html_", None)
            if callable(html):
                shown.append(("result html", str(html())))
        self.caplog.clear()
        for where, text in shown:
            self.seen.append((f"{where} of {code!r}", text))
        return result

    def tables(self, ledger_path) -> None:
        """Everything outside cell output: tables, the sidebar, the ledger."""
        history = dp.history(self.name)
        self.seen += [("history", repr(history)), ("history html", history._repr_html_()),
                      ("budget", repr(dp.budget(self.name))), ("budgets", repr(budgets())),
                      ("policy", repr(dp.policy(self.name))), ("policy html", dp.policy(self.name)._repr_html_()),
                      ("sidebar payload", payload_text()), ("ledger", ledger_text(ledger_path))]
        for code in (f"%dp history {self.name}", f"%dp budget {self.name}", f"%dp policy {self.name}",
                     "%dp explain df.age.mean()", "%dp explain df.groupby('ward').weight.mean()",
                     "%dp explain --epsilon 0.2 df.describe()", "df", "print(df)", "df.note", "df.groupby('ward')",
                     "df.dtypes", "df.columns", "dir(df)", "df._repr_html_()", "df.note._repr_html_()"):
            self.run(code)

    def check(self) -> None:
        for where, text in self.seen:
            assert_no_canary(text, where)
        self.seen.clear()


@pytest.fixture
def shell(ledger_path):
    sh = InteractiveShell.instance()
    sh.user_ns["raw"] = canary_frame()
    assert sh.run_cell("%load_ext jupyter_dpmagic\nimport jupyter_dpmagic as dp").success
    yield sh
    for name in ("raw", "df", "pub"):
        sh.user_ns.pop(name, None)


@pytest.fixture
def watch(shell, capfd, caplog, dataset_name, ledger_path):
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.DEBUG)
    w = Watch(shell, capfd, caplog, dataset_name)
    protected = w.run(f"df = dp.protect(raw, name={dataset_name!r}, epsilon=1000.0, bounds={BOUNDS!r}, "
                      f"categories={CATEGORIES!r})")
    assert protected.success, protected.error_in_exec
    return w


def test_the_canaries_are_in_the_data_and_the_search_finds_them(ledger_path):
    frame = canary_frame()
    text = frame.to_string() + repr(frame.age.tolist()) + f"{frame.age.max():g} {frame.age.max():.4g}"
    assert find_canaries(text + f"{frame.patient_id.max():,}") == sorted(
        ["ZebulonQuixote", "xylophonicward", "Quuxvillezz", "Wilhelmina Canaryfeather",
         "91734662.851", "58213904.17", "86420973"])
    assert find_canaries("52.9747 (95% CI [41.66, 62.17]; ε=0.1) 9.17 e+07 0.9173466 1.2e+07") == []
    import struct
    path = ledger_path.parent / "probe.sqlite"
    path.write_bytes(b"x" + struct.pack("<d", 91734662.851))
    assert ledger_holds_binary_canary(path) == [91734662.851]


def test_the_watch_sees_a_leak(shell, capfd, caplog, dataset_name):
    # The search itself works: data printed, raised or logged in a cell is found.
    w = Watch(shell, capfd, caplog, dataset_name)
    w.run("import logging; logging.getLogger('probe').warning(raw.note.tolist())")
    w.run("print(raw.age.max())")
    w.run("raise ValueError(str(raw.city.tolist()))")
    w.run("raise RuntimeError('hidden') from KeyError(raw.full_name.tolist())")
    w.run("raw.patient_id.max()")
    found = {tuple(find_canaries(text)) for _, text in w.seen}
    assert {("ZebulonQuixote",), ("91734662.851",), ("Quuxvillezz",), ("Wilhelmina Canaryfeather",),
            ("86420973",)} <= found, found
    with pytest.raises(AssertionError, match="canary"):
        w.check()


# Refused operations: each fails the cell with a readable refusal (or pandas' own error type).
REFUSALS = [
    "df.head()", "df.tail(3)", "df.sample(5)", "df.iloc[0]", "df.loc[5]", "df.loc[5, 'age']", "df.at[5, 'age']",
    "df.iat[0, 0]", "df.values", "df.to_numpy()", "df.index", "df.T", "df.empty", "df.axes",
    "df[0:5]", "df.age[5]", "df.age.iloc[5]", "df.age.loc[5]", "df.age.values", "df.age.array", "df.age.tolist()",
    "df.age.to_numpy()", "list(df.age)", "[v for v in df.note]", "next(iter(df.groupby('ward')))",
    "for r in df.iterrows(): pass", "df.itertuples()", "float(df.age)", "int(df.age)", "bool(df.age)",
    "bool(df)", "len(df.age)", "df.age.unique()", "df.note.unique()", "df.city.nunique()", "df.drop_duplicates()",
    "df.age.min()", "df.weight.max()", "df.age.idxmax()", "df.note.mode()", "df.age.sort_values()",
    "df.sort_values('age')", "df.nlargest(3, 'age')", "df.age.rank()", "df.age.cumsum()", "df.reset_index()",
    "df.set_index('patient_id')", "df.age.apply(str)", "df.note.map(len)", "df.apply(len)", "df.age.agg('max')",
    "df.query('age > 1000')", "df.age.where(df.age > 1000)", "df.to_csv('out.csv')", "df.to_dict()",
    "df.note.to_string()", "df.to_json()", "df.to_html()", "df.age.to_list()", "df.merge(df)",
    "df.join(df)", "df.age.corr(df.weight)", "df.pivot_table(index='ward')", "df.note.str.upper()",
    "df.note.str.contains('Z')", "df.age.astype(str)", "df.age.item()", "df.age.squeeze()",
    "df.note.value_counts()", "df.city.value_counts()", "df.groupby('city').size()", "df.groupby('note').age.mean()",
    "df.groupby('patient_id').size()", "df.groupby('full_name').size()", "df.patient_id.mean()",
    "df.full_name.value_counts()", "df[df.patient_id > 5].age.mean()", "len(df[df.full_name == 'x'])",
    "df.ward.value_counts(dropna=False)", "df[df.ward == 'cardoi'].age.mean()", "df[df.ward.isin([])].age.mean()",
    "df.age.mean(epsilon=-1)", "df.age.mean(epsilon=float('nan'))", "df.age.mean(epsilon=1e9)",
    "df.age.mean(delta=1e-6)", "df.age.mean(bounds=(5, 1))", "df.age.mean(bounds=('a', 'b'))",
    "df.age.quantile(1.5)", "df.note.mean()", "df.note.sum()", "(df.note + 1).mean()", "df.agee.mean()",
    "df['agee'].mean()", "df.groupby('agee').size()", "df.groupby('ward')['agee'].mean()",
    "df.groupby('ward').note.mean()", "df.groupby('ward').apply(len)", "df.groupby('ward').first()",
    "df.groupby('ward').age.max()", "df.plot()", "df.age.plot.line()", "df.age.hist(bins=0)",
    "import pickle; pickle.dumps(df)", "import copy; copy.deepcopy(df.age)", "import numpy as np; np.asarray(df.age)",
    "import numpy as np; np.array(df)", "import pandas as pd; pd.Series(df.age)", "import pandas as pd; pd.DataFrame(df)",
    "import pandas as pd; pd.concat([df, df])", "import pandas as pd; pd.crosstab(df.note, df.city)",
    "df.age.mean(); df.head()", "x = df.age.sum(); df.age.values",
    "from sklearn.linear_model import LogisticRegression; LogisticRegression().fit(df[['age']], df.note)",
    "from sklearn.linear_model import LinearRegression; LinearRegression().fit(df[['weight']], df.age)",
    "from sklearn.neighbors import KNeighborsClassifier; KNeighborsClassifier().fit(df[['age']], df.sex)",
    "from sklearn.model_selection import train_test_split; train_test_split(df, test_size=3)",
    "from sklearn.model_selection import train_test_split; train_test_split(df, random_state=1, shuffle=False)",
]

# Releases and displays that succeed; their values and reprs are searched as well.
RELEASES = [
    "df", "df.note", "print(df)", "list(df)", "repr(df.age)", "str(df.groupby('ward'))", "df.age.mean()", "len(df)", "df.shape",
    "df.weight.mean()", "df.weight.sum()", "df.stay.median()", "df.age.quantile([0.1, 0.9])", "df.describe()",
    "df.ward.value_counts()", "df.groupby('ward').age.mean()", "df.groupby(['ward', 'sex']).size()",
    "df[df.ward == 'onco'].weight.std()", "df[df.age > 80].count_rows()", "df.age.describe()",
    "dp.crosstab(df.ward, df.sex)", "df.age.histogram(bins=5)", "df.dropna().stay.var()",
    "df.assign(bmi=df.weight / 2).bmi.mean()", "df.age.clip(0, 100).sum()",
]


def test_every_refusal_path_hides_the_canaries(watch, ledger_path):
    before = dp.budget(watch.name)
    wrong = []
    for code in REFUSALS:
        for cell in (f"%%dp --epsilon 0.05\n{code}", code):  # inside a cell and outside one
            result = watch.run(cell)
            if result.success or not isinstance(result.error_in_exec, ACCEPTED):
                wrong.append((cell, repr(result.error_in_exec)))
    assert not wrong, "not refused, or crashed:\n" + "\n".join(map(repr, wrong))
    after = dp.budget(watch.name)
    # Only the cells that released before their refusal were charged.
    released_first = sum(code.startswith(("df.age.mean();", "x = df.age.sum();")) for code in REFUSALS)
    assert after.releases - before.releases == released_first
    watch.tables(ledger_path)
    watch.check()
    assert ledger_holds_binary_canary(ledger_path) == []


def test_releases_and_displays_hide_the_canaries(watch, ledger_path):
    for code in RELEASES:
        result = watch.run(f"%%dp --epsilon 0.05\n{code}")
        assert result.success, (code, result.error_in_exec)
    for code in ("import matplotlib; matplotlib.use('Agg')", "%%dp --epsilon 0.05\ndf.age.plot.hist(bins=4)",
                 "%%dp --epsilon 0.05\ndf.groupby('ward').size().plot.bar()"):
        watch.run(code)
    watch.tables(ledger_path)
    watch.check()
    assert ledger_holds_binary_canary(ledger_path) == []


def test_partition_selection_and_models_hide_the_canaries(shell, capfd, caplog, dataset_name, ledger_path):
    # A budget with a delta groups undeclared columns by DP partition selection: a value held by one
    # row (the city canary, the undeclared ward) stays out with probability about 1 - delta.
    caplog.set_level(logging.DEBUG)
    w = Watch(shell, capfd, caplog, dataset_name)
    assert w.run(f"df = dp.protect(raw, name={dataset_name!r}, epsilon=1000.0, delta=1e-6, bounds={BOUNDS!r}, "
                 f"categories={{'sex': ['F', 'M']}})").success
    for code in ("df.city.value_counts()", "df.ward.value_counts()", "df.groupby('note').age.mean()",
                 "df.groupby(['city', 'ward']).size()", "dp.crosstab(df.ward, df.note)",
                 "df.full_name.value_counts()", "df.weight.mean()"):
        w.run(f"%%dp --epsilon 0.5\n{code}")
    pytest.importorskip("diffprivlib")
    for code in ("from sklearn.linear_model import LogisticRegression\n"
                 "m = LogisticRegression().fit(df[['age', 'stay']], df.sex)\nm.coef_",
                 "from sklearn.naive_bayes import GaussianNB\nGaussianNB().fit(df[['age']], df.ward)",
                 "from sklearn.cluster import KMeans\nKMeans(2).fit(df[['age', 'stay']]).cluster_centers_",
                 "from sklearn.model_selection import train_test_split\n"
                 "a, b, c, d = train_test_split(df[['age']], df.sex, test_size=0.3)\nlen(a), len(b)",
                 "from sklearn.linear_model import LinearRegression\n"
                 "LinearRegression().fit(df[['age']], df.weight)"):
        w.run(f"%%dp --epsilon 1\n{code}")
    w.tables(ledger_path)
    w.check()
    assert ledger_holds_binary_canary(ledger_path) == []


# ------------------------------------------------------------------------------- fuzzed cells
# Each grammar element as (valid, invalid) choices; valid ones are drawn more often so that cells
# often release several values before (maybe) failing.
FRAMES = (["df", "df[df.age > 40]", "df[df.ward == 'onco']", "df[df.sex != 'F']", "df.dropna()",
           "df[df.ward.isin(['cardio', 'ortho'])]", "df[(df.age > 30) & (df.stay < 20)]", "df[~(df.age > 70)]",
           "df[df.age.between(20, 60)]", "df[df.weight.notna()]", "df.assign(bmi=df.weight / 3)"],
          ["df[df.ward == 'cardoi']", "df[df.patient_id > 3]", "df[df.age > float('nan')]", "df[df.age]",
           "df[df.age.between(60, 20)]", "df[0:3]", "df.iloc[:3]", "df.sort_values('age')", "df[df.note > 3]",
           "df[df.age > 3 and df.age < 9]", "df[(df.age > 70) & (df.age < 30)]", "df[df.full_name == 'x']"])
COLUMNS = (["age", "weight", "stay", "ward", "sex"], ["note", "city", "patient_id", "full_name", "agee"])
GROUP_KEYS = (["'ward'", "'sex'", "['ward', 'sex']"], ["'city'", "'note'", "'patient_id'", "'agee'", "'age'", "[]"])
EPSILONS = (["", "epsilon=0.05", "epsilon=0.01"],
            ["epsilon=0", "epsilon=-1", "epsilon=float('nan')", "epsilon=float('inf')", "epsilon='0.1'",
             "epsilon=True", "epsilon=1e9", "epsilon=1e-15", "delta=1e-6", "epsilon=None, delta=-1"])
SERIES_OPS = (["mean({e})", "sum({e})", "count({e})", "median({e})", "var({e})", "std({e})", "quantile(0.5, {e})",
               "quantile([0.2, 0.8], {e})", "describe({e})", "value_counts({e})", "histogram(bins=4, {e})",
               "mean(bounds=(0, 50), {e})", "astype(int).mean({e})", "clip(0, 10).sum({e})", "size",
               # private values, not releases: what is done with them next must not leak either
               "clip(0, 10)", "isna()", "abs()", "fillna(0)"],
              ["head()", "values", "iloc[0]", "unique()", "nunique()", "min()", "max()", "tolist()",
               "apply(str)", "str.upper()", "sort_values()", "to_csv('x.csv')", "to_list()", "item()",
               "isin([]).sum()", "fillna('x').mean()", "mean(bounds=(50, 0), {e})", "quantile(2)",
               "sum(bounds=(0, float('inf')), {e})", "var(ddof=-1)", "plot.line()", "cumsum()",
               "histogram(bins=-3)", "quantile([], {e})", "mean(bounds=(0, 1e300), {e})"])
FRAME_OPS = (["count_rows({e})", "describe({e})", "mean({e})", "shape", "size", "groupby({g}).size({e})",
              "groupby({g}).count({e})", "groupby({g})['age'].mean({e})", "groupby({g})[['age', 'stay']].sum({e})",
              "groupby({g}).age.var({e})", "value_counts(['ward', 'sex'], {e})", "hist(column=['age'], bins=3, {e})",
              "dropna()", "groupby({g})", "assign(z=df.age * 2)"],
             ["head()", "tail()", "values", "to_csv('x.csv')", "merge({f})", "iloc[0]", "to_dict()", "T",
              "sample(2)", "info()", "apply(len)", "groupby({g}).note.mean()", "groupby({g}).first()",
              "groupby({g}).age.max()", "groupby({g}).age.apply(list)", "mean(epsilon=0.01).head()"])
WRAPPERS = (["{x}", "print({x})", "dp.info({x})", "str({x})", "repr({x})"],
            ["len({x})", "list({x})", "float({x})", "[v for v in {x}]", "{x} + 1", "bool({x})", "sorted({x})"])
CELL_OPTIONS = (["--epsilon 0.05", "--epsilon 0.02", "", "--budget 0.08", "--purpose publish"],
                ["--accuracy 20", "--epsilon nan", "--epsilon -1", "--delta 1e-6", "--purpose publsh", "--accuracy 0",
                 "--epsilon 0.1 --accuracy 5", "--budget inf", "--epsilon"])


def pick(choices, valid_share=4):
    """Valid choices ``valid_share`` times as often as invalid ones."""
    valid, invalid = choices
    return st.integers(0, valid_share).flatmap(lambda n: st.sampled_from(invalid if n == valid_share else valid))


@st.composite
def statements(draw):
    """One release or refusal on the private frame, and what is then done with its value."""
    frame = draw(pick(FRAMES))
    epsilon = draw(pick(EPSILONS))
    if draw(st.booleans()):
        column = draw(pick(COLUMNS))
        selected = draw(st.sampled_from([f"{frame}.{column}", f"{frame}[{column!r}]"]))
        op = draw(pick(SERIES_OPS))
    else:
        selected = frame
        op = draw(pick(FRAME_OPS))
    op = op.format(e=epsilon, f=draw(pick(FRAMES)), g=draw(pick(GROUP_KEYS)))
    expression = f"{selected}.{op}".replace(", )", ")").replace("(, ", "(")
    return expression, draw(pick(WRAPPERS, valid_share=2))


def _instrumented(body: list[tuple[str, str]]) -> str:
    # After each statement that completes, note the ledger's charge count; a failing statement must
    # leave it where the last completed statement did. What is done with a value (the wrapper) is a
    # statement of its own: failing on a released value is not failing to release.
    lines = ["_marks.clear()"]
    for n, (expression, wrapper) in enumerate(body):
        lines += [f"_v{n} = {expression}", "_marks.append(_charges())",
                  f"_w{n} = {wrapper.format(x=f'_v{n}')}", "_marks.append(_charges())"]
    return "\n".join(lines)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(cells=st.lists(st.tuples(pick(CELL_OPTIONS, valid_share=6), st.lists(statements(), min_size=1, max_size=3)),
                      min_size=1, max_size=3))
def test_fuzzed_cells_hide_the_canaries_and_charge_nothing_when_they_fail(fuzz, cells):
    watch, ledger_path, marks = fuzz
    for options, body in cells:
        before = watch.charges()
        marks.clear()
        result = watch.run(f"%%dp {options}\n{_instrumented(body)}")
        after = watch.charges()
        event(f"completed {len(marks)} of {2 * len(body)} statement(s)")
        if result.success:
            assert after == marks[-1]
            continue
        error = result.error_in_exec
        event(f"raised {type(error).__name__}")
        assert isinstance(error, ACCEPTED), f"crash {error!r} in:\n{body}"
        assert str(error).strip(), f"empty message of {type(error).__name__} in:\n{body}"
        # Charged exactly what the statements before the failing one released.
        assert after == (marks[-1] if marks else before), (body, before, marks, after, error)
    watch.check()


@pytest.fixture
def fuzz(watch, ledger_path):
    marks = []

    def charges():
        status = dp.budget(watch.name)
        return status.releases, round(status.epsilon_spent, 9), len(dp.history(watch.name).charges)

    watch.charges = charges
    watch.shell.user_ns.update(_marks=marks, _charges=charges)
    yield watch, ledger_path, marks
    watch.tables(ledger_path)
    watch.check()
    assert ledger_holds_binary_canary(ledger_path) == []
    for name in ("_marks", "_charges"):
        watch.shell.user_ns.pop(name, None)
