"""PIRLS with a dense random-effects system whose single-observation weights may be negative.

glmmTMB's Laplace uses the observed information ``h_i = -d^2 l_i / d eta_i^2``, which for the
NB1 and beta families is negative for some observations (a count far above its mean, a
response far in a tail).  The blocked factorization of :mod:`mlmext.linalg` scales rows by
``sqrt(w)`` and cannot take that; the penalized information
``M = Lambda' Z' H Z Lambda + I`` is nonetheless positive definite near the modes, and for
designs with a moderate number of random effects it is factored here as a dense matrix.
:class:`DenseFactor` offers what the Laplace gradient, the warm start, AGQ and the
conditional variances read from a factor (``solve_re``, ``logdet_zz``, ``local_inverse``,
``condvar_u``, ``M1``).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg

from .. import laplace as lp

__all__ = ["DenseFactor", "dense_pirls", "dense_size_ok", "MAX_DENSE"]

#: largest ``n * (number of random effects)`` for the dense system (a 20e6-element Z Lambda)
MAX_DENSE = 2e7


def dense_size_ok(design):
    n = design.blocks[0].X.shape[0]
    return n * sum(b.nre for b in design.blocks) <= MAX_DENSE


class DenseFactor:
    """Cholesky factor of the dense ``M = Lambda' Z' W Z Lambda + I`` (``W`` may have negative
    entries as long as ``M`` is positive definite)."""

    def __init__(self, design, T, w, lams):
        self.design, self.T, self.lams = design, T, lams
        M = T.T @ (w[:, None] * T)
        M[np.diag_indices_from(M)] += 1.0
        self.M = M
        self.cf = linalg.cho_factor(M, lower=True, check_finite=False)   # LinAlgError if not PD

    @property
    def logdet_zz(self):
        return float(2.0 * np.log(np.diagonal(self.cf[0])).sum())

    def solve_re(self, v):
        return linalg.cho_solve(self.cf, v, check_finite=False)

    def _inverse(self):
        if not hasattr(self, "_Minv"):
            self._Minv = self.solve_re(np.eye(self.M.shape[0]))
        return self._Minv

    def _columns(self, b, k):
        """Column of M of effect k at each row's level of block b."""
        off = int(np.sum([bb.nre for bb in self.design.blocks[:b]]))
        blk = self.design.blocks[b]
        return off + blk.codes * blk.q + k

    def local_inverse(self):
        R = self.solve_re(self.T.T)                       # (nre, n): M^-1 T'
        rows = np.arange(self.T.shape[0])
        t_list, rho_list = [], []
        for b, blk in enumerate(self.design.blocks):
            cols = np.stack([self._columns(b, k) for k in range(blk.q)], axis=1)   # (n, q)
            t_list.append(self.T[rows[:, None], cols])
            rho_list.append(R[cols, rows[:, None]])
        return t_list, rho_list

    def condvar_u(self):
        Mi = self._inverse()
        out, off = [], 0
        for blk in self.design.blocks:
            idx = off + np.arange(blk.nre).reshape(blk.m, blk.q)
            out.append(Mi[idx[:, :, None], idx[:, None, :]])
            off += blk.nre
        return out

    @property
    def M1(self):
        """The (m, q, q) diagonal blocks of M for a single grouping factor (block diagonal)."""
        blk = self.design.blocks[0]
        idx = np.arange(blk.nre).reshape(blk.m, blk.q)
        M1 = self.M[idx[:, :, None], idx[:, None, :]]
        return M1[:, 0, 0] if blk.q == 1 else M1


def z_lambda(design, lams):
    """Dense ``Z Lambda`` (n, nre)."""
    n = design.blocks[0].X.shape[0]
    T = np.zeros((n, sum(b.nre for b in design.blocks)))
    rows = np.arange(n)
    off = 0
    for blk, lam in zip(design.blocks, lams):
        XL = blk.X @ lam
        for k in range(blk.q):
            T[rows, off + blk.codes * blk.q + k] = XL[:, k]
        off += blk.nre
    return T


@np.errstate(all="ignore")
def dense_pirls(design, eta_fixed, cond, lams, u0=None, tol=1e-12, maxiter=100, maxhalf=30):
    """Conditional modes by Newton's method on the dense system (:func:`mlmext.laplace.pirls`'s
    convergence test ``du' M du < tol``); the factor at the modes is ``modes.extra["factor"]``."""
    T = z_lambda(design, lams)
    u = np.zeros(T.shape[1]) if u0 is None else np.array(u0, dtype=float)

    def evaluate(u):
        eta = eta_fixed + T @ u
        lo, d1, w = cond.loglik_derivs(eta)
        ll = float(np.sum(lo))
        return eta, ll, d1, w, ll - 0.5 * float(u @ u)

    eta, ll, d1, w, obj = evaluate(u)
    if not np.isfinite(obj) and u0 is not None:
        u = np.zeros(T.shape[1])
        eta, ll, d1, w, obj = evaluate(u)
    converged, message, dec, fac, nhalf, it = False, "", np.nan, None, 0, 0
    dec_prev = np.inf
    scale = float(getattr(cond, "loglik_scale", 0.0))
    for it in range(1, maxiter + 1):
        if not (np.isfinite(obj) and np.all(np.isfinite(d1)) and np.all(np.isfinite(w))):
            message = f"non-finite log-likelihood or derivatives at dense PIRLS iteration {it}"
            break
        try:
            fac = DenseFactor(design, T, w, lams)
        except np.linalg.LinAlgError:
            fac = None
            message = ("the penalized observed information is not positive definite at dense "
                       f"PIRLS iteration {it}")
            break
        g = T.T @ d1 - u
        du = fac.solve_re(g)
        dec = float(du @ g)
        # converged, or at the rounding floor: the decrement stopped halving at the level of
        # the rounding of the terms summed (as mlmext.laplace's PIRLS decides)
        if dec < tol or (dec > 0.5 * dec_prev and dec < 1e-15 * (1.0 + abs(obj) + scale)):
            converged = True
            break
        dec_prev = dec
        t = 1.0
        for _ in range(maxhalf + 1):
            new = evaluate(u + t * du)
            if np.isfinite(new[4]) and new[4] >= obj - 1e-12 * max(abs(obj), 1.0):
                break
            t *= 0.5
            nhalf += 1
        else:
            message = f"step halving failed at dense PIRLS iteration {it} (decrement {dec:.3g})"
            break
        u = u + t * du
        eta, ll, d1, w, obj = new
    else:
        message = f"dense PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    extra = {"factor": fac} if fac is not None else {}
    return lp.Modes(u=u, eta=eta, beta=None, loglik_cond=ll, sqr_u=float(u @ u),
                    logdet=fac.logdet_zz if fac is not None else np.nan, converged=converged,
                    niter=it, nhalf=nhalf, message=message, decrement=dec,
                    extra=extra, d1=d1, w=w)
