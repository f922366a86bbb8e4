"""PIRLS with a dense random-effects system, for observed information that may be negative.

The blocked factorization reweights rows by ``sqrt(w)`` and so needs ``w >= 0``.  A
conditional model whose log-density is not concave in ``eta`` (the zeros of a zero-inflated
count model) has single observations with negative observed information, while the penalized
information ``M = Lambda' Z' H Z Lambda + I`` of the whole system is positive definite at
the modes.  For any random-effects design of moderate size (``nre`` up to
:data:`MAX_DENSE_RE`), :func:`_pirls_dense` forms ``A = Z Lambda`` (sparse) and ``M``
(dense: ``O(nre^3)`` per Cholesky) and takes Newton steps with it; where ``M`` is not positive definite (away from the modes) the
step uses the model's ``fisher_weights`` (positive) instead.  The factor it returns
(:class:`DenseFactor`) offers what the Laplace value, its gradient, the warm starts and the
conditional variances read.

With ``X`` (lme4's first stage, beta inside PIRLS) the same Newton steps are taken in
``(u, beta)`` jointly, ``M = [A X]' H [A X] + diag(1, 0)``: the blocked factorization's Fisher
weights there (positive in place of the negative observed information) are not the Hessian, and
PIRLS then converges linearly, at a rate of ``1 - 0.02`` on grouseticks' zero-inflated Poisson
(its decrement 5e-7 after 100 iterations).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg, sparse

from .protocol import Modes
from .steps import _decrement_stop, _final_message, _halving_failed, _halving_step
from .zops import _zops

#: the largest number of random effects the dense path takes (M is nre x nre)
MAX_DENSE_RE = 2000


def z_lambda(design, lams):
    """``A = Z Lambda`` as a sparse (n, nre) CSR matrix (one column per spherical random
    effect; a row's nonzeros are its own levels' ``Lambda_b' z_i``)."""
    ops = _zops(design)
    n = ops.n
    rows, cols, vals = [], [], []
    for b, off, lam in zip(design.blocks, ops.offsets[:-1], lams):
        t = b.X @ lam                                       # (n, q): Lambda_b' z_i
        rows.append(np.repeat(np.arange(n), b.q))
        cols.append((off + b.codes[:, None] * b.q + np.arange(b.q)[None, :]).ravel())
        vals.append(t.ravel())
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n, int(ops.offsets[-1])))


class DenseFactor:
    """``M = A' H A + I`` (dense) and its Cholesky factor, at the conditional modes.

    Offers ``logdet_zz``, ``solve_re``, ``local_inverse``, ``condvar_u`` and ``lams``, as
    :class:`~mlmext.linalg.ScalarFactor.from_diagonal` does, and ``M1`` (the per-level blocks,
    for adaptive quadrature) with one grouping factor.
    """

    def __init__(self, design, lams, M, chol):
        self.design, self.lams, self.M, self._c = design, lams, M, chol

    @property
    def logdet_zz(self):
        return float(2.0 * np.sum(np.log(np.diag(self._c[0]))))

    def solve_re(self, v):
        return linalg.cho_solve(self._c, np.asarray(v, dtype=float))

    def _inverse(self):
        inv = getattr(self, "_inv", None)
        if inv is None:
            inv = self._inv = linalg.cho_solve(self._c, np.eye(self.M.shape[0]))
        return inv

    @property
    def M1(self):
        """With a single grouping factor, the (m, q, q) diagonal blocks of ``M`` (``M`` is
        block diagonal then: a row has one level); what adaptive quadrature centres on."""
        if len(self.design.blocks) != 1:
            raise AttributeError("M1: the dense factor of a design with one grouping factor")
        b = self.design.blocks[0]
        idx = np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :]
        return self.M[idx[:, :, None], idx[:, None, :]]

    def _positions(self):
        """Per block: (n, q) column indices of each row's own level in the spherical vector."""
        ops = _zops(self.design)
        return [off + b.codes[:, None] * b.q + np.arange(b.q)[None, :]
                for b, off in zip(self.design.blocks, ops.offsets[:-1])]

    def local_inverse(self):
        """``(t, rho)`` per block: ``t_i = Lambda_b' z_i`` at row i's level, ``rho_i`` the same
        positions of ``M^-1 A_i'`` (see :meth:`mlmext.linalg.base.Factor.local_inverse`);
        O(n q^2) gathers from ``M^-1``, nothing of size n x nre."""
        inv = self._inverse()
        pos = self._positions()
        ts = [b.X @ lam for b, lam in zip(self.design.blocks, self.lams)]
        rhos = []
        for pb in pos:
            rho = np.zeros(pb.shape)
            for pc, tc in zip(pos, ts):
                rho += np.einsum("ijk,ik->ij", inv[pb[:, :, None], pc[:, None, :]], tc)
            rhos.append(rho)
        return ts, rhos

    def inverse_block_sums(self, k):
        """Per block, the sum over levels of the (q, q) diagonal blocks of ``M^-1`` (the EM
        start's; ``k = 0`` only: the factor holds no fixed effects' block)."""
        if k:
            raise NotImplementedError("DenseFactor.inverse_block_sums: k = 0 only")
        return [c.sum(axis=0) for c in self.condvar_u()]

    def condvar_u(self):
        """Per block, the (m, q, q) diagonal blocks of ``M^-1``."""
        inv = self._inverse()
        ops = _zops(self.design)
        out = []
        for b, off in zip(self.design.blocks, ops.offsets[:-1]):
            idx = off + np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :]
            out.append(inv[idx[:, :, None], idx[:, None, :]])
        return out


@np.errstate(all="ignore")     # failures are reported in the result, not as warnings
def _pirls_dense(design, eta_fixed, cond, lams, u0=None, tol=1e-12, maxiter=100, maxhalf=30,
                 X=None, beta0=None):
    """:func:`pirls` with the dense system; ``w`` may be negative for single rows.

    With ``X``: beta is updated inside PIRLS (unpenalized), the modes carry ``beta`` and
    ``extra["cov_beta"]`` (the fixed-effects block of ``M^-1``) beside the factor of the
    random effects' block (the leading block of ``M``'s Cholesky factor).
    """
    A = z_lambda(design, lams)
    nre = A.shape[1]
    p = 0 if X is None else X.shape[1]
    if p:
        A = sparse.hstack([A, sparse.csr_matrix(np.asarray(X, dtype=float))]).tocsr()
    At = A.T.tocsr()
    pen = np.r_[np.ones(nre), np.zeros(p)]             # |u|^2 / 2; beta unpenalized
    fisher = getattr(cond, "fisher_weights", None)
    fused = getattr(cond, "loglik_derivs", None)
    eta_fixed = np.asarray(eta_fixed, dtype=float)

    def evaluate(eta):
        if fused is not None:
            lo, d1, w = fused(eta)
            ll = float(lo.sum())
        else:
            ll = float(np.sum(cond.loglik_obs(eta)))
            d1 = w = None
            if math.isfinite(ll):
                d1, w = cond.derivatives(eta)
        return ll, d1, w

    def factor(w):
        M = (At @ sparse.diags(w) @ A).toarray()           # sparse product, dense factor
        M[np.diag_indices(nre)] += 1.0
        try:
            return M, linalg.cho_factor(M, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return M, None

    def start(u, beta):
        v = np.zeros(nre + p)
        if u is not None:
            v[:nre] = u
        if p and beta is not None:
            v[nre:] = beta
        return v

    v = start(u0, beta0)
    eta = eta_fixed + A @ v
    ll, d1, w = evaluate(eta)
    obj = ll - 0.5 * float(v[:nre] @ v[:nre])
    restarted = False
    if not math.isfinite(obj) and (u0 is not None or beta0 is not None):
        v = start(None, None)
        eta = eta_fixed.copy()
        ll, d1, w = evaluate(eta)
        obj = ll
        restarted = True
    converged, message = False, ""
    dec, dec_prev = np.nan, np.inf
    nhalf_total, it = 0, 0
    M = c = None
    maxiter_run = maxiter if math.isfinite(obj) else 0
    if not maxiter_run:
        message = ("the log-likelihood is not finite at the starting values (before the "
                   "first iteration)")
    for it in range(1, maxiter_run + 1):
        if d1 is None or not math.isfinite(float(d1.sum()) + float(w.sum())):
            message = f"non-finite working weights at PIRLS iteration {it}"
            break
        g = At @ d1 - pen * v
        M, c = factor(w)
        step_c = c
        if c is None:
            if fisher is None:
                message = (f"the penalized information is not positive definite at PIRLS "
                           f"iteration {it}")
                break
            # away from the modes: a Fisher-scoring step (positive weights)
            step_c = factor(fisher(eta))[1]
            if step_c is None:
                message = f"factorization failed at PIRLS iteration {it}"
                break
        dv = linalg.cho_solve(step_c, g)
        dec = float(dv @ g)
        stop = _decrement_stop(dec, dec_prev, obj, tol, it, cond, c is not None)
        if stop is not None:
            converged, message = stop
            break
        dec_prev = dec
        dlin = A @ dv
        t, v_t, eta_t, ll_t, obj_t, d1_t, w_t, nh = _halving_step(
            evaluate, lambda t: v + t * dv, lambda t: eta + t * dlin, obj, maxhalf,
            penalized=nre)
        nhalf_total += nh
        if t is None:
            converged, message = _halving_failed(dec, obj, it, maxhalf)
            break
        v, eta, ll, obj, d1, w = v_t, eta_t, ll_t, obj_t, d1_t, w_t
        if d1 is None:
            d1, w = cond.derivatives(eta)
    else:
        if maxiter_run:
            message = f"PIRLS did not converge in {maxiter} iterations (last decrement {dec:.3g})"
    message = _final_message(message, converged, restarted)
    extra, logdet = {}, np.nan
    u, beta = v[:nre], (v[nre:] if X is not None else None)
    if c is not None:
        # the leading nre x nre block of the joint factor is the factor of M_zz
        Lz = (np.ascontiguousarray(c[0][:nre, :nre]), True)
        fac = DenseFactor(design, lams, M[:nre, :nre], Lz)
        extra["factor"] = fac
        logdet = fac.logdet_zz
        if p:
            extra["cov_beta"] = linalg.cho_solve(c, np.eye(nre + p)[:, nre:])[nre:]
    elif converged:
        converged = False
    return Modes(u=u, eta=eta, beta=beta, loglik_cond=ll, sqr_u=float(u @ u), logdet=logdet,
                 converged=converged, niter=it, nhalf=nhalf_total, message=message, decrement=dec,
                 extra=extra, d1=d1, w=w)
