"""Families with a dispersion: Gamma and inverse Gaussian, the scale estimated with theta and beta.

:class:`ScaleConditional` is ``y | eta`` for statsmodels' ``Gamma`` and ``InverseGaussian``
families with their links (log and the power links: inverse, inverse squared, identity),
``Var(y | u) = phi V(mu)`` with ``V(mu) = mu^2`` (Gamma) or ``mu^3`` (inverse Gaussian) and
the dispersion ``phi`` (statsmodels' ``scale``; the Gamma shape is ``1 / phi``) estimated
jointly, its own parameter being ``log phi``, as the negative binomial's ``log alpha``.

The Laplace approximation is glmmTMB's: the determinant uses the observed information
``-d^2 l / d eta^2`` (the exact Hessian of the joint log-likelihood in the random effects),
which for non-canonical links differs from the expected one lme4 uses.  It needs the third
derivative of the log-density for the exact gradient, here from the link's third derivative.
"""
from __future__ import annotations

import numpy as np
from scipy import special
from statsmodels.genmod import families

from .. import laplace as lp

__all__ = ["ScaleConditional", "is_scale_family", "check_scale_family", "observed_ok"]

_LOG2PI = float(np.log(2.0 * np.pi))


def is_scale_family(family):
    """True for the families handled here (statsmodels' Gamma and InverseGaussian)."""
    return isinstance(family, (families.Gamma, families.InverseGaussian))


def _link_kind(link):
    """``("log", None)`` or ``("power", p)`` for ``mu = eta^(1/p)``; None for other links."""
    if isinstance(link, families.links.Log):
        return "log", None
    if isinstance(link, families.links.Power):
        return "power", float(link.power)
    return None


def observed_ok(family):
    """Whether the observed information ``-l''`` is positive for every ``y > 0`` and mean.

    Gamma with the log or inverse link (``y / (phi mu)``, ``mu^2 / phi``); inverse Gaussian
    with ``1/mu^2`` (canonical) or the inverse link (``y / phi``).  The identity links (and
    the inverse Gaussian's log link: ``(2 y - mu) / (phi mu^2)``) give negative values for
    small ``y``, which the PIRLS factorization (square roots of the weights) cannot take.
    """
    kind = _link_kind(family.link)
    gamma = isinstance(family, families.Gamma)
    if kind[0] == "log":
        return gamma
    return kind[1] in ((-1.0,) if gamma else (-1.0, -2.0))


def check_scale_family(family):
    """``NotImplementedError`` for a link whose derivatives are not available here."""
    if _link_kind(family.link) is None:
        raise NotImplementedError(
            f"the {type(family.link).__name__} link of the {type(family).__name__} family is "
            "not implemented for GLMMs; use the log link or a power link (inverse, inverse "
            "squared, identity)")


class ScaleConditional(lp.ConditionalModel):
    """``y | eta`` for a Gamma or inverse Gaussian family; parameter ``log phi``.

    Parameters
    ----------
    family : statsmodels.genmod.families.Family
        ``Gamma`` or ``InverseGaussian`` with a log or power link.
    endog : ndarray
        Positive responses.
    scale : float
        The dispersion ``phi``.
    information : {"observed", "expected"}
        Which information is the PIRLS weight and enters the Laplace determinant:
        ``"observed"`` (glmmTMB's exact Laplace; with it PIRLS is Newton's method) or
        ``"expected"`` (the GLM working weights ``mu'^2 / (phi V)``, lme4's choice).

    Notes
    -----
    Gamma: ``log p = k log(k y / mu) - k y / mu - log y - lgamma(k)``, ``k = 1 / phi``.
    Inverse Gaussian: ``log p = -(y - mu)^2 / (2 phi y mu^2) - log(2 pi phi y^3) / 2``.
    Both have ``d log p / d mu = (y - mu) / (phi V(mu))``.
    """

    k_extra = 1
    vectorized_eta = True

    def __init__(self, family, endog, scale=1.0, information="observed"):
        if information not in ("observed", "expected"):
            raise ValueError("information must be 'observed' (glmmTMB's Laplace) or 'expected' "
                             "(the GLM working weights)")
        check_scale_family(family)
        self.family = family
        self.gamma = isinstance(family, families.Gamma)
        self.vpow = 2.0 if self.gamma else 3.0
        self.kind, self.power = _link_kind(family.link)
        self.y = np.asarray(endog, dtype=float)
        self.logy = np.log(self.y)
        self.information = information
        #: the observed information as w: PIRLS is Newton's method and h = w
        self.canonical = information == "observed"
        self.loglik_scale = float(np.sum(np.abs(self.logy))) + self.y.size
        self.set_scale(scale)

    # -- the parameter
    def set_scale(self, scale):
        self.scale = float(scale)
        self.k = 1.0 / self.scale
        if self.gamma:
            k = self.k
            # the terms that do not involve mu: k log k + (k - 1) log y - lgamma(k)
            self._const = k * np.log(k) + (k - 1.0) * self.logy - special.gammaln(k)
        else:
            self._const = -0.5 * (_LOG2PI + np.log(self.scale) + 3.0 * self.logy)

    def set_params(self, extra):
        self.set_scale(float(np.exp(extra[0])))

    def get_params(self):
        return np.array([np.log(self.scale)])

    # -- the link and the variance
    def _link_derivs(self, eta):
        """``(mu, mu', mu'', mu''')`` in eta; NaN where the mean is not positive."""
        eta = np.asarray(eta, dtype=float)
        with np.errstate(all="ignore"):
            if self.kind == "log":
                mu = np.exp(eta)
                return mu, mu, mu, mu
            r = 1.0 / self.power
            pos = eta > 0
            e = np.where(pos, eta, np.nan)
            mu = 1.0 / e if r == -1.0 else e if r == 1.0 else e ** r
            inv = 1.0 / e                            # one power, then divisions (cheaper)
            d = r * mu * inv
            d2 = (r - 1.0) * d * inv
            return mu, d, d2, (r - 2.0) * d2 * inv

    def _a_terms(self, mu):
        """``A = d l / d mu`` and its first two derivatives in mu (times phi: ``/ phi`` later)."""
        k, y = self.vpow, self.y
        V = mu ** k
        V1 = k * mu ** (k - 1.0)
        V2 = k * (k - 1.0) * mu ** (k - 2.0)
        r = y - mu
        A = r / V
        N = -V - r * V1
        A1 = N / (V * V)
        A2 = (-r * V2 * V - 2.0 * N * V1) / V ** 3
        return A, A1, A2, V

    # -- the protocol
    def loglik_obs(self, eta):
        mu = self._link_derivs(eta)[0]
        with np.errstate(all="ignore"):
            if self.gamma:
                ll = self._const + self.k * (-np.log(mu) - self.y / mu)
            else:
                r = self.y - mu
                ll = self._const - self.k * r * r / (2.0 * self.y * mu * mu)
        return np.where(mu > 0, ll, -np.inf)

    def _derivs(self, eta, third=False):
        mu, d, d2, d3 = self._link_derivs(eta)
        with np.errstate(all="ignore"):
            A, A1, A2, V = self._a_terms(mu)
            k = self.k
            d1 = k * A * d
            h = -k * (A1 * d * d + A * d2)
            out = [mu, d, d2, V, d1, h]
            if third:
                out.append(-k * (A2 * d ** 3 + 3.0 * A1 * d * d2 + A * d3))
        return out

    def derivatives(self, eta):
        mu, d, d2, V, d1, h = self._derivs(eta)
        if self.canonical:
            return d1, h
        return d1, self.k * d * d / V

    def loglik_derivs(self, eta):
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    def hessian_terms(self, eta):
        mu, d, d2, V, d1, h, dh = self._derivs(eta, third=True)
        if self.canonical:
            return h, dh
        with np.errstate(all="ignore"):
            dw = self.k * (2.0 * d * d2 / V - d ** 3 * self.vpow / (mu * V))
        return h, dw

    def param_loglik_derivatives(self, eta):
        """``d loglik_i / d log phi``, (n, 1) (or (K, n, 1) for 2-D eta)."""
        mu = self._link_derivs(eta)[0]
        k, y = self.k, self.y
        with np.errstate(all="ignore"):
            if self.gamma:
                # l = k (log k + log y - log mu - y / mu + 1) - k - log y - lgamma(k) + ...:
                # d / d log phi = -k d / dk
                dl = -k * (np.log(k) + 1.0 + self.logy - np.log(mu) - y / mu - special.digamma(k))
            else:
                r = y - mu
                dl = k * r * r / (2.0 * y * mu * mu) - 0.5
        return dl[..., None]

    def param_derivatives(self, eta):
        """Derivatives of loglik, d1 and w in ``log phi`` (d1 and w are proportional to 1/phi)."""
        d1, w = self.derivatives(eta)
        return self.param_loglik_derivatives(eta), -d1[:, None], -w[:, None]

    def loglike_saturated(self):
        """Sum of the log-likelihood at ``mu = y`` (at this phi)."""
        if self.gamma:
            return float(np.sum(self._const + self.k * (-self.logy - 1.0)))
        return float(np.sum(self._const))

    def mean(self, eta):
        return self.family.link.inverse(eta)

    def pearson_resid(self, eta):
        mu = self._link_derivs(eta)[0]
        return (self.y - mu) / np.sqrt(mu ** self.vpow)


# ============================================================================ model helpers
def choose_information(family, information):
    """The information of a Gamma / inverse Gaussian model: ``"observed"`` where it is valid."""
    if information is None:
        return "observed" if observed_ok(family) else "expected"
    if information not in ("observed", "expected"):
        raise ValueError("information must be 'observed' (glmmTMB's exact Laplace) or "
                         f"'expected' (the GLM working weights); got {information!r}")
    if information == "observed" and not observed_ok(family):
        raise NotImplementedError(
            f"information='observed' with the {type(family.link).__name__} link of the "
            f"{type(family).__name__} family: the observed information of single observations "
            "can be negative there (small responses), which the PIRLS factorization does not "
            "take; use information='expected' (the default for this link) or the log / "
            "canonical link")
    return information


def check_response(model, y, name):
    """Positive responses and unit prior weights (``ValueError`` / ``NotImplementedError``)."""
    label = model._family_label
    if model.response_kind == "cbind":
        raise ValueError(f"the response {name!r} is cbind(successes, failures), a binomial "
                         f"response; the {label} family needs positive numbers")
    if np.any(y <= 0):
        bad = int(np.sum(y <= 0))
        raise ValueError(f"the {label} response {name!r} must be positive; {bad} value"
                         f"{'s are' if bad > 1 else ' is'} <= 0 (min {np.min(y):g})")
    if np.any(model.weights != 1.0):
        raise NotImplementedError(f"prior weights with the {label} family are not implemented "
                                  "(R's glm and glmmTMB read them differently: dispersion "
                                  "phi / w or log-likelihood weights); fit without weights=")


def start_log_scale(model, modes):
    """log phi: the moment estimate of y alone, then the Pearson estimate at the first modes."""
    y = model.endog
    vpow = 2.0 if isinstance(model.family, families.Gamma) else 3.0
    if modes is None:
        m = float(np.mean(y))
        phi = float(np.var(y)) / m ** vpow
    else:
        mu = model.family.link.inverse(modes.eta)
        with np.errstate(all="ignore"):
            phi = float(np.mean((y - mu) ** 2 / mu ** vpow))
    if not np.isfinite(phi) or phi <= 0:
        phi = 1.0
    return np.array([np.log(min(max(phi, 1e-6), 1e6))])
