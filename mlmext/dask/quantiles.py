"""Exact quantiles of a lazy Dask series in a few passes (the summary's scaled residuals).

Dask's own quantiles are approximate.  The exact ones are order statistics, and an order
statistic is found without sorting the data: a first pass counts the values and finds their
range; each further pass counts, for every order statistic still sought, the values in
``BINS`` equal-width bins of the value interval known to hold it, and narrows the interval to
the values in one bin.  Once an interval holds at most ``FETCH`` values, the next pass brings them to the
client, where they are sorted.  The quantiles are interpolated between order statistics as
``numpy.quantile`` (and R's ``quantile``, type 7) do, so they equal those of the computed
series.  With equal-width bins each histogram pass divides an interval's count by about
``BINS`` unless the values pile up in one bin, so 10^8 values take about four passes.
"""
from __future__ import annotations

import numpy as np

from .learn import tree_reduce

__all__ = ["exact_quantiles", "SUMMARY_PROBS"]

#: the summary's "Scaled residuals" (Min, 1Q, Median, 3Q, Max)
SUMMARY_PROBS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: bins of each histogram pass
BINS = 4096
#: values of one interval brought to the client
FETCH = 200_000
#: histogram passes before the values of the remaining intervals are fetched whatever their count
MAX_PASSES = 12


def _range_part(v):
    v = np.asarray(v, dtype=float)
    if v.size == 0:
        return (0, np.inf, -np.inf)
    return (v.size, float(v.min()), float(v.max()))


def _add_range(a, b):
    return (a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]))


def _inner_edges(lo, hi):
    """The ``BINS - 1`` interior edges of ``[lo, hi]``; bin ``j`` holds the values ``v`` with
    ``edges[j - 1] <= v < edges[j]`` (the first and last bins reach ``lo`` and ``hi``)."""
    return np.unique(np.linspace(lo, hi, BINS + 1)[1:-1])


def _scan_part(v, jobs):
    """For each job: ``("count", lo, hi)`` -> ``(counts, mins, maxs)`` of the values
    ``lo <= v <= hi`` per bin of the interval; ``("fetch", lo, hi)`` -> ``(values,)``."""
    v = np.asarray(v, dtype=float)
    out = []
    for kind, lo, hi in jobs:
        inside = v[(v >= lo) & (v <= hi)]
        if kind == "fetch":
            out.append((inside,))
            continue
        edges = _inner_edges(lo, hi)
        idx = np.searchsorted(edges, inside, side="right")
        mins, maxs = np.full(edges.size + 1, np.inf), np.full(edges.size + 1, -np.inf)
        np.minimum.at(mins, idx, inside)
        np.maximum.at(maxs, idx, inside)
        out.append((np.bincount(idx, minlength=edges.size + 1), mins, maxs))
    return out


def _add_scans(a, b):
    """Counts add, bounds take the extremes; fetched values are joined."""
    return [(np.concatenate([x[0], y[0]]),) if len(x) == 1 else
            (x[0] + y[0], np.minimum(x[1], y[1]), np.maximum(x[2], y[2])) for x, y in zip(a, b)]


def _scan(parts, jobs):
    import dask
    return tree_reduce([dask.delayed(_scan_part)(p, jobs) for p in parts], _add_scans).compute()


def exact_quantiles(series, probs):
    """``numpy.quantile(series.compute(), probs)`` without holding the series in one place.

    Parameters
    ----------
    series : dask.dataframe.Series
        Finite values; its partitions are computed once per pass.
    probs : sequence of float
        Probabilities in [0, 1].

    Returns
    -------
    quantiles : ndarray
    passes : int
        Passes over the series.
    """
    import dask
    parts = series.to_delayed()
    n, vmin, vmax = tree_reduce([dask.delayed(_range_part)(p) for p in parts], _add_range).compute()
    passes = 1
    if n == 0:
        raise ValueError("no values: the quantiles of an empty series are not defined")
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError("the series has non-finite values")
    h = (n - 1) * np.asarray(probs, dtype=float)
    lo_k = np.floor(h).astype(int)
    hi_k = np.minimum(lo_k + 1, n - 1)
    value = {0: vmin, n - 1: vmax}
    # each sought rank k (0-based order statistic): the closed value interval [lo, hi] that
    # holds it, the count of values below lo and the count inside
    state = {int(k): (vmin, vmax, 0, n) for k in np.union1d(lo_k, hi_k) if int(k) not in value}
    while state:
        for k, (lo, hi, _, _) in list(state.items()):
            if lo == hi:                       # one value fills the interval (ties)
                value[k] = lo
                del state[k]
        if not state:
            break
        jobs = []
        for lo, hi, _, size in state.values():
            job = ("fetch" if size <= FETCH or passes > MAX_PASSES else "count", lo, hi)
            if job not in jobs:
                jobs.append(job)
        results = _scan(parts, jobs)
        passes += 1
        for k, (lo, hi, below, size) in list(state.items()):
            kind = "fetch" if size <= FETCH or passes - 1 > MAX_PASSES else "count"
            res = results[jobs.index((kind, lo, hi))]
            if kind == "fetch":
                value[k] = float(np.sort(res[0])[k - below])
                del state[k]
                continue
            counts, mins, maxs = res
            cum = np.cumsum(counts)
            b = int(np.searchsorted(cum, k - below, side="right"))
            # the bin's own smallest and largest values: ties close the interval at once
            state[k] = (float(mins[b]), float(maxs[b]),
                        below + (int(cum[b - 1]) if b > 0 else 0), int(counts[b]))
    a = np.array([value[int(k)] for k in lo_k])
    b = np.array([value[int(k)] for k in hi_k])
    return a + (h - lo_k) * (b - a), passes

