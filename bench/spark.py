#!/usr/bin/env python
"""Spark benchmark: jupyter-dpmagic's Spark engine on 1e7 rows, next to its pandas engine, plain PySpark
without DP, and the libraries that do DP on Spark (Tumult Analytics, PipelineDP), on the same Parquet file.

    python bench/spark.py              # 1e7 rows (PipelineDP at 1e6), about 25-35 minutes on 2 cores
    python bench/spark.py --quick      # 1e6 rows (PipelineDP at 1e5), about 6 minutes
    python bench/run.py --spark        # the same, after the sections of bench/run.py, in one JSON

Run alone, it merges its results into bench/results/latest.json under "spark" (and its goals into
"goals"). The anchors run in virtualenvs of their own under ~/.cache/dpmagic-bench/ (created on first use
from PyPI, then reused), since their pins clash with the project's (Tumult Analytics pins pyspark 3.5 and
pandas < 2). See the Spark section of bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR_DIR = HERE / "spark_anchors"
if str(ANCHOR_DIR) not in sys.path:
    sys.path.insert(0, str(ANCHOR_DIR))

from _common import MAX_ROWS, VALUE_BOUNDS, WARDS, spark_session  # noqa: E402

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from _report import error_text as _error_text, fmt_time, measure_round_robin, print_table  # noqa: E402

EPSILON = 1.0
BIG_BUDGET = 1e6
FULL = dict(n=10**7, patients=10**6, reps=3, pipelinedp_n=10**6, pipelinedp_patients=10**5,
            anchor_reps=3, anchor_cap_s=100.0, tumult_timeout_s=900, pipelinedp_timeout_s=600)
QUICK = dict(n=10**6, patients=10**5, reps=3, pipelinedp_n=10**5, pipelinedp_patients=10**4,
             anchor_reps=2, anchor_cap_s=30.0, tumult_timeout_s=300, pipelinedp_timeout_s=300)

# (id, label). count_rows is the row-level count (no privacy unit): plain Spark and Tumult only.
QUERIES = [
    ("count_rows", "DP count of rows, one row protected"),
    ("count", f"DP count of rows, a patient protected, <= {MAX_ROWS} rows each"),
    ("gcount", f"DP count per ward (10 declared), <= {MAX_ROWS} rows per patient"),
    ("gmean", f"DP mean of value per ward, <= {MAX_ROWS} rows per patient"),
]
SHORT = {"count_rows": "count, row-level", "count": "count", "gcount": "count per ward",
         "gmean": "mean per ward", "gcount_unbounded": "count per ward, all rows"}
ANCHORS = {
    # name: (script, pip requirements, import check, queries, rows key)
    "tumult": ("tumult.py", ["tmlt.analytics"], "import tmlt.analytics",
               ["count_rows", "count", "gcount", "gmean"], "n"),
    "pipelinedp": ("pipelinedp.py", ["pipeline-dp", "pyspark"], "import pipeline_dp, pyspark",
                   ["count", "gcount", "gmean"], "pipelinedp_n"),
}
ANCHOR_LABELS = {"tumult": "Tumult Analytics", "pipelinedp": "PipelineDP (Spark backend)"}
CACHE = Path(os.environ.get("DPBENCH_CACHE", Path.home() / ".cache" / "dpmagic-bench"))
INSTALL_TIMEOUT_S = 1200
RUN_ID = f"{os.getpid()}_{int(time.time())}"


# -------------------------------------------------------------------------------------------- helpers
def fmt_rate(rows_per_s) -> str:
    if not rows_per_s:
        return "-"
    return f"{rows_per_s / 1e6:.2f} M/s" if rows_per_s >= 1e6 else f"{rows_per_s / 1e3:.0f} k/s"


def fmt_ratio(ratio) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}x"


def round_robin(calls: dict, reps: int) -> dict:
    """One warm-up call each, then ``reps`` interleaved rounds (:func:`measure_round_robin`); a failing
    call records its error, and each entry says how many calls were timed."""
    stats, _ = measure_round_robin(calls, reps)
    for entry in stats.values():
        if "error" not in entry:
            entry["reps"] = len(entry["times_s"])
    return stats


# ----------------------------------------------------------------------------------------------- data
def write_visits(path: str, n: int, patients: int, seed: int) -> dict:
    """A Parquet file of ``n`` visits of ``patients`` patients in random order: patient_id (int64; 1 to 30
    visits each, most patients few and some many: mean n/patients), ward (string, 10 wards, uniform) and
    value (float64, uniform on [0, 100]). Row groups of 1e6 rows, so that Spark reads it in parallel."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    visits = 1 + np.floor(29 * rng.random(patients) ** 2.05).astype(np.int64)  # mean about 10
    short = n - int(visits.sum())  # nudge single patients by one visit to reach exactly n rows
    if short:
        room = np.flatnonzero(visits < 30) if short > 0 else np.flatnonzero(visits > 1)
        visits[rng.choice(room, abs(short), replace=False)] += 1 if short > 0 else -1
    ids = rng.permutation(np.repeat(np.arange(patients, dtype=np.int64), visits))
    ward = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(WARDS), n, dtype=np.int32)),
                                          pa.array(WARDS)).cast(pa.string())
    table = pa.table({"patient_id": ids, "ward": ward, "value": rng.uniform(*VALUE_BOUNDS, n)})
    pq.write_table(table, path, row_group_size=10**6)
    return {"path": path, "rows": n, "patients": patients, "bytes": os.path.getsize(path),
            "visits_per_patient": {"mean": float(visits.mean()), "median": float(np.median(visits)),
                                   "max": int(visits.max()),
                                   "share_over_max_rows": float((visits > MAX_ROWS).mean())},
            "rows_kept_by_bounding": int(np.minimum(visits, MAX_ROWS).sum())}


# ----------------------------------------------------------------------------------- plain PySpark
def plain_spark_calls(spark, path: str) -> dict:
    """Plain PySpark without DP: each call reads the Parquet file and brings the answer to the driver.
    The bounded variants keep at most MAX_ROWS random rows per patient (window row_number over rand()),
    the same contribution bounding a DP engine does, without noise."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def bounded():
        data = spark.read.parquet(path)
        window = Window.partitionBy("patient_id").orderBy(F.rand())
        return data.withColumn("_rn", F.row_number().over(window)).where(F.col("_rn") <= MAX_ROWS)

    return {
        "count_rows": lambda: spark.read.parquet(path).count(),
        "count": lambda: bounded().count(),
        "gcount_unbounded": lambda: spark.read.parquet(path).groupBy("ward").count().collect(),
        "gcount": lambda: bounded().groupBy("ward").count().collect(),
        "gmean": lambda: bounded().groupBy("ward").agg(F.avg("value")).collect(),
    }


# --------------------------------------------------------------------------------- our two engines
def _release_calls(dp, frame) -> dict:
    def spend(fn):
        def run():
            with dp.spending(epsilon=EPSILON):
                return fn()
        return run

    return {
        "count": spend(lambda: len(frame)),
        "gcount": spend(lambda: frame.groupby("ward").size()),
        "gmean": spend(lambda: frame.groupby("ward")["value"].mean()),
    }


def protect_kwargs(name: str) -> dict:
    return dict(name=f"{name}_{RUN_ID}", epsilon=BIG_BUDGET, privacy_unit="patient_id", max_rows_per_unit=MAX_ROWS,
                categories={"ward": WARDS}, bounds={"value": VALUE_BOUNDS})


def protect_spark(dp, spark, path: str):
    """jupyter-dpmagic's Spark engine on the Parquet file; raises when the engine is not available."""
    return dp.protect(path, engine="spark", spark=spark, **protect_kwargs("spark_visits"))


# ---------------------------------------------------------------------------------------- anchors
def anchor_venv(anchor: str, log) -> dict:
    """Create (or reuse) the anchor's virtualenv under CACHE; returns {"python": ...} or {"error": ...}."""
    script, requirements, check, _, _ = ANCHORS[anchor]
    venv = CACHE / anchor
    python = venv / "bin" / "python"
    info = {"venv": str(venv), "requirements": requirements}

    def importable() -> bool:
        try:
            return subprocess.run([str(python), "-c", check], capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    if python.exists() and importable():
        info["created"] = False
    else:
        log(f"  creating {venv} (pip install {' '.join(requirements)}) ...")
        start = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        base = os.environ.get("DPBENCH_ANCHOR_PYTHON") or getattr(sys, "_base_executable", sys.executable)
        try:
            subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], capture_output=True,
                                  text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {**info, "error": f"does not install: pip timed out after {INSTALL_TIMEOUT_S} s"}
        except (OSError, subprocess.SubprocessError) as exc:
            return {**info, "error": f"does not install: {_error_text(exc)}"}
        info["install_s"] = time.perf_counter() - start
        if proc.returncode != 0 or not importable():
            lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip() and "is ignored" not in ln]
            return {**info, "error": "does not install: " + (" | ".join(lines[-3:]) or f"exit {proc.returncode}")}
        info["created"] = True
    info["python"] = str(python)
    try:
        freeze = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True,
                                text=True, timeout=120)
        wanted = {"tmlt.analytics", "tmlt-analytics", "tmlt.core", "tmlt-core", "pipeline-dp", "pipeline_dp",
                  "python-dp", "pyspark", "pandas", "numpy", "pyarrow"}
        info["packages"] = {p["name"]: p["version"] for p in json.loads(freeze.stdout)
                            if p["name"].lower() in wanted}
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info["packages"] = f"unavailable ({_error_text(exc)})"
    return info


def run_anchor(anchor: str, python: str, path: str, query: str, cfg: dict) -> dict:
    """One query of one anchor in a subprocess (its own Spark session); reports a timeout or a failure."""
    script = ANCHOR_DIR / ANCHORS[anchor][0]
    timeout = cfg[f"{anchor}_timeout_s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK_HOME", "PYTHONPATH",
                                                                   "VIRTUAL_ENV"))}
    env["PATH"] = f"{Path(python).parent}:{env.get('PATH', '')}"
    cmd = [python, str(script), path, query, str(EPSILON), "--reps", str(cfg["anchor_reps"]),
           "--cap", str(cfg["anchor_cap_s"])]
    start = time.perf_counter()
    try:
        proc = _run_subprocess_group(cmd, timeout, env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "timed_out": True, "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-4:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-600:], "wall_s": wall}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = wall
    return result


def _run_subprocess_group(cmd, timeout, env):
    """subprocess.run with a process group of its own, killed whole (the JVM included) on timeout."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                pass
            proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


# ------------------------------------------------------------------------------------ measurement
def _java_version() -> str:
    try:
        proc = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60)
        return (proc.stderr or proc.stdout).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"unavailable ({_error_text(exc)})"


def _versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version(), "java": _java_version()}
    for dist in ("pyspark", "pandas", "pyarrow", "numpy", "jupyter-dpmagic"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def measure_in_process(cfg: dict, path: str, out: dict, log) -> None:
    """Plain PySpark, our Spark engine and our pandas engine, interleaved per query, in this process."""
    import jupyter_dpmagic as dp

    engines = out["engines"]
    ours_spark, ours_pandas = engines["spark_engine"], engines["pandas_engine"]
    try:
        spark, out["session_start_s"], _ = spark_session("dpmagic-bench", extra={
            # pandas -> Spark transfers (if an engine makes any): one local relation, large Arrow batches.
            "spark.sql.execution.arrow.localRelationThreshold": "0",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(min(10**6, max(10**4, cfg["n"] // 2)))})
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"no Spark session: {_error_text(exc)}"
        log(f"  ERROR {out['error']}")
        return
    log(f"  Spark session started in {out['session_start_s']:.1f} s (local[2], pyspark {spark.version})")
    try:
        calls = {("plain_spark", q): fn for q, fn in plain_spark_calls(spark, path).items()}
        # Our Spark engine: guarded, so that the anchors are still measured if it fails here.
        try:
            start = time.perf_counter()
            frame = protect_spark(dp, spark, path)
            ours_spark["protect_s"] = time.perf_counter() - start
            calls.update({("spark_engine", q): fn for q, fn in _release_calls(dp, frame).items()})
        except Exception as exc:  # noqa: BLE001
            ours_spark["error"] = f"failed: {_error_text(exc)}"
            log(f"  our Spark engine: {ours_spark['error']}")
        # Our pandas engine: the same file read into pandas once (the read and protect() are not per query).
        try:
            import pandas as pd

            start = time.perf_counter()
            df = pd.read_parquet(path)
            ours_pandas["read_s"] = time.perf_counter() - start
            start = time.perf_counter()
            pframe = dp.protect(df, **protect_kwargs("pandas_visits"))
            ours_pandas["protect_s"] = time.perf_counter() - start
            del df
            calls.update({("pandas_engine", q): fn for q, fn in _release_calls(dp, pframe).items()})
        except Exception as exc:  # noqa: BLE001
            ours_pandas["error"] = _error_text(exc)
            log(f"  our pandas engine: ERROR {ours_pandas['error']}")
        for query in ("count_rows", "count", "gcount", "gmean"):
            wanted = (query, "gcount_unbounded") if query == "gcount" else (query,)
            group = {k: fn for k, fn in calls.items() if k[1] in wanted}
            log(f"  {SHORT[query]}: {', '.join(e if q == query else f'{e} ({SHORT[q]})' for e, q in group)} "
                f"(one warm-up call each, then {cfg['reps']} interleaved rounds)")
            stats = round_robin({f"{e}/{q}": fn for (e, q), fn in group.items()}, cfg["reps"])
            for key, entry in stats.items():
                engine, q = key.split("/")
                engines[engine][q] = entry
                if "error" in entry:
                    log(f"    {engine} {q}: ERROR {entry['error']}")
    finally:
        calls = group = frame = pframe = None  # noqa: F841
        gc.collect()
        spark.stop()


def measure(cfg: dict, log=print) -> dict:
    """The whole Spark measurement; returns the dict stored under "spark" in the JSON."""
    started = time.perf_counter()
    out = {"config": dict(cfg), "epsilon_per_release": EPSILON, "max_rows_per_unit": MAX_ROWS,
           "versions": _versions(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
           "engines": {"plain_spark": {}, "spark_engine": {}, "pandas_engine": {}, "tumult": {}, "pipelinedp": {}}}
    tmp = tempfile.mkdtemp(prefix="dpbench-spark-data-")
    try:
        log(f"\n== Spark: {cfg['n']:,} rows, local[2], epsilon {EPSILON:g} per release (load average "
            f"{out['loadavg_start'][0]:.2f}) ==")
        start = time.perf_counter()
        out["data"] = write_visits(os.path.join(tmp, "visits.parquet"), cfg["n"], cfg["patients"], seed=7)
        out["data"]["build_s"] = time.perf_counter() - start
        out["pipelinedp_data"] = write_visits(os.path.join(tmp, "visits_small.parquet"), cfg["pipelinedp_n"],
                                              cfg["pipelinedp_patients"], seed=8)
        data = out["data"]
        log(f"  data: {data['rows']:,} rows of {data['patients']:,} patients ({data['bytes'] / 2**20:.0f} MiB "
            f"Parquet, built in {data['build_s']:.1f} s); visits per patient mean "
            f"{data['visits_per_patient']['mean']:.1f}, max {data['visits_per_patient']['max']}; "
            f"{data['rows_kept_by_bounding']:,} rows left after at most {MAX_ROWS} per patient")
        # Anchor environments first: an install must not run during a timing.
        venvs = {}
        for anchor in [a for a in ANCHORS if a in cfg["anchors"]]:
            venvs[anchor] = out["engines"][anchor]["environment"] = anchor_venv(anchor, log)
            if "error" in venvs[anchor]:
                log(f"  {ANCHOR_LABELS[anchor]}: {venvs[anchor]['error']}")
        measure_in_process(cfg, data["path"], out, log)
        gc.collect()
        for anchor, (_, _, _, queries, rows_key) in ANCHORS.items():
            entry = out["engines"][anchor]
            if anchor not in cfg["anchors"]:
                entry["error"] = "not run (--anchors)"
                continue
            if "error" in venvs[anchor]:
                entry["error"] = venvs[anchor]["error"]
                continue
            path = data["path"] if rows_key == "n" else out["pipelinedp_data"]["path"]
            for query in queries:
                log(f"  {ANCHOR_LABELS[anchor]} {query} on {cfg[rows_key]:,} rows ...")
                result = entry[query] = run_anchor(anchor, venvs[anchor]["python"], path, query, cfg)
                if "error" in result:
                    log(f"    {result['error']}")
                else:
                    log(f"    {fmt_time(result['median_s'])} per query (first {fmt_time(result['first_s'])}, "
                        f"{result['reps']} timed, session start {result['session_start_s']:.1f} s)")
                    entry.setdefault("versions", result.get("versions"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()
    out["elapsed_s"] = time.perf_counter() - started
    summarise(out)
    return out


def summarise(out: dict) -> None:
    """Rows per second and ratios (to plain Spark on the same query, to Tumult on the same query and rows)."""
    engines = out["engines"]
    n = out["config"]["n"]
    plain, tumult = engines["plain_spark"], engines["tumult"]
    for name, entry in engines.items():
        for query, stats in entry.items():
            if not isinstance(stats, dict) or "median_s" not in stats:
                continue
            rows = stats.get("rows", n)
            stats["rows"] = rows
            stats["rows_per_s"] = rows / stats["median_s"] if stats["median_s"] > 0 else None
            base = plain.get(query, {})
            if rows == n and "median_s" in base and name != "plain_spark":
                stats["ratio_plain_spark"] = stats["median_s"] / base["median_s"]
            ref = tumult.get(query, {})
            if "median_s" in ref and ref.get("rows") == rows and name != "tumult":
                stats["ratio_tumult"] = stats["median_s"] / ref["median_s"]


ENGINE_ROWS = [("spark_engine", "jupyter-dpmagic, Spark engine"), ("pandas_engine", "jupyter-dpmagic, pandas engine"),
               ("tumult", "Tumult Analytics"), ("pipelinedp", "PipelineDP (Spark backend)"),
               ("plain_spark", "plain PySpark, no DP")]


def print_report(out: dict) -> None:
    engines = out["engines"]
    print("\nSpark results: seconds per query (median after one warm-up), rows per second; ratios to plain "
          "PySpark doing the same bounding without noise, and to Tumult Analytics (same query, same rows)")
    for query, label in QUERIES:
        print(f"  {SHORT[query]:<25} {label}" + (" (Tumult and plain PySpark only)" if query == "count_rows" else ""))
    print(f"  {SHORT['gcount_unbounded']:<25} plain PySpark groupBy('ward').count() on all rows, for reference")
    rows = []
    for engine, label in ENGINE_ROWS:
        entry = engines.get(engine, {})
        for query in [q for q, _ in QUERIES] + ["gcount_unbounded"]:
            stats = entry.get(query)
            if stats is None:
                if query == "gcount_unbounded" or engine in ("spark_engine", "pandas_engine") and query == "count_rows":
                    continue
                if engine in ("pipelinedp",) and query == "count_rows":
                    continue
                stats = {"error": entry.get("error", "not run")}
            if "error" in stats:
                rows.append([label, SHORT[query], "-", "-", "-", "-", "-", stats["error"][:90]])
                continue
            note = f"{stats.get('reps', 0)} timed" + (", warm-up only" if stats.get("reps") == 0 else "")
            if "session_start_s" in stats:
                note += f"; session start {stats['session_start_s']:.1f} s"
            rows.append([label, SHORT[query], f"{stats['rows']:,}", fmt_time(stats["median_s"]),
                         fmt_rate(stats["rows_per_s"]),
                         fmt_ratio(stats.get("ratio_plain_spark")), fmt_ratio(stats.get("ratio_tumult")), note])
    print_table(["engine", "query", "rows", "s/query", "rows/s", "vs plain", "vs Tumult", "note"], rows,
                ["<", "<"] + [">"] * 5 + ["<"])
    for engine in ("spark_engine", "pandas_engine"):
        entry = engines.get(engine, {})
        extra = ", ".join(f"{k} {fmt_time(entry[k])}" for k in ("read_s", "protect_s") if k in entry)
        if extra:
            print(f"  {engine}: {extra} (once, not per query)")
    if "session_start_s" in out:
        print(f"  Spark session start (this process): {out['session_start_s']:.1f} s, not in the per-query times")
    for anchor in ANCHORS:
        env = engines.get(anchor, {}).get("environment", {})
        if env.get("packages"):
            print(f"  {ANCHOR_LABELS[anchor]}: " + ", ".join(f"{k} {v}" for k, v in sorted(env["packages"].items()))
                  + f" (venv {env['venv']})")
    print(f"  elapsed {out.get('elapsed_s', 0):.0f} s; load average {out['loadavg_start'][0]:.2f} at the start, "
          f"{out.get('loadavg_end', [math.nan])[0]:.2f} at the end")


def evaluate_goals(out: dict) -> list[dict]:
    """Goal: our Spark engine faster per query than Tumult Analytics on the same data and machine."""
    goals = []
    if not out:
        return goals
    engines = out["engines"]
    for query, label in QUERIES[1:]:
        goal = f"Spark: {label}, our Spark engine faster than Tumult Analytics ({out['config']['n']:,} rows)"
        ours, theirs = engines["spark_engine"].get(query, {}), engines["tumult"].get(query, {})
        if "median_s" not in ours:
            goals.append({"goal": goal, "measured": (ours.get("error") or engines["spark_engine"].get("error")
                                                     or "not run")[:80], "status": "n/a"})
        elif "median_s" not in theirs:
            goals.append({"goal": goal, "measured": f"ours {fmt_time(ours['median_s'])}, Tumult: "
                          f"{(theirs.get('error') or 'not run')[:60]}", "status": "n/a"})
        else:
            ratio = ours["median_s"] / theirs["median_s"]
            goals.append({"goal": goal, "measured": f"{fmt_time(ours['median_s'])} vs {fmt_time(theirs['median_s'])} "
                          f"({ratio:.2f}x)", "status": "PASS" if ratio < 1 else "FAIL"})
    return goals


# --------------------------------------------------------------------------------------------- main
def run(quick: bool = False, log=print, rows: int | None = None, anchors=tuple(ANCHORS)) -> dict:
    """Entry point for bench/run.py --spark: measure, print the table, return the "spark" dict."""
    cfg = dict(QUICK if quick else FULL, anchors=list(anchors))
    if rows:  # a smaller run (for trying the set-up): PipelineDP gets a tenth of the rows
        cfg.update(n=rows, patients=max(1, rows // 10), pipelinedp_n=max(10, rows // 10),
                   pipelinedp_patients=max(1, rows // 100))
    if "DPMAGIC_LEDGER" not in os.environ:
        ledger = tempfile.mkdtemp(prefix="dpbench-spark-ledger-")
        import atexit

        atexit.register(shutil.rmtree, ledger, True)
        os.environ["DPMAGIC_LEDGER"] = os.path.join(ledger, "ledger.sqlite")
    try:
        out = measure(cfg, log)
    except Exception as exc:  # noqa: BLE001 - the rest of the benchmark's results must still be written
        traceback.print_exc()
        out = {"config": cfg, "error": _error_text(exc), "engines": {}}
        return out
    print_report(out)
    out["goals"] = evaluate_goals(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1e6 rows (PipelineDP 1e5), fewer repetitions")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.json"),
                        help="JSON to merge the results into (under 'spark')")
    parser.add_argument("--rows", type=int, help="rows of the Parquet file instead of 1e7 (1e6 with --quick)")
    parser.add_argument("--anchors", default=",".join(ANCHORS),
                        help=f"comma-separated subset of {','.join(ANCHORS)}, or 'none'")
    args = parser.parse_args(argv)
    anchors = [a.strip() for a in args.anchors.split(",") if a.strip() and a.strip() != "none"]
    unknown = set(anchors) - set(ANCHORS)
    if unknown:
        parser.error(f"unknown anchors: {', '.join(sorted(unknown))}")
    out = run(args.quick, log=lambda text: print(text, flush=True), rows=args.rows, anchors=anchors)
    path = Path(args.out)
    merged = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except ValueError:
            merged = {}
    merged["spark"] = out
    goals = [g for g in merged.get("goals", []) if not str(g.get("goal", "")).startswith("Spark:")]
    merged["goals"] = goals + out.get("goals", [])
    print("\n== Goals (Spark) ==")
    print_table(["goal", "measured", "status"], [[g["goal"], g["measured"], g["status"]]
                                                  for g in out.get("goals", [])], ["<"] * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, default=str))
    print(f"\nresults merged into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
