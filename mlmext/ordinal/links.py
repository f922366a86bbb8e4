"""Inverse links of cumulative link models and category probabilities without cancellation.

Probabilities of a category are differences ``F(u) - F(l)`` of the distribution function at
``u = theta_y - eta`` and ``l = theta_{y-1} - eta``.  They are computed as
``F(u) (1 - F(l)) - F(l) (1 - F(u))``, which is the lower-tail difference below the median of
``F`` and the upper-tail difference ``(1 - F(l)) - (1 - F(u))`` above it, so there is no
cancellation for large ``|eta|`` (and in logs where even that underflows).
"""
from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["LINKS", "get_link", "category_probabilities"]

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


class _CumulativeLink:
    """Inverse link ``F`` of a cumulative link model, evaluated in logs.

    Methods take arrays that may hold ``-inf`` / ``inf`` (the outer
    thresholds).  ``dlogpdf`` is ``f'/f``, ``d2pdf`` is ``f''/f`` and ``d3pdf``
    is ``f'''/f`` (for the exact Hessian of the Laplace log-likelihood).
    """

    name = ""
    median = 0.0
    variance = np.inf         # of the distribution F (for the attenuation of starting values)

    def logcdf(self, x):
        raise NotImplementedError

    def logsf(self, x):
        raise NotImplementedError

    def logpdf(self, x):
        raise NotImplementedError

    def dlogpdf(self, x):
        raise NotImplementedError

    def d2pdf(self, x):
        raise NotImplementedError

    def d3pdf(self, x):
        raise NotImplementedError

    def cdf(self, x):
        return np.exp(self.logcdf(x))

    def pdf(self, x):
        return np.exp(self.logpdf(x))

    def sf(self, x):
        return np.exp(self.logsf(x))

    def ppf(self, p):
        raise NotImplementedError

    def __repr__(self):
        return f"<cumulative link {self.name!r}>"


class _Logit(_CumulativeLink):
    name = "logit"
    variance = np.pi ** 2 / 3.0

    def logcdf(self, x):
        return special.log_expit(x)

    def logsf(self, x):
        return special.log_expit(-x)

    def logpdf(self, x):
        return special.log_expit(x) + special.log_expit(-x)

    def dlogpdf(self, x):
        return -np.tanh(0.5 * x)

    def d2pdf(self, x):
        t = np.tanh(0.5 * x)
        return 1.5 * t * t - 0.5

    def d3pdf(self, x):
        t = np.tanh(0.5 * x)
        return t * (2.0 - 3.0 * t * t)

    def cdf(self, x):
        return special.expit(x)

    def sf(self, x):
        return special.expit(-x)

    def pdf(self, x):
        return special.expit(x) * special.expit(-x)

    def ppf(self, p):
        return special.logit(p)


class _Probit(_CumulativeLink):
    name = "probit"
    variance = 1.0

    def logcdf(self, x):
        return special.log_ndtr(x)

    def logsf(self, x):
        return special.log_ndtr(-x)

    def logpdf(self, x):
        return -0.5 * x * x - _LOG_SQRT_2PI

    def dlogpdf(self, x):
        return -x

    def d2pdf(self, x):
        return x * x - 1.0

    def d3pdf(self, x):
        return x * (3.0 - x * x)

    def cdf(self, x):
        return special.ndtr(x)

    def sf(self, x):
        return special.ndtr(-x)

    def pdf(self, x):
        return np.exp(-0.5 * x * x) * (1.0 / np.sqrt(2.0 * np.pi))

    def ppf(self, p):
        return special.ndtri(p)


class _CLogLog(_CumulativeLink):
    """``F(x) = 1 - exp(-exp(x))`` (Gumbel distribution of the minimum)."""

    name = "cloglog"
    median = float(np.log(np.log(2.0)))
    variance = np.pi ** 2 / 6.0

    def logcdf(self, x):
        return np.log(-np.expm1(-np.exp(x)))

    def logsf(self, x):
        return -np.exp(x)

    def logpdf(self, x):
        return x - np.exp(x)

    def dlogpdf(self, x):
        return 1.0 - np.exp(x)

    def d2pdf(self, x):
        e = np.exp(x)
        return (1.0 - e) ** 2 - e

    def d3pdf(self, x):
        e = np.exp(x)
        return (1.0 - e) ** 3 - 3.0 * e * (1.0 - e) - e

    def ppf(self, p):
        return np.log(-np.log1p(-p))

    def cdf(self, x):
        return -np.expm1(-np.exp(x))

    def sf(self, x):
        return np.exp(-np.exp(x))


class _LogLog(_CumulativeLink):
    """``F(x) = exp(-exp(-x))`` (Gumbel distribution of the maximum)."""

    name = "loglog"
    median = float(-np.log(np.log(2.0)))
    variance = np.pi ** 2 / 6.0

    def logcdf(self, x):
        return -np.exp(-x)

    def logsf(self, x):
        return np.log(-np.expm1(-np.exp(-x)))

    def logpdf(self, x):
        return -x - np.exp(-x)

    def dlogpdf(self, x):
        return np.exp(-x) - 1.0

    def d2pdf(self, x):
        e = np.exp(-x)
        return (e - 1.0) ** 2 - e

    def d3pdf(self, x):
        e = np.exp(-x)
        return (e - 1.0) ** 3 - 3.0 * e * (e - 1.0) + e

    def ppf(self, p):
        return -np.log(-np.log(p))

    def cdf(self, x):
        return np.exp(-np.exp(-x))

    def sf(self, x):
        return -np.expm1(-np.exp(-x))


class _Cauchit(_CumulativeLink):
    """Standard Cauchy distribution function; its log-density is not concave."""

    name = "cauchit"

    def logcdf(self, x):
        return np.log(np.arctan2(1.0, -x) / np.pi)

    def logsf(self, x):
        return np.log(np.arctan2(1.0, x) / np.pi)

    def logpdf(self, x):
        return -np.log(np.pi) - np.log1p(x * x)

    def dlogpdf(self, x):
        return -2.0 * x / (1.0 + x * x)

    def d2pdf(self, x):
        x2 = x * x
        return (6.0 * x2 - 2.0) / (1.0 + x2) ** 2

    def d3pdf(self, x):
        x2 = x * x
        return 24.0 * x * (1.0 - x2) / (1.0 + x2) ** 3

    def cdf(self, x):
        return np.arctan2(1.0, -x) / np.pi

    def sf(self, x):
        return np.arctan2(1.0, x) / np.pi

    def pdf(self, x):
        return 1.0 / (np.pi * (1.0 + x * x))

    def ppf(self, p):
        return np.tan(np.pi * (p - 0.5))


#: The available inverse links by name.
LINKS = {c.name: c() for c in (_Logit, _Probit, _CLogLog, _LogLog, _Cauchit)}


def get_link(link):
    """The link object for a name (``"logit"``, ``"probit"``, ``"cloglog"``, ``"loglog"``, ``"cauchit"``)."""
    if isinstance(link, _CumulativeLink):
        return link
    try:
        return LINKS[str(link).lower()]
    except KeyError:
        raise ValueError(f"unknown link {link!r}; use one of {sorted(LINKS)}") from None


def _interval_logprob(link, u, lo):
    """``log(F(u) - F(lo))`` without cancellation (lower or upper tail by position)."""
    upper = (u + lo) > 2.0 * link.median
    lf_u, lf_l = link.logcdf(u), link.logcdf(lo)
    ls_u, ls_l = link.logsf(u), link.logsf(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = lf_u + np.log(-np.expm1(lf_l - lf_u))
        up = ls_l + np.log(-np.expm1(ls_u - ls_l))
    return np.where(upper, up, low)


def category_probabilities(link, thresholds, eta):
    """(n, K) probabilities ``F(theta_j - eta) - F(theta_{j-1} - eta)``, computed in the better tail."""
    link = get_link(link)
    eta = np.asarray(eta, dtype=float)
    full = np.concatenate([[-np.inf], np.asarray(thresholds, dtype=float), [np.inf]])
    u = full[None, 1:] - eta[:, None]
    lo = full[None, :-1] - eta[:, None]
    with np.errstate(all="ignore"):
        P = np.exp(_interval_logprob(link, u, lo))
    return P
