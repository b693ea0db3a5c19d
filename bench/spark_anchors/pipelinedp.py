"""PipelineDP on Spark (its SparkRDDBackend): one query on a Parquet file, timed; prints one RESULT line of JSON.

    python pipelinedp.py PATH QUERY EPSILON [--reps 3] [--cap 120]

QUERY is one of
  count   DP count of rows (one public partition), at most 3 rows per patient (max_contributions=3);
  gcount  DP count per ward (10 public partitions), at most 3 rows per patient over all wards;
  gmean   DP mean of value in [0, 100] per ward, same bounding.
Laplace noise, pure epsilon (public partitions, so no delta). The rows go from the Parquet file to
an RDD of Python tuples, which is how PipelineDP's Spark backend takes its input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MAX_ROWS, VALUE_BOUNDS, WARDS, emit, spark_session, timed  # noqa: E402

QUERIES = ("count", "gcount", "gmean")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("query", choices=QUERIES)
    parser.add_argument("epsilon", type=float)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds of timed calls after the warm-up")
    args = parser.parse_args()
    result = {"anchor": "pipelinedp", "query": args.query, "epsilon": args.epsilon,
              "versions": {d: metadata.version(d) for d in ("pipeline-dp", "python-dp", "pyspark", "numpy")}}
    result["versions"]["python"] = sys.version.split()[0]
    spark, result["session_start_s"], _ = spark_session("pipelinedp")

    import pipeline_dp

    start = time.perf_counter()
    result["rows"] = spark.read.parquet(args.path).count()
    result["setup_s"] = time.perf_counter() - start
    grouped = args.query != "count"
    metric = pipeline_dp.Metrics.MEAN if args.query == "gmean" else pipeline_dp.Metrics.COUNT
    partitions = WARDS if grouped else ["all"]

    def release():
        # Everything per release: read the file into an RDD of (patient_id, ward, value), a fresh budget
        # accountant and engine, the aggregation, and the answer brought to the driver.
        rdd = spark.read.parquet(args.path).select("patient_id", "ward", "value").rdd.map(tuple)
        accountant = pipeline_dp.NaiveBudgetAccountant(total_epsilon=args.epsilon, total_delta=0)
        engine = pipeline_dp.DPEngine(accountant, pipeline_dp.SparkRDDBackend(spark.sparkContext))
        params = pipeline_dp.AggregateParams(
            metrics=[metric], noise_kind=pipeline_dp.NoiseKind.LAPLACE, max_contributions=MAX_ROWS,
            min_value=VALUE_BOUNDS[0] if metric == pipeline_dp.Metrics.MEAN else None,
            max_value=VALUE_BOUNDS[1] if metric == pipeline_dp.Metrics.MEAN else None)
        extractors = pipeline_dp.DataExtractors(
            privacy_id_extractor=lambda row: row[0],
            partition_extractor=(lambda row: row[1]) if grouped else (lambda row: "all"),
            value_extractor=lambda row: row[2])
        out = engine.aggregate(rdd, params, extractors, public_partitions=partitions)
        accountant.compute_budgets()
        return sorted((key, float(getattr(metrics, metric.name.lower()))) for key, metrics in out.collect())

    stats = timed(release, args.reps, args.cap)
    out = stats.pop("output")
    result.update(stats)
    result["answer"] = out[:10]
    emit(result)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
