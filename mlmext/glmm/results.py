"""Results of GLMM fits: family, alpha, saturated log-likelihood, lme4's logLik, simulation.
"""
from __future__ import annotations

import warnings
from functools import cached_property as cache_readonly

import numpy as np
import pandas as pd
from statsmodels.genmod import families

from ..results import MixedResults, add_notes
from .response import NBFamily


# ============================================================================ results
class GLMMResults(MixedResults):
    """Results of a GLMM fit (:class:`GeneralizedLinearMixedModel`).

    Besides :class:`~mlmext.results.MixedResults`: ``nagq``, ``family``,
    ``alpha`` (negative binomial), ``scale`` (the dispersion ``phi`` of the
    Gamma and inverse Gaussian families, ``Var(y | u) = phi V(mu)``, as
    statsmodels' GLM ``scale``; 1 for the other families),
    ``loglike_saturated`` and ``llf_lme4``.
    """

    _has_residual = False

    @property
    def _family_name(self):
        model = self.model
        if isinstance(model.family, families.NegativeBinomial):
            return f"Negative Binomial ({1.0 / self.alpha:.4g}) [alpha = {self.alpha:.4g}]"
        return type(model.family).__name__

    @property
    def link_name(self):
        """Name of the link function, lower case (``"logit"``, ``"log"``, ...)."""
        model = self.model
        if isinstance(model.family, families.NegativeBinomial):
            return "log"
        return type(model.family.link).__name__.lower()

    @property
    def family(self):
        """The model's statsmodels family: Binomial or Poisson, for ``glmer_nb`` fits
        ``NegativeBinomial`` with the estimated ``alpha``."""
        if isinstance(self.model.family, families.NegativeBinomial):
            return NBFamily(alpha=self.alpha)
        return self.model.family

    @property
    def alpha(self):
        """NB2 dispersion (``Var = mu + alpha mu^2``); None for other families."""
        if isinstance(self.model.family, families.NegativeBinomial):
            return float(self._alpha)
        return None

    def _extra_params(self):
        return [float(self._alpha)] if self.model.k_extra else []

    @property
    def k_params(self):
        """Number of estimated parameters (fixed effects, theta and, negative binomial, alpha)."""
        return self.k_fe + len(self.theta) + int(self.model.k_extra)

    @property
    def cov_fe_joint(self):
        """Covariance of the fixed effects allowing for alpha's uncertainty (negative binomial).

        By default ``cov_params()`` follows lme4's ``glmer.nb``, which treats
        alpha as known (the fixed-effects block of the inverse Hessian in
        (theta, beta)); this one inverts the Hessian in (theta, beta, log
        alpha), as glmmTMB does, and is ``cov_params()`` of fits with
        ``information="observed"`` (glmmTMB's Laplace).  None for other
        families, or where that Hessian's fixed-effects block is not
        positive definite.
        """
        if self._cov_joint is None:
            return None
        names = self.model.exog_names
        return pd.DataFrame(self._cov_joint, index=names, columns=names)

    @property
    def loglike_saturated(self):
        """The family's saturated log-likelihood (at the estimates for the negative binomial)."""
        return self._cond.loglike_saturated()

    @property
    def llf_lme4(self):
        """The log-likelihood lme4 prints for this fit.

        Equal to ``llf`` for the Laplace approximation; for ``nagq > 1`` lme4
        leaves out the saturated log-likelihood, so this is
        ``llf - loglike_saturated``.  None for the Gamma and inverse Gaussian
        families: lme4's ``logLik`` there is not this model's likelihood (its
        Laplace leaves the dispersion out and its value uses a moment estimate).
        """
        if self.model._extra_name == "scale":
            return None
        return self.llf if self.nagq == 1 else self.llf - self.loglike_saturated

    def _inverse_link(self, eta):
        return self._cond.mean(eta)

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
        if isinstance(model.family, families.NegativeBinomial):
            mu = np.exp(eta)
            a = float(self.alpha)
            return rng.poisson(rng.gamma(1.0 / a, a * mu)).astype(float)
        if isinstance(model.family, families.Gamma):        # shape 1/phi, mean mu
            mu = model.family.link.inverse(eta)
            return rng.gamma(1.0 / self.scale, mu * self.scale)
        if isinstance(model.family, families.InverseGaussian):  # Wald's lambda = 1/phi
            mu = model.family.link.inverse(eta)
            return rng.wald(mu, np.full(mu.shape, 1.0 / self.scale))
        return rng.poisson(model.family.link.inverse(eta)).astype(float)

    @cache_readonly
    def _cond(self):
        """The conditional distribution at this fit's estimates (its own copy: alpha)."""
        cond = self.model._make_conditional()
        if self.model.k_extra:
            cond.set_params(np.array([np.log(self._alpha)]))
        return cond

    @cache_readonly
    def _condvar(self):
        extra = [np.log(self._alpha)] if self.model.k_extra else []
        return self.model.deviance().condvar(self.theta, self.params, extra, self._u)

    def _block_condvar(self):
        return self._condvar

    def _scaled_resid_quantiles(self):
        eta = self.linear_predictor()
        r = self._cond.pearson_resid(eta)
        return np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])

    @property
    def resid_pearson(self):
        """Pearson residuals with the conditional modes, a Series."""
        eta = self.linear_predictor()
        return pd.Series(self._cond.pearson_resid(eta),
                         index=self.model.formula_info.get("row_labels"), name="resid_pearson")

    @property
    def resid_response(self):
        """Response residuals ``y - mu`` with the conditional modes (lme4's
        ``residuals(fit, type = "response")``), a Series; binomial ``y`` is the proportion of
        successes."""
        return self.resid.rename("resid_response")

    @property
    def resid_deviance(self):
        """Deviance residuals with the conditional modes, ``sign(y - mu) sqrt(w d(y, mu))``
        with ``w`` the prior weights (binomial: the trials) and ``d`` the family's unit deviance
        (lme4's ``residuals(fit)``, its default type), a Series.  Unscaled: a Gamma or inverse
        Gaussian fit's dispersion is not divided out, as in lme4."""
        if hasattr(self.model, "exog_zi"):
            raise NotImplementedError("deviance residuals of a zero-inflated / hurdle fit are not "
                                      "implemented; use resid_pearson")
        fitted = self.fittedvalues
        r = self.family.resid_dev(np.asarray(self.model.endog, dtype=float),
                                  np.asarray(fitted, dtype=float),
                                  var_weights=np.asarray(self.model.weights, dtype=float))
        return pd.Series(r, index=fitted.index, name="resid_deviance")

    def _summary_top(self):
        method = "Laplace" if self.nagq == 1 else f"Adaptive Gauss-Hermite ({self.nagq} points)"
        if self.nagq == 1 and self.model._extra_name == "scale":
            method += f" ({self.model.information} information)"
        return [("Method:", [method]), ("Link:", [self.link_name])]

    def _add_extra_tables(self, smry, ddf=None):
        notes = []
        if self.model._extra_name == "scale":
            phi = self.scale
            what = (f"Gamma shape 1/phi = {1.0 / phi:.5g}" if isinstance(self.model.family, families.Gamma)
                    else f"lambda = 1/phi = {1.0 / phi:.5g}")
            notes.append(f"Dispersion (scale) phi = {phi:.5g} (Var = phi mu^{2 if 'shape' in what else 3}"
                         f"; {what}; glmmTMB's sigma = sqrt(phi) = {np.sqrt(phi):.5g}).")
        if self.alpha is not None:
            notes.append(f"Negative binomial dispersion alpha = {self.alpha:.5g} (Var = mu + alpha mu^2; "
                         f"lme4's theta = 1/alpha = {1.0 / self.alpha:.5g}).")
        if self.nagq > 1 and self.llf_lme4 is not None:       # None: lme4 has no such fit
            notes.append(f"Log-likelihood on the full scale; lme4's nAGQ > 1 value is llf - "
                         f"loglike_saturated = {self.llf_lme4:.4f}.")
        notes.append(self._cov_description() + "; z tests.")
        add_notes(smry, notes)

    def _cov_description(self):
        """Which covariance of the fixed effects the fit uses, in words (a summary note)."""
        method = self.optim.cov_method
        if method == "Hessian":
            return ("Covariance of the fixed effects: inverse Hessian of the deviance in (theta, "
                    "beta) (lme4's default" + (", singular fits too" if self.is_singular() else "")
                    + ("; alpha held fixed as glmer.nb does" if self.alpha is not None else "")
                    + ")")
        if method.startswith("Hessian"):
            return ("Covariance of the fixed effects: inverse Hessian of the deviance in (theta, "
                    f"beta, log {self.model._extra_name}) (glmmTMB's)")
        why = getattr(self.optim, "cov_note", "")
        return ("Covariance of the fixed effects from RX (the PIRLS system at the estimates)"
                + (f": {why}" if why else ""))
