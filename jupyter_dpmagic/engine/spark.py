"""The Spark engine: runs plans on a PySpark DataFrame, with the local engine's semantics.

Every step runs as Spark jobs: filters, clamping, the fixed-point grid, each person's contribution
bound (a window ``row_number`` over a random order per person), grouped aggregation, quantile scores
and bin counts. Only small per-group results reach the driver, never rows. Exact values are those
:class:`~jupyter_dpmagic.engine.local.LocalEngine` computes on the same data as a pandas DataFrame
(``spark.createDataFrame(frame)``): same groups in the same order, same integers, same treatment of
missing values, text, categories and arithmetic. Text columns behave as pandas' default ``str`` dtype.

Not available here: ``astype('float16')`` (Spark has no half-precision type) and the rows a model
trains on (:meth:`SparkEngine.rows` refuses).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..plan import ARITHMETIC
from ..plan import (AsType, BinCounts, Between, BinOp, Clip, Col, Expr, FillNA, FixedSum, IsIn, IsNA, Lit, Part,
                    Query, QuantileScores, RowCount, UnOp)
from .local import Exact, _plain_terms

__all__ = ["SparkEngine"]

_ROW = "__dpmagic_row"  # position of each row in the source (first appearance of group keys)
_TWO53 = float(2**53)

# Kinds of values, after the pandas dtype each has in the local engine:
# "f" float64, "f4" float32, "i" int64, "b" bool, "t" text (pandas str), "M" datetime, "o" anything else.
_NUMERIC = ("f", "f4", "i", "b")


def _functions():
    from pyspark.sql import functions as F  # noqa: N812 - the usual name

    return F


class _V:
    """A Spark column (or a Python literal: ``lit=True``) and the kind of its pandas counterpart.

    ``source``: the column is a plain reference to a source column (cheap to use many times).
    """

    __slots__ = ("col", "kind", "lit", "source")

    def __init__(self, col, kind: str, lit: bool = False, source: bool = False):
        self.col, self.kind, self.lit, self.source = col, kind, lit, source


def _bind(value: "_V", fn):
    """``fn(value's column)``, computing a derived column once however often ``fn`` uses it."""
    if value.lit or value.source:
        return fn(value.col)
    return _let(fn, value.col)


def _literal_kind(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "i"
    if isinstance(value, float):
        return "f"
    if isinstance(value, str):
        return "t"
    if isinstance(value, (pd.Timestamp, np.datetime64)) or type(value).__name__ == "datetime":
        return "M"
    return "o"


class SparkEngine:
    """Executes :class:`~jupyter_dpmagic.plan.Query` objects against one protected Spark DataFrame."""

    def __init__(self, frame):
        F = _functions()
        from pyspark.sql import types as T

        self._spark = frame.sparkSession
        self._columns = list(frame.columns)
        self._types = {f.name: f.dataType for f in frame.schema.fields}
        # pandas keeps NaN as a missing value; Spark keeps it as a number. Missing is null here.
        cols = []
        for name in self._columns:
            c = F.col(_q(name))
            if isinstance(self._types[name], (T.DoubleType, T.FloatType)):
                c = F.when(F.isnan(c), F.lit(None).cast(self._types[name])).otherwise(c)
            cols.append(c.alias(name))
        self._df = frame.select(*cols, F.monotonically_increasing_id().alias(_ROW))
        self._summary_cache: dict | None = None
        self._keys_cache: dict = {}
        self._split_seeds: dict[tuple, int] = {}

    @classmethod
    def from_parquet(cls, spark, path: str) -> "SparkEngine":
        """An engine over the Parquet data at ``path`` (a file or a directory of files)."""
        return cls(spark.read.parquet(path))

    # ------------------------------------------------------------------------------- data facts
    def _summary(self) -> dict:
        """Rows and non-missing values per column (one Spark job, computed once)."""
        if self._summary_cache is None:
            F = _functions()
            present = [F.count(F.col(_q(c))).alias(f"c{i}") for i, c in enumerate(self._columns)]
            row = self._df.agg(F.count(F.lit(1)).alias("__n"), *present).collect()[0]
            self._summary_cache = {"rows": int(row["__n"]),
                                   "present": {c: int(row[f"c{i}"]) for i, c in enumerate(self._columns)}}
        return self._summary_cache

    def dtypes(self) -> dict:
        """The pandas dtype of each column as ``toPandas()`` would make it (integers with missing
        values become float64, booleans with missing values object)."""
        from pyspark.sql import types as T

        summary = self._summary()
        out = {}
        for name in self._columns:
            t = self._types[name]
            missing = summary["present"][name] < summary["rows"]
            if isinstance(t, T.DoubleType):
                out[name] = np.dtype("float64")
            elif isinstance(t, T.FloatType):
                out[name] = np.dtype("float32")
            elif isinstance(t, (T.LongType, T.IntegerType, T.ShortType, T.ByteType)):
                size = {T.LongType: "int64", T.IntegerType: "int32", T.ShortType: "int16", T.ByteType: "int8"}
                out[name] = np.dtype("float64") if missing else np.dtype(size[type(t)])
            elif isinstance(t, T.BooleanType):
                out[name] = np.dtype(object) if missing else np.dtype(bool)
            elif isinstance(t, T.StringType):
                out[name] = pd.StringDtype(na_value=np.nan)
            elif isinstance(t, (T.TimestampType, T.TimestampNTZType)):
                out[name] = np.dtype("datetime64[us]")
            else:
                out[name] = np.dtype(object)
        return out

    def empty_columns(self) -> list[str]:
        """Columns without a single value (only when there is at least one row)."""
        summary = self._summary()
        if not summary["rows"]:
            return []
        return [c for c in self._columns if summary["present"][c] == 0]

    def constant_numeric(self, columns: Sequence[str]) -> list[str]:
        """Those of ``columns`` whose smallest and largest values are equal (missing values skipped)."""
        columns = list(columns)
        if not columns:
            return []
        F = _functions()
        aggs = []
        for i, name in enumerate(columns):
            aggs += [F.min(F.col(_q(name))).alias(f"lo{i}"), F.max(F.col(_q(name))).alias(f"hi{i}")]
        row = self._df.agg(*aggs).collect()[0]
        return [name for i, name in enumerate(columns)
                if row[f"lo{i}"] is not None and row[f"lo{i}"] == row[f"hi{i}"]]

    def unit_missing(self, unit: str) -> str:
        """Whether the privacy unit column is missing in "none", "some" or "all" rows."""
        summary = self._summary()
        present = summary["present"][unit]
        if present == summary["rows"]:
            return "none"
        return "all" if present == 0 else "some"

    def fingerprint(self) -> str:
        """A SHA-256 digest of the content: column names, dtypes and every value (in any row order).

        Each row is hashed on the cluster (64-bit xxhash of every value and whether it is missing);
        the digest covers the number of rows and the sums and exclusive-or of those hashes.
        """
        F = _functions()
        parts = []
        for name in self._columns:
            parts += [F.col(_q(name)), F.col(_q(name)).isNull()]
        h = F.xxhash64(*parts) if parts else F.lit(0).cast("long")
        rows = self._df.select(h.alias("h")).agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.col("h").bitwiseAND(F.lit(0xFFFFFFFF))).alias("low"),
            F.sum(F.shiftrightunsigned(F.col("h"), 32)).alias("high"),
            F.bit_xor(F.col("h")).alias("xor"),
        ).collect()[0]
        digest = hashlib.sha256()
        for name, dtype in self.dtypes().items():
            digest.update(f"{name}\x1f{dtype}\x1e".encode())
        digest.update(f"{rows['n']}:{rows['low'] or 0}:{rows['high'] or 0}:{rows['xor'] or 0}".encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------ public
    def run(self, query: Query, primitives: Sequence) -> Exact:
        """Exact values of ``primitives``: per primitive, a list with one entry per group.

        The same values as :meth:`LocalEngine.run` on the same data, computed by Spark jobs.
        """
        F = _functions()
        from pyspark.sql import Window

        primitives = list(primitives)
        for prim in primitives:
            if isinstance(prim, (QuantileScores, BinCounts)) and query.by:
                kind = "quantile scores" if isinstance(prim, QuantileScores) else "histograms"
                raise TypeError(f"{kind} are computed without groups")
            if not isinstance(prim, (RowCount, FixedSum, QuantileScores, BinCounts)):
                raise TypeError(f"unknown primitive {prim!r}")
        cache: dict = {}
        rows = self._where(query.where, cache)
        groups = self._groups(query.by, cache)  # (columns, valid, shape)
        if groups["valid"] is not None:
            rows = groups["valid"] if rows is None else rows & groups["valid"]
        # One selection of rows per expression (the same for a mean's sum and count).
        exprs = list(dict.fromkeys(prim.expr for prim in primitives))
        frame = self._df if rows is None else self._df.filter(rows)
        cols = {f"g{i}": c for i, c in enumerate(groups["columns"])}
        for j, expr in enumerate(exprs):
            cols[f"k{j}"] = F.lit(True) if expr is None else self._notna(expr, cache)
            if expr is not None and any(isinstance(p, (FixedSum, QuantileScores, BinCounts)) and p.expr == expr
                                        for p in primitives):
                cols[f"x{j}"] = self._numeric(expr, cache)
        if query.unit is not None:
            cols["unit"] = F.col(_q(query.unit))
            cols["r"] = F.rand(secrets.randbits(62))
        frame = frame.select(*[c.alias(n) for n, c in cols.items()])
        gnames = [f"g{i}" for i in range(len(groups["columns"]))]
        if query.unit is not None:
            by_unit = Window.partitionBy("unit")
            if query.max_groups is not None and gnames:
                for j in range(len(exprs)):
                    # One random priority per (person, group): each of a person's groups is as likely
                    # to be kept; the kept rows rank first.
                    keep = F.col(f"k{j}")
                    priority = F.xxhash64(F.lit(secrets.randbits(62)), F.col("unit"), *[F.col(g) for g in gnames])
                    rank = F.dense_rank().over(by_unit.orderBy((~keep).asc(), priority.asc(),
                                                               *[F.col(g).asc() for g in gnames]))
                    frame = frame.withColumn(f"k{j}", keep & (rank <= query.max_groups))
            # One random order of each person's rows, shared by every expression (one sort): an
            # expression keeps the first max_rows of the rows where it has a value, so expressions
            # without missing values keep the same rows, as in the local engine.
            so_far = by_unit.orderBy("r").rowsBetween(Window.unboundedPreceding, Window.currentRow)
            frame = frame.select(*[c for c in frame.columns if not c.startswith("k")], *[
                (F.col(f"k{j}") & (F.sum(F.col(f"k{j}").cast("int")).over(so_far) <= query.max_rows)).alias(f"k{j}")
                for j in range(len(exprs))])
        out: list = [None] * len(primitives)
        simple = [(i, p) for i, p in enumerate(primitives) if isinstance(p, (RowCount, FixedSum))]
        if simple:
            aggs = []
            for i, prim in simple:
                j = exprs.index(prim.expr)
                keep = F.col(f"k{j}")
                if isinstance(prim, RowCount):
                    aggs.append(F.count(F.when(keep, F.lit(1))).alias(f"p{i}"))
                else:
                    aggs.append(F.sum(F.when(keep, _fixed_terms(F.col(f"x{j}"), prim))).alias(f"p{i}"))
            found = (frame.groupBy(*gnames).agg(*aggs) if gnames else frame.agg(*aggs)).collect()
            n_groups = groups["count"]()
            for i, _ in simple:
                out[i] = [0] * n_groups
            for row in found:
                at = groups["index"](tuple(row[g] for g in gnames)) if gnames else 0
                if at is None:
                    continue
                for i, _ in simple:
                    out[i][at] = int(row[f"p{i}"] or 0)
        for i, prim in enumerate(primitives):
            if isinstance(prim, (RowCount, FixedSum)):
                continue
            j = exprs.index(prim.expr)
            values = frame.filter(F.col(f"k{j}")).select(F.col(f"x{j}").alias("x"))
            if isinstance(prim, QuantileScores):
                out[i] = [_quantile_scores(values, prim)]
            else:
                out[i] = [_bin_counts(values, prim)]
        keys = groups["keys"]() if groups["selects"] else None
        return Exact(out, keys)

    def rows(self, query: Query, columns: list[str]):
        """Rows for model training never leave Spark: not available on this engine."""
        raise NotImplementedError("training a model on data held by Spark is not available: the rows would "
                                  "have to be collected into this process. Use releases (counts, means, "
                                  "quantiles, histograms) on Spark data, or protect a pandas DataFrame to fit models.")

    # -------------------------------------------------------------------------------- evaluation
    def _eval(self, expr: Expr, cache: dict) -> _V:
        if expr in cache:
            return cache[expr]
        value = self._translate(expr, cache)
        cache[expr] = value
        return value

    def _source_kind(self, name: str) -> str:
        from pyspark.sql import types as T

        t = self._types[name]
        if isinstance(t, T.DoubleType):
            return "f"
        if isinstance(t, T.FloatType):
            return "f4"
        if isinstance(t, (T.LongType, T.IntegerType, T.ShortType, T.ByteType)):
            summary = self._summary()
            return "f" if summary["present"][name] < summary["rows"] else "i"
        if isinstance(t, T.BooleanType):
            return "b"
        if isinstance(t, T.StringType):
            return "t"
        if isinstance(t, (T.TimestampType, T.TimestampNTZType)):
            return "M"
        return "o"

    def _translate(self, expr: Expr, cache: dict) -> _V:
        F = _functions()
        ev = lambda e: self._eval(e, cache)  # noqa: E731
        if isinstance(expr, Col):
            kind = self._source_kind(expr.name)
            col = F.col(_q(expr.name))
            if kind == "f" and not _is_double(self._types[expr.name]):
                return _V(col.cast("double"), kind)
            return _V(col, kind, source=True)
        if isinstance(expr, Lit):
            return _V(expr.value, _literal_kind(expr.value), lit=True)
        if isinstance(expr, BinOp):
            left, right = ev(expr.left), ev(expr.right)
            if expr.op in ("&", "|", "^"):
                a, b = _as_bool(left), _as_bool(right)
                if left.lit and right.lit:
                    return _V({"&": a & b, "|": a | b, "^": a ^ b}[expr.op], "b", lit=True)
                a, b = _c(a), _c(b)
                result = a & b if expr.op == "&" else a | b if expr.op == "|" else _let(lambda a, b: a != b, a, b)
                return _V(result, "b")
            if expr.op in ARITHMETIC:
                a, b = _as_float(left), _as_float(right)
                if left.lit and right.lit:
                    return _V(_arithmetic_scalars(expr.op, a, b), "f", lit=True)
                return _V(_arithmetic(expr.op, a, b), "f")
            return _V(_compare(expr.op, left, right), "b")
        if isinstance(expr, UnOp):
            inner = ev(expr.operand)
            if expr.op == "not" or (expr.op == "neg" and inner.kind == "b"):
                return _V(~_c(_as_bool(inner)), "b")
            if expr.op == "abs":
                if inner.kind == "b":
                    return inner
                return _V(F.abs(_c(inner.col)), inner.kind if inner.kind in ("f", "f4", "i") else "f")
            if inner.kind not in ("f", "f4", "i"):
                raise TypeError(f"cannot negate {inner.kind} values")
            return _V(-_c(inner.col), inner.kind)
        if isinstance(expr, IsIn):
            inner = ev(expr.operand)

            def isin(v):
                test = F.lit(False)
                for value in expr.values:
                    test = test | _isin_one(_V(v, inner.kind, inner.lit), value)
                return test
            return _V(_bind(inner, isin), "b")
        if isinstance(expr, Between):
            inner = ev(expr.operand)
            low_op = ">=" if expr.inclusive in ("both", "left") else ">"
            high_op = "<=" if expr.inclusive in ("both", "right") else "<"

            def between(v):
                value = _V(v, inner.kind, inner.lit)
                return (_compare(low_op, value, _V(expr.low, _literal_kind(expr.low), lit=True))
                        & _compare(high_op, value, _V(expr.high, _literal_kind(expr.high), lit=True)))
            return _V(_bind(inner, between), "b")
        if isinstance(expr, IsNA):
            inner = ev(expr.operand)
            if inner.lit:
                return _V(bool(pd.isna(inner.col)), "b", lit=True)
            return _V(inner.col.isNull(), "b")
        if isinstance(expr, Clip):
            return _clip(ev(expr.operand), expr.low, expr.high)
        if isinstance(expr, FillNA):
            inner = ev(expr.operand)
            if inner.lit:
                return _V(expr.value if pd.isna(inner.col) else inner.col, inner.kind, lit=True)
            if inner.kind in _NUMERIC:
                fill = expr.value
                fill = float(fill) if isinstance(fill, (bool, int, float)) else fill
                return _V(F.coalesce(_as_float(inner), F.lit(fill)), "f")
            return _V(F.coalesce(inner.col, F.lit(expr.value)), inner.kind)
        if isinstance(expr, AsType):
            inner = ev(expr.operand)
            dtype = expr.dtype
            if dtype.startswith(("int", "uint")):
                return _V(_trunc(_c(_as_float(inner))), "f")
            if dtype == "bool":
                if inner.kind == "b":
                    return inner
                if inner.kind in ("f", "f4", "i"):
                    # NaN is truthy in numpy: a missing value becomes True.
                    return _V(F.coalesce(_c(inner.col) != 0, F.lit(True)), "b")
                return _V(F.coalesce(F.length(_c(inner.col)) > 0, F.lit(True)), "b")
            if dtype == "float64":
                return _V(_c(_as_float(inner)), "f")
            if dtype == "float32":
                return _V(_c(_as_float(inner)).cast("float"), "f4")
            raise NotImplementedError(f"astype({dtype!r}) is not available on Spark data")
        if isinstance(expr, Part):
            return _V(self._split_side(expr), "b")
        raise TypeError(f"not an expression: {expr!r}")

    def _split_side(self, part: Part):
        """True on the rows of ``part``'s side: one uniform draw per person (per row without a unit)
        from a secret 64-bit seed drawn once per token, so every query sees the same split."""
        F = _functions()
        key = (part.token, part.unit)
        if key not in self._split_seeds:
            self._split_seeds[key] = secrets.randbits(63)
        who = F.col(_ROW) if part.unit is None else F.col(_q(part.unit))
        draw = F.shiftrightunsigned(F.xxhash64(F.lit(self._split_seeds[key]), who), 11).cast("double") / _TWO53
        test = draw < F.lit(float(part.fraction))
        return test if part.side else ~test

    def _numeric(self, expr: Expr, cache: dict):
        return _c(_as_float(self._eval(expr, cache)))

    def _notna(self, expr: Expr, cache: dict):
        F = _functions()
        value = self._eval(expr, cache)
        if value.lit:
            return F.lit(not bool(pd.isna(value.col)))
        return value.col.isNotNull()

    def _where(self, predicates, cache):
        F = _functions()
        rows = None
        for predicate in predicates:
            value = self._eval(predicate, cache)
            if value.lit:
                mask = F.lit(bool(value.col))
            elif value.kind == "b":
                mask = F.coalesce(value.col, F.lit(False))
            elif value.kind in ("f", "f4", "i"):
                mask = F.coalesce(value.col != 0, F.lit(False))
            elif value.kind == "t":
                mask = F.coalesce(F.length(value.col) > 0, F.lit(False))
            else:
                mask = value.col.isNotNull()
            rows = mask if rows is None else rows & mask
        return rows

    # ---------------------------------------------------------------------------------- grouping
    def _groups(self, keys, cache) -> dict:
        """Spark columns to group by, which rows are in a group, and how found groups map to the
        local engine's group numbers (and keys)."""
        F = _functions()
        if not keys:
            return {"columns": [], "valid": None, "count": lambda: 1, "index": lambda t: 0, "selects": False,
                    "keys": lambda: None}
        columns, valid = [], None
        for key in keys:
            value = self._eval(key.expr, cache)
            if key.declared:
                col = _category_codes(value, key.categories)
                ok = col >= 0
            else:
                col = F.lit(value.col) if value.lit else value.col
                ok = col.isNotNull()
            columns.append(col)
            valid = ok if valid is None else valid & ok
        sizes = [len(k.categories) if k.declared else None for k in keys]
        if all(s is not None for s in sizes):
            strides = []
            stride = 1
            for size in reversed(sizes):
                strides.append(stride)
                stride *= size
            strides.reverse()

            def index(codes):
                return sum(int(c) * s for c, s in zip(codes, strides))
            return {"columns": columns, "valid": valid, "count": lambda: stride, "index": index,
                    "selects": False, "keys": lambda: None}
        found = self._found_keys(keys, columns, cache)
        return {"columns": columns, "valid": valid, "count": lambda: len(found["keys"]),
                "index": lambda t: found["index"].get(t), "selects": True, "keys": lambda: list(found["keys"])}

    def _found_keys(self, keys, columns, cache) -> dict:
        """The combinations of key values present in the data, numbered as the local engine does:
        values of an undeclared key in order of first appearance, declared keys by category."""
        F = _functions()
        token = tuple(k.token for k in keys)
        cacheable = all(isinstance(k.expr, Col) for k in keys)
        if cacheable and token in self._keys_cache:
            return self._keys_cache[token]
        names = [f"g{i}" for i in range(len(keys))]
        combos = (self._df.select(*[c.alias(n) for c, n in zip(columns, names)], F.col(_ROW))
                  .groupBy(*names).agg(F.min(_ROW).alias("first")).collect())
        kinds = [self._eval(k.expr, cache).kind for k in keys]
        first: list[dict] = [{} for _ in keys]
        for row in combos:
            for i, key in enumerate(keys):
                v = row[names[i]]
                if not key.declared and v is not None:
                    if v not in first[i] or row["first"] < first[i][v]:
                        first[i][v] = row["first"]
        rank = [{v: r for r, v in enumerate(sorted(f, key=f.__getitem__))} for f in first]
        present = []
        for row in combos:
            raw = tuple(row[n] for n in names)
            ok = all((v is not None and v >= 0) if k.declared else v is not None for v, k in zip(raw, keys))
            if ok:
                order = tuple(v if k.declared else rank[i][v] for i, (v, k) in enumerate(zip(raw, keys)))
                present.append((order, raw))
        present.sort()
        found_keys, index = [], {}
        for at, (_, raw) in enumerate(present):
            index[raw] = at
            found_keys.append(tuple(k.categories[v] if k.declared else _python_value(v, kind)
                                    for v, k, kind in zip(raw, keys, kinds)))
        result = {"keys": found_keys, "index": index}
        if cacheable:
            self._keys_cache[token] = result
        return result


# ------------------------------------------------------------------------------------- helpers
def _q(name: str) -> str:
    """A column name as Spark's col() reads it (dots and backticks quoted)."""
    return "`" + name.replace("`", "``") + "`"


def _is_double(t) -> bool:
    from pyspark.sql import types as T

    return isinstance(t, T.DoubleType)


def _c(value):
    """A Spark column for a value that may be a Python literal."""
    F = _functions()
    from pyspark.sql import Column

    return value if isinstance(value, Column) else F.lit(value)


def _python_value(value, kind: str):
    """A collected key value as the local engine's pandas.factorize gives it."""
    if kind in ("f", "f4"):
        return float(value)
    if kind == "i":
        return int(value)
    if kind == "b":
        return bool(value)
    if kind == "M":
        return pd.Timestamp(value)
    return value


def _as_float(value: _V):
    """Float64 values (a Spark double column, or a Python float for a literal)."""
    if value.lit:
        v = value.col
        if isinstance(v, (bool, int, float)) or type(v).__module__ == "numpy":
            return float(v)
        return v
    if value.kind in ("f", "f4", "i", "b"):
        return value.col.cast("double")
    raise TypeError(f"{value.kind} values are not numbers")


def _as_bool(value: _V):
    F = _functions()
    if value.lit:
        return value.col
    if value.kind == "b":
        return F.coalesce(value.col, F.lit(False))
    if value.kind in ("f", "f4", "i"):
        return F.coalesce(value.col != 0, F.lit(False))
    if value.kind == "t":
        return F.coalesce(F.length(value.col) > 0, F.lit(False))
    return value.col.isNotNull()


def _let(fn, *cols):
    """``fn`` of the values of ``cols``, each computed once however often ``fn`` refers to it.

    Spark expressions are trees: a nested expression used twice is evaluated (and planned) twice, so
    nested arithmetic would grow exponentially. A lambda over a one-element array binds the values.
    """
    F = _functions()
    packed = F.array(F.struct(*[_c(c).alias(f"v{i}") for i, c in enumerate(cols)]))
    return F.transform(packed, lambda s: fn(*[s[f"v{i}"] for i in range(len(cols))])).getItem(0)


def _no_nan(col):
    F = _functions()
    return F.nanvl(col, F.lit(None).cast("double"))


def _finite_or_missing(col):
    F = _functions()
    return _let(lambda v: F.when(F.isnan(v) | (F.abs(v) == F.lit(math.inf)), F.lit(None).cast("double"))
                .otherwise(v), col)


def _floor(x):
    """floor() of doubles as doubles (Spark's floor() returns a long, which overflows)."""
    F = _functions()
    return _let(lambda x, r: F.when(r < 0, x - r - F.lit(1.0)).otherwise(x - r), x, x % F.lit(1.0))


def _trunc(x):
    """numpy.trunc: infinities stay, missing stays missing."""
    F = _functions()
    return _let(lambda x: F.when(F.abs(x) == F.lit(math.inf), x).otherwise(x - x % F.lit(1.0)), x)


def _arithmetic(op: str, a, b):
    """numpy's float64 arithmetic; results of / // % ** that are not finite become missing."""
    if op == "+":
        return _no_nan(_c(a) + _c(b))
    if op == "-":
        return _no_nan(_c(a) - _c(b))
    if op == "*":
        return _no_nan(_c(a) * _c(b))
    return _let(lambda a, b: _divisions(op, a, b), a, b)


def _divisions(op: str, a, b):
    """/ // % ** on bound values (each may be referred to many times)."""
    F = _functions()
    null = F.lit(None).cast("double")
    if op == "**":
        # C pow: x ** 0 == 1 and 1 ** y == 1 even for NaN; (-1) ** +-inf == 1.
        one = F.lit(1.0)
        result = (F.when(b == 0, one).when(a == 1, one)
                  .when((a == -1) & (F.abs(b) == F.lit(math.inf)), one)
                  .otherwise(F.pow(a, b)))
        return _finite_or_missing(result)
    safe_b = F.when(b == 0, F.lit(1.0)).otherwise(b)
    if op == "/":
        return F.when(b == 0, null).otherwise(_finite_or_missing(a / safe_b))

    def divmod_(mod):
        adjust = (mod != 0) & ((safe_b < 0) != (mod < 0))
        if op == "%":
            return _finite_or_missing(F.when(adjust, mod + safe_b).otherwise(mod))
        # npy_divmod: div = (a - fmod(a, b)) / b, corrected to the floor and rounded to the nearest.

        def rounded(div):
            return _let(lambda div, floor: F.when(div == 0, F.lit(0.0))
                        .otherwise(F.when(div - floor > F.lit(0.5), floor + F.lit(1.0)).otherwise(floor)),
                        div, _floor(div))
        div = (a - mod) / safe_b
        return _finite_or_missing(rounded(F.when(adjust, div - F.lit(1.0)).otherwise(div)))
    if op not in ("%", "//"):
        raise TypeError(f"unknown operator {op!r}")
    return F.when(b == 0, null).otherwise(_let(divmod_, a % safe_b))


def _arithmetic_scalars(op: str, a, b):
    with np.errstate(all="ignore"):
        x, y = np.float64(a), np.float64(b)
        result = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide, "//": np.floor_divide,
                  "%": np.remainder, "**": np.power}[op](x, y)
    return float(result)


def _compare(op: str, left: _V, right: _V):
    """pandas comparisons: a missing value is equal to nothing and unequal to everything."""
    F = _functions()
    if left.lit and right.lit:
        a, b = left.col, right.col
        try:
            return F.lit(bool({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]))
        except TypeError:
            return F.lit(op == "!=")
    pair = _comparable(left, right)
    if pair is None:
        return F.lit(op == "!=")
    a, b = pair
    if op == "!=":
        return ~F.coalesce(a == b, F.lit(False))
    test = {"==": a == b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return F.coalesce(test, F.lit(False))


def _comparable(left: _V, right: _V):
    """Spark columns that compare as pandas compares the two sides, or None if nothing is equal."""
    F = _functions()
    kinds = {left.kind, right.kind}
    if "none" in kinds:
        return None
    if kinds <= set(_NUMERIC):
        sides = []
        for side, other in ((left, right), (right, left)):
            if side.lit:
                v = int(side.col) if isinstance(side.col, bool) else side.col
                # numpy compares a float32 array with a Python number in float32.
                sides.append(F.lit(v).cast("float") if other.kind == "f4" else F.lit(v))
            elif side.kind == "b":
                sides.append(side.col.cast("int"))
            else:
                sides.append(side.col)
        return sides[0], sides[1]
    if kinds == {"t"}:
        return _c(left.col), _c(right.col)
    if "M" in kinds and kinds <= {"M", "t"}:
        sides = []
        for side in (left, right):
            if side.kind == "M":
                sides.append(_timestamp(side.col) if side.lit else side.col)
            elif side.lit:
                try:
                    stamp = pd.Timestamp(side.col)
                except (ValueError, TypeError):
                    return None
                if pd.isna(stamp):
                    return None
                sides.append(_timestamp(stamp))
            else:
                return None
        return sides[0], sides[1]
    return None


def _timestamp(value):
    F = _functions()
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return F.to_timestamp(F.lit(stamp.isoformat(sep=" ")))


def _isin_one(inner: _V, value):
    """One value of isin(), as pandas matches it for the column's dtype."""
    F = _functions()
    if inner.lit:
        return F.lit(bool(pd.Series([inner.col]).isin([value]).iloc[0]))
    kind = _literal_kind(value)
    if value is None:
        return inner.col.isNull() if inner.kind == "t" else F.lit(False)
    if inner.kind in _NUMERIC and kind in ("b", "i", "f"):
        col = inner.col.cast("double")
        return F.coalesce(col == F.lit(float(value)), F.lit(False))
    if inner.kind == "t" and kind == "t":
        return F.coalesce(inner.col == F.lit(value), F.lit(False))
    if inner.kind == "M" and kind == "M":
        return F.coalesce(inner.col == _timestamp(value), F.lit(False))
    return F.lit(False)


def _clip(inner: _V, low, high) -> _V:
    F = _functions()
    if inner.lit:
        v = inner.col
        if v is not None and not pd.isna(v):
            v = v if low is None else max(v, low)
            v = v if high is None else min(v, high)
        return _V(v, _literal_kind(v), lit=True)
    integral = inner.kind == "i" and all(b is None or (isinstance(b, int) and not isinstance(b, bool))
                                         for b in (low, high))
    if integral:
        col, kind = inner.col, "i"
        cast = F.lit
    elif inner.kind == "f4":
        col, kind = inner.col, "f4"

        def cast(b):
            return F.lit(float(b)).cast("float")
    else:
        col, kind = _c(_as_float(inner)), "f"

        def cast(b):
            return F.lit(float(b))
    def clip(col):
        result = col
        if low is not None:
            result = F.when(result < cast(low), cast(low)).otherwise(result)
        if high is not None:
            result = F.when(result > cast(high), cast(high)).otherwise(result)
        return F.when(col.isNull(), F.lit(None)).otherwise(result)
    return _V(_bind(_V(col, kind, source=inner.source and col is inner.col), clip), kind)


def _category_codes(value: _V, categories: tuple):
    """Index of each value among ``categories`` (-1: missing or not a category), as pandas'
    ``Index(categories).get_indexer`` matches them."""
    F = _functions()
    if value.lit:
        codes = pd.Index(list(categories)).get_indexer(pd.Index([value.col]))
        return F.lit(int(codes[0]))

    def codes(col):
        code = None
        for at, category in enumerate(categories):
            kind = _literal_kind(category)
            if value.kind in ("f", "f4", "i") and kind in ("i", "f"):
                test = col.cast("double") == F.lit(float(category))
            elif value.kind == "b" and kind == "b":
                test = col == F.lit(category)
            elif value.kind == "t" and kind == "t":
                test = col == F.lit(category)
            elif value.kind == "M" and kind == "M":
                test = col == _timestamp(category)
            else:
                continue
            test = F.coalesce(test, F.lit(False))
            code = F.when(test, F.lit(at)) if code is None else code.when(test, F.lit(at))
        return F.lit(-1) if code is None else code.otherwise(F.lit(-1))
    return _bind(value, codes)


def _fixed_terms(x, prim: FixedSum):
    """Each value's fixed-point term as a Spark long, with the local engine's float steps."""
    F = _functions()
    inverse = 1.0 / prim.grid
    plain = _plain_terms(prim, inverse)

    def clamp(col, low, high):
        return F.when(col < F.lit(low), F.lit(low)).when(col > F.lit(high), F.lit(high)).otherwise(col)
    if plain is not None:
        offset, low, high = plain
        block = clamp(x * F.lit(inverse), float(low + offset), float(high + offset))
        return F.rint(block).cast("long") - F.lit(offset)
    block = clamp(x, float(prim.low), float(prim.high))
    if prim.square:
        block = block - F.lit(float(prim.centre))
        block = block * block
    block = (block - F.lit(float(prim.shift))) * F.lit(inverse)
    block = clamp(block, float(-prim.limit), float(prim.limit))
    return F.rint(block).cast("long")


def _search(x, points, right: bool):
    """``numpy.searchsorted(points, x, side)`` per row: a binary search over a literal array."""
    F = _functions()
    n = len(points)
    # One SQL literal (building it from a thousand lit() columns would take seconds to plan).
    array = F.expr("array(" + ", ".join(f"{float(p)!r}D" for p in points) + ")")
    step = 1
    while step * 2 <= n:
        step *= 2
    steps = []
    while step >= 1:
        steps.append(step)
        step //= 2

    def merge(pos, s):
        nxt = pos + s
        probe = F.get(array, nxt - 1)
        test = (probe <= x) if right else (probe < x)
        return F.when((nxt <= n) & F.coalesce(test, F.lit(False)), nxt).otherwise(pos)
    return F.aggregate(F.array(*[F.lit(s) for s in steps]), F.lit(0), merge)


def _quantile_scores(values, prim: QuantileScores) -> list[int]:
    """Integer scores of every candidate: ``-|(den - num) * below - num * above|``."""
    F = _functions()
    x = F.col("x")
    low, high = float(prim.low), float(prim.high)
    clipped = F.when(x < F.lit(low), F.lit(low)).when(x > F.lit(high), F.lit(high)).otherwise(x)
    n_cand = len(prim.candidates)
    points = [float(c) for c in prim.candidates]
    if all(a < b for a, b in zip(points, points[1:])):
        # Distinct candidates: at most one equals x, so one search gives both counts.
        array = F.expr("array(" + ", ".join(f"{p!r}D" for p in points) + ")")

        def both(left):
            equal = F.coalesce(F.get(array, left) == x, F.lit(False))
            return F.struct((left + F.when(equal, F.lit(1)).otherwise(F.lit(0))).alias("r"), left.alias("l"))
        found = (values.select(clipped.alias("x")).select(_let(both, _search(x, points, False)).alias("p"))
                 .select("p.r", "p.l").groupBy("r", "l").count().collect())
    else:
        found = (values.select(clipped.alias("x"))
                 .select(_search(x, points, True).alias("r"), _search(x, points, False).alias("l"))
                 .groupBy("r", "l").count().collect())
    right = np.zeros(n_cand + 1, dtype=np.int64)
    left = np.zeros(n_cand + 1, dtype=np.int64)
    total = 0
    for row in found:
        right[row["r"]] += row["count"]
        left[row["l"]] += row["count"]
        total += row["count"]
    below = np.cumsum(right)[:n_cand]
    above = total - np.cumsum(left)[:n_cand]
    scores = -np.abs((prim.den - prim.num) * below.astype(np.int64) - prim.num * above.astype(np.int64))
    return [int(s) for s in scores]


def _bin_counts(values, prim: BinCounts) -> list[int]:
    """Rows per bin; values outside the edges fall in the outer bins."""
    F = _functions()
    n_bins = len(prim.edges) - 1
    at = _search(F.col("x"), prim.edges, True) - 1
    at = F.when(at < 0, F.lit(0)).when(at > n_bins - 1, F.lit(n_bins - 1)).otherwise(at)
    counts = [0] * n_bins
    for row in values.select(at.alias("bin")).groupBy("bin").count().collect():
        counts[row["bin"]] += int(row["count"])
    return counts
