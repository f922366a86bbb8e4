"""Numerical derivatives, in one place.

* :func:`jacobian`, :func:`hessian`: central differences refined by Richardson
  extrapolation (as R's numDeriv; lmerTest's Satterthwaite df, diagnostics);
* :func:`hessian_from_gradient`, :func:`central_gradient`, :func:`hessian_from_values`,
  :class:`CountingGradient`: plain differences with steps ``base * max(1, |x|)`` for the
  GLMM fit's Newton phase, where each evaluation solves PIRLS;
* :func:`hessian_central_gradient`: central differences of an exact gradient, for the
  Hessian the GLMM standard errors come from;
* :func:`gradient_hessian`: R ordinal's ``deriv12`` (the clmm Hessian).
"""
from __future__ import annotations

import numpy as np

__all__ = ["jacobian", "hessian", "hessian_from_gradient", "hessian_central_gradient",
           "central_gradient", "fd_steps",
           "hessian_from_values", "CountingGradient", "gradient_hessian"]



def _relative_steps(x, d, eps=1e-4, zero_tol=1.781e-5):
    x = np.asarray(x, dtype=float)
    return np.abs(d * x) + eps * (np.abs(x) < zero_tol)


def _richardson(est, r=4, v=2.0):
    """Extrapolate estimates ``est(k)`` made with steps h / v**k (error in even powers of h)."""
    a = [np.asarray(est(k), dtype=float) for k in range(r)]
    for m in range(1, r):
        fac = v ** (2 * m)
        a = [(fac * a[k + 1] - a[k]) / (fac - 1.0) for k in range(len(a) - 1)]
    return a[0]


def jacobian(f, x, d=1e-4, r=4):
    """d f / d x for vector- (or matrix-) valued f; returns (size of f, len(x))."""
    x = np.asarray(x, dtype=float)
    h0 = _relative_steps(x, d)

    def est(k):
        h = h0 / 2.0 ** k
        cols = []
        for i in range(x.size):
            e = np.zeros(x.size)
            e[i] = h[i]
            cols.append((np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2 * h[i]))
        return np.column_stack(cols)
    return _richardson(est, r)


def hessian(f, x, d=0.1, r=4):
    """Hessian of a scalar function; relative steps ``d`` refined by Richardson extrapolation."""
    x = np.asarray(x, dtype=float)
    k = x.size
    h0 = _relative_steps(x, d)
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


def fd_steps(x, bounds, base=1e-4):
    return np.array([base * max(1.0, abs(v)) for v in x])


def hessian_from_gradient(fg, x, g0, bounds, keep=None):
    """Forward differences of an exact gradient (one gradient per parameter); symmetrized.

    ``keep``: a dict that receives ``x`` and the gradients at ``x + h e_i`` (``"plus"``), which
    :func:`hessian_central_gradient` at the same point can reuse.
    """
    k = x.size
    H = np.empty((k, k))
    h = fd_steps(x, bounds)
    plus = []
    for i in range(k):
        xi = x.copy()
        xi[i] += h[i]
        fi, gi = fg(xi)
        plus.append((fi, gi))
        H[:, i] = (gi - g0) / h[i]
    if keep is not None:
        keep.clear()
        keep.update(x=np.array(x, dtype=float), plus=plus)
    return 0.5 * (H + H.T), k


def hessian_central_gradient(fg, x, g0, base=1e-4, plus=None):
    """Central differences of an exact gradient (two gradients per parameter); symmetrized.

    The error is O(h^2) (forward differences: O(h), ~1e-3 relative in the standard errors of
    a GLMM at h = 1e-4), as lme4's ``deriv12`` of the deviance, with the same steps across
    a bound (a variance parameter at 0: the deviance is defined on both sides).  A column
    whose one side is not finite falls back to the forward or backward difference.
    ``plus``: the ``(value, gradient)`` pairs at ``x + h e_i`` if already computed (the
    ``keep`` of :func:`hessian_from_gradient` at this ``x``; the same steps).

    Returns
    -------
    H : numpy.ndarray
    n : int
        Gradient evaluations.
    """
    x = np.asarray(x, dtype=float)
    k = x.size
    H = np.empty((k, k))
    h = fd_steps(x, None, base)
    n = 0
    for i in range(k):
        xp, xm = x.copy(), x.copy()
        xp[i] += h[i]
        xm[i] -= h[i]
        if plus is None:
            fp, gp = fg(xp)
            n += 1
        else:
            fp, gp = plus[i]
        fm, gm = fg(xm)
        n += 1
        if np.isfinite(fp) and np.isfinite(fm):
            H[:, i] = (gp - gm) / (2.0 * h[i])
        elif np.isfinite(fp):
            H[:, i] = (gp - g0) / h[i]
        elif np.isfinite(fm):
            H[:, i] = (g0 - gm) / h[i]
        else:
            H[:, i] = np.nan
    return 0.5 * (H + H.T), n


def central_gradient(f, x, bounds, base=1e-5):
    f0 = f(x)
    g = np.empty_like(x)
    h = fd_steps(x, bounds, base)
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[i] += h[i]
        xm[i] -= h[i]
        g[i] = (f(xp) - f(xm)) / (2 * h[i])
    return f0, g


class CountingGradient:
    """(value, central-difference gradient) of a function, counting function evaluations."""

    def __init__(self, f, bounds, base=1e-5):
        self.f, self.bounds, self.base, self.nfev = f, bounds, base, 0

    def __call__(self, x):
        self.nfev += 2 * x.size + 1
        return central_gradient(self.f, x, self.bounds, self.base)


def hessian_from_values(f, x, bounds, base=1e-3):
    """Central second differences of a function (2 k^2 evaluations)."""
    k = x.size
    h = fd_steps(x, bounds, base)
    f0 = f(x)
    H = np.empty((k, k))
    n = 1
    for i in range(k):
        for j in range(i, k):
            if i == j:
                xp, xm = x.copy(), x.copy()
                xp[i] += h[i]
                xm[i] -= h[i]
                H[i, i] = (f(xp) - 2.0 * f0 + f(xm)) / h[i] ** 2
                n += 2
            else:
                v = []
                for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                    z = x.copy()
                    z[i] += si * h[i]
                    z[j] += sj * h[j]
                    v.append(f(z))
                H[i, j] = H[j, i] = (v[0] - v[1] - v[2] + v[3]) / (4.0 * h[i] * h[j])
                n += 4
    return H, n


def gradient_hessian(fun, x, h, fx=None):
    """(gradient, Hessian) of a scalar function by central differences with steps ``h``
    (R ordinal's ``deriv12`` scheme; clmm's Hessian)."""
    k = x.size
    fx = fun(x) if fx is None else fx
    H = np.empty((k, k))
    g = np.empty(k)
    for j in range(k):
        e = np.zeros(k)
        e[j] = h[j]
        fp, fm = fun(x + e), fun(x - e)
        H[j, j] = (fp - 2.0 * fx + fm) / h[j] ** 2
        g[j] = (fp - fm) / (2.0 * h[j])
        for i in range(j):
            d = np.zeros(k)
            d[i] = h[i]
            H[i, j] = H[j, i] = (fun(x + e + d) - fun(x + e - d) - fun(x - e + d) + fun(x - e - d)) / \
                (4.0 * h[i] * h[j])
    return g, H
