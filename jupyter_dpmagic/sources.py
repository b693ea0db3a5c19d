"""What ``dp.protect`` accepts: a pandas DataFrame, a Spark DataFrame, or a Parquet path for Spark.

The answer is what the session protects: the pandas frame itself (the local engine), or a Spark
engine over the table, which then stays on the cluster (this process keeps its columns and dtypes).
"""

from __future__ import annotations

import os

import pandas as pd

from .errors import PolicyError

__all__ = ["ENGINES", "source"]

ENGINES = ("pandas", "spark")


def source(data, *, engine: str | None = None, spark=None):
    """The pandas frame to protect, or a Spark engine holding the table.

    Parameters
    ----------
    data : pandas.DataFrame, pyspark.sql.DataFrame, str or path
        The table; a path is a Parquet file (or directory) read by Spark.
    engine : {"pandas", "spark"}, optional
        Where releases are computed; by default where the data already is.
    spark : pyspark.sql.SparkSession, optional
        The session to read a path with (the active one by default).
    """
    if engine is not None and engine not in ENGINES:
        raise PolicyError(f"engine= is 'pandas' or 'spark' (got {engine!r}).")
    spark_frame = type(data).__module__.startswith("pyspark.sql")
    if isinstance(data, (str, os.PathLike)):
        if engine != "spark":
            raise PolicyError(f"protect() got a path ({os.fspath(data)!r}): pass engine='spark' to read it with "
                              "Spark, or read it into pandas first (pd.read_parquet(path)).")
        engine_class = _spark_engine()
        return engine_class.from_parquet(spark or _active_session(), os.fspath(data))
    if spark_frame:
        if engine == "pandas":
            raise PolicyError("this is a Spark DataFrame: protect it with engine='spark' (the default for Spark "
                              "data), or bring it into pandas yourself (df.toPandas()) if it fits in memory.")
        return _spark_engine()(data)
    if isinstance(data, pd.DataFrame) and engine == "spark":
        engine_class = _spark_engine()
        return engine_class((spark or _active_session()).createDataFrame(data))
    return data


def _spark_engine():
    try:
        from .engine.spark import SparkEngine
    except ImportError:
        raise PolicyError("engine='spark' needs pyspark (pip install pyspark) and Java 17 or newer.") from None
    return SparkEngine


def _active_session():
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        raise PolicyError("engine='spark' needs a running SparkSession: create one "
                          "(SparkSession.builder.getOrCreate()) or pass spark=session.")
    return session
