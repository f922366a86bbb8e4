"""The profiled LMM deviance of many responses on one design with one grouping factor,
evaluated together.

A parametric bootstrap, a power simulation or a simulation study refits one design to B
responses.  With one random-effects block (``(Days | Subject)``: m levels of q effects) the
system ``Omega = Lambda' A Lambda + I`` is block-diagonal in the levels plus the p fixed
effects, and the B responses differ only in ``Z' W y``, ``X' W y`` and ``y' W y``.  So B
evaluations at B thetas are operations on (B, m, q, q) stacks: the level blocks
``M_g = lambda' A_g lambda + I``, their inverses, and the p x p Schur complement

    S = X' W X - sum_g C_g' lambda M_g^-1 lambda' C_g,     C_g = Z_g' W X,

with the criterion, its exact gradient and its exact Hessian from them (the formulas of
:meth:`~mlmext.linalg.small.SmallDenseFactor.derivatives` with ``Omega^-1`` taken blockwise:
``log det Omega_P = sum_g log det M_g + log det S``).  A few dozen NumPy calls per batch,
whatever B, instead of that many per response.  The q x q matrices are held component-major,
(q, q, ..., B, m), so that each NumPy call runs over all members and levels at once (NumPy's
stacked ``matmul`` and ``inv`` pay ~0.2 us per 2 x 2 matrix, as much as the arithmetic of a
whole batch done componentwise).

:class:`OneBlockBatch` gives ``values`` and ``value_grad_hess`` of responses ``idx`` at thetas
``T`` (one row each) and the estimates at the end (``estimates``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["OneBlockBatch"]

_LOG2PI = np.log(2.0 * np.pi)


def _T(a):
    """Transpose of component-major matrices (the first two axes)."""
    return a.swapaxes(0, 1)


_sum = np.add.reduce      # (ndarray.sum goes through two Python frames)


def _mm(a, b):
    """Products of component-major matrices ``a`` (i, j, ...) and ``b`` (j, k, ...)."""
    return np.einsum("ij...,jk...->ik...", a, b)


def _mv(a, v):
    """Products of component-major matrices ``a`` (i, j, ...) and vectors ``v`` (j, ...)."""
    return np.einsum("ij...,j...->i...", a, v)


def _pair(a, b):
    """``sum_(i, j, g) a[i, j, k, :, g] b[i, j, l, :, g]`` for stacks (q1, q2, K, B, m): the
    traces of products summed over the levels, (K, K, B), as B small matrix products."""
    q1, q2, K1, nb, m = a.shape
    A = a.transpose(3, 2, 0, 1, 4).reshape(nb, K1, -1)
    Bm = b.transpose(3, 0, 1, 4, 2).reshape(nb, -1, b.shape[2])
    return (A @ Bm).transpose(1, 2, 0)


def _flat(a):
    """(q, q, B, m) -> (q q m, B) rows in the order (i, j, g), for products with constants."""
    return a.transpose(0, 1, 3, 2).reshape(-1, a.shape[2])


def _spd_inv(M):
    """Inverse, log-determinant and positive-definiteness of component-major symmetric
    matrices (q, q, ...): Gauss-Jordan without pivoting (positive pivots are what a
    positive-definite matrix has), q steps over the whole stack."""
    q = M.shape[0]
    if q <= 2:                          # closed forms (intercepts, intercept and slope)
        det = M[0, 0] if q == 1 else M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
        ok = (M[0, 0] > 0) & (det > 0)
        det = np.where(ok, det, 1.0)
        if q == 1:
            return (1.0 / det)[None, None], np.log(det), ok
        inv = np.empty_like(M)
        inv[0, 0], inv[1, 1] = M[1, 1] / det, M[0, 0] / det
        inv[0, 1], inv[1, 0] = -M[0, 1] / det, -M[1, 0] / det
        return inv, np.log(det), ok
    W = np.zeros((q, 2 * q) + M.shape[2:])
    W[:, :q] = M
    for j in range(q):
        W[j, q + j] = 1.0
    ld = np.zeros(M.shape[2:])
    ok = np.ones(M.shape[2:], dtype=bool)
    for j in range(q):
        piv = W[j, j].copy()
        good = piv > 0
        ok &= good
        piv = np.where(good, piv, 1.0)
        ld += np.log(piv)
        W[j] /= piv
        f = W[:, j].copy()
        f[j] = 0.0
        W -= f[:, None] * W[j][None]
    return W[:, q:], ld, ok


class OneBlockBatch:
    """The responses ``Y`` (n, B), offsets removed, on the design of ``factor`` (one block).

    Parameters
    ----------
    factor : SmallDenseFactor
        The model's dense storage (its cross-products are read, never written).
    Y : ndarray (n, B)
        The responses minus the offset.
    reml : bool
    n_obs : float
        Observations with positive weight (the deviance's n).
    logw : float
        Sum of the log prior weights (the deviance's constant).
    """

    def __init__(self, factor, Y, reml, n_obs, logw):
        f = factor
        if len(f.blocks) != 1:
            raise ValueError("OneBlockBatch takes a design with one random-effects block")
        blk = f.blocks[0]
        m, q, p = blk.m, blk.q, f.p
        rz = m * q
        self.m, self.q, self.p = m, q, p
        self.reml = bool(reml)
        self.n_obs, self.logw = float(n_obs), float(logw)
        self.nu = self.n_obs - (p if reml else 0)
        A = f.A
        g = np.arange(m)
        Ag = A[:rz, :rz].reshape(m, q, m, q)[g, :, g, :]                 # Z_g' W Z_g (m, q, q)
        self.Ag = np.ascontiguousarray(Ag.transpose(1, 2, 0))[:, :, None]  # (q, q, 1, m)
        self.Cg = np.ascontiguousarray(A[:rz, rz:rz + p].reshape(m, q, p).transpose(1, 2, 0))[:, :, None]
        self.XX = A[rz:rz + p, rz:rz + p]
        Z, w = f._Zw
        Y = np.asarray(Y, dtype=float)
        WY = Y * w[:, None]
        cg = np.asarray(Z.T @ WY).reshape(m, q, -1)                       # Z_g' W y
        self.cg = np.ascontiguousarray(cg.transpose(1, 2, 0))             # (q, B, m)
        self.Xy = (f._xy[:, :p].T @ WY).T                                  # X' W y (B, p)
        self.yy = np.einsum("ij,ij->j", Y, WY)
        self.t_rows, self.t_cols, self.t_idx = blk.t_rows, blk.t_cols, blk.t_idx
        K = self.K = f.ntheta
        E = np.zeros((q, q, K))                   # E_k: d lambda / d theta_k (0/1)
        E[self.t_rows, self.t_cols, self.t_idx] = 1.0
        self.E5 = E[:, :, :, None, None]
        # d2 M_kl = e_k' A_g e_l + e_l' A_g e_k: free of theta (lambda is linear in it)
        eAe = _mm(_mm(_T(E)[:, :, :, None, None, None], self.Ag[:, :, None, None]),
                  E[:, :, None, :, None, None])                          # (q, q, K, K, 1, m)
        d2M = eAe + _T(np.swapaxes(eAe, 2, 3))
        self.d2M = d2M[..., 0, :].transpose(2, 3, 0, 1, 4).reshape(K * K, -1)   # (K K, q q m)
        Cm = self.Cg[:, :, 0]                                            # (q, p, m)
        # C_g' N C_g summed over levels, for any (q, q) stack N: one product with this
        self.CC = np.einsum("iag,jcg->acijg", Cm, Cm).reshape(p * p, -1)     # (p p, q q m)

    # -- pieces -----------------------------------------------------------------------
    def _core(self, T, idx):
        """Everything the criterion needs at thetas ``T`` for responses ``idx``."""
        nb, q, p = T.shape[0], self.q, self.p
        lam = np.zeros((q, q, nb))
        lam[self.t_rows, self.t_cols] = T[:, self.t_idx].T
        L4 = lam[:, :, :, None]                                          # (q, q, B, 1)
        Al = _mm(self.Ag, L4)                                            # A_g lambda
        M = _mm(_T(L4), Al)
        for j in range(q):
            M[j, j] += 1.0
        P, ldg, okg = _spd_inv(M)                                        # M_g^-1
        ok = okg.all(axis=-1)
        F = _mm(_T(L4), self.Cg)                                         # lambda' C_g (q, p, B, m)
        cg = self.cg[:, idx]
        fv = _mv(_T(L4), cg)                                             # lambda' c_g (q, B, m)
        PF = _mm(P, F)
        Pf = _mv(P, fv)
        N = _mm(_mm(L4, P), _T(L4))                                      # lambda P lambda'
        S = self.XX - (self.CC @ _flat(N)).T.reshape(nb, p, p)
        Xys = self.Xy[idx] - _sum(F * Pf[:, None], axis=(0, 3)).T
        yys = self.yy[idx] - _sum(fv * Pf, axis=(0, 2))
        try:
            Ls = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            Ls = np.empty_like(S)
            for b in range(nb):
                try:
                    Ls[b] = np.linalg.cholesky(S[b])
                except np.linalg.LinAlgError:
                    ok[b] = False
                    Ls[b] = S[b] = np.eye(p)
        ldx = 2.0 * _sum(np.log(np.diagonal(Ls, axis1=1, axis2=2)), axis=1)
        Sinv = np.linalg.inv(S)
        beta = np.einsum("bij,bj->bi", Sinv, Xys)
        r2 = yys - np.einsum("bi,bi->b", Xys, beta)
        u = Pf - _sum(PF * beta.T[None, :, :, None], axis=1)             # (q, B, m)
        logdet = ldg.sum(axis=-1) + (ldx if self.reml else 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = logdet + self.nu * (1.0 + _LOG2PI + np.log(r2 / self.nu)) - self.logw
        ok &= np.isfinite(f) & (r2 > 0)
        return dict(cg=cg, lam=lam, Al=Al, P=P, F=F, PF=PF, Sinv=Sinv, beta=beta, u=u, r2=r2,
                    f=np.where(ok, f, np.inf), ok=ok)

    # -- the objective ------------------------------------------------------------------
    def values(self, T, idx):
        """The criterion of responses ``idx`` at thetas ``T`` (inf where indefinite)."""
        return self._core(T, idx)["f"]

    def value_grad_hess(self, T, idx):
        """Criterion (B,), exact gradient (B, K) and Hessian (B, K, K) of responses ``idx``
        at thetas ``T`` (B, K); members whose system is indefinite get inf, 0, NaN."""
        c = self._core(T, idx)
        E5, Cg, Ag = self.E5, self.Cg, self.Ag
        lam, Al, P, F, PF, Sinv, beta, u, r2 = (c[k] for k in (
            "lam", "Al", "P", "F", "PF", "Sinv", "beta", "u", "r2"))
        P5 = P[:, :, None]                                               # (q, q, 1, B, m)
        lamT5 = _T(lam)[:, :, None, :, None]
        # dM_k = e_k' A_g lambda + lambda' A_g e_k  (q, q, K, B, m)
        eAl = _mm(_T(E5), Al[:, :, None])
        dM = eAl + _T(eAl)
        PdM = _mm(P5, dM)
        dld = _sum(PdM.diagonal(0, 0, 1), axis=(2, 3))                   # (K, B)
        K, nb, p = self.K, lam.shape[2], self.p
        d2ld = (self.d2M @ _flat(P)).reshape(K, K, nb) - _pair(PdM, _T(PdM))
        if self.reml:                      # + log det S, S = XX - sum_g C' lambda P lambda' C
            lam5 = lam[:, :, None, :, None]
            dP = -_mm(PdM, P5)                                           # -P dM_k P
            Gk = _mm(_mm(E5, P5), lamT5)                                 # e_k P lambda'
            dN = Gk + _T(Gk) + _mm(_mm(lam5, dP), lamT5)
            dS = (self.CC @ dN.transpose(0, 1, 4, 2, 3).reshape(-1, K * nb)).reshape(p, p, K, nb)
            SdS = -(Sinv[:, None] @ dS.transpose(3, 2, 0, 1))     # (B, K, p, p)
            dld = dld + _sum(SdS.diagonal(0, 2, 3), axis=-1).T
            # tr(S^-1 d2S_kl) = -2 sum_g tr(D_g H_kl), D_g = C_g S^-1 C_g', and
            # H_kl = e_k dP_l lambda' + e_k P e_l' + e_l dP_k lambda' + lambda d2P_kl lambda' / 2
            q, m = self.q, self.m                                        # D (q, q, B, m):
            D = (self.CC.T @ Sinv.reshape(nb, -1).T).reshape(q, q, m, nb).transpose(0, 1, 3, 2)
            U = _mm(_mm(_T(lam)[:, :, :, None], D)[:, :, None], E5)      # lambda' D e_k
            t1 = _pair(U, dP)
            DY = _mm(_mm(D[:, :, None], E5), P5)                         # D e_k P
            t2 = np.einsum("ijkb,ijl->klb", DY.sum(axis=-1), self.E5[..., 0, 0])
            J = _mm(_mm(P, _mm(_mm(_T(lam)[:, :, :, None], D), lam[:, :, :, None])), P)
            JdM = _mm(J[:, :, None], dM)
            T1 = _pair(_T(PdM), JdM)                                     # tr(J dM_l P dM_k)
            T3 = (self.d2M @ _flat(J)).reshape(K, K, nb)
            tK = lambda a: a.swapaxes(0, 1)                          # noqa: E731
            trX = t1 + t2 + tK(t1) + 0.5 * (T1 + tK(T1) - T3)
            d2ld = d2ld - 2.0 * trX - np.moveaxis(
                np.einsum("bkij,blji->bkl", SdS, SdS), 0, 2)
        # r2: with x = [u; beta], per level res_g = Z_g' W (y - X beta - Z_g lambda u_g)
        Eu = _mv(E5, u[:, None])                                         # e_k u_g (q, K, B, m)
        resZ = c["cg"] - _mv(Al, u) - _sum(Cg * beta.T[None, :, :, None], axis=1)
        dr2 = -2.0 * _sum(resZ[:, None] * Eu, axis=(0, 3))               # (K, B)
        AEu = _mv(Ag[:, :, None], Eu)
        vZ = _mv(_T(E5), resZ[:, None]) - _mv(lamT5, AEu)                # E_k' res - B' E_k x
        vX = -_sum(Cg[:, :, None] * Eu[:, None], axis=(0, 4))            # (p, K, B)
        # V' Omega^-1 V blockwise: t = P vZ, wX = S^-1 (vX - sum_g F' t), wZ = t - P F wX
        tZ = _mv(P5, vZ)
        FtZ = _sum(F[:, :, None] * tZ[:, None], axis=(0, 4))
        wX = np.einsum("bij,jkb->ikb", Sinv, vX - FtZ)
        wZ = tZ - _sum(PF[:, :, None] * wX[None, :, :, :, None], axis=1)
        quad = _sum(vZ[:, :, None] * wZ[:, None], axis=(0, 4)) + _sum(vX[:, :, None] * wX[:, None], axis=0)
        d2r2 = -2.0 * quad + 2.0 * _sum(Eu[:, :, None] * AEu[:, None], axis=(0, 4))
        nu = self.nu
        grad = (dld + nu * dr2 / r2).T
        H = (d2ld + nu * (d2r2 / r2 - dr2[:, None] * dr2[None] / r2 ** 2)).transpose(2, 0, 1)
        H = 0.5 * (H + H.swapaxes(1, 2))
        f, ok = c["f"], c["ok"]
        if not ok.all():
            grad[~ok] = 0.0
            H[~ok] = np.nan
        return f, grad, H

    def estimates(self, T, idx):
        """``(beta, u, sigma, criterion, cov_beta)`` of responses ``idx`` at thetas ``T`` (as
        :meth:`mlmext.objective.LMMDeviance.at`), stacked; ``u`` in the levels' order."""
        c = self._core(T, idx)
        sigma2 = c["r2"] / (self.n_obs - self.p if self.reml else self.n_obs)
        cov = sigma2[:, None, None] * c["Sinv"]
        u = np.moveaxis(c["u"], 0, 2).reshape(T.shape[0], -1)            # (B, m q), level-major
        return c["beta"], u, np.sqrt(sigma2), c["f"], cov
