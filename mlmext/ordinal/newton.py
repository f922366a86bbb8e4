"""Newton's method with the exact Hessian of the Laplace log-likelihood for a single scalar term.

``clmm``'s usual model, ``(1 | g)``: the Hessian comes from the derivatives of the interval
probabilities up to the fourth order (:class:`_ScalarLaplace`), so Newton needs no difference
Hessian and its last Hessian gives the standard errors.
"""
from __future__ import annotations

import copy
from math import comb

import numpy as np

from ..optimize import backtrack
from .clm import _spd_solve
from .conditional import _log_interval_derivatives
from .links import _CumulativeLink


class _ScalarLaplace:
    """Exact gradient and Hessian of the Laplace log-likelihood for a single scalar term.

    With one grouping factor and one random effect per level the Laplace log-likelihood is
    ``sum_g G_g(u~_g) - log M_g / 2``: ``G_g(u) = sum_{i in g} l_i - u^2 / 2`` is the penalized
    log-likelihood of level ``g``, ``u~_g`` its maximizer and ``M_g = -G_g''(u~_g)``.
    Differentiating twice through the modes (implicit function theorem, ``d u~ / dz =
    G_uz / M``) gives the Hessian in ``z = (alpha, beta, theta)`` from the derivatives of ``G``
    up to the fourth order in ``u`` and the second in ``z``.  An observation enters them only
    through its interval ends ``a = theta_y - eta`` and ``b = theta_{y-1} - eta`` (``u`` and
    ``l`` of :class:`CumulativeLinkConditional`; ``u`` is the random effect here), which are
    linear in ``z`` and ``u`` except for ``eta = ... + theta z_i u``: they are sums of the
    partial derivatives of ``log p(a, b)`` (:func:`_log_interval_derivatives`) times the
    directions ``da/dz``, ``db/dz`` and ``da/du = db/du = -theta z_i``.  One call costs about
    as much as one evaluation of the gradient (clmm differentiates numerically instead).

    Arrays keep the observations in the last axis (``(P, n)``), for fast broadcasting.
    """

    def __init__(self, model):
        blk = model.re_design.blocks[0]
        k, p = model.thr.k, model.k_fe
        self.P = P = k + p + 1
        Ju, Jl = model._jacobians()
        n = Ju.shape[0]
        # d a / dz and d b / dz through the thresholds; d eta / dz (theta's row set per call)
        self.TaT, self.TbT, self.ET = np.zeros((P, n)), np.zeros((P, n)), np.zeros((P, n))
        self.TaT[:k], self.TbT[:k] = Ju[:, :k].T, Jl[:, :k].T
        if p:
            self.ET[k:k + p] = model.exog.T
        zx = np.asarray(blk.X[:, 0], dtype=float)
        self.zx = zx
        self.zx_pow = None if np.all(zx == 1.0) else np.array([zx ** s for s in range(1, 5)])
        self.codes, self.m = blk.codes, blk.m
        self.weights = model.cond.weights
        # per-level sums: reduceat over the observations sorted by level
        counts = np.bincount(self.codes, minlength=self.m)
        order = np.argsort(self.codes, kind="stable")
        self._order = None if np.array_equal(order, np.arange(n)) else order
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._reduceat = bool(counts.min() > 0)        # (empty levels: np.add.at)

    def workspace(self):
        """A copy for one deviance: the precomputed directions are shared (read-only); ``ET``,
        whose theta row each call rewrites, is the copy's own."""
        new = copy.copy(self)
        new.ET = self.ET.copy()
        return new

    def _level_sums(self, arr):
        """Sums over the observations of each level, along the last axis: (..., n) -> (..., m)."""
        if self._order is not None:
            arr = arr[..., self._order]
        if self._reduceat:
            return np.add.reduceat(arr, self._starts, axis=-1)
        out = np.zeros(arr.shape[:-1] + (self.m,))
        np.add.at(out, (Ellipsis, np.sort(self.codes)), arr)
        return out

    def derivatives(self, z, modes, cond):
        """Gradient (P,) and Hessian (P, P) of the log-likelihood at converged modes, and
        ``d u~ / dz`` (m, P) for first-order warm starts."""
        n = modes.eta.shape[0]
        kap = _log_interval_derivatives(cond.interval_moments(modes.eta)).reshape(25, n)
        L = _COMBINATIONS @ kap
        if self.weights is not None:
            L *= self.weights
        # with S = d_a + d_b (= -d / d eta): d_a S^s l, d_b S^s l, S^(s+1) l for s = 0..3 and
        # d_aa S^s l, d_ab S^s l, d_bb S^s l for s = 0..2
        da, db, ds = L[:12].reshape(3, 4, 1, n)
        second = L[12:].reshape(3, 3, n)
        lam, zx, codes = z[-1], self.zx, self.codes
        ET = self.ET
        ET[-1] = zx * modes.u[codes]                                  # d eta / d theta
        J = da * self.TaT + db * self.TbT - ds * ET                   # J[s] = d (S^s l_i) / dz
        s2 = ds[1, 0]                                                 # S^2 l = -w
        # per level, with d a / du = d b / du = -lam z_i: G_uz, G_uuz, G_uuuz (P, m) and
        # -G_uu = M, G_uuu, G_uuuu
        zp = self.zx_pow
        Jz = self._level_sums(J[1:] if zp is None else J[1:] * zp[:3, None, :])
        Sz = self._level_sums(ds[:, 0] if zp is None else ds[:, 0] * zp)
        Guz, Guuz, Guuuz = -lam * Jz[0], lam ** 2 * Jz[1], -lam ** 3 * Jz[2]
        M, g3, g4 = 1.0 - lam ** 2 * Sz[1], -lam ** 3 * Sz[2], lam ** 4 * Sz[3]
        Guz[-1] -= Sz[0]                                              # theta also moves da/du
        Guuz[-1] += 2.0 * lam * Sz[1]
        Guuuz[-1] -= 3.0 * lam ** 2 * Sz[2]
        Mi = 1.0 / M
        U = Guz * Mi                                                  # d u~ / dz
        # D = -log(M) / 2 as a function of (u, z): its derivatives
        Du = 0.5 * g3 * Mi
        Duu = 0.5 * g4 * Mi + 2.0 * Du * Du
        Duz = 0.5 * Mi * Guuuz + (Du * Mi) * Guuz
        grad = J[0].sum(axis=1) + (0.5 * Mi * Guuz + Du * U).sum(axis=1)
        # Hessian = G_zz + G_zu u~_z + D_zz + 2 D_zu u~_z + D_uu u~_z u~_z + D_u u~_zz.  Per
        # observation: G_zz, and G_uzz, G_uuzz (in u~_zz and D_zz) with weights D_u / M, 1 / 2M
        c1, c2 = (Du * Mi)[codes], (0.5 * Mi)[codes]
        q = -lam * zx
        haa, hab, hbb = second[:, 0] + (c1 * q) * second[:, 1] + (c2 * q * q) * second[:, 2]
        Am, Bm = self.TaT - ET, self.TbT - ET                         # d a / dz, d b / dz
        H = (haa * Am + hab * Bm) @ Am.T + (hab * Am + hbb * Bm) @ Bm.T
        v = J[1] @ (-c1 * zx) - J[2] @ (2.0 * c2 * q * zx)           # theta's own d q / d theta
        H[-1] += v
        H[:, -1] += v
        H[-1, -1] += 2.0 * float(c2 @ (zx * zx * s2))
        # per level: products of first derivatives
        W = Duz + (Du * Mi) * Guuz
        H += Guz @ U.T + 0.5 * (Guuz * (Mi * Mi)) @ Guuz.T + W @ U.T + U @ W.T \
            + ((Duu + Du * Mi * g3) * U) @ U.T
        return grad, H, U.T


def _combination_matrix():
    """Rows ``d_a^da d_b^db S^s log p`` (``S = d_a + d_b``) from the flattened (5, 5) kappa."""
    rows = ([(1, 0, s) for s in range(4)] + [(0, 1, s) for s in range(4)]
            + [(0, 0, s + 1) for s in range(4)]
            + [(da, db, s) for da, db in ((2, 0), (1, 1), (0, 2)) for s in range(3)])
    C = np.zeros((len(rows), 25))
    for r, (da, db, s) in enumerate(rows):
        for i in range(s + 1):
            C[r, (da + s - i) * 5 + db + i] += comb(s, i)
    return C


_COMBINATIONS = _combination_matrix()


def _uses_scalar_laplace(model):
    """A single scalar random-effects term and a link with ``d3pdf``: exact Hessian and Newton."""
    des = model.re_design
    return (len(des.blocks) == 1 and des.blocks[0].q == 1
            and type(model.link).d3pdf is not _CumulativeLink.d3pdf)


def _laplace_by_newton(model, obj, z0, attenuate, maxiter, tried):
    """The Newton stage of the Laplace fit for a single scalar term (:func:`_laplace_newton`).

    Returns its OptimizeResult; on success with ``x``, ``jac`` and ``hess_x`` (the starting
    matrix for AGQ) in internal coordinates besides ``x_r`` and ``hess`` in R's, and the modes
    at the optimum left in ``obj`` for warm starts; else ``x`` is the last iterate (R
    coordinates).  None when Newton does not apply or fails at the start.
    """
    if not _uses_scalar_laplace(model):
        return None
    thr, k, p = model.thr, model.thr.k, model.k_fe
    z0 = np.array(z0, dtype=float)
    if attenuate:
        z0[:k + p] *= _attenuation(model, z0[-1])
    opt = _laplace_newton(model, z0, maxiter=min(maxiter, 100))
    tried.append(("Newton (Laplace, exact Hessian)", bool(opt.success), int(opt.nfev)))
    if not opt.success:
        return opt if np.isfinite(opt.fun) else None
    z = opt.x
    x = np.concatenate([thr.psi(z[:k]), z[k:]])
    Jx = np.eye(z.size)                                          # d z / d x
    Jx[:k, :k] = thr.jacobian(x[:k])
    # at the optimum the gradient term of the change of coordinates vanishes
    opt.x_r, opt.x, opt.jac, opt.hess_x = z, x, Jx.T @ opt.jac, Jx.T @ opt.hess @ Jx
    obj.base, obj._fresh = (z.copy(), opt.modes, opt.fun), False
    return opt


def _attenuation(model, theta):
    """``sqrt(1 + theta^2 mean(z^2) / Var(F))``: about the factor by which a random effect of
    standard deviation ``theta |z|`` shrinks the coefficients of the model without it (exact for
    the probit link), so the clm estimates times it are a better start (one Newton step fewer
    on the wine data)."""
    zx = model.re_design.blocks[0].X[:, 0]
    return float(np.sqrt(1.0 + theta * theta * np.mean(zx * zx) / model.link.variance))


def _newton_direction(H, g):
    """``(-(H + tau D)^-1 g, tau)`` with the smallest ``tau`` in 0, 1e-3, 1e-2, ... that makes
    the matrix positive definite (``D`` the absolute diagonal of ``H``): the Newton step where
    ``H`` is positive definite, a shorter and more gradient-like one where it is not (near
    ``theta = 0`` the log-likelihood need not be concave in theta); ``(None, None)`` if none."""
    D = np.maximum(np.abs(np.diag(H)), 1e-8)
    for tau in (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        x = _spd_solve(H + np.diag(tau * D) if tau else H, g)
        if x is not None:
            return -x, tau
    return None, None


def _laplace_newton(model, z0, maxiter=100, dec_tol=1e-12):
    """Newton's method on the Laplace log-likelihood of a single scalar term.

    Steps use the exact Hessian (:class:`_ScalarLaplace`) in clmm's parameters ``z = (alpha,
    beta, theta)``, with backtracking; from the fit without random effects this takes about
    five steps where the quasi-Newton method takes eight and then seven more gradients for a
    difference Hessian.  The modes of a trial point start from their first-order prediction
    ``u~ + (d u~ / dz) dz``.  Converged when the Newton decrement ``g' H^-1 g / 2`` is below
    ``dec_tol`` (the estimates are then within ~1e-6 standard errors of the optimum).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` (R coordinates), ``fun`` (negative log-likelihood), ``jac``, ``hess`` (of the
        negative log-likelihood at ``x``), ``modes``, ``nit``, ``nfev``, ``success``.
        ``success`` is False when Newton cannot go on (a Hessian that is not positive
        definite, theta heading for its bound, a failed line search); the caller then uses
        the bounded quasi-Newton method, which also handles singular fits.
    """
    from scipy.optimize import OptimizeResult
    sl = model._scalar_laplace()
    k, p = model.thr.k, model.k_fe

    def value(z, u0):
        ll, modes = model.loglike_parts(z[:k], z[k:k + p], z[k + p:], u0=u0)
        ok = modes is not None and modes.converged and np.isfinite(ll)
        return (-ll if ok else np.inf), modes

    def result(success, message):
        return OptimizeResult(x=z, fun=f, jac=g, hess=H, modes=modes, nit=it, nfev=nfev,
                              success=success, message=message)

    z = np.array(z0, dtype=float)
    f, modes = value(z, None)
    nfev, it, g, H = 1, 0, None, None
    halvings = 0                    # consecutive steps that had to be cut to halve theta
    if not np.isfinite(f):
        return result(False, "non-finite log-likelihood at the starting values")
    for it in range(maxiter + 1):
        g, H, U = sl.derivatives(z, modes, model.cond)
        g, H = -g, -H
        if z[-1] < 1e-4:
            return result(False, "theta near its bound")
        d, tau = _newton_direction(H, g)
        if d is None:
            return result(False, "Hessian not positive definite")
        # theta at most halves per step (the log-likelihood is far from quadratic in theta
        # below its optimum); three halvings in a row: theta is heading for its bound
        if z[-1] + d[-1] < 0.5 * z[-1]:
            halvings += 1
            if halvings == 3:
                return result(False, "theta heading for 0 (a singular fit?)")
            d *= -0.5 * z[-1] / d[-1]
            tau = None
        else:
            halvings = 0
        slope = float(g @ d)
        if tau == 0.0 and -0.5 * slope < dec_tol:       # a full Newton step, H positive definite
            return result(True, "Newton decrement below tolerance")
        if it == maxiter:
            break
        def trial(t):
            zt = z + t * d
            if zt[-1] <= 0.0:                       # theta must stay positive: not evaluated
                return None
            ft, mt = value(zt, modes.u + U @ (zt - z))
            return ft, (zt, mt)

        ls = backtrack(trial, lambda t, ft, p: ft <= f + 1e-4 * t * slope)
        nfev += ls.evaluations
        if ls.t is None:
            return result(False, "line search failed to decrease the objective")
        f, (z, modes) = ls.value, ls.payload
    return result(False, "maximum number of iterations reached")
