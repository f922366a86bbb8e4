"""Generalized linear mixed models (lme4's ``glmer`` and ``glmer.nb``).

``y_i | u ~ F(mu_i)``, ``g(mu_i) = eta_i = x_i' beta + z_i' Lambda(theta) u + offset_i``,
``u ~ N(0, I)``, for the binomial and Poisson families of statsmodels (any
link the family accepts) and the NB2 negative binomial
(``Var = mu + alpha mu^2``, log link).

The family-independent numerics (PIRLS, Laplace, adaptive Gauss-Hermite
quadrature, the gradient of the Laplace log-likelihood) are in
:mod:`mlmext.laplace`; this module supplies the conditional distributions
(:class:`GLMConditional`, :class:`NegativeBinomialConditional`), the models
and their fit, and the results class.

Fitting (see :meth:`GeneralizedLinearMixedModel.fit`):

1. lme4's first stage (``nAGQ = 0``): theta optimized with beta updated
   inside PIRLS; it gives starting values and the scale of beta.
2. theta, beta (and log alpha for the negative binomial) jointly, maximizing
   the Laplace log-likelihood with L-BFGS-B and its exact gradient (one
   PIRLS solve plus O(n) work per evaluation).  Unlike ``glmer.nb``, alpha is
   not found by an outer search that refits the model.
3. For ``nagq > 1`` (one grouping factor): the adaptive Gauss-Hermite
   log-likelihood, from the Laplace estimates.

Standard errors are lme4's default: the fixed-effects block of the inverse
Hessian of the deviance in (theta, beta), by central differences (of the
analytic gradient for Laplace fits).  For boundary (singular) fits, lme4's
fallback from the PIRLS system (``RX``) is used.

Log-likelihoods are on the full scale (with the binomial coefficients,
``log y!`` etc.), for Laplace and AGQ alike.  lme4 reports the same number for
Laplace fits; for ``nAGQ > 1`` its value omits the family's saturated
log-likelihood: ``lme4 logLik = llf - loglike_saturated``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import linalg, optimize, special
from statsmodels.genmod import families
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from . import laplace as lp
from ._blas import blas_threads
from .optimize import escape_bound
from .base import MixedModel, _drop_rank_deficient
from .results import MixedResults, MixedResultsWrapper

__all__ = ["GeneralizedLinearMixedModel", "NegativeBinomialMixedModel", "GLMMResults",
           "GLMConditional", "NegativeBinomialConditional"]

_EPS = np.finfo(float).eps


# ============================================================================ conditional models
class GLMConditional(lp.ConditionalModel):
    """``y | eta`` for a statsmodels family without a dispersion parameter.

    Parameters
    ----------
    family : statsmodels.genmod.families.Family
        ``Binomial`` or ``Poisson`` with any link the family accepts.
    endog : ndarray
        Response: proportions for the binomial (with ``prior_weights`` = number
        of trials), counts for the Poisson.
    prior_weights : ndarray
        Prior weights (binomial: trials times any user weights).

    Notes
    -----
    ``w`` is the expected information ``pw mu'^2 / V(mu)`` (the GLM working
    weights), as lme4 uses; ``hessian_terms`` gives the observed information
    and ``dw / deta`` for the analytic Laplace gradient.
    """

    def __init__(self, family, endog, prior_weights):
        self.family = family
        self.link = family.link
        self.y = np.asarray(endog, dtype=float)
        self.pw = np.asarray(prior_weights, dtype=float)
        self.binomial = isinstance(family, families.Binomial)
        link = type(self.link).__name__
        if self.binomial and link == "Logit":
            self.kind = "binomial-logit"
        elif isinstance(family, families.Poisson) and link == "Log":
            self.kind = "poisson-log"
        else:
            self.kind = "generic"
        #: canonical link: w is the observed information (PIRLS is Newton's method)
        self.canonical = self.kind != "generic"
        y, pw = self.y, self.pw
        if self.binomial:
            k = pw * y
            self.k, self.nk = k, pw - k
            self.const = special.gammaln(pw + 1) - special.gammaln(k + 1) - special.gammaln(pw - k + 1)
        else:
            self.const = -pw * special.gammaln(y + 1)

    # -- pieces
    def _mu(self, eta):
        mu = self.link.inverse(eta)
        if self.binomial:
            mu = np.clip(mu, 1e-300, 1.0 - 1e-16)
        else:
            mu = np.maximum(mu, 1e-300)
        return mu

    def loglik_obs(self, eta):
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            return self.const + self.k * eta - self.pw * np.logaddexp(0.0, eta)
        if self.kind == "poisson-log":
            return self.const + self.pw * (self.y * eta - np.exp(eta))
        mu = self._mu(eta)
        if self.binomial:
            return (self.const + np.where(self.k > 0, self.k * np.log(mu), 0.0)
                    + np.where(self.nk > 0, self.nk * np.log1p(-mu), 0.0))
        return self.const + self.pw * (np.where(self.y > 0, self.y * np.log(mu), 0.0) - mu)

    def loglik_derivs(self, eta):
        """``(loglik_obs, d1, w)`` in one pass."""
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            a = np.exp(-np.abs(eta))
            inv = 1.0 / (1.0 + a)
            mu = np.where(eta >= 0, inv, a * inv)
            ll = self.const + self.k * eta - self.pw * (np.maximum(eta, 0.0) + np.log1p(a))
            return ll, self.k - self.pw * mu, self.pw * (a * inv * inv)
        if self.kind == "poisson-log":
            mu = np.exp(eta)
            pmu = self.pw * mu
            return self.const + self.pw * self.y * eta - pmu, self.pw * self.y - pmu, pmu
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    def derivatives(self, eta):
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            mu = special.expit(eta)
            return self.k - self.pw * mu, self.pw * mu * (1.0 - mu)
        if self.kind == "poisson-log":
            mu = np.exp(eta)
            return self.pw * (self.y - mu), self.pw * mu
        mu = self._mu(eta)
        d = self.link.inverse_deriv(eta)
        v = self.family.variance(mu)
        return self.pw * (self.y - mu) * d / v, self.pw * d * d / v

    def hessian_terms(self, eta):
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            mu = special.expit(eta)
            w = self.pw * mu * (1.0 - mu)
            return w, w * (1.0 - 2.0 * mu)
        if self.kind == "poisson-log":
            w = self.pw * np.exp(eta)
            return w, w
        mu = self._mu(eta)
        d = self.link.inverse_deriv(eta)
        d2 = self.link.inverse_deriv2(eta)
        v = self.family.variance(mu)
        dv = self.family.variance.deriv(mu)
        w = self.pw * d * d / v
        h = w - self.pw * (self.y - mu) * (d2 / v - d * d * dv / (v * v))
        dw = self.pw * (2.0 * d * d2 / v - d ** 3 * dv / (v * v))
        return h, dw

    def loglike_saturated(self):
        """Sum of the saturated log-likelihood (mu = y), full scale."""
        y, pw = self.y, self.pw
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.binomial:
                t = np.where(self.k > 0, self.k * np.log(np.where(y > 0, y, 1.0)), 0.0) + \
                    np.where(self.nk > 0, self.nk * np.log(np.where(y < 1, 1.0 - y, 1.0)), 0.0)
                return float(np.sum(self.const + t))
            t = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)) - y, 0.0)
            return float(np.sum(self.const + pw * t))

    def mean(self, eta):
        return self.link.inverse(eta)

    def pearson_resid(self, eta):
        mu = self._mu(np.asarray(eta, dtype=float))
        return (self.y - mu) / np.sqrt(self.family.variance(mu) / np.where(self.pw > 0, self.pw, 1.0))


class NegativeBinomialConditional(lp.ConditionalModel):
    """NB2 counts given eta (log link): ``Var = mu + alpha mu^2``, parameter ``log alpha``.

    ``log p = lgamma(y + 1/a) - lgamma(1/a) - lgamma(y + 1) + y log(a mu) - (y + 1/a) log(1 + a mu)``
    times the prior weight.  ``w = pw mu / (1 + a mu)`` is the expected
    information (lme4's working weights for ``negative.binomial``).
    """

    k_extra = 1

    def __init__(self, endog, prior_weights, alpha=1.0, information="expected"):
        if information not in ("expected", "observed"):
            raise ValueError("information must be 'expected' (lme4) or 'observed' (glmmTMB)")
        self.y = np.asarray(endog, dtype=float)
        self.pw = np.asarray(prior_weights, dtype=float)
        self.lgy1 = special.gammaln(self.y + 1.0)
        self.information = information
        #: with the observed information as w, PIRLS is Newton's method and h = w
        self.canonical = information == "observed"
        self.set_alpha(alpha)

    def set_alpha(self, alpha):
        self.alpha = float(alpha)
        self.r = 1.0 / self.alpha
        self._lg = special.gammaln(self.y + self.r) - special.gammaln(self.r) - self.lgy1

    def set_params(self, extra):
        self.set_alpha(float(np.exp(extra[0])))

    def get_params(self):
        return np.array([np.log(self.alpha)])

    def loglik_obs(self, eta):
        a, y = self.alpha, self.y
        eta = np.asarray(eta, dtype=float)
        mu = np.exp(eta)
        lam = np.log1p(a * mu)
        return self.pw * (self._lg + y * (np.log(a) + eta) - (y + self.r) * lam)

    def derivatives(self, eta):
        a, y = self.alpha, self.y
        mu = np.exp(np.asarray(eta, dtype=float))
        den = 1.0 + a * mu
        w = self.pw * mu / den
        if self.canonical:
            w = w * (1.0 + a * y) / den
        return self.pw * (y - mu) / den, w

    def loglik_derivs(self, eta):
        a, y = self.alpha, self.y
        eta = np.asarray(eta, dtype=float)
        mu = np.exp(eta)
        am = a * mu
        den = 1.0 + am
        ll = self.pw * (self._lg + y * (np.log(a) + eta) - (y + self.r) * np.log1p(am))
        w = self.pw * mu / den
        if self.canonical:
            w = w * (1.0 + a * y) / den
        return ll, self.pw * (y - mu) / den, w

    def hessian_terms(self, eta):
        a, y = self.alpha, self.y
        mu = np.exp(np.asarray(eta, dtype=float))
        den = 1.0 + a * mu
        h = self.pw * mu * (1.0 + a * y) / den ** 2
        if self.canonical:                              # w = h: dw/deta = dh/deta
            return h, self.pw * (1.0 + a * y) * mu * (1.0 - a * mu) / den ** 3
        return h, self.pw * mu / den ** 2

    def param_derivatives(self, eta):
        """Derivatives of loglik, d1 and w in ``log alpha``."""
        a, y, r = self.alpha, self.y, self.r
        mu = np.exp(np.asarray(eta, dtype=float))
        den = 1.0 + a * mu
        dl_da = -r * r * (special.digamma(y + r) - special.digamma(r) - np.log1p(a * mu)) \
            + y / a - (y + r) * mu / den
        dd1_da = -(y - mu) * mu / den ** 2
        if self.canonical:
            dw_da = mu * (y * den - 2.0 * mu * (1.0 + a * y)) / den ** 3
        else:
            dw_da = -mu * mu / den ** 2
        pa = self.pw * a
        return (pa * dl_da)[:, None], (pa * dd1_da)[:, None], (pa * dw_da)[:, None]

    def loglike_saturated(self):
        y, a, r = self.y, self.alpha, self.r
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(y > 0, y * np.log(a * y) - (y + r) * np.log1p(a * y), 0.0)
        return float(np.sum(self.pw * (self._lg + t)))

    def mean(self, eta):
        return np.exp(eta)

    def pearson_resid(self, eta):
        mu = np.exp(np.asarray(eta, dtype=float))
        return (self.y - mu) / np.sqrt((mu + self.alpha * mu * mu) / np.where(self.pw > 0, self.pw, 1.0))


# ============================================================================ response handling
def _response_from_frame(y, X, info):
    """Binomial-style responses from the formula engine's response frame.

    ``cbind(s, f)`` -> proportions with trials in ``info["trials"]``; a two-level
    categorical or boolean -> 0/1 with the first level as failure (as R).
    """
    resp = info["parsed"].response.strip()
    if resp.replace(" ", "").startswith("cbind("):
        if y.shape[1] != 2:
            raise ValueError(f"the response {resp} must have two columns (successes, failures); "
                             f"it has {y.shape[1]}")
        s = y.iloc[:, 0].to_numpy(dtype=float)
        f = y.iloc[:, 1].to_numpy(dtype=float)
        if np.any(s < 0) or np.any(f < 0):
            raise ValueError(f"the response {resp} has negative counts (successes or failures "
                             "below 0); both columns must be >= 0")
        n = s + f
        prop = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
        info["response_kind"] = "cbind"
        info["trials"] = n
        return pd.Series(prop, index=y.index, name=resp), X
    if y.shape[1] == 1:
        info["response_kind"] = "numeric"
        return y.iloc[:, 0], X
    used = [c for c in y.columns if np.any(y[c].to_numpy() != 0)]
    levels = [str(c)[len(resp) + 1:-1] if str(c).startswith(resp + "[") else str(c) for c in y.columns]
    if y.shape[1] > 2:
        raise ValueError(f"the response {resp!r} is categorical with {y.shape[1]} levels {levels}; "
                         "a binomial response needs two levels (first level = failure) or 0/1 values")
    del used
    info["response_kind"] = "factor"
    info["response_levels"] = levels
    return pd.Series(y.iloc[:, 1].to_numpy(dtype=float), index=y.index, name=resp), X


def _check_counts(y, name, what="counts"):
    if np.any(y < 0):
        raise ValueError(f"the response {name!r} has negative values (min {np.min(y):g}); "
                         f"{what} must be >= 0")
    if np.any(np.abs(y - np.round(y)) > 1e-8 * np.maximum(1.0, np.abs(y))):
        warnings.warn(f"the response {name!r} has non-integer values; the log-likelihood "
                      "uses the continuous extension (log-gamma)", UserWarning, stacklevel=4)


# ============================================================================ models
class GeneralizedLinearMixedModel(MixedModel):
    """Generalized linear mixed model fitted by Laplace or adaptive Gauss-Hermite quadrature.

    Usually created with :func:`mlmext.formula.api.glmer`.

    Parameters
    ----------
    endog : array_like
        Response: 0/1 or proportions (binomial; with ``weights`` = trials), a
        two-column array of (successes, failures), or counts (Poisson).
    exog : array_like
        Fixed-effects design.
    re_design : mlmext.design.RandomEffectsDesign
    family : statsmodels.genmod.families.Family
        ``Binomial()`` (default) or ``Poisson()``, any link the family accepts.
    weights : array_like, optional
        Prior weights (binomial proportions: the number of trials).
    offset : array_like, optional
        Known offset on the linear-predictor scale.
    """

    _check_nlev_vs_nobs = False

    def __init__(self, endog, exog, re_design, family=None, weights=None, offset=None, **kwargs):
        family = families.Binomial() if family is None else family
        if isinstance(family, type):
            family = family()
        self._validate_family(family)
        info = kwargs.get("formula_info") or {}
        trials = info.pop("trials", None)
        kind = info.get("response_kind", "numeric")
        y = np.asarray(endog, dtype=float)
        if y.ndim == 2 and y.shape[1] == 2:              # (successes, failures) given as arrays
            if np.any(y < 0):
                raise ValueError("the (successes, failures) response has negative counts")
            trials = y.sum(axis=1)
            endog = np.divide(y[:, 0], trials, out=np.zeros(len(y)), where=trials > 0)
            kind = "cbind"
        elif y.ndim == 2 and y.shape[1] != 1:
            raise ValueError(f"the response must be one column or (successes, failures); it has {y.shape[1]}")
        if trials is not None:
            weights = trials if weights is None else np.asarray(weights, dtype=float) * trials
        self.family = family
        self.response_kind = kind
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        self._init_keys = list(getattr(self, "_init_keys", [])) + ["family"]
        self.endog = np.asarray(self.endog, dtype=float).ravel()
        self._check_response()
        self._setup()

    # -- family and response checks
    def _validate_family(self, family):
        if isinstance(family, (families.Gaussian,)):
            raise NotImplementedError("a Gaussian GLMM with an identity link is an LMM: use "
                                      "mlmext.formula.api.lmer; other Gaussian links are not implemented")
        if isinstance(family, families.NegativeBinomial):
            raise ValueError("for the negative binomial use glmer_nb (alpha is estimated with the "
                             "other parameters), not glmer with family=NegativeBinomial()")
        if not isinstance(family, (families.Binomial, families.Poisson)):
            raise NotImplementedError(f"the {type(family).__name__} family (it has a scale "
                                      "parameter) is not implemented; binomial, Poisson and "
                                      "negative binomial (glmer_nb) are")

    def _response_name(self):
        return str(self.formula_info["parsed"].response) if "parsed" in self.formula_info \
            else str(getattr(self, "endog_names", "y"))

    def _check_response(self):
        y, name = self.endog, self._response_name()
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {name!r} has non-finite values")
        if isinstance(self.family, families.Binomial):
            if np.any(y < 0) or np.any(y > 1):
                raise ValueError(f"the binomial response {name!r} must be 0/1, proportions in "
                                 f"[0, 1] (with weights = trials), cbind(successes, failures) or "
                                 f"a two-level factor; it has values in [{y.min():g}, {y.max():g}]")
            k = y * self.weights
            if np.any(np.abs(k - np.round(k)) > 1e-7 * np.maximum(1.0, k)):
                warnings.warn(f"non-integer number of successes in the binomial response {name!r} "
                              "(proportion times weights); give weights = number of trials",
                              UserWarning, stacklevel=3)
        else:
            if self.response_kind != "numeric":
                raise ValueError(f"the response {name!r} is a {self.response_kind} response; the "
                                 f"{type(self.family).__name__} family needs counts")
            _check_counts(y, name)

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        y, X = _response_from_frame(y, X, info)
        return y, _drop_rank_deficient(X)

    def _make_conditional(self):
        return GLMConditional(self.family, self.endog, self.weights)

    def _setup(self):
        self.cond = self._make_conditional()
        self.k_extra = int(getattr(self.cond, "k_extra", 0))
        self._chol_u = None
        self._chol_x = None
        self._u_warm = None
        self._last = None

    @property
    def chol_u(self):
        if self._chol_u is None:
            self._chol_u = lp.make_chol(self.re_design, int(self.nobs))
        return self._chol_u

    @property
    def chol_x(self):
        if self._chol_x is None:
            self._chol_x = lp.make_chol(self.re_design, int(self.nobs), X=self.exog)
        return self._chol_x

    # -- parameters: (theta, beta, extra)
    def _split(self, params):
        params = np.asarray(params, dtype=float)
        nt, p = self.re_design.ntheta, self.k_fe
        return params[:nt], params[nt:nt + p], params[nt + p:]

    def _set_extra(self, extra):
        if self.k_extra:
            self.cond.set_params(extra)

    # -- objectives
    def _modes(self, theta, beta, tol=1e-14, warm=True, lams=None):
        des = self.re_design
        lams = des.lambdas(theta) if lams is None else lams
        eta_f = self.exog @ beta + self.offset
        u0 = self._u_warm if warm else None
        last = self._last if warm else None
        if last is not None and u0 is not None:
            th0, ef0, m0, lams0, extra0 = last
            dd1 = None
            if extra0 is not None:                       # e.g. log alpha moved too
                dx = self._extra_now() - extra0
                if np.any(dx) and np.all(np.isfinite(dx)):
                    dd1 = self.cond.param_derivatives(m0.eta)[1] @ dx
            u0 = lp.predict_modes(des, self.chol_u, m0, theta - th0, eta_f - ef0, lams=lams0, dd1=dd1)
        modes = lp.pirls(des, self.chol_u, eta_f, self.cond, theta, u0=u0, tol=tol, lams=lams)
        if not modes.converged and u0 is not None:
            modes = lp.pirls(des, self.chol_u, eta_f, self.cond, theta, u0=None, tol=tol, lams=lams)
            modes.message = "retried from u = 0; " + modes.message
        if modes.converged:
            self._u_warm = modes.u
            self._last = (np.array(theta, dtype=float), eta_f, modes, lams, self._extra_now())
        else:
            self._last = None
        return modes, lams

    def _extra_now(self):
        return self.cond.get_params().copy() if self.k_extra else None

    def loglike(self, params, nagq=1):
        """Laplace (``nagq = 1``) or AGQ log-likelihood at ``params = (theta, beta[, log alpha])``."""
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta)
        if not modes.converged:
            return -np.inf
        if nagq == 1:
            return modes.laplace
        llf, _ = lp.agq_loglik(self.re_design, self.chol_u, None, self.cond, theta, nagq,
                               modes=modes, lams=lams)
        return llf

    def loglike_and_score(self, params):
        """Laplace log-likelihood and its exact gradient in ``(theta, beta[, log alpha])``."""
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta)
        if not modes.converged:
            return -np.inf, np.zeros(len(params)), modes
        gt, gb, ge = lp.laplace_gradient(self.re_design, self.chol_u, self.cond, theta, modes,
                                         X=self.exog)
        g = np.concatenate([gt, gb] + ([ge] if self.k_extra else []))
        return modes.laplace, g, modes

    def score(self, params):
        return self.loglike_and_score(params)[1]

    def _stage1(self, theta, beta, u=None):
        """lme4's nAGQ = 0 objective at theta: beta inside PIRLS. Returns (deviance, modes)."""
        des = self.re_design
        modes = lp.pirls(des, self.chol_x, self.offset, self.cond, theta, u0=u, X=self.exog,
                         beta0=beta, tol=1e-10)
        if not modes.converged and (u is not None):
            modes = lp.pirls(des, self.chol_x, self.offset, self.cond, theta, X=self.exog,
                             beta0=None, tol=1e-10)
        dev = -2.0 * modes.laplace if modes.converged else np.inf
        return dev, modes

    # -- starting values
    def _start_extra(self, beta):
        return np.zeros(0)

    # -- fit
    def fit(self, nagq=1, start_params=None, maxiter=500, tol=1e-8, stage1=False, disp=False,
            **kwargs):
        """Maximum likelihood by the Laplace approximation or adaptive Gauss-Hermite quadrature.

        Parameters
        ----------
        nagq : int
            1 (default): Laplace approximation.  ``> 1``: adaptive
            Gauss-Hermite quadrature with ``nagq`` points per random effect
            (a single grouping factor with at most 3 random effects per level;
            the product grid has ``nagq**q`` nodes).
        start_params : array_like, optional
            ``(theta, beta[, log alpha])`` to start from.
        maxiter : int
            Iterations of the quasi-Newton phase.
        tol : float
            Convergence when the Newton decrement ``g' H^-1 g`` of the
            deviance (``-2 llf``) is below ``tol``: the deviance is then within
            ``tol / 2`` of its minimum.
        stage1 : bool
            Optimize theta with beta inside PIRLS first (lme4's ``nAGQ = 0``
            stage, derivative-free).  By default only one such PIRLS solve at
            the starting theta is done: it gives beta's starting values and
            scale, and the joint phase has exact gradients.

        Returns
        -------
        GLMMResults
        """
        nagq = int(nagq)
        if nagq < 1:
            raise ValueError("nagq must be a positive integer (1 = Laplace)")
        des = self.re_design
        if nagq > 1:
            if len(des.blocks) != 1:
                raise NotImplementedError(
                    "adaptive Gauss-Hermite quadrature (nagq > 1) needs a single grouping factor; "
                    f"this model has {len(des.blocks)} ({', '.join(b.name for b in des.blocks)}). "
                    "Use nagq=1 (Laplace).")
            if des.blocks[0].q > 3:
                raise NotImplementedError(
                    f"adaptive Gauss-Hermite quadrature supports at most 3 random effects per level; "
                    f"the term on {des.blocks[0].name!r} has {des.blocks[0].q}. Use nagq=1 (Laplace).")
        des = self.re_design
        dense_rows = des.nre - des.blocks[0].nre + self.k_fe + 1
        with blas_threads(dense_rows):
            return self._fit(nagq, start_params, maxiter, tol, stage1)

    def _fit(self, nagq, start_params, maxiter, tol, stage1, em_steps=2):
        des = self.re_design
        nt, p, ke = des.ntheta, self.k_fe, self.k_extra
        tried = []
        self._u_warm = None
        self._last = None
        # ---- stage 1: beta inside PIRLS
        if start_params is not None:
            sp = np.asarray(start_params, dtype=float)
            if sp.size != nt + p + ke:
                raise ValueError(f"start_params needs {nt + p + ke} values (theta, beta"
                                 f"{', log alpha' if ke else ''}); got {sp.size}")
            theta0, beta0, extra0 = self._split(sp)
            self._set_extra(extra0)
            _, m1 = self._stage1(theta0, beta0)
        else:
            theta0 = des.theta_start.copy()
            extra0 = self._start_extra(None)
            self._set_extra(extra0)
            _, m1 = self._stage1(theta0, None)
            if not m1.converged:
                raise lp.PIRLSError("PIRLS failed at the starting values (theta = "
                                    f"{np.round(theta0, 4).tolist()}, beta updated inside PIRLS "
                                    f"from 0, u from 0): {m1.message}")
            if ke:                                        # alpha from the first stage's modes
                extra0 = self._start_extra(m1)
                self._set_extra(extra0)
                _, m1b = self._stage1(theta0, m1.beta, m1.u)
                m1 = m1b if m1b.converged else m1
            if stage1:
                theta0, m1, nfev1 = self._optimize_stage1(theta0, m1)
                tried.append(("stage 1 (theta; beta in PIRLS): Nelder-Mead", True, nfev1))
            elif em_steps:
                theta0, m1, nem = self._em_start(theta0, m1, em_steps)
                tried.append(("stage 1 (theta; beta in PIRLS): EM steps", True, nem))
            beta0 = m1.beta
        # scale for beta: Cholesky factor of the stage-1 (X' V^-1 X)^-1
        cov0 = self.chol_x.cov_beta_unscaled() if (m1.converged and p) else np.eye(p)
        try:
            R = np.linalg.cholesky(cov0) if p else np.zeros((0, 0))
        except np.linalg.LinAlgError:
            R = np.diag(np.sqrt(np.maximum(np.diag(cov0), 1e-8)))
        self._u_warm = m1.u if m1.converged else None
        tr = _Transform(nt, p, ke, beta0, R)
        x0 = np.concatenate([theta0, np.zeros(p), extra0])
        bounds = tr.bounds(des.lower)
        # ---- Laplace: all parameters jointly, exact gradient, then Newton with the Hessian
        fg = self._laplace_fg(tr)
        fd_idx = list(range(nt)) + list(range(nt + p, nt + p + ke))
        x1, f1, g1, qinfo = _quasi_newton(fg, x0, bounds, fd_idx, maxiter=maxiter, tol=1e-7)
        tried.append(("Laplace: quasi-Newton (exact gradient)", qinfo["converged"], qinfo["nfev"]))
        lower_x = np.full(x1.size, -np.inf)           # only the variance parameters (theta)
        lower_x[:nt] = [-np.inf if b[0] is None else b[0] for b in bounds[:nt]]
        esc = escape_bound(fg, x1, f1, lower_x)
        if esc is not None:          # a variance stuck at zero although the optimum is inside
            x2, f2, g2, qinfo = _quasi_newton(fg, esc[0], bounds, fd_idx, maxiter=maxiter, tol=1e-7)
            tried.append(("Laplace: quasi-Newton, restarted off the bound", qinfo["converged"],
                          qinfo["nfev"]))
            if f2 < f1:
                x1, f1, g1 = x2, f2, g2
        hess_fn = lambda x, g: _hessian_from_gradient(fg, x, g, bounds)
        x, f, g, H, info = _newton(fg, x1, bounds, hess_fn, tol, maxit=min(50, maxiter),
                                   fgx=(f1, g1))
        tried.append(("Laplace: Newton (Hessian from gradient differences)", info["converged"],
                      info["nfev"]))
        converged = info["converged"]
        message = info["message"]
        if nagq > 1:
            # from the Laplace estimates, with the Laplace Hessian as the first curvature
            fa = self._agq_f(tr, nagq)
            fga = _CountingGradient(fa, bounds)
            x1, f1, g1, qinfo = _quasi_newton(fga, x, bounds, [], maxiter=maxiter, tol=1e-6, H0=H)
            tried.append((f"AGQ({nagq}): quasi-Newton (gradient by differences)", qinfo["converged"],
                          fga.nfev))
            hess_fn = lambda z, gz: _hessian_from_values(fa, z, bounds)
            fga.nfev = 0
            x, f, g, H, info = _newton(fga, x1, bounds, hess_fn, tol, maxit=min(50, maxiter),
                                       fgx=(f1, g1))
            tried.append((f"AGQ({nagq}): Newton (Hessian from differences)", info["converged"],
                          fga.nfev + info["nfev"]))
            converged, message = info["converged"], info["message"]
        optim = optimize.OptimizeResult(x=x, fun=f, jac=g, success=converged, message=message,
                                        tried=tried, nfev=sum(t[2] for t in tried),
                                        method="L-BFGS-B + Newton")
        return self._finish(tr, x, nagq, optim, H)

    def _laplace_fg(self, tr):
        def fg(x):
            ll, g, _ = self.loglike_and_score(tr.params(x))
            if not np.isfinite(ll):
                return np.inf, np.zeros_like(x)
            return -2.0 * ll, -2.0 * tr.grad(g)
        return fg

    def _agq_f(self, tr, nagq):
        def f(x):
            ll = self.loglike(tr.params(x), nagq=nagq)
            return -2.0 * ll if np.isfinite(ll) else np.inf
        return f

    def _em_start(self, theta, m1, nsteps):
        """A few Laplace-EM updates of theta on lme4's first-stage system (beta inside PIRLS).

        For each term, ``Sigma_new = Lambda (U'U + S) Lambda' / m`` with ``U``
        the conditional modes and ``S`` the summed conditional covariances of
        the spherical effects; theta is the Cholesky factor of ``Sigma_new``.
        A cheap way to start the joint optimization near the optimum.
        """
        des = self.re_design
        done = 0
        for _ in range(nsteps):
            ch = self.chol_x
            try:
                S = ch.inverse_block_sums(0)
            except np.linalg.LinAlgError:
                break
            lams = des.lambdas(theta)
            new = theta.copy()
            off = 0
            for blk, lam, Sb in zip(des.blocks, lams, S):
                U = m1.u[off:off + blk.nre].reshape(blk.m, blk.q)
                off += blk.nre
                C = lam @ (U.T @ U + Sb) @ lam.T / blk.m
                start = 0
                for t in blk.terms:
                    Ct = C[start:start + t.q, start:start + t.q]
                    start += t.q
                    try:
                        Lt = np.linalg.cholesky(Ct + 1e-12 * np.eye(t.q))
                    except np.linalg.LinAlgError:
                        Lt = np.diag(np.sqrt(np.maximum(np.diag(Ct), 0.0)))
                    new[t.theta_index] = Lt.T[np.triu_indices(t.q)]   # column-major lower triangle
            _, m_new = self._stage1(new, m1.beta, m1.u)
            done += 1
            if not m_new.converged or m_new.laplace < m1.laplace - 1.0:
                self._stage1(theta, m1.beta, m1.u)       # keep the previous point (and its factor)
                break
            theta, m1 = new, m_new
        return theta, m1, done

    def _optimize_stage1(self, theta0, m1):
        des = self.re_design
        state = {"modes": m1, "nfev": 0}

        def f(th):
            th = np.where(np.isfinite(des.lower), np.maximum(th, des.lower), th)
            m = state["modes"]
            dev, mm = self._stage1(th, m.beta, m.u)
            state["nfev"] += 1
            if mm.converged:
                if dev <= state.get("best", np.inf):
                    state["best"], state["modes"], state["theta"] = dev, mm, th.copy()
                return dev
            return 1e100

        state["best"] = -2.0 * m1.laplace
        state["theta"] = theta0.copy()
        nt = len(theta0)
        simplex = np.vstack([theta0] + [theta0 + 0.5 * np.eye(nt)[i] * (-1 if theta0[i] > 0.5 else 1)
                                        for i in range(nt)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            optimize.minimize(f, theta0, method="Nelder-Mead",
                              options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4,
                                       "maxfev": 200 * nt})
        # the stage-1 system at the best theta (for the scale of beta)
        best = state["modes"]
        self._stage1(state["theta"], best.beta, best.u)
        return state["theta"], best, state["nfev"]

    def _finish(self, tr, x, nagq, optim, H):
        des = self.re_design
        params = tr.params(x)
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta, tol=1e-20)
        if not modes.converged:
            raise lp.PIRLSError(f"PIRLS failed at the estimates: {modes.message}")
        if nagq == 1:
            llf = modes.laplace
        else:
            llf, _ = lp.agq_loglik(des, self.chol_u, None, self.cond, theta, nagq, modes=modes, lams=lams)
        # covariance of beta as lme4: inverse Hessian of the deviance in (theta, beta), or RX
        # when the fit is singular (lme4 does not compute the Hessian then)
        nt, p = des.ntheta, self.k_fe
        singular = bool(np.any(theta[np.isfinite(des.lower)] < 1e-4))
        cov_method = "RX"
        cov = None
        cov_joint = None
        if not singular and H is not None and np.all(np.isfinite(H)):
            # lme4 (glmer.nb too) holds the negative binomial's alpha fixed here; the
            # covariance that also allows for alpha's uncertainty is kept as cov_fe_joint
            for k_h, name in ((nt + p, "cov"), (H.shape[0], "joint")):
                try:
                    Hi = np.linalg.inv(H[:k_h, :k_h])
                except np.linalg.LinAlgError:
                    continue
                Vt = 2.0 * Hi[nt:nt + p, nt:nt + p]
                Vt = 0.5 * (Vt + Vt.T)
                if p and not np.all(np.linalg.eigvalsh(Vt) > 0):
                    continue
                if name == "cov":
                    cov = tr.R @ Vt @ tr.R.T
                    cov_method = "Hessian"
                elif self.k_extra:
                    cov_joint = tr.R @ Vt @ tr.R.T
        if cov is None:
            cov = self._cov_rx(theta, modes, lams)
            self._modes(theta, beta, tol=1e-20)          # factor at the modes again
        optim.cov_method = cov_method
        extra_kw = {}
        if self.k_extra:
            extra_kw["_alpha"] = float(np.exp(extra[0]))
        res = GLMMResults(self, beta, cov, theta=theta, u=modes.u, sigma=1.0,
                          criterion=-2.0 * llf, optim=optim, reml=False, nagq=nagq,
                          pirls=modes, hessian=H, _transform=tr, _cov_joint=cov_joint,
                          **extra_kw)
        if not optim.success:
            warnings.warn(f"the optimizer did not converge: {optim.message} (tried: "
                          + "; ".join(f"{m} ({'ok' if ok else 'failed'}, {n} evaluations)"
                                      for m, ok, n in optim.tried) + ")",
                          ConvergenceWarning, stacklevel=3)
        return MixedResultsWrapper(res)

    def _cov_rx(self, theta, modes, lams):
        """lme4's RX-based covariance: (X' W X - ...)^-1 from the joint PIRLS system at the modes."""
        d1, w = self.cond.derivatives(modes.eta)
        lin = modes.eta - self.offset
        z = lin.copy()
        pos = w > 0
        z[pos] += d1[pos] / w[pos]
        ch = self.chol_x
        ch.reweight(np.column_stack([self.exog, z]), w)
        ch.update(lams)
        return ch.cov_beta_unscaled()


def _quasi_newton(fg, x0, bounds, fd_idx, maxiter=200, tol=1e-4, curv=2.0, H0=None):
    """Damped BFGS started from a structured Hessian, until the Newton decrement is below ``tol``.

    The starting Hessian has finite-difference columns (of the exact gradient)
    for the coordinates ``fd_idx`` (theta and the conditional model's own
    parameters: few, strongly nonlinear) and ``curv * I`` for the others (the
    fixed effects, already scaled so that their block is close to that).
    Steps are modified-Newton directions (absolute eigenvalues) with an
    Armijo line search; coordinates at a lower bound whose gradient pushes
    outwards are held there.

    Returns
    -------
    x, f, g, info
    """
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
    x = np.clip(np.asarray(x0, dtype=float), lo, hi)
    f, g = fg(x)
    nfev = 1
    info = {"converged": False, "message": "", "nfev": 0, "nit": 0}
    if not np.isfinite(f):
        info["message"] = "the deviance is not finite at the starting values"
        return x, f, g, info
    k = x.size
    H = curv * np.eye(k) if H0 is None else np.array(H0, dtype=float)
    h = _steps(x, bounds)
    for i in (fd_idx if H0 is None else ()):
        xi = x.copy()
        xi[i] += h[i] if x[i] + h[i] <= hi[i] else -h[i]
        fi, gi = fg(xi)
        nfev += 1
        if np.isfinite(fi):
            col = (gi - g) / (xi[i] - x[i])
            H[:, i] = col
            H[i, :] = col
    H = 0.5 * (H + H.T)
    wv, V = np.linalg.eigh(H)                       # start positive definite (|eigenvalues|)
    wv = np.maximum(np.abs(wv), 1e-6 * max(np.abs(wv).max(), 1e-12))
    H = (V * wv) @ V.T
    dec = np.inf
    for it in range(maxiter):
        info["nit"] = it + 1
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        Hf = H[np.ix_(free, free)]
        wv, V = np.linalg.eigh(Hf)
        wmax = max(np.abs(wv).max(), 1e-12)
        wv = np.maximum(np.abs(wv), 1e-6 * wmax)
        step = np.zeros(k)
        step[free] = -(V @ ((V.T @ g[free]) / wv))
        dec = float(-g @ step)
        if dec < tol:
            info["converged"] = True
            info["message"] = f"Newton decrement {dec:.3g} < {tol:g}"
            break
        big = np.max(np.abs(step[fd_idx])) if len(fd_idx) else 0.0
        if big > 1.0:                               # theta moves at most 1 per iteration
            step /= big
            dec = float(-g @ step)
        t = 1.0
        accepted = False
        for _ in range(40):
            xn = np.clip(x + t * step, lo, hi)
            fn, gn = fg(xn)
            nfev += 1
            if np.isfinite(fn) and fn <= f + 1e-4 * float(g @ (xn - x)) + 1e-13 * abs(f):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            info["message"] = f"line search failed (decrement {dec:.3g})"
            break
        sv, yv = xn - x, gn - g
        Hs = H @ sv
        sHs = float(sv @ Hs)
        sy = float(sv @ yv)
        if sHs > 0:
            if sy < 0.2 * sHs:                       # Powell damping keeps H positive definite
                th = 0.8 * sHs / (sHs - sy)
                yv = th * yv + (1.0 - th) * Hs
                sy = float(sv @ yv)
            if sy > 0:
                H = H - np.outer(Hs, Hs) / sHs + np.outer(yv, yv) / sy
        x, f, g = xn, fn, gn
    else:
        info["message"] = f"no convergence in {maxiter} iterations (decrement {dec:.3g})"
    info["nfev"] = nfev
    info["decrement"] = dec
    return x, f, g, info


def _steps(x, bounds, base=1e-4):
    return np.array([base * max(1.0, abs(v)) for v in x])


def _hessian_from_gradient(fg, x, g0, bounds):
    """Forward differences of an exact gradient (one gradient per parameter); symmetrized."""
    k = x.size
    H = np.empty((k, k))
    h = _steps(x, bounds)
    for i in range(k):
        xi = x.copy()
        xi[i] += h[i]
        _, gi = fg(xi)
        H[:, i] = (gi - g0) / h[i]
    return 0.5 * (H + H.T), k


def _central_gradient(f, x, bounds, base=1e-5):
    f0 = f(x)
    g = np.empty_like(x)
    h = _steps(x, bounds, base)
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[i] += h[i]
        xm[i] -= h[i]
        g[i] = (f(xp) - f(xm)) / (2 * h[i])
    return f0, g


class _CountingGradient:
    """(value, central-difference gradient) of a function, counting function evaluations."""

    def __init__(self, f, bounds, base=1e-5):
        self.f, self.bounds, self.base, self.nfev = f, bounds, base, 0

    def __call__(self, x):
        self.nfev += 2 * x.size + 1
        return _central_gradient(self.f, x, self.bounds, self.base)


def _hessian_from_values(f, x, bounds, base=1e-3):
    """Central second differences of a function (2 k^2 evaluations)."""
    k = x.size
    h = _steps(x, bounds, base)
    f0 = f(x)
    H = np.empty((k, k))
    n = 1
    for i in range(k):
        for j in range(i, k):
            if i == j:
                xp, xm = x.copy(), x.copy()
                xp[i] += h[i]
                xm[i] -= h[i]
                H[i, i] = (f(xp) - 2.0 * f0 + f(xm)) / h[i] ** 2
                n += 2
            else:
                v = []
                for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                    z = x.copy()
                    z[i] += si * h[i]
                    z[j] += sj * h[j]
                    v.append(f(z))
                H[i, j] = H[j, i] = (v[0] - v[1] - v[2] + v[3]) / (4.0 * h[i] * h[j])
                n += 4
    return H, n


def _newton(fg, x, bounds, hess_fn, tol, maxit=20, fgx=None):
    """Newton steps with backtracking on the deviance, parameters at a lower bound held there.

    Returns ``x, f, g, H, info``; ``H`` is the Hessian at (or within one small
    step of) ``x``, for the covariance.
    """
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
    if fgx is None:
        f, g = fg(x)
        nfev = 1
    else:
        (f, g), nfev = fgx, 0
    H, nh = hess_fn(x, g)
    nfev += nh
    info = {"converged": False, "message": "", "nfev": 0}
    dec = np.inf
    for it in range(maxit):
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        step = np.zeros_like(x)
        Hf = H[np.ix_(free, free)]
        try:
            c = linalg.cho_factor(Hf)
            step[free] = -linalg.cho_solve(c, g[free])
        except (linalg.LinAlgError, ValueError):
            w, V = np.linalg.eigh(Hf)
            w = np.maximum(np.abs(w), 1e-8 * max(1.0, np.abs(w).max()))
            step[free] = -(V @ ((V.T @ g[free]) / w))
        dec = float(-g @ step)
        if dec < tol:
            info["converged"] = True
            info["message"] = f"Newton decrement {dec:.3g} < tol"
            break
        t = 1.0
        accepted = False
        for _ in range(30):
            xn = np.clip(x + t * step, lo, hi)
            fn, gn = fg(xn)
            nfev += 1
            if np.isfinite(fn) and fn <= f - 1e-4 * t * dec + 1e-12 * abs(f):
                accepted = True
                break
            t *= 0.5
        if not accepted:
            info["message"] = (f"Newton line search failed at decrement {dec:.3g} (the deviance "
                               "could not be lowered along the Newton direction)")
            info["converged"] = dec < 1e3 * tol
            break
        big = dec > 1e-4
        x, f, g = xn, fn, gn
        if big:                                     # far from the optimum: new curvature
            H, nh = hess_fn(x, g)
            nfev += nh
    else:
        info["message"] = f"Newton did not converge in {maxit} iterations (decrement {dec:.3g})"
    info["nfev"] = nfev
    info["decrement"] = dec
    return x, f, g, H, info


class _Transform:
    """Optimizer coordinates: beta = beta0 + R b (R from the stage-1 covariance)."""

    def __init__(self, nt, p, ke, beta0, R):
        self.nt, self.p, self.ke = nt, p, ke
        self.beta0 = np.asarray(beta0, dtype=float)
        self.R = R

    def params(self, x):
        x = np.asarray(x, dtype=float)
        nt, p = self.nt, self.p
        return np.concatenate([x[:nt], self.beta0 + self.R @ x[nt:nt + p], x[nt + p:]])

    def grad(self, g):
        nt, p = self.nt, self.p
        return np.concatenate([g[:nt], self.R.T @ g[nt:nt + p], g[nt + p:]])

    def bounds(self, lower):
        lo = [(float(l), None) if np.isfinite(l) else (None, None) for l in lower]
        return lo + [(None, None)] * self.p + [(-25.0, 10.0)] * self.ke


class NegativeBinomialMixedModel(GeneralizedLinearMixedModel):
    """Negative binomial (NB2, log link) mixed model; alpha estimated with theta and beta.

    Usually created with :func:`mlmext.formula.api.glmer_nb`.  ``Var(y | u) =
    mu + alpha mu^2`` (statsmodels' ``alpha``; lme4/MASS's ``theta`` is
    ``1 / alpha``).
    """

    def __init__(self, endog, exog, re_design, weights=None, offset=None, link=None,
                 information="expected", **kwargs):
        kwargs.pop("family", None)
        if link is not None and type(link).__name__ != "Log":
            raise NotImplementedError("glmer_nb supports the log link only")
        if information not in ("expected", "observed"):
            raise ValueError("information must be 'expected' (lme4's Laplace) or 'observed' "
                             "(glmmTMB's)")
        self.link_name = "log"
        self.information = information
        super().__init__(endog, exog, re_design, family=families.Poisson(), weights=weights,
                         offset=offset, **kwargs)
        self._init_keys = [k for k in self._init_keys if k != "family"] + ["information"]

    def _validate_family(self, family):
        pass

    def _make_conditional(self):
        return NegativeBinomialConditional(self.endog, self.weights, alpha=1.0,
                                           information=self.information)

    def _start_extra(self, modes):
        """log alpha from the Pearson dispersion of the stage-1 Poisson-scale fit."""
        if modes is None:
            return np.array([0.0])
        mu = np.exp(modes.eta)
        y, w = self.endog, self.weights
        num = np.sum(w * ((y - mu) ** 2 - y))
        den = np.sum(w * mu * mu)
        a = num / den if den > 0 else 1.0
        return np.array([np.log(min(max(a, 1e-3), 1e3))])


# ============================================================================ results
class GLMMResults(MixedResults):
    """Results of a GLMM fit (:class:`GeneralizedLinearMixedModel`).

    Besides :class:`~mlmext.results.MixedResults`: ``nagq``, ``family``,
    ``alpha`` (negative binomial), ``loglike_saturated`` and ``llf_lme4``.
    """

    _has_residual = False

    @property
    def _family_name(self):
        model = self.model
        if isinstance(model, NegativeBinomialMixedModel):
            return f"Negative Binomial ({1.0 / self.alpha:.4g}) [alpha = {self.alpha:.4g}]"
        return type(model.family).__name__

    @property
    def link_name(self):
        """Name of the link function, lower case (``"logit"``, ``"log"``, ...)."""
        model = self.model
        if isinstance(model, NegativeBinomialMixedModel):
            return "log"
        return type(model.family.link).__name__.lower()

    @property
    def family(self):
        """The model's statsmodels family (Binomial or Poisson; for ``glmer_nb`` fits see ``alpha``)."""
        return self.model.family

    @property
    def alpha(self):
        """NB2 dispersion (``Var = mu + alpha mu^2``); None for other families."""
        if isinstance(self.model, NegativeBinomialMixedModel):
            return float(self._alpha)
        return None

    @property
    def k_params(self):
        """Number of estimated parameters (fixed effects, theta and, negative binomial, alpha)."""
        return self.k_fe + len(self.theta) + int(self.model.k_extra)

    @property
    def cov_fe_joint(self):
        """Covariance of the fixed effects allowing for alpha's uncertainty (negative binomial).

        ``cov_params()`` follows lme4's ``glmer.nb``, which treats alpha as
        known (the fixed-effects block of the inverse Hessian in (theta,
        beta)); this one inverts the Hessian in (theta, beta, log alpha), as
        glmmTMB does.  None for other families or singular fits.
        """
        if self._cov_joint is None:
            return None
        names = self.model.exog_names
        return pd.DataFrame(self._cov_joint, index=names, columns=names)

    @property
    def loglike_saturated(self):
        """The family's saturated log-likelihood (at the estimates for the negative binomial)."""
        cond = self.model.cond
        if self.model.k_extra:
            cond.set_params(np.array([np.log(self._alpha)]))
        return cond.loglike_saturated()

    @property
    def llf_lme4(self):
        """The log-likelihood lme4 prints for this fit.

        Equal to ``llf`` for the Laplace approximation; for ``nagq > 1`` lme4
        leaves out the saturated log-likelihood, so this is
        ``llf - loglike_saturated``.
        """
        return self.llf if self.nagq == 1 else self.llf - self.loglike_saturated

    def _inverse_link(self, eta):
        return self.model.cond.mean(eta)

    def _block_condvar(self):
        model = self.model
        theta, beta = self.theta, self.params
        if model.k_extra:
            model.cond.set_params(np.array([np.log(self._alpha)]))
        model._u_warm = self._u
        modes, lams = model._modes(theta, beta, tol=1e-20)
        cv = model.chol_u.condvar_u()
        return [np.einsum("ij,gjk,lk->gil", lam, c, lam) for lam, c in zip(lams, cv)]

    def _scaled_resid_quantiles(self):
        eta = self.linear_predictor()
        if self.model.k_extra:
            self.model.cond.set_params(np.array([np.log(self._alpha)]))
        r = self.model.cond.pearson_resid(eta)
        return np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])

    @property
    def resid_pearson(self):
        """Pearson residuals with the conditional modes, a Series."""
        eta = self.linear_predictor()
        return pd.Series(self.model.cond.pearson_resid(eta),
                         index=self.model.formula_info.get("row_labels"), name="resid_pearson")

    def _summary_top(self):
        method = "Laplace" if self.nagq == 1 else f"Adaptive Gauss-Hermite ({self.nagq} points)"
        return [("Method:", [method]), ("Link:", [self.link_name])]

    def _add_extra_tables(self, smry):
        notes = []
        if self.alpha is not None:
            notes.append(f"Negative binomial dispersion alpha = {self.alpha:.5g} (Var = mu + alpha mu^2; "
                         f"lme4's theta = 1/alpha = {1.0 / self.alpha:.5g}).")
        if self.nagq > 1:
            notes.append(f"Log-likelihood on the full scale; lme4's nAGQ > 1 value is llf - "
                         f"loglike_saturated = {self.llf_lme4:.4f}.")
        notes.append(f"Covariance of the fixed effects from the {self.optim.cov_method}"
                     f"{' of the deviance' if self.optim.cov_method == 'Hessian' else ''}; z tests.")
        smry.add_extra_txt(notes)

    def __repr__(self):
        return (f"<{type(self).__name__}: {self.model.formula_info.get('formula', '')}, "
                f"{'Laplace' if self.nagq == 1 else f'AGQ({self.nagq})'}, llf={self.llf:.4f}>")
