"""The NB1 negative binomial mixed model: ``Var(y | u) = mu (1 + phi)``, glmmTMB's ``nbinom1``.

:class:`NB1Conditional` implements :class:`mlmext.laplace.ConditionalModel` (log link,
parameter ``log phi``) and is usable on its own (e.g. by zero-inflated models);
:class:`NB1MixedModel` is what ``glmer_nb(..., variance="nb1")`` builds.
"""
from __future__ import annotations

import numpy as np
from scipy import special
from statsmodels.genmod import families

from .. import laplace as lp
from .._args import reject_unknown
from .nb import NegativeBinomialMixedModel
from .phifamily import PhiFamilyMixin, WorkingWeights, reject_weights

__all__ = ["NB1Conditional", "NB1Family", "NB1MixedModel"]


def _trigamma(x):
    """``psi'(x) = zeta(2, x)`` (scipy's polygamma adds a Python layer around the same zeta)."""
    return special.zeta(2.0, x)


def _tetragamma(x):
    """``psi''(x) = -2 zeta(3, x)``."""
    return -2.0 * special.zeta(3.0, x)


class NB1Conditional(lp.ConditionalModel):
    """NB1 counts given eta (log link): ``Var = mu (1 + phi)``, parameter ``log phi``.

    ``y ~ NB(size = mu / phi, prob = 1 / (1 + phi))`` (glmmTMB's ``nbinom1``)::

        log p = lgamma(y + k) - lgamma(k) - lgamma(y + 1) - k log(1 + phi)
                + y log(phi / (1 + phi)),     k = mu / phi.

    ``w`` is the observed information ``-d^2 log p / d eta^2`` (glmmTMB's Laplace), which is
    negative for single observations far above their mean when ``k`` is small (e.g. y >= 3
    with mu << phi); :attr:`allow_negative_weights` lets PIRLS' one-scalar-term path take
    them.  Inside :meth:`working` (lme4's first stage, which only has to find modes) ``w`` is
    positive: the observed information where it is, else the GLM weight ``mu / (1 + phi)``.

    Parameters
    ----------
    endog : ndarray
        Counts.
    phi : float
        The dispersion.
    prior_weights : ndarray, optional
        Multipliers of each observation's log-likelihood (and so of all derivatives), e.g.
        the posterior weights of a mixture; None for 1.
    """

    k_extra = 1
    vectorized_eta = True
    allow_negative_weights = True
    _SUM_MAX = 64

    def __init__(self, endog, phi=1.0, prior_weights=None):
        self.y = np.asarray(endog, dtype=float)
        self.pw = None if prior_weights is None else np.asarray(prior_weights, dtype=float)
        self.lgy1 = special.gammaln(self.y + 1.0)
        self.loglik_scale = float(np.sum(self.lgy1 if self.pw is None else self.pw * self.lgy1))
        self.ww = WorkingWeights()
        # the rows of the finite sums of _abc: for each j, the whole counts above j (<= _SUM_MAX)
        y = self.y
        whole = (y == np.floor(y)) & (y <= self._SUM_MAX)
        self._sum_rows = np.flatnonzero(whole & (y > 0))
        counts = y[self._sum_rows].astype(np.int64)
        self._pair_row = np.repeat(self._sum_rows, counts)
        self._pair_start = np.cumsum(counts) - counts
        self._pair_j = (np.arange(counts.sum()) - np.repeat(self._pair_start, counts)).astype(float)
        self._big_idx = np.flatnonzero(~whole & (y > 0))
        self.set_phi(phi)

    @property
    def canonical(self):
        """With the observed information as ``w`` PIRLS is Newton's method (``h = w``)."""
        return not self.ww.on

    def working(self):
        """Context: positive weights as ``w`` (lme4's first stage; see the class)."""
        return self.ww

    # -- the parameter
    def set_phi(self, phi):
        self.phi = float(phi)
        self.c = float(np.log1p(self.phi))                 # log(1 + phi)
        self.q = self.phi / (1.0 + self.phi)               # d log(1 + phi) / d log phi
        self._ylp = self.y * (np.log(self.phi) - self.c)   # y log(phi / (1 + phi))

    def set_params(self, extra):
        self.set_phi(float(np.exp(extra[0])))

    def get_params(self):
        return np.array([np.log(self.phi)])

    # -- pieces: k and the digamma differences A, B, C of y + k and k
    def _wt(self, *arrays):
        """The arrays times the prior weights (on the last, observation axis)."""
        if self.pw is None:
            return arrays if len(arrays) > 1 else arrays[0]
        out = tuple(a * self.pw for a in arrays)
        return out if len(out) > 1 else out[0]

    def _k(self, eta):
        return np.exp(np.asarray(eta, dtype=float)) / self.phi

    def _abc(self, k, order=2):
        """``A = psi(y + k) - psi(k) - log(1 + phi)``, ``B``, ``C``: the trigamma and
        tetragamma differences.  For whole counts up to ``_SUM_MAX`` the differences are the
        finite sums ``sum_j 1 / (k + j)``, ``-1 / (k + j)^2``, ``2 / (k + j)^3`` (j < y): exact
        where the polygammas cancel (k large) and ~10 times faster than scipy's zeta-based
        polygamma; zero counts give zeros."""
        A, B = np.zeros(k.shape), np.zeros(k.shape)
        C = np.zeros(k.shape) if order >= 3 else None
        pos = self._sum_rows
        if pos.size:
            # one term per (row, j < y) pair, rows grouped: sums by add.reduceat
            inv = 1.0 / (k[..., self._pair_row] + self._pair_j)
            inv2 = inv * inv
            A[..., pos] = np.add.reduceat(inv, self._pair_start, axis=-1)
            B[..., pos] = -np.add.reduceat(inv2, self._pair_start, axis=-1)
            if C is not None:
                C[..., pos] = 2.0 * np.add.reduceat(inv2 * inv, self._pair_start, axis=-1)
        big = self._big_idx
        if big.size:
            kb = k[..., big]
            yk = self.y[big] + kb
            A[..., big] = special.digamma(yk) - special.digamma(kb)
            B[..., big] = _trigamma(yk) - _trigamma(kb)
            if C is not None:
                C[..., big] = _tetragamma(yk) - _tetragamma(kb)
        A -= self.c
        return (A, B) if C is None else (A, B, C)

    # -- the protocol
    @np.errstate(all="ignore")
    def loglik_obs(self, eta):
        mu = np.exp(np.asarray(eta, dtype=float))
        k = mu / self.phi
        ll = -k * self.c - self.lgy1
        # lgamma(y + k) - lgamma(k) + y log phi = sum_j log(mu + j phi) for whole counts: no
        # cancellation as phi -> 0 (k -> inf, Poisson-like data), where the log-gammas of ~k
        # lose eps k log k
        pos = self._sum_rows
        if pos.size:
            t = np.log(mu[..., self._pair_row] + self._pair_j * self.phi)
            ll[..., pos] += np.add.reduceat(t, self._pair_start, axis=-1) - self.y[pos] * self.c
        big = self._big_idx
        if big.size:
            kb = k[..., big]
            ll[..., big] += special.gammaln(self.y[big] + kb) - special.gammaln(kb) + self._ylp[big]
        return self._wt(ll)

    @np.errstate(all="ignore")
    def derivatives(self, eta):
        k = self._k(eta)
        A, B = self._abc(k)
        d1 = k * A
        h = -d1 - k * k * B
        if self.ww.on:          # Newton where it can be, the GLM weight where h < 0
            h = np.where(h > 0, h, k * self.phi / (1.0 + self.phi))
        return self._wt(d1, h)

    def loglik_derivs(self, eta):
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    @np.errstate(all="ignore")
    def hessian_terms(self, eta):
        k = self._k(eta)
        A, B, C = self._abc(k, 3)
        h = -k * A - k * k * B
        dh = -(k * A + 3.0 * k * k * B + k ** 3 * C)
        if self.ww.on:          # (the first stage has no gradient: dw is not needed there)
            dh = np.where(h > 0, dh, k * self.phi / (1.0 + self.phi))
        return self._wt(h, dh)

    @np.errstate(all="ignore")
    def param_loglik_derivatives(self, eta):
        """``d loglik_i / d log phi``: ``-k A - k phi / (1 + phi) + y / (1 + phi)``."""
        k = self._k(eta)
        A = self._abc(k, 1)[0]
        return self._wt(-k * A - k * self.q + self.y / (1.0 + self.phi))[..., None]

    @np.errstate(all="ignore")
    def param_derivatives(self, eta):
        """Derivatives of loglik, d1 and w in ``log phi`` (``dk / d log phi = -k``)."""
        k = self._k(eta)
        A, B, C = self._abc(k, 3)
        dl = -k * A - k * self.q + self.y / (1.0 + self.phi)
        dd1 = -k * A - k * k * B - k * self.q
        dw = k * A + 3.0 * k * k * B + k ** 3 * C + k * self.q
        if self.ww.on:                       # the GLM weight mu / (1 + phi) where h < 0
            dw = np.where(-k * A - k * k * B > 0, dw, -k * self.phi / (1.0 + self.phi) * self.q)
        dl, dd1, dw = self._wt(dl, dd1, dw)
        return dl[:, None], dd1[:, None], dw[:, None]

    @np.errstate(all="ignore")
    def loglike_saturated(self):
        """Sum of the log-likelihood at ``mu = y`` (zero counts: the limit ``mu -> 0``, 0)."""
        y = self.y
        k = y / self.phi
        ll = special.gammaln(y + k) - special.gammaln(np.where(y > 0, k, 1.0)) - self.lgy1 \
            - k * self.c + self._ylp
        return float(np.sum(self._wt(np.where(y > 0, ll, 0.0))))

    def mean(self, eta):
        return np.exp(eta)

    def variance(self, mu):
        return mu * (1.0 + self.phi)

    def pearson_resid(self, eta):
        mu = np.exp(np.asarray(eta, dtype=float))
        v = mu * (1.0 + self.phi)
        if self.pw is not None:
            v = v / np.where(self.pw > 0, self.pw, 1.0)
        return (self.y - mu) / np.sqrt(v)


class _NB1Variance(families.varfuncs.VarianceFunction):
    """``V(mu) = mu (1 + phi)``."""

    def __init__(self, phi=1.0):
        self.phi = float(phi)

    def __call__(self, mu):
        return np.asarray(mu, dtype=float) * (1.0 + self.phi)

    def deriv(self, mu):
        return np.full_like(np.asarray(mu, dtype=float), 1.0 + self.phi)


class NB1Family(families.Family):
    """The NB1 negative binomial (log link), ``Var = mu (1 + phi)``, as a family object.

    Only the link and the variance function are statsmodels'; the likelihood is
    :class:`NB1Conditional`'s.  ``phi`` is the model's estimate on results
    (``results.family``), 1 on the model.
    """

    links = [families.links.Log]
    safe_links = [families.links.Log]

    def __init__(self, phi=1.0):
        self.phi = float(phi)
        super().__init__(families.links.Log(), _NB1Variance(phi))

    def loglike_obs(self, endog, mu, var_weights=1.0, scale=1.0):
        cond = NB1Conditional(endog, self.phi)
        return cond.loglik_obs(np.log(mu)) * var_weights

    def resid_dev(self, *args, **kwargs):
        raise NotImplementedError("NB1 deviance residuals are not implemented; use Pearson "
                                  "residuals (results.resid_pearson)")


NB1Family.__name__ = "NegativeBinomial1"


class NB1MixedModel(PhiFamilyMixin, NegativeBinomialMixedModel):
    """NB1 negative binomial (log link) mixed model, ``Var(y | u) = mu (1 + phi)``.

    Usually created with ``mlmext.formula.api.glmer_nb(..., variance="nb1")``.
    glmmTMB's ``nbinom1``: the Laplace approximation with the observed information, the
    dispersion ``phi`` (glmmTMB's ``sigma()``) estimated jointly with theta and beta, and
    standard errors from the Hessian in all of them.

    Parameters
    ----------
    information : {None, "observed"}
        Only glmmTMB's (observed) information: the NB1 expected information has no closed
        form.  The model is otherwise as :class:`NegativeBinomialMixedModel`.
    """

    _api_name = "glmer_nb"
    _init_hints = {
        **NegativeBinomialMixedModel._init_hints,
        "family": "glmer_nb(..., variance='nb1')'s family is always the NB1 negative binomial "
                  "(log link) with phi estimated with the other parameters: remove family=",
    }
    _extra_name = "phi"
    _family_label = "NB1 negative binomial"
    _negative_weights_hint = ("; the NB2 negative binomial (glmer_nb's default variance='nb2') "
                              "has a positive observed information and fits any design")

    def __init__(self, endog, exog, re_design, weights=None, offset=None, link=None,
                 information=None, **kwargs):
        family = kwargs.pop("family", None)
        if family is not None and not isinstance(family, NB1Family):
            reject_unknown({"family": family}, "glmer_nb()", hints=self._init_hints)
        if information not in (None, "observed"):
            if information == "expected":
                raise NotImplementedError(
                    "information='expected' for the NB1 negative binomial: its expected "
                    "information has no closed form (an infinite sum); NB1 fits use the "
                    "observed information (glmmTMB's Laplace)")
            raise ValueError(f"information must be 'observed' for NB1; got {information!r}")
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, link=link,
                         information="observed", **kwargs)
        self._init_keys = [k for k in self._init_keys if k != "information"]
        reject_weights(self)

    @property
    def family(self):
        """The NB1 family (log link), phi = 1; the results' ``family`` has the estimate."""
        return NB1Family()

    def _make_conditional(self):
        return NB1Conditional(self.endog)

    def _start_extra(self, modes):
        """log phi from the Pearson dispersion at the first-stage modes (moments of y alone
        before them): ``phi = mean((y - mu)^2 / mu) - 1``."""
        y = self.endog
        if modes is None:
            m = float(np.mean(y))
            phi = float(np.var(y)) / m - 1.0 if m > 0 else 1.0
        else:
            mu = np.exp(modes.eta)
            phi = float(np.mean((y - mu) ** 2 / mu)) - 1.0
        if not np.isfinite(phi):
            phi = 1.0
        return np.array([np.log(min(max(phi, 1e-2), 1e3))])

    def _simulate(self, mu, phi, rng):
        """NB1 draws: gamma-Poisson with shape ``mu / phi`` and scale ``phi``."""
        return rng.poisson(rng.gamma(mu / phi, phi)).astype(float)

    def _results_family(self, phi):
        return NB1Family(phi)

    def _phi_note(self, phi):
        return (f"NB1 dispersion phi = {phi:.5g} (Var = mu (1 + phi); glmmTMB's nbinom1 "
                f"sigma() = phi; statsmodels' NegativeBinomial(loglike_method='nb1') alpha = phi).")
