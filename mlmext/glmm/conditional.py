"""The distribution of the response given the linear predictor, for the GLMM engine.

:class:`GLMConditional` (binomial and Poisson families of statsmodels, any link) and
:class:`NegativeBinomialConditional` (NB2, log link, parameter log alpha) implement
:class:`mlmext.laplace.ConditionalModel`.
"""
from __future__ import annotations


import numpy as np
from scipy import special
from statsmodels.genmod import families

from .. import laplace as lp


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
        #: loglik_derivs takes a slice of the rows
        self.row_slices = self.kind == "binomial-logit"
        y, pw = self.y, self.pw
        # per-row constants: k = y and const = 0 are not stored as n-vectors for 0/1
        # responses with unit weights (each deviance holds its own copy: 8 MB each at 1M rows)
        if self.binomial:
            k = y if np.all(pw == 1.0) else pw * y
            self.k = k
            self.const = special.gammaln(pw + 1) - special.gammaln(k + 1) - special.gammaln(pw - k + 1)
        else:
            self.const = -pw * special.gammaln(y + 1)
        if not np.any(self.const):
            self.const = 0.0
        self.loglik_scale = float(np.sum(np.abs(self.const)))
        if self.kind == "poisson-log":
            # loglik_obs is relative to the saturated model: y log(mu / y) - (mu - y) with
            # delta = eta - log y is y (delta - expm1(delta)), of the size of the deviance, not
            # of y log y (2e10 for counts of 1e9, whose rounding would be the optimizer's noise)
            pos = y > 0
            self._logy = np.where(pos, np.log(np.where(pos, y, 1.0)), 0.0)
            self._pwy = pw * y
            self.loglik_const = float(np.sum(self.const + np.where(pos, self._pwy * (self._logy - 1.0), 0.0)))

    @property
    def nk(self):
        """Failures ``pw - k`` (binomial)."""
        return self.pw - self.k

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
            return self._poisson_rel(eta)
        mu = self._mu(eta)
        if self.binomial:
            ll = (self.const + np.where(self.k > 0, self.k * np.log(mu), 0.0)
                  + np.where(self.nk > 0, self.nk * np.log1p(-mu), 0.0))
        else:
            ll = self.const + self.pw * (np.where(self.y > 0, self.y * np.log(mu), 0.0) - mu)
        return np.where(self._invalid(eta) & (self.pw > 0), -np.inf, ll)

    def _poisson_rel(self, eta):
        """Poisson log link: the log-likelihood minus the saturated one, per observation."""
        d = eta - self._logy
        return np.where(self.y > 0, self._pwy * (d - np.expm1(d)), -self.pw * np.exp(eta))

    def loglik_derivs(self, eta, rows=None):
        """``(loglik_obs, d1, w)`` in one pass.  ``rows``: a slice, ``eta`` being those rows'
        (binomial logit only, :attr:`row_slices`: PIRLS evaluates large data in chunks)."""
        eta = np.asarray(eta, dtype=float)
        if self.kind == "binomial-logit":
            pw, k, const = self.pw, self.k, self.const
            if rows is not None:
                pw, k = pw[rows], k[rows]
                const = const if np.isscalar(const) else const[rows]
            # the same operations as the expressions in the comments, in place: fewer
            # n-sized temporaries alive at once (PIRLS's peak memory on large data)
            a = np.abs(eta)
            np.negative(a, out=a)
            np.exp(a, out=a)                                  # a = exp(-|eta|)
            inv = a + 1.0
            np.divide(1.0, inv, out=inv)                      # inv = 1 / (1 + a)
            ai = a * inv
            mu = np.where(eta >= 0, inv, ai)
            np.multiply(ai, inv, out=ai)                      # w / pw = a inv inv
            del inv
            w = np.multiply(pw, ai, out=ai)
            np.log1p(a, out=a)
            b = np.maximum(eta, 0.0)
            b += a                                            # max(eta, 0) + log1p(a)
            del a
            b *= pw
            ll = k * eta
            if not np.isscalar(const) or const != 0.0:
                ll = np.add(const, ll, out=ll)
            ll -= b                                           # const + k eta - pw (...)
            np.multiply(pw, mu, out=mu)
            np.subtract(k, mu, out=mu)                   # d1 = k - pw mu
            return ll, mu, w
        if self.kind == "poisson-log":
            pmu = self.pw * np.exp(eta)
            return self._poisson_rel(eta), self._pwy - pmu, pmu
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
            # w = pw mu (1 - mu), dw = w (1 - 2 mu) with the same operations in place: three
            # n-sized arrays alive at once, not five (the gradient's peak of memory)
            mu = special.expit(eta)
            w = self.pw * mu
            t = np.subtract(1.0, mu)
            w *= t
            np.multiply(2.0, mu, out=t)
            del mu
            np.subtract(1.0, t, out=t)
            return w, np.multiply(w, t, out=t)
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

    @property
    def weight_derivatives(self):
        """``eta -> (w, dw/deta, d2w/deta2)`` for a canonical link (the exact Laplace Hessian
        of :func:`mlmext.laplace.scalar_laplace_hessian`), None for other links."""
        return self._weight_derivatives if self.canonical else None

    def _weight_derivatives(self, eta):
        if self.kind == "poisson-log":
            w = self.pw * np.exp(eta)                 # every derivative of pw exp(eta)
            return w, w, w
        mu = special.expit(eta)
        v = mu * (1.0 - mu)
        w = self.pw * v                               # pw b''; b''' = b'' (1 - 2 mu),
        return w, w * (1.0 - 2.0 * mu), w * (1.0 - 6.0 * v)   # b'''' = b'' (1 - 6 mu (1 - mu))

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
