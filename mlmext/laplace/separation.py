"""Whether a fixed-effects direction separates the data (a small linear program)."""
from __future__ import annotations


import numpy as np


# ----------------------------------------------------------------------------- separation
def separation_direction(G, C=None, tol=1e-6):
    """A direction of (quasi-)complete separation: ``d != 0`` with ``G d >= 0`` and ``C d >= 0``.

    The log-likelihood of a binary or ordinal model keeps increasing along such a ``d`` (each
    row of ``G`` is the direction in which one observation's probability grows), so the
    maximum likelihood estimates are infinite in it: the data are separated (Albert and
    Anderson 1984; the linear program of Konis 2007, as in R's ``detectseparation``).
    Solved as ``max sum(G d)`` subject to the constraints and ``|d_j| <= 1``.

    Parameters
    ----------
    G : ndarray (r, m)
        One row per observation (its direction of improvement); duplicate rows are merged.
    C : ndarray (c, m), optional
        Further constraints that do not count in the objective (increasing thresholds).
    tol : float
        ``max(G d)`` above ``tol`` (columns scaled to unit maximum) means separation.

    Returns
    -------
    ndarray or None
        The direction (``|d_j| <= 1``, in the scaled columns: only its pattern of zeros and
        signs is meaningful), or None when the data are not separated or the linear program
        could not be solved.
    """
    from scipy.optimize import linprog
    G = np.asarray(G, dtype=float)
    if G.size == 0:
        return None
    scale = np.max(np.abs(G), axis=0)
    if C is not None and len(C):
        scale = np.maximum(scale, np.max(np.abs(C), axis=0))
    scale[scale == 0] = 1.0
    Gs = np.unique(G / scale, axis=0)
    A = Gs if C is None or not len(C) else np.vstack([Gs, np.asarray(C, dtype=float) / scale])
    try:
        res = linprog(-Gs.sum(axis=0), A_ub=-A, b_ub=np.zeros(A.shape[0]),
                      bounds=[(-1.0, 1.0)] * G.shape[1], method="highs")
    except (ValueError, MemoryError):  # an LP the solver refuses: no verdict
        return None
    if res.status != 0 or res.x is None:
        return None
    d = res.x
    if np.max(Gs @ d) <= tol or np.min(A @ d) < -tol:
        return None
    d[np.abs(d) < tol] = 0.0
    return d
