"""The beta mixed model for responses in (0, 1): glmmTMB's ``beta_family()``.

``y | u ~ Beta(mu phi, (1 - mu) phi)``, ``logit(mu) = eta``, precision ``phi`` estimated
jointly; ``Var(y | u) = mu (1 - mu) / (1 + phi)``.  :class:`BetaConditional` implements
:class:`mlmext.laplace.ConditionalModel`; :class:`BetaMixedModel` is what
``glmer(..., family="beta")`` (or ``family=mlmext.glmm.Beta()``) builds.
"""
from __future__ import annotations

import numpy as np
from scipy import special
from statsmodels.genmod import families

from .. import laplace as lp
from .model import GeneralizedLinearMixedModel
from .phifamily import PhiFamilyMixin, WorkingWeights, reject_weights

__all__ = ["Beta", "BetaConditional", "BetaMixedModel", "is_beta_family"]


def _trigamma(x):
    """``psi'(x) = zeta(2, x)`` (scipy's polygamma adds a Python layer around the same zeta)."""
    return special.zeta(2.0, x)


def _tetragamma(x):
    """``psi''(x) = -2 zeta(3, x)``."""
    return -2.0 * special.zeta(3.0, x)


class BetaConditional(lp.ConditionalModel):
    """Beta responses given eta (logit link), parameter ``log phi``.

    ``log p = lgamma(phi) - lgamma(a) - lgamma(b) + (a - 1) log y + (b - 1) log(1 - y)`` with
    ``a = mu phi``, ``b = (1 - mu) phi``.  In mu: ``dl/dmu = phi (y* - mu*)``,
    ``y* = logit(y)``, ``mu* = psi(a) - psi(b)``, and ``-d^2 l / dmu^2 = phi^2 T``,
    ``T = psi'(a) + psi'(b)`` (Ferrari and Cribari-Neto, 2004).

    Parameters
    ----------
    endog : ndarray
        Responses in the open interval (0, 1).
    phi : float
        The precision.
    information : {"observed", "expected"}
        ``w``: the observed information ``phi^2 T g'^2 - phi (y* - mu*) g''`` (glmmTMB's
        Laplace; negative for responses far in a tail) or the expected ``phi^2 T g'^2``
        (always positive), ``g' = mu (1 - mu)``.  Inside :meth:`working` ``w`` is the expected.
    """

    k_extra = 1
    vectorized_eta = True
    allow_negative_weights = True

    def __init__(self, endog, phi=1.0, information="observed"):
        if information not in ("observed", "expected"):
            raise ValueError("information must be 'observed' (glmmTMB's Laplace) or 'expected'")
        self.y = np.asarray(endog, dtype=float)
        self.ly = np.log(self.y)
        self.l1y = np.log1p(-self.y)
        self.ystar = self.ly - self.l1y
        self.information = information
        self.loglik_scale = float(np.sum(np.abs(self.ly) + np.abs(self.l1y)))
        self.ww = WorkingWeights()
        self.set_phi(phi)

    @property
    def observed(self):
        return self.information == "observed" and not self.ww.on

    @property
    def canonical(self):
        """With the observed information as ``w`` PIRLS is Newton's method (``h = w``)."""
        return self.observed

    def working(self):
        """Context: the expected information as ``w`` (lme4's first stage, RX)."""
        return self.ww

    def set_phi(self, phi):
        self.phi = float(phi)
        self._lgphi = float(special.gammaln(self.phi))

    def set_params(self, extra):
        self.set_phi(float(np.exp(extra[0])))

    def get_params(self):
        return np.array([np.log(self.phi)])

    # -- pieces
    def _mu(self, eta):
        eta = np.asarray(eta, dtype=float)
        mu, nu = special.expit(eta), special.expit(-eta)        # nu = 1 - mu without cancellation
        return mu, nu, mu * nu

    def _terms(self, eta, order=2):
        """mu, g' = dmu/deta, g'', D = y* - mu*, T, and (order 3) ``psi''(a) - psi''(b)``."""
        mu, nu, g1 = self._mu(eta)
        phi = self.phi
        a, b = mu * phi, nu * phi
        D = self.ystar - special.digamma(a) + special.digamma(b)
        T = _trigamma(a) + _trigamma(b)
        g2 = g1 * (nu - mu)
        out = [mu, nu, g1, g2, a, b, D, T]
        if order >= 3:
            out.append(_tetragamma(a) - _tetragamma(b))
        return out

    # -- the protocol
    @np.errstate(all="ignore")
    def loglik_obs(self, eta):
        mu, nu, _ = self._mu(eta)
        a, b = mu * self.phi, nu * self.phi
        return (self._lgphi - special.gammaln(a) - special.gammaln(b)
                + (a - 1.0) * self.ly + (b - 1.0) * self.l1y)

    @np.errstate(all="ignore")
    def derivatives(self, eta):
        mu, nu, g1, g2, a, b, D, T = self._terms(eta)
        phi = self.phi
        d1 = phi * D * g1
        w = phi * phi * T * g1 * g1
        if self.observed:
            w = w - phi * D * g2
        return d1, w

    def loglik_derivs(self, eta):
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    @np.errstate(all="ignore")
    def hessian_terms(self, eta):
        mu, nu, g1, g2, a, b, D, T, P = self._terms(eta, 3)
        phi = self.phi
        g3 = g1 * ((nu - mu) ** 2 - 2.0 * g1)
        lmu, lmm, lmmm = phi * D, -phi * phi * T, -phi ** 3 * P      # d^k l / dmu^k
        h = -(lmm * g1 * g1 + lmu * g2)
        dh = -(lmmm * g1 ** 3 + 3.0 * lmm * g1 * g2 + lmu * g3)
        if self.observed:
            return h, dh
        # the expected information phi^2 T g'^2 and its derivative in eta
        return h, phi ** 3 * P * g1 ** 3 + 2.0 * phi * phi * T * g1 * g2

    @np.errstate(all="ignore")
    def param_loglik_derivatives(self, eta):
        """``d loglik_i / d log phi = phi psi(phi) + a (log y - psi(a)) + b (log(1-y) - psi(b))``."""
        mu, nu, _ = self._mu(eta)
        phi = self.phi
        a, b = mu * phi, nu * phi
        dl = phi * special.digamma(phi) + a * (self.ly - special.digamma(a)) \
            + b * (self.l1y - special.digamma(b))
        return dl[..., None]

    @np.errstate(all="ignore")
    def param_derivatives(self, eta):
        """Derivatives of loglik, d1 and w in ``log phi`` (``da = a``, ``db = b``)."""
        mu, nu, g1, g2, a, b, D, T, P = self._terms(eta, 3)
        phi = self.phi
        dl = self.param_loglik_derivatives(eta)[:, 0]
        dD = -a * _trigamma(a) + b * _trigamma(b)
        dT = a * _tetragamma(a) + b * _tetragamma(b)
        dd1 = phi * g1 * (D + dD)
        dw = phi * phi * g1 * g1 * (2.0 * T + dT)
        if self.observed:
            dw = dw - phi * g2 * (D + dD)
        return dl[:, None], dd1[:, None], dw[:, None]

    @np.errstate(all="ignore")
    def loglike_saturated(self):
        """Sum of the log-likelihood at ``mu = y`` (at this phi; not the maximum over mu)."""
        return float(np.sum(self.loglik_obs(special.logit(self.y))))

    def mean(self, eta):
        return special.expit(eta)

    def variance(self, mu):
        return mu * (1.0 - mu) / (1.0 + self.phi)

    def pearson_resid(self, eta):
        mu = special.expit(np.asarray(eta, dtype=float))
        return (self.y - mu) / np.sqrt(mu * (1.0 - mu) / (1.0 + self.phi))


class _BetaVariance(families.varfuncs.VarianceFunction):
    """``V(mu) = mu (1 - mu) / (1 + phi)``."""

    def __init__(self, phi=1.0):
        self.phi = float(phi)

    def __call__(self, mu):
        mu = np.asarray(mu, dtype=float)
        return mu * (1.0 - mu) / (1.0 + self.phi)

    def deriv(self, mu):
        return (1.0 - 2.0 * np.asarray(mu, dtype=float)) / (1.0 + self.phi)


class Beta(families.Family):
    """The beta family (logit link) for responses in (0, 1), glmmTMB's ``beta_family()``.

    For :func:`mlmext.formula.api.glmer`: ``family=Beta()`` or ``family="beta"``.  Only the
    link and the variance function are statsmodels'; the likelihood is
    :class:`BetaConditional`'s.  ``phi`` (the precision) is the estimate on results
    (``results.family``), 1 on the model.

    Parameters
    ----------
    link : statsmodels link, optional
        Only ``Logit()`` (the default) is implemented.
    phi : float
    """

    links = [families.links.Logit]
    safe_links = [families.links.Logit]

    def __init__(self, link=None, phi=1.0):
        if link is None:
            link = families.links.Logit()
        if isinstance(link, type):
            link = link()
        if type(link) is not families.links.Logit:       # (Probit, CDFLink subclass Logit)
            raise NotImplementedError(f"the {type(link).__name__} link of the beta family is "
                                      "not implemented; use the logit link (the default)")
        self.phi = float(phi)
        super().__init__(link, _BetaVariance(phi))

    def loglike_obs(self, endog, mu, var_weights=1.0, scale=1.0):
        return BetaConditional(endog, self.phi).loglik_obs(special.logit(mu)) * var_weights

    def resid_dev(self, *args, **kwargs):
        raise NotImplementedError("beta deviance residuals are not implemented; use Pearson "
                                  "residuals (results.resid_pearson)")


def is_beta_family(family):
    """True for :class:`Beta` (instance or class) and the name ``"beta"`` (any case)."""
    if isinstance(family, str):
        return family.strip().lower().replace("_", "").replace("()", "") in ("beta",
                                                                             "betafamily")
    return isinstance(family, Beta) or (isinstance(family, type) and issubclass(family, Beta))


class BetaMixedModel(PhiFamilyMixin, GeneralizedLinearMixedModel):
    """Beta mixed model (logit link) for responses in (0, 1), glmmTMB's ``beta_family()``.

    Usually created with ``mlmext.formula.api.glmer(..., family="beta")``.  The precision
    ``phi`` (glmmTMB's ``sigma()``) is estimated jointly with theta and beta; standard
    errors from the Hessian in all of them.

    Parameters
    ----------
    information : {"observed", "expected"}
        The information in the Laplace determinant: ``"observed"`` (default, glmmTMB's exact
        Laplace) or ``"expected"`` (``phi^2 T mu'^2``, always positive: for designs other
        than one scalar random-effects term when the observed one is negative somewhere).
    """

    _family_label = "beta"
    _negative_weights_hint = ("; information='expected' (the expected information, always "
                              "positive) fits any design")

    def __init__(self, endog, exog, re_design, family=None, weights=None, offset=None,
                 information="observed", **kwargs):
        if family is not None and not is_beta_family(family):
            raise ValueError(f"BetaMixedModel's family is the beta family; got {family!r}")
        if information not in ("observed", "expected"):
            raise ValueError("information must be 'observed' (glmmTMB's exact Laplace) or "
                             f"'expected' (the expected information); got {information!r}")
        self.information = information
        super().__init__(endog, exog, re_design, family=Beta(), weights=weights,
                         offset=offset, **kwargs)
        self._init_keys = self._init_keys + ["information"]
        reject_weights(self)

    def _resolve_family(self, family):
        return family if isinstance(family, Beta) else Beta()

    def _check_response_kind(self, info):
        if self.response_kind == "factor":
            name = str(info["parsed"].response) if "parsed" in info else "y"
            raise ValueError(f"the response {name!r} is categorical; the beta family needs "
                             "numbers in the open interval (0, 1)")

    def _check_response(self):
        y, name = self.endog, self._response_name()
        if self.response_kind == "cbind":
            raise ValueError(f"the response {name!r} is cbind(successes, failures), a binomial "
                             "response; the beta family needs proportions in (0, 1)")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {name!r} has non-finite values")
        bad = (y <= 0) | (y >= 1)
        if np.any(bad):
            n = len(y)
            raise ValueError(
                f"the beta response {name!r} must be in the open interval (0, 1); "
                f"{int(bad.sum())} value{'s are' if bad.sum() > 1 else ' is'} 0 or 1 or "
                f"outside (min {y.min():g}, max {y.max():g}). Squeeze it into (0, 1), e.g. "
                f"Smithson and Verkuilen's (y * (n - 1) + 0.5) / n with n = {n} observations, "
                "or model the zeros and ones separately")

    def _make_conditional(self):
        return BetaConditional(self.endog, information=self.information)

    def _start_mu(self):
        return self.endog.copy()

    def _start_extra(self, modes):
        """log phi from the moments: ``Var = mu (1 - mu) / (1 + phi)`` (at the first-stage
        modes once there are some, else of y alone)."""
        y = self.endog
        if modes is None:
            m = float(np.mean(y))
            phi = m * (1.0 - m) / float(np.var(y)) - 1.0
        else:
            mu = special.expit(modes.eta)
            phi = 1.0 / float(np.mean((y - mu) ** 2 / (mu * (1.0 - mu)))) - 1.0
        if not np.isfinite(phi):
            phi = 1.0
        return np.array([np.log(min(max(phi, 1e-2), 1e6))])

    def _simulate(self, mu, phi, rng):
        return rng.beta(mu * phi, (1.0 - mu) * phi)

    def _results_family(self, phi):
        return Beta(phi=phi)

    def _phi_note(self, phi):
        return (f"Beta precision phi = {phi:.5g} (Var = mu (1 - mu) / (1 + phi); glmmTMB's "
                f"beta_family sigma() = phi).")
