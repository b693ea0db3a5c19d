#!/usr/bin/env python
"""Benchmark of jupyter-dpmagic: speed, fixed cost per release, accuracy and memory, with anchors;
grouped means with a privacy unit, interval coverage and the leak rate of partition selection.

    python bench/run.py            # full run (1e6 and 1e7 rows), about 5-10 minutes on 2 cores
    python bench/run.py --quick    # 1e6 rows only, fewer repetitions, about 1 minute
    python bench/run.py --spark    # then the Spark engine and its anchors on 1e7 rows (bench/spark.py)

Prints readable tables and a "goals" section, and writes everything (raw timings included) to
bench/results/latest.json. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import error_text as _error_text, fmt_time, measure_round_robin, print_table  # noqa: E402

# Private tempdirs: the ledger (on a real disk, so commits pay their fsync) and IPython's profile dir.
_TEMP_DIRS: list[str] = []


def _tempdir(prefix: str, parent: str | None = None) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    _TEMP_DIRS.append(path)
    return path


EPSILON = 1.0
BIG_BUDGET = 1e6
VALUE_BOUNDS = (0.0, 100.0)
LOS_BOUNDS = (0.0, 60.0)
WARDS = [f"ward_{i:02d}" for i in range(10)]
NAN_SHARE = 0.05

SPEED_GOAL = 2.0  # x plain pandas at the largest size
FIXED_GOAL_MS = 3.0  # per release, tiny frame
ACCURACY_GOAL_A = 0.07  # mean absolute error, uniform data

FULL = dict(sizes=[10**6, 10**7], reps={10**6: 7, 10**7: 5}, fixed_reps=200, profile_reps=200,
            accuracy_runs=2000, accuracy_n=1000, memory_n=10**7,
            unit_n=10**7, unit_patients=10**6, unit_reps=5, unit_selection=True,
            coverage_n=2 * 10**6, coverage_groups=1000, coverage_reps=20, leak_runs=3000,
            model_fits=20, model_time_n=10**5, model_time_reps=7)
QUICK = dict(sizes=[10**6], reps={10**6: 3}, fixed_reps=50, profile_reps=200,
             accuracy_runs=300, accuracy_n=1000, memory_n=10**6,
             unit_n=10**6, unit_patients=10**5, unit_reps=3, unit_selection=True,
             coverage_n=2 * 10**5, coverage_groups=200, coverage_reps=20, leak_runs=300,
             model_fits=5, model_time_n=10**5, model_time_reps=3)
SECTIONS = ["speed", "fixed", "unit_mean", "models", "accuracy", "coverage", "leak", "memory"]

# Grouped mean with a privacy unit (section unit_mean).
UNIT_WARDS = ["cardiology", "emergency", "icu", "maternity", "oncology", "surgery"]
UNIT_MAX_ROWS = 5
# Interval coverage (section coverage).
COVERAGE_GOAL = (0.94, 0.96)
# Partition-selection leak rate (section leak): rows per common diagnosis (about 2 rows per patient).
LEAK_COMMON = {"hypertension": 1600, "diabetes": 1000, "asthma": 600, "copd": 300}
LEAK_MAX_ROWS = 3
LEAK_DELTA = 1e-6
LEAK_RELEASES_PER_BUDGET = 100  # what a budget's partition-selection reserve pays for

RUN_ID = f"{os.getpid()}_{int(time.time())}"  # makes the dataset names of this run unique

# (id, label, expression with {f} for the frame). The same text runs on the pandas DataFrame (f=df)
# and on the private frame (f=pf), in a %%dp cell and in a dp.spending() block.
OPERATIONS = [
    ("len", "DP count: len(df)", "len({f})"),
    ("count", "DP count: df['los'].count() (5% NaN)", "{f}['los'].count()"),
    ("sum", "sum: df['value'].sum()", "{f}['value'].sum()"),
    ("mean", "mean: df['value'].mean()", "{f}['value'].mean()"),
    ("gsize_str", "groupby('ward').size() [str]", "{f}.groupby('ward').size()"),
    ("gmean_str", "groupby('ward')['value'].mean() [str]", "{f}.groupby('ward')['value'].mean()"),
    ("gsize_cat", "groupby('ward_cat').size() [category]", "{f}.groupby('ward_cat').size()"),
    ("gmean_cat", "groupby('ward_cat')['value'].mean() [category]",
     "{f}.groupby('ward_cat')['value'].mean()"),
]
VARIANTS = [
    ("pandas", "pandas"),
    ("cell", "%%dp cell"),
    ("spending", "dp.spending"),
    ("diffprivlib", "diffprivlib"),
    ("opendp", "OpenDP"),
]


# ----------------------------------------------------------------------------------------------- data
def hospital(n: int, seed: int):
    """A synthetic hospital table: value ~ U[0, 100], ward (str and category, 10 wards), los with 5% NaN."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, len(WARDS), n)
    ward_cat = pd.Categorical.from_codes(codes, categories=WARDS)
    los = rng.exponential(5.0, n)
    los[rng.random(n) < NAN_SHARE] = np.nan
    return pd.DataFrame({
        "value": rng.uniform(*VALUE_BOUNDS, n),
        "ward": pd.Series(ward_cat).astype("str"),
        "ward_cat": ward_cat,
        "los": los,
    })


def protect_hospital(dp, df, name: str):
    return dp.protect(df, name=name, epsilon=BIG_BUDGET, bounds={"value": VALUE_BOUNDS, "los": LOS_BOUNDS},
                      categories={"ward": WARDS, "ward_cat": WARDS})


# -------------------------------------------------------------------------------------------- helpers
def measure(fn, reps: int) -> tuple[dict, object]:
    """One first (warm-up) call, then ``reps`` timed calls; medians in seconds."""
    stats, outputs = measure_round_robin({"only": fn}, reps)
    if "error" in stats["only"]:
        raise RuntimeError(stats["only"]["error"])
    return stats["only"], outputs["only"]


ANCHOR_CAP_S = 15.0  # an anchor whose first call is slow gets fewer repetitions, to keep the run short


def measure_capped(fn, reps: int, cap_s: float = ANCHOR_CAP_S) -> dict:
    """Like measure(), but fewer timed calls (at least one) when they would take more than ``cap_s``."""
    gc.collect()
    try:
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        if first * reps > cap_s:
            reps = max(1, int(cap_s / max(first, 1e-9)))
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001
        return {"error": _error_text(exc)}
    return {"first_s": first, "median_s": statistics.median(times), "times_s": times, "reps": reps}


def fmt_ratio(ratio) -> str:
    if ratio is None or not math.isfinite(ratio):
        return ""
    return f"({ratio:.2f}x)" if ratio < 100 else f"({ratio:,.0f}x)"


def filesystem_of(path: str) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for entry in mounts:
                parts = entry.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def flush_latency(directory: str, reps: int = 200) -> dict:
    """fdatasync after a 12 KiB append (about one ledger commit's WAL frames), on ``directory``'s disk."""
    path = os.path.join(directory, "flush-probe")
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(reps):
            os.write(fd, b"\0" * 12288)
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.remove(path)
    times.sort()
    return {"median_s": statistics.median(times), "p90_s": times[int(0.9 * (len(times) - 1))],
            "mean_s": statistics.fmean(times)}


def versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("numpy", "pandas", "ipython", "opendp", "diffprivlib", "scikit-learn", "scipy", "jupyter-dpmagic"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def source_state() -> dict:
    """Which commit of the package was measured and whether its files had local changes (read-only git)."""
    root = HERE.parent
    state = {}
    for key, args in (("commit", ["rev-parse", "--short", "HEAD"]),
                      ("changed_files", ["status", "--porcelain", "--", "jupyter_dpmagic"])):
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
            state[key] = proc.stdout.strip() if key == "commit" else \
                [ln[3:] for ln in proc.stdout.splitlines() if ln.strip()]
        except (OSError, subprocess.SubprocessError) as exc:
            state[key] = f"unavailable ({_error_text(exc)})"
    return state


def deviation(released, exact) -> float:
    """Largest relative difference between a release and the exact pandas value (sanity check)."""
    import numpy as np
    import pandas as pd

    if isinstance(exact, pd.Series):
        ours = pd.Series(np.asarray(released, dtype=float), index=[str(i) for i in released.index])
        theirs = pd.Series(np.asarray(exact, dtype=float), index=[str(i) for i in exact.index])
        if set(ours.index) != set(theirs.index):
            return math.inf
        theirs = theirs.reindex(ours.index)
        return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1.0)))
    return abs(float(released) - float(exact)) / max(abs(float(exact)), 1.0)


# -------------------------------------------------------------------------------------------- shell
class Notebook:
    """A real IPython shell with the extension loaded; runs %%dp cells and captures their display."""

    def __init__(self):
        os.environ.setdefault("IPYTHONDIR", _tempdir("dpbench-ipython-"))
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.enabled = False  # no history database: nothing outlives the run
        self.shell = InteractiveShell.instance(config=config)
        self.run("%load_ext jupyter_dpmagic")

    def run(self, text: str):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            result = self.shell.run_cell(text)
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            raise RuntimeError(f"cell failed: {_error_text(error)} | output: {out.getvalue()[-400:]}")
        return result.result

    def dp_cell(self, expression: str):
        text = f"%%dp --epsilon {EPSILON:g}\n{expression}"
        return lambda: self.run(text)


def spending_call(dp, code, namespace):
    def run():
        with dp.spending(epsilon=EPSILON):
            return eval(code, namespace)
    return run


# -------------------------------------------------------------------------------------------- speed
def bench_speed(cfg, dp, notebook, results) -> None:
    import _anchors

    out = results.setdefault("speed", {})
    for n in cfg["sizes"]:
        reps = cfg["reps"][n]
        entry = out[str(n)] = {"n": n, "reps": reps, "ops": {}, "anchors": {}}
        entry["loadavg"] = os.getloadavg()
        print(f"\n== Speed: N = {n:,} rows, median of {reps} after one warm-up call, interleaved "
              f"(load average {entry['loadavg'][0]:.2f}) ==", flush=True)
        start = time.perf_counter()
        df = hospital(n, seed=n % 9973)
        entry["build_data_s"] = time.perf_counter() - start
        start = time.perf_counter()
        pf = protect_hospital(dp, df, name=f"hospital_{n}")
        entry["protect_s"] = time.perf_counter() - start
        notebook.shell.user_ns["pf"] = pf
        anchors = {}
        for name, builder in (("diffprivlib", _anchors.diffprivlib_ops), ("opendp", _anchors.opendp_ops)):
            start = time.perf_counter()
            try:
                anchors[name] = builder(df, epsilon=EPSILON, bounds=VALUE_BOUNDS)
                entry["anchors"][name] = {"build_s": time.perf_counter() - start,
                                          "notes": {op: note for op, (_, note) in anchors[name].items()}}
            except Exception as exc:  # noqa: BLE001
                anchors[name] = {}
                entry["anchors"][name] = {"error": _error_text(exc)}
                print(f"  {name} anchors unavailable: {_error_text(exc)}")
        namespace = {"df": df, "pf": pf}
        for op, label, template in OPERATIONS:
            pandas_code = compile(template.format(f="df"), "<bench>", "eval")
            dp_code = compile(template.format(f="pf"), "<bench>", "eval")
            calls = {
                "pandas": lambda code=pandas_code: eval(code, namespace),
                "spending": spending_call(dp, dp_code, namespace),
                "cell": notebook.dp_cell(template.format(f="pf")),
            }
            for name in ("diffprivlib", "opendp"):
                if op in anchors[name]:
                    calls[name] = anchors[name][op][0]
            row = entry["ops"][op] = {"label": label, "expression": template.format(f="df"),
                                      "dp_expression": template.format(f="pf")}
            # pandas and ours are interleaved round by round; dp.spending warms up first, so its first call
            # is the first release of this query after protect(). Anchors run afterwards, each in its own
            # block, so that their large allocations do not land on our timings.
            stats, outputs = measure_round_robin({v: calls[v] for v in ("spending", "pandas", "cell")}, reps)
            for variant in ("diffprivlib", "opendp"):
                if variant in calls:
                    stats[variant] = measure_capped(calls[variant], reps)
            for variant in ("spending", "pandas", "cell", "diffprivlib", "opendp"):
                row[variant] = stats.get(variant) or {
                    "error": entry["anchors"].get(variant, {}).get("error", "not available")}
                if variant in ("spending", "cell") and "error" in row[variant]:
                    print(f"  ERROR {variant} {label}: {row[variant]['error']}")
            base = row["pandas"].get("median_s")
            for variant, _ in VARIANTS:
                median = row[variant].get("median_s")
                if base and median is not None:
                    row[variant]["ratio"] = median / base
            if "pandas" in outputs and "spending" in outputs:
                try:
                    row["check_rel_dev"] = deviation(outputs["spending"], outputs["pandas"])
                except Exception as exc:  # noqa: BLE001
                    row["check_rel_dev"] = None
                    row["check_error"] = _error_text(exc)
            print(f"  {label:<48} pandas {fmt_time(base):>9}   %%dp {fmt_time(row['cell'].get('median_s')):>9}"
                  f"   spending {fmt_time(row['spending'].get('median_s')):>9}", flush=True)
        print_speed_table(entry)
        if n == max(cfg["sizes"]):
            profile_slow_ops(entry, dp, namespace)
        notebook.shell.user_ns.pop("pf", None)
        del pf, df, anchors, namespace
        gc.collect()


def _top_by_own_time(profiler, lines: int) -> str:
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
    rows = [ln for ln in text.getvalue().splitlines() if ln.strip()]
    start_at = next((i for i, ln in enumerate(rows) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(rows[start_at:start_at + lines + 1])


def profile_slow_ops(entry, dp, namespace) -> None:
    """cProfile one dp.spending release of each operation that misses the speed goal."""
    slow = [(op, row) for op, row in entry["ops"].items()
            if op != "len" and row.get("cell", {}).get("ratio", math.inf) > SPEED_GOAL]
    for op, row in slow:
        code = compile(row["dp_expression"], "<bench>", "eval")
        profiler = cProfile.Profile()
        try:
            with dp.spending(epsilon=EPSILON):
                profiler.enable()
                eval(code, namespace)
                profiler.disable()
        except Exception as exc:  # noqa: BLE001
            profiler.disable()
            row["profile_error"] = _error_text(exc)
            continue
        row["profile_top"] = _top_by_own_time(profiler, 8)
        print(f"\n  profile of one dp.spending release of {row['label']} (misses {SPEED_GOAL:g}x; top 8 by own time):")
        print("\n".join("    " + ln for ln in row["profile_top"].splitlines()))


def print_speed_table(entry) -> None:
    n = entry["n"]
    print(f"\nN = {n:,}: data built in {entry['build_data_s']:.2f} s; dp.protect() took "
          f"{entry['protect_s'] * 1e3:.0f} ms (once per dataset)")
    headers = ["operation"] + [title for _, title in VARIANTS] + ["check"]
    rows = []
    for op, row in entry["ops"].items():
        cells = [row["label"]]
        for variant, _ in VARIANTS:
            res = row.get(variant, {})
            if "error" in res:
                cells.append("error" if variant not in ("diffprivlib", "opendp") else "n/a")
            else:
                ratio = "" if variant == "pandas" else " " + fmt_ratio(res.get("ratio"))
                fewer = f" [{res['reps']} runs]" if res.get("reps", entry["reps"]) < entry["reps"] else ""
                cells.append(fmt_time(res["median_s"]) + ratio + fewer)
        dev = row.get("check_rel_dev")
        cells.append("-" if dev is None else ("ok" if dev < 1e-3 else f"DEV {dev:.2g}"))
        rows.append(cells)
    print_table(headers, rows)
    print("  (ratio) = median / plain pandas median on the same DataFrame; check = the dp.spending release "
          "is within 0.1% of pandas' exact value")
    cold = [(row["label"], row["spending"]["first_s"], row["spending"]["median_s"])
            for op, row in entry["ops"].items() if op.startswith("g") and "first_s" in row.get("spending", {})]
    if cold:
        print("  first dp.spending release after protect() (cold group-code cache) vs its median:")
        for label, first, median in cold:
            print(f"      {label:<48} {fmt_time(first):>9} vs {fmt_time(median)}")
    for name, info in entry["anchors"].items():
        if "error" in info:
            print(f"  {name}: unavailable ({info['error']})")
        else:
            print(f"  {name} (built in {info['build_s'] * 1e3:.0f} ms, not timed):")
            for op, note in info["notes"].items():
                print(f"      {op:<10} {note}")
    errors = [(row["label"], v, row[v]["error"]) for row in entry["ops"].values() for v, _ in VARIANTS
              if "error" in row.get(v, {}) and v in ("pandas", "cell", "spending")]
    for label, variant, text in errors:
        print(f"  ERROR {variant} {label}: {text}")


# --------------------------------------------------------------------------------------- fixed cost
_COMPONENTS = [
    # (label, file suffix, function name) - cumulative times of these functions in the profile
    ("IPython run_cell (whole cell)", "interactiveshell.py", "run_cell"),
    ("  display of the result (displayhook, repr + HTML)", "displayhook.py", "__call__"),
    ("  %%dp magic (parse options, exec cell)", "magic.py", "dp"),
    ("Session.release (one DP release)", "session.py", "release"),
    ("  column tier checks (_check_columns)", "session.py", "_check_columns"),
    ("  noise calibration (OpenDP measurement + map)", "mechanisms.py", "additive"),
    ("  exact aggregates (LocalEngine.run)", "local.py", "run"),
    ("  ledger charge (SQLite commit, fsync)", "accountant.py", "charge"),
    ("  noise sampling (_add_noise)", "session.py", "_add_noise"),
    ("  finishing (intervals)", "measures.py", "finish"),
    ("  result objects (_shape)", "session.py", "_shape"),
    ("bounds lookup before the release (_numeric_measure)", "frame.py", "_numeric_measure"),
    ("policy.classify (all calls, name word lists)", "policy.py", "classify"),
]


def _profile(fn, reps: int) -> tuple[dict, str, float]:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(reps):
        fn()
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    components = {}
    for label, suffix, func in _COMPONENTS:
        total, found = 0.0, False
        for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if name == func and filename.endswith(suffix):
                total += ct
                found = True
        if found:
            components[label] = total / reps
    return components, _top_by_own_time(profiler, 10), wall / reps


def _micro(dp, pf, record_name: str) -> dict:
    """Direct (unprofiled) timings of single steps, to size the fixed-cost parts without profiler bias."""
    import numpy as np

    found = {}

    def timed(label, fn, reps=200):
        try:
            fn()
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            found[label] = statistics.median(times)
        except Exception as exc:  # noqa: BLE001
            found[label] = None
            found[label + " (error)"] = _error_text(exc)

    try:
        from jupyter_dpmagic import mechanisms
        from jupyter_dpmagic.policy import classify

        timed("policy.classify('value', float64)", lambda: classify("value", np.dtype("float64")), 1000)
        timed("mechanisms.additive (build one Laplace measurement)",
              lambda: mechanisms.additive(sensitivity=2**23, loss=0.8, measure="pure", vector=False))
    except Exception as exc:  # noqa: BLE001
        found["imports (error)"] = _error_text(exc)
    try:
        from jupyter_dpmagic.accountant import Cost
        from jupyter_dpmagic.session import get_session

        session = get_session()
        record = session.datasets[record_name].record
        accountant = session.accountant
        dataset = session.datasets[record_name]
        timed("Dataset.column('value') (tier/bounds lookup, per column per release)",
              lambda: dataset.column("value"), 1000)
        timed("Accountant.charge (one committed ledger write)",
              lambda: accountant.charge(record, Cost(epsilon=1e-6), query="bench", mechanism="bench",
                                        tier="standard", purpose="explore"))
    except Exception as exc:  # noqa: BLE001
        found["ledger (error)"] = _error_text(exc)
    try:
        from jupyter_dpmagic import magic

        timed("magic._cell_parser() (argparse parser built for each %%dp cell)", magic._cell_parser, 1000)
    except Exception as exc:  # noqa: BLE001
        found["magic (error)"] = _error_text(exc)
    return found


FIXED_OPS = [
    ("len", "len(df)", "len({f})"),
    ("count", "df['value'].count()", "{f}['value'].count()"),
    ("mean", "df['value'].mean()", "{f}['value'].mean()"),
    ("gsize", "df.groupby('ward').size()", "{f}.groupby('ward').size()"),
]


def bench_fixed(cfg, dp, notebook, results, *, name="tiny", title="ledger on a real disk") -> dict:
    reps = cfg["fixed_reps"]
    print(f"\n== Fixed cost per release: 100-row frame, median of {reps} releases ({title}; "
          f"load average {os.getloadavg()[0]:.2f}) ==", flush=True)
    df = hospital(100, seed=7 if name == "tiny" else 8)
    pf = protect_hospital(dp, df, name=name)
    notebook.shell.user_ns["tiny"] = pf
    namespace = {"tiny": pf}
    out = {"reps": reps, "ops": {}}
    ledger_dir = os.path.dirname(os.environ["DPMAGIC_LEDGER"])
    try:
        out["flush"] = flush_latency(ledger_dir)
        print(f"disk flush on the ledger's filesystem ({filesystem_of(ledger_dir)}): fdatasync after a 12 KiB append "
              f"median {fmt_time(out['flush']['median_s'])}, p90 {fmt_time(out['flush']['p90_s'])}, "
              f"mean {fmt_time(out['flush']['mean_s'])}")
    except OSError as exc:
        out["flush"] = {"error": _error_text(exc)}
    for op, label, template in FIXED_OPS:
        expr = template.format(f="tiny")
        calls = {"cell": notebook.dp_cell(expr),
                 "spending": spending_call(dp, compile(expr, "<bench>", "eval"), namespace)}
        stats, _ = measure_round_robin(calls, reps)
        out["ops"][op] = {"label": label, **stats}
    rows = [[row["label"]] + [("error" if "error" in row[v] else f"{row[v]['median_s'] * 1e3:.2f}")
                              for v in ("cell", "spending")] for row in out["ops"].values()]
    print_table(["release", "%%dp cell ms", "dp.spending ms"], rows)
    if name == "tiny":
        out["micro_s"] = _micro(dp, pf, name)
        profiles = {}
        for label, fn in (("dp.spending mean", spending_call(dp, compile("tiny['value'].mean()", "<b>", "eval"),
                                                             namespace)),
                          ("%%dp cell mean", notebook.dp_cell("tiny['value'].mean()"))):
            try:
                components, top, per_call = _profile(fn, cfg["profile_reps"])
                profiles[label] = {"components_s": components, "top10": top, "profiled_per_call_s": per_call}
            except Exception as exc:  # noqa: BLE001
                profiles[label] = {"error": _error_text(exc)}
        out["profiles"] = profiles
        print_fixed_breakdown(out, cfg["profile_reps"])
    results.setdefault("fixed", {})[name] = out
    return out


def print_fixed_breakdown(out, reps) -> None:
    print(f"\nWhere the time of one release goes (cProfile over {reps} releases; the profiler inflates "
          "Python-heavy parts):")
    profiles = out["profiles"]
    labels = [label for label, _, _ in _COMPONENTS]
    cols = list(profiles)
    rows = []
    for label in labels:
        cells = [label]
        for col in cols:
            value = profiles[col].get("components_s", {}).get(label)
            cells.append("-" if value is None else f"{value * 1e3:.3f}")
        rows.append(cells)
    rows.append(["total per release (profiled)"] + [
        f"{profiles[c]['profiled_per_call_s'] * 1e3:.3f}" if "profiled_per_call_s" in profiles[c] else "error"
        for c in cols])
    print_table(["component (ms per release, cumulative)"] + [f"{c} ms" for c in cols], rows)
    for col in cols:
        if "top10" in profiles[col]:
            print(f"\ncProfile top 10 by own time, {reps} x {col}:")
            print(profiles[col]["top10"])
    print("\nSingle steps timed directly (no profiler), median:")
    for label, value in out["micro_s"].items():
        print(f"  {label:<72} {value if isinstance(value, str) else fmt_time(value)}")


# ----------------------------------------------------------------------------------------- accuracy
def accuracy_data(case: str, n: int):
    import numpy as np

    rng = np.random.default_rng(20240 + (0 if case == "a" else 1))
    if case == "a":
        return rng.uniform(*VALUE_BOUNDS, n)
    return np.clip(rng.exponential(20.0, n), *VALUE_BOUNDS)


def _error_stats(estimates, truth) -> dict:
    import numpy as np

    est = np.asarray(estimates, dtype=float)
    err = np.abs(est - truth)
    return {"runs": int(len(est)), "mae": float(err.mean()), "se": float(err.std(ddof=1) / math.sqrt(len(err))),
            "rmse": float(np.sqrt(np.mean((est - truth) ** 2))), "bias": float(np.mean(est - truth)),
            "p95_abs_error": float(np.quantile(err, 0.95))}


def bench_accuracy(cfg, dp, results) -> None:
    import pandas as pd
    import _anchors

    runs, n = cfg["accuracy_runs"], cfg["accuracy_n"]
    print(f"\n== Accuracy: DP mean, epsilon {EPSILON:g}, bounds {VALUE_BOUNDS}, N = {n}, {runs} releases "
          "each on the same data ==", flush=True)
    out = results.setdefault("accuracy", {"runs": runs, "n": n, "cases": {}})
    makers = {
        "diffprivlib": lambda: _anchors.diffprivlib_mean(epsilon=EPSILON, bounds=VALUE_BOUNDS),
        "opendp_add_remove": lambda: _anchors.opendp_add_remove_mean(epsilon=EPSILON, bounds=VALUE_BOUNDS),
        "opendp_sized": lambda: _anchors.opendp_sized_mean(n=n, epsilon=EPSILON, bounds=VALUE_BOUNDS),
    }
    anchors, notes = {}, {}
    for name, make in makers.items():
        try:
            anchors[name], notes[name] = make()
        except Exception as exc:  # noqa: BLE001
            notes[name] = f"unavailable: {_error_text(exc)}"
    out["anchor_notes"] = notes
    for case, title in (("a", "uniform on [0, 100]"), ("b", "exponential(scale 20) clipped to [0, 100]")):
        x = accuracy_data(case, n)
        truth = float(x.mean())
        entry = out["cases"][case] = {"data": title, "true_mean": truth, "libraries": {}}
        pf = dp.protect(pd.DataFrame({"value": x}), name=f"accuracy_{case}", epsilon=BIG_BUDGET,
                        bounds={"value": VALUE_BOUNDS})
        estimates, covered = [], 0
        start = time.perf_counter()
        try:
            for _ in range(runs):
                with dp.spending(epsilon=EPSILON):
                    release = pf["value"].mean()
                low, high = dp.info(release).ci
                covered += low <= truth <= high
                estimates.append(float(release))
            stats = _error_stats(estimates, truth)
            stats["ci95_coverage"] = covered / runs
            stats["per_release_s"] = (time.perf_counter() - start) / runs
            entry["libraries"]["ours"] = stats
        except Exception as exc:  # noqa: BLE001
            entry["libraries"]["ours"] = {"error": _error_text(exc)}
            traceback.print_exc()
        for name, release_fn in anchors.items():
            try:
                entry["libraries"][name] = _error_stats([release_fn(x) for _ in range(runs)], truth)
            except Exception as exc:  # noqa: BLE001
                entry["libraries"][name] = {"error": _error_text(exc)}
    titles = {"ours": "ours (add/remove, private count)", "opendp_add_remove": "OpenDP add/remove (eps/2 + eps/2)",
              "diffprivlib": "diffprivlib tools.mean (count public)", "opendp_sized": "OpenDP make_mean (count public)"}
    rows = []
    for name, title in titles.items():
        cells = [title]
        for case in ("a", "b"):
            res = out["cases"][case]["libraries"].get(name, {"error": notes.get(name, "not run")})
            cells.append("n/a" if "error" in res else f"{res['mae']:.4f} ± {res['se']:.4f}")
            cells.append("" if "error" in res else f"{res['rmse']:.4f}")
        rows.append(cells)
    print_table(["library", "MAE (a) ± SE", "RMSE (a)", "MAE (b) ± SE", "RMSE (b)"], rows)
    for case in ("a", "b"):
        c = out["cases"][case]
        ours = c["libraries"].get("ours", {})
        extra = (f"; ours: 95% CI covered the true mean in {ours['ci95_coverage']:.1%} of releases, "
                 f"{ours['per_release_s'] * 1e3:.2f} ms per release (tmpfs ledger)") if "mae" in ours else ""
        print(f"  ({case}) {c['data']}, true mean {c['true_mean']:.4f}{extra}")
    for name, note in notes.items():
        print(f"  {name}: {note}")


# ------------------------------------------------------------------------------ grouped mean by person
def _unique(name: str) -> str:
    """A dataset name of its own in every run (the ledger is fresh, but names must not collide)."""
    return f"{name}_{RUN_ID}"


def patient_visits(n: int, patients: int, seed: int):
    """``n`` visits of ``patients`` patients in random order: patient_id (1 to 30 visits each, most
    patients few and some many), ward (str, UNIT_WARDS) and los (exponential, mean 5, clipped to LOS_BOUNDS).
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    # 1 + floor(29 u^2): P(k visits) falls like k^-1/2 over 1..30, mean about 10 visits.
    visits = 1 + np.floor(29 * rng.random(patients) ** 2.05).astype(np.int64)
    short = n - int(visits.sum())  # then nudge single patients by one visit to reach exactly n rows
    if short:
        room = np.flatnonzero(visits < 30) if short > 0 else np.flatnonzero(visits > 1)
        visits[rng.choice(room, abs(short), replace=False)] += 1 if short > 0 else -1
    ids = rng.permutation(np.repeat(np.arange(patients, dtype=np.int64), visits))
    ward = pd.Categorical.from_codes(rng.integers(0, len(UNIT_WARDS), n), categories=UNIT_WARDS)
    return pd.DataFrame({
        "patient_id": ids,
        "ward": pd.Series(ward).astype("str"),
        "los": np.minimum(rng.exponential(5.0, n), LOS_BOUNDS[1]),
    }), visits


def bench_unit_mean(cfg, dp, results) -> None:
    """Grouped mean with a privacy unit (at most UNIT_MAX_ROWS visits per patient), against plain pandas."""
    n, patients, reps = cfg["unit_n"], cfg["unit_patients"], cfg["unit_reps"]
    out = results["unit_mean"] = {"n": n, "patients": patients, "reps": reps, "max_rows_per_unit": UNIT_MAX_ROWS,
                                  "loadavg": os.getloadavg(), "cases": {}}
    print(f"\n== Grouped mean with a privacy unit: N = {n:,} visits of {patients:,} patients, at most "
          f"{UNIT_MAX_ROWS} visits per patient; median of {reps} after one warm-up call, interleaved "
          f"(load average {out['loadavg'][0]:.2f}) ==", flush=True)
    start = time.perf_counter()
    df, visits = patient_visits(n, patients, seed=n % 9973 + 1)
    out["build_data_s"] = time.perf_counter() - start
    out["visits_per_patient"] = {"mean": float(visits.mean()), "median": float(statistics.median(visits.tolist())),
                                 "share_over_max_rows": float((visits > UNIT_MAX_ROWS).mean()),
                                 "max": int(visits.max())}
    # (case, title, frame, protect arguments, group column)
    cases = [("declared", "groupby('ward')['los'].mean(), declared wards", df,
              dict(epsilon=BIG_BUDGET, categories={"ward": UNIT_WARDS}), "ward")]
    if cfg["unit_selection"]:
        # Another copy: an extra column 'dept' without declared categories (the groups are chosen by DP
        # partition selection, which needs a delta); new data, so the ledger sees a new dataset.
        cases.append(("selection", "groupby('dept')['los'].mean(), partition selection (δ budget)",
                      df.assign(dept=df["ward"]),
                      dict(epsilon=BIG_BUDGET, delta=1e-6, categories={"ward": UNIT_WARDS}), "dept"))
    rows = []
    for case, title, frame, kwargs, column in cases:
        entry = out["cases"][case] = {"label": title}
        try:
            start = time.perf_counter()
            pf = dp.protect(frame, name=_unique(f"unit_mean_{case}_{n}"), bounds={"los": LOS_BOUNDS},
                            privacy_unit="patient_id", max_rows_per_unit=UNIT_MAX_ROWS, **kwargs)
            entry["protect_s"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            entry["error"] = _error_text(exc)
            rows.append([title, "error", "", "", "", ""])
            print(f"  ERROR protect ({case}): {entry['error']}")
            continue

        def private(pf=pf, column=column):
            with dp.spending(epsilon=EPSILON):
                return pf.groupby(column)["los"].mean()

        def plain(frame=frame, column=column):
            return frame.groupby(column)["los"].mean()

        # dp.spending warms up first: its first call is the first release after protect() (cold caches).
        stats, outputs = measure_round_robin({"spending": private, "pandas": plain}, reps)
        entry.update(stats)
        if "error" in stats["spending"] or "error" in stats["pandas"]:
            text = stats["spending"].get("error") or stats["pandas"].get("error")
            entry["error"] = text
            rows.append([title, "error", "", "", "", ""])
            print(f"  ERROR ({case}): {text}")
            continue
        entry["ratio"] = stats["spending"]["median_s"] / stats["pandas"]["median_s"]
        released, exact = outputs["spending"], outputs["pandas"]
        info = dp.info(released)
        entry["groups_released"], entry["groups_exact"] = len(released), len(exact)
        common = [k for k in exact.index if k in released.index]
        entry["max_abs_diff"] = float(max((abs(float(released[k]) - float(exact[k])) for k in common),
                                          default=math.nan))
        entry["epsilon"], entry["delta"], entry["notes"] = info.epsilon, info.delta, list(info.notes)
        rows.append([title, fmt_time(stats["pandas"]["median_s"]),
                     f"{fmt_time(stats['spending']['median_s'])} {fmt_ratio(entry['ratio'])}",
                     fmt_time(stats["spending"]["first_s"]), fmt_time(entry["protect_s"]),
                     f"{len(released)}/{len(exact)}, {entry['max_abs_diff']:.3f}"])
        del pf
        gc.collect()
    print(f"data built in {out['build_data_s']:.2f} s; visits per patient: mean "
          f"{out['visits_per_patient']['mean']:.1f}, median {out['visits_per_patient']['median']:.0f}, max "
          f"{out['visits_per_patient']['max']}, {out['visits_per_patient']['share_over_max_rows']:.0%} of patients "
          f"have more than {UNIT_MAX_ROWS}")
    print_table(["release (dp.spending, epsilon 1)", "pandas", "dp.spending (ratio)", "first release", "protect()",
                 "groups, max |DP - pandas|"], rows)
    print(f"  (ratio) = median / plain pandas median on the same DataFrame (all rows, no privacy unit: the unbounded "
          f"non-private baseline); the DP mean keeps at most {UNIT_MAX_ROWS} random visits per patient, so it "
          "estimates a different mean than pandas' (hence the difference column)")
    del df, cases
    gc.collect()


# ---------------------------------------------------------------------------------- interval coverage
def _wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if total == 0:
        return math.nan, math.nan
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def coverage_data(n: int, groups: int, seed: int = 4242):
    """``n`` people (one row each) in ``groups`` declared groups of uneven size (lognormal weights, sd 0.5),
    x = 100 * Beta(2, 5) inside the declared bounds [0, 100]: the DP engine's value before noise is
    exactly pandas' value."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    keys = [f"g{i:04d}" for i in range(groups)]
    weights = rng.lognormal(0.0, 0.5, groups)
    codes = rng.choice(groups, size=n, p=weights / weights.sum())
    df = pd.DataFrame({"g": pd.Categorical.from_codes(codes, categories=keys),
                       "x": 100.0 * rng.beta(2.0, 5.0, n)})
    return df, keys


COVERAGE_KINDS = {
    "count": ("groupby('g').size()", lambda pf: pf.groupby("g").size(),
              lambda df: df.groupby("g", observed=False).size()),
    "sum": ("groupby('g')['x'].sum()", lambda pf: pf.groupby("g")["x"].sum(),
            lambda df: df.groupby("g", observed=False)["x"].sum()),
    "mean": ("groupby('g')['x'].mean()", lambda pf: pf.groupby("g")["x"].mean(),
             lambda df: df.groupby("g", observed=False)["x"].mean()),
}

# (key, title, protect delta, dp.spending arguments, kinds, checked against COVERAGE_GOAL). The noise of the
# checked rows is large against the integer steps of counts (count noise sd about 14 and 26); the last row
# is a diagnostic at a small noise (count noise sd about 4.5), where a 95% interval of integers cannot
# cover exactly 95%.
COVERAGE_BUDGETS = [
    ("pure", "pure budget, ε=0.1 per release", 0.0, dict(epsilon=0.1), ("count", "sum", "mean"), True),
    ("zcdp", "δ budget, ε=0.2, δ=1e-6 per release", 1e-6, dict(epsilon=0.2, delta=1e-6),
     ("count", "sum", "mean"), True),
    ("zcdp_small", "δ budget, ε=1, δ=1e-6 per release (small noise)", 1e-6, dict(epsilon=1.0, delta=1e-6),
     ("count",), False),
]


def _tightest_integer_half_width(errors, level: float = 0.95) -> tuple[int, float]:
    """The smallest integer h with |error| <= h in at least ``level`` of the releases, and that share."""
    import numpy as np

    err = np.sort(np.abs(np.rint(np.asarray(errors, dtype=float))))
    h = int(err[min(len(err) - 1, math.ceil(level * len(err)) - 1)])
    return h, float(np.mean(err <= h))


def bench_coverage(cfg, dp, results) -> None:
    """Share of (group, release) pairs whose stated 95% interval holds pandas' exact value."""
    import numpy as np

    n, reps, n_groups = cfg["coverage_n"], cfg["coverage_reps"], cfg["coverage_groups"]
    print(f"\n== Interval coverage: {n_groups} declared groups, N = {n:,} people (one row each), "
          f"{reps} releases of each kind (load average {os.getloadavg()[0]:.2f}) ==", flush=True)
    df, groups = coverage_data(n, n_groups)
    sizes = df.groupby("g", observed=False).size().reindex(groups).to_numpy()
    small = sizes <= np.quantile(sizes, 1 / 3)
    out = results["coverage"] = {"n": n, "groups": n_groups, "reps": reps,
                                 "group_size": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                                "max": int(sizes.max()),
                                                "smallest_third_up_to": int(sizes[small].max())},
                                 "ledger": os.environ.get("DPMAGIC_LEDGER"), "cases": {}}
    width = VALUE_BOUNDS[1] - VALUE_BOUNDS[0]
    rows, diagnostics = [], []
    for budget, budget_title, delta, spend, kinds, checked in COVERAGE_BUDGETS:
        try:
            # A column naming the budget makes each copy new data (the ledger refuses a second name for the same).
            pf = dp.protect(df.assign(budget=budget), name=_unique(f"coverage_{budget}"), epsilon=BIG_BUDGET,
                            delta=delta, bounds={"x": VALUE_BOUNDS}, categories={"g": groups})
        except Exception as exc:  # noqa: BLE001
            print(f"  ERROR protect ({budget}): {_error_text(exc)}")
            out["cases"][budget] = {"budget": budget_title, "kind": "all", "checked": checked,
                                    "error": _error_text(exc)}
            continue
        for kind in kinds:
            expression, release, exact = COVERAGE_KINDS[kind]
            truth = exact(df).reindex(groups).to_numpy(dtype=float)
            known = ~np.isnan(truth)  # an empty group has no mean
            entry = out["cases"][f"{budget}/{kind}"] = {"budget": budget_title, "kind": kind, "checked": checked,
                                                         "expression": expression}
            hits = total = small_hits = small_total = full_range = 0
            half_widths, errors = [], []
            start = time.perf_counter()
            try:
                for _ in range(reps):
                    with dp.spending(**spend):
                        released = release(pf)
                    info = dp.info(released)
                    low = np.asarray(info.ci_low.reindex(groups), dtype=float)
                    high = np.asarray(info.ci_high.reindex(groups), dtype=float)
                    covered = (low <= truth) & (truth <= high)
                    hits += int(covered[known].sum())
                    total += int(known.sum())
                    small_hits += int(covered[known & small].sum())
                    small_total += int((known & small).sum())
                    if kind == "mean":
                        full_range += int(((high - low)[known] >= width * (1 - 1e-9)).sum())
                    if kind == "count":
                        errors.append(np.asarray(released.reindex(groups), dtype=float) - truth)
                    half_widths.append(float(np.median((high - low)[known]) / 2))
            except Exception as exc:  # noqa: BLE001
                entry["error"] = _error_text(exc)
                rows.append([budget_title, expression, "error: " + entry["error"][:80], "", "", "", ""])
                continue
            low95, high95 = _wilson(hits, total)
            entry.update({"hits": hits, "total": total, "coverage": hits / total, "wilson95": [low95, high95],
                          "small_groups_coverage": small_hits / small_total if small_total else None,
                          "median_half_width": statistics.median(half_widths),
                          "per_release_s": (time.perf_counter() - start) / reps,
                          "epsilon": info.epsilon, "delta": info.delta, "rho": info.rho})
            if kind == "mean":
                entry["full_range_share"] = full_range / total
            if kind == "count":
                h, share = _tightest_integer_half_width(np.concatenate(errors))
                entry["tightest_integer_half_width"], entry["tightest_integer_coverage"] = h, share
                diagnostics.append(f"{budget_title}: stated half-width {entry['median_half_width']:g} covers "
                                   f"{hits / total:.2%}; the smallest integer half-width that covers at least 95% of "
                                   f"these releases is {h} ({share:.2%})")
            rows.append([budget_title, expression, f"{hits / total:.2%}", f"{low95:.2%} - {high95:.2%}",
                         f"{entry['small_groups_coverage']:.2%}" if small_total else "-",
                         f"{entry['median_half_width']:.4g}" + (f" ({entry['full_range_share']:.1%} full range)"
                                                                if kind == "mean" else ""),
                         f"{entry['per_release_s'] * 1e3:.0f} ms"])
        del pf
        gc.collect()
    print(f"group sizes: min {out['group_size']['min']}, median {out['group_size']['median']:.0f}, "
          f"max {out['group_size']['max']}; x = 100 * Beta(2, 5), bounds {VALUE_BOUNDS}")
    print_table(["budget", "release", "coverage", "binomial 95% range", "smallest third",
                 "median half-width", "per release"], rows, aligns=["<", "<", ">", ">", ">", ">", ">"])
    pairs = next((c["total"] for c in out["cases"].values() if "total" in c), None)
    if pairs:
        spread = 1.96 * math.sqrt(0.95 * 0.05 / pairs)
        print(f"  coverage = share of (group, release) pairs whose dp.info(r).ci_low/ci_high holds pandas' exact "
              f"value; {pairs:,} pairs per row, so exact 95% intervals give {0.95 - spread:.2%} - "
              f"{0.95 + spread:.2%} 19 times in 20; binomial 95% range = Wilson interval of the measured share; "
              f"smallest third = groups of at most {out['group_size']['smallest_third_up_to']} people; full range = "
              "mean intervals that span the whole bounds (they always cover)")
    for line in diagnostics:
        print(f"  count, {line}")


# ---------------------------------------------------------------------------- partition-selection leak
def leak_cohort():
    """Patients of 1 to 3 rows with common diagnoses (hundreds of patients each), one diagnosis held
    by exactly 3 patients of 3 rows each ('rare_3') and one by a single patient of 3 rows ('rare_1')."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(31337)
    names = list(LEAK_COMMON)
    weights = np.array([LEAK_COMMON[d] for d in names], dtype=float)
    patients = int(weights.sum() / 2)  # about 2 rows per patient: the common counts come out near LEAK_COMMON
    rows_per = rng.integers(1, LEAK_MAX_ROWS + 1, patients)
    ids = np.repeat(np.arange(patients, dtype=np.int64), rows_per)
    diagnosis = list(np.array(names)[rng.choice(len(names), size=len(ids), p=weights / weights.sum())])
    next_id = patients
    for label, holders in (("rare_3", 3), ("rare_1", 1)):
        for person in range(holders):
            ids = np.append(ids, [next_id + person] * LEAK_MAX_ROWS)
            diagnosis += [label] * LEAK_MAX_ROWS
        next_id += holders
    order = rng.permutation(len(ids))
    return pd.DataFrame({"patient_id": ids[order], "diagnosis": pd.Series(np.array(diagnosis)[order], dtype="str")})


def _normal_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def _poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    term = total = math.exp(-mean)
    for i in range(1, k):
        term *= mean / i
        total += term
    return max(0.0, 1.0 - total)


def bench_leak(cfg, dp, results) -> None:
    """How often partition selection shows a diagnosis held by 3 patients (and by 1), over many releases."""
    import re

    import numpy as np

    runs = cfg["leak_runs"]
    base = leak_cohort()
    exact = base["diagnosis"].value_counts()
    per_budget = LEAK_RELEASES_PER_BUDGET
    budgets = math.ceil(runs / per_budget)
    print(f"\n== Partition-selection leak rate: {runs} releases of pf['diagnosis'].value_counts(), epsilon "
          f"{EPSILON:g} each, on {budgets} budget(s) of epsilon {BIG_BUDGET:g}, delta {LEAK_DELTA:g} "
          f"({per_budget} releases each; load average {os.getloadavg()[0]:.2f}) ==", flush=True)
    print(f"{len(base):,} rows, {base['patient_id'].nunique():,} patients, max_rows_per_unit={LEAK_MAX_ROWS}; "
          "exact counts: " + ", ".join(f"{k} {v}" for k, v in exact.items()))
    shown = dict.fromkeys(exact.index, 0)
    deltas, thresholds, noise = set(), set(), []
    done, error = 0, None
    start = time.perf_counter()
    try:
        for budget in range(budgets):
            # A new dataset per budget: a new name and new data (the budget number as a column).
            pf = dp.protect(base.assign(batch=budget), name=_unique(f"leak_{budget}"), epsilon=BIG_BUDGET,
                            delta=LEAK_DELTA, privacy_unit="patient_id", max_rows_per_unit=LEAK_MAX_ROWS,
                            bounds={"batch": (0, budgets)})
            for _ in range(min(per_budget, runs - done)):
                with dp.spending(epsilon=EPSILON):
                    released = pf["diagnosis"].value_counts()
                for key in released.index:
                    shown[key] = shown.get(key, 0) + 1
                for key in LEAK_COMMON:  # every row of a common diagnosis is counted (patients have <= 3 rows)
                    if key in released.index:
                        noise.append(float(released[key]) - float(exact[key]))
                info = dp.info(released)
                deltas.add(info.delta)
                for note in info.notes:
                    found = re.search(r"exceeds ([0-9.]+)", note)
                    if found:
                        thresholds.add(float(found.group(1)))
                done += 1
    except Exception as exc:  # noqa: BLE001
        error = _error_text(exc)
        print(f"  ERROR after {done} releases: {error}")
    elapsed = time.perf_counter() - start
    sigma = float(np.std(noise, ddof=1)) if len(noise) > 1 else math.nan
    threshold = max(thresholds) if thresholds else math.nan
    out = results["leak"] = {"runs": done, "requested_runs": runs, "budgets": budgets, "elapsed_s": elapsed,
                             "exact": {str(k): int(v) for k, v in exact.items()},
                             "shown": {str(k): v for k, v in shown.items()},
                             "per_release_delta": sorted(deltas), "threshold": threshold, "noise_sd": sigma,
                             "max_rows_per_unit": LEAK_MAX_ROWS, "ledger": os.environ.get("DPMAGIC_LEDGER"),
                             "diagnoses": {}}
    if error:
        out["error"] = error
    if done == 0:
        return
    rows = []
    for key in sorted(exact.index, key=lambda k: -int(exact[k])):
        count = int(exact[key])
        hits = shown.get(key, 0)
        low, high = _wilson(hits, done)
        upper = 1 - 0.05 ** (1 / done) if hits == 0 else high  # one-sided 95% bound when none was shown
        # Shown when count + noise > threshold, noise integer: normal approximation with the noise sd measured
        # on the common diagnoses (their released count minus the exact one).
        expected = _normal_tail((math.floor(threshold - count) + 0.5) / sigma) \
            if math.isfinite(threshold) and sigma > 0 and count < threshold else None
        out["diagnoses"][str(key)] = {"rows": count, "shown": hits, "rate": hits / done, "upper95": upper,
                                      "expected_rate": expected}
        rows.append([key, count, f"{hits}/{done}", f"{hits / done:.2%}" if hits else "0",
                     f"< {upper:.2g}" if hits == 0 else f"{low:.2%} - {high:.2%}",
                     "-" if expected is None else f"{expected:.2g}"])
    print_table(["diagnosis", "rows counted", "shown", "rate", "95% range", "expected rate"], rows)
    delta_text = ", ".join(f"{d:.3g}" for d in sorted(deltas))
    print(f"  per-release delta (dp.info(r).delta): {delta_text}; threshold: a group is shown if its noisy row count "
          f"exceeds {threshold:g}; count noise sd {sigma:.2f} (measured on the common diagnoses)")
    print(f"  'rare_1' (one patient) is what the delta bounds: expected at most {max(deltas, default=math.nan):.2g} "
          f"per release; 'rare_3' (3 patients) is bounded only through the threshold (expected rate: normal "
          f"approximation with the measured noise); {done / elapsed:.0f} releases/s (ledger on "
          f"{filesystem_of(os.environ.get('DPMAGIC_LEDGER', ''))})")


# --------------------------------------------------------------------------------------------- models
MODEL_EPSILONS = [0.5, 1.0, 2.0, 5.0]
MODEL_TEST_SHARE = 0.3
MODEL_SPLIT_SEED = 2024  # the train/test split only; the DP noise is never seeded
MODEL_TOLERANCE = 0.02  # least tolerance for ours below diffprivlib's median test accuracy (see _model_tolerance)
MODEL_TIME_FEATURES = 10


def breast_cancer_public_bounds(dataset) -> tuple[list[str], list[tuple[float, float]]]:
    """Per-feature (min, max) from the "Summary Statistics" table of ``load_breast_cancer().DESCR``.

    That table is part of the published description of the dataset; its rows come in the order of
    ``feature_names`` ("radius (mean)" is "mean radius", "radius (standard error)" is "radius error",
    "radius (worst)" is "worst radius"), which is checked here.
    """
    import re

    text = dataset.DESCR.split(":Summary Statistics:", 1)[1]
    rows = re.findall(r"^([a-z ]+) \((mean|standard error|worst)\):\s+([-0-9.]+)\s+([-0-9.]+)\s*$", text, re.M)
    prefix = {"mean": "mean {}", "standard error": "{} error", "worst": "worst {}"}
    names = [prefix[kind].format(base.strip()) for base, kind, _, _ in rows]
    if names != list(dataset.feature_names):
        raise RuntimeError(f"DESCR summary table does not match feature_names: {names}")
    return names, [(float(low), float(high)) for _, _, low, high in rows]


def breast_cancer_split():
    """Train and test frames, every feature min-max scaled by its public bounds to [0, 1] (and clipped)."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    names, bounds = breast_cancer_public_bounds(data)
    lows = np.array([b[0] for b in bounds])
    highs = np.array([b[1] for b in bounds])
    scaled = np.clip((data.data - lows) / (highs - lows), 0.0, 1.0)
    outside = int(np.sum((data.data < lows) | (data.data > highs)))
    columns = [n.replace(" ", "_") for n in names]
    X_train, X_test, y_train, y_test = train_test_split(scaled, data.target, test_size=MODEL_TEST_SHARE,
                                                        random_state=MODEL_SPLIT_SEED, stratify=data.target)
    train = pd.DataFrame(X_train, columns=columns).assign(target=y_train.astype(np.int64))
    return train, X_test, y_test.astype(np.int64), columns, outside


def _dpl_fit_direct(kind: str, epsilon: float, X, y, n_features: int):
    """diffprivlib called directly: bounds [0, 1] per feature, data_norm sqrt(n_features), classes [0, 1]."""
    import diffprivlib
    import diffprivlib.models
    import numpy as np

    accountant = diffprivlib.BudgetAccountant()
    if kind == "LogisticRegression":
        # diffprivlib's LogisticRegression takes its classes from y (both classes are in every training set).
        model = diffprivlib.models.LogisticRegression(epsilon=epsilon, data_norm=math.sqrt(n_features),
                                                      accountant=accountant)
        return model.fit(X, y)
    model = diffprivlib.models.GaussianNB(epsilon=epsilon, bounds=(np.zeros(n_features), np.ones(n_features)),
                                          accountant=accountant)
    return model.partial_fit(X, y, classes=np.array([0, 1]))


def _spread(values) -> dict:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return {"median": float(np.median(values)), "q25": float(np.quantile(values, 0.25)),
            "q75": float(np.quantile(values, 0.75)), "min": float(values.min()), "max": float(values.max()),
            "values": [float(v) for v in values]}


def bench_models(cfg, dp, results) -> None:
    """Test accuracy of DP LogisticRegression and GaussianNB on breast cancer data, and fit time on 1e5 rows."""
    import warnings

    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    fits = cfg["model_fits"]
    out = results.setdefault("models", {"fits": fits, "epsilons": MODEL_EPSILONS, "accuracy": {}, "timing": {}})
    out["loadavg"] = os.getloadavg()
    train, X_test, y_test, features, outside = breast_cancer_split()
    X_train, y_train = train[features].to_numpy(), train["target"].to_numpy()
    n_feat = len(features)
    print(f"\n== Models: breast cancer (scikit-learn), {len(train)} train / {len(y_test)} test rows "
          f"({MODEL_TEST_SHARE:.0%} test, split seed {MODEL_SPLIT_SEED}), {n_feat} features scaled to [0, 1] by "
          f"the public bounds of DESCR; median test accuracy of {fits} fits per cell "
          f"(load average {out['loadavg'][0]:.2f}) ==", flush=True)
    print(f"  {outside} of {X_train.size + X_test.size} feature values lie outside the (rounded) published range "
          f"and are clipped; LogisticRegression data_norm = sqrt({n_feat}) = {math.sqrt(n_feat):.3f}")
    out.update({"train_rows": len(train), "test_rows": int(len(y_test)), "features": n_feat,
                "values_clipped": outside, "data_norm": math.sqrt(n_feat)})
    pf = dp.protect(train, name=_unique("breast_cancer"), epsilon=BIG_BUDGET,
                    bounds={c: (0.0, 1.0) for c in features}, categories={"target": [0, 1]})
    rows, charge_mismatch = [], []
    start = time.perf_counter()
    for kind, cls in (("LogisticRegression", LogisticRegression), ("GaussianNB", GaussianNB)):
        exact = cls().fit(X_train, y_train)
        sk_acc = float(np.mean(exact.predict(X_test) == y_test))
        entry = out["accuracy"][kind] = {"sklearn": sk_acc, "epsilons": {}}
        for eps in MODEL_EPSILONS:
            ours, direct, errors = [], [], {}
            for _ in range(fits):  # ours and diffprivlib alternate, fit by fit
                try:
                    with dp.spending(epsilon=eps):
                        model = cls().fit(pf[features], pf["target"])
                    charged = dp.info(model).epsilon
                    if charged is None or abs(float(charged) - eps) > 1e-9:
                        charge_mismatch.append((kind, eps, charged))
                    ours.append(float(np.mean(model.predict(X_test) == y_test)))
                except Exception as exc:  # noqa: BLE001
                    errors["ours"] = _error_text(exc)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model = _dpl_fit_direct(kind, eps, X_train, y_train, n_feat)
                    direct.append(float(np.mean(model.predict(X_test) == y_test)))
                except Exception as exc:  # noqa: BLE001
                    errors["diffprivlib"] = _error_text(exc)
            cell = entry["epsilons"][str(eps)] = {"errors": errors}
            if ours:
                cell["ours"] = _spread(ours)
            if direct:
                cell["diffprivlib"] = _spread(direct)
            rows.append([kind, f"{eps:g}", f"{sk_acc:.3f}", _acc_text(cell.get("ours"), errors.get("ours")),
                         _acc_text(cell.get("diffprivlib"), errors.get("diffprivlib")),
                         f"{cell['ours']['median'] - cell['diffprivlib']['median']:+.3f}"
                         if ours and direct else ""])
    out["accuracy_s"] = time.perf_counter() - start
    out["charge_mismatch"] = [list(map(str, m)) for m in charge_mismatch]
    print_table(["model", "epsilon", "scikit-learn", "ours median [IQR]", "diffprivlib median [IQR]",
                 "ours - diffprivlib"], rows)
    print(f"  ours: dp.protect(train, bounds (0, 1) per feature, categories target [0, 1]) and "
          f"Model().fit(pf[features], pf['target']) inside dp.spending(epsilon=e); diffprivlib: the same model "
          f"with a fresh BudgetAccountant per fit; accuracy on the public test rows ({out['accuracy_s']:.1f} s)")
    if charge_mismatch:
        print(f"  ledger charge differs from the block's epsilon in {len(charge_mismatch)} fit(s): "
              f"{charge_mismatch[:4]}")

    # Fit time on synthetic bounded data.
    n, reps = cfg["model_time_n"], cfg["model_time_reps"]
    rng = np.random.default_rng(777)
    X = rng.random((n, MODEL_TIME_FEATURES))
    weights = rng.normal(0.0, 2.0, MODEL_TIME_FEATURES)
    logits = (X - 0.5) @ weights
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    columns = [f"x{i}" for i in range(MODEL_TIME_FEATURES)]
    frame = pd.DataFrame(X, columns=columns).assign(label=y)
    start = time.perf_counter()
    pf_big = dp.protect(frame, name=_unique("model_timing"), epsilon=BIG_BUDGET,
                        bounds={c: (0.0, 1.0) for c in columns}, categories={"label": [0, 1]})
    protect_s = time.perf_counter() - start
    eps = EPSILON

    def ours():
        with dp.spending(epsilon=eps):
            return LogisticRegression().fit(pf_big[columns], pf_big["label"])

    def direct():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _dpl_fit_direct("LogisticRegression", eps, X, y, MODEL_TIME_FEATURES)

    calls = {"sklearn": lambda: LogisticRegression().fit(X, y), "ours": ours, "diffprivlib": direct}
    stats, _ = measure_round_robin(calls, reps)
    out["timing"] = {"n": n, "features": MODEL_TIME_FEATURES, "reps": reps, "epsilon": eps,
                     "protect_s": protect_s, "variants": stats}
    base, dpl = stats["sklearn"].get("median_s"), stats["diffprivlib"].get("median_s")
    print(f"\n  fit time, LogisticRegression on {n:,} x {MODEL_TIME_FEATURES} synthetic rows (uniform [0, 1] "
          f"features, binary label), epsilon {eps:g}, median of {reps} after one warm-up, interleaved; "
          f"protect() took {fmt_time(protect_s)}")
    trows = []
    for name, title in (("sklearn", "scikit-learn (not private)"), ("ours", "ours: dp.spending + fit, ledger "
                                                                           "charge included"),
                        ("diffprivlib", "diffprivlib directly")):
        s = stats[name]
        if "error" in s:
            trows.append([title, s["error"], "", ""])
            continue
        s["ratio_sklearn"] = s["median_s"] / base if base else None
        s["ratio_diffprivlib"] = s["median_s"] / dpl if dpl else None
        trows.append([title, fmt_time(s["median_s"]), fmt_ratio(s["ratio_sklearn"]),
                      fmt_ratio(s["ratio_diffprivlib"])])
    print_table(["variant", "median", "vs scikit-learn", "vs diffprivlib"], trows)


def _model_tolerance(ours: dict, direct: dict, fits: int) -> float:
    """How far our median may fall below diffprivlib's: MODEL_TOLERANCE, or more when the fits spread widely.

    The standard error of a median is about 1.2533 sd / sqrt(n), with sd estimated as IQR / 1.349; the
    tolerance is 1.96 standard errors of the difference of the two medians, and at least MODEL_TOLERANCE.
    """
    se = [0.929 * (s["q75"] - s["q25"]) / math.sqrt(fits) for s in (ours, direct)]
    return max(MODEL_TOLERANCE, 1.96 * math.hypot(*se))


def _acc_text(spread, error) -> str:
    if spread is None:
        return f"error: {error}" if error else "-"
    return f"{spread['median']:.3f} [{spread['q25']:.3f}-{spread['q75']:.3f}]"


# ------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_worker(kind: str, n: int, column: str) -> None:
    """Run in a fresh process: peak RSS increase of one grouped mean (pandas) or protect + one (ours)."""
    os.environ["DPMAGIC_LEDGER"] = os.path.join(_tempdir("dpbench-mem-"), "ledger.sqlite")
    import jupyter_dpmagic as dp  # noqa: F401 - imported before the baseline, like pandas
    import numpy as np  # noqa: F401

    df = hospital(n, seed=n % 9973)
    gc.collect()
    exact = _reset_peak()
    base = _status_kb("VmRSS")
    result = {"kind": kind, "n": n, "column": column, "exact_peak": exact, "base_kb": base}
    start = time.perf_counter()
    if kind == "pandas":
        df.groupby(column)["value"].mean()
        result["peak_kb"] = _status_kb("VmHWM")
    else:
        pf = protect_hospital(dp, df, name="memory")
        result["protect_peak_kb"] = _status_kb("VmHWM")
        after_protect = _status_kb("VmRSS")
        result["after_protect_kb"] = after_protect
        _reset_peak()
        with dp.spending(epsilon=EPSILON):
            pf.groupby(column)["value"].mean()
        query_peak = _status_kb("VmHWM")
        result["query_peak_kb"] = query_peak
        result["query_only_increase_kb"] = query_peak - after_protect
        result["peak_kb"] = max(result["protect_peak_kb"], query_peak)
    result["seconds"] = time.perf_counter() - start
    result["increase_kb"] = result["peak_kb"] - base
    if not exact:
        result["note"] = "could not reset the peak (no /proc/self/clear_refs): increase is approximate"
    print("RESULT " + json.dumps(result))
    _cleanup()


def bench_memory(cfg, results) -> None:
    n = cfg["memory_n"]
    print(f"\n== Memory: peak RSS increase, N = {n:,} rows (each measurement in a fresh process) ==", flush=True)
    out = results.setdefault("memory", {"n": n, "cases": {}})
    rows = []
    for column, title in (("ward", "str"), ("ward_cat", "category")):
        case = out["cases"][column] = {}
        for kind in ("pandas", "dp"):
            try:
                proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-worker", kind,
                                       str(n), column], capture_output=True, text=True, timeout=600)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"worker exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
                case[kind] = json.loads(line[len("RESULT "):])
            except Exception as exc:  # noqa: BLE001
                case[kind] = {"error": _error_text(exc)}
        pandas_res, dp_res = case["pandas"], case["dp"]
        if "increase_kb" in pandas_res and "increase_kb" in dp_res:
            case["ratio"] = dp_res["increase_kb"] / max(pandas_res["increase_kb"], 1)
            rows.append([f"groupby('{column}')['value'].mean() [{title}]",
                         f"{pandas_res['increase_kb'] / 1024:.0f}",
                         f"{(dp_res['protect_peak_kb'] - dp_res['base_kb']) / 1024:.0f}",
                         f"{dp_res['query_only_increase_kb'] / 1024:.0f}",
                         f"{dp_res['increase_kb'] / 1024:.0f}", f"{case['ratio']:.2f}x"])
        else:
            rows.append([f"groupby('{column}') [{title}]", pandas_res.get("error", "ok"), "", "",
                         dp_res.get("error", "ok"), ""])
    print_table(["query", "pandas MiB", "protect MiB", "DP query MiB", "DP protect+query MiB", "ratio"], rows)
    print("  peak RSS above the RSS just before the step (VmHWM reset through /proc/self/clear_refs); "
          "'DP query' is measured from the RSS after protect()")


# -------------------------------------------------------------------------------------------- goals
def evaluate_goals(cfg, results, quick: bool) -> list[dict]:
    goals = []
    speed = results.get("speed", {})
    if speed:
        largest = max(speed.values(), key=lambda e: e["n"])
        where = f"N={largest['n']:.0e}" + (" (quick run; the goal is stated for 1e7)" if largest["n"] < 10**7 else "")
        for op, row in largest["ops"].items():
            cell = row.get("cell", {})
            if op == "len":
                goals.append({"goal": f"speed {row['label']}: %%dp <= {SPEED_GOAL:g}x pandas, {where}",
                              "measured": f"{fmt_time(cell.get('median_s'))} vs pandas "
                                          f"{fmt_time(row['pandas'].get('median_s'))}",
                              "status": "n/a (pandas len() is O(1) metadata; see the fixed-cost goal)"})
                continue
            ratio = cell.get("ratio")
            goals.append({"goal": f"speed {row['label']}: %%dp <= {SPEED_GOAL:g}x pandas, {where}",
                          "measured": "error" if ratio is None else
                          f"{ratio:.2f}x (dp.spending {row['spending'].get('ratio', math.nan):.2f}x)",
                          "value": ratio, "status": "FAIL" if ratio is None or ratio > SPEED_GOAL else "PASS"})
    fixed = results.get("fixed", {}).get("tiny")
    if fixed:
        for op in ("count", "mean", "len"):
            row = fixed["ops"].get(op)
            for variant, title in (("cell", "%%dp"), ("spending", "dp.spending")):
                value = row.get(variant, {}).get("median_s") if row else None
                goals.append({"goal": f"fixed cost {title} {row['label'] if row else op} <= {FIXED_GOAL_MS:g} ms "
                                      "(100 rows)",
                              "measured": "error" if value is None else f"{value * 1e3:.2f} ms",
                              "value": value, "status": "FAIL" if value is None or value * 1e3 > FIXED_GOAL_MS
                              else "PASS"})
    accuracy = results.get("accuracy")
    if accuracy:
        a = accuracy["cases"].get("a", {}).get("libraries", {}).get("ours", {})
        goals.append({"goal": f"accuracy (a) uniform: ours MAE <= {ACCURACY_GOAL_A:g}",
                      "measured": f"{a['mae']:.4f} ± {a['se']:.4f}" if "mae" in a else "error",
                      "value": a.get("mae"),
                      "status": "PASS" if a.get("mae") is not None and a["mae"] <= ACCURACY_GOAL_A else "FAIL"})
        b = accuracy["cases"].get("b", {}).get("libraries", {})
        ours, opendp = b.get("ours", {}), b.get("opendp_add_remove", {})
        if "mae" in ours and "mae" in opendp:
            z = (opendp["mae"] - ours["mae"]) / math.hypot(ours["se"], opendp["se"])
            goals.append({"goal": "accuracy (b) skewed: ours MAE < OpenDP add/remove MAE (same run)",
                          "measured": f"{ours['mae']:.4f} ± {ours['se']:.4f} vs {opendp['mae']:.4f} ± "
                                      f"{opendp['se']:.4f} (difference {z:.1f} SE)",
                          "value": ours["mae"], "status": "PASS" if ours["mae"] < opendp["mae"] else "FAIL"})
        else:
            goals.append({"goal": "accuracy (b) skewed: ours MAE < OpenDP add/remove MAE (same run)",
                          "measured": "error", "status": "FAIL"})
    unit = results.get("unit_mean")
    if unit:
        for case in unit["cases"].values():
            ratio = case.get("ratio")
            goals.append({"goal": f"grouped mean with a privacy unit: {case['label']} vs pandas, "
                                  f"N={unit['n']:.0e}",
                          "measured": "error" if ratio is None else
                          f"{ratio:.2f}x ({fmt_time(case['spending']['median_s'])} vs "
                          f"{fmt_time(case['pandas']['median_s'])})",
                          "value": ratio, "status": "REPORTED (no threshold)"})
    models = results.get("models")
    if models:
        for kind, entry in models.get("accuracy", {}).items():
            for eps, cell in entry["epsilons"].items():
                ours, direct = cell.get("ours"), cell.get("diffprivlib")
                goal = (f"models: {kind} test accuracy, ours not below diffprivlib (medians of {models['fits']}), "
                        f"epsilon {float(eps):g}")
                if ours is None or direct is None:
                    goals.append({"goal": goal, "measured": "error", "status": "FAIL" if ours is None else "n/a"})
                    continue
                tolerance = _model_tolerance(ours, direct, models["fits"])
                goals.append({"goal": goal,
                              "measured": f"{ours['median']:.3f} vs {direct['median']:.3f}, tolerance "
                                          f"{tolerance:.3f} (scikit-learn {entry['sklearn']:.3f})",
                              "value": ours["median"] - direct["median"], "tolerance": tolerance,
                              "status": "PASS" if ours["median"] >= direct["median"] - tolerance else "FAIL"})
        timing = models.get("timing", {}).get("variants", {})
        if timing:
            mine = timing.get("ours", {})
            goals.append({"goal": f"models: LogisticRegression fit time, ours vs scikit-learn and vs diffprivlib, "
                                  f"{models['timing']['n']:.0e} x {models['timing']['features']}",
                          "measured": "error" if "median_s" not in mine else
                          f"{fmt_time(mine['median_s'])}: {mine.get('ratio_sklearn') or math.nan:.2f}x scikit-learn, "
                          f"{mine.get('ratio_diffprivlib') or math.nan:.2f}x diffprivlib",
                          "value": mine.get("ratio_diffprivlib"), "status": "REPORTED (no threshold)"})
    coverage = results.get("coverage")
    if coverage:
        low, high = COVERAGE_GOAL
        for case in coverage["cases"].values():
            value = case.get("coverage")
            status = ("PASS" if value is not None and low <= value <= high else "FAIL") if case["checked"] \
                else "REPORTED (integer steps; no threshold)"
            goals.append({"goal": f"coverage of the 95% interval in [{low:.0%}, {high:.0%}]: {case['kind']}, "
                                  f"{case['budget']}",
                          "measured": "error" if value is None else
                          f"{value:.2%} (binomial 95% range {case['wilson95'][0]:.2%} - {case['wilson95'][1]:.2%})",
                          "value": value, "status": status})
    leak = results.get("leak")
    if leak and leak.get("runs"):
        runs = leak["runs"]
        for key, title in (("rare_1", "1 patient"), ("rare_3", "3 patients")):
            d = leak["diagnoses"].get(key)
            if d is None:
                continue
            if key == "rare_1":
                # The per-release delta bounds it: any appearance in a few thousand releases is a failure.
                expected, status = "0", "PASS" if d["shown"] == 0 else "FAIL"
            else:
                # Bounded through the threshold: fail only when the count is implausible for the expected rate.
                rate = d.get("expected_rate") or 0.0
                expected = f"about {rate * runs:.2g} (rate {rate:.2g})"
                status = "PASS" if _poisson_tail(d["shown"], rate * runs) >= 1e-3 else "FAIL"
            goals.append({"goal": f"partition selection: diagnosis of {title} shown, {runs} releases "
                                  f"(per-release δ {max(leak['per_release_delta'], default=math.nan):.2g})",
                          "measured": f"{d['shown']} (expected {expected})", "value": d["shown"], "status": status})
        common = [leak["diagnoses"][k]["rate"] for k in LEAK_COMMON if k in leak["diagnoses"]]
        goals.append({"goal": "partition selection: common diagnoses shown",
                      "measured": f"{min(common):.2%} to {max(common):.2%} of releases" if common else "error",
                      "value": min(common) if common else None, "status": "REPORTED (no threshold)"})
    memory = results.get("memory")
    if memory:
        for column, case in memory["cases"].items():
            ratio = case.get("ratio")
            goals.append({"goal": f"memory: protect + grouped mean by '{column}' vs pandas grouped mean, "
                                  f"N={memory['n']:.0e}",
                          "measured": "error" if ratio is None else
                          f"{ratio:.2f}x ({case['dp']['increase_kb'] / 1024:.0f} MiB vs "
                          f"{case['pandas']['increase_kb'] / 1024:.0f} MiB)",
                          "value": ratio, "status": "REPORTED (no threshold)"})
    return goals


def print_goals(goals) -> None:
    print("\n== Goals ==")
    print_table(["goal", "measured", "status"], [[g["goal"], g["measured"], g["status"]] for g in goals],
                aligns=["<", "<", "<"])


# --------------------------------------------------------------------------------------------- main
def _cleanup() -> None:
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    _TEMP_DIRS.clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1e6 rows only, fewer repetitions (~1 minute)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="where to write the JSON")
    parser.add_argument("--memory-worker", nargs=3, metavar=("KIND", "N", "COLUMN"), help=argparse.SUPPRESS)
    parser.add_argument("--spark", action="store_true",
                        help="then the Spark engine against plain PySpark, Tumult Analytics and PipelineDP on 1e7 "
                             "rows (1e6 with --quick), about 30 minutes more; see bench/spark.py")
    args = parser.parse_args(argv)
    if args.memory_worker:
        kind, n, column = args.memory_worker
        memory_worker(kind, int(n), column)
        return 0

    cfg = dict(QUICK if args.quick else FULL)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    # A fresh ledger on a real disk (not tmpfs), so each release pays its durable commit.
    ledger_dir = _tempdir("dpbench-ledger-")
    os.environ["DPMAGIC_LEDGER"] = os.path.join(ledger_dir, "ledger.sqlite")
    started = time.perf_counter()
    import jupyter_dpmagic as dp

    results = {
        "meta": {
            "mode": "quick" if args.quick else "full", "config": {k: (v if not isinstance(v, dict) else
                                                                      {str(a): b for a, b in v.items()})
                                                                  for k, v in cfg.items()},
            "epsilon_per_release": EPSILON, "versions": versions(), "source": source_state(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "platform": platform.platform(),
            "ledger": {"path": os.environ["DPMAGIC_LEDGER"], "filesystem": filesystem_of(ledger_dir)},
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    meta = results["meta"]
    print(f"jupyter-dpmagic benchmark ({meta['mode']}), {meta['cpus']} CPUs, load {meta['loadavg_start'][0]:.2f}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    source = meta["source"]
    if isinstance(source.get("changed_files"), list):
        changed = ", ".join(source["changed_files"]) or "none"
        print(f"package source: commit {source.get('commit')}, files with local changes: {changed}")
    print(f"ledger: {meta['ledger']['path']} ({meta['ledger']['filesystem']}); epsilon {EPSILON:g} per release")
    try:
        notebook = Notebook() if sections & {"speed", "fixed"} else None
        if "speed" in sections:
            bench_speed(cfg, dp, notebook, results)
        if "fixed" in sections:
            bench_fixed(cfg, dp, notebook, results)
        if "unit_mean" in sections:  # a timing: the ledger stays on the real disk
            bench_unit_mean(cfg, dp, results)
        if "models" in sections:  # includes a fit-time comparison: the ledger stays on the real disk
            bench_models(cfg, dp, results)
        if sections & {"accuracy", "coverage", "leak"}:
            # Many releases whose time is not the point: the ledger moves to tmpfs from here on.
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            os.environ["DPMAGIC_LEDGER"] = os.path.join(_tempdir("dpbench-acc-", shm), "ledger.sqlite")
            results["meta"]["accuracy_ledger"] = {"path": os.environ["DPMAGIC_LEDGER"],
                                                  "filesystem": filesystem_of(os.environ["DPMAGIC_LEDGER"])}
        if "accuracy" in sections:
            bench_accuracy(cfg, dp, results)
            if notebook is not None and "fixed" in sections:
                bench_fixed(cfg, dp, notebook, results, name="tiny_tmpfs",
                            title=f"for comparison: ledger on {filesystem_of(os.environ['DPMAGIC_LEDGER'])}")
        if "coverage" in sections:
            bench_coverage(cfg, dp, results)
        if "leak" in sections:
            bench_leak(cfg, dp, results)
        if "memory" in sections:
            bench_memory(cfg, results)
        if args.spark:  # timings: the ledger goes back to the real disk
            import spark as spark_bench

            os.environ["DPMAGIC_LEDGER"] = os.path.join(ledger_dir, "ledger.sqlite")
            results["spark"] = spark_bench.run(args.quick, log=lambda text: print(text, flush=True))
    finally:
        _cleanup()
    goals = evaluate_goals(cfg, results, args.quick) + results.get("spark", {}).get("goals", [])
    results["goals"] = goals
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = time.perf_counter() - started
    print_goals(goals)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nfinished in {meta['elapsed_s']:.0f} s; results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
