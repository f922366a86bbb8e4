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
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from . import laplace as lp
from ._blas import blas_threads
from .optimize import escape_bound
from ._args import reject_unknown
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
        self.loglik_scale = float(np.sum(np.abs(self.const)))

    # -- pieces
    def _mu(self, eta):
        mu = self.link.inverse(eta)
        if self.binomial:
            mu = np.clip(mu, 1e-300, 1.0 - 1e-16)
        else:
            mu = np.maximum(mu, 1e-300)
        return mu

    def _invalid(self, eta):
        """Where the link gives a mean outside the family's range (R's ``validmu``): the
        identity link's negative means, a binomial log link's means above 1.  The clipping
        of :meth:`_mu` is only a guard against underflow, not a way into the range."""
        with np.errstate(all="ignore"):
            raw = self.link.inverse(eta)
        bad = ~(raw >= 0)
        if self.binomial:
            bad |= raw > 1
        return bad

    def loglik_obs(self, eta):
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            return self.const + self.k * eta - self.pw * np.logaddexp(0.0, eta)
        if self.kind == "poisson-log":
            return self.const + self.pw * (self.y * eta - np.exp(eta))
        mu = self._mu(eta)
        if self.binomial:
            ll = (self.const + np.where(self.k > 0, self.k * np.log(mu), 0.0)
                  + np.where(self.nk > 0, self.nk * np.log1p(-mu), 0.0))
        else:
            ll = self.const + self.pw * (np.where(self.y > 0, self.y * np.log(mu), 0.0) - mu)
        return np.where(self._invalid(eta) & (self.pw > 0), -np.inf, ll)

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


def _lgamma_ratio(y, r):
    """``lgamma(y + r) - lgamma(r) - y log(r)`` without cancellation for large ``r``.

    For ``r = 1 / alpha`` large (little overdispersion: alpha heads for 0 on Poisson-like
    data) the two log-gammas are ~``r log r`` and their difference loses ~``eps r log r``
    (1e-7 per observation at r = 3e7), enough noise to stall the optimizer.  Stirling's series
    gives ``(y + r - 1/2) log1p(y / r) - y`` plus corrections in ``1/r``; from ``r > 1000``
    the omitted terms are below 1e-18.
    """
    y = np.asarray(y, dtype=float)
    if r <= 1e3:
        return special.gammaln(y + r) - special.gammaln(r) - y * np.log(r)
    z = y + r
    corr = (1.0 / (12.0 * z) - 1.0 / (12.0 * r)) - (1.0 / (360.0 * z ** 3) - 1.0 / (360.0 * r ** 3))
    return (z - 0.5) * np.log1p(y / r) - y + corr


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
        self.loglik_scale = float(np.sum(self.pw * self.lgy1))   # cancels in the sum (see laplace)
        self.information = information
        #: with the observed information as w, PIRLS is Newton's method and h = w
        self.canonical = information == "observed"
        self.set_alpha(alpha)

    def set_alpha(self, alpha):
        self.alpha = float(alpha)
        self.r = 1.0 / self.alpha
        # lgamma(y + r) - lgamma(r) - lgamma(y + 1) - y log r: the "- y log r" pairs with the
        # "+ y log alpha" of the density, so neither is formed (see _lgamma_ratio)
        self._lg = _lgamma_ratio(self.y, self.r) - self.lgy1

    def set_params(self, extra):
        self.set_alpha(float(np.exp(extra[0])))

    def get_params(self):
        return np.array([np.log(self.alpha)])

    def loglik_obs(self, eta):
        a, y = self.alpha, self.y
        eta = np.asarray(eta, dtype=float)
        mu = np.exp(eta)
        lam = np.log1p(a * mu)
        return self.pw * (self._lg + y * eta - (y + self.r) * lam)

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
        ll = self.pw * (self._lg + y * eta - (y + self.r) * np.log1p(am))
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
            t = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0)) - (y + r) * np.log1p(a * y), 0.0)
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
    levels = [str(c)[len(resp) + 1:-1] if str(c).startswith(resp + "[") else str(c) for c in y.columns]
    info["response_kind"] = "factor"
    info["response_levels"] = levels
    # more than two levels: the model's family decides the message (_check_response_kind)
    return pd.Series(y.iloc[:, 1].to_numpy(dtype=float), index=y.index, name=resp), X


def _check_counts(y, name, what="counts"):
    if np.any(y < 0):
        raise ValueError(f"the response {name!r} has negative values (min {np.min(y):g}); "
                         f"{what} must be >= 0")
    if np.any(np.abs(y - np.round(y)) > 1e-8 * np.maximum(1.0, np.abs(y))):
        warnings.warn(f"the response {name!r} has non-integer values; the log-likelihood "
                      "uses the continuous extension (log-gamma)", UserWarning, stacklevel=4)


# R's family names (and statsmodels' class names, any case; "." "_" " " ignored)
_FAMILY_NAMES = {"binomial": families.Binomial, "poisson": families.Poisson}
_FAMILY_OTHER = {
    "gaussian": (NotImplementedError, "a Gaussian GLMM with an identity link is an LMM: use "
                 "mlmext.formula.api.lmer"),
    "normal": (NotImplementedError, "a Gaussian GLMM with an identity link is an LMM: use "
               "mlmext.formula.api.lmer"),
    "negativebinomial": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated "
                         "with the other parameters)"),
    "negbin": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated with the "
               "other parameters)"),
    "nb": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated with the "
           "other parameters)"),
    "quasibinomial": (NotImplementedError, "quasi families have no likelihood to maximize (lme4 "
                      "does not fit them either); for overdispersion add an observation-level "
                      "random effect (1 | obs)"),
    "quasipoisson": (NotImplementedError, "quasi families have no likelihood to maximize (lme4 "
                     "does not fit them either); for overdispersed counts use glmer_nb or an "
                     "observation-level random effect (1 | obs)"),
}


def _family_from_name(name):
    """``"binomial"`` / ``"poisson"`` (R's names, any case) -> a statsmodels family instance."""
    key = name.strip().lower().replace(".", "").replace("_", "").replace(" ", "")
    if key.endswith("()"):
        key = key[:-2]
    if key in _FAMILY_NAMES:
        return _FAMILY_NAMES[key]()
    if key in _FAMILY_OTHER:
        exc, msg = _FAMILY_OTHER[key]
        raise exc(f"family={name!r}: {msg}")
    if key in ("gamma", "inversegaussian", "tweedie"):
        raise NotImplementedError(f"the {name} family (it has a scale parameter) is not "
                                  "implemented; binomial, Poisson and negative binomial "
                                  "(glmer_nb) are")
    raise ValueError(f"unknown family {name!r}; use 'binomial' or 'poisson' (or "
                     "sm.families.Binomial() / sm.families.Poisson() with any link), and "
                     "glmer_nb for the negative binomial")


# the keyword arguments of GeneralizedLinearMixedModel.fit, and hints for others
_FIT_ARGS = ("nagq", "start_params", "maxiter", "tol", "stage1", "disp")
_FIT_HINTS = {
    "method": "the GLMM fit has one method (quasi-Newton with the exact Laplace gradient, then "
              "Newton); remove method=",
    "optimizer": "the GLMM fit has one method (quasi-Newton with the exact Laplace gradient, "
                 "then Newton); remove optimizer=",
    "REML": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
    "reml": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
}


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
        self._reject_init_kwargs(kwargs)
        family = self._resolve_family(family)
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
        self._set_family(family)
        self.response_kind = kind
        self._check_response_kind(info)
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        self._init_keys = list(getattr(self, "_init_keys", [])) + ["family"]
        self.endog = np.asarray(self.endog, dtype=float).ravel()
        self._check_response()
        self._setup()

    # -- arguments, family and response checks
    _api_name = "glmer"
    _init_hints = {
        "link": "the link belongs in the family: family=sm.families.Binomial("
                "link=sm.families.links.Probit()), or sm.families.Poisson("
                "link=sm.families.links.Sqrt())",
        "exposure": "give the log exposure as an offset: offset=np.log(exposure)",
        "nAGQ": "the number of quadrature nodes is a fit() argument: .fit(nagq=...)",
        "REML": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
    }

    def _reject_init_kwargs(self, kwargs):
        """R / statsmodels spellings, rejected before the response is processed (the base
        class rejects any other argument it does not read)."""
        bad = {k: kwargs.pop(k) for k in list(kwargs) if k in self._init_hints}
        reject_unknown(bad, f"{self._api_name}()", hints=self._init_hints)

    def _set_family(self, family):
        self.family = family

    def _resolve_family(self, family):
        """A statsmodels family instance from ``family`` (instance, class or R-style name)."""
        if family is None:
            return families.Binomial()
        if isinstance(family, str):
            family = _family_from_name(family)
        elif isinstance(family, type) and issubclass(family, families.Family):
            family = family()
        if isinstance(family, families.links.Link) or (
                isinstance(family, type) and issubclass(family, families.links.Link)):
            raise TypeError(f"family={family!r} is a link, not a family; give the link to the "
                            "family: family=sm.families.Binomial(link=sm.families.links."
                            f"{getattr(family, '__name__', type(family).__name__)}())")
        if not isinstance(family, families.Family):
            raise TypeError(f"family must be a statsmodels family (sm.families.Binomial(), "
                            f"sm.families.Poisson()) or its name ('binomial', 'poisson'); got "
                            f"{family!r}")
        self._validate_family(family)
        return family

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

    @property
    def _family_label(self):
        """The family as messages name it ("binomial", "Poisson", "negative binomial")."""
        return "binomial" if isinstance(self.family, families.Binomial) else "Poisson"

    def _check_response_kind(self, info):
        """A categorical response: two levels for the binomial, never for count families."""
        if self.response_kind != "factor":
            return
        name = str(info["parsed"].response) if "parsed" in info else "y"
        levels = list(info.get("response_levels", []))
        if isinstance(self.family, families.Binomial):
            if len(levels) != 2:
                raise ValueError(f"the response {name!r} is categorical with {len(levels)} levels "
                                 f"{levels}; a binomial response needs two levels (first level = "
                                 "failure) or 0/1 values")
            return
        raise ValueError(f"the response {name!r} is categorical (levels {levels[:6]}); the "
                         f"{self._family_label} family needs numeric counts (convert the column "
                         "with pd.to_numeric if it holds numbers as text)")

    def _check_response(self):
        y, name = self.endog, self._response_name()
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {name!r} has non-finite values")
        if isinstance(self.family, families.Binomial):
            if np.any(y < 0) or np.any(y > 1):
                raise ValueError(f"the binomial response {name!r} must be 0/1, proportions in "
                                 f"[0, 1] (with weights = trials), cbind(successes, failures) or "
                                 f"a two-level factor; it has values in [{y.min():g}, {y.max():g}]")
            pos = self.weights > 0
            for v, what in ((0.0, "failures"), (1.0, "successes")):
                if pos.any() and np.all(y[pos] == v):
                    raise ValueError(
                        f"the binomial response {name!r} is constant (all {what}): the fixed "
                        f"effects have no finite estimates (the intercept goes to "
                        f"{'-' if v == 0 else '+'}inf); lme4 stops with 'Response is constant' too")
            k = y * self.weights
            if np.any(np.abs(k - np.round(k)) > 1e-7 * np.maximum(1.0, k)):
                warnings.warn(f"non-integer number of successes in the binomial response {name!r} "
                              "(proportion times weights); give weights = number of trials",
                              UserWarning, stacklevel=3)
        else:
            if self.response_kind == "cbind":
                raise ValueError(f"the response {name!r} is cbind(successes, failures), a binomial "
                                 f"response; the {self._family_label} family needs counts")
            _check_counts(y, name)
            pos = self.weights > 0
            if pos.any() and np.all(y[pos] == 0):
                raise ValueError(f"the count response {name!r} is all zeros: the fixed effects "
                                 "have no finite estimates (the intercept goes to -inf); lme4 "
                                 "stops with 'Response is constant' too")

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
            self._chol_u = lp.make_chol(self.re_design, self.endog.shape[0])
        return self._chol_u

    @property
    def chol_x(self):
        if self._chol_x is None:
            self._chol_x = lp.make_chol(self.re_design, self.endog.shape[0], X=self.exog)
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

    @property
    def _link_label(self):
        return type(self.family.link).__name__.lower()

    def _range_hint(self):
        """Why PIRLS may fail with a link that does not keep the mean in the family's range."""
        link = self._link_label
        if isinstance(self.family, families.Binomial) and link in ("log", "identity"):
            return (f". With the {link} link the mean must stay in [0, 1] (not guaranteed for "
                    "every eta): the conditional modes may lie on that boundary, where PIRLS "
                    "cannot converge; the logit, probit or cloglog link avoids this")
        if isinstance(self.family, families.Poisson) and link == "identity":
            return (". With the identity link the mean must stay positive (not guaranteed for "
                    "every eta); the log link avoids this")
        return ""

    def _start_mu(self):
        """glm's ``mustart``: the response moved off the boundary of the mean's range."""
        y, w = self.endog, self.weights
        if isinstance(self.family, families.Binomial):
            return (w * y + 0.5) / (w + 1.0)
        return y + 0.1

    def _start_beta(self):
        """Fixed effects whose ``X beta + offset`` is closest to ``g(mustart)`` (weighted LS),
        or None when that is not finite."""
        p = self.k_fe
        if not p:
            return np.zeros(0)
        with np.errstate(all="ignore"):
            eta0 = np.asarray(self.family.link(self._start_mu()), dtype=float) - self.offset
        sw = np.sqrt(np.where(self.weights > 0, self.weights, 0.0))
        if not np.all(np.isfinite(eta0[sw > 0])):
            return None
        eta0 = np.where(sw > 0, eta0, 0.0)
        beta = np.linalg.lstsq(self.exog * sw[:, None], eta0 * sw, rcond=None)[0]
        return beta if np.all(np.isfinite(beta)) else None

    # -- fit
    def fit(self, nagq=1, start_params=None, maxiter=500, tol=1e-8, stage1=False, disp=False,
            **kwargs):
        """Maximum likelihood by the Laplace approximation or adaptive Gauss-Hermite quadrature.

        Parameters
        ----------
        nagq : int
            1 (default): Laplace approximation.  ``2`` to ``100`` (lme4's
            limit): adaptive Gauss-Hermite quadrature with ``nagq`` points per
            random effect (a single grouping factor with at most 3 random
            effects per level; the product grid has ``nagq**q`` nodes).  A
            whole number; ``2.5`` is an error.
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
        disp : bool
            Print what the optimizer did (log-likelihood, phases tried).
        **kwargs
            Any other keyword argument (lme4's ``nAGQ=``, statsmodels'
            ``method=``) raises ``TypeError`` naming it and the spelling
            that works here.

        Returns
        -------
        GLMMResults

        Raises
        ------
        TypeError
            For a keyword argument the fit does not read.
        ValueError
            For ``nagq`` outside ``1 .. 100`` or not a whole number, and
            ``start_params`` of the wrong length or not finite.
        """
        reject_unknown(kwargs, "fit()", accepted=_FIT_ARGS, hints=_FIT_HINTS)
        lp.check_positive(maxiter=maxiter, integer=True)
        lp.check_positive(tol=tol)
        if nagq == 0:
            raise ValueError("nagq must be at least 1: nagq=1 is the Laplace approximation "
                             "(lme4's nAGQ = 0, beta estimated inside PIRLS, is only the first "
                             "stage of the fit here: fit(stage1=True) runs it before the "
                             "Laplace fit)")
        nagq = lp.check_nagq(nagq)
        des = self.re_design
        lp.check_agq(des, nagq)
        dense_rows = des.nre - des.blocks[0].nre + self.k_fe + 1
        with blas_threads(dense_rows):
            res = self._fit(nagq, start_params, maxiter, tol, stage1)
        if disp:
            print(f"log-likelihood {res.llf:.6f} ({'Laplace' if nagq == 1 else f'AGQ, {nagq} nodes'}): "
                  f"{res.optim.message} (tried {res.optim.tried})")
        return res

    def _fit(self, nagq, start_params, maxiter, tol, stage1, em_steps=2):
        des = self.re_design
        nt, p, ke = des.ntheta, self.k_fe, self.k_extra
        tried = []
        self._u_warm = None
        self._last = None
        # ---- stage 1: beta inside PIRLS
        if start_params is not None:
            sp = np.asarray(start_params, dtype=float).ravel()
            if sp.size != nt + p + ke:
                raise ValueError(f"start_params needs {nt + p + ke} values (theta {nt}: "
                                 f"{des.theta_names() if hasattr(des, 'theta_names') else ''}"
                                 f", beta {p}: {list(self.exog_names)}"
                                 f"{', log alpha 1' if ke else ''}); got {sp.size}")
            if not np.all(np.isfinite(sp)):
                raise ValueError(f"start_params has non-finite values: {sp.tolist()}")
            if np.any(sp[:nt] < des.lower):
                raise ValueError("start_params: theta must be >= its lower bounds "
                                 f"{des.lower.tolist()} (standard deviations are >= 0); got "
                                 f"{sp[:nt].tolist()}")
            theta0, beta0, extra0 = self._split(sp)
            self._set_extra(extra0)
            _, m1 = self._stage1(theta0, beta0)
        else:
            theta0 = des.theta_start.copy()
            extra0 = self._start_extra(None)
            self._set_extra(extra0)
            # beta from the GLM-style start (eta = g(y adjusted away from the boundary)) as glm
            # and lme4 start; beta = 0 would put eta = 0 where the sqrt or identity link has
            # mu = 0, and far from the data for large counts
            fails = []
            for what, b0 in (("the GLM-style start g(mu0)", self._start_beta()),
                             ("beta = 0", None)):
                _, m1 = self._stage1(theta0, b0)
                if m1.converged:
                    break
                fails.append(f"from {what}: {m1.message}")
            else:
                raise lp.PIRLSError(
                    f"PIRLS failed at the starting values (theta = {np.round(theta0, 4).tolist()}, "
                    f"beta updated inside PIRLS, u from 0) of the {self._family_label} model "
                    f"({self._link_label} link): " + "; ".join(fails) + self._range_hint())
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
            raise lp.PIRLSError(f"PIRLS failed at the estimates: {modes.message}"
                                + self._range_hint())
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
        self._warn_separation(beta)
        self._warn_link_not_monotone(modes.eta)
        return MixedResultsWrapper(res)

    def _warn_separation(self, beta):
        """Warn when the fixed effects run off to infinity: (quasi-)separated binary data, or
        count data that are all zero where a fixed-effects direction points.

        Checked only when the fixed part of the linear predictor is large (``|X beta| > 10``,
        as such fits end up: the optimizer stops once ``exp(-|eta|)`` is negligible); the
        linear program (:func:`mlmext.laplace.separation_direction`) then decides.
        """
        if not self.k_fe:
            return
        link = type(self.family.link).__name__
        binomial = isinstance(self.family, families.Binomial)
        if not ((binomial and link in ("Logit", "Probit", "CLogLog", "LogLog", "Cauchy"))
                or (not binomial and link == "Log")):
            return
        X, beta = self.exog, np.asarray(beta, dtype=float)
        if not np.max(np.abs(X @ beta)) > 10.0:
            return
        pw, y = self.weights, self.endog
        if binomial:         # successes want x'd >= 0, failures x'd <= 0
            k = pw * y
            G, C = np.vstack([X[(k > 0) & (pw > 0)], -X[(pw - k > 0) & (pw > 0)]]), None
        else:                # zero counts want x'd <= 0; positive counts x'd = 0
            G = -X[(y == 0) & (pw > 0)]
            Xp = X[(y > 0) & (pw > 0)]
            C = np.vstack([Xp, -Xp])
        d = lp.separation_direction(G, C)
        if d is None:
            return
        names = list(self.exog_names)
        cols = [n for n, v in zip(names, d) if v != 0]
        big = max(cols, key=lambda n: abs(beta[names.index(n)]))
        what = ("a combination of them predicts the successes and failures perfectly "
                "((quasi-)complete separation)") if binomial else \
            "the counts are all zero wherever a combination of them is not zero"
        msg = (f"the fixed effects {cols} have no finite estimates: {what}, so the likelihood "
               f"keeps increasing as they grow (the fit stopped at {big} = "
               f"{beta[names.index(big)]:.4g}; their standard errors are meaningless). ")
        msg += ("Fitted probabilities numerically 0 or 1 occurred (R's glm warns so; lme4 "
                "does not check). " if binomial else "Fitted means numerically 0 occurred. ")
        msg += "Remove or merge the columns (factor levels) involved, or use a penalized fit."
        warnings.warn(msg, PerfectSeparationWarning, stacklevel=4)

    def _warn_link_not_monotone(self, eta):
        """Warn when the mean is not monotone in eta over the fitted linear predictors."""
        if isinstance(self, NegativeBinomialMixedModel):
            return
        with np.errstate(all="ignore"):
            d = np.asarray(self.family.link.inverse_deriv(np.asarray(eta, dtype=float)))
        neg = int(np.sum(d < 0))
        if neg and np.any(d > 0):
            warnings.warn(
                f"{neg} of {d.size} observations have a linear predictor where the "
                f"{self._link_label} link's mean decreases in eta (eta < 0 for the sqrt link, "
                "whose mean is eta^2): the conditional modes may be one of several local "
                "maxima and the Laplace log-likelihood depends on which (lme4 can end at "
                "another); a log link avoids this", UserWarning, stacklevel=4)

    def _cov_rx(self, theta, modes, lams):
        """lme4's RX-based covariance: (X' W X - ...)^-1 from the joint PIRLS system at the modes."""
        d1, w = self.cond.derivatives(modes.eta)
        lin = modes.eta - self.offset
        z = lin.copy()
        pos = w > 0
        z[pos] += d1[pos] / w[pos]
        ch = self.chol_x
        ch.reweight(np.column_stack([self.exog, z]), w)
        try:
            ch.update(lams)
        except np.linalg.LinAlgError:
            # z in the span of [Z Lambda, X] (an exact fit): the covariance does not depend on
            # the response column, any column outside the span gives the factor
            e = np.random.default_rng(0).standard_normal(z.shape[0])
            ch.reweight(np.column_stack([self.exog, e]), w)
            try:
                ch.update(lams)
            except np.linalg.LinAlgError:
                # X' W X singular: the weights vanish (fitted probabilities 0 or 1, means 0),
                # as in separated data; no standard errors (the separation check warns)
                return np.full((self.k_fe, self.k_fe), np.nan)
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


class _NBFamily(families.NegativeBinomial):
    """statsmodels' NB2 family (log link) as the family of a :class:`NegativeBinomialMixedModel`.

    Its own class so that a model rebuilt from a fitted one (which passes the old model's
    ``family`` back) is told apart from a user's ``family=`` argument, which glmer_nb rejects.
    """

    def __init__(self, alpha=1.0):
        super().__init__(link=families.links.Log(), alpha=alpha)


# messages name families by their class name: this one is statsmodels' NegativeBinomial (the
# qualified name stays, so instances pickle)
_NBFamily.__name__ = "NegativeBinomial"


class NegativeBinomialMixedModel(GeneralizedLinearMixedModel):
    """Negative binomial (NB2, log link) mixed model; alpha estimated with theta and beta.

    Usually created with :func:`mlmext.formula.api.glmer_nb`.  ``Var(y | u) =
    mu + alpha mu^2`` (statsmodels' ``alpha``; lme4/MASS's ``theta`` is
    ``1 / alpha``).
    """

    _api_name = "glmer_nb"
    _init_hints = {
        **{k: v for k, v in GeneralizedLinearMixedModel._init_hints.items() if k != "link"},
        "family": "glmer_nb's family is always the negative binomial (NB2, log link) with "
                  "alpha estimated with the other parameters: remove family=; for binomial or "
                  "Poisson models use glmer(..., family=...)",
    }

    def __init__(self, endog, exog, re_design, weights=None, offset=None, link=None,
                 information="expected", **kwargs):
        family = kwargs.pop("family", None)
        if family is not None and not isinstance(family, _NBFamily):
            # (a model rebuilt from a fitted one passes its own family back: accepted)
            reject_unknown({"family": family}, "glmer_nb()", hints=self._init_hints)
        if link is not None and not (type(link).__name__ == "Log" or
                                     (isinstance(link, str) and link.lower() == "log")):
            raise NotImplementedError(f"glmer_nb supports the log link only (got link={link!r})")
        if information not in ("expected", "observed"):
            raise ValueError("information must be 'expected' (lme4's Laplace) or 'observed' "
                             "(glmmTMB's)")
        self.link_name = "log"
        self.information = information
        super().__init__(endog, exog, re_design, family=_NBFamily(), weights=weights,
                         offset=offset, **kwargs)
        self._init_keys = [k for k in self._init_keys if k != "family"] + ["information"]

    _family_label = "negative binomial"

    def _resolve_family(self, family):
        return family

    def _set_family(self, family):
        pass

    @property
    def family(self):
        """statsmodels' ``NegativeBinomial`` family (log link) at the current alpha.

        Read-only: ``alpha`` is estimated (results: ``.alpha``).
        """
        alpha = getattr(getattr(self, "cond", None), "alpha", 1.0)
        return _NBFamily(alpha=alpha)

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
        """The model's statsmodels family: Binomial or Poisson, for ``glmer_nb`` fits
        ``NegativeBinomial`` with the estimated ``alpha``."""
        if isinstance(self.model, NegativeBinomialMixedModel):
            return _NBFamily(alpha=self.alpha)
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

    def _simulate_response(self, eta, rng):
        """Responses drawn given linear predictors ``eta`` (n, nsim), as lme4's ``simulate``.

        Binomial: proportions of ``weights`` trials (integer trials needed); Poisson and the
        negative binomial (gamma-Poisson with this fit's alpha) ignore prior weights with a
        warning, as lme4 does.
        """
        model = self.model
        w = np.asarray(model.weights, dtype=float)
        if isinstance(model.family, families.Binomial):
            mu = np.clip(model.family.link.inverse(eta), 0.0, 1.0)
            ntr = np.round(w).astype(np.int64)
            if np.any(np.abs(w - ntr) > 1e-8):
                raise NotImplementedError("simulating a binomial response needs integer trials "
                                          "(weights)")
            succ = rng.binomial(ntr[:, None], mu).astype(float)
            return np.divide(succ, ntr[:, None], out=np.zeros_like(succ), where=ntr[:, None] > 0)
        if np.any(w != 1.0):
            warnings.warn("ignoring prior weights when simulating counts (as lme4)", UserWarning,
                          stacklevel=4)
        if isinstance(model, NegativeBinomialMixedModel):
            mu = np.exp(eta)
            a = float(self.alpha)
            return rng.poisson(rng.gamma(1.0 / a, a * mu)).astype(float)
        return rng.poisson(model.family.link.inverse(eta)).astype(float)

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
