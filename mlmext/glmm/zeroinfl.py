"""Zero-inflated and hurdle counts given the linear predictor (glmmTMB's ``ziformula``).

:class:`ZeroInflatedConditional` is ``y | eta`` for four models, with ``eta = log mu`` the
linear predictor of the count part (which carries the random effects) and
``logit(pi) = X_zi gamma`` the zero-inflation part (fixed effects only):

* zero-inflated (``hurdle=False``): ``y = 0`` with probability ``pi``, else ``y ~ f(mu)``;
* hurdle (``hurdle=True``, glmmTMB's ``truncated_poisson`` / ``truncated_nbinom2``):
  ``P(y = 0) = pi``; the positives follow the zero-truncated ``f(mu)``;

``f`` the Poisson, NB2 (``Var = mu + alpha mu^2``) or NB1 (``Var = mu (1 + phi)``, glmmTMB's
``nbinom1``) distribution.  The model's own parameters (``k_extra``) are ``gamma`` and, for
NB2 / NB1, ``log alpha`` / ``log phi``.

The Laplace approximation is glmmTMB's: the PIRLS weights ``w`` are the observed information
``-d^2 l / d eta^2`` (so PIRLS is Newton's method and the determinant is the exact Hessian in
the random effects).  For the zeros of a zero-inflated model it is negative where
``mu (1 - r) > 1`` (Poisson; ``r`` the posterior probability of a count-process zero): the
log-density is not concave in ``eta``.  ``allow_negative_weights`` lets the engine's
scalar and dense paths take such observations as long as the penalized information stays
positive definite; where it is not (away from the modes) :meth:`fisher_weights` gives the step
a positive curvature instead (the expected information of those observations).
"""
from __future__ import annotations

import numpy as np
from scipy import special

from .. import laplace as lp
from .conditional import _lgamma_ratio
from .nb1 import NB1Conditional

__all__ = ["ZeroInflatedConditional"]


def _softplus(x):
    return np.logaddexp(0.0, x)


class ZeroInflatedConditional(lp.ConditionalModel):
    """``y | eta`` for zero-inflated or hurdle Poisson / NB2 / NB1 counts (log link).

    Parameters
    ----------
    endog : ndarray
        Non-negative integer counts.
    exog_zi : ndarray
        (n, k_zi) design of the zero-inflation (hurdle: zero) probability, logit link.
    nb : bool
        NB2 counts (parameter ``log alpha`` after the zero-inflation coefficients).
    hurdle : bool
        Hurdle model (zero-truncated counts) instead of zero inflation.
    nb1 : bool
        NB1 counts (parameter ``log phi`` after the zero-inflation coefficients); ``nb`` is
        then ignored.

    Notes
    -----
    Per observation, with ``s = logit pi``, ``L0 = log f(0 | mu)`` (Poisson ``-mu``, NB2
    ``-log(1 + alpha mu) / alpha``, NB1 ``-mu log(1 + phi) / phi``) and ``log f`` the count
    log-density:

    * zero-inflated, ``y = 0``: ``l = logaddexp(s, L0) - softplus(s)``;
      ``y > 0``: ``l = -softplus(s) + log f(y)``;
    * hurdle, ``y = 0``: ``l = -softplus(-s)``; ``y > 0``:
      ``l = -softplus(s) + log f(y) - log(1 - exp(L0))``.

    The derivatives in ``eta`` (to the third, for the exact Laplace gradient) and in ``s``
    and ``log alpha`` follow by the chain rule from those of ``log f`` and ``L0``.
    """

    canonical = True                  # w is the observed information: h = w
    allow_negative_weights = True

    def __init__(self, endog, exog_zi, nb=False, hurdle=False, nb1=False):
        self.y = np.asarray(endog, dtype=float)
        self.Xzi = np.asarray(exog_zi, dtype=float)
        self.nb1 = bool(nb1)
        self.nb, self.hurdle = bool(nb) and not self.nb1, bool(hurdle)
        # NB1's count part (its log-density and derivatives in eta and log phi)
        self._nb1c = NB1Conditional(self.y) if self.nb1 else None
        self.k_zi = self.Xzi.shape[1]
        self.k_extra = self.k_zi + int(self.nb or self.nb1)
        self.zero = self.y == 0
        self.lgy1 = special.gammaln(self.y + 1.0)
        self.loglik_scale = float(np.sum(self.lgy1)) + self.y.size
        self.set_params(np.zeros(self.k_extra))

    # -- parameters
    def set_params(self, extra):
        extra = np.asarray(extra, dtype=float)
        self.gamma = extra[:self.k_zi].copy()
        self.s = self.Xzi @ self.gamma
        self.pi = special.expit(self.s)
        if self.nb:
            self.alpha = float(np.exp(extra[self.k_zi]))
            self.r = 1.0 / self.alpha
            self._lg = _lgamma_ratio(self.y, self.r) - self.lgy1
        if self.nb1:
            self.phi = float(np.exp(extra[self.k_zi]))
            self._nb1c.set_phi(self.phi)

    def get_params(self):
        disp = [np.log(self.alpha)] if self.nb else [np.log(self.phi)] if self.nb1 else []
        return np.concatenate([self.gamma, disp])

    # -- the count distribution: log f and its derivatives; L0 = log f(0) and its derivatives
    def _count(self, eta, third=True):
        """``(logf, f1, fh, fdh, L0, L1, L2, L3)``: ``f1 = (log f)'``, ``fh = -(log f)''``,
        ``fdh = fh'``; ``Lk`` the k-th derivative of ``L0`` in eta."""
        y = self.y
        mu = np.exp(eta)
        if self.nb1:
            return self._count_nb1(eta)
        if not self.nb:
            logf = y * eta - mu - self.lgy1
            return logf, y - mu, mu, mu, -mu, -mu, -mu, -mu
        a, r = self.alpha, self.r
        am = a * mu
        den = 1.0 + am
        lam = np.log1p(am)
        logf = self._lg + y * eta - (y + r) * lam
        f1 = (y - mu) / den
        fh = mu * (1.0 + a * y) / den ** 2
        fdh = (1.0 + a * y) * mu * (1.0 - am) / den ** 3
        L1 = -mu / den
        L2 = L1 / den
        L3 = L2 * (1.0 - am) / den
        return logf, f1, fh, fdh, -r * lam, L1, L2, L3

    def _count_nb1(self, eta):
        """:meth:`_count` for NB1: with ``k = mu / phi`` and ``A, B, C`` the digamma, trigamma
        and tetragamma differences of ``y + k`` and ``k`` (less ``log(1 + phi)`` in ``A``),
        ``(log f)' = k A``, ``-(log f)'' = -k A - k^2 B``, its derivative
        ``-(k A + 3 k^2 B + k^3 C)``; ``L0 = -k log(1 + phi)`` is linear in ``mu``, so all its
        derivatives in eta equal it."""
        c = self._nb1c
        k = c._k(eta)
        A, B, C = c._abc(k, 3)
        L0 = -k * c.c
        fh = -k * A - k * k * B
        fdh = -(k * A + 3.0 * k * k * B + k ** 3 * C)
        return c.loglik_obs(eta), k * A, fh, fdh, L0, L0, L0, L0

    def _count_nb1_phi(self, eta):
        """:meth:`_count_alpha` for NB1, in ``log phi`` (``dk / d log phi = -k``,
        ``d log(1 + phi) / d log phi = q = phi / (1 + phi)``)."""
        c = self._nb1c
        k = c._k(eta)
        A, B, C = c._abc(k, 3)
        logf_t = -k * A - k * c.q + self.y / (1.0 + c.phi)
        f1_t = -k * A - k * k * B - k * c.q
        fh_t = k * A + 3.0 * k * k * B + k ** 3 * C + k * c.q
        L0_t = k * (c.c - c.q)
        return logf_t, f1_t, fh_t, L0_t, L0_t, L0_t

    def _count_alpha(self, eta):
        """Derivatives in ``log alpha``: ``(logf_t, f1_t, fh_t, L0_t, L1_t, L2_t)``."""
        if self.nb1:
            return self._count_nb1_phi(eta)
        a, r, y = self.alpha, self.r, self.y
        mu = np.exp(eta)
        am = a * mu
        den = 1.0 + am
        lam = np.log1p(am)
        logf_t = a * (-r * r * (special.digamma(y + r) - special.digamma(r) - lam)
                      + y / a - (y + r) * mu / den)
        f1_t = -a * (y - mu) * mu / den ** 2
        fh_t = a * mu * (y * den - 2.0 * mu * (1.0 + a * y)) / den ** 3
        L0_t = r * lam - mu / den
        L1_t = a * mu * mu / den ** 2
        L2_t = 2.0 * a * mu * mu / den ** 3
        return logf_t, f1_t, fh_t, L0_t, L1_t, L2_t

    # -- the pieces of the two models
    def _pieces(self, eta):
        """``(l, d1, h, dh)`` per observation and the intermediate quantities."""
        eta = np.asarray(eta, dtype=float)
        s, z = self.s, self.zero
        with np.errstate(all="ignore"):
            logf, f1, fh, fdh, L0, L1, L2, L3 = self._count(eta)
            if not self.hurdle:
                r0 = special.expit(L0 - s)           # P(count zero | y = 0)
                v = r0 * (1.0 - r0)
                l = np.where(z, np.logaddexp(s, L0), logf) - _softplus(s)
                d1 = np.where(z, r0 * L1, f1)
                h = np.where(z, -(r0 * L2 + v * L1 * L1), fh)
                dh = np.where(z, -(r0 * L3 + 3.0 * v * L1 * L2 + v * (1.0 - 2.0 * r0) * L1 ** 3),
                              fdh)
                aux = (L0, L1, L2, r0, v)
            else:
                g = 1.0 / np.expm1(-L0)               # f(0) / (1 - f(0))
                G = g * (1.0 + g)
                T = np.log(-np.expm1(L0))
                T1 = -g * L1
                T2 = -g * L2 - G * L1 * L1
                T3 = -g * L3 - 3.0 * G * L1 * L2 - G * (1.0 + 2.0 * g) * L1 ** 3
                l = np.where(z, -_softplus(-s), logf - T - _softplus(s))
                d1 = np.where(z, 0.0, f1 - T1)
                h = np.where(z, 0.0, fh + T2)
                dh = np.where(z, 0.0, fdh + T3)
                aux = (L0, L1, L2, g, G)
        return l, d1, h, dh, aux

    # -- the protocol
    def loglik_obs(self, eta):
        return self._pieces(eta)[0]

    def derivatives(self, eta):
        _, d1, h, _, _ = self._pieces(eta)
        return d1, h

    def loglik_derivs(self, eta):
        l, d1, h, _, _ = self._pieces(eta)
        return l, d1, h

    def hessian_terms(self, eta):
        _, _, h, dh, _ = self._pieces(eta)
        return h, dh

    def fisher_weights(self, eta):
        """Positive step weights: the observed information where it is positive, else the
        expected information of the observation (its mean over ``y``)."""
        eta = np.asarray(eta, dtype=float)
        _, _, h, _, (L0, L1, L2, *_) = self._pieces(eta)
        mu = np.exp(eta)
        pi = self.pi
        with np.errstate(all="ignore"):
            if self.nb:
                den = 1.0 + self.alpha * mu
                ic = mu / den
            elif self.nb1:                    # the GLM weight (a positive step weight only)
                den, ic = 1.0, mu / (1.0 + self.phi)
            else:
                den, ic = 1.0, mu
            f0 = np.exp(L0)
            if not self.hurdle:
                # E[d1^2] = (1 - pi) (I_count - f0 L1^2 pi / P(0))
                info = (1.0 - pi) * (ic - f0 * L1 * L1 * pi / (pi + (1.0 - pi) * f0))
            else:
                # (1 - pi) E_trunc[-l''] with E_trunc[y] = mu / (1 - f0)
                g = 1.0 / np.expm1(-L0)
                ey = mu / (-np.expm1(L0))
                efh = mu * (1.0 + (self.alpha if self.nb else 0.0) * ey) / den ** 2
                if self.nb1:              # E_trunc of -(log f)'' from the GLM weight: positive
                    efh = (ic + f0 * L0) / (-np.expm1(L0))
                info = (1.0 - pi) * (efh - g * L2 - g * (1.0 + g) * L1 * L1)
        return np.where(h > 0, h, np.maximum(info, 1e-12 * np.maximum(mu, 1e-300)))

    def param_derivatives(self, eta):
        """Derivatives of ``loglik_i``, ``d1_i`` and ``w_i`` in (gamma, log alpha), each (n, k_extra)."""
        eta = np.asarray(eta, dtype=float)
        z, pi = self.zero, self.pi
        _, _, _, _, aux = self._pieces(eta)
        with np.errstate(all="ignore"):
            if not self.hurdle:
                L0, L1, L2, r0, v = aux
                dl_s = np.where(z, 1.0 - r0, 0.0) - pi
                dd1_s = np.where(z, -v * L1, 0.0)
                dh_s = np.where(z, v * (L2 + (1.0 - 2.0 * r0) * L1 * L1), 0.0)
            else:
                dl_s = np.where(z, 1.0, 0.0) - pi
                dd1_s = dh_s = np.zeros_like(pi)
            X = self.Xzi
            dl, dd1, dh = dl_s[:, None] * X, dd1_s[:, None] * X, dh_s[:, None] * X
            if self.nb or self.nb1:
                logf_t, f1_t, fh_t, L0_t, L1_t, L2_t = self._count_alpha(eta)
                if not self.hurdle:
                    lt = np.where(z, r0 * L0_t, logf_t)
                    d1t = np.where(z, v * L0_t * L1 + r0 * L1_t, f1_t)
                    ht = np.where(z, -(v * L0_t * L2 + r0 * L2_t + (1.0 - 2.0 * r0) * v * L0_t * L1 * L1
                                       + 2.0 * v * L1 * L1_t), fh_t)
                else:
                    L0, L1, L2, g, G = aux
                    T_t = -g * L0_t
                    T1_t = -(G * L0_t * L1 + g * L1_t)
                    T2_t = -(G * L0_t * L2 + g * L2_t + (1.0 + 2.0 * g) * G * L0_t * L1 * L1
                             + 2.0 * G * L1 * L1_t)
                    lt = np.where(z, 0.0, logf_t - T_t)
                    d1t = np.where(z, 0.0, f1_t - T1_t)
                    ht = np.where(z, 0.0, fh_t + T2_t)
                dl = np.column_stack([dl, lt])
                dd1 = np.column_stack([dd1, d1t])
                dh = np.column_stack([dh, ht])
        return dl, dd1, dh

    # -- means and simulation
    def mean(self, eta):
        """``E[y]``: ``(1 - pi) mu`` (zero-inflated), ``(1 - pi) mu / (1 - f(0))`` (hurdle)."""
        mu = np.exp(np.asarray(eta, dtype=float))
        if not self.hurdle:
            return (1.0 - self.pi) * mu
        return (1.0 - self.pi) * mu / -np.expm1(self._log_f0(mu))

    def _log_f0(self, mu):
        if self.nb1:
            return -mu * np.log1p(self.phi) / self.phi
        return -np.log1p(self.alpha * mu) / self.alpha if self.nb else -mu

    def variance(self, eta):
        """``Var[y]`` of the full model (for Pearson residuals)."""
        mu = np.exp(np.asarray(eta, dtype=float))
        pi = self.pi
        vc = mu + (self.alpha * mu * mu if self.nb else self.phi * mu if self.nb1 else 0.0)
        if not self.hurdle:
            return (1.0 - pi) * (vc + pi * mu * mu)
        p = 1.0 - pi
        q = -np.expm1(self._log_f0(mu))
        m1 = mu / q                                   # truncated mean
        m2 = (vc + mu * mu) / q                       # truncated second moment
        return p * m2 - (p * m1) ** 2

    def pearson_resid(self, eta):
        return (self.y - self.mean(eta)) / np.sqrt(self.variance(eta))

    def loglike_saturated(self):
        return np.nan
