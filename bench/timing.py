"""Shared by the benchmarks: interleaved rounds of fixed-length trials (these machines are noisy)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of `fn` per second over one trial of `seconds`."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def interleaved(paths: Mapping[str, Callable[[], object]], rounds: int, seconds: float,
                per_call: int = 1) -> dict[str, list[float]]:
    """Each path once per round, in turn, so drift in machine speed hits them all alike."""
    results: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            results[name].append(rate(fn, seconds) * per_call)
    return results


def print_rates(results: dict[str, list[float]], baseline: str, unit: str, decimals: int = 0) -> None:
    """Median, range and ratio to `baseline` per path; `decimals` for slow paths (a few calls/s)."""
    base = statistics.median(results[baseline])
    d = decimals
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:34s} {med:10.{d}f} {unit}  (min {min(values):.{d}f}, max {max(values):.{d}f})  "
              f"ratio vs {baseline} {med / base:.2f}x")
