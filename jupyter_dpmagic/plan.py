"""The query plan: a small, serialisable description of one release.

Proxies build plans, engines execute them, nothing else is shared between the two. A plan is made of
frozen dataclasses only (no callables, no data), so the same plan can run in this process, on Spark, or
travel as JSON to a steward that holds the data.

A :class:`Query` is flat on purpose: the row transforms of pandas code (column arithmetic, ``assign``,
``fillna``...) are inlined into column expressions, and every filter becomes one predicate of ``where``.
That keeps engines simple and makes bounds and touched columns easy to derive.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Col", "Lit", "BinOp", "UnOp", "IsIn", "Between", "IsNA", "Clip", "FillNA", "AsType", "Part", "Expr",
    "GroupKey", "Count", "Sum", "Mean", "Variance", "Quantile", "Histogram", "Measure", "Query",
    "RowCount", "FixedSum", "QuantileScores", "BinCounts", "Primitive",
    "columns_of", "to_dict", "from_dict", "describe", "check_parts", "PlanError",
]

ARITHMETIC = ("+", "-", "*", "/", "//", "%", "**")
COMPARISON = ("==", "!=", "<", "<=", ">", ">=")
LOGICAL = ("&", "|", "^")


# ----------------------------------------------------------------------------------------------- row
@dataclass(frozen=True)
class Col:
    """A column of the protected source table."""

    name: str


@dataclass(frozen=True)
class Lit:
    """A public constant written in the cell."""

    value: Any


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class UnOp:
    op: str  # "neg", "not", "abs"
    operand: "Expr"


@dataclass(frozen=True)
class IsIn:
    operand: "Expr"
    values: tuple


@dataclass(frozen=True)
class Between:
    operand: "Expr"
    low: Any
    high: Any
    inclusive: str = "both"


@dataclass(frozen=True)
class IsNA:
    operand: "Expr"


@dataclass(frozen=True)
class Clip:
    operand: "Expr"
    low: float | None
    high: float | None


@dataclass(frozen=True)
class FillNA:
    operand: "Expr"
    value: Any


@dataclass(frozen=True)
class AsType:
    operand: "Expr"
    dtype: str


@dataclass(frozen=True)
class Part:
    """One side of a random split of the rows (True for rows on that side).

    The engine draws, once per ``token``, a uniform number for each person (each row when ``unit`` is
    None) from fresh randomness; a person is on the test side when that number is below ``fraction``.
    The draw is kept for the life of the engine, so every query naming the same token sees the same
    split, and the two sides of one token are disjoint and cover every row. ``unit`` is the privacy
    unit column's name (a plain string, not a :class:`Col`: the split reads it only to keep a
    person's rows together, it never releases or filters on its values).
    """

    token: int
    fraction: float  # share of people on the test side, in (0, 1)
    side: bool  # True: the test side; False: the train side
    unit: str | None = None


Expr = Union[Col, Lit, BinOp, UnOp, IsIn, Between, IsNA, Clip, FillNA, AsType, Part]


# ------------------------------------------------------------------------------------------ measures
@dataclass(frozen=True)
class GroupKey:
    """A grouping expression and its public categories (empty groups are released too).

    ``categories=None`` means nobody declared them: the groups are then chosen by DP partition
    selection, and only groups whose noisy count passes a threshold are released.
    """

    label: str
    expr: Expr
    categories: tuple | None

    @property
    def declared(self) -> bool:
        return self.categories is not None

    @property
    def token(self) -> tuple:
        """What an engine may cache this key's grouping under: the categories with their types,
        since ``0 == False`` and ``1 == 1.0`` would let one key's codes and labels stand in for another's."""
        categories = None if self.categories is None else tuple((type(v), v) for v in self.categories)
        return (self.expr, categories)


@dataclass(frozen=True)
class Count:
    """Rows (``expr is None``) or non-missing values of ``expr``."""

    expr: Expr | None = None


# ``low``/``high`` of None: nobody declared bounds and the policy lets the session estimate them
# (a DP release of its own) before this measure is compiled.
@dataclass(frozen=True)
class Sum:
    expr: Expr
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Mean:
    expr: Expr
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Variance:
    expr: Expr
    low: float | None
    high: float | None
    ddof: int = 1
    root: bool = False  # standard deviation


@dataclass(frozen=True)
class Quantile:
    expr: Expr
    low: float | None
    high: float | None
    q: float


@dataclass(frozen=True)
class Histogram:
    """Rows per bin; ``bins`` equal-width bins spanning the bounds (values clamped into them)."""

    expr: Expr
    low: float | None
    high: float | None
    bins: int


Measure = Union[Count, Sum, Mean, Variance, Quantile, Histogram]


@dataclass(frozen=True)
class Query:
    """One release: measures over the rows of ``dataset`` that satisfy every ``where`` predicate.

    ``unit``/``max_rows`` bound each person's contribution: at most ``max_rows`` rows per value of the
    ``unit`` column enter the aggregate (all rows are one person each when ``unit`` is None). With
    ``by``, ``max_groups`` also keeps each person in at most that many groups.
    """

    dataset: str
    measures: tuple  # tuple[Measure, ...]
    where: tuple = ()  # tuple[Expr, ...]
    by: tuple = ()  # tuple[GroupKey, ...]
    unit: str | None = None
    max_rows: int = 1
    max_groups: int | None = None

    @property
    def selects_groups(self) -> bool:
        """Whether some group key has no declared categories (DP partition selection)."""
        return any(not key.declared for key in self.by)


# ---------------------------------------------------------------------------------------- primitives
# What an engine computes exactly, per group, as integers. Each primitive has a sensitivity that holds
# under finite arithmetic: values are clamped, mapped to integers on a public grid, clamped again as
# integers and only then summed, so no float rounding can push one row's influence past the bound.
@dataclass(frozen=True)
class RowCount:
    expr: Expr | None = None  # count rows where expr is not missing (all rows when None)

    def sensitivity(self) -> int:
        return 1


@dataclass(frozen=True)
class FixedSum:
    """Sum of ``round((transform(clip(x, low, high)) - shift) / grid)``, each term in ``[-limit, limit]``.

    ``square`` applies ``(x - centre) ** 2`` before the shift (for variances).
    """

    expr: Expr
    low: float
    high: float
    shift: float
    grid: float
    limit: int
    square: bool = False
    centre: float = 0.0

    def sensitivity(self) -> int:
        return self.limit


@dataclass(frozen=True)
class QuantileScores:
    """Exponential-mechanism scores ``-|(den - num) * below(c) - num * above(c)|`` for each candidate."""

    expr: Expr
    low: float
    high: float
    candidates: tuple
    num: int
    den: int

    def sensitivity(self) -> int:
        return max(self.num, self.den - self.num)


@dataclass(frozen=True)
class BinCounts:
    """Rows per bin of ``edges`` (values clamped into the outer bins); one row is in one bin."""

    expr: Expr
    edges: tuple

    def sensitivity(self) -> int:
        return 1


Primitive = Union[RowCount, FixedSum, QuantileScores, BinCounts]


# ------------------------------------------------------------------------------------------- helpers
def columns_of(node: Any) -> set[str]:
    """Names of the source columns a plan node reads."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Col):
            found.add(value.name)
        elif dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(node)
    return found


_KINDS = {cls.__name__: cls for cls in (
    Col, Lit, BinOp, UnOp, IsIn, Between, IsNA, Clip, FillNA, AsType, Part, GroupKey,
    Count, Sum, Mean, Variance, Quantile, Histogram, Query, RowCount, FixedSum, QuantileScores, BinCounts)}


def to_dict(node: Any) -> Any:
    """Plain JSON-able data for a plan node (``{"kind": ..., fields...}``)."""
    if dataclasses.is_dataclass(node):
        out = {"kind": type(node).__name__}
        for field in dataclasses.fields(node):
            out[field.name] = to_dict(getattr(node, field.name))
        return out
    if isinstance(node, tuple):
        return {"kind": "tuple", "items": [to_dict(item) for item in node]}
    if isinstance(node, (bool, str, int)) or node is None:
        return node
    if isinstance(node, float):
        return node if math.isfinite(node) else {"kind": "float", "repr": repr(node)}
    if type(node).__module__ == "numpy" and hasattr(node, "item"):
        return to_dict(node.item())  # a numpy scalar written in the cell (np.float64(3.5), say)
    if type(node).__name__ == "Timestamp" and hasattr(node, "isoformat"):
        return {"kind": "timestamp", "iso": node.isoformat()}
    if isinstance(node, _dt.datetime):
        return {"kind": "timestamp", "iso": node.isoformat()}
    raise TypeError(f"{type(node).__name__} values cannot be part of a query plan; use a number, text, "
                    "a boolean or a pandas Timestamp.")


def from_dict(data: Any) -> Any:
    """Inverse of :func:`to_dict`; accepts only plan node kinds (no arbitrary objects)."""
    if isinstance(data, dict):
        kind = data.get("kind")
        if kind == "tuple":
            return tuple(from_dict(item) for item in data["items"])
        if kind == "float":
            return float(data["repr"])
        if kind == "timestamp":
            import pandas as pd

            return pd.Timestamp(data["iso"])
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"unknown plan node kind {kind!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: from_dict(v) for k, v in data.items() if k in names})
    if isinstance(data, list):
        return tuple(from_dict(item) for item in data)
    return data


_OP_WORDS = {"neg": "-", "not": "~", "abs": "abs"}


def describe(node: Any) -> str:
    """A short, human-readable rendering of a plan node (used in histories and release notes)."""
    if isinstance(node, Col):
        return node.name
    if isinstance(node, Lit):
        return repr(node.value)
    if isinstance(node, BinOp):
        return f"({describe(node.left)} {node.op} {describe(node.right)})"
    if isinstance(node, UnOp):
        word = _OP_WORDS.get(node.op, node.op)
        return f"{word}({describe(node.operand)})" if word == "abs" else f"{word}{describe(node.operand)}"
    if isinstance(node, IsIn):
        return f"{describe(node.operand)}.isin({list(node.values)!r})"
    if isinstance(node, Between):
        return f"{describe(node.operand)}.between({node.low!r}, {node.high!r})"
    if isinstance(node, IsNA):
        return f"{describe(node.operand)}.isna()"
    if isinstance(node, Clip):
        return f"{describe(node.operand)}.clip({node.low!r}, {node.high!r})"
    if isinstance(node, FillNA):
        return f"{describe(node.operand)}.fillna({node.value!r})"
    if isinstance(node, AsType):
        return f"{describe(node.operand)}.astype({node.dtype!r})"
    if isinstance(node, Part):
        side, share = ("test", node.fraction) if node.side else ("train", 1.0 - node.fraction)
        return f"split#{node.token}({side} {share:.0%})"
    if isinstance(node, Count):
        return "count(rows)" if node.expr is None else f"count({describe(node.expr)})"
    if isinstance(node, Variance):
        return f"{'std' if node.root else 'var'}({describe(node.expr)})"
    if isinstance(node, Quantile):
        return f"quantile({describe(node.expr)}, {node.q:g})"
    if isinstance(node, Histogram):
        return f"histogram({describe(node.expr)}, {node.bins} bins)"
    if isinstance(node, (Sum, Mean)):
        return f"{type(node).__name__.lower()}({describe(node.expr)})"
    if isinstance(node, Query):
        text = ", ".join(describe(m) for m in node.measures)
        if node.where:
            text += " where " + " & ".join(describe(w) for w in node.where)
        if node.by:
            text += " by " + ", ".join(k.label for k in node.by)
        return text
    return repr(node)


# --------------------------------------------------------------------------------------- validation
class PlanError(ValueError):
    """A plan that did not come from this library's proxies (a hand-written or altered request)."""


_SCALARS = (type(None), bool, int, float, str)
_INCLUSIVE = ("both", "neither", "left", "right")


def check_parts(measures: Any, where: Any, by: Any) -> None:
    """Refuse anything a private proxy could not have built: only known node kinds, in their places,
    with operators, dtypes and literals of the kinds the proxies produce.

    ``from_dict`` only builds known kinds; this checks what their fields hold, so that a plan sent
    by hand (to a steward, say) is no more than one the pandas API could have made.
    """
    _require(isinstance(measures, tuple) and measures, "measures must be a non-empty list")
    for measure in measures:
        _check_measure(measure)
    _require(isinstance(where, tuple), "where must be a list")
    for predicate in where:
        _check_expr(predicate)
    _require(isinstance(by, tuple), "by must be a list")
    for key in by:
        _require(isinstance(key, GroupKey) and isinstance(key.label, str), "by holds group keys")
        _check_expr(key.expr)
        if key.categories is not None:
            _require(isinstance(key.categories, tuple) and all(_is_literal(c) for c in key.categories),
                     "categories are literals")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise PlanError(f"not a valid query plan: {what}.")


def _is_literal(value) -> bool:
    if isinstance(value, float):
        return True  # nan and infinities included: pandas code can write them
    return isinstance(value, _SCALARS) or type(value).__name__ == "Timestamp"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_measure(measure) -> None:
    if isinstance(measure, Count):
        if measure.expr is not None:
            _check_expr(measure.expr)
        return
    _require(isinstance(measure, (Sum, Mean, Variance, Quantile, Histogram)), "measures are counts, sums, "
             "means, variances, quantiles or histograms")
    _check_expr(measure.expr)
    for bound in (measure.low, measure.high):
        _require(bound is None or (_is_number(bound) and math.isfinite(bound)), "bounds are finite numbers")
    _require((measure.low is None) == (measure.high is None), "bounds come in pairs")
    if isinstance(measure, Variance):
        _require(isinstance(measure.ddof, int) and not isinstance(measure.ddof, bool) and measure.ddof >= 0,
                 "ddof is a whole number >= 0")
        _require(isinstance(measure.root, bool), "root is a boolean")
    if isinstance(measure, Quantile):
        _require(_is_number(measure.q) and 0.0 <= measure.q <= 1.0, "a quantile's q is in [0, 1]")
    if isinstance(measure, Histogram):
        _require(isinstance(measure.bins, int) and not isinstance(measure.bins, bool) and 1 <= measure.bins <= 10_000,
                 "a histogram has 1 to 10000 bins")


def _check_expr(expr, depth: int = 0) -> None:
    _require(depth < 200, "expressions nest at most 200 deep")
    sub = lambda e: _check_expr(e, depth + 1)  # noqa: E731
    if isinstance(expr, Col):
        _require(isinstance(expr.name, str), "column names are text")
    elif isinstance(expr, Lit):
        _require(_is_literal(expr.value), "literals are numbers, text, booleans or timestamps")
    elif isinstance(expr, BinOp):
        _require(expr.op in ARITHMETIC + COMPARISON + LOGICAL, f"operator {expr.op!r} is not known")
        sub(expr.left)
        sub(expr.right)
    elif isinstance(expr, UnOp):
        _require(expr.op in _OP_WORDS, f"operator {expr.op!r} is not known")
        sub(expr.operand)
    elif isinstance(expr, IsIn):
        _require(isinstance(expr.values, tuple) and all(_is_literal(v) for v in expr.values), "isin takes literals")
        sub(expr.operand)
    elif isinstance(expr, Between):
        _require(_is_literal(expr.low) and _is_literal(expr.high) and expr.inclusive in _INCLUSIVE,
                 "between takes literals")
        sub(expr.operand)
    elif isinstance(expr, Clip):
        for bound in (expr.low, expr.high):
            _require(bound is None or _is_number(bound), "clip takes numbers")
        sub(expr.operand)
    elif isinstance(expr, FillNA):
        _require(_is_literal(expr.value), "fillna takes a literal")
        sub(expr.operand)
    elif isinstance(expr, IsNA):
        sub(expr.operand)
    elif isinstance(expr, AsType):
        _require(expr.dtype in _ASTYPES, "astype converts between numeric types")
        sub(expr.operand)
    elif isinstance(expr, Part):
        _require(isinstance(expr.token, int) and not isinstance(expr.token, bool), "a split token is a whole number")
        _require(_is_number(expr.fraction) and 0.0 < expr.fraction < 1.0, "a split fraction is in (0, 1)")
        _require(isinstance(expr.side, bool), "a split side is a boolean")
        _require(expr.unit is None or isinstance(expr.unit, str), "a split unit is a column name")
    else:
        _require(False, f"{type(expr).__name__} is not an expression")


# What PrivateSeries.astype produces (numpy dtype names of the numeric and boolean types).
_ASTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                      "float16", "float32", "float64"})
