"""Timing helper shared by the benchmark scripts (imported as ``_timing``: the scripts run as
``python benchmarks/bench_*.py``, so this directory is first on ``sys.path``)."""
import time

import numpy as np


def settle_allocator():
    """Put glibc's allocator in its adapted state before timing.

    glibc hands freed heap memory back to the system (and maps it in again, page by page, on
    the next allocation) until a block above its initial threshold (128 KiB) has been freed
    once; from then on its thresholds follow the block sizes in use.  Whether some earlier
    step of a process happened to free such a block decides whether every later fit
    page-faults its temporaries in again: measured on the clmm Hessian of ordsim, 634 page
    faults and 3-4x the time per evaluation, for the same code.  Freeing one 32 MB block
    first puts every run in the adapted state, so timings compare code, not the allocation
    histories of two processes.
    """
    np.ones(4_000_000).sum()


settle_allocator()


def best_time(fn, repeat):
    """(best wall-clock seconds of ``repeat`` calls of ``fn()``, the last call's result)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
