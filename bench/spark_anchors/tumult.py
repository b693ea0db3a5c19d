"""Tumult Analytics on Spark: one query on a Parquet file, timed; prints one RESULT line of JSON.

    python tumult.py PATH QUERY EPSILON [--reps 3] [--cap 120]

QUERY is one of
  count_rows  DP count of rows, one row protected (AddOneRow);
  count       DP count of rows, a patient protected (AddRowsWithID), at most 3 rows per patient;
  gcount      DP count per ward (10 declared wards), same protection and bounding;
  gmean       DP mean of value in [0, 100] per ward, same protection and bounding.
Runs in the virtualenv that holds tmlt.analytics and the pyspark it pins (bench/spark.py makes it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MAX_ROWS, VALUE_BOUNDS, WARDS, emit, spark_session, timed  # noqa: E402

QUERIES = ("count_rows", "count", "gcount", "gmean")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("query", choices=QUERIES)
    parser.add_argument("epsilon", type=float)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds of timed calls after the warm-up")
    args = parser.parse_args()
    result = {"anchor": "tumult", "query": args.query, "epsilon": args.epsilon,
              "versions": {d: metadata.version(d) for d in ("tmlt.analytics", "tmlt.core", "pyspark", "pandas")}}
    result["versions"]["python"] = sys.version.split()[0]
    spark, result["session_start_s"], _ = spark_session("tumult")

    from tmlt.analytics import (AddOneRow, AddRowsWithID, KeySet, MaxRowsPerID, PureDPBudget, QueryBuilder,
                                Session)

    start = time.perf_counter()
    data = spark.read.parquet(args.path)
    result["rows"] = data.count()
    change = AddOneRow() if args.query == "count_rows" else AddRowsWithID(id_column="patient_id")
    session = Session.from_dataframe(privacy_budget=PureDPBudget(float("inf")), source_id="visits",
                                     dataframe=data, protected_change=change)
    keys = KeySet.from_dict({"ward": WARDS})
    result["setup_s"] = time.perf_counter() - start  # read the row count, build the Session (not timed below)

    def query():
        if args.query == "count_rows":
            return QueryBuilder("visits").count()
        bounded = QueryBuilder("visits").enforce(MaxRowsPerID(MAX_ROWS))
        if args.query == "count":
            return bounded.count()
        if args.query == "gcount":
            return bounded.groupby(keys).count()
        return bounded.groupby(keys).average("value", low=VALUE_BOUNDS[0], high=VALUE_BOUNDS[1])

    def release():
        # A new query object each time (as a user would write it); evaluate and bring the answer to the driver.
        return [tuple(r) for r in session.evaluate(query(), PureDPBudget(args.epsilon)).collect()]

    stats = timed(release, args.reps, args.cap)
    out = stats.pop("output")
    result.update(stats)
    result["answer"] = out[:10]
    emit(result)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
