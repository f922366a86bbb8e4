"""Cluster-robust (sandwich) covariances of the fixed effects of linear mixed models.

As R's clubSandwich computes them for ``lmer`` fits (``vcovCR``, ``coef_test``,
``Wald_test``): the working covariance of cluster ``j`` is the model's marginal covariance
``V_j = Z_j Lambda Lambda' Z_j' + I`` (in units of sigma^2), ``W_j = V_j^-1``,
``M = (sum_j X_j' W_j X_j)^-1``, and with the marginal residuals ``r_j = y_j - X_j beta``::

    vcov = M (sum_j E_j r_j r_j' E_j') M,        E_j = X_j' W_j A_j,

``A_j = I`` (CR0), a constant (CR1, CR1p, CR1S) or Bell and McCaffrey's adjustment (CR2)
``A_j = L_j (L_j' (V_j - X_j M X_j') L_j)^(-1/2) L_j'`` with ``V_j = L_j L_j'``.  The
small-sample degrees of freedom are Pustejovsky and Tipton's (2018): Satterthwaite's for one
contrast, the Hotelling's T^2 approximation ("HTZ") for several, from the same pieces
clubSandwich's ``get_GH`` builds.  Everything is computed cluster by cluster (dense
``n_j x n_j`` matrices), which needs every grouping factor nested in the clusters.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from scipy import linalg
from statsmodels.stats.contrast import ContrastResults

from .._args import reject_unknown
from ._common import _params, _raw, _require_independent
from .ddf import DdfContrastResults, _constraint_names, _contrast_matrix

__all__ = ["CR_TYPES", "ROBUST_DFS", "ClusterRobust", "cluster_robust", "check_cov_args",
           "get_robustcov_results"]

CR_TYPES = ("CR0", "CR1", "CR1p", "CR1S", "CR2")
ROBUST_DFS = ("satterthwaite", "z", "naive-t", "naive-tp")


def _matrix_power(A, power, tol=1e-12):
    """clubSandwich's ``matrix_power``: eigenvalues below ``tol`` count as zero."""
    w, U = np.linalg.eigh(0.5 * (A + A.T))
    wp = np.zeros_like(w)
    ok = w > tol
    wp[ok] = w[ok] ** power
    return (U * wp) @ U.T


def _type_name(type):
    names = {t.lower(): t for t in CR_TYPES}
    t = names.get(str(type).lower()) if isinstance(type, str) else None
    if t is None:
        raise ValueError(f"unknown cluster-robust type {type!r}; use one of {list(CR_TYPES)}")
    return t


def _df_name(df):
    d = str(df).lower().replace("_", "-") if isinstance(df, str) else None
    d = {"satt": "satterthwaite", "naive-tp": "naive-tp", "naive-t": "naive-t"}.get(d, d)
    if d not in ROBUST_DFS:
        raise ValueError(f"unknown df={df!r} for the cluster-robust tests; use one of "
                         f"{list(ROBUST_DFS)}")
    return d


def check_cov_args(cov_type, cov_kwds):
    """Check ``fit(cov_type=..., cov_kwds=...)`` before fitting; the normalized cov_kwds."""
    if not isinstance(cov_type, str) or cov_type.lower() not in ("nonrobust", "cluster"):
        raise ValueError(f"unknown cov_type {cov_type!r}; use 'nonrobust' (the model-based "
                         "covariance) or 'cluster' (cluster-robust, clubSandwich's CR0/CR1/CR2)")
    if cov_kwds is not None and not isinstance(cov_kwds, dict):
        raise TypeError(f"cov_kwds must be a dict (or None); got {type(cov_kwds).__name__}")
    kw = dict(cov_kwds or {})
    if cov_type.lower() == "nonrobust":
        if kw:
            raise ValueError(f"cov_kwds {sorted(kw)} are for cov_type='cluster'; the model-based "
                             "covariance takes none")
        return kw
    reject_unknown({k: v for k, v in kw.items() if k not in ("type", "groups", "df")},
                   "cov_kwds", accepted=["type", "groups", "df"])
    kw["type"] = _type_name(kw.get("type", "CR2"))
    kw["df"] = _df_name(kw.get("df", "satterthwaite"))
    kw.setdefault("groups", None)
    return kw


# ------------------------------------------------------------------ clusters
def _cluster_codes(model, groups):
    """Integer codes (0..J-1) of the clusters per fitted row, and the clusters' name.

    ``None``: the grouping factor with the fewest levels (clubSandwich's ``get_outer_group``);
    a string: a grouping factor of the model (``"school"``, ``"class:school"``) or a column of
    the model frame; otherwise one value per fitted row (an array, or a Series indexed like
    the data the model was fitted on).
    """
    des = model.re_design
    n = model.exog.shape[0]
    if groups is None:
        blk = min(des.blocks, key=lambda b: b.m)        # first of equals, as which.min
        return np.asarray(blk.codes), blk.name
    if isinstance(groups, str):
        for t in des.terms:
            if groups == t.name or groups == ":".join(t.factors):
                return np.asarray(t.codes), t.name
        data = model.formula_info.get("data")
        if data is not None and groups in getattr(data, "columns", ()):
            values = data[groups].to_numpy()
        else:
            raise ValueError(f"groups={groups!r} is neither a grouping factor of the model "
                             f"({[t.name for t in des.terms]}) nor a column of its model frame; "
                             "pass the clusters as an array with one value per fitted row")
        name = groups
    else:
        name = getattr(groups, "name", None) or "groups"
        labels = model.formula_info.get("row_labels")
        if isinstance(groups, pd.Series) and labels is not None and len(groups) != n:
            groups = groups.reindex(pd.Index(labels))   # the rows the fit kept
        values = np.asarray(groups)
        if values.ndim != 1 or values.shape[0] != n:
            raise ValueError(f"groups must have one value per fitted row ({n}); got shape "
                             f"{values.shape}")
    if pd.isna(values).any():
        raise ValueError(f"the clusters {name!r} have missing values in the fitted rows")
    codes = pd.factorize(values, sort=True)[0]
    return codes, str(name)


def _check_nested(des, codes, name):
    """Every grouping factor nested in the clusters (clubSandwich's ``is_nested_lmerMod``)."""
    J = codes.max() + 1
    for blk in des.blocks:
        pairs = np.unique(np.asarray(blk.codes, dtype=np.int64) * J + codes)
        if pairs.size != np.unique(blk.codes).size:
            raise ValueError(
                f"the grouping factor {blk.name!r} is not nested in the clusters {name!r} (some "
                f"of its levels occur in several clusters); cluster-robust covariances need the "
                "random effects nested in the clusters (as clubSandwich requires): cluster by a "
                "factor that contains them all")


# ------------------------------------------------------------------ the computation
class ClusterRobust:
    """A cluster-robust covariance of the fixed effects with its small-sample pieces.

    Attributes
    ----------
    vcov : numpy.ndarray
        The covariance (clubSandwich's ``vcovCR``).
    type : str
        ``"CR0"``, ``"CR1"``, ``"CR1p"``, ``"CR1S"`` or ``"CR2"``.
    groups : str
        The clusters' name.
    n_groups : int
        Number of clusters J.
    """

    def __init__(self, vcov, type, groups, n_groups, D, H):
        self.vcov, self.type, self.groups, self.n_groups = vcov, type, groups, int(n_groups)
        self._D, self._H = D, H          # per cluster: G_j G_j' (J, p, p) and H_j (J, p, p)

    def _pieces(self, C):
        """(Omega, d, H) for the contrasts C: clubSandwich's P array in factored form."""
        C = np.atleast_2d(np.asarray(C, dtype=float))
        d = np.einsum("ap,jpq,bq->jab", C, self._D, C)
        Hc = np.einsum("ap,jpu->jau", C, self._H)
        omega = d.sum(0) - np.einsum("jau,jbu->ab", Hc, Hc)
        return omega, d, Hc

    def nu(self, C):
        """Pustejovsky-Tipton's ``nu`` for the contrasts ``C`` (rows): with one row the
        Satterthwaite df of ``coef_test``, with ``q`` rows the HTZ test's
        ``q (q + 1) / sum(Var)`` of ``Wald_test`` (clubSandwich's ``total_variance_mat``)."""
        omega, d, Hc = self._pieces(C)
        q = omega.shape[0]
        S = _matrix_power(omega, -0.5)
        d = np.einsum("sa,jab,tb->jst", S, d, S)
        Hc = np.einsum("sa,jau->jsu", S, Hc)
        # P_ab = diag(d_ab) - H_a' H_b (J x J); the sums of products of these matrices need
        # only the diagonals e_ab of H_a' H_b and the small K_ac = H_a H_c'
        e = np.einsum("jau,jbu->jab", Hc, Hc)
        K = np.einsum("jau,jcv->acuv", Hc, Hc)
        var = np.empty((q, q))
        for s in range(q):
            for t in range(q):
                a = np.sum(d[:, s, t] ** 2 - 2 * d[:, s, t] * e[:, s, t]) + np.sum(K[s, t] * K[s, t].T)
                b = (np.sum(d[:, s, s] * d[:, t, t] - d[:, s, s] * e[:, t, t] - d[:, t, t] * e[:, s, s])
                     + np.sum(K[s, t] * K[s, t]))
                var[s, t] = a + b
        return q * (q + 1) / var.sum()

    def df_coef(self):
        """Satterthwaite df of each coefficient (``coef_test(..., test="Satterthwaite")``)."""
        p = self.vcov.shape[0]
        return np.array([self.nu(np.eye(p)[i:i + 1]) for i in range(p)])


def cluster_robust(res, type="CR2", groups=None, theta=None, beta=None):
    """Cluster-robust covariance of the fixed effects of an LMM fit (clubSandwich's ``vcovCR``).

    Parameters
    ----------
    res : LMM results
    type : {"CR2", "CR0", "CR1", "CR1p", "CR1S"}
        CR1 multiplies CR0 by ``J / (J - 1)``, CR1p by ``J / (J - p)``, CR1S by
        ``J (N - 1) / ((J - 1) (N - p))``; CR2 is Bell and McCaffrey's bias-reduced
        estimator with the model's marginal covariance as working model.
    groups : None, str or array_like
        The clusters (see :meth:`get_robustcov_results`).
    theta, beta : array_like, optional
        Evaluate at other variance parameters / fixed effects than the estimates (for
        checking against another program's optimum).

    Returns
    -------
    ClusterRobust
    """
    _require_independent(res, "cluster_robust()")
    r = _raw(res)
    model = r.model
    if not hasattr(model, "deviance_profiled"):
        raise NotImplementedError(
            "cluster-robust covariances are implemented for linear mixed models (lmer fits) "
            f"only, not for {model.__class__.__name__} fits")
    type = _type_name(type)
    if not np.all(np.asarray(model.weights) == 1.0):
        raise NotImplementedError("cluster-robust covariances of models with prior weights are "
                                  "not implemented (clubSandwich does not support them either)")
    des = model.re_design
    theta = r.theta if theta is None else np.asarray(theta, dtype=float)
    beta = _params(r) if beta is None else np.asarray(beta, dtype=float)
    codes, name = _cluster_codes(model, groups)
    J = int(codes.max()) + 1
    if J < 2:
        raise ValueError(f"the clusters {name!r} have one level: cluster-robust covariances need "
                         "at least two clusters")
    _check_nested(des, codes, name)
    X = np.asarray(model.exog, dtype=float)
    N, p = X.shape
    resid = np.asarray(model.endog, dtype=float) - model.offset - X @ beta
    ZL = (des.Z() @ des.Lambda(theta)).tocsr()
    order = np.argsort(codes, kind="stable")
    rows = np.split(order, np.cumsum(np.bincount(codes, minlength=J))[:-1])
    parts = []
    XWX = np.zeros((p, p))
    for idx in rows:
        Zj = ZL[idx]
        Zj = Zj[:, np.flatnonzero(Zj.getnnz(axis=0))].toarray()
        Lj = np.linalg.cholesky(Zj @ Zj.T + np.eye(idx.size))        # V_j = L_j L_j'
        WX = linalg.cho_solve((Lj, True), X[idx])
        XWX += X[idx].T @ WX
        parts.append((idx, Lj, WX))
    M = np.linalg.inv(XWX)
    M = 0.5 * (M + M.T)
    scale = {"CR0": 1.0, "CR1": J / (J - 1), "CR1p": J / (J - p),
             "CR1S": J * (N - 1) / ((J - 1) * (N - p)), "CR2": 1.0}[type]
    comps = np.empty((J, p))
    D = np.empty((J, p, p))
    H = np.empty((J, p, p))
    Lm = np.linalg.cholesky(M)
    for j, (idx, Lj, WX) in enumerate(parts):
        E = WX.T * np.sqrt(scale)                     # X_j' W_j, times CR1's factor
        if type == "CR2":
            Xj = X[idx]
            B = Lj.T @ (Lj @ Lj.T - Xj @ M @ Xj.T) @ Lj
            E = E @ (Lj @ _matrix_power(B, -0.5) @ Lj.T)
        comps[j] = E @ resid[idx]
        ME = M @ E
        G = ME @ Lj
        D[j] = G @ G.T
        H[j] = ME @ X[idx] @ Lm
    meat = comps.T @ comps
    vcov = M @ meat @ M
    return ClusterRobust(0.5 * (vcov + vcov.T), type, name, J, D, H)


# ------------------------------------------------------------------ the results object
def get_robustcov_results(res, cov_type="cluster", **kwds):
    """A NEW results object whose inference uses a cluster-robust covariance.

    See :meth:`mlmext.results.MixedResults.get_robustcov_results`.
    """
    r = _raw(res)
    kw = check_cov_args(cov_type, kwds)
    new = copy.copy(r)
    new._cache = {}                                  # statsmodels' cached bse, pvalues, ...
    new.__dict__["_inference_cache"] = {}
    for k in ("cov_params_default", "df_resid_inference", "_robust"):
        new.__dict__.pop(k, None)
    new.use_t = False
    if cov_type.lower() == "nonrobust":
        new.cov_type, new.cov_kwds = "nonrobust", {}
        new.use_t = getattr(r, "ddf", "z") != "z"       # the fit's t tests on its df
        return new
    rc = cluster_robust(r, type=kw["type"], groups=kw["groups"])
    new.cov_type = "cluster"
    new.cov_kwds = {"type": rc.type, "groups": rc.groups, "df": kw["df"]}
    new.cov_params_default = rc.vcov
    new._robust = rc
    J, p = rc.n_groups, rc.vcov.shape[0]
    dfs = {"satterthwaite": rc.df_coef() if kw["df"] == "satterthwaite" else None,
           "naive-t": J - 1, "naive-tp": J - p, "z": None}[kw["df"]]
    if dfs is not None:
        new.use_t = True
        new.df_resid_inference = dfs
    return new


def robust_note(res):
    """The summary's note on the covariance of a cluster-robust result."""
    r = _raw(res)
    kw = r.cov_kwds
    tests = {"satterthwaite": "t tests on clubSandwich's Satterthwaite df (coef_test)",
             "z": "z tests", "naive-t": f"t tests on J - 1 = {r._robust.n_groups - 1} df",
             "naive-tp": f"t tests on J - p = {r._robust.n_groups - r.k_fe} df"}[kw["df"]]
    return (f"Covariance of the fixed effects: cluster-robust {kw['type']} (clubSandwich's "
            f"vcovCR), clustered by {kw['groups']} ({r._robust.n_groups} clusters); {tests}"
            + (": " + ", ".join(f"{n} {d:.2f}" for n, d in zip(r.model.exog_names,
                                                                r.df_resid_inference))
               if kw["df"] == "satterthwaite" else "") + ".")


def robust_t_test(res, r_matrix):
    """t tests of ``R beta = q`` with the robust covariance and a Satterthwaite df per row."""
    r = _raw(res)
    L, q = _contrast_matrix(r, r_matrix)
    V = r._robust.vcov
    effect = L @ _params(r)
    sd = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
    dfs = np.array([r._robust.nu(l[None, :]) for l in L])
    out = DdfContrastResults(effect=effect, t=(effect - q) / sd, sd=sd, df_denom=dfs)
    out.method = "satterthwaite"
    out.method_label = f"{r._robust.type} Satterthwaite"
    out.c_names = _constraint_names(r_matrix, L.shape[0])
    return out


def robust_wald_test(res, r_matrix):
    """clubSandwich's HTZ Wald test of ``R beta = q`` (``Wald_test(..., test = "HTZ")``).

    ``F = delta Q / q`` on ``(q, nu - q + 1)`` df with ``delta = (nu - q + 1) / nu``, ``Q`` the
    robust Wald statistic and ``nu`` Pustejovsky and Tipton's Hotelling T^2 df.
    """
    r = _raw(res)
    L, qv = _contrast_matrix(r, r_matrix)
    rc = r._robust
    diff = L @ _params(r) - qv
    Q = float(diff @ np.linalg.solve(L @ rc.vcov @ L.T, diff))
    q = L.shape[0]
    nu = rc.nu(L)
    delta = max((nu - q + 1) / nu, 0.0)
    out = ContrastResults(F=delta * Q / q, df_num=q, df_denom=nu - q + 1)
    out.distribution = "F"
    out.statistic_chi2 = Q
    out.delta = delta
    return out
