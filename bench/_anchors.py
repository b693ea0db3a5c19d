"""Reference implementations that bench/run.py compares jupyter-dpmagic against.

Every builder returns ``{operation: (callable, note)}``. A callable takes no argument and makes one
release on data prepared when it was built, so the timed call holds only what each library does per
release. Builders and calls may raise: run.py records the error and carries on.

* diffprivlib: its ``tools`` functions with explicit bounds and a fresh ``BudgetAccountant`` per call.
  Grouped releases: pandas splits the rows, diffprivlib adds noise per group.
* OpenDP: measurements built once per data size (that construction is not timed) and called on numpy
  vectors. Grouped releases: pandas aggregates, then one OpenDP vector measurement adds the noise.
"""

from __future__ import annotations

import numpy as np

OPERATIONS = ("len", "count", "sum", "mean", "gsize_str", "gmean_str", "gsize_cat", "gmean_cat")


def _ward_column(op: str) -> str:
    return "ward" if op.endswith("_str") else "ward_cat"


# ---------------------------------------------------------------------------------------- diffprivlib
def diffprivlib_ops(df, *, epsilon: float, bounds: tuple[float, float]) -> dict:
    """diffprivlib releases of every benchmarked operation on ``df``."""
    from diffprivlib import mechanisms, tools
    from diffprivlib.accountant import BudgetAccountant

    low, high = bounds
    values = df["value"].to_numpy()
    los_present = df["los"].notna().to_numpy()
    n = len(df)

    def count_rows():
        return mechanisms.Geometric(epsilon=epsilon, sensitivity=1).randomise(n)

    def count_present():
        return tools.count_nonzero(los_present, epsilon=epsilon, accountant=BudgetAccountant())

    def total():
        return tools.sum(values, epsilon=epsilon, bounds=(low, high), accountant=BudgetAccountant())

    def mean():
        return tools.mean(values, epsilon=epsilon, bounds=(low, high), accountant=BudgetAccountant())

    def grouped_size(column):
        def run():
            sizes = df.groupby(column).size()
            geometric = mechanisms.Geometric(epsilon=epsilon, sensitivity=1)
            return {k: geometric.randomise(int(c)) for k, c in sizes.items()}
        return run

    def grouped_mean(column):
        def run():
            return {k: tools.mean(g.to_numpy(), epsilon=epsilon, bounds=(low, high), accountant=BudgetAccountant())
                    for k, g in df.groupby(column)["value"]}
        return run

    ops = {
        "len": (count_rows, "Geometric mechanism on len(df) (sensitivity 1)"),
        "count": (count_present, "tools.count_nonzero(df.los.notna())"),
        "sum": (total, "tools.sum(values, bounds=(0, 100))"),
        "mean": (mean, "tools.mean(values, bounds=(0, 100)); treats the row count as public"),
    }
    for op in ("gsize_str", "gsize_cat"):
        ops[op] = (grouped_size(_ward_column(op)), "pandas groupby().size() + Geometric per group")
    for op in ("gmean_str", "gmean_cat"):
        ops[op] = (grouped_mean(_ward_column(op)),
                   "pandas splits groups + tools.mean per group (group sizes treated as public)")
    return ops


# -------------------------------------------------------------------------------------------- OpenDP
def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _float_space(dp, *, nan: bool = False, size: int | None = None):
    atom = dp.atom_domain(T=float, nan=nan)
    domain = dp.vector_domain(atom, size=size) if size is not None else dp.vector_domain(atom)
    return domain, dp.symmetric_distance()


def opendp_ops(df, *, epsilon: float, bounds: tuple[float, float]) -> dict:
    """OpenDP releases of every benchmarked operation on ``df`` (measurements built here, once)."""
    dp = _opendp()
    low, high = float(bounds[0]), float(bounds[1])
    # OpenDP refuses read-only arrays, and pandas' copy-on-write hands out read-only views: copy once here.
    values = np.array(df["value"], dtype=float)
    los = np.array(df["los"], dtype=float)
    n = len(df)

    count_rows = _float_space(dp) >> dp.t.then_count() >> dp.m.then_laplace(1.0 / epsilon)
    count_present = (_float_space(dp, nan=True) >> dp.t.then_drop_null() >> dp.t.then_count()
                     >> dp.m.then_laplace(1.0 / epsilon))
    sum_pre = _float_space(dp) >> dp.t.then_clamp((low, high)) >> dp.t.then_sum()
    sum_scale = dp.binary_search_param(lambda s: sum_pre >> dp.m.then_laplace(s), d_in=1, d_out=epsilon)
    total = sum_pre >> dp.m.then_laplace(sum_scale)
    mean_pre = _float_space(dp, size=n) >> dp.t.then_clamp((low, high)) >> dp.t.then_mean()
    # Known size: neighbours differ by one substitution, i.e. symmetric distance 2.
    mean_scale = dp.binary_search_param(lambda s: mean_pre >> dp.m.then_laplace(s), d_in=2, d_out=epsilon)
    mean = mean_pre >> dp.m.then_laplace(mean_scale)

    int_vec = dp.vector_domain(dp.atom_domain(T=int))
    group_counts = dp.m.make_laplace(int_vec, dp.l1_distance(T=int), scale=1.0 / epsilon)
    float_vec = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    # Grouped mean under add/remove neighbours: half of epsilon for the per-group clamped sums
    # (one row moves one group's sum by at most max(|low|, |high|)), half for the group sizes.
    magnitude = max(abs(low), abs(high))
    half_counts = dp.m.make_laplace(int_vec, dp.l1_distance(T=int), scale=2.0 / epsilon)
    half_sums = dp.m.make_laplace(float_vec, dp.l1_distance(T=float), scale=2.0 * magnitude / epsilon)

    def grouped_size(column):
        def run():
            sizes = df.groupby(column).size()
            return dict(zip(sizes.index, group_counts([int(c) for c in sizes])))
        return run

    def grouped_mean(column):
        def run():
            agg = df["value"].clip(low, high).groupby(df[column]).agg(["sum", "size"])
            sums = half_sums([float(s) for s in agg["sum"]])
            sizes = half_counts([int(c) for c in agg["size"]])
            return {k: min(max(s / max(c, 1), low), high) for k, s, c in zip(agg.index, sums, sizes)}
        return run

    ops = {
        "len": (lambda: count_rows(values), "vector count + Laplace (symmetric distance)"),
        "count": (lambda: count_present(los), "drop_null + count + Laplace"),
        "sum": (lambda: total(values), "clamp + sum + Laplace (unknown size; OpenDP's float sum of unknown "
                                       "size takes a much slower path above about 1e6 rows)"),
        "mean": (lambda: mean(values), "clamp + make_mean on a vector of known size (row count public)"),
    }
    for op in ("gsize_str", "gsize_cat"):
        ops[op] = (grouped_size(_ward_column(op)), "pandas groupby().size() + vector discrete Laplace")
    for op in ("gmean_str", "gmean_cat"):
        ops[op] = (grouped_mean(_ward_column(op)),
                   "pandas clamped groupby sum/size + vector Laplace (eps/2 each, add/remove)")
    return ops


# ------------------------------------------------------------------------------------------ accuracy
def diffprivlib_mean(*, epsilon: float, bounds: tuple[float, float]):
    """``f(x)``: diffprivlib's ``tools.mean`` (its noise treats ``len(x)`` as public)."""
    from diffprivlib import tools
    from diffprivlib.accountant import BudgetAccountant

    def release(x):
        return float(tools.mean(x, epsilon=epsilon, bounds=bounds, accountant=BudgetAccountant()))
    return release, "tools.mean(x, bounds), row count public (bounded/substitution neighbours)"


def opendp_add_remove_mean(*, epsilon: float, bounds: tuple[float, float]):
    """``f(x)``: OpenDP under add/remove neighbours, noisy clamped sum / noisy count, epsilon split in half."""
    dp = _opendp()
    low, high = float(bounds[0]), float(bounds[1])
    space = _float_space(dp)
    sum_pre = space >> dp.t.then_clamp((low, high)) >> dp.t.then_sum()
    count_pre = space >> dp.t.then_count()
    half = epsilon / 2.0
    sum_scale = dp.binary_search_param(lambda s: sum_pre >> dp.m.then_laplace(s), d_in=1, d_out=half)
    count_scale = dp.binary_search_param(lambda s: count_pre >> dp.m.then_laplace(s), d_in=1, d_out=half)
    noisy_sum = sum_pre >> dp.m.then_laplace(sum_scale)
    noisy_count = count_pre >> dp.m.then_laplace(count_scale)
    composed = dp.c.make_composition([noisy_sum, noisy_count])
    spent = float(composed.map(1))
    if spent > epsilon * (1 + 1e-9):
        raise RuntimeError(f"OpenDP composition spends {spent} > {epsilon}")

    def release(x):
        s, c = composed(x)
        return min(max(s / max(c, 1), low), high)
    note = (f"clamp+sum Laplace scale {sum_scale:.4g} (sensitivity {max(abs(low), abs(high)):g}) and "
            f"count Laplace scale {count_scale:.4g}, eps/2 each (make_composition map = {spent:.6g}); "
            "ratio clipped to the bounds")
    return release, note


def opendp_sized_mean(*, n: int, epsilon: float, bounds: tuple[float, float]):
    """``f(x)``: OpenDP ``make_mean`` on a vector of known size (row count public, like diffprivlib)."""
    dp = _opendp()
    low, high = float(bounds[0]), float(bounds[1])
    pre = _float_space(dp, size=n) >> dp.t.then_clamp((low, high)) >> dp.t.then_mean()
    scale = dp.binary_search_param(lambda s: pre >> dp.m.then_laplace(s), d_in=2, d_out=epsilon)
    meas = pre >> dp.m.then_laplace(scale)

    def release(x):
        return float(meas(x))
    return release, f"make_mean with size={n} (row count public), Laplace scale {scale:.4g}"

