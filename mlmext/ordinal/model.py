"""The cumulative link mixed model class (``ordinal::clmm``): data, formula and likelihood."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .. import laplace as _laplace
from .._args import reject_robust_cov, reject_unknown
from .._blas import blas_threads
from .._frames import as_dataframe
from ..base import MixedModel, drop_rank_deficient
from ..frame import FixedParts, display_name, evaluate, parse_formula
from ..objective import MixedParams
from ..optimize import jacobian
from .clm import _jacobians
from .conditional import CumulativeLinkConditional
from .deviance import OrdinalDeviance
from .fit import _fit_clmm
from .links import get_link
from .newton import _ScalarLaplace
from .response import _drop_unused_levels, ordinal_response, unwrap_factor_response
from .thresholds import Thresholds

__all__ = ["OrdinalMixedModel"]


class OrdinalMixedModel(MixedModel):
    """Cumulative link mixed model (``ordinal::clmm``).

    ``P(Y <= j | b) = F(theta_j - x' beta - z' b)`` with increasing
    thresholds ``theta_j`` and ``b ~ N(0, Sigma)``.  Usually created with
    :func:`mlmext.formula.api.clmm`.

    Parameters
    ----------
    endog : array_like
        Ordinal response: an ordered ``Categorical``, integers, or values
        with ``levels``.
    exog : array_like
        Fixed-effects design **without** an intercept column (the
        thresholds carry the intercept).
    re_design : RandomEffectsDesign
    weights : array_like, optional
        Prior (frequency) weights, as ``clmm``'s ``weights``.
    offset : array_like, optional
        Added to ``x' beta``.
    link : {"logit", "probit", "cloglog", "loglog", "cauchit"}
    threshold : {"flexible", "equidistant", "symmetric"}
        Structure of the thresholds, as in ``clmm``.
    levels : sequence, optional
        Order of the response categories (lowest first).

    Notes
    -----
    The random-effects integral is done by :mod:`mlmext.laplace`: Laplace
    for any random-effects structure (crossed, nested, several and
    vector-valued terms), adaptive Gauss-Hermite quadrature for a single
    grouping factor.  The Laplace approximation uses the observed
    information, as ``clmm``.  The parameters are ordered as ``clmm``'s ``coef``:
    threshold parameters first (``"1|2", "2|3", ...`` for flexible
    thresholds; ``threshold.1, spacing`` or ``central..., spacing...``
    otherwise), then the fixed effects.
    """

    _check_nlev_vs_nobs = False
    _pirls_tol = 1e-20
    _api_name = "clmm"
    _init_hints = {
        "family": "a cumulative link model has no family: choose the link with link='logit' "
                  "(or 'probit', 'cloglog', 'loglog', 'cauchit')",
        "exposure": "a cumulative link model has no exposure; a known shift of x'beta is "
                    "offset=",
        "nAGQ": "the number of quadrature nodes is a fit() argument: .fit(nagq=...)",
        "Hess": "standard errors are a fit() argument: .fit(hessian=True)",
    }

    def __init__(self, endog, exog, re_design, weights=None, offset=None, link="logit",
                 threshold="flexible", levels=None, **kwargs):
        # arguments R users bring along are rejected before the data work (base rejects the rest)
        reject_unknown({k: kwargs.pop(k) for k in list(kwargs) if k in self._init_hints},
                       "clmm()", hints=self._init_hints)
        info = kwargs.get("formula_info", {}) or {}
        name = getattr(endog, "name", None) or "y"
        if "y_levels" in info:
            codes = np.asarray(endog, dtype=float)
            labels = list(info["y_levels"])
        else:
            codes, labels = ordinal_response(endog, levels, name)
            if np.isnan(codes).any():
                raise ValueError(f"the response {name!r} has {int(np.isnan(codes).sum())} missing values; "
                                 "drop those rows (from_formula / clmm do it for you)")
            codes, labels = _drop_unused_levels(codes, labels, name)
        if weights is not None:
            # a category whose rows all have zero weight is not observed (rows with zero
            # weight carry no information): drop it as an unused one
            codes, labels = _drop_unused_levels(codes, labels, name,
                                                weights=np.asarray(weights, dtype=float).ravel())
        index = getattr(endog, "index", None)
        endog = pd.Series(codes, index=index, name=name) if index is not None else codes
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        if self.k_fe and np.any(np.all(self.exog == self.exog[:1], axis=0)) and self.exog.shape[0] > 1:
            raise ValueError("the fixed-effects design has a constant column; a cumulative link model "
                             "has no intercept (the thresholds carry it): remove it")
        self.link = get_link(link)
        self.threshold = str(threshold).lower()
        self.levels = labels
        self.n_cat = len(labels)
        self.thr = Thresholds(self.threshold, labels)
        self.k_thresholds = self.thr.k
        self.y_codes = np.asarray(codes, dtype=np.int64)
        self._weighted = weights is not None
        # the model's own conditional is read for structure only (evaluations use a deviance's)
        self.cond = self._make_conditional()
        self.exog_names_fe = list(self.exog_names) if self.k_fe else []
        self.data.param_names = list(self.thr.names) + self.exog_names_fe
        self.k_params_fe = self.thr.k + self.k_fe
        for t in self.re_design.terms:
            if t.m * t.q >= self.endog.shape[0] and weights is None:
                warnings.warn(f"no. random effects (={t.m * t.q}) >= no. observations "
                              f"(={self.endog.shape[0]}) for term ({t.lhs} | {t.name})", UserWarning,
                              stacklevel=2)

    # ------------------------------------------------------------------ formula
    @classmethod
    def from_formula(cls, formula, data, subset=None, weights=None, offset=None, missing="drop",
                     eval_env=0, link="logit", threshold="flexible", levels=None, **kwargs):
        """Create a model from an lme4-style formula (see :func:`mlmext.formula.api.clmm`)."""
        data = as_dataframe(data)
        if isinstance(formula, str):
            formula, levels = unwrap_factor_response(formula, data, levels)
        resp = display_name(parse_formula(formula).response)
        if not resp:
            raise ValueError("the formula needs a response: 'y ~ x + (1 | g)'")
        if resp not in data.columns:
            raise ValueError(f"the response {resp!r} must be a column of the data (the data has "
                             f"columns {list(data.columns)})")
        codes, labels = ordinal_response(data[resp], levels, resp)
        data = data.copy(deep=False)
        cat = pd.Categorical.from_codes(np.where(np.isnan(codes), -1, codes).astype(int),
                                        categories=pd.Index(labels, dtype=object), ordered=True)
        data[resp] = pd.Series(cat, index=data.index)
        get_link(link)
        return super().from_formula(formula, data, subset=subset, weights=weights, offset=offset,
                                    missing=missing, eval_env=eval_env + 1 if isinstance(eval_env, int)
                                    else eval_env, link=link, threshold=threshold, **kwargs)

    @classmethod
    def _fixed_matrices(cls, mgr, parsed, data, env):
        resp = display_name(parsed.response)       # the column, without the formula's quoting
        rhs = parsed.fixed_rhs.strip() or "1"
        X_df = evaluate(mgr, f"~ {rhs}", data, env, f"the fixed-effects formula {rhs!r}")
        y_df = data[[resp]].dropna()
        return y_df, X_df

    @classmethod
    def _fixed_parts(cls, parsed):
        rhs = parsed.fixed_rhs.strip() or "1"
        return FixedParts(f"~ {rhs}", response_column=display_name(parsed.response))

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        resp = display_name(info["parsed"].response)
        col = y.iloc[:, 0]
        labels = list(col.cat.categories)
        codes = col.cat.codes.to_numpy().astype(float)
        codes, labels = _drop_unused_levels(codes, labels, resp)
        info["y_levels"] = labels
        yser = pd.Series(codes, index=y.index, name=resp)
        names, A = list(X.columns), X.to_numpy(dtype=float)
        if "Intercept" in names:
            A = np.delete(A, names.index("Intercept"), axis=1)
            names.remove("Intercept")
        else:
            warnings.warn("a cumulative link model needs an intercept and it is assumed (the "
                          "thresholds carry it); columns that duplicate it are dropped", UserWarning,
                          stacklevel=4)
        if names:
            # drop columns that are collinear with each other or with the (implicit) intercept
            Xc = pd.DataFrame(A - A.mean(axis=0), columns=names)
            kept = list(drop_rank_deficient(Xc).columns)
            if len(kept) < len(names):
                A, names = A[:, [names.index(c) for c in kept]], kept
        return yser, pd.DataFrame(A, index=X.index, columns=names)

    # --------------------------------------------------------------- pieces
    def _jacobians(self):
        """Jacobians of ``u = theta_y - eta`` and ``l = theta_{y-1} - eta`` in (alpha, beta)."""
        if getattr(self, "_jac_cache", None) is None:
            self._jac_cache = _jacobians(self.cond, self.thr.T, self.exog)
        return self._jac_cache

    def _make_conditional(self):
        w = self.weights if self._weighted else None
        return CumulativeLinkConditional(self.y_codes, self.n_cat, self.link, weights=w)

    def _scalar_laplace_template(self):
        """The exact-Hessian evaluator's precomputation for a single scalar term (built once;
        deviances take workspaces of it)."""
        sl = self.__dict__.get("_scalar_lap_template")
        if sl is None:
            sl = self._scalar_lap_template = _ScalarLaplace(self)
        return sl

    def deviance(self):
        """A fresh :class:`~mlmext.ordinal.deviance.OrdinalDeviance`: the log-likelihood with
        its own thresholds, factorization and workspace (fits never write to the model)."""
        return OrdinalDeviance(self)

    def _split(self, x):
        k, p = self.thr.k, self.k_fe
        return x[:k], x[k:k + p], x[k + p:]

    @property
    def param_names(self):
        """Names of the full parameter vector ``(alpha, beta, theta)`` :meth:`loglike` takes."""
        return list(self.thr.names) + self.exog_names_fe + self.re_design.theta_names()

    def loglike(self, params, nagq=1):
        """Log-likelihood at the full parameters ``(alpha, beta, theta)``.

        Parameters
        ----------
        params : MixedParams or array_like
            ``results.params_object``, or the vector of threshold parameters
            (``clmm``'s ``coef`` order), fixed effects and theta, in the order
            of :attr:`param_names`.
        nagq : int
            Quadrature points per random effect (1: Laplace).
        """
        pr = MixedParams.from_packed(params, self.k_params_fe, self.re_design.ntheta, 0,
                                     names=self.param_names)
        nagq = self._check_nagq(nagq)
        k = self.thr.k
        return self.deviance().loglike_parts(pr.fe_params[:k], pr.fe_params[k:], pr.theta,
                                             nagq=nagq)[0]

    def _check_nagq(self, nagq):
        """The quadrature points, checked as the fit checks them (AGQ needs one grouping factor)."""
        nagq = _laplace.check_nagq(nagq)
        _laplace.check_agq(self.re_design, nagq)
        return nagq

    def score(self, params, nagq=1):
        """Gradient of :meth:`loglike` in ``(alpha, beta, theta)`` (Richardson-refined differences)."""
        x = MixedParams.from_packed(params, self.k_params_fe, self.re_design.ntheta, 0,
                                    names=self.param_names).get_packed()
        nagq = self._check_nagq(nagq)
        dev = self.deviance()
        k, p = self.thr.k, self.k_fe

        def f(v):
            return np.array([dev.loglike_parts(v[:k], v[k:k + p], v[k + p:], nagq=nagq)[0]])
        return jacobian(f, x)[0]

    # ------------------------------------------------------------------ fit
    def fit(self, nagq=1, start_params=None, maxiter=500, gtol=1e-6, hessian=True, **kwargs):
        """Fit by maximum likelihood (Laplace approximation or adaptive Gauss-Hermite quadrature).

        Parameters
        ----------
        nagq : int
            1 (default): Laplace approximation, any random-effects
            structure.  ``2`` to ``100``: adaptive Gauss-Hermite quadrature
            with ``nagq`` nodes per dimension; needs a single grouping factor
            (a scalar term as ``clmm``, or a vector term with up to three
            random effects on a product grid).  A whole number (``2.5`` is an
            error); more than 100 nodes is an error (lme4's limit; ordinal's
            own quadrature fails from about 60 nodes on).  ``nagq < 0``
            (``clmm``'s non-adaptive quadrature) raises ``NotImplementedError``.
        start_params : array_like, optional
            Starting ``(alpha, beta, theta)``; default: the fit without
            random effects (as ``clmm``) and ``theta = 1``.
        maxiter : int
            Iterations of the optimizer (Newton's method, at most 100, for a single
            scalar term; else quasi-Newton).
        gtol : float
            Tolerance on the largest projected-gradient entry of the negative
            log-likelihood, for the quasi-Newton phases.  Newton's method with the
            exact Hessian (a single scalar term) stops at a Newton decrement of
            1e-12 instead, tighter than any ``gtol``; it reads ``gtol`` only where it
            hands over to quasi-Newton.
        hessian : bool
            Compute the Hessian (and so the standard errors); ``clmm``'s
            ``Hess``.
        **kwargs
            Any other keyword argument (``Hess=``, ``nAGQ=``, ``method=``)
            raises ``TypeError`` naming it and the spelling that works here.

        Returns
        -------
        OrdinalMixedResults

        Warns
        -----
        statsmodels.tools.sm_exceptions.PerfectSeparationWarning
            When the categories are (quasi-)completely separated, so that some
            estimates are infinite (checked when the estimates are large).
        ConvergenceWarning
            When the optimizer did not converge or the Hessian is not positive
            definite.
        """
        reject_robust_cov(kwargs, "clmm")
        des = self.re_design
        scalar = len(des.blocks) == 1 and des.blocks[0].q == 1
        # one BLAS thread for moderate dense parts (the shared helper of the LMM / GLMM fits)
        dev = self.deviance()
        with blas_threads(0 if scalar else dev.chol.r):
            return _fit_clmm(dev, nagq=nagq, start_params=start_params, maxiter=maxiter, gtol=gtol,
                             hessian=hessian, **kwargs)
