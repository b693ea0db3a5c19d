"""One local SparkSession for the tests that need Spark (skipped when pyspark or Java is missing).

Set ``DPMAGIC_REQUIRE_SPARK=1`` to make a missing pyspark or Java a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

__all__ = ["spark", "spark_available"]


def _missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed"
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and os.path.exists(os.path.join(java_home, "bin", "java"))) and shutil.which("java") is None:
        return "no Java runtime found (set JAVA_HOME or put java on PATH)"
    return None


def spark_available() -> bool:
    return _missing() is None


@pytest.fixture(scope="session")
def spark():
    reason = _missing()
    if reason is not None:
        if os.environ.get("DPMAGIC_REQUIRE_SPARK") == "1":
            pytest.fail(f"Spark is required (DPMAGIC_REQUIRE_SPARK=1) but {reason}")
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    scratch = tempfile.mkdtemp(prefix="dpmagic-spark-")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    java_options = f"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.io.tmpdir={scratch}"
    session = (
        SparkSession.builder.master("local[2]").appName("dpmagic-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", "512m")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.executor.extraJavaOptions", java_options)
        .config("spark.local.dir", scratch)
        .config("spark.sql.warehouse.dir", os.path.join(scratch, "warehouse"))
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.localRelationThreshold", "0")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        shutil.rmtree(scratch, ignore_errors=True)
