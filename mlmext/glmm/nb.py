"""The negative binomial (NB2) mixed model: alpha estimated with theta and beta (lme4's glmer.nb).
"""
from __future__ import annotations


import numpy as np

from .._args import reject_unknown
from .conditional import NegativeBinomialConditional
from .response import NBFamily
from .model import GeneralizedLinearMixedModel


class NegativeBinomialMixedModel(GeneralizedLinearMixedModel):
    """Negative binomial (NB2, log link) mixed model; alpha estimated with theta and beta.

    Usually created with :func:`mlmext.formula.api.glmer_nb`.  ``Var(y | u) =
    mu + alpha mu^2`` (statsmodels' ``alpha``; lme4/MASS's ``theta`` is
    ``1 / alpha``).

    Parameters
    ----------
    information : {"expected", "observed"}
        ``"expected"`` (default): lme4's ``glmer.nb`` -- Laplace with the
        expected information as PIRLS weights, standard errors with alpha
        held fixed.  ``"observed"``: glmmTMB's ``nbinom2`` -- Laplace with the
        observed information, standard errors from the Hessian in (theta,
        beta, log alpha), so alpha's uncertainty is included (up to 0.5 %
        larger SEs on glmmTMB's Salamanders).
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
        if family is not None and not isinstance(family, NBFamily):
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
        super().__init__(endog, exog, re_design, family=NBFamily(), weights=weights,
                         offset=offset, **kwargs)
        self._init_keys = [k for k in self._init_keys if k != "family"] + ["information"]

    _family_label = "negative binomial"

    def _resolve_family(self, family):
        return family

    def _set_family(self, family):
        pass

    @property
    def family(self):
        """statsmodels' ``NegativeBinomial`` family (log link), alpha = 1.

        Read-only: ``alpha`` is estimated; the results' ``family`` has the estimate.
        """
        return NBFamily(alpha=1.0)

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
