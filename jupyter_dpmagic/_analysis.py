"""Static facts about plan expressions: their kind and their public bounds.

Both are derived from the schema and the policy only, never from data values, so using them to
accept, refuse or clamp a query reveals nothing about any patient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .errors import PolicyError
from .plan import AsType, Between, BinOp, Clip, Col, Expr, FillNA, IsIn, IsNA, Lit, Part, UnOp
from .plan import ARITHMETIC, COMPARISON, LOGICAL

__all__ = ["kind_of", "bounds_of", "dtype_kind"]

NUMERIC, BOOL, TEXT, DATETIME, OTHER = "numeric", "bool", "text", "datetime", "other"


def empty_frame(dtypes) -> "pd.DataFrame":
    """A frame with these columns and dtypes and no rows (what a process that holds no rows keeps).

    ``dtypes`` maps names to dtypes or their names; a categorical dtype has no categories here
    (they would be data).
    """
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=pd.api.types.pandas_dtype(str(t) if isinstance(t, pd.CategoricalDtype)
                                                                        else t)) for c, t in dtypes.items()})


def dtype_kind(dtype) -> str:
    """Map a pandas/numpy dtype to the coarse kinds used for validation."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return BOOL
    if pd.api.types.is_numeric_dtype(dtype):
        return NUMERIC
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return DATETIME
    if pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype) or dtype == object:
        return TEXT
    return OTHER


def _literal_kind(value) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        return NUMERIC
    if isinstance(value, str):
        return TEXT
    return OTHER


def kind_of(expr: Expr, schema: Mapping[str, str]) -> str:
    """The kind of values ``expr`` produces; raises PolicyError for meaningless combinations."""
    if isinstance(expr, Col):
        return schema[expr.name]
    if isinstance(expr, Lit):
        return _literal_kind(expr.value)
    if isinstance(expr, BinOp):
        left, right = kind_of(expr.left, schema), kind_of(expr.right, schema)
        if expr.op in COMPARISON:
            if expr.op not in ("==", "!=") and not _comparable(left, right):
                raise PolicyError(f"'{expr.op}' compares {left} with {right} values; compare numbers with "
                                  "numbers and text with text (convert with .astype(float) if needed).")
            return BOOL
        if expr.op in LOGICAL:
            if left != BOOL or right != BOOL:
                raise PolicyError(f"'{expr.op}' combines conditions; both sides must be True/False "
                                  "conditions such as (df.age > 65). Put each comparison in parentheses.")
            return BOOL
        if {left, right} <= {NUMERIC, BOOL}:
            return NUMERIC
        raise PolicyError(f"arithmetic '{expr.op}' needs numeric columns, not {left} and {right}; "
                          "convert with .astype(float) or use a numeric column.")
    if isinstance(expr, UnOp):
        inner = kind_of(expr.operand, schema)
        if expr.op == "not":
            if inner != BOOL:
                raise PolicyError("'~' negates a condition; apply it to a comparison such as ~(df.age > 65).")
            return BOOL
        if inner not in (NUMERIC, BOOL):
            raise PolicyError(f"'{expr.op}' needs a numeric column, not a {inner} one.")
        return NUMERIC
    if isinstance(expr, Between):
        inner = kind_of(expr.operand, schema)
        for end in (expr.low, expr.high):
            if end is not None and not _comparable(inner, _literal_kind(end)):
                raise PolicyError(f"between() compares {inner} values with {end!r}; use bounds of the "
                                  "same kind as the column (numbers for numbers, text for text).")
        return BOOL
    if isinstance(expr, (IsIn, IsNA)):
        kind_of(expr.operand, schema)
        return BOOL
    if isinstance(expr, Clip):
        inner = kind_of(expr.operand, schema)
        if inner not in (NUMERIC, BOOL):
            raise PolicyError(f"clip() needs a numeric column, not a {inner} one.")
        return NUMERIC
    if isinstance(expr, FillNA):
        inner = kind_of(expr.operand, schema)
        fill = _literal_kind(expr.value)
        if not ({inner, fill} <= {NUMERIC, BOOL} or inner == fill):
            # Mixing kinds would make later steps fail or not depending on which rows are missing.
            raise PolicyError(f"fillna({expr.value!r}) would put {fill} values into a {inner} column; "
                              "fill with a value of the column's kind.")
        return inner
    if isinstance(expr, AsType):
        kind_of(expr.operand, schema)
        return BOOL if expr.dtype == "bool" else NUMERIC
    if isinstance(expr, Part):
        return BOOL
    raise TypeError(f"not an expression: {expr!r}")


def _comparable(left: str, right: str) -> bool:
    # Ordering mixed kinds fails row by row in pandas, and an error that depends on which values the
    # data holds would itself leak; refuse it from the kinds alone.
    numeric = {NUMERIC, BOOL}
    return (left in numeric and right in numeric) or left == right


Interval = tuple[float, float]


def _hull(*points: float) -> Interval:
    finite = [p for p in points if not math.isnan(p)]
    return (min(finite), max(finite))


def bounds_of(expr: Expr, column_bounds: Callable[[str], Interval | None],
              schema: Mapping[str, str]) -> Interval | None:
    """Public bounds of ``expr`` by interval arithmetic, or None when they cannot be derived.

    ``column_bounds(name)`` gives the declared bounds of a source column (policy or protect call).
    Bounds only decide where values are clamped; the engine clamps to them whatever the data holds.
    """
    def go(node: Expr) -> Interval | None:
        if isinstance(node, Col):
            if schema.get(node.name) == BOOL:
                return (0.0, 1.0)
            return column_bounds(node.name)
        if isinstance(node, Lit):
            if isinstance(node.value, (int, float)) and math.isfinite(float(node.value)):
                return (float(node.value), float(node.value))
            return None
        if (isinstance(node, (IsIn, Between, IsNA, Part))
                or (isinstance(node, BinOp) and node.op in COMPARISON + LOGICAL)):
            return (0.0, 1.0)
        if isinstance(node, UnOp):
            if node.op == "not":
                return (0.0, 1.0)
            inner = go(node.operand)
            if inner is None:
                return None
            lo, hi = inner
            if node.op == "neg":
                return (-hi, -lo)
            return (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
        if isinstance(node, Clip):
            inner = go(node.operand)
            low = -math.inf if node.low is None else float(node.low)
            high = math.inf if node.high is None else float(node.high)
            if inner is None:
                return (low, high)  # finite only when both sides were given
            # Clipping [a, b] to [low, high] gives [clamp(a), clamp(b)], also when the level lies
            # outside [a, b] (then the value is that level).
            return (min(max(inner[0], low), high), min(max(inner[1], low), high))
        if isinstance(node, FillNA):
            inner = go(node.operand)
            if inner is None or not isinstance(node.value, (int, float)):
                return None
            return _hull(inner[0], inner[1], float(node.value))
        if isinstance(node, AsType):
            if node.dtype == "bool":
                return (0.0, 1.0)
            inner = go(node.operand)
            if inner is None:
                return None
            if node.dtype.startswith(("int", "uint")):
                return (float(math.trunc(inner[0])), float(math.trunc(inner[1])))
            return inner
        if isinstance(node, BinOp) and node.op in ARITHMETIC:
            a, b = go(node.left), go(node.right)
            if a is None or b is None:
                return None
            return _arith(node.op, a, b)
        return None

    result = go(expr)
    if result is None or not all(math.isfinite(v) for v in result):
        return None
    return result


def _arith(op: str, a: Interval, b: Interval) -> Interval | None:
    if op == "+":
        return (a[0] + b[0], a[1] + b[1])
    if op == "-":
        return (a[0] - b[1], a[1] - b[0])
    if op == "*":
        return _hull(a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    if op == "/":
        if b[0] <= 0 <= b[1]:
            return None  # the divisor may be zero: no finite bound
        return _hull(a[0] / b[0], a[0] / b[1], a[1] / b[0], a[1] / b[1])
    if op == "**":
        if b[0] != b[1] or b[0] != int(b[0]) or b[0] < 0:
            return None
        n = int(b[0])
        ends = (a[0] ** n, a[1] ** n)
        if n % 2 == 0 and a[0] <= 0 <= a[1]:
            return (0.0, max(ends))
        return _hull(*ends)
    if op == "%":
        if b[0] == b[1] and b[0] > 0:
            return (0.0, b[0])
        return None
    if op == "//":
        if b[0] <= 0 <= b[1]:
            return None
        q = _hull(a[0] / b[0], a[0] / b[1], a[1] / b[0], a[1] / b[1])
        return (math.floor(q[0]), math.floor(q[1]))
    return None


def contradiction(predicates) -> str | None:
    """A reason why the AND of ``predicates`` can hold for no row at all, judged from literals only.

    Only comparisons of a column with constants are considered (``age > 70``, ``age.between(..)``,
    ``age == 3``); anything else is assumed satisfiable. Data-independent, so refusing is safe.
    """
    from .plan import Between as _Between

    ranges: dict[str, list] = {}
    sides: dict[tuple, set] = {}  # one split (token, fraction, unit) -> the sides asked for

    def narrow(name, low, low_open, high, high_open):
        lo, lo_open, hi, hi_open = ranges.get(name, [-math.inf, False, math.inf, False])
        if low > lo or (low == lo and low_open):
            lo, lo_open = low, low_open
        if high < hi or (high == hi and high_open):
            hi, hi_open = high, high_open
        ranges[name] = [lo, lo_open, hi, hi_open]

    def visit(p):
        if isinstance(p, BinOp) and p.op == "&":
            visit(p.left), visit(p.right)
            return
        if isinstance(p, Part):
            sides.setdefault((p.token, p.fraction, p.unit), set()).add(p.side)
            return
        if isinstance(p, _Between) and isinstance(p.operand, Col) and _is_number(p.low) and _is_number(p.high):
            narrow(p.operand.name, float(p.low), p.inclusive in ("neither", "right"), float(p.high),
                   p.inclusive in ("neither", "left"))
            return
        if isinstance(p, BinOp) and p.op in ("<", "<=", ">", ">=", "=="):
            col, lit, op = p.left, p.right, p.op
            if isinstance(col, Lit) and isinstance(lit, Col):
                col, lit, op = lit, col, {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]
            if not (isinstance(col, Col) and isinstance(lit, Lit) and _is_number(lit.value)):
                return
            v = float(lit.value)
            if op in (">", ">="):
                narrow(col.name, v, op == ">", math.inf, False)
            elif op in ("<", "<="):
                narrow(col.name, -math.inf, False, v, op == "<")
            else:
                narrow(col.name, v, False, v, False)

    for predicate in predicates:
        visit(predicate)
    if any(len(found) == 2 for found in sides.values()):
        return "the train and test halves of one split share no row"
    for name, (lo, lo_open, hi, hi_open) in ranges.items():
        if lo > hi or (lo == hi and (lo_open or hi_open)):
            return f"the conditions on '{name}' exclude each other, so no row can match"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
