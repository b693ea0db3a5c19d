"""Shared by bench/spark.py and the anchor scripts next to this file: the Spark session every engine
uses (local mode, UI off, loopback only, temporary directories of its own) and the timing rule.

Only the standard library and pyspark: the anchor scripts run in their own virtualenvs, with the
pyspark version their library pins.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

WARDS = [f"ward_{i:02d}" for i in range(10)]
VALUE_BOUNDS = (0.0, 100.0)
MAX_ROWS = 3  # rows per patient in every bounded query


def spark_session(app: str, *, master: str = "local[2]", driver_memory: str = "6g", shuffle_partitions: int = 4,
                  extra: dict | None = None):
    """A local SparkSession with the settings that work on this kind of machine; its temp dir is removed at exit.

    Returns (session, seconds to start it, temp dir)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # this process's environment, not an inherited one
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    tmp = tempfile.mkdtemp(prefix=f"dpbench-spark-{app}-")
    import atexit

    atexit.register(shutil.rmtree, tmp, True)
    start = time.perf_counter()
    from pyspark.sql import SparkSession

    java_opts = f"-Djava.io.tmpdir={tmp}"
    builder = (SparkSession.builder.appName(app).master(master)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.memory", driver_memory)
               .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
               .config("spark.default.parallelism", str(shuffle_partitions))
               .config("spark.local.dir", tmp)
               .config("spark.sql.warehouse.dir", os.path.join(tmp, "warehouse"))
               .config("spark.driver.extraJavaOptions", java_opts)
               .config("spark.executor.extraJavaOptions", java_opts)
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    for key, value in (extra or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session, time.perf_counter() - start, tmp


def timed(fn, reps: int, cap_s: float) -> dict:
    """One warm-up call, then up to ``reps`` timed calls (fewer when they would take more than ``cap_s``;
    none when the warm-up alone took longer than ``cap_s``: then the warm-up is the measurement and
    ``reps`` is 0). Returns first_s, times_s, median_s, reps and the last output."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first > cap_s:
        reps = 0
    elif first * reps > cap_s:
        reps = max(1, int(cap_s / max(first, 1e-9)))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "times_s": times, "reps": reps,
            "median_s": statistics.median(times) if times else first, "output": out}


def emit(result: dict) -> None:
    """The one line bench/spark.py reads (the last line of stdout starting with RESULT)."""
    sys.stdout.flush()
    print("RESULT " + json.dumps(result, default=str), flush=True)


def parquet_rows(session, path: str) -> int:
    return session.read.parquet(path).count()
