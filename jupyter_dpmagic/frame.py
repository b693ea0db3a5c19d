"""Pandas-shaped proxies over protected data: ``PrivateFrame``, ``PrivateSeries``, ``PrivateGroupBy``.

Row-wise work (selecting columns, filters, arithmetic, ``assign``, ``clip``, ``fillna``, ``isin``...)
returns new proxies and touches no data: it only grows a plan. Aggregations hand the plan to the
session, which makes a DP release. Anything that would show rows is refused with a
:class:`~jupyter_dpmagic.errors.PrivacyError` that names what to do instead.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np

from . import plan as P
from ._analysis import BOOL, NUMERIC, bounds_of, contradiction, kind_of
from .bounds import estimation_refusal, missing_bounds_error
from .errors import PolicyError, PrivacyError, close_match_hint
from .release import DPSeries
from .session import Dataset, get_session

__all__ = ["PrivateFrame", "PrivateSeries", "PrivateGroupBy", "crosstab"]

_ROWS = "rows cannot be shown; look at the schema with print(df), or aggregate inside %%dp " \
        "(len(df), df['col'].mean(), df.groupby('col').size())."
_RAW = "raw values cannot leave the private frame; aggregate them inside %%dp " \
       "(mean(), sum(), quantile(), value_counts())."
_EXPORT = "exporting would copy every row out of the private frame; export DP releases instead " \
          "(the values that %%dp cells return are ordinary numbers and pandas objects)."
_DISTINCT = "the distinct values of a column come from the data; declare them with " \
            "categories={'col': [...]} in dp.protect (or the policy) and use value_counts() inside %%dp."
_EXTREME = "the minimum and maximum are single patients' values; use quantile(0.01) or quantile(0.99) " \
           "inside %%dp for a DP estimate of the range."
_NOT_YET = "it has no DP version here yet; build it from releases inside %%dp: count(), mean(), std(), " \
           "quantile([0.25, 0.5, 0.75]), groupby(...).mean() (each is charged to the budget)."
_FUNCTION = "a Python function could see raw values; write the transformation with column arithmetic, " \
            "clip(), fillna(), isin(), between() or astype(), which work row by row on private data."

_REFUSED = {
    **dict.fromkeys(["head", "tail", "sample", "iterrows", "itertuples", "nlargest", "nsmallest",
                     "first", "last", "first_valid_index", "last_valid_index", "take", "xs", "get",
                     "info", "memory_usage", "duplicated", "drop_duplicates", "equals", "compare",
                     "squeeze", "item", "mode", "explode", "pivot", "melt", "sort_values",
                     "sort_index", "rank", "cumsum", "cumprod", "cummax", "cummin", "diff", "shift",
                     "pct_change", "rolling", "expanding", "ewm", "resample", "reset_index", "set_index",
                     "reindex", "searchsorted", "argsort", "argmin", "argmax", "factorize"], _ROWS),
    **dict.fromkeys(["to_numpy", "tolist", "to_list", "__array__", "ravel", "view"], _RAW),
    **dict.fromkeys(["to_dict", "to_csv", "to_json", "to_parquet", "to_excel", "to_sql", "to_pickle",
                     "to_records", "to_string", "to_markdown", "to_html", "to_clipboard", "to_latex",
                     "to_xarray", "to_feather", "to_hdf", "to_stata", "to_orc", "to_period",
                     "to_timestamp"], _EXPORT),
    **dict.fromkeys(["unique", "drop_duplicates"], _DISTINCT),
    "nunique": "a DP count of distinct values is not supported here (one person can add a new value, and "
               "nothing bounds how the distinct count moves in guardrail mode); count declared categories "
               "with value_counts() inside %%dp instead.",
    **dict.fromkeys(["min", "max", "idxmin", "idxmax"], _EXTREME),
    **dict.fromkeys(["corr", "cov", "merge", "join", "pivot_table"], _NOT_YET),
    **dict.fromkeys(["apply", "map", "applymap", "transform", "agg", "aggregate", "pipe", "where",
                     "mask", "combine", "eval", "query"], _FUNCTION),
}
_REFUSED_PROPERTIES = {"values": _RAW, "array": _RAW, "iloc": _ROWS, "iat": _ROWS, "at": _ROWS,
                       "index": "the index lists rows; " + _ROWS, "empty": "whether the data is empty is "
                       "itself private; count rows inside %%dp with len(df).", "T": _ROWS,
                       "axes": "the index lists rows; " + _ROWS,
                       "str": "string methods would compute on raw text; compare whole values instead "
                              "(df[df.ward == 'cardio'], df.ward.isin([...])) or count declared categories "
                              "with value_counts() inside %%dp.",
                       "dt": "date methods are not available on private columns yet; add the derived column "
                             "(year, month) before dp.protect, with its bounds."}


def _refusal(name: str, advice: str):
    def refused(self, *args, **kwargs):
        raise PrivacyError(f"{name}() is not available on private data: {advice}")
    refused.__name__ = name
    refused.__doc__ = f"Refused on private data: {advice}"
    return refused


def _refused_property(name: str, advice: str):
    def getter(self):
        raise PrivacyError(f".{name} is not available on private data: {advice}")
    return property(getter, doc=f"Refused on private data: {advice}")


def _install_refusals(cls, skip=()):
    for name, advice in _REFUSED.items():
        if name not in cls.__dict__ and name not in skip:
            setattr(cls, name, _refusal(name, advice))
    for name, advice in _REFUSED_PROPERTIES.items():
        if name not in cls.__dict__ and name not in skip:
            setattr(cls, name, _refused_property(name, advice))
    return cls


def _literal(value) -> P.Lit:
    if isinstance(value, (PrivateFrame, PrivateGroupBy)):
        raise PolicyError("combine a private column with a number or another private column, not a frame.")
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, (numbers.Number, str, bool)) and value is not None:
        raise PolicyError(f"cannot combine a private column with a {type(value).__name__}; "
                          "use a number, a string, or another column of the same private frame.")
    if isinstance(value, float) and not math.isfinite(value):
        raise PolicyError("use a finite number here (NaN and infinity compare as no value).")
    return P.Lit(value)


def _check_bounds(bounds, what: str) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise PolicyError(f"{what} takes two numbers (low, high), e.g. bounds=(0, 120).") from None
    except OverflowError:
        raise PolicyError(f"{what} must be finite numbers (got numbers too large for a float); "
                          "give the real range of the values, e.g. bounds=(0, 120).") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise PolicyError(f"{what} must be finite numbers (got {bounds!r}).")
    if not math.isfinite(high - low):
        raise PolicyError(f"{what} {bounds!r} are too far apart to compute with; give the real range of the "
                          "values, e.g. bounds=(0, 120).")
    if low > high:
        raise PolicyError(f"reversed bounds {bounds!r}: write bounds=({high:g}, {low:g}).")
    if low == high:
        raise PolicyError(f"bounds {bounds!r} hold a single value; a release needs low < high.")
    return low, high


class _Private:
    """What frames, series and groupbys share: a dataset, the filters so far, and release plumbing."""

    __slots__ = ("_ds", "_where")
    __hash__ = None  # like pandas objects: == builds a condition, so these are not hashable

    def __reduce_ex__(self, protocol):
        raise PrivacyError("private data cannot be pickled or deep-copied: that would copy its rows. "
                           "Protect the original DataFrame again where it is needed.")

    def _release(self, measures, *, by=(), epsilon=None, delta=None, shape="scalar", labels=(), notes=()):
        return get_session().release(self._ds, measures, where=self._where, by=by, epsilon=epsilon,
                                     delta=delta, shape=shape, labels=labels, notes=notes)

    def _merge_where(self, other: "_Private") -> tuple:
        if other._ds is not self._ds:
            raise PolicyError(f"cannot combine columns of two datasets ('{self._ds.name}' and "
                              f"'{other._ds.name}'); work on one protected frame at a time.")
        return tuple(dict.fromkeys(self._where + other._where))

    def _kind(self, expr) -> str:
        return kind_of(expr, self._ds.schema)

    def _touches_identifier(self, expr) -> bool:
        return any(self._ds.column(c).tier == "identifier" for c in P.columns_of(expr))

    def _aggregable(self, columns: Mapping, *, numeric: bool, example: str, exclude=()) -> tuple[list, tuple]:
        """Columns an all-columns aggregation covers, and a note naming the identifiers it left out."""
        names, skipped = [], []
        for name, expr in columns.items():
            if name in exclude:
                continue
            if self._touches_identifier(expr):
                skipped.append(name)
            elif not numeric or self._kind(expr) in (NUMERIC, BOOL):
                names.append(name)
        if not names:
            raise PolicyError(f"no column to aggregate; {example}.")
        return names, ((f"identifier columns left out: {', '.join(skipped)}",) if skipped else ())

    def _numeric_measure(self, cls, expr, label, bounds, **extra):
        kind = self._kind(expr)
        if kind not in (NUMERIC, BOOL):
            raise PolicyError(f"'{label}' holds {kind} values; {cls.__name__.lower()}() needs a numeric "
                              "column. Count text values with value_counts() (declare categories=).")
        if bounds is not None:
            low, high = _check_bounds(bounds, "bounds=")
        else:
            try:
                derived = bounds_of(expr, lambda c: self._ds.column(c).bounds, self._ds.schema)
            except OverflowError:
                derived = (-math.inf, math.inf)
            if derived is not None and not all(map(math.isfinite, derived)):
                raise PolicyError(f"the bounds derived for '{label}' are too large for a float; clip() the values "
                                  "first or pass bounds=(low, high) to this call.")
            if derived is None:
                unbounded = sorted(c for c in P.columns_of(expr) if self._ds.column(c).bounds is None)
                if not unbounded:
                    raise missing_bounds_error(label)
                for column in unbounded:
                    refusal = estimation_refusal(self._ds, column, label)
                    if refusal is not None:
                        raise refusal
                # The session estimates the missing bounds (a DP release of its own) first.
                return cls(expr, None, None, **extra)
            low, high = derived
            if low > high:
                raise PolicyError(f"the bounds derived for '{label}' are reversed ({low:g} > {high:g}); "
                                  "pass bounds=(low, high) to this call.")
            if low == high:
                raise PolicyError(f"'{label}' can only take the value {low:g}; there is nothing to estimate.")
        return cls(expr, low, high, **extra)

    def _group_key(self, label: str, expr) -> P.GroupKey:
        """Declared categories when there are some; otherwise the groups are chosen by DP partition
        selection when the release is made (which refuses budgets that have no delta)."""
        if self._kind(expr) == BOOL:
            return P.GroupKey(label, expr, (False, True))
        categories = self._ds.column(expr.name).categories if isinstance(expr, P.Col) else None
        return P.GroupKey(label, expr, tuple(categories) if categories else None)


# ----------------------------------------------------------------------------------------- frame
class PrivateFrame(_Private):
    """A protected DataFrame: pandas-like row-wise operations, DP aggregations inside ``%%dp``.

    Create one with :func:`jupyter_dpmagic.protect` or ``%dp protect``.
    """

    __slots__ = ("_cols",)

    def __init__(self, dataset: Dataset, columns: Mapping | None = None, where: tuple = ()):
        object.__setattr__(self, "_ds", dataset)
        object.__setattr__(self, "_cols", dict(columns) if columns is not None else
                           {c: P.Col(c) for c in dataset.frame.columns})
        object.__setattr__(self, "_where", tuple(where))

    # ----------------------------------------------------------------------------- schema (public)
    @property
    def columns(self):
        import pandas as pd

        return pd.Index(list(self._cols))

    @property
    def dtypes(self):
        """The kind of each column (numeric, bool, text, datetime)."""
        import pandas as pd

        return pd.Series({c: self._kind(e) for c, e in self._cols.items()}, dtype=object)

    @property
    def name(self) -> str:
        return self._ds.name

    @property
    def ndim(self) -> int:
        return 2

    # ------------------------------------------------------------------------------ row-wise work
    def __getitem__(self, key):
        if isinstance(key, str):
            return self._series(key)
        if isinstance(key, PrivateSeries):
            return self._filtered(key)
        if isinstance(key, (list, tuple)) and all(isinstance(k, str) for k in key):
            return PrivateFrame(self._ds, {k: self._expr(k) for k in key}, self._where)
        if isinstance(key, slice):
            raise PrivacyError("slicing rows is not available on private data: " + _ROWS)
        raise PolicyError(f"select columns with a name or a list of names, or filter with a condition "
                          f"such as df[df.age > 65]; got {type(key).__name__}.")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._cols:
            return self._series(name)
        raise AttributeError(f"'PrivateFrame' has no attribute or column '{name}'."
                             f"{close_match_hint(name, list(self._cols))}")

    def __setattr__(self, name, value):
        if name in self._cols:
            self[name] = value
            return
        raise PolicyError("set a column with df['name'] = ... (new columns cannot be attributes).")

    def __setitem__(self, name: str, value) -> None:
        if not isinstance(name, str):
            raise PolicyError("new columns need a text name: df['bmi'] = df.weight / df.height ** 2.")
        self._cols[name] = self._value_expr(value)

    def _value_expr(self, value):
        if isinstance(value, PrivateSeries):
            if value._ds is not self._ds or not set(value._where) <= set(self._where):
                raise PolicyError("assign a column computed from this same frame (before further filters), "
                                  "e.g. df['bmi'] = df.weight / df.height ** 2.")
            return value._expr
        if callable(value):
            return self._value_expr(value(self))
        return _literal(value)

    def _expr(self, name: str):
        try:
            return self._cols[name]
        except KeyError:
            raise PolicyError(f"no column '{name}' in '{self._ds.name}'.{close_match_hint(name, list(self._cols))}"
                              f" Columns: {', '.join(self._cols)}.") from None

    def _series(self, name: str) -> "PrivateSeries":
        return PrivateSeries(self._ds, self._expr(name), name, self._where)

    def _filtered(self, condition: "PrivateSeries") -> "PrivateFrame":
        if self._kind(condition._expr) != BOOL:
            raise PolicyError("filter with a condition such as df[df.age > 65] (True/False per row).")
        return PrivateFrame(self._ds, self._cols, _checked_where(self._merge_where(condition) + (condition._expr,)))

    @property
    def loc(self):
        """Filtering with ``df.loc[condition]`` or ``df.loc[condition, columns]``; labels are refused."""
        return _Loc(self)

    def copy(self, deep: bool = True) -> "PrivateFrame":
        """A new proxy over the same protected data (nothing is copied out)."""
        return PrivateFrame(self._ds, self._cols, self._where)

    def assign(self, **columns) -> "PrivateFrame":
        """New frame with added columns (private series, constants or functions of the frame)."""
        out = PrivateFrame(self._ds, self._cols, self._where)
        for name, value in columns.items():
            out[name] = value
        return out

    def dropna(self, *, subset=None, how: str = "any") -> "PrivateFrame":
        """Drop rows with missing values in ``subset``; a row-wise filter.

        Without ``subset`` every column counts except identifiers, which are never filtered on.
        """
        if subset is None:
            names = [n for n, e in self._cols.items() if not self._touches_identifier(e)]
        else:
            names = [subset] if isinstance(subset, str) else list(subset)
        present = [P.UnOp("not", P.IsNA(self._expr(n))) for n in names]
        if how == "any":
            where = tuple(present)
        elif how == "all":
            cond = present[0]
            for p in present[1:]:
                cond = P.BinOp("|", cond, p)
            where = (cond,)
        else:
            raise PolicyError("dropna(how=...) takes 'any' or 'all'.")
        return PrivateFrame(self._ds, self._cols, self._where + where)

    def fillna(self, value) -> "PrivateFrame":
        """Fill missing values with a public constant (or a dict of constants per column)."""
        values = value if isinstance(value, Mapping) else dict.fromkeys(self._cols, value)
        cols = dict(self._cols)
        for name, fill in values.items():
            cols[name] = P.FillNA(self._expr(name), _literal(fill).value)
        return PrivateFrame(self._ds, cols, self._where)

    def clip(self, lower=None, upper=None) -> "PrivateFrame":
        """Clip every numeric column to ``[lower, upper]``."""
        cols = {n: (P.Clip(e, lower, upper) if self._kind(e) == NUMERIC else e) for n, e in self._cols.items()}
        return PrivateFrame(self._ds, cols, self._where)

    def astype(self, dtype) -> "PrivateFrame":
        """Convert columns between numeric types (a dict converts only the named columns)."""
        targets = dtype if isinstance(dtype, Mapping) else dict.fromkeys(self._cols, dtype)
        cols = dict(self._cols)
        for name, target in targets.items():
            cols[name] = PrivateSeries(self._ds, self._expr(name), name, self._where).astype(target)._expr
        return PrivateFrame(self._ds, cols, self._where)

    def groupby(self, by, **kwargs) -> "PrivateGroupBy":
        """Group by columns with declared categories (empty groups are released too)."""
        unsupported = set(kwargs) - {"observed", "sort", "dropna"}
        if unsupported:
            raise PolicyError(f"groupby() on private data does not take {', '.join(sorted(unsupported))}.")
        keys = [by] if isinstance(by, str) else list(by)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise PolicyError("group by column names: df.groupby('ward') or df.groupby(['ward', 'sex']).")
        return PrivateGroupBy(self, tuple(self._group_key(k, self._expr(k)) for k in keys), None)

    def value_counts(self, subset=None, *, normalize: bool = False, sort: bool = True, ascending: bool = False,
                     epsilon=None, delta=None):
        """DP counts of each combination of ``subset`` columns (all must have declared categories)."""
        names = list(self._cols) if subset is None else ([subset] if isinstance(subset, str) else list(subset))
        grouped = self.groupby(names)
        return _finish_counts(grouped.size(epsilon=epsilon, delta=delta), normalize, sort, ascending)

    # ---------------------------------------------------------------------------------- releases
    def __len__(self) -> int:
        return int(self._row_count(None, None))

    def _row_count(self, epsilon, delta):
        return self._release([P.Count()], epsilon=epsilon, delta=delta)

    @property
    def shape(self):
        """``(rows, columns)``: the number of rows is a DP count (charged), the columns are public."""
        return (self._row_count(None, None), len(self._cols))

    @property
    def size(self):
        """Rows x columns, from a DP count of the rows."""
        return self._row_count(None, None) * len(self._cols)

    def count_rows(self, *, epsilon=None, delta=None):
        """DP number of rows (``len(df)`` with an explicit epsilon)."""
        return self._row_count(epsilon, delta)

    def _per_column(self, make, *, numeric: bool, epsilon, delta):
        names, notes = self._aggregable(self._cols, numeric=numeric,
                                        example="select numeric columns first, e.g. df[['age', 'bmi']]")
        measures = [make(self._series(n)) for n in names]
        return self._release(measures, epsilon=epsilon, delta=delta, shape="series", labels=names, notes=notes)

    def count(self, *, epsilon=None, delta=None):
        """DP count of non-missing values in each column (identifier columns are left out)."""
        return self._per_column(lambda s: P.Count(s._expr), numeric=False, epsilon=epsilon, delta=delta)

    def sum(self, *, epsilon=None, delta=None):
        """DP sum of each numeric column (needs bounds for each)."""
        return self._per_column(lambda s: s._measure(P.Sum, None), numeric=True, epsilon=epsilon, delta=delta)

    def mean(self, *, epsilon=None, delta=None):
        """DP mean of each numeric column (needs bounds for each)."""
        return self._per_column(lambda s: s._measure(P.Mean, None), numeric=True, epsilon=epsilon, delta=delta)

    def var(self, *, ddof: int = 1, epsilon=None, delta=None):
        """DP variance of each numeric column."""
        ddof = _check_ddof(ddof)
        return self._per_column(lambda s: s._measure(P.Variance, None, ddof=ddof), numeric=True,
                                epsilon=epsilon, delta=delta)

    def std(self, *, ddof: int = 1, epsilon=None, delta=None):
        """DP standard deviation of each numeric column."""
        ddof = _check_ddof(ddof)
        return self._per_column(lambda s: s._measure(P.Variance, None, ddof=ddof, root=True), numeric=True,
                                epsilon=epsilon, delta=delta)

    def median(self, *, epsilon=None, delta=None):
        """DP median of each numeric column."""
        return self.quantile(0.5, epsilon=epsilon, delta=delta)

    def quantile(self, q: float = 0.5, *, epsilon=None, delta=None):
        """DP ``q``-quantile of each numeric column."""
        return self._per_column(lambda s: s._measure(P.Quantile, None, q=_check_q(q)), numeric=True,
                                epsilon=epsilon, delta=delta)

    def describe(self, *, percentiles=(0.25, 0.5, 0.75), epsilon=None, delta=None):
        """DP count, mean, std and quartiles of each numeric column, as one charged release.

        The epsilon is split evenly over the table's statistics; count, mean and std of a column
        share one noisy count and one noisy sum, which makes each of them more accurate.
        """
        names, notes = self._aggregable(self._cols, numeric=True,
                                        example="describe() needs numeric columns with bounds, e.g. df[['age']]")
        return _describe([self._series(n) for n in names], percentiles, epsilon, delta, notes)

    def hist(self, column=None, *, bins: int = 10, epsilon=None, delta=None, **kwargs):
        """DP histograms of numeric columns (bins from their bounds), drawn with error bars; one release."""
        names = [column] if isinstance(column, str) else (list(column) if column is not None else None)
        if names is None:
            names, _ = self._aggregable(self._cols, numeric=True, example="name one: df.hist(column='age')")
        return _histograms([self._series(n) for n in names], bins, epsilon, delta, kwargs)

    @property
    def plot(self):
        raise PrivacyError("plot() of a whole private frame would draw its rows; draw DP charts inside %%dp: "
                           "df['age'].plot.hist(bins=10), df.hist(column='age'), or "
                           "df.groupby('ward').size().plot.bar().")

    # ------------------------------------------------------------------------------ refusals etc.
    def __iter__(self):
        return iter(list(self._cols))  # like pandas: iterating a frame yields its column names

    def __copy__(self):
        return PrivateFrame(self._ds, self._cols, self._where)

    def __bool__(self):
        raise PrivacyError("the truth value of a private frame is ambiguous (and its emptiness is private); "
                           "count rows inside %%dp with len(df).")

    def __contains__(self, name) -> bool:
        return name in self._cols

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._cols))

    def _schema_rows(self):
        rows = []
        for name, expr in self._cols.items():
            kind = self._kind(expr)
            if isinstance(expr, P.Col):
                col = self._ds.column(expr.name)
                tier, bounds, cats = col.tier, col.bounds, col.categories
            else:
                tiers = [self._ds.column(c).tier for c in P.columns_of(expr)]
                tier = self._ds.policy.strictest(tiers)
                bounds = bounds_of(expr, lambda c: self._ds.column(c).bounds, self._ds.schema)
                cats = None
            bounds_text = "" if bounds is None else f"[{bounds[0]:g}, {bounds[1]:g}]"
            cats_text = "" if not cats else ", ".join(map(str, cats[:6])) + (" ..." if len(cats) > 6 else "")
            if name == self._ds.unit:
                tier = "identifier (privacy unit)"
            rows.append((name, kind, tier, bounds_text, cats_text))
        return rows

    def _budget_line(self) -> str:
        try:
            if self._ds.remote is not None:
                status = self._ds.remote.client.status(self._ds.name)
            else:
                status = get_session().accountant.status(name=self._ds.name, user=self._ds.user)
        except Exception as exc:  # a description must never fail because the ledger is unreachable
            return f"budget: unavailable ({exc})"
        line = (f"budget: ε {status.epsilon_spent:.4g} of {status.epsilon_total:g} spent, "
                f"{status.epsilon_remaining:.4g} left")
        if status.delta_total:
            line += f" (δ={status.delta_total:g}, zCDP accounting)"
        return line + f"; user {status.user}"

    def _describe_lines(self):
        unit = (f"; at most {self._ds.max_rows} row(s) per '{self._ds.unit}'" if self._ds.unit else "")
        lines = [f"PrivateFrame '{self._ds.name}': rows are hidden; aggregate inside %%dp{unit}"]
        if self._where:
            lines.append("filters: " + " & ".join(P.describe(w) for w in self._where))
        return lines

    def __repr__(self) -> str:
        rows = [("column", "kind", "tier", "bounds", "categories"), *self._schema_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        table = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(self._describe_lines() + table + [self._budget_line()])

    __str__ = __repr__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("column", "kind", "tier", "bounds", "categories"))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
                       for r in self._schema_rows())
        intro = "<br>".join(html.escape(x) for x in self._describe_lines())
        return (f"<div class='dpmagic-frame'><p>{intro}</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table><p>{html.escape(self._budget_line())}</p></div>")


class _Loc:
    __slots__ = ("_frame",)

    def __init__(self, frame: PrivateFrame):
        self._frame = frame

    def __getitem__(self, key):
        rows, cols = (key if isinstance(key, tuple) and len(key) == 2 else (key, None))
        if not isinstance(rows, PrivateSeries):
            if isinstance(rows, slice) and rows == slice(None):
                return self._frame if cols is None else self._frame[cols]
            raise PrivacyError(".loc with row labels is not available on private data: " + _ROWS +
                               " .loc works with a condition: df.loc[df.age > 65, 'bmi'].")
        out = self._frame[rows]
        return out if cols is None else out[cols]


# ----------------------------------------------------------------------------------------- series
class PrivateSeries(_Private):
    """One protected column (or an expression over columns)."""

    __slots__ = ("_expr", "_name")

    def __init__(self, dataset: Dataset, expr, name, where: tuple = ()):
        self._ds, self._expr, self._name, self._where = dataset, expr, name, tuple(where)

    @property
    def name(self):
        return self._name

    @property
    def dtype(self) -> str:
        """The kind of the values: numeric, bool, text or datetime."""
        return self._kind(self._expr)

    @property
    def ndim(self) -> int:
        return 1

    def _derive(self, expr, where=None) -> "PrivateSeries":
        self._kind(expr)  # validates the combination now, where the mistake was written
        return PrivateSeries(self._ds, expr, self._name, self._where if where is None else where)

    def _binary(self, op: str, other, reflected: bool = False) -> "PrivateSeries":
        where = self._where
        if isinstance(other, PrivateSeries):
            where = self._merge_where(other)
            rhs = other._expr
        else:
            rhs = _literal(other)
            if op in ("==", "!=") and isinstance(self._expr, P.Col):
                self._check_category(rhs.value)
        left, right = (rhs, self._expr) if reflected else (self._expr, rhs)
        return self._derive(P.BinOp(op, left, right), where)

    def _check_category(self, value) -> None:
        categories = self._ds.column(self._expr.name).categories
        if categories and value not in categories:
            raise PolicyError(f"{value!r} is not a declared category of '{self._expr.name}', so this "
                              f"condition can select no declared value.{close_match_hint(value, categories)} "
                              f"Categories: {', '.join(map(str, categories))}.")

    __add__ = lambda s, o: s._binary("+", o)  # noqa: E731
    __radd__ = lambda s, o: s._binary("+", o, True)  # noqa: E731
    __sub__ = lambda s, o: s._binary("-", o)  # noqa: E731
    __rsub__ = lambda s, o: s._binary("-", o, True)  # noqa: E731
    __mul__ = lambda s, o: s._binary("*", o)  # noqa: E731
    __rmul__ = lambda s, o: s._binary("*", o, True)  # noqa: E731
    __truediv__ = lambda s, o: s._binary("/", o)  # noqa: E731
    __rtruediv__ = lambda s, o: s._binary("/", o, True)  # noqa: E731
    __floordiv__ = lambda s, o: s._binary("//", o)  # noqa: E731
    __rfloordiv__ = lambda s, o: s._binary("//", o, True)  # noqa: E731
    __mod__ = lambda s, o: s._binary("%", o)  # noqa: E731
    __pow__ = lambda s, o: s._binary("**", o)  # noqa: E731
    __rpow__ = lambda s, o: s._binary("**", o, True)  # noqa: E731
    __eq__ = lambda s, o: s._binary("==", o)  # noqa: E731
    __ne__ = lambda s, o: s._binary("!=", o)  # noqa: E731
    __lt__ = lambda s, o: s._binary("<", o)  # noqa: E731
    __le__ = lambda s, o: s._binary("<=", o)  # noqa: E731
    __gt__ = lambda s, o: s._binary(">", o)  # noqa: E731
    __ge__ = lambda s, o: s._binary(">=", o)  # noqa: E731
    __and__ = lambda s, o: s._binary("&", o)  # noqa: E731
    __rand__ = lambda s, o: s._binary("&", o, True)  # noqa: E731
    __or__ = lambda s, o: s._binary("|", o)  # noqa: E731
    __ror__ = lambda s, o: s._binary("|", o, True)  # noqa: E731
    __xor__ = lambda s, o: s._binary("^", o)  # noqa: E731
    __hash__ = None

    def __neg__(self):
        return self._derive(P.UnOp("neg", self._expr))

    def __invert__(self):
        return self._derive(P.UnOp("not", self._expr))

    def __abs__(self):
        return self._derive(P.UnOp("abs", self._expr))

    def abs(self):
        return abs(self)

    def isin(self, values) -> "PrivateSeries":
        """True where the value is one of ``values`` (public constants)."""
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise PolicyError("isin() takes a list of values, e.g. df.diagnosis.isin(['asthma', 'copd']).")
        values = tuple(_literal(v).value for v in values)
        if not values:
            raise PolicyError("isin([]) selects no rows; list at least one value.")
        if isinstance(self._expr, P.Col):
            for v in values:
                self._check_category(v)
        return self._derive(P.IsIn(self._expr, values))

    def between(self, left, right, inclusive: str = "both") -> "PrivateSeries":
        """True where ``left <= value <= right`` (``inclusive`` as in pandas)."""
        low, high = _literal(left).value, _literal(right).value
        if low is not None and high is not None and low > high:
            raise PolicyError(f"between({left!r}, {right!r}) selects no rows: write between({right!r}, {left!r}).")
        if inclusive not in ("both", "neither", "left", "right"):
            raise PolicyError("inclusive= takes 'both', 'neither', 'left' or 'right'.")
        return self._derive(P.Between(self._expr, low, high, inclusive))

    def isna(self) -> "PrivateSeries":
        return self._derive(P.IsNA(self._expr))

    isnull = isna

    def notna(self) -> "PrivateSeries":
        return self._derive(P.UnOp("not", P.IsNA(self._expr)))

    notnull = notna

    def dropna(self) -> "PrivateSeries":
        """Drop missing values (a row-wise filter)."""
        return PrivateSeries(self._ds, self._expr, self._name, self._where + (P.UnOp("not", P.IsNA(self._expr)),))

    def fillna(self, value) -> "PrivateSeries":
        """Fill missing values with a public constant."""
        return self._derive(P.FillNA(self._expr, _literal(value).value))

    def clip(self, lower=None, upper=None) -> "PrivateSeries":
        """Clip values to ``[lower, upper]``; clipping on both sides also gives the values bounds."""
        for v in (lower, upper):
            if v is not None and not (isinstance(v, numbers.Real) and math.isfinite(v)):
                raise PolicyError("clip() takes finite numbers, e.g. df.age.clip(0, 110).")
        if lower is not None and upper is not None and lower > upper:
            raise PolicyError(f"clip({lower}, {upper}) has reversed limits: write clip({upper}, {lower}).")
        return self._derive(P.Clip(self._expr, lower, upper))

    def astype(self, dtype) -> "PrivateSeries":
        """Convert between numeric types (``float``, ``int``, ``'float32'``...) or to ``bool``."""
        try:
            name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
            kind = np.dtype(name).kind
        except (TypeError, ValueError):
            raise PolicyError(f"astype() on private data converts between numeric types; got {dtype!r}.") from None
        if kind not in "biuf" or self._kind(self._expr) not in (NUMERIC, BOOL):
            raise PolicyError(f"astype({dtype!r}) is not available here: private columns convert only between "
                              "numeric types (int, float, bool).")
        return self._derive(P.AsType(self._expr, np.dtype(name).name))

    def to_frame(self, name=None) -> PrivateFrame:
        label = name if name is not None else (self._name or "value")
        return PrivateFrame(self._ds, {label: self._expr}, self._where)

    def rename(self, name) -> "PrivateSeries":
        return PrivateSeries(self._ds, self._expr, name, self._where)

    def __getitem__(self, key):
        if isinstance(key, PrivateSeries):
            if self._kind(key._expr) != BOOL:
                raise PolicyError("filter with a condition: s[s > 0].")
            return PrivateSeries(self._ds, self._expr, self._name, _checked_where(self._merge_where(key) + (key._expr,)))
        raise PrivacyError("indexing rows is not available on private data: " + _ROWS)

    @property
    def loc(self):
        return _SeriesLoc(self)

    # ---------------------------------------------------------------------------------- releases
    def _label(self) -> str:
        return self._name if isinstance(self._name, str) else P.describe(self._expr)

    def _measure(self, cls, bounds, **extra):
        return self._numeric_measure(cls, self._expr, self._label(), bounds, **extra)

    def __len__(self) -> int:
        # pandas calls len() on whatever it is handed (pd.Series(s), pd.DataFrame({...})); a release
        # here would spend budget on a call that then fails, so only explicit releases count rows.
        raise PrivacyError("len() of a private column is not a release: use s.size (a DP count of its rows) "
                           "or s.count() (non-missing values) inside %%dp.")

    @property
    def shape(self):
        return (self._release([P.Count()]),)

    @property
    def size(self):
        return self._release([P.Count()])

    def count(self, *, epsilon=None, delta=None):
        """DP number of non-missing values."""
        return self._release([P.Count(self._expr)], epsilon=epsilon, delta=delta)

    def sum(self, *, epsilon=None, delta=None, bounds=None):
        """DP sum of the values clamped to their bounds (missing values are skipped)."""
        return self._release([self._measure(P.Sum, bounds)], epsilon=epsilon, delta=delta)

    def mean(self, *, epsilon=None, delta=None, bounds=None):
        """DP mean of the values clamped to their bounds (missing values are skipped)."""
        return self._release([self._measure(P.Mean, bounds)], epsilon=epsilon, delta=delta)

    def var(self, *, ddof: int = 1, epsilon=None, delta=None, bounds=None):
        """DP variance (``ddof`` as in pandas)."""
        return self._release([self._measure(P.Variance, bounds, ddof=_check_ddof(ddof))],
                             epsilon=epsilon, delta=delta)

    def std(self, *, ddof: int = 1, epsilon=None, delta=None, bounds=None):
        """DP standard deviation (``ddof`` as in pandas)."""
        return self._release([self._measure(P.Variance, bounds, ddof=_check_ddof(ddof), root=True)],
                             epsilon=epsilon, delta=delta)

    def median(self, *, epsilon=None, delta=None, bounds=None):
        """DP median (the exponential mechanism over a public grid on the bounds)."""
        return self.quantile(0.5, epsilon=epsilon, delta=delta, bounds=bounds)

    def quantile(self, q=0.5, *, epsilon=None, delta=None, bounds=None):
        """DP quantile(s); a list of ``q`` gives a Series and splits epsilon among them."""
        if isinstance(q, (list, tuple, np.ndarray)):
            qs = [_check_q(x) for x in q]
            out = self._release([self._measure(P.Quantile, bounds, q=x) for x in qs], epsilon=epsilon,
                                delta=delta, shape="series", labels=qs)
            # Quantiles drawn independently can cross; sorting them is free post-processing and
            # never takes the set further from the (sorted) true quantiles in any Lp norm.
            order = np.argsort(qs, kind="stable")
            values = out.to_numpy().copy()
            values[order] = np.sort(values)
            result = DPSeries(values, index=out.index, name=out.name)
            result._dp = out._dp
            return result
        return self._release([self._measure(P.Quantile, bounds, q=_check_q(q))], epsilon=epsilon, delta=delta)

    def describe(self, *, percentiles=(0.25, 0.5, 0.75), epsilon=None, delta=None):
        """DP count, mean, std and quartiles, as one charged release (see ``PrivateFrame.describe``)."""
        table = _describe([self], percentiles, epsilon, delta, ())
        return _column_of(table)

    def histogram(self, *, bins: int = 10, epsilon=None, delta=None):
        """DP counts of the values in ``bins`` equal bins spanning the bounds (a DPSeries by bin)."""
        return _histogram_releases([self], bins, epsilon, delta)[0]

    @property
    def plot(self):
        """DP charts: ``plot.hist(bins=...)`` draws a DP histogram with error bars."""
        return _SeriesPlot(self)

    def hist(self, bins: int = 10, *, epsilon=None, delta=None, **kwargs):
        """A DP histogram drawn with 95% error bars (as ``plot.hist``)."""
        return _histograms([self], bins, epsilon, delta, kwargs)

    def value_counts(self, *, normalize: bool = False, sort: bool = True, ascending: bool = False,
                     dropna: bool = True, epsilon=None, delta=None):
        """DP count of each category: declared ones (empty included), else chosen by partition selection."""
        if not dropna:
            raise PolicyError("value_counts(dropna=False) is not available: count missing values with "
                              "s.isna() as a filter, e.g. len(df[df.col.isna()]).")
        key = self._group_key(self._label(), self._expr)
        counts = self._release([P.Count()], by=(key,), epsilon=epsilon, delta=delta, shape="series",
                               labels=["count"])
        return _finish_counts(counts, normalize, sort, ascending)

    # ---------------------------------------------------------------------------------- refusals
    def __iter__(self):
        raise PrivacyError("iterating over a private column would show its values: " + _RAW)

    def __bool__(self):
        raise PrivacyError("the truth value of a private column is ambiguous; combine conditions with "
                           "& and | (not 'and'/'or'), and aggregate inside %%dp.")

    def __float__(self):
        raise PrivacyError("a private column is not one number: " + _RAW)

    __int__ = __float__

    def __repr__(self) -> str:
        kind = self._kind(self._expr)
        where = f" where {' & '.join(P.describe(w) for w in self._where)}" if self._where else ""
        return (f"PrivateSeries '{self._label()}' ({kind}) of dataset '{self._ds.name}'{where}: values are "
                "hidden; aggregate inside %%dp (count(), mean(), quantile(), value_counts()).")

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return f"<div class='dpmagic-series'>{html.escape(repr(self))}</div>"


class _SeriesLoc:
    __slots__ = ("_series",)

    def __init__(self, series):
        self._series = series

    def __getitem__(self, key):
        if isinstance(key, PrivateSeries):
            return self._series[key]
        raise PrivacyError(".loc with row labels is not available on private data: " + _ROWS)


# ---------------------------------------------------------------------------------------- groupby
class PrivateGroupBy(_Private):
    """``df.groupby(keys)`` over declared categories: every category is a group, empty or not."""

    __slots__ = ("_frame", "_keys", "_selection")

    def __init__(self, frame: PrivateFrame, keys: tuple, selection):
        self._frame, self._keys, self._selection = frame, keys, selection
        self._ds, self._where = frame._ds, frame._where

    def __getitem__(self, key):
        if isinstance(key, str):
            self._frame._expr(key)
            return PrivateGroupBy(self._frame, self._keys, key)
        if isinstance(key, (list, tuple)) and all(isinstance(k, str) for k in key):
            for k in key:
                self._frame._expr(k)
            return PrivateGroupBy(self._frame, self._keys, tuple(key))
        raise PolicyError("select columns of a groupby with a name or a list of names.")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._frame._cols:
            return self[name]
        raise AttributeError(f"'PrivateGroupBy' has no attribute or column '{name}'."
                             f"{close_match_hint(name, list(self._frame._cols))}")

    def _targets(self, numeric: bool) -> tuple[list, tuple]:
        if isinstance(self._selection, str):
            return [self._selection], ()
        if self._selection is not None:
            return list(self._selection), ()
        return self._aggregable(self._frame._cols, numeric=numeric, exclude={k.label for k in self._keys},
                                example="select one: df.groupby('ward')['age'].mean()")

    def _grouped(self, make, *, numeric: bool, epsilon, delta):
        names, notes = self._targets(numeric)
        measures = [make(self._frame._series(n)) for n in names]
        single = isinstance(self._selection, str)
        return self._release(measures, by=self._keys, epsilon=epsilon, delta=delta,
                             shape="series" if single else "frame", labels=names, notes=notes)

    def size(self, *, epsilon=None, delta=None):
        """DP number of rows in each group."""
        return self._release([P.Count()], by=self._keys, epsilon=epsilon, delta=delta, shape="series")

    def count(self, *, epsilon=None, delta=None):
        """DP number of non-missing values per group and column."""
        return self._grouped(lambda s: P.Count(s._expr), numeric=False, epsilon=epsilon, delta=delta)

    def sum(self, *, epsilon=None, delta=None):
        """DP sum per group (values clamped to their bounds)."""
        return self._grouped(lambda s: s._measure(P.Sum, None), numeric=True, epsilon=epsilon, delta=delta)

    def mean(self, *, epsilon=None, delta=None):
        """DP mean per group (values clamped to their bounds)."""
        return self._grouped(lambda s: s._measure(P.Mean, None), numeric=True, epsilon=epsilon, delta=delta)

    def var(self, *, ddof: int = 1, epsilon=None, delta=None):
        """DP variance per group."""
        return self._grouped(lambda s: s._measure(P.Variance, None, ddof=_check_ddof(ddof)), numeric=True,
                             epsilon=epsilon, delta=delta)

    def std(self, *, ddof: int = 1, epsilon=None, delta=None):
        """DP standard deviation per group."""
        return self._grouped(lambda s: s._measure(P.Variance, None, ddof=_check_ddof(ddof), root=True),
                             numeric=True, epsilon=epsilon, delta=delta)

    def value_counts(self, *, normalize: bool = False, sort: bool = True, ascending: bool = False,
                     epsilon=None, delta=None):
        """DP counts of the selected column's categories within each group."""
        if not isinstance(self._selection, str):
            raise PolicyError("select one column first: df.groupby('ward')['sex'].value_counts().")
        extra = self._group_key(self._selection, self._frame._expr(self._selection))
        counts = self._release([P.Count()], by=self._keys + (extra,), epsilon=epsilon, delta=delta,
                               shape="series", labels=["count"])
        return _finish_counts(counts, normalize, sort, ascending)

    def __iter__(self):
        raise PrivacyError("iterating over groups would show their rows; aggregate each group inside %%dp "
                           "(size(), mean(), count()).")

    def __repr__(self) -> str:
        keys = ", ".join(k.label for k in self._keys)
        return (f"PrivateGroupBy of '{self._ds.name}' by {keys}: aggregate inside %%dp "
                "(size(), count(), sum(), mean(), value_counts()).")


class _SeriesPlot:
    __slots__ = ("_series",)

    def __init__(self, series):
        self._series = series

    def hist(self, bins: int = 10, *, epsilon=None, delta=None, **kwargs):
        """A DP histogram drawn with 95% error bars; bins span the column's bounds."""
        return _histograms([self._series], bins, epsilon, delta, kwargs)

    def __call__(self, kind: str = "line", **kwargs):
        if kind == "hist":
            return self.hist(**kwargs)
        return getattr(self, kind)(**kwargs)

    def __getattr__(self, kind: str):
        if kind.startswith("_"):
            raise AttributeError(kind)
        raise PrivacyError(f"plot.{kind}() of a private column would draw its rows; draw a DP chart instead: "
                           "s.plot.hist(bins=10), or s.value_counts().plot.bar() for categories.")


def _describe(columns: list, percentiles, epsilon, delta, notes):
    if percentiles is None:
        percentiles = (0.25, 0.5, 0.75)  # as pandas
    if isinstance(percentiles, (str, bytes)) or not isinstance(percentiles, Iterable):
        raise PolicyError(f"percentiles= takes a list of numbers between 0 and 1, e.g. percentiles=[0.25, 0.5, 0.75] "
                          f"(got {percentiles!r}).")
    qs = [_check_q(q) for q in percentiles]
    stats = ["count", "mean", "std"] + [f"{q * 100:g}%" for q in qs]
    measures = []
    for s in columns:
        if s._kind(s._expr) not in (NUMERIC, BOOL):
            raise PolicyError(f"describe() of '{s._label()}' needs numeric values; count text values with "
                              "value_counts() instead.")
        measures += [P.Count(s._expr), s._measure(P.Mean, None), s._measure(P.Variance, None, root=True)]
        measures += [s._measure(P.Quantile, None, q=q) for q in qs]
    split = (f"ε split evenly over {len(measures)} statistics; each column's count, mean and std share one "
             "noisy count and one noisy sum")
    out = columns[0]._release(measures, epsilon=epsilon, delta=delta, shape="series",
                              labels=range(len(measures)), notes=tuple(notes) + (split,))
    return _as_table(out, [s._label() for s in columns], stats)


def _as_table(release, names: list, stats: list):
    """Reshape a per-statistic release into pandas' describe() layout (statistics x columns)."""
    import pandas as pd

    from .release import DPFrame

    def grid(values):
        return pd.DataFrame(np.asarray(values, dtype=float).reshape(len(names), len(stats)).T,
                            index=stats, columns=names)

    table = DPFrame(grid(release.to_numpy(dtype=float)))
    info = release._dp
    low = None if info.ci_low is None else grid(info.ci_low)
    high = None if info.ci_high is None else grid(info.ci_high)
    table._dp = replace(info, ci_low=low, ci_high=high)
    return table


def _column_of(table):
    from .release import DPSeries

    name = table.columns[0]
    out = DPSeries(table[name].to_numpy(), index=table.index, name=name)
    info = table._dp
    out._dp = replace(info, ci_low=None if info.ci_low is None else info.ci_low[name],
                      ci_high=None if info.ci_high is None else info.ci_high[name])
    return out


def _histogram_releases(columns: list, bins, epsilon, delta) -> list:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or not 1 <= bins <= 10_000:
        raise PolicyError(f"bins must be a whole number of bins from 1 to 10000 (got {bins!r}); the bins span "
                          "the column's bounds, never the data.")
    for s in columns:
        if s._kind(s._expr) not in (NUMERIC, BOOL):
            raise PolicyError(f"a histogram needs numeric values and '{s._label()}' holds {s._kind(s._expr)} "
                              "values; draw its categories with s.value_counts().plot.bar() instead.")
    measures = [s._measure(P.Histogram, None, bins=int(bins)) for s in columns]
    return columns[0]._release(measures, epsilon=epsilon, delta=delta, shape="bins",
                               labels=[s._label() for s in columns])


def _histograms(columns: list, bins, epsilon, delta, kwargs):
    from .plots import histogram

    releases = _histogram_releases(columns, bins, epsilon, delta)
    if len(releases) == 1:
        return histogram(releases[0], **kwargs)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(releases), figsize=(4 * len(releases), 3.2))
    return [histogram(r, ax=ax, **kwargs) for r, ax in zip(releases, axes)]


def crosstab(index, columns, *args, normalize=False, epsilon=None, delta=None, **unsupported):
    """DP ``pandas.crosstab`` of two private columns of one frame: a table of DP counts.

    Declared categories are used as they are (empty cells included); otherwise the cells are chosen by
    DP partition selection (unreleased cells are NaN). ``normalize`` (True/'all', 'index', 'columns')
    divides by the released counts' totals (post-processing).
    """
    from .release import DPFrame

    if not (isinstance(index, PrivateSeries) and isinstance(columns, PrivateSeries)):
        raise PolicyError("crosstab() of private data takes two private columns of one frame: "
                          "pd.crosstab(df.sex, df.diagnosis).")
    if args or unsupported:
        names = ", ".join(sorted(unsupported)) or "extra positional arguments"
        raise PolicyError(f"crosstab() of private data takes only normalize=, epsilon= and delta= (not {names}); "
                          "for other statistics per cell use df.groupby(['a', 'b'])['x'].mean().")
    where = index._merge_where(columns)
    keys = (index._group_key(index._label(), index._expr), columns._group_key(columns._label(), columns._expr))
    counts = get_session().release(index._ds, [P.Count()], where=_checked_where(where), by=keys, epsilon=epsilon,
                                   delta=delta, shape="series", labels=["count"])
    info = counts._dp
    table = counts._as_plain().unstack(level=1)
    low = None if info.ci_low is None else info.ci_low.unstack(level=1)
    high = None if info.ci_high is None else info.ci_high.unstack(level=1)
    if normalize is not False:
        axis = {True: None, "all": None, "index": 1, "columns": 0}.get(normalize, "bad")
        if axis == "bad":
            raise PolicyError("normalize takes True, 'all', 'index' or 'columns'.")
        totals = table.to_numpy(dtype=float).sum() if axis is None else table.sum(axis=axis)
        table = table.div(totals, axis=0 if axis == 1 else 1) if axis is not None else table / totals
        low = high = None
        info = replace(info, notes=info.notes + ("proportions are DP counts divided by their DP totals",))
    out = DPFrame(table)
    out._dp = replace(info, ci_low=low, ci_high=high)
    return out


def _finish_counts(counts, normalize: bool, sort: bool, ascending: bool):
    """Post-processing of released counts (sorting, proportions), keeping the release's info."""
    info = counts._dp
    values = counts._as_plain()
    if normalize:
        total = float(values.sum())
        values = values / total if total > 0 else values * 0.0
        info = replace(info, ci_low=None, ci_high=None,
                       notes=info.notes + ("proportions are DP counts divided by their DP total",))
    if sort:
        values = values.sort_values(ascending=ascending, kind="stable")
    if info.ci_low is not None:
        info = replace(info, ci_low=info.ci_low.reindex(values.index), ci_high=info.ci_high.reindex(values.index))
    out = DPSeries(values.to_numpy(), index=values.index, name="proportion" if normalize else "count")
    out._dp = info
    return out


def _checked_where(where: tuple) -> tuple:
    """Refuse filters that can match no row whatever the data (judged from the constants alone)."""
    reason = contradiction(where)
    if reason:
        raise PolicyError(f"this filter selects nothing: {reason}. Check the comparison signs and values.")
    return where


def _check_q(q) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (0.0 <= float(q) <= 1.0):
        raise PolicyError(f"quantile q must be a number between 0 and 1 (got {q!r}).")
    return float(q)


def _check_ddof(ddof) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, numbers.Integral) or ddof < 0:
        raise PolicyError(f"ddof must be a whole number >= 0 (got {ddof!r}).")
    return int(ddof)


_install_refusals(PrivateFrame)
_install_refusals(PrivateSeries)
_GROUPED_REFUSED = dict.fromkeys(
    ["median", "quantile", "describe"],
    "per-group quantiles are not available yet; per group use size(), count(), sum(), mean(), var() or std(), "
    "or filter one group and use quantile() there: df[df.ward == 'icu']['age'].quantile([0.25, 0.5, 0.75]).")
for _name in ("head", "tail", "nth", "first", "last", "apply", "transform", "filter", "agg", "aggregate",
              "min", "max", "median", "quantile", "describe", "get_group", "groups", "indices", "ngroup",
              "cumcount", "sample", "pipe"):
    if _name not in PrivateGroupBy.__dict__:
        setattr(PrivateGroupBy, _name, _refusal(_name, _GROUPED_REFUSED.get(_name) or _REFUSED.get(_name, _ROWS)))
