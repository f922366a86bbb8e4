"""Parameter vectors of the mixed models, and lme4's sd / correlation scale of theta.

Every model documents one full parameter vector, in the order

    (results.params, theta, extra)

``results.params`` are the fixed effects (for a clmm: thresholds, then the
fixed effects), ``theta`` lme4's relative covariance parameters and ``extra``
the family's own (the residual sd ``sigma`` of an LMM, the negative binomial's
``alpha``; nothing for the binomial, Poisson and ordinal models).  As
statsmodels' ``MixedLMParams``, :class:`MixedParams` holds the pieces and
packs them; ``model.loglike`` and ``model.score`` take either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..design import lower_tri

__all__ = ["MixedParams", "read_only", "sdcor_from_theta", "sdcor_from_cov", "theta_from_sdcor"]


def read_only(a):
    """``a`` as a read-only float array: itself when it is one already, else a frozen copy
    (a result's arrays: what a caller writes into them must not reach the fit)."""
    a = np.asarray(a, dtype=float)
    if a.flags.writeable:
        a = a.copy()
        a.setflags(write=False)
    return a


@dataclass(frozen=True)
class MixedParams:
    """The parameters of a mixed model, by kind.

    Attributes
    ----------
    fe_params : ndarray
        The model's ``results.params``: fixed effects (clmm: thresholds, then
        fixed effects).
    theta : ndarray
        Relative covariance parameters, lme4's order.
    extra : ndarray
        The family's parameters: ``[sigma]`` for an LMM, ``[alpha]`` for the
        negative binomial, empty otherwise.
    """

    fe_params: np.ndarray
    theta: np.ndarray
    extra: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        for name in ("fe_params", "theta", "extra"):
            v = np.array(getattr(self, name), dtype=float).ravel()
            v.setflags(write=False)
            object.__setattr__(self, name, v)

    def get_packed(self):
        """The full parameter vector ``(fe_params, theta, extra)``."""
        return np.concatenate([self.fe_params, self.theta, self.extra])

    @classmethod
    def from_packed(cls, params, k_fe, k_theta, k_extra, names=None, what="the parameter vector"):
        """Split a packed vector; ValueError naming the layout (``names``) when its length is wrong."""
        v = params.get_packed() if isinstance(params, MixedParams) else \
            np.asarray(params, dtype=float).ravel()
        k = k_fe + k_theta + k_extra
        if v.size != k:
            layout = (list(names) if names is not None else
                      f"fixed effects: {k_fe}, theta: {k_theta}, family: {k_extra}")
            raise ValueError(f"{what} needs {k} values ({layout}); got {v.size}")
        return cls(v[:k_fe], v[k_fe:k_fe + k_theta], v[k_fe + k_theta:])


def sdcor_from_theta(design, theta, sigma=1.0):
    """theta -> lme4's sd / correlation parameters (per term: lower triangle, column by column).

    ``sigma`` scales theta to the response scale (LMMs); GLMMs use 1.
    """
    return sdcor_from_thetas(design, np.asarray(theta, dtype=float)[None, :], [sigma])[0]


def sdcor_from_thetas(design, thetas, sigmas):
    """:func:`sdcor_from_theta` of each row of ``thetas`` (B x ntheta) with its ``sigmas[b]``,
    as a (B x ntheta) array: the bootstrap's statistic of a batch of refits in one pass.

    Column by column with ufuncs (no matrix product, whose kernel may fuse a multiply-add), so
    a row's values are the same bits whatever B is.
    """
    T = np.asarray(thetas, dtype=float)
    if T.ndim != 2 or T.shape[1] != design.ntheta:
        raise ValueError(f"theta needs {design.ntheta} values ({design.theta_names()}) per "
                         f"row; got shape {T.shape[1:] if T.ndim == 2 else T.shape}")
    s2 = np.square(np.asarray(sigmas, dtype=float))
    out = np.empty(T.shape)
    for t in design.terms:
        tri = lower_tri(t.q)
        L = {ij: T[:, t.theta_index[k]] for k, ij in enumerate(tri)}

        def cov(i, j):                     # sigma^2 (L L')_ij, the sum over k <= min(i, j)
            acc = L[i, 0] * L[j, 0]
            for k in range(1, min(i, j) + 1):
                acc = acc + L[i, k] * L[j, k]
            return s2 * acc

        sd = [np.sqrt(np.maximum(cov(i, i), 0.0)) for i in range(t.q)]
        for k, (i, j) in enumerate(tri):
            if i == j:
                v = sd[i]
            else:                          # a correlation with a zero sd is 0
                den = sd[i] * sd[j]
                with np.errstate(divide="ignore", invalid="ignore"):
                    v = np.where(den > 0, cov(i, j) / den, 0.0)
            out[:, t.theta_index[k]] = v
    return out


def sdcor_from_cov(C):
    """A term's covariance matrix -> its sd / correlation parameters in lme4's order (lower
    triangle, column by column; a correlation with a zero sd is 0)."""
    C = np.asarray(C, dtype=float)
    sd = np.sqrt(np.clip(np.diag(C), 0, None))
    out = []
    for i, j in lower_tri(C.shape[0]):
        if i == j:
            out.append(sd[i])
        else:
            den = sd[i] * sd[j]
            out.append(C[i, j] / den if den > 0 else 0.0)
    return np.array(out)


def theta_from_sdcor(design, v, sigma=1.0):
    """The inverse of :func:`sdcor_from_theta` (a PSD Cholesky factor per term)."""
    theta = np.empty(design.ntheta)
    k = 0
    for t in design.terms:
        tri = lower_tri(t.q)
        vals = v[k:k + t.ntheta]
        sd = np.array([vals[kk] for kk, (i, j) in enumerate(tri) if i == j])
        R = np.eye(t.q)
        for kk, (i, j) in enumerate(tri):
            if i != j:
                R[i, j] = R[j, i] = vals[kk]
        L = _psd_chol(R * np.outer(sd, sd) / sigma ** 2)
        theta[t.theta_index] = [L[i, j] for i, j in tri]
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
