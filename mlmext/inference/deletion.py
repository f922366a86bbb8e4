"""Case-deletion influence and leverage of an LMM fit, as HLMdiag gives them.

Deleting a set I of rows (one observation, or every row of one level of a grouping factor):
Cook's distance, MDFFITS, COVTRACE, COVRATIO (Christensen, Pearson & Johnson 1992), the
relative variance change of each variance component (refits only), and the leverage of
Demidenko & Stukel (2005) and Nobre & Singer (2007) per row or per level.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg, sparse

from ._common import _fe_names, _is_lmm, _params, _raw, _require_independent
from ._refit import _rebuild_model, _refit

_METHODS = ("one-step", "refit", "exact")


def _require(res, what):
    if not _is_lmm(res):
        raise NotImplementedError(f"{what} is implemented for linear mixed models (lmer fits) only; "
                                  f"this is a {type(_raw(res).model).__name__}: case-deletion "
                                  "diagnostics of GLMMs and clmm are not built")
    _require_independent(res, what)     # V here has independent residuals (leverage was reachable)


def _group_block(model, group):
    des = model.re_design
    if group is None:
        return des.terms[0]
    for t in des.terms:
        if t.name == group or ":".join(t.factors) == group or group in (t.factors if len(t.factors) == 1 else ()):
            return t
    raise ValueError(f"unknown grouping factor {group!r}; the model has {[t.name for t in des.terms]}")


def _deletion_sets(model, group, what):
    """(index, list of row-position arrays): one set per observation (``group=1``) or per level."""
    if isinstance(group, (bool, np.bool_)) or not (group is None or isinstance(group, str) or group == 1):
        raise ValueError(f"group must be the name of a grouping factor or 1 (single observations, "
                         f"HLMdiag's level = 1) for {what}; got {group!r}")
    # the rows first: a model that holds none (Dask data) raises its own clear error here,
    # not a TypeError from its grouping codes (None) below
    n = np.asarray(model.endog).shape[0]
    if group is None or isinstance(group, str):
        t = _group_block(model, group)
        order = np.argsort(t.codes, kind="stable")
        starts = np.searchsorted(t.codes[order], np.arange(t.m + 1))
        sets = [order[starts[g]:starts[g + 1]] for g in range(t.m)]
        return pd.Index(t.levels, name=t.name), sets, t.codes
    labels = getattr(model, "formula_info", {}).get("row_labels")
    index = pd.Index(labels if labels is not None and len(labels) == n else np.arange(n), name="observation")
    return index, [np.array([i]) for i in range(n)], np.arange(n)


class _GLS:
    """GLS pieces at the fit's variance components: ``V = sigma^2 (W^-1 + Z Lambda Lambda' Z')``
    applied through ``W^1/2 Z Lambda`` and the q x q matrix ``M = Lambda'Z'WZ Lambda + I``,
    never as an n x n matrix."""

    def __init__(self, r):
        model = r.model
        des = model.re_design
        self.X = np.asarray(model.exog, dtype=float)
        self.w = np.asarray(model.weights, dtype=float)
        self.sw = np.sqrt(self.w)
        self.ZLam = (des.Z("csr") @ des.Lambda(r.theta)).tocsr()
        self.ZL = (sparse.diags(self.sw) @ self.ZLam).tocsr()
        q = self.ZL.shape[1]
        self.Mc = linalg.cho_factor((self.ZL.T @ self.ZL).toarray() + np.eye(q), lower=True)
        self.Minv = linalg.cho_solve(self.Mc, np.eye(q))
        self.s2 = r.sigma ** 2
        y = np.asarray(model.endog, dtype=float) - np.asarray(model.offset, dtype=float)
        self.VX = self.vinv(self.X)
        self.XVX = self.X.T @ self.VX
        self.C = np.linalg.inv(self.XVX)                    # V(beta_hat) = (X'V^-1X)^-1
        e = y - self.X @ (self.C @ (self.VX.T @ y))
        self.Ve = self.vinv(e[:, None])[:, 0]

    def vinv(self, B):
        Bw = B * self.sw[:, None]
        return (Bw - self.ZL @ linalg.cho_solve(self.Mc, np.asarray(self.ZL.T @ Bw))) * self.sw[:, None] / self.s2

    def vinv_block(self, I):
        F = self.ZL[I].toarray()
        return (np.eye(I.size) - F @ self.Minv @ F.T) * np.outer(self.sw[I], self.sw[I]) / self.s2

    def vinv_diag(self):
        """diag(V^-1), in row chunks (an n x q dense block at most 2e6 numbers)."""
        n, q = self.ZL.shape
        out = np.empty(n)
        step = max(1, 2_000_000 // max(q, 1))
        for s in range(0, n, step):
            F = self.ZL[s:s + step]
            out[s:s + step] = 1.0 - np.asarray(F.multiply(F @ self.Minv).sum(axis=1)).ravel()
        return out * self.w / self.s2

    def one_step(self, I):
        """(d, cooks_d, mdffits, covtrace, covratio) for deleting the rows I, variance
        components fixed: d = C X'V^-1[:, I] P_II^-1 (V^-1 e)_I; V(beta_(I)) = C + C K C with
        K = A' P_II^-1 A, A = (V^-1 X)_I (Woodbury: the inverse of X_(I)'V_(I)^-1 X_(I))."""
        p = self.C.shape[0]
        A = self.VX[I]
        VII = self.vinv_block(I)
        PII = VII - A @ self.C @ A.T
        G = np.linalg.solve(PII, np.column_stack([self.Ve[I], A]))
        d = self.C @ (A.T @ G[:, 0])
        K = A.T @ G[:, 1:]
        XNaX = self.XVX - A.T @ np.linalg.solve(VII, A)     # X_(I)'V_(I)^-1 X_(I)
        KC = K @ self.C
        sign, logdet = np.linalg.slogdet(np.eye(p) + KC)
        return d, d @ self.XVX @ d / p, d @ XNaX @ d / p, abs(np.trace(KC)), sign * np.exp(logdet)

    def one_step_rows(self):
        """:meth:`one_step` for every single row at once: with I = {j} the updates are rank
        one (a = (V^-1 X)_j, h = a'Ca, P_jj = V^-1_jj - h): d = C a (V^-1 e)_j / P_jj,
        covtrace = h / P_jj, covratio = 1 + h / P_jj (the determinant lemma) and
        X_(j)'V_(j)^-1 X_(j) = X'V^-1X - a a' / V^-1_jj."""
        p = self.C.shape[0]
        A = self.VX
        vjj = self.vinv_diag()
        AC = A @ self.C
        h = np.einsum("ij,ij->i", AC, A)
        pjj = vjj - h
        D = AC * (self.Ve / pjj)[:, None]
        dxd = np.einsum("ij,ij->i", D @ self.XVX, D)
        ad = np.einsum("ij,ij->i", A, D)
        return D, dxd / p, (dxd - ad ** 2 / vjj) / p, np.abs(h / pjj), 1.0 + h / pjj


def _varcomp(fit):
    """Variances and covariances (lme4's vcov column) named var_/cov_ as varcorr's sd_/cor_ rows,
    and sigma2."""
    vc = fit.varcorr()
    out = {}
    for name, v in zip(vc.index, vc["vcov"]):
        if name == "sigma":
            out["sigma2"] = v
        elif name.startswith("sd_"):
            out["var_" + name[3:]] = v
        elif name.startswith("cor_"):
            out["cov_" + name[4:]] = v
    return pd.Series(out, dtype=float)


def influence(res, group=None, method="one-step"):
    """Case-deletion influence on the fixed effects and their covariance (HLMdiag).

    For each deleted set I -- the rows of one level of a grouping factor, or one
    observation with ``group=1`` -- with ``beta_(I)`` the fixed effects and ``V(beta_(I))``
    their covariance without I, ``d = beta_hat - beta_(I)`` and p fixed effects:

    * ``cooks_d`` = ``d' V(beta_hat)^-1 d / p`` (Cook's distance);
    * ``mdffits`` = ``d' V(beta_(I))^-1 d / p``;
    * ``covtrace`` = ``|tr(V(beta_hat)^-1 V(beta_(I))) - p|``;
    * ``covratio`` = ``det V(beta_(I)) / det V(beta_hat)``;
    * ``rvc_<component>`` (``method="refit"`` only), the relative variance change
      ``v_(I) / v - 1`` of ``sigma2`` and of each random-effect variance
      (``var_<term>|<group>``) and covariance (``cov_<term>.<term>|<group>``), named as
      :meth:`varcorr` names their SDs and correlations (HLMdiag's ``rvc.sigma2``,
      ``rvc.D11``, ...); a component estimated at 0 gives ``inf`` or ``nan``;
    * one column per fixed effect: the change ``d``.

    ``method="one-step"`` (HLMdiag's default, ``approx = TRUE``) holds the variance
    components at their estimates: with ``V`` the fitted covariance of y,
    ``P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1`` and ``e = y - X beta``,
    ``d = (X'V^-1X)^-1 X' V^-1[:, I] P_II^-1 (V^-1 e)_I`` and ``V(beta_(I)) =
    (X_(I)' V_(I)^-1 X_(I))^-1`` (V without the rows and columns I); it is computed through
    ``Z Lambda`` without an n x n matrix.  The variance components do not change, so
    there are no RVC columns (HLMdiag gives them only for refits too).
    ``method="refit"`` (or ``"exact"``; HLMdiag's ``approx = FALSE``) refits the model
    without each set (REML or ML as the fit) and uses the refit's fixed effects, covariance
    (:meth:`cov_params`) and variance components.  Weighted fits use their own
    ``V = sigma^2 (W^-1 + Z Lambda Lambda' Z')``.

    Parameters
    ----------
    res : LMM results
    group : str or 1, optional
        Grouping factor whose levels are deleted (the first in lme4's order by default),
        or ``1`` to delete single observations (HLMdiag's ``level = 1``).
    method : {"one-step", "refit", "exact"}

    Returns
    -------
    pandas.DataFrame
        Index: the levels (or the observations' row labels); columns as above.
    """
    _require(res, "Case-deletion influence")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    r = _raw(res)
    model = r.model
    index, sets, _ = _deletion_sets(model, group, "influence")
    p = _params(r).size
    names = _fe_names(r)
    cols = ["cooks_d", "mdffits", "covtrace", "covratio"]
    rows = []
    by_row = not (group is None or isinstance(group, str))        # group=1 (validated above)
    if method == "one-step" and by_row:
        D, *stats = _GLS(r).one_step_rows()
        rows = np.column_stack(stats + [D])
    elif method == "one-step":
        gls = _GLS(r)
        for I in sets:
            d, cd, mdf, ct, cr = gls.one_step(I)
            rows.append(np.concatenate([[cd, mdf, ct, cr], d]))
    else:
        beta = _params(r)
        Vb = np.asarray(r.cov_params(), dtype=float)
        Vbi = np.linalg.inv(Vb)
        _, logdet0 = np.linalg.slogdet(Vb)
        vc0 = _varcomp(r)
        cols = cols + ["rvc_" + k for k in vc0.index]
        for I in sets:
            keep = np.ones(len(np.asarray(model.endog)), dtype=bool)
            keep[I] = False
            fit = _refit(_rebuild_model(model, keep=keep), r, start=False)
            d = beta - _params(fit)
            Vi = np.asarray(fit.cov_params(), dtype=float)
            sign, logdet = np.linalg.slogdet(Vi)
            with np.errstate(divide="ignore", invalid="ignore"):   # a variance estimated at 0
                rvc = _varcomp(fit).reindex(vc0.index).to_numpy() / vc0.to_numpy() - 1.0
            rows.append(np.concatenate([[d @ Vbi @ d / p, d @ np.linalg.solve(Vi, d) / p,
                                         abs(np.trace(Vbi @ Vi) - p), sign * np.exp(logdet - logdet0)],
                                        rvc, d]))
    out = pd.DataFrame(rows, index=index, columns=cols + names)
    out.attrs["method"] = "refit" if method == "exact" else method
    return out


def cooks_distance(res, group=None, method="one-step"):
    """Cook's distance per level of a grouping factor, or per observation with ``group=1``
    (see :func:`influence`).

    Returns
    -------
    pandas.Series
    """
    return influence(res, group=group, method=method)["cooks_d"]


def leverage(res, group=1):
    """Leverage of each observation, or its mean over each level of a grouping factor
    (HLMdiag's ``leverage``).

    With ``H1 = X (X'V^-1X)^-1 X'V^-1`` (the fixed part) and ``H2 = Z D Z' V^-1 (I - H1)``
    (the random part, Demidenko & Stukel 2005), V the fitted covariance of y and
    ``Z D Z'`` its random-effect part, the columns are the diagonals of

    * ``overall``: ``H1 + H2`` (which is ``I - sigma^2 W^-1 P``, P as in :func:`influence`);
    * ``fixef``: ``H1``;
    * ``ranef``: ``H2``;
    * ``ranef.uc``: ``Z D Z' / sigma^2 = Z Lambda Lambda' Z'``, the unconfounded random-effect
      leverage of Nobre & Singer (2007), on the relative scale lme4's HLMdiag reports it.

    At a group level each column is the mean of its rows' values (HLMdiag's "mean trace").
    Computed from ``Z Lambda`` without an n x n matrix.

    Parameters
    ----------
    res : LMM results
    group : 1 or str
        ``1`` (default) for one row per observation, or a grouping factor.

    Returns
    -------
    pandas.DataFrame
        Columns ``overall, fixef, ranef, ranef.uc``.
    """
    _require(res, "Leverage")
    r = _raw(res)
    index, _, codes = _deletion_sets(r.model, group, "leverage")
    gls = _GLS(r)
    h1 = np.einsum("ij,ij->i", gls.X @ gls.C, gls.VX)
    pjj = gls.vinv_diag() - np.einsum("ij,ij->i", gls.VX @ gls.C, gls.VX)
    overall = 1.0 - gls.s2 * pjj / gls.w
    uc = np.asarray(gls.ZLam.multiply(gls.ZLam).sum(axis=1)).ravel()
    out = pd.DataFrame({"overall": overall, "fixef": h1, "ranef": overall - h1, "ranef.uc": uc})
    if group != 1:
        out = out.groupby(codes).mean()
        out.index = index
    else:
        out.index = index
    return out
