"""Denominator degrees of freedom for fixed effects and contrasts, and t / F tests with them.

Satterthwaite as lmerTest computes it, Kenward-Roger as pbkrtest does.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import linalg, sparse, stats
from statsmodels.iolib.table import SimpleTable
from statsmodels.stats.contrast import ContrastResults

from ..design import lower_tri
from ..frame import formula_manager
from ..objective.sigma_hessian import exact_satt_derivatives
from ..optimize import hessian, jacobian
from ..printing import fixed_decimals, format_pval
from ._common import _cache, _fe_names, _params, _raw, _require_lmm


def _require_model_based(r, what):
    if r.cov_type != "nonrobust":
        raise ValueError(f"{what} belong to the model-based covariance; this result's covariance "
                         "is cluster-robust, and its tests use clubSandwich's df already (call "
                         "t_test / wald_test / summary without ddf or df)")


def _satt_pieces(res):
    """Asymptotic covariance of (theta, sigma) and the Jacobian of vcov(beta); cached (lmerTest).

    With a residual correlation structure its parameter is a variance parameter beside theta."""
    _require_lmm(res, "Satterthwaite's degrees of freedom")
    r = _raw(res)
    _require_model_based(r, "lmerTest's Satterthwaite df")
    c = _cache(r)
    if "satt" in c:
        return c["satt"]
    reml = bool(r.reml)
    cor = getattr(r, "cor_params", None)       # a residual correlation: one more parameter
    obj = r.model.deviance(reml) if cor is None else r.model.deviance(reml, rho=float(cor.iloc[0]))
    vp = np.concatenate([r.theta, [] if cor is None else cor.to_numpy(dtype=float), [r.sigma]])
    exact = exact_satt_derivatives(obj, r.theta, r.sigma) if cor is None else None
    if exact is None:
        H = hessian(lambda x: obj.value_sigma(x[:-1], x[-1]), vp)
    else:
        H, jac = exact
    evals, evecs = np.linalg.eigh((H + H.T) / 2)
    tol = 1e-8
    if np.any(evals < -tol):
        warnings.warn("the Hessian of the deviance in (theta, sigma) has negative eigenvalues "
                      f"({evals[evals < -tol]}); the model may not have converged", UserWarning,
                      stacklevel=3)
    pos = evals > tol
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    if exact is None:
        p = r.k_fe
        J = jacobian(lambda x: obj.cov_beta(x[:-1], x[-1]), vp)
        jac = [J[:, i].reshape(p, p) for i in range(vp.size)]
    c["satt"] = (A, jac, np.asarray(r.cov_params(), dtype=float))
    return c["satt"]


def _contrast_matrix(res, r_matrix):
    names = list(_raw(res).model.data.cov_names) if hasattr(_raw(res).model, "data") else _fe_names(res)
    if isinstance(r_matrix, str) or (isinstance(r_matrix, (list, tuple)) and r_matrix
                                     and isinstance(r_matrix[0], str)):
        lc = formula_manager().get_linear_constraints(r_matrix, names)
        L, q = np.asarray(lc.constraint_matrix, dtype=float), lc.constraint_values
        q = np.zeros(L.shape[0]) if q is None else np.asarray(q, dtype=float).ravel()
        return L, q
    if isinstance(r_matrix, tuple) and len(r_matrix) == 2:
        L, q = r_matrix
        L = np.atleast_2d(np.asarray(L, dtype=float))
        return L, np.broadcast_to(np.asarray(q, dtype=float).ravel(), (L.shape[0],)).copy()
    L = np.atleast_2d(np.asarray(r_matrix, dtype=float))
    if L.shape[1] != len(names):
        raise ValueError(f"the contrast matrix has {L.shape[1]} columns for {len(names)} fixed effects")
    return L, np.zeros(L.shape[0])


def satterthwaite(res, L=None):
    """Satterthwaite denominator degrees of freedom, as lmerTest computes them.

    The asymptotic covariance A of (theta, sigma) is twice the (pseudo-)inverse of the
    Hessian of the deviance (REML or ML, as fitted) in (theta, sigma) with beta profiled
    out; J_i is the derivative of vcov(beta) = sigma^2 (X' V^-1 X)^-1 with respect to
    parameter i.  For a contrast l: ``df = 2 (l' C l)^2 / (g' A g)`` with ``g_i = l' J_i l``.
    Derivatives are central differences with Richardson extrapolation (as numDeriv).

    Parameters
    ----------
    res : LMM results
    L : array_like, optional
        Contrasts (rows); the fixed effects one by one when omitted.

    Returns
    -------
    numpy.ndarray
        One df per row of ``L``.
    """
    r = _raw(res)
    A, jac, C = _satt_pieces(r)
    L = np.eye(r.k_fe) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    out = np.empty(L.shape[0])
    for k, l in enumerate(L):
        var = l @ C @ l
        g = np.array([l @ J @ l for J in jac])
        den = g @ A @ g
        out[k] = 2.0 * var ** 2 / den if den > 0 else np.inf
    return out


def _hypothesis(res, L, rhs):
    """(L, rhs) from a matrix and rhs, or from the forms statsmodels' ``wald_test`` takes:
    ``"x = 0, z = 0"``, a list of such strings, or a tuple ``(L, q)``."""
    if isinstance(L, str) or isinstance(L, tuple) or (
            isinstance(L, list) and L and all(isinstance(x, str) for x in L)):
        if not (np.ndim(rhs) == 0 and float(rhs) == 0.0):
            raise ValueError("rhs is given by the constraint itself (a string or an (L, q) "
                             "tuple); leave rhs at 0")
        return _contrast_matrix(res, L)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    if L.shape[1] != len(_fe_names(res)):
        raise ValueError(f"L has {L.shape[1]} columns for {len(_fe_names(res))} fixed effects")
    return L, np.broadcast_to(np.asarray(rhs, float), (L.shape[0],)).astype(float)


def satterthwaite_ftest(res, L, rhs=0.0):
    """Satterthwaite F test of ``L beta = rhs`` (lmerTest's ``contestMD``).

    Parameters
    ----------
    res : LMM results
    L : array_like, str, list of str, or tuple
        The hypothesis matrix, or a constraint as statsmodels' ``wald_test`` takes it:
        ``"Days = 0"``, ``"a = 0, b = 0"``, ``["a = 0", "b = 0"]`` or ``(L, q)``.
    rhs : float or array_like
        Right-hand side for a matrix ``L``.

    Returns
    -------
    dict
        ``F``, ``df_num``, ``df_denom``, ``pvalue``.
    """
    L, rhs = _hypothesis(res, L, rhs)
    r = _raw(res)
    A, jac, C = _satt_pieces(r)
    beta = _params(r) - np.linalg.pinv(L) @ rhs
    VL = L @ C @ L.T
    d, P = np.linalg.eigh(VL)
    idx = np.argsort(d)[::-1]
    d, P = d[idx], P[:, idx]
    pos = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0)
    q = int(pos.sum())
    PtL = (P.T @ L)[:q]
    t2 = (PtL @ beta) ** 2 / d[:q]
    F = t2.sum() / q
    nu = []
    for m in range(q):
        g = np.array([PtL[m] @ J @ PtL[m] for J in jac])
        nu.append(2 * d[m] ** 2 / (g @ A @ g))
    nu = np.array(nu)
    if q == 1:
        ddf = nu[0]
    elif np.all(np.abs(np.diff(nu)) < 1e-8):
        ddf = nu.mean()
    elif np.any(nu <= 2):
        ddf = 2.0
    else:
        E = np.sum(nu / (nu - 2))
        ddf = 2 * E / (E - q)
    return {"F": F, "df_num": q, "df_denom": ddf, "pvalue": float(stats.f.sf(F, q, ddf))}


def _kr_pieces(res):
    """pbkrtest's adjusted covariance and its P, W pieces, computed in the random-effects space."""
    _require_lmm(res, "Kenward-Roger's method")
    r = _raw(res)
    _require_model_based(r, "Kenward-Roger's covariance and df")
    c = _cache(r)
    if "kr" in c:
        return c["kr"]
    if not r.reml:
        raise ValueError("Kenward-Roger's method is only available for REML fits (as in pbkrtest "
                         "and lmerTest); refit with reml=True")
    model = r.model
    if getattr(model, "correlation", None) is not None:
        # V below is sigma^2 (I + Z Lambda Lambda' Z'): independent residuals; emmeans' and
        # anova's KR defaults reached it for an AR1 fit and gave df and SEs of another model
        raise NotImplementedError("Kenward-Roger's method is not implemented for models with a "
                                  f"residual correlation structure ({model.correlation!r}); "
                                  "use ddf='satterthwaite'")
    w = np.asarray(model.weights, dtype=float)
    if not np.allclose(w, 1.0):
        raise NotImplementedError("Kenward-Roger's method is not implemented for weighted models")
    des = model.re_design
    n = model.exog.shape[0]          # rows (nobs leaves out zero-weight rows)
    Z = des.Z()
    q = Z.shape[1]
    if n * q > 8e7:
        raise NotImplementedError(f"Kenward-Roger needs an n x q dense matrix ({n} x {q}); "
                                  "too large here, use Satterthwaite")
    Lam = des.Lambda(r.theta)
    X = np.asarray(model.exog, dtype=float)
    s2 = r.sigma ** 2
    ZL = (Z @ Lam).tocsc()
    M = (ZL.T @ ZL).toarray() + np.eye(q)
    Mc = linalg.cho_factor(M, lower=True)
    Minv = linalg.cho_solve(Mc, np.eye(q))

    def S(B):                                    # V^-1 B for dense B
        B = np.asarray(B, dtype=float)
        return (B - ZL @ linalg.cho_solve(Mc, np.asarray(ZL.T @ B))) / s2

    SZ = S(Z.toarray())
    SX = S(X)
    W = np.asarray(Z.T @ SZ)
    K = np.asarray(SZ.T @ X)
    W2 = SZ.T @ SZ
    K2 = SZ.T @ SX
    XS2X = SX.T @ SX
    XS3X = SX.T @ S(SX)
    trS2 = (n - q + np.sum(Minv * Minv)) / s2 ** 2
    # E_r: structure of each covariance parameter (per term, lower triangle), in block columns
    E = []
    off_blocks = np.cumsum([0] + [b.nre for b in des.blocks])
    for bi, b in enumerate(des.blocks):
        off = 0
        for t in b.terms:
            for i, j in lower_tri(t.q):
                e = np.zeros((b.q, b.q))
                e[off + i, off + j] = e[off + j, off + i] = 1.0
                Eb = sparse.kron(sparse.identity(b.m), sparse.csr_matrix(e), format="csr")
                full = sparse.block_diag([sparse.csr_matrix((off_blocks[k + 1] - off_blocks[k],) * 2)
                                          if k != bi else Eb for k in range(len(des.blocks))],
                                         format="csr")
                E.append(full)
            off += t.q
    ng = len(E) + 1                                # + residual
    Phi = np.asarray(r.cov_params(), dtype=float)
    PP = [np.asarray(-(K.T @ (Er @ K))) for Er in E] + [-XS2X]
    EW = [np.asarray((Er @ W)) for Er in E]
    EK = [np.asarray(Er @ K) for Er in E]

    def QQ(a, b):
        if a < ng - 1 and b < ng - 1:
            return EK[a].T @ W @ EK[b]
        if a < ng - 1:
            return EK[a].T @ K2
        if b < ng - 1:
            return K2.T @ EK[b]
        return XS3X

    def Ktr(a, b):
        if a < ng - 1 and b < ng - 1:
            return np.sum(EW[a] * EW[b].T)
        if a < ng - 1:
            return float(E[a].multiply(W2).sum())          # tr(E_a W2), both symmetric
        if b < ng - 1:
            return float(E[b].multiply(W2).sum())
        return trS2

    IE2 = np.empty((ng, ng))
    Q = {}
    for a in range(ng):
        PhiPa = Phi @ PP[a]
        for b in range(a, ng):
            Q[a, b] = QQ(a, b)
            IE2[a, b] = IE2[b, a] = Ktr(a, b) - 2 * np.sum(Phi * Q[a, b]) + np.sum(PhiPa * (PP[b] @ Phi))
    ev = np.linalg.eigvalsh(IE2)
    WW = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    UU = np.zeros_like(Phi)
    for a in range(ng - 1):
        for b in range(a + 1, ng):
            UU += WW[a, b] * (Q[a, b] - PP[a] @ Phi @ PP[b])
    UU = UU + UU.T
    for a in range(ng):
        UU += WW[a, a] * (Q[a, a] - PP[a] @ Phi @ PP[a])
    PhiA = Phi + 2 * Phi @ UU @ Phi
    c["kr"] = (PhiA, PP, WW, Phi)
    return c["kr"]


def _kr_stats(L, V0, P, W):
    """pbkrtest's ``.KR_adjust`` pieces for L beta = 0: (ddf, F scaling)."""
    L = np.atleast_2d(L)
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    TV = Theta @ V0
    A1 = A2 = 0.0
    g = len(P)
    us = [TV @ P[i] @ V0 for i in range(g)]
    for i in range(g):
        for j in range(i, g):
            e = 1.0 if i == j else 2.0
            A1 += e * W[i, j] * np.trace(us[i]) * np.trace(us[j])
            A2 += e * W[i, j] * np.sum(us[i] * us[j].T)
    q = L.shape[0]
    B = (A1 + 6 * A2) / (2 * q)
    gg = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - gg)
    c1, c2, c3 = gg / den, (q - gg) / den, (q + 2 - gg) / den
    V0_ = 1 + c1 * B
    V1 = 1 - c2 * B
    V2 = 1 - c3 * B
    V0_ = 0.0 if abs(V0_) < 1e-10 else V0_
    x = 1 - A2 / q
    ratio = 1.0 if (abs(x) < 1e-14 and abs(V1) < 1e-14) else x / V1
    rho = ratio ** 2 * V0_ / V2 / q
    df2 = 4 + (q + 2) / (q * rho - 1)
    scaling = 1.0 if abs(df2 - 2) < 0.01 else df2 * (1 - A2 / q) / (df2 - 2)
    return df2, scaling


def _kr_ddf(L, V0, P, W):
    """pbkrtest's ``Lb_ddf``: Kenward-Roger denominator df for the hypothesis L beta = 0."""
    return _kr_stats(L, V0, P, W)[0]


def kenward_roger_ftest(res, L, rhs=0.0):
    """Kenward-Roger F test of ``L beta = rhs`` (pbkrtest's ``KRmodcomp``, lmerTest's
    ``contestMD(ddf = "Kenward-Roger")``).

    The Wald statistic uses the adjusted covariance; the F statistic is that statistic over
    the number of rows, times pbkrtest's scaling factor.

    Parameters
    ----------
    res : LMM results fitted by REML (unweighted)
    L : array_like, str, list of str, or tuple
        As in :func:`satterthwaite_ftest`.
    rhs : float or array_like

    Returns
    -------
    dict
        ``F``, ``df_num``, ``df_denom``, ``pvalue``, ``F_unscaled``, ``F_scaling``.
    """
    L, rhs = _hypothesis(res, L, rhs)
    PhiA, P, W, Phi = _kr_pieces(res)
    q = np.linalg.matrix_rank(L)
    if q == 0:
        raise ValueError("the hypothesis matrix L is zero")
    beta = _params(res) - np.linalg.pinv(L) @ rhs
    if q < L.shape[0]:            # pbkrtest's force_full_rank: a basis of the rows
        _, _, Vt = np.linalg.svd(L, full_matrices=False)
        L = Vt[:q]
    ddf, scaling = _kr_stats(L, Phi, P, W)
    d = L @ beta
    Fu = float(d @ np.linalg.solve(L @ PhiA @ L.T, d)) / q
    F = scaling * Fu
    return {"F": F, "df_num": q, "df_denom": ddf, "pvalue": float(stats.f.sf(F, q, ddf)),
            "F_unscaled": Fu, "F_scaling": scaling}


def kenward_roger(res, L=None):
    """Kenward-Roger adjusted covariance and denominator df (pbkrtest / lmerTest).

    Parameters
    ----------
    res : LMM results fitted by REML (unweighted)
    L : array_like, optional
        Contrast rows; the fixed effects one by one when omitted.

    Returns
    -------
    df : numpy.ndarray
        One df per row of ``L``.
    vcov_adj : numpy.ndarray
        The adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj``).
    """
    PhiA, P, W, Phi = _kr_pieces(res)
    L = np.eye(Phi.shape[0]) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    return np.array([_kr_ddf(l[None, :], Phi, P, W) for l in L]), PhiA


def _ddf_frame(res, ddf, alpha=0.05):
    r = _raw(res)
    method = _ddf_method(ddf)
    beta = _params(r)
    if method == "satterthwaite":
        df = satterthwaite(r)
        se = r.bse_fe.to_numpy()
    else:
        df, V = kenward_roger(r)
        se = np.sqrt(np.diag(V))
    t = beta / se
    p = 2 * stats.t.sf(np.abs(t), df)
    qq = stats.t.ppf(1 - alpha / 2, df)
    return pd.DataFrame({"coef": beta, "std err": se, "df": df, "t": t, "P>|t|": p,
                         f"[{alpha / 2:g}": beta - qq * se, f"{1 - alpha / 2:g}]": beta + qq * se},
                        index=_fe_names(r))


def _ddf_method(ddf):
    d = str(ddf).lower().replace("_", "-").replace(" ", "-")
    if d in ("satterthwaite", "satt"):
        return "satterthwaite"
    if d in ("kenward-roger", "kr", "kenwardroger"):
        return "kenward-roger"
    raise ValueError(f"unknown ddf method {ddf!r}; use 'satterthwaite' or 'kenward-roger'")


def t_test_ddf(res, r_matrix, df):
    """t tests of linear hypotheses ``R beta = q`` on Satterthwaite or Kenward-Roger df.

    lmerTest's ``contest1D``: one df per row of ``R``; Kenward-Roger also uses the adjusted
    covariance for the standard errors (as lmerTest).

    Parameters
    ----------
    res : LMM results
    r_matrix : array_like, str, or tuple
        As in statsmodels' ``t_test`` (``"Days = 0"``, a matrix, or ``(R, q)``).
    df : {"satterthwaite", "kenward-roger"}

    Returns
    -------
    statsmodels.stats.contrast.ContrastResults
    """
    method = _ddf_method(df)
    L, q = _contrast_matrix(res, r_matrix)
    beta = _params(res)
    if method == "satterthwaite":
        dfs = satterthwaite(res, L)
        V = np.asarray(res.cov_params(), dtype=float)
    else:
        dfs, V = kenward_roger(res, L)
    effect = L @ beta
    sd = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
    t = (effect - q) / sd
    out = DdfContrastResults(effect=effect, t=t, sd=sd, df_denom=dfs)
    out.method = method
    out.c_names = _constraint_names(r_matrix, L.shape[0])
    return out


def _constraint_names(r_matrix, k):
    """Row labels: the hypotheses as written (``"Days = 0"``), else ``c0, c1, ...``."""
    if isinstance(r_matrix, str):
        parts = [p.strip() for p in r_matrix.split(",")]
    elif isinstance(r_matrix, (list, tuple)) and r_matrix and all(isinstance(p, str) for p in r_matrix):
        parts = [p.strip() for p in r_matrix]
    else:
        parts = []
    return parts if len(parts) == k else [f"c{i}" for i in range(k)]


class DdfContrastResults(ContrastResults):
    """statsmodels' ``ContrastResults`` of t tests on per-contrast df (lmerTest's ``contest``):
    the printed table shows each row's hypothesis and its df."""

    def summary(self, xname=None, alpha=0.05, title=None):
        """The t tests as a table: estimate, SE, t, df, p-value and the confidence interval."""
        names = list(xname) if xname is not None else list(self.c_names)
        est = np.atleast_1d(self.effect)
        se = np.atleast_1d(self.sd)
        t = np.atleast_1d(self.tvalue).ravel()
        dfs = np.atleast_1d(self.df_denom).ravel()
        p = np.atleast_1d(self.pvalue).ravel()
        ci = np.atleast_2d(self.conf_int(alpha))
        rows = [[f"{e:.4f}", f"{s:.3f}", f"{tt:.3f}", f"{d:.2f}",
                 f"{pp:.3f}" if pp >= 0.001 else f"{pp:.2e}", f"{lo:.3f}", f"{hi:.3f}"]
                for e, s, tt, d, pp, (lo, hi) in zip(est, se, t, dfs, p, ci)]
        lo, hi = f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"
        return SimpleTable(rows, headers=["coef", "std err", "t", "df", "P>|t|", lo, hi],
                           stubs=names, title=title or "Test for constraints (t tests, "
                           f"{getattr(self, 'method_label', self.method.title())} df)")

    def __str__(self):
        return str(self.summary())

    __repr__ = __str__


def params_table_ddf(res, ddf, alpha=0.05):
    """The fixed-effects table of ``summary(ddf=...)``: t tests on ``ddf`` degrees of freedom."""
    fr = _ddf_frame(res, ddf, alpha)
    est, se, dfs, t, p, lo, hi = fr.to_numpy().T
    d = fixed_decimals(se, sig=4)                # R's printCoefmat digits, as params_table
    dt = max(2, fixed_decimals(t, sig=3, most=3))
    data = [[f"{v:.{d}f}", f"{s:.{d}f}", f"{n:.2f}", f"{z:.{dt}f}", format_pval(q),
             f"{a:.{d}f}", f"{b:.{d}f}"] for v, s, n, z, q, a, b in zip(est, se, dfs, t, p, lo, hi)]
    return SimpleTable(data, headers=list(fr.columns), stubs=list(fr.index),
                       title=f"Fixed effects (t tests, {_ddf_method(ddf).title()} df)")
