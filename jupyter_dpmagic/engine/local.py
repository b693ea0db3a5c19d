"""The local engine: runs plans on an in-memory pandas DataFrame with vectorised numpy.

It filters rows, clamps, bounds each person's contribution and aggregates exactly; it never sees an
epsilon and never adds noise. Its outputs are integers whose sensitivity the primitives state.
"""

from __future__ import annotations

import hashlib
import operator
import secrets
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..plan import ARITHMETIC
from ..plan import (AsType, BinCounts, Between, BinOp, Clip, Col, Expr, FillNA, FixedSum, IsIn, IsNA, Lit,
                    Part, Query, QuantileScores, RowCount, UnOp)

__all__ = ["LocalEngine", "Exact", "fingerprint"]

# Rows per block of fixed-point work: small enough to stay in cache, and a float64 sum of a block's
# integer terms (each at most 2**23 in size) stays below 2**53, so it never rounds.
_BLOCK = 2**18

_BINARY = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow,
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "&": operator.and_, "|": operator.or_, "^": operator.xor,
}


def fingerprint(frame: pd.DataFrame, *, block: int = 2**20) -> str:
    """A content hash of the protected data (column names, dtypes and every value, not the index).

    Hashed in blocks of rows so that protecting a large table needs little extra memory; the digest
    does not depend on the block size.
    """
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}\x1f{dtype}\x1e".encode())
    for start in range(0, len(frame), block):
        rows = frame.iloc[start:start + block]
        digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()


class Exact(list):
    """Exact values per primitive (a list, one entry per group) and, for groups the data chose, their keys.

    ``keys`` is None when every group key had declared categories (groups are then their product, in
    order); otherwise it lists the key tuple of each group found in the data. Those keys are private
    until partition selection has chosen which of them may be released.
    """

    def __init__(self, values, keys=None):
        super().__init__(values)
        self.keys = keys


class LocalEngine:
    """Executes :class:`~jupyter_dpmagic.plan.Query` objects against one protected DataFrame."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame
        self._n = len(frame)
        # Facts about source columns (group codes, missing-value masks): the protected data never
        # changes after protect(), so they are computed once.
        self._source_cache: dict = {}
        self._unit_codes: dict[str, np.ndarray] = {}
        # (split token, unit) -> one uniform draw per row, equal for all rows of a person.
        self._splits: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------- facts for whoever holds the data
    # What protect() checks before any analyst sees the dataset (the Spark engine answers the same).
    def dtypes(self) -> dict:
        """Column name -> pandas dtype."""
        return dict(self._frame.dtypes.items())

    def empty_columns(self) -> list[str]:
        """Columns without a single value (none when there are no rows)."""
        if not self._n:
            return []
        return [c for c in self._frame.columns if self._frame[c].isna().all()]

    def constant_numeric(self, columns) -> list[str]:
        """Those of ``columns`` whose smallest and largest values are equal (none when there are no rows)."""
        if not self._n:
            return []
        return [c for c in columns if self._frame[c].min() == self._frame[c].max()]

    def unit_missing(self, unit: str) -> str:
        """``"all"`` (at least one row, none with a value), ``"some"`` or ``"none"``."""
        missing = self._frame[unit].isna()
        if self._n and missing.all():
            return "all"
        return "some" if missing.any() else "none"

    def fingerprint(self) -> str:
        return fingerprint(self._frame)

    # ------------------------------------------------------------------------------------ public
    def run(self, query: Query, primitives: Sequence) -> Exact:
        """Exact values of ``primitives``: per primitive, a list with one entry per group.

        Without ``query.by`` there is one group. Entries are Python integers, except for quantile
        scores and bin counts, whose single entry is the list of integers of every candidate or bin.
        """
        cache: dict = {}
        rows = self._where(query.where, cache)
        codes, n_groups, complete, keys = self._group_codes(query.by, cache)
        if codes is not None and not complete:
            rows = _and(rows, codes >= 0)
        keep_by_expr: dict = {}
        bounded: dict = {}  # id of a row mask -> (that mask, its rows bounded per person)
        out = []
        for prim in primitives:
            key = prim.expr
            if key not in keep_by_expr:
                keep = rows
                if key is not None:
                    keep = _and(keep, self._notna(key, cache))
                if query.unit is not None:
                    # Expressions without missing values share one mask, hence one draw of rows.
                    if id(keep) not in bounded:
                        groups = codes if query.max_groups is not None else None
                        bounded[id(keep)] = (keep, self._bound(keep, query.unit, query.max_rows, groups,
                                                               query.max_groups))
                    keep = bounded[id(keep)][1]
                keep_by_expr[key] = keep
            out.append(self._primitive(prim, keep_by_expr[key], codes, n_groups, cache))
        return Exact(out, keys)

    def rows(self, query: Query, columns: list[str]) -> pd.DataFrame:
        """The rows of ``columns`` a model may train on: filtered by ``query.where``, without missing
        values, at most ``query.max_rows`` rows per person. Never leaves the session's fit path."""
        cache: dict = {}
        keep = self._where(query.where, cache)
        for name in columns:
            keep = _and(keep, self._notna(Col(name), cache))
        if query.unit is not None:
            keep = self._bound(keep, query.unit, query.max_rows)
        frame = self._frame[columns]
        return frame if keep is None else frame[keep]

    # -------------------------------------------------------------------------------- evaluation
    def evaluate(self, expr: Expr, cache: dict | None = None):
        """Row-wise value of ``expr`` as a pandas Series (or a scalar for a literal)."""
        cache = {} if cache is None else cache
        if expr in cache:
            return cache[expr]
        value = self._eval(expr, cache)
        cache[expr] = value
        return value

    def _eval(self, expr: Expr, cache: dict):
        ev = lambda e: self.evaluate(e, cache)  # noqa: E731
        if isinstance(expr, Col):
            return self._frame[expr.name]
        if isinstance(expr, Lit):
            return expr.value
        if isinstance(expr, BinOp):
            left, right = ev(expr.left), ev(expr.right)
            if expr.op in ("&", "|", "^"):
                left, right = _as_bool(left), _as_bool(right)
            elif expr.op in ARITHMETIC:
                # In floats every arithmetic is total (no integer power or overflow errors), and the
                # result does not depend on whether a missing value made pandas pick another dtype.
                left, right = _as_float(left), _as_float(right)
            elif expr.op in ("<", "<=", ">", ">="):
                left, right = _as_text_if_text(left), _as_text_if_text(right)
            with np.errstate(all="ignore"):
                result = _BINARY[expr.op](left, right)
            if expr.op in ("/", "//", "%", "**") and isinstance(result, pd.Series):
                result = result.replace([np.inf, -np.inf], np.nan)  # x / 0 has no value, not an infinite one
            return result
        if isinstance(expr, UnOp):
            inner = ev(expr.operand)
            if expr.op == "not":
                return ~_as_bool(inner)
            return -inner if expr.op == "neg" else abs(inner)
        if isinstance(expr, IsIn):
            return ev(expr.operand).isin(list(expr.values))
        if isinstance(expr, Between):
            return _as_text_if_text(ev(expr.operand)).between(expr.low, expr.high, inclusive=expr.inclusive)
        if isinstance(expr, IsNA):
            return ev(expr.operand).isna()
        if isinstance(expr, Clip):
            return ev(expr.operand).clip(expr.low, expr.high)
        if isinstance(expr, FillNA):
            inner = ev(expr.operand)
            if isinstance(inner, pd.Series):
                numeric = inner.dtype.kind in "biuf" or inner.dtype == "boolean"
                if numeric:  # the fill value's kind was checked against the column's before any data
                    inner = _as_float(inner)
                elif isinstance(inner.dtype, pd.CategoricalDtype):
                    inner = inner.astype(object)  # a fill value outside the categories must not fail
            return inner.fillna(expr.value)
        if isinstance(expr, AsType):
            inner = ev(expr.operand)
            if expr.dtype.startswith(("int", "uint")):
                # Truncate like astype(int) but keep missing values missing instead of failing.
                return np.trunc(inner.astype("float64"))
            return inner.astype(expr.dtype)
        if isinstance(expr, Part):
            test = self._split_draws(expr.token, expr.unit) < expr.fraction
            return pd.Series(test if expr.side else ~test, index=self._frame.index)
        raise TypeError(f"not an expression: {expr!r}")

    def _split_draws(self, token: int, unit: str | None) -> np.ndarray:
        """The uniform draw of every row for split ``token``, made once from fresh randomness.

        With a privacy unit there is one draw per person, shared by all of that person's rows, so a
        person is wholly on one side. Each person's draw is independent of everybody's data.
        """
        key = (token, unit)
        if key not in self._splits:
            rng = np.random.default_rng(secrets.randbits(128))
            if unit is None:
                draws = rng.random(self._n)
            else:
                codes = self._codes_of(unit)
                per_person = rng.random(int(codes.max(initial=-1)) + 1)
                draws = np.where(codes >= 0, per_person[np.maximum(codes, 0)], rng.random(self._n))
            draws.setflags(write=False)
            self._splits[key] = draws
        return self._splits[key]

    def _codes_of(self, unit: str) -> np.ndarray:
        """Person number of every row (-1: no person), computed once per unit column."""
        if unit not in self._unit_codes:
            self._unit_codes[unit] = pd.factorize(self._frame[unit], use_na_sentinel=True)[0]
        return self._unit_codes[unit]

    def _numeric(self, expr: Expr, cache: dict) -> np.ndarray:
        value = self.evaluate(expr, cache)
        if not isinstance(value, pd.Series):
            return np.full(self._n, float(value))
        if value.dtype == np.float64:
            return value.to_numpy()  # a view: asking for na_value would copy the whole column
        return value.to_numpy(dtype="float64", na_value=np.nan)

    def _notna(self, expr: Expr, cache: dict) -> np.ndarray | None:
        """Rows where ``expr`` has a value (None: all rows). Cached for source columns, which never change."""
        if isinstance(expr, Col) and ("present", expr) in self._source_cache:
            return self._source_cache[("present", expr)]
        value = self.evaluate(expr, cache)
        if not isinstance(value, pd.Series):
            return None if pd.notna(value) else np.zeros(self._n, dtype=bool)
        if value.dtype.kind == "f":
            present = ~np.isnan(value.to_numpy())
        else:
            present = value.notna().to_numpy()
        present = None if present.all() else present
        if isinstance(expr, Col):
            self._source_cache[("present", expr)] = present
        return present

    def _where(self, predicates, cache) -> np.ndarray | None:
        rows = None
        for predicate in predicates:
            value = self.evaluate(predicate, cache)
            if isinstance(value, pd.Series):
                mask = value.fillna(False).to_numpy(dtype=bool)
            else:
                mask = np.full(self._n, bool(value))
            rows = _and(rows, mask)
        return rows

    # ---------------------------------------------------------------------------------- grouping
    def _group_codes(self, keys, cache):
        """Group number of every row (-1: in no group), the number of groups, whether every row is
        in a group, and the key tuples of the groups (None when all keys are declared)."""
        if not keys:
            return None, 1, True, None
        token = ("groups",) + tuple(key.token for key in keys)
        if token in self._source_cache:
            return self._source_cache[token]
        parts = [self._key_codes(key, cache) for key in keys]
        codes, stride = None, 1
        for key_codes, values in reversed(parts):
            if codes is None:
                codes = key_codes.astype(np.int64)
            else:
                wide = codes + key_codes.astype(np.int64) * stride
                codes = np.where((codes < 0) | (key_codes < 0), -1, wide)
            stride *= len(values)
        found = None
        if any(not key.declared for key in keys):
            # Number only the combinations present in the data; their keys stay private until the
            # session's partition selection decides which may be released.
            present = codes >= 0
            compact, combos = pd.factorize(codes[present], sort=True)
            codes = np.full(len(codes), -1, dtype=np.int64)
            codes[present] = compact
            stride = len(combos)
            found = []
            for combo in combos.tolist():
                key_values = []
                for _, values in reversed(parts):
                    combo, at = divmod(combo, len(values))
                    key_values.append(values[at])
                found.append(tuple(reversed(key_values)))
        codes = codes.astype(_code_dtype(stride), copy=False)
        result = (codes, stride, bool(codes.min(initial=0) >= 0), found)
        if all(isinstance(k.expr, Col) for k in keys):
            self._source_cache[token] = result
        return result

    def _key_codes(self, key, cache) -> tuple[np.ndarray, list]:
        """Codes of one key's values (-1: missing or not a declared category) and the values coded."""
        # Source columns never change after protect(), so their codes are cached across queries.
        cacheable = isinstance(key.expr, Col)
        token = key.token
        if cacheable and token in self._source_cache:
            return self._source_cache[token]
        values = self.evaluate(key.expr, cache)
        if key.declared:
            categories = list(key.categories)
            codes = pd.Index(categories).get_indexer(pd.Index(values))
        else:
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            categories = list(uniques)
        result = (codes.astype(_code_dtype(len(categories))), categories)
        if cacheable:
            self._source_cache[token] = result
        return result

    # ------------------------------------------------------------------------ contribution bounds
    def _bound(self, keep: np.ndarray | None, unit: str, max_rows: int, groups: np.ndarray | None = None,
               max_groups: int | None = None) -> np.ndarray:
        """Keep at most ``max_rows`` rows per person (and, with ``groups``, rows of at most
        ``max_groups`` of that person's groups), chosen uniformly at random within that person.

        The choice for one person depends only on that person's own rows and fresh randomness, never
        on other people's data, so the bound on each person's influence holds.
        """
        unit_codes = self._codes_of(unit)
        index = np.arange(self._n) if keep is None else np.flatnonzero(keep)
        rng = np.random.default_rng(secrets.randbits(128))
        if groups is not None and max_groups is not None:
            index = index[_ranked_within(unit_codes[index], groups[index], rng) < max_groups]
        people = unit_codes[index]
        bounded = np.zeros(self._n, dtype=bool)
        # People with at most max_rows rows keep them all; only the others' rows need a random draw.
        heavy = np.bincount(people, minlength=int(unit_codes.max(initial=-1)) + 1)[people] > max_rows
        bounded[index[~heavy]] = True
        index, people = index[heavy], people[heavy]
        # One float sort instead of a two-key sort: the person's code plus a uniform draw in [0, 1)
        # orders rows by person, and within a person at random (codes < 2**31 leave 2**-21 steps).
        order = np.argsort(people + rng.random(len(index)))
        rank = _rank_in_runs(people[order])
        bounded[index[order[rank < max_rows]]] = True
        return bounded

    # -------------------------------------------------------------------------------- primitives
    def _primitive(self, prim, keep, codes, n_groups, cache) -> list:
        group = None if codes is None else (codes if keep is None else codes[keep])
        if isinstance(prim, RowCount):
            if group is None:
                return [self._n if keep is None else int(np.count_nonzero(keep))]
            return [int(c) for c in np.bincount(group, minlength=n_groups)]
        values = self._numeric(prim.expr, cache)
        if keep is not None:
            values = values[keep]
        if isinstance(prim, FixedSum):
            return _fixed_sums(values, prim, group, n_groups)
        if isinstance(prim, QuantileScores):
            if group is not None:
                raise TypeError("quantile scores are computed without groups")
            return [_quantile_scores(values, prim)]
        if isinstance(prim, BinCounts):
            if group is not None:
                raise TypeError("histograms are computed without groups")
            return [_bin_counts(values, prim)]
        raise TypeError(f"unknown primitive {prim!r}")


def _rank_in_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2... within each run of equal values of an already sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


def _ranked_within(people: np.ndarray, groups: np.ndarray, rng) -> np.ndarray:
    """For each row, the random rank of its group among the groups of its person (0 = kept first)."""
    stride = int(groups.max(initial=0)) + 1
    pairs = people.astype(np.int64) * stride + groups.astype(np.int64)
    pair_ids, unique_pairs = pd.factorize(pairs)
    # One random priority per (person, group): every group of a person is equally likely to be kept.
    priority = rng.random(len(unique_pairs))
    pair_people = unique_pairs // stride
    order = np.lexsort((priority, pair_people))
    pair_rank = np.empty(len(unique_pairs), dtype=np.int64)
    pair_rank[order] = _rank_in_runs(pair_people[order])
    return pair_rank[pair_ids]


def _code_dtype(n_groups: int):
    """The smallest signed integer type for group numbers 0..n-1 and -1 (no group)."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_groups < np.iinfo(dtype).max:
            return dtype
    return np.int64


def _and(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Row masks where None means every row."""
    if a is None:
        return b
    return a if b is None else a & b


def _as_float(value):
    if isinstance(value, pd.Series):
        return pd.Series(value.to_numpy(dtype="float64", na_value=np.nan), index=value.index)
    if isinstance(value, (bool, int, float)) or type(value).__module__ == "numpy":
        return float(value)
    return value


def _as_text_if_text(value):
    """Text columns compare as pandas strings, so mixed Python objects cannot make a comparison fail."""
    if isinstance(value, pd.Series) and (value.dtype == object or isinstance(value.dtype, pd.CategoricalDtype)):
        return value.astype("string")
    return value


def _as_bool(value):
    if isinstance(value, pd.Series) and value.dtype != bool:
        return value.fillna(False).astype(bool)
    return value


def _fixed_sums(values: np.ndarray, prim: FixedSum, group: np.ndarray | None, n_groups: int) -> list[int]:
    """Exact per-group sums of the fixed-point terms of ``values`` (missing values already removed).

    A term is ``rint(x / grid) - offset`` clamped to integer limits within ``[-limit, limit]`` (for
    variances, the centred square is taken first). Blocks that fit in the CPU cache go through one
    reused buffer, so no full-size temporary is allocated; a block's float sum of integers stays below
    2**53 and is exact, and blocks are added as Python integers.
    """
    totals = [0] * n_groups
    buf = np.empty(min(_BLOCK, len(values)), dtype=np.float64)
    inverse = 1.0 / prim.grid
    plain = _plain_terms(prim, inverse)
    for start in range(0, len(values), _BLOCK):
        block = buf[:min(_BLOCK, len(values) - start)]
        rows = values[start:start + len(block)]
        if plain is not None:
            # One multiply, one clamp, one rounding: the offset is an integer, so it is taken off
            # the sums afterwards instead of off every row.
            offset, low, high = plain
            with np.errstate(over="ignore"):  # a huge value becomes +-inf, then the clamp's bound
                np.multiply(rows, inverse, out=block)
            np.clip(block, low + offset, high + offset, out=block)
        else:
            np.clip(rows, prim.low, prim.high, out=block)
            if prim.square:
                block -= prim.centre
                np.square(block, out=block)
            block -= prim.shift
            block *= inverse
            np.clip(block, -prim.limit, prim.limit, out=block)
            offset = 0
        np.rint(block, out=block)
        if group is None:
            totals[0] += int(np.sum(block)) - offset * len(block)
        else:
            rows_group = group[start:start + len(block)]
            part = np.bincount(rows_group, weights=block, minlength=n_groups)
            counts = np.bincount(rows_group, minlength=n_groups) if offset else [0] * n_groups
            totals = [t + int(p) - offset * int(c) for t, p, c in zip(totals, part, counts)]
    return totals


def _plain_terms(prim: FixedSum, inverse: float):
    """``(offset, low, high)`` integers for the fast form of non-squared terms, or None.

    Terms are ``clip(rint(x * inverse), low + offset, high + offset) - offset`` with
    ``-limit <= low <= high <= limit``, so each term's size is bounded by ``limit`` exactly. None when
    the values on the grid would be too large for a block's float sum to stay exact.
    """
    if prim.square:
        return None
    offset = round(prim.shift * inverse)
    low = max(-prim.limit, round(prim.low * inverse) - offset)
    high = min(prim.limit, round(prim.high * inverse) - offset)
    if low > high or (max(abs(low + offset), abs(high + offset)) + 1) * _BLOCK >= 2**53:
        return None
    return offset, low, high


def _quantile_scores(values: np.ndarray, prim: QuantileScores) -> list[int]:
    """Integer scores of every candidate: ``-|(den - num) * below - num * above|``."""
    x = np.clip(values, prim.low, prim.high)
    candidates = np.asarray(prim.candidates)
    n_cand = len(candidates)
    # below(c_i) = #{x < c_i} = #{x : searchsorted_right(x) <= i}; above(c_i) = #{x > c_i} likewise.
    right = np.searchsorted(candidates, x, side="right")
    left = np.searchsorted(candidates, x, side="left")
    below = np.cumsum(np.bincount(right, minlength=n_cand + 1))[:n_cand]
    above = len(x) - np.cumsum(np.bincount(left, minlength=n_cand + 1))[:n_cand]
    scores = -np.abs((prim.den - prim.num) * below.astype(np.int64) - prim.num * above.astype(np.int64))
    return [int(s) for s in scores]


def _bin_counts(values: np.ndarray, prim: BinCounts) -> list[int]:
    """Rows per bin; values outside the edges fall in the outer bins (they were clamped)."""
    edges = np.asarray(prim.edges)
    at = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return [int(c) for c in np.bincount(at, minlength=len(edges) - 1)]
