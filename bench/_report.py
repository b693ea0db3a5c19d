"""What every benchmark script shares: interleaved timing, error text and tables."""

from __future__ import annotations

import gc
import math
import statistics
import time

__all__ = ["error_text", "fmt_time", "measure_round_robin", "print_table"]


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:500]


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
            stats[name] = {"error": error_text(exc)}
    for _ in range(reps):
        for name, fn in calls.items():
            if "error" in stats[name]:
                continue
            try:
                start = time.perf_counter()
                outputs[name] = fn()
                stats[name]["times_s"].append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001
                stats[name] = {"error": error_text(exc)}
    for entry in stats.values():
        if "error" not in entry:
            entry["median_s"] = statistics.median(entry["times_s"]) if entry["times_s"] else entry["first_s"]
    return stats, outputs


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


def print_table(headers, rows, aligns=None) -> None:
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(f"{str(h):{a}{w}}" for h, a, w in zip(headers, aligns, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(row, aligns, widths)))
