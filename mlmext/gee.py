"""GEE working-correlation selection by QIC (Pan 2001), with geepack's conventions.

:func:`qic` computes QIC, QICu, CIC and the quasi-likelihood of any fitted
statsmodels ``GEEResults`` [1]_.  :func:`gee_select` fits one GEE per candidate
working correlation on the same rows and tabulates the criteria, flagging fits
that should not be ranked silently.

The working correlations :class:`PairwiseExchangeable`, :class:`PairwiseAR1`
and :class:`PairwiseUnstructured` estimate their parameters from the pairwise
products of standardized Pearson residuals by (weighted) least squares, the
moment estimators of geepack (Yan and Fine 2004 [2]_), so that their fits agree with
``geepack::geeglm`` [3]_.

References
----------
.. [1] W. Pan (2001). Akaike's information criterion in generalized estimating
   equations. Biometrics 57(1), 120-125.
.. [2] J. Yan and J. Fine (2004). Estimating equations for association
   structures. Statistics in Medicine 23(6), 859-874.
.. [3] U. Halekoh, S. Hojsgaard and J. Yan (2006). The R package geepack for
   generalized estimating equations. Journal of Statistical Software 15(2).
"""
from __future__ import annotations

import copy
import functools
import inspect
import warnings

import numpy as np
import pandas as pd
from scipy import linalg as spl
from scipy import optimize
from scipy.special import xlog1py, xlogy
from statsmodels.formula._manager import FormulaManager
from statsmodels.genmod import cov_struct as sm_cov
from statsmodels.genmod import families
from statsmodels.genmod.generalized_estimating_equations import GEE
from statsmodels.genmod.generalized_linear_model import GLM
from statsmodels.iolib.summary2 import Summary
from statsmodels.tools.sm_exceptions import ConvergenceWarning, IterationLimitWarning, SingularMatrixWarning

from .base import _caller_namespace
from .base import _eval as _eval_formula

__all__ = [
    "qic",
    "gee_select",
    "GEESelection",
    "PairwiseCovStruct",
    "PairwiseExchangeable",
    "PairwiseAR1",
    "PairwiseUnstructured",
]


# ---------------------------------------------------------------------------
# Working correlations estimated from pairwise residual products
# ---------------------------------------------------------------------------
class PairwiseCovStruct(sm_cov.CovStruct):
    """
    Base class for working correlations estimated from residual products.

    For every pair ``j < k`` of observations in a cluster, the standardized
    product ``z_jk = r_j r_k / phi`` of the Pearson residuals
    ``r = (y - mu) / sqrt(V(mu))`` estimates the working correlation
    ``rho_jk(alpha)``, where ``phi = sum w r**2 / sum w`` is the Pearson scale
    at the current estimates, whatever scale the GEE itself uses (statsmodels
    fixes it at 1 for Binomial and Poisson).  Subclasses fit ``alpha`` by least
    squares with pair weights ``w_j w_k`` (the GEE's weights; one without
    weights).  These are geepack's moment estimators, with its default
    ``scale.fix = FALSE``.

    Pairs are defined by the model's ``time`` (the position within the cluster
    when the GEE has no ``time``), as geepack's ``waves``.

    Unlike statsmodels' default, a working correlation that is not positive
    definite is not projected to the nearest positive definite matrix: it is
    inverted as it is (as geepack does) and a ``SingularMatrixWarning`` is
    issued.  :func:`gee_select` flags such fits.  Clusters observed at the same
    times share one inverse per update.
    """

    def initialize(self, model):
        super().initialize(model)
        if np.ndim(model.time) == 2 and np.shape(model.time)[1] != 1:
            raise ValueError(f"{type(self).__name__} needs a one-dimensional time")
        times = [np.asarray(t, dtype=float).ravel() for t in model.time_li]
        starts = np.r_[0, np.cumsum([len(t) for t in times])[:-1]]
        pj, pk = [], []
        for start, t in zip(starts, times):
            j, k = np.triu_indices(len(t), 1)
            pj.append(start + j)
            pk.append(start + k)
        self._pj = np.concatenate(pj).astype(np.intp)
        self._pk = np.concatenate(pk).astype(np.intp)
        tcat = np.concatenate(times)
        if np.any(tcat[self._pj] == tcat[self._pk]):
            raise ValueError(f"{type(self).__name__}: repeated time values within a cluster; "
                             "pairs of observations must have distinct times")
        self._times = times
        # clusters with the same times share their working correlation (and its inverse)
        patterns = {}
        self._pattern = [patterns.setdefault(tuple(t), len(patterns)) for t in times]
        self._inverses, self._inverses_of = {}, None

    def update(self, params):
        model = self.model
        mu = np.concatenate([m[0] for m in model.cached_means])
        resid = (np.concatenate(model.endog_li) - mu) / np.sqrt(model.family.variance(mu))
        w = np.ones_like(resid) if model.weights is None else np.concatenate(model.weights_li)
        phi = np.dot(w, resid ** 2) / w.sum()
        if len(self._pj):
            self._estimate(resid[self._pj] * resid[self._pk] / phi, w[self._pj] * w[self._pk])

    def _estimate(self, z, w):
        """Set ``dep_params`` from the standardized residual products ``z`` with pair weights ``w``."""
        raise NotImplementedError

    def _correlation(self, index):
        """The working correlation matrix of cluster ``index``."""
        raise NotImplementedError

    def covariance_matrix(self, expval, index):
        return self._correlation(index), True

    def _inverse(self, index):
        if self._inverses_of is not self.dep_params:          # dep_params changed: new inverses
            self._inverses, self._inverses_of = {}, self.dep_params
        key = self._pattern[index]
        if key not in self._inverses:
            rmat = self._correlation(index)
            try:
                chol = np.linalg.cholesky(rmat)
                self._inverses[key] = spl.cho_solve((chol, True), np.eye(len(rmat)))
            except np.linalg.LinAlgError:
                warnings.warn(f"{type(self).__name__}: the working correlation of cluster {index} is "
                              "not positive definite; it is used without projection",
                              SingularMatrixWarning, stacklevel=3)
                self._inverses[key] = np.linalg.inv(rmat)
        return self._inverses[key]

    def covariance_matrix_solve(self, expval, index, stdev, rhs):
        rinv = self._inverse(index)
        out = []
        for x in rhs:
            s = stdev if x.ndim == 1 else stdev[:, None]
            out.append(rinv @ (x / s) / s)
        return out

    @property
    def n_params(self):
        """Number of working-correlation parameters."""
        return int(np.size(self.dep_params))

    def problems(self):
        """Problems of the current estimate, as a list of short messages."""
        return []


class PairwiseExchangeable(PairwiseCovStruct):
    """
    Exchangeable working correlation, estimated as geepack does.

    ``alpha = sum_pairs w_j w_k z_jk / sum_pairs w_j w_k``, the weighted mean of
    the standardized residual products over all within-cluster pairs (see
    :class:`PairwiseCovStruct`), geepack's estimate.  statsmodels'
    ``Exchangeable`` gives the same value without weights when the GEE is
    fitted with ``ddof_scale=0``; otherwise it differs by its
    degrees-of-freedom corrections, and it weights clusters rather than pairs.
    """

    def __init__(self):
        super().__init__()
        self.dep_params = 0.0

    def _estimate(self, z, w):
        self.dep_params = float(np.dot(w, z) / w.sum())

    def _correlation(self, index):
        dim = len(self._times[index])
        rmat = np.full((dim, dim), self.dep_params)
        np.fill_diagonal(rmat, 1.0)
        return rmat

    def summary(self):
        return f"The correlation between two observations in the same cluster is {self.dep_params:.3f}"


class PairwiseAR1(PairwiseCovStruct):
    """
    First-order autoregressive working correlation, estimated as geepack does.

    The correlation of two observations of a cluster at times ``s`` and ``t``
    is ``alpha ** |s - t|``.  ``alpha`` minimizes the weighted least-squares
    criterion::

        sum over within-cluster pairs of w_j w_k (z_jk - alpha ** |t_j - t_k|) ** 2

    over ``[-1, 1]`` (``[0, 1]`` when some lags are not integers), where
    ``z_jk`` are the standardized residual products of
    :class:`PairwiseCovStruct`.  All pairs are used, not only neighbours: this is
    the least-squares problem that geepack's Gauss-Newton updates solve.  The
    criterion only depends on the sums of weights and of weighted products per
    distinct lag, so the minimization is cheap: a grid search followed by a
    bounded Brent refinement, which finds the global minimum on the interval
    (statsmodels' ``Autoregressive(grid=False)`` brackets it on ``[0, 1)`` and
    fails when it cannot).

    Lags are measured in the units of the GEE's ``time``; without ``time``
    they are differences of positions within the cluster (geepack's default
    ``waves``).  Pass consecutive visit numbers as time for a per-visit AR(1).

    Attributes
    ----------
    dep_params : float
        The autocorrelation ``alpha``.
    at_boundary : bool
        True when the minimum is at the end of the interval (``|alpha|`` within
        1e-6 of 1, or 0 when only non-negative values are allowed).
    """

    _EPS = 1e-6

    def __init__(self):
        super().__init__()
        self.dep_params = 0.0
        self.at_boundary = False

    def initialize(self, model):
        super().initialize(model)
        tcat = np.concatenate(self._times)
        lags = np.abs(tcat[self._pk] - tcat[self._pj])
        self._lags, self._lag_index = np.unique(lags, return_inverse=True)
        integer = np.allclose(self._lags, np.round(self._lags))
        self._bounds = (-1.0 + self._EPS if integer else 0.0, 1.0 - self._EPS)

    def _objective(self, alpha, wsum, zsum):
        powers = np.power.outer(np.atleast_1d(alpha), self._lags)
        return (powers * (wsum * powers - 2.0 * zsum)).sum(axis=-1)

    def _estimate(self, z, w):
        wsum = np.bincount(self._lag_index, weights=w, minlength=len(self._lags))
        zsum = np.bincount(self._lag_index, weights=w * z, minlength=len(self._lags))
        lo, hi = self._bounds
        grid = np.linspace(lo, hi, 801)
        i = int(np.argmin(self._objective(grid, wsum, zsum)))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(lambda x: self._objective(x, wsum, zsum)[0],
                                       bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-13})
        alpha = float(res.x) if res.fun <= self._objective(grid[i], wsum, zsum)[0] else grid[i]
        self.dep_params = alpha
        self.at_boundary = bool(alpha - lo < 1e-9 or hi - alpha < 1e-9)

    def _correlation(self, index):
        t = self._times[index]
        return np.power(self.dep_params, np.abs(np.subtract.outer(t, t)))

    def problems(self):
        if self.at_boundary:
            return [f"AR(1) estimate at the boundary ({self.dep_params:.6f})"]
        return []

    def summary(self):
        return f"Autocorrelation alpha = {self.dep_params:.4f}; corr = alpha ** |lag|"


class PairwiseUnstructured(PairwiseCovStruct):
    """
    Unstructured working correlation, estimated as geepack does.

    One correlation per pair of distinct time values ``a < b``:
    ``alpha_ab = sum w_j w_k z_jk / sum w_j w_k`` over the within-cluster pairs
    observed at ``(a, b)``, with ``z_jk`` the standardized residual products of
    :class:`PairwiseCovStruct`.  Because every product is divided by the
    common scale rather than by the variances at ``a`` and ``b``, estimates can
    fall outside ``[-1, 1]`` and the matrix need not be positive definite
    (statsmodels' ``Unstructured`` rescales to a correlation matrix instead);
    :func:`gee_select` flags such fits.  Pairs of times never observed in
    the same cluster get 0 (they enter no working matrix).

    Time values are coded by their rank among the distinct values of the GEE's
    ``time`` (the positions within clusters without ``time``, geepack's
    default ``waves``).

    Attributes
    ----------
    dep_params : ndarray
        The ``q x q`` working correlation over the ``q`` distinct times.
    times : ndarray
        The distinct time values, in the order of ``dep_params``.
    """

    def initialize(self, model):
        super().initialize(model)
        self.times, codes = np.unique(np.concatenate(self._times), return_inverse=True)
        q = len(self.times)
        self._codes = np.split(codes, np.cumsum([len(t) for t in self._times])[:-1])
        cj, ck = codes[self._pj], codes[self._pk]
        self._key = np.minimum(cj, ck) * q + np.maximum(cj, ck)
        self._observed = np.bincount(self._key, minlength=q * q).reshape(q, q) > 0
        self.dep_params = np.eye(q)

    def _estimate(self, z, w):
        q = len(self.times)
        wsum = np.bincount(self._key, weights=w, minlength=q * q)
        zsum = np.bincount(self._key, weights=w * z, minlength=q * q)
        alpha = np.divide(zsum, wsum, out=np.zeros(q * q), where=wsum > 0).reshape(q, q)
        rmat = alpha + alpha.T
        np.fill_diagonal(rmat, 1.0)
        self.dep_params = rmat

    def _correlation(self, index):
        ix = self._codes[index]
        return self.dep_params[np.ix_(ix, ix)]

    @property
    def n_params(self):
        return int(np.triu(self._observed, 1).sum())

    def correlations(self):
        """The estimated correlations of the pairs of times observed together."""
        return self.dep_params[np.triu(self._observed, 1)]

    def summary(self):
        return f"Estimated working correlation (times {list(self.times)}):\n{self.dep_params}"


# ---------------------------------------------------------------------------
# QIC
# ---------------------------------------------------------------------------
_QIC_FAMILIES = (families.Gaussian, families.Binomial, families.Poisson, families.Gamma)


def _quasi_likelihood(family, endog, mu, weights):
    """Pan's quasi-likelihood under independence, without the scale (geepack's convention)."""
    if isinstance(family, families.Gaussian):
        q = -0.5 * (endog - mu) ** 2
    elif isinstance(family, families.Binomial):
        q = xlogy(endog, mu) + xlog1py(1.0 - endog, -mu)   # y log(mu/(1-mu)) + log(1-mu)
    elif isinstance(family, families.Poisson):
        q = xlogy(endog, mu) - mu
    elif isinstance(family, families.Gamma):
        q = -endog / mu - np.log(mu)
    else:
        raise ValueError(f"qic: family {type(family).__name__} is not supported "
                         "(Gaussian, Binomial, Poisson, Gamma)")
    return float(np.sum(weights * q))


def _offset_exposure(model):
    off = getattr(model, "_offset_exposure", None)
    if off is None or np.isscalar(off):
        return None if off is None or off == 0 else np.full(model.nobs, float(off))
    return np.asarray(off, dtype=float)


def _fit_independence(model):
    """Estimates of ``model``'s mean under independence (a GLM on the same rows and weights)."""
    return GLM(model.endog, model.exog, family=model.family, offset=_offset_exposure(model),
               var_weights=model.weights).fit().params


def qic(results, scale=None, independence=None):
    """
    QIC, QICu, CIC and quasi-likelihood of a fitted GEE (Pan 2001).

    Parameters
    ----------
    results : GEEResults
        A fitted statsmodels GEE (any working correlation).
    scale : float, optional
        The dispersion ``phi_I`` in ``Omega_I``.  By default Pearson's
        ``sum w (y - mu)**2 / V(mu) / n`` at the independence estimates, for
        every family, as geepack's ``QIC()`` (which takes it from its
        independence refit; with unit weights both are Pearson's chi-squared
        over the number of observations).  Pan's choice for Binomial and
        Poisson without overdispersion is ``scale=1``.
    independence : GEEResults, optional
        An independence fit of the same model and rows whose estimates give
        ``Omega_I``.  Refitted (as a GLM) when not given.

    Returns
    -------
    Series
        ``QIC``, ``QICu``, ``CIC``, ``QuasiLik``, ``n_params`` (the p of
        QICu) and ``scale`` (the ``phi_I`` used).

    Notes
    -----
    With ``Q`` the quasi-likelihood under independence evaluated at the
    estimates of the fit, ``V_R`` its robust (sandwich) covariance and
    ``Omega_I = sum_i D_i' A_i^-1 W_i D_i / phi_I`` the inverse model-based
    covariance of an independence fit (at the independence estimates)::

        QIC  = -2 Q + 2 trace(Omega_I V_R)
        QICu = -2 Q + 2 p
        CIC  = trace(Omega_I V_R)

    ``Q`` follows geepack's ``QIC()``: it is not divided by the scale (for the
    Gaussian family ``Q = -RSS / 2``), binomial ``Q = sum w (y logit(mu) +
    log(1 - mu))`` with ``y`` the proportion, Poisson ``sum w (y log(mu) -
    mu)`` and Gamma ``sum w (-y / mu - log(mu))``.  Unlike geepack, the prior
    weights ``w`` enter ``Q`` (binomial proportions with the number of trials
    as weights), and the Gamma quasi-likelihood is McCullagh and Nelder's
    (geepack 1.3.9 uses ``-y / (mu - log(mu))``).  statsmodels'
    ``GEEResults.qic`` omits ``A_i^-1`` from ``Omega_I``, which is only right
    for the Gaussian family.
    """
    model = results.model
    if not isinstance(model, GEE):
        raise ValueError("qic: results must come from a statsmodels GEE fit")
    if getattr(model, "constraint", None) is not None:
        raise ValueError("qic: GEE fits with a constraint are not supported")
    family = model.family
    weights = np.ones(model.nobs) if model.weights is None else np.asarray(model.weights, float)
    offset = _offset_exposure(model)
    offset = 0.0 if offset is None else offset
    endog = np.asarray(model.endog, dtype=float)
    if isinstance(family, families.Binomial) and (endog.min() < 0 or endog.max() > 1):
        raise ValueError("qic: Binomial response must be a 0/1 outcome or a proportion")
    mu_r = family.link.inverse(model.exog @ np.asarray(results.params, dtype=float) + offset)
    quasi = _quasi_likelihood(family, endog, mu_r, weights)

    params_i = _fit_independence(model) if independence is None else independence.params
    eta_i = model.exog @ np.asarray(params_i, dtype=float) + offset
    mu_i = family.link.inverse(eta_i)
    var_i = family.variance(mu_i)
    phi = np.dot(weights, (endog - mu_i) ** 2 / var_i) / len(endog) if scale is None else float(scale)
    d2 = weights * family.link.inverse_deriv(eta_i) ** 2 / var_i
    omega = (model.exog * d2[:, None]).T @ model.exog / phi
    cic = float(np.trace(omega @ np.asarray(results.cov_robust)))
    p = model.exog.shape[1]
    return pd.Series({"QIC": -2.0 * quasi + 2.0 * cic, "QICu": -2.0 * quasi + 2.0 * p,
                      "CIC": cic, "QuasiLik": quasi, "n_params": p, "scale": phi},
                     name="qic")


# ---------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------
_STRUCTURES = {
    "independence": lambda ctx: sm_cov.Independence(),
    "exchangeable": lambda ctx: PairwiseExchangeable(),
    "ar1": lambda ctx: PairwiseAR1(),
    "unstructured": lambda ctx: PairwiseUnstructured(),
    "stationary": lambda ctx: _make_stationary(ctx),
    "nested": lambda ctx: _make_nested(ctx),
}


def _make_stationary(ctx):
    """statsmodels' Stationary with every lag the data have."""
    frame = ctx["frame"]
    if not ctx["has_time"]:
        return sm_cov.Stationary(max_lag=int(frame.groupby("__gee_groups").size().max()) - 1, grid=True)
    t = frame["__gee_time"].to_numpy(dtype=float)
    if not np.allclose(t, np.round(t)):
        raise ValueError(f"'stationary' needs integer values of time {ctx['time_name']!r}")
    span = frame.groupby("__gee_groups")["__gee_time"].agg(lambda s: s.max() - s.min()).max()
    return sm_cov.Stationary(max_lag=int(span), grid=False)


def _make_nested(ctx):
    if ctx["dep_data"] is None:
        raise ValueError("'nested' needs dep_data= (the nested grouping columns, e.g. "
                         "['classroom'] or '0 + classroom')")
    return sm_cov.Nested()


def _parse_structures(cov_structs, ctx):
    """[(name, factory)], independence first; each factory returns a fresh CovStruct."""
    if cov_structs is None:
        cov_structs = ["independence", "exchangeable", "ar1", "unstructured"]
    if isinstance(cov_structs, (str, sm_cov.CovStruct)):
        cov_structs = [cov_structs]
    items = list(cov_structs.items()) if isinstance(cov_structs, dict) else [(None, c) for c in cov_structs]
    out, used, indep = [], set(), None
    for name, spec in items:
        if isinstance(spec, str):
            key = spec.lower()
            if key not in _STRUCTURES:
                raise ValueError(f"unknown working correlation {spec!r}; use one of "
                                 f"{list(_STRUCTURES)} or a statsmodels CovStruct instance")
            make = functools.partial(_STRUCTURES[key], ctx)
            make()   # a structure that cannot apply to these data raises here, before any fit
            name, is_indep = name or key, key == "independence"
        elif isinstance(spec, sm_cov.CovStruct):
            make = functools.partial(copy.deepcopy, spec)
            name, is_indep = name or type(spec).__name__.lower(), isinstance(spec, sm_cov.Independence)
        else:
            raise ValueError(f"cov_structs entries must be names or CovStruct instances, got {spec!r}")
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        if is_indep and indep is None:
            indep = (name, make)
        else:
            out.append((name, make))
    return [indep or ("independence", functools.partial(_STRUCTURES["independence"], ctx))] + out


def _describe(cs):
    """The working-correlation estimate in a few words."""
    dp = cs.dep_params
    if isinstance(cs, sm_cov.Independence):
        return "independent"
    if isinstance(cs, (PairwiseExchangeable, sm_cov.Exchangeable)):
        return f"exchangeable, rho = {float(dp):.3f}"
    if isinstance(cs, (PairwiseAR1, sm_cov.Autoregressive)):
        return f"rho^|lag|, rho = {float(dp):.3f}"
    if isinstance(cs, (PairwiseUnstructured, sm_cov.Unstructured)):
        vals = cs.correlations() if isinstance(cs, PairwiseUnstructured) else dp[np.triu_indices(len(dp), 1)]
        return f"{len(vals)} correlations in [{vals.min():.2f}, {vals.max():.2f}]" if len(vals) else "none"
    if isinstance(cs, sm_cov.Stationary):
        lags = ", ".join(f"{v:.2f}" for v in np.asarray(dp)[1:4])
        more = ", ..." if len(dp) > 4 else ""
        return f"lag 1..{len(dp) - 1}: {lags}{more}"
    if isinstance(cs, sm_cov.Nested):
        return "variance components " + ", ".join(f"{v:.3g}" for v in np.atleast_1d(dp))
    vals = np.atleast_1d(np.asarray(dp, dtype=float)) if dp is not None else np.zeros(0)
    return f"{type(cs).__name__}: " + ", ".join(f"{v:.3g}" for v in vals.ravel()[:4])


def _n_corr_params(cs):
    if isinstance(cs, PairwiseCovStruct):
        return cs.n_params
    if isinstance(cs, sm_cov.Independence):
        return 0
    if isinstance(cs, sm_cov.Unstructured):
        q = len(cs.dep_params)
        return q * (q - 1) // 2
    if isinstance(cs, sm_cov.Stationary):
        return cs.max_lag
    dp = cs.dep_params
    return 0 if dp is None else int(np.size(dp))


def _correlation_problems(results):
    """Working matrices that are not positive definite or have correlations outside [-1, 1]."""
    model, cs = results.model, results.cov_struct
    seen, not_pd, outside = {}, 0, 0
    for i in range(model.num_group):
        mat, is_cor = cs.covariance_matrix(model.cached_means[i][0], i)
        mat = np.asarray(mat, dtype=float)
        key = (mat.shape, mat.tobytes())
        if key not in seen:
            bad_pd = mat.size > 0 and (not np.all(np.isfinite(mat))
                                       or np.linalg.eigvalsh(mat).min() <= 1e-10 * max(1.0, np.abs(mat).max()))
            off = mat[~np.eye(len(mat), dtype=bool)]
            bad_range = bool(is_cor and off.size and np.abs(off).max() > 1.0 + 1e-12)
            seen[key] = (bad_pd, bad_range)
        not_pd += seen[key][0]
        outside += seen[key][1]
    out = []
    if outside:
        out.append(f"correlation estimates outside [-1, 1] ({outside} of {model.num_group} clusters)")
    if not_pd:
        out.append(f"working correlation not positive definite ({not_pd} of {model.num_group} clusters)")
    adjusted = sum(np.sum(a) for a in results.fit_history.get("cov_adjust", []) if np.size(a))
    if adjusted:
        out.append("working correlation projected to positive definite during the fit")
    return out


def _converged(results, tol=1e-4):
    """statsmodels' criterion (score norm below ``ctol``) or geepack's: in the last iteration no
    mean or working-correlation parameter changed by more than ``tol`` (geese.control's epsilon)."""
    if results.converged:
        return True
    hist = results.fit_history
    if len(hist["params"]) < 2 or not hist["dep_params"]:
        return False
    d_beta = np.abs(hist["params"][-1] - hist["params"][-2]).max()
    last = hist["dep_params"][-1]
    now = results.cov_struct.dep_params
    d_alpha = 0.0 if last is None or now is None else np.abs(np.asarray(now) - np.asarray(last)).max()
    return bool(d_beta <= tol and d_alpha <= tol)


def _column(data, value, what):
    """A column of ``data`` given by name, or an array of the right length."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in data.columns:
            raise ValueError(f"unknown column {value!r} for {what}; the data has columns {list(data.columns)}")
        return data[value]
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) != len(data):
        raise ValueError(f"{what} must be a column name or an array with one value per row of data")
    return pd.Series(arr, index=data.index)


def _formula_rows(formula, data, eval_env, what):
    """The formula's matrices on the complete cases of the variables it uses (row labels kept)."""
    return _eval_formula(FormulaManager(), formula, data, eval_env, f"{what} {formula!r}")


class GEESelection:
    """
    Working-correlation selection for a GEE by QIC; returned by :func:`gee_select`.

    Attributes
    ----------
    table : DataFrame
        One row per working correlation (index: its name) with ``QIC``,
        ``QICu``, ``CIC``, ``QuasiLik``, ``dQIC`` (QIC minus the lowest QIC of
        the unflagged rows), ``n_params`` (mean parameters, the p of QICu),
        ``n_corr_params`` (working-correlation parameters), ``working_corr``
        (the estimate in words), ``scale``, ``converged`` and ``flag`` (the
        problems of the fit, empty when there are none).
    best : str or None
        The unflagged structure with the lowest QIC.  If every structure is
        flagged, the one with the lowest QIC (with a warning).
    results : dict
        The fitted statsmodels ``GEEResults`` by name (None for a failed fit).
    qic : dict
        The output of :func:`qic` by name.
    nobs : int
        Rows used.
    n_groups : int
        Clusters.
    n_dropped : int
        Rows dropped for missing values.
    """

    def __init__(self, table, results, qics, info):
        self.table = table
        self.results = results
        self.qic = qics
        self._info = info
        self.nobs = info["nobs"]
        self.n_groups = info["n_groups"]
        self.n_dropped = info["n_dropped"]
        ok = table[(table["flag"] == "") & np.isfinite(table["QIC"])]
        if len(ok):
            self.best = str(ok["QIC"].idxmin())
        elif np.isfinite(table["QIC"]).any():
            self.best = str(table["QIC"].astype(float).idxmin())
            warnings.warn("gee_select: every working correlation is flagged; best is the lowest QIC "
                          "among flagged fits", UserWarning, stacklevel=3)
        else:
            self.best = None

    def summary(self):
        """
        A summary of the selection (statsmodels ``Summary``, text and HTML).

        Returns
        -------
        Summary
        """
        smry = Summary()
        smry.add_title("GEE working-correlation selection by QIC")
        info = self._info
        smry.add_dict({
            "Formula:": info["formula"], "Family:": info["family"],
            "Groups:": info["groups"], "Time:": info["time"] or "(position in cluster)",
            "Clusters:": str(self.n_groups), "Observations:": str(self.nobs),
            "Rows dropped (missing):": str(self.n_dropped), "Best (lowest QIC):": str(self.best),
        })
        t = self.table
        fmt = lambda col, spec: [("" if pd.isna(v) else format(v, spec)) for v in t[col]]  # noqa: E731
        tab = pd.DataFrame({"QIC": fmt("QIC", ".2f"), "QICu": fmt("QICu", ".2f"), "CIC": fmt("CIC", ".3f"),
                            "dQIC": fmt("dQIC", ".2f"), "p": fmt("n_params", "d"),
                            "n_corr": fmt("n_corr_params", "d"), "working correlation": t["working_corr"],
                            "": ["flagged" if f else "" for f in t["flag"]]}, index=t.index)
        smry.add_df(tab, align="r")
        flags = t["flag"]
        notes = [f"{name}: {f}" for name, f in flags.items() if f]
        if notes:
            smry.add_text("Flagged (not ranked as best):")
            for n in notes:
                smry.add_text("  " + n)
        smry.add_text("QIC = -2 Q + 2 CIC, CIC = trace(Omega_I V_R) with Omega_I from an independence "
                      "fit (Pan 2001; geepack's conventions: Q not divided by the scale).")
        return smry

    def __repr__(self):
        return self.summary().as_text()

    def _repr_html_(self):
        return self.summary().as_html()


_FIT_KEYS = set(inspect.signature(GEE.fit).parameters) - {"self"}
_FLAGGED_WARNINGS = (ConvergenceWarning, IterationLimitWarning, SingularMatrixWarning)


def gee_select(formula, groups, data, family, cov_structs=None, time=None, **kwargs):
    """
    Fit a GEE with several working correlations and compare them by QIC.

    Parameters
    ----------
    formula : str
        The mean model, a statsmodels (patsy) formula, e.g. ``"y ~ x + C(g)"``.
    groups : str or array_like
        The cluster column (or labels, one per row).
    data : DataFrame
        The data.
    family : statsmodels family
        A Gaussian, Binomial, Poisson or Gamma family instance (any link).
    cov_structs : list or dict, optional
        Names among ``"independence"``, ``"exchangeable"``, ``"ar1"``,
        ``"unstructured"``, ``"stationary"`` and ``"nested"``, or statsmodels
        ``CovStruct`` instances (named by their lowercased class name), or a
        dict ``{name: structure}``.  Default: independence, exchangeable, ar1
        and unstructured.  Independence is always included.
    time : str or array_like, optional
        The time of each observation: orders rows within clusters and defines
        the lags of ``ar1`` and the cells of ``unstructured``.  Without it,
        positions within the cluster are used (geepack's default ``waves``).
    **kwargs
        Arguments of ``GEE.fit`` (``maxiter``, ``ctol``, ``scale``,
        ``ddof_scale``, ...) are passed to every fit; defaults here are
        ``maxiter=25`` and ``ddof_scale=0`` (geepack's iteration limit and
        scale estimate).  Others go to ``GEE.from_formula``: ``weights``,
        ``offset`` and ``exposure`` (column names or arrays), ``dep_data``
        for ``nested`` (column names or a formula) and ``eval_env`` (as in
        statsmodels; by default the caller's variables are visible to the
        formula).

    Returns
    -------
    GEESelection
        ``.table``, ``.best``, ``.results``, ``summary()``.

    Notes
    -----
    Rows with a missing value in any column used (formula, groups, time,
    weights, offset, exposure, dep_data) are dropped once, before any fit, and
    counted in ``n_dropped``; rows are then sorted by cluster and time, so every
    structure is fitted to the same rows in the same order.

    ``exchangeable``, ``ar1`` and ``unstructured`` are
    :class:`PairwiseExchangeable`, :class:`PairwiseAR1` and
    :class:`PairwiseUnstructured` (geepack's estimators).  ``stationary`` is
    statsmodels' ``Stationary`` with every lag; ``nested`` is statsmodels'
    ``Nested`` and needs ``dep_data``.

    A structure is flagged (column ``flag``) and not chosen as ``best`` when
    its fit failed or did not converge, a standard error is not finite, or its
    working correlation has estimates outside [-1, 1] or is not positive
    definite.  QIC is computed with :func:`qic`, with ``Omega_I`` from the
    independence fit in the table.

    A fit counts as converged by statsmodels' criterion (score norm below
    ``ctol``) or by geepack's (no mean or correlation parameter changed by more
    than 1e-4 in the last iteration).  Each iteration is geepack's: a
    Fisher-scoring step for the mean, then the moment estimates at the new
    mean, both starting from the GLM fit with an identity working
    correlation.  With geepack's limit of 25 iterations, a structure that does
    not settle stops at the same iterate as ``geeglm`` (dietox's unstructured
    fit, for one).
    """
    if not isinstance(data, pd.DataFrame):
        raise ValueError("gee_select: data must be a pandas DataFrame")
    if not isinstance(family, _QIC_FAMILIES):
        raise ValueError("gee_select: family must be a statsmodels Gaussian, Binomial, Poisson or "
                         f"Gamma family instance (the families with a QIC), got {family!r}")
    fit_kwargs = {"maxiter": 25, "ddof_scale": 0}
    fit_kwargs.update({k: v for k, v in kwargs.items() if k in _FIT_KEYS})
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _FIT_KEYS}
    eval_env = model_kwargs.pop("eval_env", 0)
    if isinstance(eval_env, int):    # statsmodels' meaning: 0 is the caller's namespace, -1 an empty one
        eval_env = {} if eval_env == -1 else _caller_namespace(1 + eval_env)

    data = data.reset_index(drop=True)
    aux = {"groups": _column(data, groups, "groups"), "time": _column(data, time, "time")}
    if time is not None:
        tnum = pd.to_numeric(pd.Series(np.asarray(aux["time"], dtype=object), index=data.index),
                             errors="coerce")
        if (tnum.isna() & aux["time"].notna()).any():
            raise ValueError(f"time {time if isinstance(time, str) else '(array)'!r} must be numeric")
        aux["time"] = tnum.astype(float)
    for key in ("weights", "offset", "exposure"):
        if key in model_kwargs:
            aux[key] = _column(data, model_kwargs[key], key)
    dep_data = model_kwargs.get("dep_data")
    if isinstance(dep_data, (list, tuple)) and all(isinstance(c, str) for c in dep_data):
        for col in dep_data:
            _column(data, col, "dep_data")
    elif dep_data is not None and not isinstance(dep_data, str):
        raise ValueError("dep_data must be a list of column names or a formula such as '0 + classroom'")

    y, _ = _formula_rows(formula, data, eval_env, "formula")
    if y.shape[1] != 1:
        raise ValueError(f"the response of {formula!r} must be one numeric column "
                         f"(got {list(y.columns)}); code it as 0/1 or a number")
    keep = data.index.isin(y.index)
    for v in aux.values():
        if v is not None:
            keep &= v.notna().to_numpy()
    if isinstance(dep_data, str):
        keep &= data.index.isin(_formula_rows(dep_data, data, eval_env, "dep_data").index)
    elif isinstance(dep_data, (list, tuple)):
        keep &= data[list(dep_data)].notna().all(axis=1).to_numpy()
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError("gee_select: no complete rows in the columns used")

    yname = y.columns[0]
    yv = y[yname].to_numpy(dtype=float)
    if isinstance(family, families.Binomial):
        if "weights" in aux:
            if yv.min() < 0 or yv.max() > 1:
                raise ValueError(f"response {yname!r} must be a proportion in [0, 1] for the Binomial "
                                 "family with weights")
        elif not np.all(np.isin(yv, (0.0, 1.0))):
            raise ValueError(f"response {yname!r} is not binary (0/1) for the Binomial family; use a "
                             "proportion with weights=<number of trials> for grouped data")
    elif isinstance(family, families.Poisson) and yv.min() < 0:
        raise ValueError(f"response {yname!r} has negative values for the Poisson family")
    elif isinstance(family, families.Gamma) and yv.min() <= 0:
        raise ValueError(f"response {yname!r} must be positive for the Gamma family")

    # Same rows, same order, for every structure: complete cases sorted by cluster and time.
    frame = data.loc[keep].copy()
    names = {"groups": "__gee_groups", "time": "__gee_time"}
    for key, v in aux.items():
        if v is not None:
            frame[names.get(key, f"__gee_{key}")] = v[keep].to_numpy()
    order = ["__gee_groups"] + (["__gee_time"] if time is not None else [])
    frame = frame.sort_values(order, kind="mergesort").reset_index(drop=True)
    gcol = frame["__gee_groups"].to_numpy()
    tvals = None if time is None else frame["__gee_time"].to_numpy()
    if tvals is not None and np.all(tvals == np.round(tvals)):
        tvals = tvals.astype(np.int64)     # statsmodels' Unstructured wants integer times
    for key in ("weights", "offset", "exposure"):
        if key in aux:
            model_kwargs[key] = frame[f"__gee_{key}"].to_numpy(dtype=float)
    ctx = {"frame": frame, "has_time": time is not None, "time_name": time, "dep_data": dep_data}
    candidates = _parse_structures(cov_structs, ctx)

    def fit(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = GEE.from_formula(formula, groups=gcol, data=frame, time=tvals, family=family,
                                     cov_struct=make(), eval_env=eval_env, **model_kwargs)
            res = model.fit(**fit_kwargs)
        for w in caught:   # what the table's flags report is not repeated as a warning
            if not issubclass(w.category, _FLAGGED_WARNINGS):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if res is None:
            raise RuntimeError(str(caught[-1].message) if caught else "GEE.fit returned None")
        return res

    results, qics, rows, indep = {}, {}, [], None
    for name, make in candidates:
        row = {"QIC": np.nan, "QICu": np.nan, "CIC": np.nan, "QuasiLik": np.nan, "n_params": np.nan,
               "n_corr_params": np.nan, "working_corr": "", "scale": np.nan, "converged": False}
        flags = []
        try:
            res = fit(make)
        except Exception as exc:  # a failed candidate is reported in the table, not raised
            if indep is None:      # ... except the independence fit, which every QIC needs
                raise
            res = None
            flags.append(f"fit failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}")
        if res is not None:
            indep = indep or res
            q = qics[name] = qic(res, independence=indep)
            cs = res.cov_struct
            row.update(QIC=q["QIC"], QICu=q["QICu"], CIC=q["CIC"], QuasiLik=q["QuasiLik"],
                       n_params=int(q["n_params"]), n_corr_params=_n_corr_params(cs),
                       working_corr=_describe(cs), scale=float(res.scale), converged=_converged(res))
            if not row["converged"]:
                flags.append(f"not converged in {res.maxiter} iterations")
            if not np.all(np.isfinite(np.asarray(res.bse, dtype=float))):
                flags.append("NaN standard errors")
            flags.extend(_correlation_problems(res))
            if isinstance(cs, PairwiseCovStruct):
                flags.extend(cs.problems())
        results[name] = res
        row["flag"] = "; ".join(flags)
        rows.append((name, row))

    table = pd.DataFrame([r for _, r in rows], index=pd.Index([n for n, _ in rows], name="cov_struct"))
    for col in ("n_params", "n_corr_params"):
        table[col] = table[col].astype("Int64")
    ok = (table["flag"] == "") & np.isfinite(table["QIC"])
    base = table.loc[ok, "QIC"].min() if ok.any() else table["QIC"].min()
    table.insert(4, "dQIC", table["QIC"] - base)
    info = {"formula": formula, "family": f"{type(family).__name__} ({type(family.link).__name__} link)",
            "groups": groups if isinstance(groups, str) else "(array)",
            "time": time if isinstance(time, str) else (None if time is None else "(array)"),
            "nobs": len(frame), "n_groups": len(pd.unique(gcol)), "n_dropped": n_dropped}
    return GEESelection(table, results, qics, info)

