"""Cumulative link mixed models for ordinal responses (R's ``ordinal::clmm``).

The model for an ordinal response ``Y`` with categories ``1 < 2 < ... < K`` is

    P(Y <= j | b) = F(theta_j - x' beta - z' b),   j = 1, ..., K - 1,
    b ~ N(0, Sigma(theta_re)),

with ``F`` the inverse link (logistic, normal, complementary log-log, log-log
or Cauchy distribution function) and increasing thresholds
``theta_1 < ... < theta_{K-1}``.  The fixed part has no intercept: the
thresholds carry it.

This module supplies everything ordinal-specific:

* the inverse links with their log-densities and tails (:data:`LINKS`),
* threshold structures (flexible, equidistant, symmetric; increasing by
  construction in the internal parameterization),
* :class:`CumulativeLinkConditional`, the conditional distribution of ``y``
  given the linear predictor (the :class:`mlmext.laplace.ConditionalModel`
  protocol, including the optional third-order pieces for analytic
  gradients),
* a Newton fitter for the model without random effects (``clm``), used for
  starting values,
* :class:`OrdinalMixedModel` and :class:`OrdinalMixedResults`.

The random-effects integration (conditional modes, Laplace approximation,
adaptive Gauss-Hermite quadrature) is done by :mod:`mlmext.laplace` on the
shared random-effects design and factorization.

Probabilities of a category are differences ``F(u) - F(l)`` of the
distribution function at ``u = theta_y - eta`` and ``l = theta_{y-1} - eta``.
They are computed as ``F(u) (1 - F(l)) - F(l) (1 - F(u))``, which is the
lower-tail difference below the median of ``F`` and the upper-tail
difference ``(1 - F(l)) - (1 - F(u))`` above it, so there is no cancellation
for large ``|eta|`` (and in logs where even that underflows).

Fitting (:meth:`OrdinalMixedModel.fit`): starting values from the model
without random effects.  With a single scalar random-effects term (``clmm``'s
usual ``(1 | g)``) the Laplace log-likelihood is maximized by Newton's method
with its exact Hessian (:class:`_ScalarLaplace`, from the derivatives of the
interval probabilities up to the fourth order), which also gives the standard
errors; otherwise, and where Newton cannot go on (theta heading for 0), by a
bounded quasi-Newton method on (thresholds, fixed effects, theta) with the exact
gradient (:func:`mlmext.laplace.laplace_gradient`), started from the Hessian of
the joint log-likelihood with the modes profiled out.  Conditional modes are
warm-started from their first-order prediction.  AGQ fits start from the
Laplace optimum, with the exact AGQ gradient for a single scalar term
(:func:`mlmext.laplace.agq_loglik_gradient`).  Standard errors come from the
Hessian of the log-likelihood in ``clmm``'s parameters (forward differences of
the gradient where it is not exact).
"""
from __future__ import annotations

import math
import warnings
from math import comb, factorial

import numpy as np
import pandas as pd
from scipy import special
from scipy.linalg import lapack
from statsmodels.iolib.summary import Summary, summary_params
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from ..optimize import escape_bound
from .. import laplace as _laplace
from .._blas import blas_threads
from ..base import MixedModel, _drop_rank_deficient, _eval
from ..results import MixedResults, MixedResultsWrapper

__all__ = ["LINKS", "get_link", "Thresholds", "CumulativeLinkConditional", "category_probabilities",
           "fit_clm", "ordinal_response", "OrdinalMixedModel", "OrdinalMixedResults"]

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


# ============================================================================ links
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


# ============================================================================ thresholds
class Thresholds:
    """Threshold structure: ``theta = T alpha`` with ``alpha = g(psi)``, ``psi`` unconstrained.

    ``alpha`` are R's threshold parameters (``coef`` of ``clmm``); ``T`` is
    ordinal's ``tJac``.  The internal parameters ``psi`` make the thresholds
    increasing by construction (positive spacings are ``exp`` of a
    parameter).

    Parameters
    ----------
    kind : {"flexible", "equidistant", "symmetric"}
    levels : list of str
        The response categories in order (``K`` of them).
    """

    def __init__(self, kind, levels):
        kind = str(kind).lower()
        self.kind = kind
        self.levels = [str(v) for v in levels]
        K = len(self.levels)
        nt = K - 1
        self.n_thresholds = nt
        self.labels = [f"{a}|{b}" for a, b in zip(self.levels[:-1], self.levels[1:])]
        if kind == "flexible":
            T = np.eye(nt)
            names = list(self.labels)
        elif kind == "equidistant":
            if nt < 2:
                raise ValueError("equidistant thresholds need a response with 3 or more categories")
            T = np.column_stack([np.ones(nt), np.arange(nt, dtype=float)])
            names = ["threshold.1", "spacing"]
        elif kind == "symmetric":
            if nt < 2:
                raise ValueError("symmetric thresholds need a response with 3 or more categories")
            if nt % 2:          # odd: a central threshold and spacings out from it
                h = (nt - 1) // 2
                T = np.zeros((nt, h + 1))
                T[:, 0] = 1.0
                for k in range(1, h + 1):
                    T[h - k, k] = -1.0
                    T[h + k, k] = 1.0
                names = ["central"] + [f"spacing.{k}" for k in range(1, h + 1)]
            else:               # even: two central thresholds and spacings out from them
                h = nt // 2
                T = np.zeros((nt, h + 1))
                T[:h, 0] = 1.0
                T[h:, 1] = 1.0
                for k in range(1, h):
                    T[h - 1 - k, 1 + k] = -1.0
                    T[h + k, 1 + k] = 1.0
                names = ["central.1", "central.2"] + [f"spacing.{k}" for k in range(1, h)]
        else:
            raise ValueError(f"threshold must be 'flexible', 'equidistant' or 'symmetric', not {kind!r}")
        self.T = T
        self.names = names
        self.k = T.shape[1]
        self._tril = np.tril(np.ones((self.k, self.k)))
        # which alpha are built from exp() increments: (index, base index or -1)
        self._odd = nt % 2 == 1

    # alpha = g(psi) ----------------------------------------------------------------
    def alpha(self, psi):
        """R's threshold parameters from the internal ones."""
        psi = np.asarray(psi, dtype=float)
        if self.kind == "flexible":
            a = np.empty_like(psi)
            a[0] = psi[0]
            a[1:] = psi[0] + np.cumsum(np.exp(psi[1:]))
            return a
        if self.kind == "equidistant":
            return np.array([psi[0], np.exp(psi[1])])
        if self._odd:
            return np.concatenate([[psi[0]], np.cumsum(np.exp(psi[1:]))])
        return np.concatenate([[psi[0], psi[0] + np.exp(psi[1])], np.cumsum(np.exp(psi[2:]))])

    def jacobian(self, psi):
        """``d alpha / d psi`` (k, k)."""
        psi = np.asarray(psi, dtype=float)
        k = self.k
        e = np.exp(psi)
        if self.kind == "flexible":
            J = self._tril * e
            J[:, 0] = 1.0
            return J
        J = np.zeros((k, k))
        if self.kind == "equidistant":
            J[0, 0] = 1.0
            J[1, 1] = e[1]
        elif self._odd:
            J[0, 0] = 1.0
            for j in range(1, k):
                J[j:, j] = e[j]
        else:
            J[0, 0] = J[1, 0] = 1.0
            J[1, 1] = e[1]
            for j in range(2, k):
                J[j:, j] = e[j]
        return J

    def psi(self, alpha):
        """Internal parameters for R's threshold parameters (which must give increasing thresholds)."""
        a = np.asarray(alpha, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "flexible":
                out = np.concatenate([[a[0]], np.log(np.diff(a))])
            elif self.kind == "equidistant":
                out = np.array([a[0], np.log(a[1])])
            elif self._odd:
                out = np.concatenate([[a[0]], np.log(np.diff(np.concatenate([[0.0], a[1:]])))])
            else:
                out = np.concatenate([[a[0], np.log(a[1] - a[0])],
                                      np.log(np.diff(np.concatenate([[0.0], a[2:]])))])
        if not np.all(np.isfinite(out)):
            raise ValueError(f"threshold parameters {a} do not give increasing thresholds")
        return out

    def thresholds(self, alpha):
        return self.T @ np.asarray(alpha, dtype=float)

    def alpha_from_thresholds(self, th):
        """Least-squares ``alpha`` for given thresholds (exact for flexible ones)."""
        if self.kind == "flexible":
            return np.array(th, dtype=float)
        return np.linalg.lstsq(self.T, np.asarray(th, dtype=float), rcond=None)[0]


# ============================================================================ conditional model
class CumulativeLinkConditional:
    """Distribution of an ordinal ``y`` given the linear predictor ``eta`` (ConditionalModel protocol).

    ``log p(y_i | eta_i) = w_i log(F(theta_{y_i} - eta_i) - F(theta_{y_i - 1} - eta_i))``
    with ``theta_0 = -inf`` and ``theta_K = inf``; ``w_i`` are prior weights.

    Parameters
    ----------
    y : array_like of int
        Category codes ``0, ..., K - 1``.
    n_cat : int
        Number of categories ``K``.
    link : str or link object
    weights : array_like, optional
        Prior (frequency) weights, as in ``clmm``.
    thresholds : array_like, optional
        The ``K - 1`` thresholds; set later with :meth:`set_thresholds`.

    Notes
    -----
    With ``u = theta_y - eta`` and ``l = theta_{y-1} - eta`` the probability
    ``p = F(u) - F(l)`` is taken as ``(1 - F(l)) - (1 - F(u))`` when the
    interval lies above the median of ``F`` (large ``eta``), so it never
    suffers cancellation; where it underflows it is recomputed in logs.

    :meth:`derivatives` returns the observed information
    ``w = -d^2 log p / d eta^2``, which is what ``clmm``'s Laplace
    approximation uses; it is positive for the log-concave links (logit,
    probit, cloglog, loglog).  For the logit link ``d log p / d eta =
    F(u) + F(l) - 1`` and ``w = f(u) + f(l)`` exactly.  The cauchit density is
    not log-concave, so single observations can have ``w < 0``
    (:attr:`allow_negative_weights`).  The optional protocol methods
    :meth:`hessian_terms` and :meth:`param_derivatives` give the third-order
    pieces for analytic gradients; the model's own parameters (``k_extra``)
    are the ``K - 1`` thresholds.

    Results are cached for the last ``eta`` array passed (by identity), so
    callers must not modify an ``eta`` array in place between calls.
    """

    def __init__(self, y, n_cat, link="logit", weights=None, thresholds=None):
        y = np.asarray(y)
        self.y = y.astype(np.int64)
        self.n_cat = int(n_cat)
        if self.n_cat < 2:
            raise ValueError("an ordinal response needs at least two categories")
        self.link = get_link(link)
        n = self.y.shape[0]
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        if self.weights is not None and np.all(self.weights == 1.0):
            self.weights = None
        self.k_extra = self.n_cat - 1
        # ``w`` is the observed information already (what the engine's ``canonical`` flag
        # means: no separate Newton weights, ``hessian_terms()[0]`` is ``w``)
        self.canonical = True
        self.allow_negative_weights = self.link.name == "cauchit"
        # the methods take (nodes, n) arrays of eta too (AGQ evaluates all nodes in one call)
        self.vectorized_eta = True
        self.has_upper = self.y < self.n_cat - 1       # finite theta_y
        self.has_lower = self.y > 0                    # finite theta_{y-1}
        self._top = np.flatnonzero(~self.has_upper)    # u = +inf
        self._bottom = np.flatnonzero(~self.has_lower)  # l = -inf
        self._iu = np.minimum(self.y, self.n_cat - 2)
        self._il = np.maximum(self.y - 1, 0)
        k = self.n_cat - 1
        self._Eu = np.zeros((n, k))
        self._Eu[np.flatnonzero(self.has_upper), self._iu[self.has_upper]] = 1.0
        self._El = np.zeros((n, k))
        self._El[np.flatnonzero(self.has_lower), self._il[self.has_lower]] = 1.0
        self._n = n
        self._logit = self.link.name == "logit"
        self._median2 = 2.0 * self.link.median
        self._key = None
        self._cache = {"level": -1}
        self.thresholds = None
        if thresholds is not None:
            self.set_thresholds(thresholds)

    def set_thresholds(self, thresholds):
        """Set the ``K - 1`` thresholds (must be increasing)."""
        th = np.asarray(thresholds, dtype=float)
        if th.shape != (self.n_cat - 1,):
            raise ValueError(f"need {self.n_cat - 1} thresholds, got shape {th.shape}")
        self.thresholds = th
        full = np.empty(th.size + 2)
        full[0], full[1:-1], full[-1] = -np.inf, th, np.inf
        self._th_up = full[self.y + 1]
        self._th_lo = full[self.y]
        self._key = None

    # -- core evaluation -----------------------------------------------------------------
    def _pieces(self, eta, level):
        """Cached per-observation pieces at ``eta``.

        level 0: ``p`` and ``logp``; 1: adds ``ru = f(u)/p``, ``rl = f(l)/p``
        and ``gu = ru f'(u)/f(u)``, ``gl`` (not for the logit, which has
        closed forms); 2: adds ``hu = ru f''(u)/f(u)``, ``hl``.

        ``p = F(u) (1 - F(l)) - F(l) (1 - F(u))`` equals ``F(u) - F(l)`` and
        is computed from the tails: it reduces to ``F(u) - F(l)`` below the
        median and to ``(1 - F(l)) - (1 - F(u))`` above it, so there is no
        cancellation for large ``|eta|``; where it underflows it is
        recomputed in logs.
        """
        if self._key is eta:
            c = self._cache
            if c["level"] >= level:
                return c
        else:
            c = self._cache = {"level": -1}
            self._key = eta
        link = self.link
        if c["level"] < 0:
            u = self._th_up - eta
            lo = self._th_lo - eta
            Fu, Su, Fl, Sl = link.cdf(u), link.sf(u), link.cdf(lo), link.sf(lo)
            p = Fu * Sl - Fl * Su
            if p.min() > 0.0:
                logp = np.log(p)
            else:                     # underflow far in a tail (or rounding): in logs
                with np.errstate(all="ignore"):
                    logp = _interval_logprob(link, u, lo)
                p = np.exp(logp)
            c.update(u=u, lo=lo, Fu=Fu, Su=Su, Fl=Fl, Sl=Sl, p=p, logp=logp, level=0)
        if level >= 1 and c["level"] < 1:
            p = c["p"]
            if self._logit:
                fu = c["Fu"] * c["Su"]
                fl = c["Fl"] * c["Sl"]
                c.update(fu=fu, fl=fl, ru=fu / p, rl=fl / p, level=1)
            else:
                u, lo = c["u"], c["lo"]
                with np.errstate(all="ignore"):
                    fu, fl = self._finite_ends(link.pdf(u), link.pdf(lo))
                    ru, rl = fu / p, fl / p
                    gu, gl = self._finite_ends(ru * link.dlogpdf(u), rl * link.dlogpdf(lo))
                c.update(fu=fu, fl=fl, ru=ru, rl=rl, gu=gu, gl=gl, level=1)
        if level >= 2 and c["level"] < 2:
            if not self._logit:
                with np.errstate(all="ignore"):
                    hu, hl = self._finite_ends(c["ru"] * link.d2pdf(c["u"]), c["rl"] * link.d2pdf(c["lo"]))
                c.update(hu=hu, hl=hl)
            c["level"] = 2
        return c

    def _finite_ends(self, at_u, at_l):
        """Values at the interval ends ``u`` and ``l``, set to 0 where these are infinite (the
        outer thresholds); ``eta`` (and so the values) may be 1-D or (nodes, n)."""
        at_u[..., self._top] = 0.0
        at_l[..., self._bottom] = 0.0
        return at_u, at_l

    def _w(self, v):
        return v if self.weights is None else v * self.weights

    def loglik_derivs(self, eta):
        """``(loglik_obs, d1, w)`` in one call (the engine's fused evaluation)."""
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    def loglik_obs(self, eta):
        """(n,) ``w_i log p(y_i | eta_i)``."""
        return self._w(self._pieces(eta, 0)["logp"])

    def derivatives(self, eta):
        """``(d1, w)``: ``d log p / d eta`` and the observed information ``-d^2 log p / d eta^2``.

        For links other than the logit, rounding can make ``w`` slightly
        negative far in a tail where its true value is below rounding level;
        it is then set to 0 (not for the cauchit link, whose ``w`` can be
        genuinely negative).
        """
        c = self._pieces(eta, 1)
        if self._logit:
            if "d1" not in c:
                c["d1"] = self._w(c["Fu"] + c["Fl"] - 1.0)
                c["w"] = self._w(c["fu"] + c["fl"])
            return c["d1"], c["w"]
        D1 = c["ru"] - c["rl"]
        w = D1 * D1 - (c["gu"] - c["gl"])
        if not self.allow_negative_weights:
            w = np.maximum(w, 0.0)
        return self._w(-D1), self._w(w)

    # -- optional protocol pieces ----------------------------------------------------------
    def hessian_terms(self, eta):
        """``(h, dw)``: observed information (the ``w`` of :meth:`derivatives`) and ``d w / d eta``."""
        if self._logit:
            d1, w = self.derivatives(eta)
            c = self._cache
            dw = -(c["fu"] * (c["Su"] - c["Fu"]) + c["fl"] * (c["Sl"] - c["Fl"]))
            return w, self._w(dw)
        c = self._pieces(eta, 2)
        D1 = c["ru"] - c["rl"]
        G = c["gu"] - c["gl"]
        H = c["hu"] - c["hl"]
        return self.derivatives(eta)[1], self._w(2.0 * D1 ** 3 - 3.0 * D1 * G + H)

    def _uv_derivatives(self, eta):
        """Partial derivatives in ``u`` and ``l`` of (loglik, d1, w), unweighted."""
        if self._logit:
            c = self._pieces(eta, 1)
            fu, fl = c["fu"], c["fl"]
            return (c["ru"], -c["rl"], fu, fl, fu * (c["Su"] - c["Fu"]), fl * (c["Sl"] - c["Fl"]))
        c = self._pieces(eta, 2)
        ru, rl, gu, gl, hu, hl = c["ru"], c["rl"], c["gu"], c["gl"], c["hu"], c["hl"]
        D1 = ru - rl
        G = gu - gl
        return (ru, -rl, ru * D1 - gu, gl - rl * D1,
                2.0 * D1 * (gu - ru * D1) - (hu - ru * G),
                2.0 * D1 * (rl * D1 - gl) - (rl * G - hl))

    def param_loglik_derivatives(self, eta):
        """``dl`` of :meth:`param_derivatives` alone: ``f(u)/p`` on ``theta_y``, ``-f(l)/p`` on ``theta_{y-1}``."""
        c = self._pieces(eta, 1)
        return self._Eu * self._w(c["ru"])[..., None] - self._El * self._w(c["rl"])[..., None]

    def param_derivatives(self, eta):
        """``(dl, dd1, dw)``, each (n, K - 1): derivatives in the thresholds.

        Observation ``i`` depends on ``theta_{y_i}`` (through ``u``) and on
        ``theta_{y_i - 1}`` (through ``l``) only.
        """
        c = self._pieces(eta, 2 if not self._logit else 1)
        if "pd" in c:
            return c["pd"]
        l_u, l_l, d_u, d_l, w_u, w_l = self._uv_derivatives(eta)
        Eu, El = self._Eu, self._El
        out = []
        for a, b in ((l_u, l_l), (d_u, d_l), (w_u, w_l)):
            a = self._w(a)
            b = self._w(b)
            out.append(Eu * a[..., None] + El * b[..., None])
        c["pd"] = tuple(out)
        return c["pd"]

    # -- (u, l) second-order pieces for the fixed-effects Newton fit -------------------------
    def interval_derivatives(self, eta):
        """First and second derivatives of ``log p`` in ``u`` and ``l`` (weights applied)."""
        c = self._pieces(eta, 1)
        ru, rl = c["ru"], c["rl"]
        if self._logit:       # f'/f = 1 - 2F = S - F
            gu, gl = ru * (c["Su"] - c["Fu"]), rl * (c["Sl"] - c["Fl"])
        else:
            gu, gl = c["gu"], c["gl"]
        return tuple(self._w(v) for v in (ru, -rl, gu - ru * ru, -gl - rl * rl, ru * rl))

    def probabilities(self, eta):
        """(n, K) category probabilities at ``eta``."""
        return category_probabilities(self.link, self.thresholds, np.asarray(eta, dtype=float))

    # -- fourth-order pieces for the exact Hessian of the Laplace log-likelihood -----------------
    def interval_moments(self, eta):
        """(2, 4, n): the derivatives of ``p = F(u) - F(l)`` in ``u`` and in ``l``, relative to ``p``.

        ``[0, j] = f^(j)(u) / p`` and ``[1, j] = -f^(j)(l) / p`` for ``j = 0, ..., 3`` (the
        ``(j+1)``-th derivatives; unweighted, 0 at the infinite outer thresholds; the mixed
        derivatives vanish).  :func:`_log_interval_derivatives` turns them into the
        derivatives of ``log p``.
        """
        c = self._pieces(eta, 2)
        ru, rl = c["ru"], c["rl"]
        if self._logit:   # f'/f = S - F, f''/f = 1 - 6 F S, f'''/f = (S - F)(1 - 12 F S)
            fs_u, fs_l = c["fu"], c["fl"]
            du, dl = c["Su"] - c["Fu"], c["Sl"] - c["Fl"]
            m = np.array([[ru, ru * du, ru * (1.0 - 6.0 * fs_u), ru * du * (1.0 - 12.0 * fs_u)],
                          [rl, rl * dl, rl * (1.0 - 6.0 * fs_l), rl * dl * (1.0 - 12.0 * fs_l)]])
        else:             # r f'/f and r f''/f are in the cache already
            with np.errstate(all="ignore"):
                d3 = self._finite_ends(ru * self.link.d3pdf(c["u"]), rl * self.link.d3pdf(c["lo"]))
            m = np.array([[ru, c["gu"], c["hu"], d3[0]], [rl, c["gl"], c["hl"], d3[1]]])
        m[1] *= -1.0
        return m


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


def _partition_coefficients(size=5):
    """``C[r, s] = (-1)^(r+s-1) (r+s-1)!``: the weight of a partition into ``r + s`` blocks."""
    C = np.zeros((size, size))
    for r in range(size):
        for s in range(size):
            if r + s:
                C[r, s] = (-1.0) ** (r + s - 1) * factorial(r + s - 1)
    return C


_PARTITION_C = _partition_coefficients()


def _log_interval_derivatives(m):
    """``kappa[j, k] = d^(j+k) log p / du^j dl^k`` of ``log p = log(F(u) - F(l))``: (5, 5, n).

    Entries with ``j + k <= 4`` are used (``[0, 0]`` is not ``log p``).  ``m`` holds the
    derivatives of ``p`` relative to ``p`` (:meth:`CumulativeLinkConditional.interval_moments`);
    the mixed ones vanish.  The derivatives of ``log p`` are the joint cumulants of these
    "moments": sums over the set partitions of the ``j + k`` variables of ``(-1)^(r-1) (r-1)!``
    times the product of the moments of the ``r`` blocks.  With vanishing mixed moments only
    partitions into blocks of one kind count, so

        kappa[j, k] = sum_{r, s} Bell_{j,r}(u) C[r, s] Bell_{k,s}(l),   C[r, s] = c(r + s),

    with the partial Bell polynomials of each side's moments.
    """
    m1, m2, m3, m4 = m[:, 0], m[:, 1], m[:, 2], m[:, 3]
    m1s = m1 * m1
    bell = np.zeros((5, 5) + m.shape[::2])                  # [j, r, side, n]
    bell[0, 0] = 1.0
    bell[1, 1] = m1
    bell[2, 1], bell[2, 2] = m2, m1s
    bell[3, 1], bell[3, 2], bell[3, 3] = m3, 3.0 * m1 * m2, m1s * m1
    bell[4, 1], bell[4, 2] = m4, 4.0 * m1 * m3 + 3.0 * m2 * m2
    bell[4, 3], bell[4, 4] = 6.0 * m1s * m2, m1s * m1s
    Cb = np.matmul(_PARTITION_C, bell[:, :, 1])             # [k, r, n] = sum_s C[r, s] Bell_{k,s}(l)
    return np.einsum("jrn,krn->jkn", bell[:, :, 0], Cb)


# ============================================================================ clm (no random effects)
def _jacobians(cond, T, X):
    """Parameter Jacobians of ``u`` and ``l`` in (alpha, beta): each (n, k + p)."""
    n = cond.y.shape[0]
    Tu = np.where(cond.has_upper[:, None], T[cond._iu], 0.0)
    Tl = np.where(cond.has_lower[:, None], T[cond._il], 0.0)
    return np.hstack([Tu, -X]), np.hstack([Tl, -X])


def fit_clm(cond, thr, X, offset=None, start=None, maxiter=100, tol=1e-10, jacobians=None):
    """Maximum likelihood fit of the cumulative link model without random effects.

    Newton-Raphson in (alpha, beta) with step halving; the log-likelihood is
    concave for the log-concave links.  Used for starting values of the
    mixed model (as ``clmm`` does) and as the no-random-effects baseline.

    Parameters
    ----------
    cond : CumulativeLinkConditional
    thr : Thresholds
    X : ndarray (n, p)
        Fixed-effects design without intercept.
    offset : ndarray, optional
    start : ndarray, optional
        Starting (alpha, beta).
    jacobians : tuple of ndarray, optional
        The Jacobians of the interval ends in (alpha, beta), when already computed.

    Returns
    -------
    params : ndarray
        (alpha, beta).
    llf : float
    hessian : ndarray
        Hessian of the log-likelihood in (alpha, beta).
    converged : bool
    """
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    k = thr.k
    if start is None:
        # thresholds from the marginal cumulative proportions, beta = 0
        w = np.ones(n) if cond.weights is None else cond.weights
        counts = np.bincount(cond.y, weights=w, minlength=cond.n_cat)
        cum = np.cumsum(counts)[:-1] / counts.sum()
        cum = np.clip(cum, 1e-4, 1 - 1e-4)
        th0 = cond.link.ppf(cum) + (np.median(off) if off.any() else 0.0)
        th0 = np.maximum.accumulate(th0 + 1e-3 * np.arange(th0.size))
        alpha = thr.alpha_from_thresholds(th0)
        if thr.kind != "flexible":      # make sure the structure's thresholds are increasing
            if thr.kind == "equidistant":
                alpha[1] = max(alpha[1], 0.1)
            else:
                alpha = thr.alpha(thr.psi(alpha)) if _increasing(thr.thresholds(alpha)) else \
                    _symmetric_default(thr, th0)
        x = np.concatenate([alpha, np.zeros(p)])
    else:
        x = np.asarray(start, dtype=float).copy()
    Ju, Jl = _jacobians(cond, thr.T, X) if jacobians is None else jacobians
    JuT, JlT = np.ascontiguousarray(Ju.T), np.ascontiguousarray(Jl.T)

    def grad_hess(eta):
        lu, ll_, luu, lll, lul = cond.interval_derivatives(eta)
        H = (luu * JuT + lul * JlT) @ Ju + (lul * JuT + lll * JlT) @ Jl
        return JuT @ lu + JlT @ ll_, H

    def loglik(x):
        th = thr.thresholds(x[:k])
        if not _increasing(th):
            return -np.inf, None
        cond.set_thresholds(th)
        eta = X @ x[k:] + off
        ll = float(np.sum(cond.loglik_obs(eta)))
        return ll, eta

    ll, eta = loglik(x)
    if not np.isfinite(ll):
        raise ValueError("non-finite log-likelihood at the starting values of the fixed-effects fit")
    converged = False
    H = None
    for it in range(maxiter):
        g, H = grad_hess(eta)
        step = _spd_solve(-H, g)                 # the concave case, else as it comes
        if step is None:
            try:
                step = -np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                step = g * 1e-2
        dec = float(g @ step)                    # = g' (-H)^-1 g > 0 for an ascent direction
        if not np.isfinite(dec) or dec < 0:      # not an ascent direction (non-concave): gradient step
            step = g / max(1.0, np.abs(g).max())
            dec = float(g @ step)
        if abs(dec) < tol:
            converged = True
            return x, ll, H, converged
        t = 1.0
        for _ in range(40):
            ll_new, eta_new = loglik(x + t * step)
            if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * abs(ll):
                break
            t *= 0.5
        else:
            break
        x = x + t * step
        ll, eta = ll_new, eta_new
    cond.set_thresholds(thr.thresholds(x[:k]))
    eta = X @ x[k:] + off
    H = grad_hess(eta)[1]
    return x, float(np.sum(cond.loglik_obs(eta))), H, converged


def _increasing(th):
    t = th.tolist()                  # a handful of values: plain Python is fastest
    return all(a < b for a, b in zip(t, t[1:])) and math.isfinite(t[0]) and math.isfinite(t[-1])


def _symmetric_default(thr, th0):
    """Increasing symmetric thresholds spread like ``th0``."""
    nt = thr.n_thresholds
    span = max(th0[-1] - th0[0], 1.0)
    grid = np.linspace(-0.5, 0.5, nt) * span + np.mean(th0)
    return thr.alpha_from_thresholds(grid)


# ============================================================================ response
def ordinal_response(values, levels=None, name="response"):
    """Category codes and labels of an ordinal response.

    Parameters
    ----------
    values : array_like
        A pandas ordered ``Categorical`` (its category order is used), or
        integers (sorted numerically unless ``levels`` is given), or strings
        / an unordered categorical together with ``levels``.
    levels : sequence, optional
        The categories from lowest to highest.  Values not in ``levels``
        are an error.
    name : str
        Used in messages.

    Returns
    -------
    codes : ndarray of float
        ``0, ..., K - 1`` with ``nan`` for missing values.
    labels : list
        The categories in order (all of them, used or not).
    """
    s = pd.Series(values)
    if levels is not None:
        levels = list(levels)
        if len(set(map(str, levels))) != len(levels):
            raise ValueError(f"levels for {name!r} has duplicates: {levels}")
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        present = s.dropna()
        lut = {str(v): i for i, v in enumerate(levels)}
        keys = present.map(str)
        unknown = sorted(set(keys) - set(lut))
        if unknown:
            raise ValueError(f"response {name!r} has values {unknown[:10]} that are not in levels={levels}")
        codes = np.full(len(s), np.nan)
        codes[s.notna().to_numpy()] = keys.map(lut).to_numpy(dtype=float)
        return codes, levels
    if isinstance(s.dtype, pd.CategoricalDtype):
        if not s.cat.ordered:
            raise ValueError(
                f"the response {name!r} is an unordered categorical; declare the order of its "
                f"categories, e.g. data[{name!r}] = data[{name!r}].cat.as_ordered() (to use the "
                f"current category order {list(s.cat.categories)[:6]}) or pass levels=[lowest, ..., highest]")
        codes = s.cat.codes.to_numpy().astype(float)
        codes[codes < 0] = np.nan
        return codes, list(s.cat.categories)
    if pd.api.types.is_numeric_dtype(s.dtype):
        present = s.dropna().to_numpy(dtype=float)
        if present.size and not np.all(present == np.round(present)):
            raise ValueError(f"the response {name!r} has non-integer numbers; an ordinal response "
                             "must be an ordered categorical, integers, or values with levels=[...]")
        uniq = np.unique(present)
        labels = [int(v) for v in uniq]
        codes = np.full(len(s), np.nan)
        ok = s.notna().to_numpy()
        codes[ok] = np.searchsorted(uniq, present)
        return codes, labels
    example = list(pd.unique(s.dropna()))[:4]
    raise ValueError(
        f"the response {name!r} holds unordered values such as {example}; an ordinal response needs "
        f"an order: make it a pandas ordered Categorical, e.g. "
        f"pd.Categorical(data[{name!r}], categories=[...], ordered=True), or pass levels=[lowest, ..., highest]")


def _drop_unused_levels(codes, labels, name):
    """Drop unused categories (with a warning); at least two must be observed."""
    ok = ~np.isnan(codes)
    used = np.unique(codes[ok]).astype(int)
    if used.size < 2:
        raise ValueError(f"the response {name!r} has {used.size} observed categor"
                         f"{'y' if used.size == 1 else 'ies'}"
                         f"{' (' + str(labels[used[0]]) + ')' if used.size == 1 else ''}; "
                         "an ordinal model needs at least two")
    if used.size < len(labels):
        unused = [labels[i] for i in range(len(labels)) if i not in set(used)]
        warnings.warn(f"response {name!r}: unused categories {unused} were dropped", UserWarning,
                      stacklevel=4)
        remap = np.full(len(labels), -1.0)
        remap[used] = np.arange(used.size)
        new = np.full_like(codes, np.nan)
        new[ok] = remap[codes[ok].astype(int)]
        return new, [labels[i] for i in used]
    return codes, list(labels)


# ============================================================================ model



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

    def __init__(self, endog, exog, re_design, weights=None, offset=None, link="logit",
                 threshold="flexible", levels=None, **kwargs):
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
        w = None if weights is None else self.weights
        self.cond = CumulativeLinkConditional(self.y_codes, self.n_cat, self.link, weights=w)
        self.exog_names_fe = list(self.exog_names) if self.k_fe else []
        self.data.param_names = list(self.thr.names) + self.exog_names_fe
        self.k_params_fe = self.thr.k + self.k_fe
        self._chol = None
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
        from ..formula.terms import parse_formula
        if not isinstance(data, pd.DataFrame):
            data = pd.DataFrame(data)
        resp = parse_formula(formula).response
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
        resp = parsed.response
        rhs = parsed.fixed_rhs.strip() or "1"
        X_df = _eval(mgr, f"~ {rhs}", data, env, f"the fixed-effects formula {rhs!r}")
        y_df = data[[resp]].dropna()
        return y_df, X_df

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        resp = info["parsed"].response
        col = y.iloc[:, 0]
        labels = list(col.cat.categories)
        codes = col.cat.codes.to_numpy().astype(float)
        codes, labels = _drop_unused_levels(codes, labels, resp)
        info["y_levels"] = labels
        yser = pd.Series(codes, index=y.index, name=resp)
        if "Intercept" in X.columns:
            X = X.drop(columns="Intercept")
        else:
            warnings.warn("a cumulative link model needs an intercept and it is assumed (the "
                          "thresholds carry it); columns that duplicate it are dropped", UserWarning,
                          stacklevel=4)
        if X.shape[1]:
            # drop columns that are collinear with each other or with the (implicit) intercept
            Xc = X - X.mean(axis=0)
            kept = _drop_rank_deficient(Xc).columns
            X = X.loc[:, kept]
        return yser, X

    # --------------------------------------------------------------- pieces
    def _jacobians(self):
        """Jacobians of ``u = theta_y - eta`` and ``l = theta_{y-1} - eta`` in (alpha, beta)."""
        if getattr(self, "_jac_cache", None) is None:
            self._jac_cache = _jacobians(self.cond, self.thr.T, self.exog)
        return self._jac_cache

    def _scalar_laplace(self):
        """The exact-Hessian evaluator for a single scalar term (built once)."""
        if getattr(self, "_scalar_lap", None) is None:
            self._scalar_lap = _ScalarLaplace(self)
        return self._scalar_lap

    @property
    def chol(self):
        if self._chol is None:
            self._chol = _laplace.make_chol(self.re_design)
        return self._chol

    def _split(self, x):
        k, p = self.thr.k, self.k_fe
        return x[:k], x[k:k + p], x[k + p:]

    def loglike_parts(self, alpha, beta, theta, nagq=1, u0=None, tol=None):
        """Laplace (``nagq = 1``) or AGQ log-likelihood at R's parameters.

        Parameters
        ----------
        alpha : array_like
            Threshold parameters (``clmm``'s ``coef`` order).
        beta : array_like
            Fixed effects.
        theta : array_like
            Relative covariance parameters (lme4's ``theta``; with no
            residual scale, ``Lambda(theta) Lambda(theta)'`` is the
            random-effects covariance).
        nagq : int
        u0 : ndarray, optional
            Warm start for the conditional modes.
        tol : float, optional
            PIRLS tolerance on the squared Newton decrement (default 1e-20).

        Returns
        -------
        llf : float
            ``-inf`` for non-increasing thresholds or failed inner iterations.
        modes : mlmext.laplace.Modes or None
        """
        alpha = np.asarray(alpha, dtype=float)
        th = self.thr.thresholds(alpha)
        if not _increasing(th):
            return -np.inf, None
        self.cond.set_thresholds(th)
        eta_fixed = self.offset + (self.exog @ np.asarray(beta, dtype=float) if self.k_fe else 0.0)
        theta = np.asarray(theta, dtype=float)
        # The Laplace value is not stationary in u (its log-determinant depends on the modes),
        # so modes accurate to ~sqrt(tol) give errors ~sqrt(tol) in the value: a tight inner
        # tolerance keeps finite differences of the log-likelihood clean (one Newton step more).
        tol = self._pirls_tol if tol is None else tol
        if nagq == 1:
            return _laplace.laplace_loglik(self.re_design, self.chol, eta_fixed, self.cond, theta,
                                           u0=u0, tol=tol, scalar_fast=True)
        return _laplace.agq_loglik(self.re_design, self.chol, eta_fixed, self.cond, theta, nagq,
                                   u0=u0, tol=tol, scalar_fast=True)

    def loglike(self, params, nagq=1):
        """Log-likelihood at ``params = (alpha, beta, theta)`` (R's threshold parameters)."""
        params = np.asarray(params, dtype=float)
        a, b, t = self._split(params)
        return self.loglike_parts(a, b, t, nagq=nagq)[0]

    # ------------------------------------------------------------------ fit
    def fit(self, nagq=1, start_params=None, maxiter=500, gtol=1e-6, hessian=True, **kwargs):
        """Fit by maximum likelihood (Laplace approximation or adaptive Gauss-Hermite quadrature).

        Parameters
        ----------
        nagq : int
            1 (default): Laplace approximation, any random-effects
            structure.  ``nagq > 1``: adaptive Gauss-Hermite quadrature with
            ``nagq`` nodes per dimension; needs a single grouping factor
            (a scalar term as ``clmm``, or a vector term with up to three
            random effects on a product grid).  ``nagq < 0`` (``clmm``'s
            non-adaptive quadrature) raises ``NotImplementedError``.
        start_params : array_like, optional
            Starting ``(alpha, beta, theta)``; default: the fit without
            random effects (as ``clmm``) and ``theta = 1``.
        maxiter : int
            Iterations of the optimizer (Newton's method, at most 100, for a single
            scalar term; else quasi-Newton).
        gtol : float
            Tolerance on the largest projected-gradient entry of the negative
            log-likelihood.
        hessian : bool
            Compute the Hessian (and so the standard errors); ``clmm``'s
            ``Hess``.

        Returns
        -------
        OrdinalMixedResults
        """
        des = self.re_design
        scalar = len(des.blocks) == 1 and des.blocks[0].q == 1
        # one BLAS thread for moderate dense parts (the shared helper of the LMM / GLMM fits)
        with blas_threads(0 if scalar else self.chol.r):
            return _fit_clmm(self, nagq=nagq, start_params=start_params, maxiter=maxiter, gtol=gtol,
                             hessian=hessian, **kwargs)


# ============================================================================ fitting
def _fd_hessian(fun, x, h, fx=None):
    """Central second differences of a scalar function (R ordinal's ``deriv12`` scheme)."""
    k = x.size
    fx = fun(x) if fx is None else fx
    H = np.empty((k, k))
    g = np.empty(k)
    for j in range(k):
        e = np.zeros(k)
        e[j] = h[j]
        fp, fm = fun(x + e), fun(x - e)
        H[j, j] = (fp - 2.0 * fx + fm) / h[j] ** 2
        g[j] = (fp - fm) / (2.0 * h[j])
        for i in range(j):
            d = np.zeros(k)
            d[i] = h[i]
            H[i, j] = H[j, i] = (fun(x + e + d) - fun(x + e - d) - fun(x - e + d) + fun(x - e - d)) / \
                (4.0 * h[i] * h[j])
    return g, H


def _qn_minimize(fg, x0, lower, B0=None, gtol=1e-6, maxiter=500, f0g0=None, dec_tol=1e-10):
    """Quasi-Newton (BFGS) minimization with lower bounds on some variables.

    Projected BFGS with an active set: a variable at its bound whose gradient
    points outwards is held there; the search direction solves the BFGS model
    on the free variables; steps are projected onto the bounds with
    backtracking (Armijo).  Small and dense: meant for the handful of
    parameters of a mixed model, where the cost of an evaluation (inner
    iterations for the conditional modes) dominates.

    Parameters
    ----------
    fg : callable
        ``x -> (f, g)``; ``f = inf`` marks an infeasible point.
    x0 : ndarray
    lower : ndarray
        Lower bounds (``-inf`` for free variables).
    B0 : ndarray, optional
        Initial Hessian approximation (identity scaled after the first step
        when not given).
    gtol : float
        Convergence when the largest projected-gradient entry is below it.
    dec_tol : float
        Convergence when the decrease the quasi-Newton model predicts for the
        next step, ``g' B^-1 g / 2``, is below it (in units of the objective:
        for a negative log-likelihood, 1e-10 puts the estimates within about
        1e-5 standard errors of the optimum).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x, fun, jac, nit, nfev, success, message``.

    """
    from scipy.optimize import OptimizeResult
    lower = np.asarray(lower, dtype=float)
    x = np.maximum(np.asarray(x0, dtype=float), lower)
    f, g = fg(x) if f0g0 is None else f0g0
    nfev = 1
    if not np.isfinite(f):
        return OptimizeResult(x=x, fun=f, jac=g, nit=0, nfev=nfev, success=False,
                              message="non-finite objective at the starting point")
    n = x.size
    B = np.eye(n) if B0 is None else np.array(B0, dtype=float)
    scaled = B0 is not None
    bounded = np.isfinite(lower)
    message = "maximum number of iterations reached"
    success = False
    it = 0
    for it in range(1, maxiter + 1):
        at_bound = bounded & (x <= lower)
        active = at_bound & (g > 0)
        free = ~active
        pg = np.where(active, 0.0, g)
        if np.max(np.abs(pg)) < gtol:
            success, message = True, "projected gradient below tolerance"
            break
        d = np.zeros(n)
        try:
            if active.any():
                d[free] = -np.linalg.solve(B[np.ix_(free, free)], g[free])
            else:
                d = -np.linalg.solve(B, g)
        except np.linalg.LinAlgError:
            d[free] = -g[free]
        slope = float(g @ d)
        if not np.isfinite(slope) or slope >= 0:        # not a descent direction: reset
            B = np.eye(n) * max(1.0, np.abs(np.diag(B)).max())
            d = -pg / np.diag(B)
            slope = float(g @ d)
        if -0.5 * slope < dec_tol:
            success, message = True, "predicted decrease below tolerance"
            break
        t = 1.0
        accepted = False
        for _ in range(40):
            xt = np.maximum(x + t * d, lower)
            ft, gt = fg(xt)
            nfev += 1
            if np.isfinite(ft) and ft <= f + 1e-4 * float(g @ (xt - x)):
                accepted = True
                break
            t *= 0.25 if not np.isfinite(ft) else 0.5
        if not accepted:
            message = "line search failed to decrease the objective"
            success = bool(np.max(np.abs(pg)) < 1e3 * gtol)
            break
        s = xt - x
        y = gt - g
        sy = float(s @ y)
        if not scaled and sy > 0:
            B = np.eye(n) * (float(y @ y) / sy)
            scaled = True
        if sy > 1e-12 * np.sqrt(float(s @ s) * float(y @ y)):
            Bs = B @ s
            B = B + np.outer(y, y) / sy - np.outer(Bs, Bs) / float(s @ Bs)
        x, f, g = xt, ft, gt
    return OptimizeResult(x=x, fun=f, jac=g, nit=it, nfev=nfev, success=success, message=message)


class _ClmmObjective:
    """Negative log-likelihood of a clmm and its gradient, in internal or R coordinates.

    Internal coordinates ``x = (psi, beta, theta)`` make the thresholds
    increasing by construction; R coordinates ``z = (alpha, beta, theta)``
    are ``clmm``'s.  The conditional modes of a new evaluation start from a
    first-order prediction off the last converged one
    (:func:`mlmext.laplace.predict_modes`), which leaves PIRLS an error of
    second order in the change of the parameters.  Gradients are exact for the
    Laplace approximation and for AGQ with a single scalar term
    (:func:`mlmext.laplace.agq_loglik_gradient`), else central differences.
    """

    def __init__(self, model, nagq):
        self.model = model
        self.nagq = nagq
        self.thr = model.thr
        self.k, self.p = model.thr.k, model.k_fe
        self.base = None          # (z, modes) of the last converged evaluation
        self._fresh = False       # does the model's factor still belong to base?
        self.nfev = 0
        self.ngev = 0
        des = model.re_design
        self.agq_grad = nagq > 1 and len(des.blocks) == 1 and des.blocks[0].q == 1
        self.analytic = nagq == 1 or self.agq_grad
        self.X = model.exog if model.k_fe else None
        self.tol = None           # PIRLS tolerance (None: the model's default)
        self._tight = model._pirls_tol
        self._dd1 = self._dd1_for = None
        self._last_fg = None      # (z, (f, g), base, PIRLS decrement) of the last fg_r

    @property
    def u(self):
        return None if self.base is None else self.base[1].u

    def _start(self, z):
        """Warm start for the modes at ``z``."""
        if self.base is None:
            return None
        z0, modes = self.base[:2]
        dz = z - z0
        if not dz.any():
            return modes.u
        has_factor = bool(modes.extra) and "factor" in modes.extra
        if not (has_factor or self._fresh) or np.abs(dz).max() > 1.0 or modes.d1 is None:
            return modes.u
        k, p = self.k, self.p
        model = self.model
        dth = self.thr.T @ dz[:k]
        deta = self.X @ dz[k:k + p] if p and dz[k:k + p].any() else None
        dd1 = None
        if dth.any():
            if self._dd1_for is not modes:
                self._dd1 = model.cond.param_derivatives(modes.eta)[1]
                self._dd1_for = modes
            dd1 = self._dd1 @ dth
        try:
            return _laplace.predict_modes(model.re_design, model.chol, modes, dz[k + p:],
                                          deta_fixed=deta, dd1=dd1)
        except Exception:  # noqa: BLE001 - a warm start only
            return modes.u

    def _eval_z(self, z, nagq=None):
        k, p = self.k, self.p
        u0 = self._start(z)
        ll, modes = self.model.loglike_parts(z[:k], z[k:k + p], z[k + p:], nagq=nagq or self.nagq,
                                             u0=u0, tol=self.tol)
        self.nfev += 1
        if modes is not None and modes.converged and np.isfinite(ll):
            self.base = (z.copy(), modes, -ll)
            self._fresh = True
            return -ll, modes
        self._fresh = False
        return np.inf, modes

    def _grad_r(self, theta, modes):
        """Gradient of -loglik in R coordinates at converged modes (analytic, Laplace)."""
        model = self.model
        g_t, g_b, g_e = _laplace.laplace_gradient(model.re_design, model.chol, model.cond, theta,
                                                  modes, X=self.X)
        self.ngev += 1
        if self.k and modes.eta is model.cond._key:         # keep d d1 / d thresholds for warm starts
            self._dd1 = model.cond.param_derivatives(modes.eta)[1]
            self._dd1_for = modes
        return self._r_gradient(g_t, g_b, g_e)

    def _agq_fg(self, z):
        """AGQ value and exact gradient (single scalar term): modes by PIRLS, one pass over the nodes."""
        f, modes = self._eval_z(z, nagq=1)
        if not np.isfinite(f):
            return f, modes, None
        model = self.model
        llf, g_t, g_b, g_e = _laplace.agq_loglik_gradient(model.re_design, model.chol, model.cond,
                                                          z[self.k + self.p:], modes, self.nagq, X=self.X)
        self.ngev += 1
        if not np.isfinite(llf):
            return np.inf, modes, None
        return -llf, modes, self._r_gradient(g_t, g_b, g_e)

    def _r_gradient(self, g_t, g_b, g_e):
        """Gradient of -loglik in R coordinates from the engine's (theta, beta, thresholds) parts."""
        g_a = self.thr.T.T @ g_e
        g_b = np.zeros(0) if g_b is None else g_b
        return -np.concatenate([g_a, g_b, g_t])

    # R coordinates -----------------------------------------------------------------
    def fun_r(self, z):
        return self._eval_z(z)[0]

    def fg_r(self, z):
        last = self._last_fg
        if last is not None and last[2] is self.base and np.array_equal(last[0], z) and \
                (self.tol is not None or last[3] <= self._tight):
            return last[1]                       # same point, modes at least as accurate
        if self.agq_grad:
            f, modes, g = self._agq_fg(z)
            if not np.isfinite(f):
                return np.inf, np.zeros_like(z)
            out = f, g
            self._last_fg = (z.copy(), out, self.base, modes.decrement)
            return out
        f, modes = self._eval_z(z)
        if not np.isfinite(f):
            return f, np.zeros_like(z)
        if self.analytic:
            try:
                out = f, self._grad_r(z[self.k + self.p:], modes)
            except NotImplementedError:
                self.analytic = False
                out = f, self._fd_grad(self.fun_r, z, f)
        else:
            out = f, self._fd_grad(self.fun_r, z, f)
        self._last_fg = (z.copy(), out, self.base, modes.decrement)
        return out

    # internal coordinates ----------------------------------------------------------
    def to_r(self, x):
        k = self.k
        return np.concatenate([self.thr.alpha(x[:k]), x[k:]])

    def fg_x(self, x):
        k = self.k
        f, gz = self.fg_r(self.to_r(x))
        if not np.isfinite(f):
            return f, gz
        gx = gz.copy()
        gx[:k] = self.thr.jacobian(x[:k]).T @ gz[:k]
        return f, gx

    def _fd_grad(self, fun, z, f0):
        base, fresh = self.base, self._fresh
        g = np.empty_like(z)
        lower = self.lower_r
        for i in range(z.size):
            h = 1e-5 * max(1.0, abs(z[i]))
            zp = z.copy()
            zp[i] += h
            fp = fun(zp)
            self.base, self._fresh = base, fresh and self._scalar(base)
            if z[i] - h < lower[i]:
                g[i] = (fp - f0) / h
            else:
                zm = z.copy()
                zm[i] -= h
                fm = fun(zm)
                self.base, self._fresh = base, fresh and self._scalar(base)
                g[i] = (fp - fm) / (2.0 * h)
        return g

    @staticmethod
    def _scalar(base):
        return base is not None and bool(base[1].extra) and "factor" in base[1].extra

    def hessian_r(self, z, free):
        """Hessian of -loglik in R coordinates over the ``free`` entries of ``z``.

        Forward differences of the analytic gradient (Laplace), else central
        second differences of the value (``clmm``'s scheme, step 1e-4).
        """
        idx = np.flatnonzero(free)
        if self.analytic:
            f0, g0 = self.fg_r(z)
            base = self.base
            self.llf_at_hessian = (-f0, base[1])
            H = np.empty((idx.size, idx.size))
            for a, i in enumerate(idx):
                h = 1e-6 * max(1.0, abs(z[i]))
                zp = z.copy()
                zp[i] += h
                self.base, self._fresh = base, self._scalar(base)
                _, gp = self.fg_r(zp)
                H[:, a] = (gp[idx] - g0[idx]) / h
            self.base, self._fresh = base, False
            return 0.5 * (H + H.T)
        f0 = self.fun_r(z)
        base = self.base
        self.llf_at_hessian = (-f0, base[1])

        def fun(v):
            full = z.copy()
            full[free] = v
            self.base, self._fresh = base, self._scalar(base)
            return self.fun_r(full)
        _, H = _fd_hessian(fun, z[free], np.full(idx.size, 1e-4))
        self.base, self._fresh = base, False
        return H


# ============================================================================ one scalar term
class _ScalarLaplace:
    """Exact gradient and Hessian of the Laplace log-likelihood for a single scalar term.

    With one grouping factor and one random effect per level the Laplace log-likelihood is
    ``sum_g G_g(u~_g) - log M_g / 2``: ``G_g(u) = sum_{i in g} l_i - u^2 / 2`` is the penalized
    log-likelihood of level ``g``, ``u~_g`` its maximizer and ``M_g = -G_g''(u~_g)``.
    Differentiating twice through the modes (implicit function theorem, ``d u~ / dz =
    G_uz / M``) gives the Hessian in ``z = (alpha, beta, theta)`` from the derivatives of ``G``
    up to the fourth order in ``u`` and the second in ``z``.  An observation enters them only
    through its interval ends ``a = theta_y - eta`` and ``b = theta_{y-1} - eta`` (``u`` and
    ``l`` of :class:`CumulativeLinkConditional`; ``u`` is the random effect here), which are
    linear in ``z`` and ``u`` except for ``eta = ... + theta z_i u``: they are sums of the
    partial derivatives of ``log p(a, b)`` (:func:`_log_interval_derivatives`) times the
    directions ``da/dz``, ``db/dz`` and ``da/du = db/du = -theta z_i``.  One call costs about
    as much as one evaluation of the gradient (clmm differentiates numerically instead).

    Arrays keep the observations in the last axis (``(P, n)``), for fast broadcasting.
    """

    def __init__(self, model):
        blk = model.re_design.blocks[0]
        k, p = model.thr.k, model.k_fe
        self.P = P = k + p + 1
        Ju, Jl = model._jacobians()
        n = Ju.shape[0]
        # d a / dz and d b / dz through the thresholds; d eta / dz (theta's row set per call)
        self.TaT, self.TbT, self.ET = np.zeros((P, n)), np.zeros((P, n)), np.zeros((P, n))
        self.TaT[:k], self.TbT[:k] = Ju[:, :k].T, Jl[:, :k].T
        if p:
            self.ET[k:k + p] = model.exog.T
        zx = np.asarray(blk.X[:, 0], dtype=float)
        self.zx = zx
        self.zx_pow = None if np.all(zx == 1.0) else np.array([zx ** s for s in range(1, 5)])
        self.codes, self.m = blk.codes, blk.m
        self.weights = model.cond.weights
        # per-level sums: reduceat over the observations sorted by level
        counts = np.bincount(self.codes, minlength=self.m)
        order = np.argsort(self.codes, kind="stable")
        self._order = None if np.array_equal(order, np.arange(n)) else order
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._reduceat = bool(counts.min() > 0)        # (empty levels: np.add.at)

    def _level_sums(self, arr):
        """Sums over the observations of each level, along the last axis: (..., n) -> (..., m)."""
        if self._order is not None:
            arr = arr[..., self._order]
        if self._reduceat:
            return np.add.reduceat(arr, self._starts, axis=-1)
        out = np.zeros(arr.shape[:-1] + (self.m,))
        np.add.at(out, (Ellipsis, np.sort(self.codes)), arr)
        return out

    def derivatives(self, z, modes, cond):
        """Gradient (P,) and Hessian (P, P) of the log-likelihood at converged modes, and
        ``d u~ / dz`` (m, P) for first-order warm starts."""
        n = modes.eta.shape[0]
        kap = _log_interval_derivatives(cond.interval_moments(modes.eta)).reshape(25, n)
        L = _COMBINATIONS @ kap
        if self.weights is not None:
            L *= self.weights
        # with S = d_a + d_b (= -d / d eta): d_a S^s l, d_b S^s l, S^(s+1) l for s = 0..3 and
        # d_aa S^s l, d_ab S^s l, d_bb S^s l for s = 0..2
        da, db, ds = L[:12].reshape(3, 4, 1, n)
        second = L[12:].reshape(3, 3, n)
        lam, zx, codes = z[-1], self.zx, self.codes
        ET = self.ET
        ET[-1] = zx * modes.u[codes]                                  # d eta / d theta
        J = da * self.TaT + db * self.TbT - ds * ET                   # J[s] = d (S^s l_i) / dz
        s2 = ds[1, 0]                                                 # S^2 l = -w
        # per level, with d a / du = d b / du = -lam z_i: G_uz, G_uuz, G_uuuz (P, m) and
        # -G_uu = M, G_uuu, G_uuuu
        zp = self.zx_pow
        Jz = self._level_sums(J[1:] if zp is None else J[1:] * zp[:3, None, :])
        Sz = self._level_sums(ds[:, 0] if zp is None else ds[:, 0] * zp)
        Guz, Guuz, Guuuz = -lam * Jz[0], lam ** 2 * Jz[1], -lam ** 3 * Jz[2]
        M, g3, g4 = 1.0 - lam ** 2 * Sz[1], -lam ** 3 * Sz[2], lam ** 4 * Sz[3]
        Guz[-1] -= Sz[0]                                              # theta also moves da/du
        Guuz[-1] += 2.0 * lam * Sz[1]
        Guuuz[-1] -= 3.0 * lam ** 2 * Sz[2]
        Mi = 1.0 / M
        U = Guz * Mi                                                  # d u~ / dz
        # D = -log(M) / 2 as a function of (u, z): its derivatives
        Du = 0.5 * g3 * Mi
        Duu = 0.5 * g4 * Mi + 2.0 * Du * Du
        Duz = 0.5 * Mi * Guuuz + (Du * Mi) * Guuz
        grad = J[0].sum(axis=1) + (0.5 * Mi * Guuz + Du * U).sum(axis=1)
        # Hessian = G_zz + G_zu u~_z + D_zz + 2 D_zu u~_z + D_uu u~_z u~_z + D_u u~_zz.  Per
        # observation: G_zz, and G_uzz, G_uuzz (in u~_zz and D_zz) with weights D_u / M, 1 / 2M
        c1, c2 = (Du * Mi)[codes], (0.5 * Mi)[codes]
        q = -lam * zx
        haa, hab, hbb = second[:, 0] + (c1 * q) * second[:, 1] + (c2 * q * q) * second[:, 2]
        Am, Bm = self.TaT - ET, self.TbT - ET                         # d a / dz, d b / dz
        H = (haa * Am + hab * Bm) @ Am.T + (hab * Am + hbb * Bm) @ Bm.T
        v = J[1] @ (-c1 * zx) - J[2] @ (2.0 * c2 * q * zx)           # theta's own d q / d theta
        H[-1] += v
        H[:, -1] += v
        H[-1, -1] += 2.0 * float(c2 @ (zx * zx * s2))
        # per level: products of first derivatives
        W = Duz + (Du * Mi) * Guuz
        H += Guz @ U.T + 0.5 * (Guuz * (Mi * Mi)) @ Guuz.T + W @ U.T + U @ W.T \
            + ((Duu + Du * Mi * g3) * U) @ U.T
        return grad, H, U.T


def _combination_matrix():
    """Rows ``d_a^da d_b^db S^s log p`` (``S = d_a + d_b``) from the flattened (5, 5) kappa."""
    rows = ([(1, 0, s) for s in range(4)] + [(0, 1, s) for s in range(4)]
            + [(0, 0, s + 1) for s in range(4)]
            + [(da, db, s) for da, db in ((2, 0), (1, 1), (0, 2)) for s in range(3)])
    C = np.zeros((len(rows), 25))
    for r, (da, db, s) in enumerate(rows):
        for i in range(s + 1):
            C[r, (da + s - i) * 5 + db + i] += comb(s, i)
    return C


_COMBINATIONS = _combination_matrix()


def _uses_scalar_laplace(model):
    """A single scalar random-effects term and a link with ``d3pdf``: exact Hessian and Newton."""
    des = model.re_design
    return (len(des.blocks) == 1 and des.blocks[0].q == 1
            and type(model.link).d3pdf is not _CumulativeLink.d3pdf)


def _laplace_by_newton(model, obj, z0, attenuate, maxiter, tried):
    """The Newton stage of the Laplace fit for a single scalar term (:func:`_laplace_newton`).

    Returns its OptimizeResult; on success with ``x``, ``jac`` and ``hess_x`` (the starting
    matrix for AGQ) in internal coordinates besides ``x_r`` and ``hess`` in R's, and the modes
    at the optimum left in ``obj`` for warm starts; else ``x`` is the last iterate (R
    coordinates).  None when Newton does not apply or fails at the start.
    """
    if not _uses_scalar_laplace(model):
        return None
    thr, k, p = model.thr, model.thr.k, model.k_fe
    z0 = np.array(z0, dtype=float)
    if attenuate:
        z0[:k + p] *= _attenuation(model, z0[-1])
    opt = _laplace_newton(model, z0, maxiter=min(maxiter, 100))
    tried.append(("Newton (Laplace, exact Hessian)", bool(opt.success), int(opt.nfev)))
    if not opt.success:
        return opt if np.isfinite(opt.fun) else None
    z = opt.x
    x = np.concatenate([thr.psi(z[:k]), z[k:]])
    Jx = np.eye(z.size)                                          # d z / d x
    Jx[:k, :k] = thr.jacobian(x[:k])
    # at the optimum the gradient term of the change of coordinates vanishes
    opt.x_r, opt.x, opt.jac, opt.hess_x = z, x, Jx.T @ opt.jac, Jx.T @ opt.hess @ Jx
    obj.base, obj._fresh = (z.copy(), opt.modes, opt.fun), False
    return opt


def _attenuation(model, theta):
    """``sqrt(1 + theta^2 mean(z^2) / Var(F))``: about the factor by which a random effect of
    standard deviation ``theta |z|`` shrinks the coefficients of the model without it (exact for
    the probit link), so the clm estimates times it are a better start (one Newton step fewer
    on the wine data)."""
    zx = model.re_design.blocks[0].X[:, 0]
    return float(np.sqrt(1.0 + theta * theta * np.mean(zx * zx) / model.link.variance))


def _spd_solve(A, b):
    """``A^-1 b`` by Cholesky for a symmetric positive definite ``A``, None if it is not.

    LAPACK directly: for the handful of parameters numpy's checks cost more than the work."""
    c, info = lapack.dpotrf(A, lower=True)
    if info != 0:
        return None
    x, info = lapack.dpotrs(c, b, lower=True)
    return x if info == 0 and np.all(np.isfinite(x)) else None


def _newton_direction(H, g):
    """``(-(H + tau D)^-1 g, tau)`` with the smallest ``tau`` in 0, 1e-3, 1e-2, ... that makes
    the matrix positive definite (``D`` the absolute diagonal of ``H``): the Newton step where
    ``H`` is positive definite, a shorter and more gradient-like one where it is not (near
    ``theta = 0`` the log-likelihood need not be concave in theta); ``(None, None)`` if none."""
    D = np.maximum(np.abs(np.diag(H)), 1e-8)
    for tau in (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        x = _spd_solve(H + np.diag(tau * D) if tau else H, g)
        if x is not None:
            return -x, tau
    return None, None


def _laplace_newton(model, z0, maxiter=100, dec_tol=1e-12):
    """Newton's method on the Laplace log-likelihood of a single scalar term.

    Steps use the exact Hessian (:class:`_ScalarLaplace`) in clmm's parameters ``z = (alpha,
    beta, theta)``, with backtracking; from the fit without random effects this takes about
    five steps where the quasi-Newton method takes eight and then seven more gradients for a
    difference Hessian.  The modes of a trial point start from their first-order prediction
    ``u~ + (d u~ / dz) dz``.  Converged when the Newton decrement ``g' H^-1 g / 2`` is below
    ``dec_tol`` (the estimates are then within ~1e-6 standard errors of the optimum).

    Returns
    -------
    scipy.optimize.OptimizeResult
        ``x`` (R coordinates), ``fun`` (negative log-likelihood), ``jac``, ``hess`` (of the
        negative log-likelihood at ``x``), ``modes``, ``nit``, ``nfev``, ``success``.
        ``success`` is False when Newton cannot go on (a Hessian that is not positive
        definite, theta heading for its bound, a failed line search); the caller then uses
        the bounded quasi-Newton method, which also handles singular fits.
    """
    from scipy.optimize import OptimizeResult
    sl = model._scalar_laplace()
    k, p = model.thr.k, model.k_fe

    def value(z, u0):
        ll, modes = model.loglike_parts(z[:k], z[k:k + p], z[k + p:], u0=u0)
        ok = modes is not None and modes.converged and np.isfinite(ll)
        return (-ll if ok else np.inf), modes

    def result(success, message):
        return OptimizeResult(x=z, fun=f, jac=g, hess=H, modes=modes, nit=it, nfev=nfev,
                              success=success, message=message)

    z = np.array(z0, dtype=float)
    f, modes = value(z, None)
    nfev, it, g, H = 1, 0, None, None
    halvings = 0                    # consecutive steps that had to be cut to halve theta
    if not np.isfinite(f):
        return result(False, "non-finite log-likelihood at the starting values")
    for it in range(maxiter + 1):
        g, H, U = sl.derivatives(z, modes, model.cond)
        g, H = -g, -H
        if z[-1] < 1e-4:
            return result(False, "theta near its bound")
        d, tau = _newton_direction(H, g)
        if d is None:
            return result(False, "Hessian not positive definite")
        # theta at most halves per step (the log-likelihood is far from quadratic in theta
        # below its optimum); three halvings in a row: theta is heading for its bound
        if z[-1] + d[-1] < 0.5 * z[-1]:
            halvings += 1
            if halvings == 3:
                return result(False, "theta heading for 0 (a singular fit?)")
            d *= -0.5 * z[-1] / d[-1]
            tau = None
        else:
            halvings = 0
        slope = float(g @ d)
        if tau == 0.0 and -0.5 * slope < dec_tol:       # a full Newton step, H positive definite
            return result(True, "Newton decrement below tolerance")
        if it == maxiter:
            break
        t = 1.0
        for _ in range(40):
            zt = z + t * d
            if zt[-1] > 0.0:
                ft, mt = value(zt, modes.u + U @ (zt - z))
                nfev += 1
                if ft <= f + 1e-4 * t * slope:
                    break
            t *= 0.5
        else:
            return result(False, "line search failed to decrease the objective")
        z, f, modes = zt, ft, mt
    return result(False, "maximum number of iterations reached")


# PIRLS tolerance while optimizing (first-order warm starts usually overshoot it by far); the
# Hessian and the final values use the model's tighter default
_OPT_PIRLS_TOL = 1e-14


def _fit_clmm(model, nagq=1, start_params=None, maxiter=500, gtol=1e-6, hessian=True, **kwargs):
    nagq = int(nagq)
    if nagq < 0:
        raise NotImplementedError("non-adaptive Gauss-Hermite quadrature (clmm's nAGQ < 0) is not "
                                  f"implemented; use nagq={-nagq} for adaptive quadrature with "
                                  f"{-nagq} nodes, or nagq=1 for the Laplace approximation")
    if nagq == 0:
        raise ValueError("nagq must be 1 (Laplace approximation; clmm's nAGQ = 0 and 1 both mean "
                         "Laplace) or a number of quadrature nodes > 1")
    des = model.re_design
    if nagq > 1 and len(des.blocks) != 1:
        raise NotImplementedError(
            "adaptive Gauss-Hermite quadrature (nagq > 1) needs a single grouping factor; this model "
            f"has {len(des.blocks)} ({', '.join(b.name for b in des.blocks)}); use nagq=1 (Laplace)")
    if nagq > 1 and des.blocks[0].q > 3:
        raise NotImplementedError("adaptive Gauss-Hermite quadrature supports up to 3 random effects "
                                  f"per level; the term on {des.blocks[0].name!r} has {des.blocks[0].q}")
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    thr = model.thr
    k, p, nt = thr.k, model.k_fe, des.ntheta
    lower_r = np.concatenate([np.full(k + p, -np.inf), des.lower])
    # ---- starting values: the fit without random effects (as clmm), theta = 1
    H_clm = None
    ll_clm = None
    if start_params is None:
        x_clm, ll_clm, H_clm, _ = fit_clm(model.cond, thr, model.exog, model.offset,
                                          jacobians=model._jacobians())
        alpha0, beta0 = x_clm[:k], x_clm[k:]
        theta0 = des.theta_start.copy()
    else:
        sp = np.asarray(start_params, dtype=float)
        if sp.size != k + p + nt:
            raise ValueError(f"start_params needs {k + p + nt} values (threshold parameters {k}, fixed "
                             f"effects {p}, theta {nt}); got {sp.size}")
        alpha0, beta0, theta0 = sp[:k], sp[k:k + p], sp[k + p:]
    lower_x = lower_r
    tried = []

    # ---- Laplace fit (also the start of AGQ): Newton with the exact Hessian for a single
    # scalar term, else (or when Newton cannot go on) bounded quasi-Newton
    obj = _ClmmObjective(model, 1)
    obj.lower_r = lower_r
    exact = _laplace_by_newton(model, obj, np.concatenate([alpha0, beta0, theta0]),
                               attenuate=start_params is None, maxiter=maxiter, tried=tried)
    if exact is not None and exact.success:
        opt, x_hat = exact, exact.x
    else:
        if exact is not None:       # continue from where Newton stopped (it only went downhill)
            alpha0, beta0, theta0 = exact.x[:k], exact.x[k:k + p], exact.x[k + p:]
        exact = None
        x0 = np.concatenate([thr.psi(alpha0), beta0, theta0])
        f0, g0 = obj.fg_x(x0)
        if not np.isfinite(f0):
            raise ValueError("non-finite log-likelihood at the starting values (thresholds "
                             f"{thr.thresholds(alpha0)}, fixed effects {beta0}, theta {theta0})")
        B0 = _initial_hessian(obj, x0, g0, H_clm, k, p, nt)
        obj.tol = _OPT_PIRLS_TOL
        opt = _qn_minimize(obj.fg_x, x0, lower_x, B0=B0, gtol=gtol, maxiter=maxiter, f0g0=(f0, g0))
        tried.append(("BFGS (Laplace)", bool(opt.success), int(obj.nfev)))
        esc = escape_bound(obj.fg_x, opt.x, opt.fun, lower_x)
        if esc is not None:          # a variance stuck at zero although the optimum is inside
            f1, g1 = obj.fg_x(esc[0])
            opt2 = _qn_minimize(obj.fg_x, esc[0], lower_x, B0=B0, gtol=gtol, maxiter=maxiter,
                                f0g0=(f1, g1))
            tried.append(("BFGS (Laplace), restarted off the bound", bool(opt2.success), int(obj.nfev)))
            if opt2.fun < opt.fun:
                opt = opt2
        obj.tol = None
        x_hat = opt.x
    if nagq > 1:
        objq = _ClmmObjective(model, nagq)
        objq.lower_r = lower_r
        objq.base = obj.base
        fq, gq = objq.fg_x(x_hat)
        # the Laplace Hessian in internal coordinates as the starting matrix
        B1 = exact.hess_x if exact is not None else _bfgs_hessian_guess(obj, x_hat)
        objq.tol = _OPT_PIRLS_TOL
        opt = _qn_minimize(objq.fg_x, x_hat, lower_x, B0=B1, gtol=gtol, maxiter=maxiter, f0g0=(fq, gq))
        objq.tol = None
        tried.append((f"BFGS (AGQ, {nagq} nodes)", bool(opt.success), int(objq.nfev)))
        x_hat = opt.x
        obj = objq
        exact = None
    f_hat = opt.fun
    # variance parameters that are practically zero are set to zero (clean singular fits)
    for i in np.flatnonzero(np.isfinite(lower_x)):
        if lower_x[i] < x_hat[i] < lower_x[i] + 1e-4:
            trial = x_hat.copy()
            trial[i] = lower_x[i]
            ft, _ = obj.fg_x(trial)
            if ft <= f_hat + 1e-8:
                x_hat, f_hat = trial, ft
    z_hat = exact.x_r if exact is not None else obj.to_r(x_hat)
    alpha, beta, theta = z_hat[:k], z_hat[k:k + p], z_hat[k + p:]
    pg = np.where(np.isfinite(lower_x) & (x_hat <= lower_x) & (opt.jac > 0), 0.0, opt.jac)
    max_grad = float(np.max(np.abs(pg))) if pg.size else 0.0
    converged = bool(opt.success) or max_grad < 1e-3
    # ---- Hessian in R coordinates, without variance parameters at zero (as clmm)
    free = np.ones(z_hat.size, dtype=bool)
    free[k + p:] = ~(np.isfinite(des.lower) & (theta <= des.lower + 1e-4))
    cov_full = None
    H = None
    if hessian:
        H = exact.hess if exact is not None else obj.hessian_r(z_hat, free)
        try:
            cov_free = np.linalg.inv(H)
            if not np.all(np.isfinite(cov_free)) or np.any(np.diag(cov_free) <= 0):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            warnings.warn("the Hessian of the negative log-likelihood is not positive definite at the "
                          "optimum; standard errors are not available", ConvergenceWarning, stacklevel=3)
            cov_free = np.full((free.sum(), free.sum()), np.nan)
        cov_full = np.full((z_hat.size, z_hat.size), np.nan)
        cov_full[np.ix_(free, free)] = cov_free
    # ---- final state at the optimum (modes and factor)
    if exact is not None:
        llf, modes = -exact.fun, exact.modes
    elif hessian:
        llf, modes = obj.llf_at_hessian
    else:
        llf, modes = model.loglike_parts(alpha, beta, theta, nagq=nagq,
                                         u0=None if obj.base is None else obj.base[1].u)
    if not converged:
        warnings.warn(f"the optimizer did not converge: {opt.message} (tried {tried}; largest "
                      f"projected gradient {max_grad:.3g})", ConvergenceWarning, stacklevel=3)
    opt.tried = tried
    opt.max_grad = max_grad
    opt.nfev = sum(t[2] for t in tried)
    cov_ab = cov_full[:k + p, :k + p] if cov_full is not None else np.full((k + p, k + p), np.nan)
    res = OrdinalMixedResults(model, np.concatenate([alpha, beta]), cov_ab, theta=theta, u=modes.u,
                              sigma=1.0, criterion=-2.0 * llf, optim=opt, nagq=nagq,
                              cov_params_full=cov_full, hessian=H, hessian_free=free,
                              llf_no_re=ll_clm, modes=modes, max_grad=max_grad)
    return MixedResultsWrapper(res)


def _profiled_hessian(model, modes, theta):
    """Hessian in (alpha, beta) of the joint log-likelihood with the modes profiled out.

    ``H_pp + H_pu M^-1 H_up`` at the modes: the second derivatives of
    ``sum_i l_i`` in (alpha, beta) and in (alpha, beta) and ``u``, with
    ``M = Lambda' Z' W Z Lambda + I``.  It leaves out the third-derivative
    terms of the Laplace log-determinant, so it is a close (typically within
    ~15 %) and cheap approximation of the Hessian of the Laplace
    log-likelihood: a good starting matrix for the quasi-Newton iterations.
    """
    cond = model.cond
    lu, ll_, luu, lll, lul = cond.interval_derivatives(modes.eta)
    Ju, Jl = model._jacobians()
    Hpp = (Ju.T * luu) @ Ju + (Jl.T * lll) @ Jl + (Ju.T * lul) @ Jl + (Jl.T * lul) @ Ju
    # d d1_i / d(alpha, beta): d1 = -(l_u + l_l) and (u, l) move with Ju, Jl
    C = -(Ju * (luu + lul)[:, None] + Jl * (lul + lll)[:, None])
    ops = _laplace._zops(model.re_design)
    lams = model.re_design.lambdas(np.asarray(theta, dtype=float))
    fac = _laplace._factor(model.chol, modes)
    Hup = np.column_stack([ops.ztv(C[:, j], lams) for j in range(C.shape[1])])
    Minv_Hup = np.column_stack([fac.solve_re(Hup[:, j]) for j in range(C.shape[1])])
    return Hpp + Hup.T @ Minv_Hup


def _initial_hessian(obj, x0, g0, H_clm, k, p, nt):
    """Starting BFGS matrix: the profiled Hessian (:func:`_profiled_hessian`) at the start,
    else the no-random-effects Hessian, for (psi, beta); a column by forward differences for
    each theta."""
    n = k + p + nt
    B = np.eye(n)
    J = np.eye(k + p)
    J[:k, :k] = obj.thr.jacobian(x0[:k])
    for H in (_try_profiled(obj, x0), H_clm):
        if H is None:
            continue
        Hab = -J.T @ H @ J
        try:
            np.linalg.cholesky(Hab)
            B[:k + p, :k + p] = Hab
            break
        except np.linalg.LinAlgError:
            continue
    if nt <= 4:
        base = obj.base
        for j in range(nt):
            i = k + p + j
            h = 1e-4 * max(1.0, abs(x0[i]))
            xp = x0.copy()
            xp[i] += h
            obj.base, obj._fresh = base, obj._scalar(base)
            f, g = obj.fg_x(xp)
            if np.isfinite(f):
                col = (g - g0) / h
                B[:, i] = col
                B[i, :] = col
        B[k + p:, k + p:] = 0.5 * (B[k + p:, k + p:] + B[k + p:, k + p:].T)
        try:
            np.linalg.cholesky(B)
        except np.linalg.LinAlgError:
            d = np.diag(B).copy()
            B = np.diag(np.where(d > 0, d, 1.0))
    return B


def _try_profiled(obj, x0):
    """The profiled Hessian at the start when the model's factor still holds its modes."""
    if obj.base is None or not (obj._fresh or obj._scalar(obj.base)):
        return None
    z0, modes = obj.base[:2]
    try:
        H = _profiled_hessian(obj.model, modes, z0[obj.k + obj.p:])
    except Exception:  # noqa: BLE001 - only a starting matrix
        return None
    return H if np.all(np.isfinite(H)) else None


def _bfgs_hessian_guess(obj, x):
    """Hessian of the Laplace objective at x in internal coordinates (start for AGQ)."""
    f0, g0 = obj.fg_x(x)
    n = x.size
    H = np.empty((n, n))
    base = obj.base
    lower = obj.lower_r
    for i in range(n):
        h = 1e-5 * max(1.0, abs(x[i]))
        xp = x.copy()
        xp[i] += h
        obj.base, obj._fresh = base, obj._scalar(base)
        _, g = obj.fg_x(xp)
        H[:, i] = (g - g0) / h
    obj.base, obj._fresh = base, False
    H = 0.5 * (H + H.T)
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        d = np.abs(np.diag(H))
        H = np.diag(np.where(d > 0, d, 1.0))
    del lower
    return H


# ============================================================================ results


class OrdinalMixedResults(MixedResults):
    """Results of a cumulative link mixed model fit.

    ``params`` are ``clmm``'s coefficients: the threshold parameters
    (``"1|2", "2|3", ...`` for flexible thresholds) followed by the fixed
    effects; ``cov_params()``, ``bse``, ``conf_int()``, ``t_test()`` refer to
    them (the variance parameters are profiled out of that block of the
    inverse Hessian).  ``fe_params`` / ``bse_fe`` are the fixed effects
    alone and ``thresholds`` the ``K - 1`` thresholds.

    Attributes
    ----------
    thresholds : pandas.Series
        Indexed ``"1|2", "2|3", ...``.
    llf : float
        The log-likelihood (Laplace or AGQ) on ``clmm``'s scale.
    aic : float
        AIC with ``clmm``'s ``edf`` (``k_params``).
    bic : float
        BIC with the sum of the prior weights as the number of
        observations, as ``BIC(clmm)``.
    nagq : int
        1 for Laplace, else the number of quadrature nodes.
    cov_params_full : ndarray
        Inverse of the negative Hessian in (thresholds, fixed effects,
        theta); rows of variance parameters at zero are ``nan``.
    """

    _has_residual = False

    @property
    def _family_name(self):
        return f"ordinal ({self.model.link.name} link)"

    def __init__(self, model, params, cov, **kwargs):
        super().__init__(model, params, cov, reml=False, **kwargs)
        self.nobs = float(np.sum(model.weights))
        self.k_fe = model.k_fe
        self.df_resid = self.nobs - self.k_params
        self.df_model = model.k_fe

    # ------------------------------------------------------------ parameters
    @property
    def k_params(self):
        """Thresholds, fixed effects and variance parameters (``clmm``'s ``edf``)."""
        return self.model.thr.k + self.model.k_fe + len(self.theta)

    @property
    def fe_params(self):
        """The fixed effects alone (without the threshold parameters), a Series."""
        k = self.model.thr.k
        return pd.Series(np.asarray(self.params)[k:], index=self.model.exog_names_fe, name="fe_params")

    @property
    def bse_fe(self):
        """Standard errors of the fixed effects, a Series."""
        k = self.model.thr.k
        se = np.sqrt(np.diag(np.asarray(self.normalized_cov_params)))[k:]
        return pd.Series(se, index=self.model.exog_names_fe, name="bse_fe")

    @property
    def threshold_params(self):
        """The threshold parameters (``clmm``'s ``alpha``) as a Series."""
        k = self.model.thr.k
        return pd.Series(np.asarray(self.params)[:k], index=self.model.thr.names, name="alpha")

    @property
    def thresholds(self):
        """The ``K - 1`` thresholds, indexed ``"1|2", "2|3", ...``."""
        k = self.model.thr.k
        th = self.model.thr.thresholds(np.asarray(self.params)[:k])
        return pd.Series(th, index=self.model.thr.labels, name="thresholds")

    @property
    def bse_thresholds(self):
        """Standard errors of the thresholds (delta method through ``theta = T alpha``)."""
        k = self.model.thr.k
        T = self.model.thr.T
        C = np.asarray(self.normalized_cov_params)[:k, :k]
        return pd.Series(np.sqrt(np.diag(T @ C @ T.T)), index=self.model.thr.labels, name="bse")

    # ------------------------------------------------------------ random effects
    def _block_condvar(self):
        """Conditional covariance of b per block: ``Lambda (Lambda' Z' W Z Lambda + I)^-1 Lambda'`` blocks."""
        model = self.model
        lams = model.re_design.lambdas(self.theta)
        k = model.thr.k
        params = np.asarray(self.params)
        # refresh the factor at the optimum (the model's factor may hold another evaluation)
        _, modes = model.loglike_parts(params[:k], params[k:], self.theta, nagq=1, u0=self._u)
        cv = _laplace._factor(model.chol, modes).condvar_u()
        return [np.einsum("ij,gjk,lk->gil", lam, c, lam) for lam, c in zip(lams, cv)]

    # ------------------------------------------------------------ prediction
    def linear_predictor(self, data=None, re=True):
        """``x' beta`` (+ ``z' b`` when ``re``) + offset, for the fitted rows or new ``data``."""
        model = self.model
        beta = np.asarray(self.fe_params)
        if data is None:
            eta = (model.exog @ beta if model.k_fe else 0.0) + model.offset
            if re:
                eta = eta + self._re_contribution([(t.X, t.codes) for t in model.re_design.terms])
            return np.asarray(eta, dtype=float)
        X, terms, off = model._new_design(data, re=re)
        eta = (X @ beta if model.k_fe else 0.0) + off
        if re:
            eta = eta + self._re_contribution(terms)
        return np.asarray(eta, dtype=float)

    def predict(self, exog=None, data=None, re=True, which="prob", **kwargs):
        """Category probabilities (or the linear predictor) with or without random effects.

        Parameters
        ----------
        exog, data : pandas.DataFrame, optional
            New data with the formula's columns (either name works); the
            fitted rows when omitted.  Levels of a grouping factor not seen
            in fitting get the population value (random effect 0).
        re : bool
            Include the conditional modes of the random effects
            (``re=False``: ``b = 0``, the typical-group probabilities).
        which : {"prob", "cumprob", "linear"}
            ``"prob"``: (n, K) probabilities of each category (rows sum to
            1); ``"cumprob"``: ``P(Y <= j)`` for ``j = 1, ..., K``;
            ``"linear"``: ``x' beta + z' b``.

        Returns
        -------
        pandas.DataFrame or pandas.Series
            Columns are the response categories.
        """
        data = exog if data is None else data
        eta = self.linear_predictor(data, re=re)
        index = self.model.formula_info.get("row_labels") if data is None else getattr(data, "index", None)
        if index is not None and len(index) != len(eta):
            index = None
        if which == "linear":
            return pd.Series(eta, index=index, name="linear_predictor")
        P = category_probabilities(self.model.link, np.asarray(self.thresholds), eta)
        cols = pd.Index(self.model.levels, name=str(self.model.endog_names))
        if which == "prob":
            return pd.DataFrame(P, index=index, columns=cols)
        if which == "cumprob":
            return pd.DataFrame(np.minimum(np.cumsum(P, axis=1), 1.0), index=index, columns=cols)
        raise ValueError("which must be 'prob', 'cumprob' or 'linear'")

    @property
    def fittedvalues(self):
        """Fitted category probabilities (with the conditional modes)."""
        return self.predict()

    @property
    def resid(self):
        raise NotImplementedError("residuals are not defined for an ordinal response; see predict()")

    def _scaled_resid_quantiles(self):
        return None

    # ------------------------------------------------------------ summary
    def summary(self, alpha=0.05, title=None):
        """Summary: fit information, random effects, coefficients and thresholds tables."""
        model = self.model
        ngrps = ", ".join(f"{t.name}: {t.m}" for t in model.re_design.terms)
        method = "Laplace" if self.nagq == 1 else f"adaptive Gauss-Hermite ({self.nagq} nodes)"
        top_left = [("Model:", ["Cumulative link mixed model"]),
                    ("Dependent Variable:", [str(model.endog_names)]),
                    ("Link:", [model.link.name]), ("Threshold:", [model.threshold]),
                    ("Method:", [method]),
                    ("No. Observations:", [str(int(round(self.nobs)))]),
                    ("Groups (levels):", [ngrps])]
        top_right = [("Log-Likelihood:", [f"{self.llf:.4f}"]), ("AIC:", [f"{self.aic:.4f}"]),
                     ("BIC:", [f"{self.bic:.4f}"]), ("Parameters (edf):", [str(self.k_params)]),
                     ("Converged:", ["Yes" if self.converged else "No"]),
                     ("max |gradient|:", [f"{np.max(np.abs(getattr(self.optim, 'jac', [np.nan]))):.2e}"])]
        smry = Summary()
        smry.add_table_2cols(self, gleft=top_left, gright=top_right,
                             title=title or f"Cumulative Link Mixed Model: {model.formula_info.get('formula', '')}")
        smry.tables.append(self._re_table())
        params = np.asarray(self.params)
        bse = np.asarray(self.bse)
        z = np.asarray(self.tvalues)
        pv = np.asarray(self.pvalues)
        ci = np.asarray(self.conf_int(alpha))
        k = model.thr.k
        if model.k_fe:
            sl = slice(k, None)
            smry.tables.append(summary_params((self, params[sl], bse[sl], z[sl], pv[sl], ci[sl]),
                                              yname=str(model.endog_names), xname=model.exog_names_fe,
                                              alpha=alpha, use_t=False, title="Coefficients"))
        sl = slice(0, k)
        smry.tables.append(summary_params((self, params[sl], bse[sl], z[sl], pv[sl], ci[sl]),
                                          yname=str(model.endog_names), xname=list(model.thr.names),
                                          alpha=alpha, use_t=False, title="Threshold coefficients"))
        notes = []
        if model.threshold != "flexible":
            th = self.thresholds
            notes.append("Thresholds: " + ", ".join(f"{i} {v:.4f}" for i, v in th.items()))
        if self.is_singular():
            notes.append("Boundary (singular) fit: a random-effects variance is estimated at zero; "
                         "its parameter is left out of the Hessian (as clmm does).")
        if model.nrows_dropped:
            notes.append(f"{model.nrows_dropped} rows with missing values were dropped.")
        if not self.converged:
            notes.append(f"The optimizer did not converge: {self.optim.message} (tried {self.optim.tried}).")
        if notes:
            smry.add_extra_txt(notes)
        return smry

    def __repr__(self):
        return (f"<{type(self).__name__}: {self.model.formula_info.get('formula', '')}, "
                f"{self.model.link.name}, nagq={self.nagq}, llf={self.llf:.4f}>")
