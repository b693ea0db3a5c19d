#!/usr/bin/env python
"""Benchmark of jupyter-dpmagic: speed, fixed cost per release, accuracy and memory, with anchors.

    python bench/run.py            # full run (1e6 and 1e7 rows), about 5-10 minutes on 2 cores
    python bench/run.py --quick    # 1e6 rows only, fewer repetitions, about 1 minute

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
            accuracy_runs=2000, accuracy_n=1000, memory_n=10**7)
QUICK = dict(sizes=[10**6], reps={10**6: 3}, fixed_reps=50, profile_reps=200,
             accuracy_runs=300, accuracy_n=1000, memory_n=10**6)

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
def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:500]


def measure(fn, reps: int) -> tuple[dict, object]:
    """One first (warm-up) call, then ``reps`` timed calls; medians in seconds."""
    stats, outputs = measure_round_robin({"only": fn}, reps)
    if "error" in stats["only"]:
        raise RuntimeError(stats["only"]["error"])
    return stats["only"], outputs["only"]


def measure_round_robin(calls: dict, reps: int) -> tuple[dict, dict]:
    """Time several ways of doing the same thing, interleaved: one warm-up call each (in the order
    given), then ``reps`` rounds that call each once. On a shared machine, interleaving spreads load
    changes over all of them instead of penalising whichever ran during a busy moment."""
    stats, outputs = {}, {}
    gc.collect()
    for name, fn in calls.items():
        try:
            start = time.perf_counter()
            outputs[name] = fn()
            stats[name] = {"first_s": time.perf_counter() - start, "times_s": []}
        except Exception as exc:  # noqa: BLE001 - one failing library must not stop the others
            stats[name] = {"error": _error_text(exc)}
    for _ in range(reps):
        for name, fn in calls.items():
            if "error" in stats[name]:
                continue
            try:
                start = time.perf_counter()
                outputs[name] = fn()
                stats[name]["times_s"].append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001
                stats[name] = {"error": _error_text(exc)}
    for entry in stats.values():
        if "error" not in entry:
            entry["median_s"] = statistics.median(entry["times_s"])
    return stats, outputs


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


def fmt_time(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    ms = seconds * 1e3
    if ms < 0.1:
        return f"{ms * 1e3:.1f} µs"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio) -> str:
    if ratio is None or not math.isfinite(ratio):
        return ""
    return f"({ratio:.2f}x)" if ratio < 100 else f"({ratio:,.0f}x)"


def print_table(headers, rows, aligns=None) -> None:
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(f"{str(h):{a}{w}}" for h, a, w in zip(headers, aligns, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(row, aligns, widths)))


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
    parser.add_argument("--sections", default="speed,fixed,accuracy,memory",
                        help="comma-separated subset of speed,fixed,accuracy,memory")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="where to write the JSON")
    parser.add_argument("--memory-worker", nargs=3, metavar=("KIND", "N", "COLUMN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        kind, n, column = args.memory_worker
        memory_worker(kind, int(n), column)
        return 0

    cfg = dict(QUICK if args.quick else FULL)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"speed", "fixed", "accuracy", "memory"}
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
        if "accuracy" in sections:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            os.environ["DPMAGIC_LEDGER"] = os.path.join(_tempdir("dpbench-acc-", shm), "ledger.sqlite")
            results["meta"]["accuracy_ledger"] = {"path": os.environ["DPMAGIC_LEDGER"],
                                                  "filesystem": filesystem_of(os.environ["DPMAGIC_LEDGER"])}
            bench_accuracy(cfg, dp, results)
            if notebook is not None and "fixed" in sections:
                bench_fixed(cfg, dp, notebook, results, name="tiny_tmpfs",
                            title=f"for comparison: ledger on {filesystem_of(os.environ['DPMAGIC_LEDGER'])}")
        if "memory" in sections:
            bench_memory(cfg, results)
    finally:
        _cleanup()
    goals = evaluate_goals(cfg, results, args.quick)
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
