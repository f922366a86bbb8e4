"""Results of zero-inflated and hurdle mixed models: the zero-inflation table, predict, simulate.
"""
from __future__ import annotations

from functools import cached_property as cache_readonly
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import special, stats

from ..printing import params_table
from ..results import add_notes
from .nb1 import NB1Family
from .results import GLMMResults

__all__ = ["ZeroInflatedResults"]


class ZeroInflatedResults(GLMMResults):
    """Results of a :class:`~mlmext.glmm.zimodel.ZeroInflatedMixedModel` fit.

    Besides :class:`GLMMResults`: ``zi_params`` and ``bse_zi`` (the zero-inflation
    coefficients, logit scale, with glmmTMB's standard errors), ``cov_params_zi()``, ``alpha``
    (NB2) or ``phi`` (NB1), and :meth:`predict` with glmmTMB's types.  ``params`` and
    ``cov_params()`` are the count model's, as ``fixef(fit)$cond`` and ``vcov(fit)$cond``.
    """

    _which = {"mean": "the mean of y (glmmTMB's type='response')",
              "linear": "the linear predictor of the count model (type='link')",
              "conditional": "the mean of the count part (type='conditional')",
              "zprob": "the zero-inflation (hurdle: zero) probability (type='zprob')",
              "zlink": "the zero-inflation linear predictor (type='zlink')"}
    _which_hints = {"response": "mean", "link": "linear", "eta": "linear", "mu": "mean",
                    "count": "conditional", "zi": "zprob"}

    @property
    def _family_name(self):
        m = self.model
        base = (f"Negative Binomial [alpha = {self.alpha:.4g}]" if m._nb else
                f"NB1 [phi = {self.phi:.4g}]" if m._nb1 else "Poisson")
        return f"{base}, {'hurdle' if m.hurdle else 'zero-inflated'}"

    @property
    def zi_params(self):
        """Zero-inflation coefficients (logit of the zero-inflation / zero probability)."""
        return pd.Series(self._zi_params, index=self.model.exog_zi_names, name="zi_params")

    def cov_params_zi(self):
        """Covariance of the zero-inflation coefficients (inverse Hessian in all parameters)."""
        k = self._zi_params.size
        names = self.model.exog_zi_names
        return pd.DataFrame(self._cov_extra[:k, :k], index=names, columns=names)

    @property
    def bse_zi(self):
        """Standard errors of the zero-inflation coefficients, a Series."""
        return pd.Series(np.sqrt(np.diag(self.cov_params_zi().to_numpy())),
                         index=self.model.exog_zi_names, name="bse_zi")

    @property
    def bse_log_alpha(self):
        """Standard error of log alpha (NB2; glmmTMB's of ``log theta``); None otherwise."""
        return float(np.sqrt(self._cov_extra[-1, -1])) if self.model._nb else None

    @property
    def phi(self):
        """NB1 dispersion (``Var = mu (1 + phi)`` of the count part; glmmTMB's ``sigma()``);
        None otherwise."""
        return float(self._alpha) if self.model._nb1 else None

    @property
    def bse_log_phi(self):
        """Standard error of log phi (NB1; glmmTMB's of its ``betadisp``); None otherwise."""
        return float(np.sqrt(self._cov_extra[-1, -1])) if self.model._nb1 else None

    @property
    def family(self):
        """The count part's family: Poisson, NB2 (``NegativeBinomial`` with ``alpha``) or NB1
        (with ``phi``)."""
        if self.model._nb1:
            return NB1Family(phi=self.phi)
        return super().family

    def _extra_params(self):
        disp = self.model._disp_name
        return list(self._zi_params) + ([float(self._alpha)] if disp else [])

    def _extra_internal(self):
        disp = self.model._disp_name
        return np.concatenate([self._zi_params, [np.log(self._alpha)] if disp else []])

    @property
    def llf_lme4(self):
        """None: lme4 does not fit zero-inflated models (``llf`` is glmmTMB's ``logLik``)."""
        return None

    @property
    def loglike_saturated(self):
        """Not defined here (NaN): the zero-inflated saturated model is not used."""
        return np.nan

    @cache_readonly
    def _cond(self):
        cond = self.model._make_conditional()
        cond.set_params(self._extra_internal())
        return cond

    @cache_readonly
    def _condvar(self):
        return self.model.deviance().condvar(self.theta, self.params, self._extra_internal(),
                                             self._u)

    def _inverse_link(self, eta):
        """The count part's inverse link ``exp`` (emmeans' response scale is the count mean)."""
        return np.exp(eta)

    # -- what is not built for these models (rather than answers that ignore the zero part)
    def _not_built(self, what):
        raise NotImplementedError(f"{what} is not implemented for zero-inflated / hurdle models "
                                  "(the count model's formulas would ignore the zero part)")

    def r2(self, *args, **kwargs):
        """Not implemented for zero-inflated / hurdle models (``NotImplementedError``)."""
        self._not_built("R2")

    def icc(self, *args, **kwargs):
        """Not implemented for zero-inflated / hurdle models (``NotImplementedError``)."""
        self._not_built("the ICC")

    def allfit(self, *args, **kwargs):
        """Not implemented for zero-inflated / hurdle models (``NotImplementedError``)."""
        self._not_built("allfit (refits with other optimizers)")

    # -- predictions
    def predict(self, exog=None, data=None, re=True, which="mean", offset=None, **kwargs):
        """Predictions with (``re=True``) or without random effects, as glmmTMB's types.

        Parameters
        ----------
        exog, data, re, offset
            As :meth:`mlmext.results.MixedResults.predict`.
        which : {"mean", "linear", "conditional", "zprob", "zlink"}
            ``"mean"``: ``E[y]`` of the full model, glmmTMB's ``type = "response"``
            (``(1 - pi) mu``; hurdle ``(1 - pi) mu / (1 - f(0 | mu))``);
            ``"conditional"``: the mean of the count part, ``mu = exp(eta)`` (hurdle: of the
            zero-truncated counts, ``E[y | y > 0] = mu / (1 - f(0 | mu))``), glmmTMB's
            ``type = "conditional"``;
            ``"zprob"``: ``pi``; ``"linear"`` and ``"zlink"``: the two linear predictors.

        Returns
        -------
        pandas.Series
        """
        data = self._predict_args(exog, data, re, which, kwargs)
        if which == "zlink" or which == "zprob":
            Xzi = self.model.exog_zi if data is None else self.model._new_exog_zi(data)
            s = Xzi @ self._zi_params
            out = s if which == "zlink" else special.expit(s)
        else:
            eta = self.linear_predictor(data, re=bool(re), offset=offset)
            if which == "linear":
                out = eta
            else:
                out = _count_mean(self.model, eta, self._cond)
                if which == "mean":
                    Xzi = self.model.exog_zi if data is None else self.model._new_exog_zi(data)
                    out = (1.0 - special.expit(Xzi @ self._zi_params)) * out
        index = self.model.formula_info.get("row_labels") if data is None else \
            getattr(data, "index", None)
        if index is not None and len(index) == len(out):
            return pd.Series(out, index=index, name="predicted")
        return pd.Series(out, name="predicted")

    def _simulate_response(self, eta, rng):
        """Responses of the full model given count linear predictors ``eta`` (n, nsim)."""
        model = self.model
        pi = special.expit(model.exog_zi @ self._zi_params)[:, None] * np.ones(eta.shape[1])
        mu = np.exp(eta)
        nb, nb1 = model._nb, model._nb1

        def draw(m):                               # Poisson or gamma-Poisson (NB2, NB1) counts
            if nb:
                a = float(self.alpha)
                return rng.poisson(rng.gamma(1.0 / a, a * m)).astype(float)
            if nb1:                                # gamma mean m, variance m phi
                return rng.poisson(rng.gamma(m / self.phi, self.phi)).astype(float)
            return rng.poisson(m).astype(float)

        zero = rng.random(eta.shape) < pi
        y = draw(mu)
        if model.hurdle:
            # zero-truncated counts: redraw the zeros a few times, then invert the truncated
            # distribution function for what is left (small means)
            for _ in range(10):
                redo = (y == 0) & ~zero
                if not redo.any():
                    break
                y[redo] = draw(mu[redo])
            redo = (y == 0) & ~zero
            if redo.any():
                m = mu[redo]
                if nb:
                    r = 1.0 / self.alpha
                    dist = stats.nbinom(r, r / (r + m))
                elif nb1:
                    dist = stats.nbinom(m / self.phi, 1.0 / (1.0 + self.phi))
                else:
                    dist = stats.poisson(m)
                f0 = dist.cdf(0)
                u = f0 + (1.0 - f0) * rng.random(m.shape)
                y[redo] = np.maximum(dist.ppf(np.minimum(u, 1.0 - 1e-16)), 1.0)
        return np.where(zero, 0.0, y)

    # -- summary
    def _summary_top(self):
        method = ("Laplace (observed information)" if self.nagq == 1
                  else f"Adaptive Gauss-Hermite ({self.nagq} points)")
        return [("Method:", [method]), ("Link:", ["log / logit (zi)"])]

    def _zi_table(self, alpha=0.05):
        """The zero-inflation coefficients in the layout (and digits) of the count table."""
        est = self._zi_params
        se = self.bse_zi.to_numpy()
        z = est / se
        q = stats.norm.ppf(1.0 - alpha / 2.0)
        ci = np.column_stack([est - q * se, est + q * se])
        view = SimpleNamespace(model=SimpleNamespace(exog_names=self.model.exog_zi_names),
                               params=est, bse=se, tvalues=z,
                               pvalues=2.0 * stats.norm.sf(np.abs(z)), use_t=False,
                               conf_int=lambda a: ci)
        what = "Zero model (P(y = 0), logit)" if self.model.hurdle else \
            "Zero-inflation model (logit)"
        return params_table(view, alpha, title=what)

    def _add_extra_tables(self, smry, ddf=None):
        smry.tables.append(self._zi_table())
        if self.model._nb1:
            add_notes(smry, [f"NB1 dispersion phi = {self.phi:.5g} (Var = mu (1 + phi) of the "
                             "count part; glmmTMB's nbinom1 sigma() = phi)."])
        super()._add_extra_tables(smry, ddf)

    def _cov_description(self):
        if self.optim.cov_method.startswith("Hessian"):
            return ("Covariances: inverse Hessian of the deviance in all parameters (theta, "
                    "beta, zero-inflation"
                    + (f", log {self.model._disp_name}" if self.model._disp_name else "")
                    + ") (glmmTMB's)")
        return super()._cov_description()


def _count_mean(model, eta, cond):
    """The mean of the count part: ``mu`` (zero-inflated), the zero-truncated mean
    ``mu / (1 - f(0 | mu))`` (hurdle), as glmmTMB's ``type = "conditional"``."""
    mu = np.exp(eta)
    if not model.hurdle:
        return mu
    return mu / -np.expm1(cond._log_f0(mu))
