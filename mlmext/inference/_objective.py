"""The LMM deviance as a function of (theta, sigma), of (sd/cor, sigma) and of one fixed effect,
and the map between theta and lme4's sd / correlation parameters (LMMs and GLMMs).

The profiled deviance of :mod:`mlmext.lmm` eliminates sigma; Satterthwaite's df and the
profile-likelihood intervals need it with sigma (and for the profiles one beta) held fixed.
"""
from __future__ import annotations

import numpy as np

_LOG2PI = np.log(2.0 * np.pi)


class _LMMObjective:
    """Deviance pieces of a linear mixed model as functions of (theta, sigma) or (sd/cor, sigma).

    All evaluations use the blocked Cholesky factor of the model, so they cost nothing of
    order n (``BlockedCholesky.update``).
    """

    def __init__(self, model):
        self.model = model
        self.des = model.re_design
        self.n = float(model.nobs)
        self.p = int(model.k_fe)

    def factor(self, theta):
        return self.model.chol.update(self.des.lambdas(np.asarray(theta, dtype=float)))

    @staticmethod
    def _lxx(ch):
        """L_XX, the fixed-effects block of the factor (only the lower triangle of ``Lr`` is set)."""
        rz, p = ch.rz, ch.p
        return np.tril(ch.Lr[rz:rz + p, rz:rz + p])

    @classmethod
    def beta_hat(cls, ch):
        """beta(theta) from L_XX' beta = l_yX (the last row of the factor).

        Not ``BlockedCholesky.solve``: that also solves for the random effects, which costs
        more than the factor update here, in the inner loop of the profiles.
        """
        rz, p = ch.rz, ch.p
        return np.linalg.solve(cls._lxx(ch).T, ch.Lr[-1, rz:rz + p])

    @classmethod
    def cov_beta_unscaled(cls, ch):
        """(L_XX L_XX')^-1, as ``BlockedCholesky.cov_beta_unscaled``; a small dense inverse is
        cheaper than its triangular solve with I, and this runs per profile evaluation."""
        Li = np.linalg.inv(cls._lxx(ch))
        return Li.T @ Li

    def dev_theta_sigma(self, theta, sigma, reml):
        """-2 log-likelihood (REML: restricted) at (theta, sigma), beta profiled out (lmerTest)."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        s2 = sigma ** 2
        dev = ch.logdet_zz + ch.r2 / s2 + self.n * (_LOG2PI + np.log(s2)) - self.model._logw
        if reml:
            dev += ch.logdet_xx - self.p * (_LOG2PI + np.log(s2))
        return dev

    def cov_beta(self, theta, sigma):
        return sigma ** 2 * self.cov_beta_unscaled(self.factor(theta))

    # ---- sd / correlation scale (lme4's profile parameterization) -----------------------
    def sdcor_from_theta(self, theta, sigma):
        return sdcor_from_theta(self.des, theta, sigma)

    def theta_from_sdcor(self, v, sigma):
        return theta_from_sdcor(self.des, v, sigma)

    def dev_sdcor(self, vp):
        """ML deviance at (sd/cor parameters, sigma), beta profiled out (lme4's ``devfun2``)."""
        sigma = vp[-1]
        return self.dev_theta_sigma(self.theta_from_sdcor(vp[:-1], sigma), sigma, reml=False)

    def dev_fixed(self, theta, j, value):
        """ML deviance, profiled over sigma and the other fixed effects, at beta_j = value."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        b = self.beta_hat(ch)
        cjj = self.cov_beta_unscaled(ch)[j, j]
        r2 = ch.r2 + (value - b[j]) ** 2 / cjj
        return ch.logdet_zz + self.n * (1.0 + _LOG2PI + np.log(r2 / self.n)) - self.model._logw


def sdcor_from_theta(des, theta, sigma=1.0):
    """theta -> lme4's sd / correlation parameters (per term: lower triangle, column by column).

    ``sigma`` scales theta to the response scale (LMMs); GLMMs use 1.
    """
    out = []
    for t in des.terms:
        C = sigma ** 2 * des.term_cov(theta, t)
        sd = np.sqrt(np.clip(np.diag(C), 0, None))
        for j in range(t.q):
            for i in range(j, t.q):
                if i == j:
                    out.append(sd[i])
                else:
                    den = sd[i] * sd[j]
                    out.append(C[i, j] / den if den > 0 else 0.0)
    return np.array(out)


def theta_from_sdcor(des, v, sigma=1.0):
    """The inverse of :func:`sdcor_from_theta` (a PSD Cholesky factor per term)."""
    theta = np.empty(des.ntheta)
    k = 0
    for t in des.terms:
        q = t.q
        m = v[k:k + t.ntheta]
        sd = np.zeros(q)
        R = np.eye(q)
        kk = 0
        for j in range(q):
            for i in range(j, q):
                if i == j:
                    sd[i] = m[kk]
                else:
                    R[i, j] = R[j, i] = m[kk]
                kk += 1
        L = _psd_chol(R * np.outer(sd, sd) / sigma ** 2)
        kk = 0
        for j in range(q):
            for i in range(j, q):
                theta[t.theta_index[kk]] = L[i, j]
                kk += 1
        k += t.ntheta
    return theta


def _psd_chol(A):
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    q = A.shape[0]
    L = np.zeros_like(A, dtype=float)
    scale = max(float(np.max(np.abs(np.diag(A)))), 1e-300)
    for j in range(q):
        d = A[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-13 * scale:
            continue
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, q):
            L[i, j] = (A[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L
