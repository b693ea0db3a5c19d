"""The local engine: exact integer aggregates whose sensitivity holds in finite arithmetic."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd

from jupyter_dpmagic import plan as P
from jupyter_dpmagic.engine.local import LocalEngine, _plain_terms
from jupyter_dpmagic.measures import LIMIT, compile_measure


def _terms(values, prim):
    """Reference: each term computed alone, with the same float steps, then summed exactly."""
    plain = _plain_terms(prim, 1.0 / prim.grid)
    if plain is not None:
        offset, low, high = plain
        with np.errstate(over="ignore"):
            return [int(np.rint(min(max(np.float64(v) * (1.0 / prim.grid), low + offset), high + offset)))
                    - offset for v in values]
    out = []
    for v in values:
        x = min(max(v, prim.low), prim.high)
        if prim.square:
            x = (x - prim.centre) ** 2
        x = (x - prim.shift) * (1.0 / prim.grid)
        out.append(int(np.rint(min(max(x, -prim.limit), prim.limit))))
    return out


def _adversarial(rng, n):
    # Tiny and huge magnitudes mixed: a float accumulator would lose the tiny ones and let a crafted
    # order change the total by more than one row's bound.
    return np.concatenate([rng.uniform(-1e-300, 1e-300, n // 4), rng.choice([1e308, -1e308, 1e15, -1e15], n // 4),
                           rng.uniform(-100, 100, n // 4), np.full(n - 3 * (n // 4), 99.99999999999999)])


def test_fixed_point_sums_are_exact_and_order_free():
    rng = np.random.default_rng(5)
    values = _adversarial(rng, 200_003)  # more than one block, with a ragged last block
    frame = pd.DataFrame({"x": values, "g": rng.choice(["a", "b"], len(values))})
    engine = LocalEngine(frame)
    for measure in (P.Sum(P.Col("x"), -100.0, 100.0), P.Mean(P.Col("x"), -100.0, 100.0),
                    P.Variance(P.Col("x"), -100.0, 100.0)):
        for prim in compile_measure(measure).primitives:
            if not isinstance(prim, P.FixedSum):
                continue
            query = P.Query("d", (measure,))
            got = engine.run(query, [prim])[0][0]
            assert got == sum(_terms(values, prim))
            shuffled = LocalEngine(frame.sample(frac=1.0, random_state=1).reset_index(drop=True))
            assert shuffled.run(query, [prim])[0][0] == got
            assert all(abs(t) <= LIMIT for t in _terms(values[:1000], prim))
            assert _plain_terms(prim, 1.0 / prim.grid) is not None or prim.square  # the fast form is tested
            grouped = P.Query("d", (measure,), by=(P.GroupKey("g", P.Col("g"), ("a", "b", "c")),))
            per_group = engine.run(grouped, [prim])[0]
            assert sum(per_group) == got and per_group[2] == 0


def test_one_row_moves_a_sum_by_at_most_its_bound():
    rng = np.random.default_rng(6)
    base = _adversarial(rng, 10_000)
    prim = compile_measure(P.Sum(P.Col("x"), -100.0, 100.0)).primitives[0]
    query = P.Query("d", (P.Sum(P.Col("x"), -100.0, 100.0),))
    total = LocalEngine(pd.DataFrame({"x": base})).run(query, [prim])[0][0]
    for extra in (1e308, -1e308, np.inf, -np.inf, 5e-324, 100.0, -100.0):
        moved = LocalEngine(pd.DataFrame({"x": np.r_[base, extra]})).run(query, [prim])[0][0]
        assert abs(moved - total) <= prim.sensitivity()
    # the grid really is exact: the released sum is the integer total times the grid
    assert Fraction(prim.grid) * prim.sensitivity() == Fraction(100.0)


def test_missing_values_are_skipped_before_clamping():
    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.nan]})
    engine = LocalEngine(frame)
    measure = P.Mean(P.Col("x"), 0.0, 4.0)
    comp = compile_measure(measure)
    sums, counts = engine.run(P.Query("d", (measure,)), comp.primitives)
    assert counts == [2]
    assert sums[0] * comp.primitives[0].grid == (1 - 2) + (3 - 2)


def test_group_codes_are_cached_per_typed_categories():
    # 0 == False and 1 == 1.0 in Python, so a cache keyed by plain categories would hand one query the
    # codes (and labels) of another that declared "equal" but differently typed categories.
    frame = pd.DataFrame({"flag": [True, True, False, True], "n": [1, 1, 2, 3]})
    engine = LocalEngine(frame)
    count = P.Count()
    prim = compile_measure(count).primitives

    def counts(column, categories):
        query = P.Query("d", (count,), by=(P.GroupKey(column, P.Col(column), categories),))
        return engine.run(query, prim)[0]

    assert counts("flag", (0, 1)) == [0, 0]  # integers are not booleans: no row is in these groups
    assert counts("flag", (False, True)) == [1, 3]
    assert counts("n", (1, 2, 3)) == [2, 1, 1]
    assert counts("n", (1.0, 2.5)) == [2, 0]
    # Undeclared groups report the keys found, with the column's own values.
    undeclared = P.Query("d", (count,), by=(P.GroupKey("n", P.Col("n"), None),))
    assert engine.run(undeclared, prim)[0] == [2, 1, 1]
