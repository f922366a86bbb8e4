"""Results of LMMs with residual correlation within groups."""
from __future__ import annotations

import pandas as pd
from statsmodels.base import wrapper as wrap
from functools import cached_property as cache_readonly

from ..printing import fit_html, fit_text
from ..results import LMMResults, MixedResultsWrapper

__all__ = ["CorrelatedLMMResults", "CorrelatedResultsWrapper"]


def _not_with_correlation(name):
    def method(self, *args, **kwargs):
        raise NotImplementedError(
            f"{name}() is not implemented for models with a residual correlation structure "
            f"({self.model.correlation!r}); available: the Wald tests, df_satterthwaite(), "
            "summary(ddf='satterthwaite'), predict(), ranef(), llf / aic / bic")
    method.__name__ = name
    method.__doc__ = "Not implemented with a residual correlation structure (raises)."
    return method


class CorrelatedLMMResults(LMMResults):
    """Results of :class:`~mlmext.cor.CorrelatedLinearMixedModel` fits.

    As :class:`~mlmext.results.LMMResults`, plus the correlation parameter
    (``cor_params``, counted in ``k_params``, so in ``aic`` and ``bic``).  ``llf`` is the
    (restricted) log-likelihood of the correlated model; the fixed effects' covariance is the
    GLS one, ``sigma^2 (X' V^-1 X)^-1`` with ``V = Z Lambda Lambda' Z' + R(phi)``;
    ``df_satterthwaite()`` treats ``phi`` as one more variance parameter.  ``predict``,
    ``fittedvalues`` and ``resid`` are those of the random effects' levels (nlme's level
    1, or level 0 with ``re=False``): the residual correlation is not used to predict.
    """

    def __init__(self, model, state, optim, rho, ddf="satterthwaite"):
        super().__init__(model, state, optim, ddf=ddf)
        self._rho = float(rho)

    @property
    def cor_params(self):
        """The correlation parameter (nlme's ``Phi`` or ``Rho``), a Series."""
        cs = self.model.correlation
        return pd.Series([self._rho], index=[cs.param_name], name="cor_params")

    @property
    def k_params(self):
        """Fixed effects, theta, the correlation parameter and sigma (nlme's ``df`` of logLik)."""
        return super().k_params + 1

    @property
    def correlation_structure(self):
        """nlme's line: ``"Correlation structure: AR(1), Phi = 0.653"``."""
        return self.model.correlation.describe(self._rho)

    @cache_readonly
    def _condvar(self):
        return self.model.deviance(self.reml, rho=self._rho).condvar(self.theta, self.sigma)

    def _add_extra_tables(self, smry, ddf=None):
        super()._add_extra_tables(smry, ddf)
        cs = self.model.correlation
        where = f" within {':'.join(self.model.cor_group)}"
        if cs.needs_time:
            where += f", ordered by {cs.time}"
        smry.add_extra_txt([f"{self.correlation_structure} ({where.strip()})."])

    def __repr__(self):
        lines = fit_text(self).splitlines()
        i = next((k for k, s in enumerate(lines) if s.startswith("Number of obs")), len(lines))
        return "\n".join(lines[:i] + [self.correlation_structure] + lines[i:])

    def _repr_html_(self):
        return fit_html(self) + f"<p>{self.correlation_structure}</p>"

    # what reads the model as if its residuals were independent raises rather than mislead
    for _name in ("get_robustcov_results", "df_kenward_roger", "cov_params_kenward_roger",
                  "profile", "bootstrap", "icc", "r2", "refit", "simulate", "power_sim",
                  "influence", "cooks_distance", "check_convergence", "allfit"):
        locals()[_name] = _not_with_correlation(_name)
    del _name

    def conf_int(self, alpha=0.05, cols=None, method="wald", **kwargs):
        """Wald intervals of the fixed effects (profile and bootstrap intervals: not
        implemented with a correlation structure)."""
        if method != "wald":
            return _not_with_correlation(f"conf_int(method={method!r})")(self)
        return super().conf_int(alpha=alpha, cols=cols, method=method, **kwargs)


class CorrelatedResultsWrapper(MixedResultsWrapper):
    """statsmodels' wrapper of :class:`CorrelatedLMMResults`."""

    def __repr__(self):
        return repr(self._results)

    def _repr_html_(self):
        return self._results._repr_html_()


wrap.populate_wrapper(CorrelatedResultsWrapper, CorrelatedLMMResults)
