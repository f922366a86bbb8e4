"""Steps onto and off a lower bound at a converged point: a variance parameter at zero has a
zero gradient whether or not moving off zero lowers the deviance, and one practically at zero
is set to it (clean singular fits)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["escape_bound", "snap_to_bound", "at_bound"]


def at_bound(x, lower):
    """Indices (ints) of the entries of ``x`` at or below a finite lower bound.

    ``np.flatnonzero(np.isfinite(lower) & (x <= lower))`` as a list, compared in Python floats
    (the same comparisons): every fit ends with it, on a handful of entries, where the two
    NumPy calls and their wrappers cost several times the loop."""
    return [i for i, (xi, lo) in enumerate(zip(x.tolist(), lower.tolist()))
            if math.isfinite(lo) and xi <= lo]


def escape_bound(fun, x, fx, lower, steps=(1e-3, 1e-2, 1e-1), tol=1e-8):
    """A better point off the lower bound for entries sitting on it, or None.

    A variance parameter at zero has zero gradient whether or not moving off
    zero lowers the objective (the deviance is even in it), so a gradient
    method that reaches the bound (a projected step can land there) stays.
    This probes each such entry at a few small positive offsets.

    Parameters
    ----------
    fun : callable
        Objective; may return ``(value, gradient)``.
    x, fx : ndarray, float
        The converged point and its value.
    lower : ndarray
        Lower bounds (-inf where there is none).

    Returns
    -------
    (x_new, f_new) or None
    """
    best = None
    for i in np.flatnonzero(np.isfinite(lower) & (x <= lower + 1e-10)):
        for h in steps:
            trial = np.array(x, dtype=float)
            trial[i] = lower[i] + h
            out = fun(trial)                   # a value, or (value, gradient)
            ft = float(out[0] if isinstance(out, tuple) else out)
            if ft < fx - tol and (best is None or ft < best[1]):
                best = (trial, ft)
    return best


def snap_to_bound(fun, x, fx, lower, tol, width=1e-4):
    """Entries less than ``width`` above their lower bound set to it where the objective rises
    by at most ``tol``: a variance parameter that is practically zero becomes zero (clean
    singular fits).

    ``fun`` may return ``(value, gradient)``.  Returns ``(x, fx, snapped, nfev)``: the new point
    and value, the indices set to their bound and the number of evaluations.
    """
    snapped = []
    nfev = 0
    # (Python floats: the same comparisons, without NumPy calls on a handful of entries)
    for i, (xi, lo) in enumerate(zip(x.tolist(), lower.tolist())):
        if math.isfinite(lo) and lo < xi < lo + width:
            trial = x.copy()
            trial[i] = lo
            out = fun(trial)                   # a value, or (value, gradient)
            ft = float(out[0] if isinstance(out, tuple) else out)
            nfev += 1
            if ft <= fx + tol:
                x, fx = trial, ft
                snapped.append(int(i))
    return x, fx, snapped, nfev
