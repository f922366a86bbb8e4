"""Numerical derivatives: central differences refined by Richardson extrapolation (as numDeriv)."""
from __future__ import annotations

import numpy as np


def _steps(x, d, eps=1e-4, zero_tol=1.781e-5):
    x = np.asarray(x, dtype=float)
    return np.abs(d * x) + eps * (np.abs(x) < zero_tol)


def _richardson(est, r=4, v=2.0):
    """Extrapolate estimates ``est(k)`` made with steps h / v**k (error in even powers of h)."""
    a = [np.asarray(est(k), dtype=float) for k in range(r)]
    for m in range(1, r):
        fac = v ** (2 * m)
        a = [(fac * a[k + 1] - a[k]) / (fac - 1.0) for k in range(len(a) - 1)]
    return a[0]


def _jacobian(f, x, d=1e-4, r=4):
    """d f / d x for vector- (or matrix-) valued f; returns (size of f, len(x))."""
    x = np.asarray(x, dtype=float)
    h0 = _steps(x, d)

    def est(k):
        h = h0 / 2.0 ** k
        cols = []
        for i in range(x.size):
            e = np.zeros(x.size)
            e[i] = h[i]
            cols.append((np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2 * h[i]))
        return np.column_stack(cols)
    return _richardson(est, r)


def _hessian(f, x, d=0.1, r=4):
    """Hessian of a scalar function; relative steps ``d`` refined by Richardson extrapolation."""
    x = np.asarray(x, dtype=float)
    k = x.size
    h0 = _steps(x, d)
    f0 = f(x)

    def est(level):
        h = h0 / 2.0 ** level
        H = np.empty((k, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = h[i]
            H[i, i] = (f(x + e) - 2 * f0 + f(x - e)) / h[i] ** 2
            for j in range(i):
                ej = np.zeros(k)
                ej[j] = h[j]
                H[i, j] = H[j, i] = (f(x + e + ej) - f(x + e - ej) - f(x - e + ej) + f(x - e - ej)) / (4 * h[i] * h[j])
        return H
    return _richardson(est, r)
