"""Timing helper shared by the benchmark scripts (imported as ``_timing``: the scripts run as
``python benchmarks/bench_*.py``, so this directory is first on ``sys.path``)."""
import time

import numpy as np


def best_time(fn, repeat):
    """(best wall-clock seconds of ``repeat`` calls of ``fn()``, the last call's result)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
