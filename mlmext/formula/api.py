"""smf-style entry points: ``from mlmext.formula import api as mf``.

>>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", data=df).fit()
"""
from mlmext.gee import gee_select  # noqa: F401  (GEE working-correlation selection by QIC)
from mlmext.glmm import (BetaMixedModel, GeneralizedLinearMixedModel, NB1MixedModel,
                         NegativeBinomialMixedModel, ZeroInflatedMixedModel, is_beta_family)
from mlmext.glmm.nb1 import NB1Family
from mlmext.glmm.response import NBFamily
from mlmext.cor import CorrelatedLinearMixedModel
from mlmext.dask import is_dask_frame
from mlmext.dask.glmm import DaskGeneralizedLinearMixedModel
from mlmext.dask.model import DaskLinearMixedModel
from mlmext.lmm import LinearMixedModel
from mlmext.ordinal import OrdinalMixedModel


def lmer(formula, data, weights=None, offset=None, subset=None, missing="drop", eval_env=0,
         correlation=None, **kwargs):
    """Linear mixed model from an lme4-style formula (see :class:`mlmext.lmm.LinearMixedModel`).

    Parameters
    ----------
    formula : str
        ``"y ~ x + (x | g)"``; random-effects terms ``(expr | g)``,
        ``(expr || g)``, ``(1 | a/b)``, ``(1 | a:b)``; ``offset(expr)``.
    data : pandas.DataFrame or dask.dataframe.DataFrame
        A Dask DataFrame gives a :class:`~mlmext.dask.model.DaskLinearMixedModel`: the data
        stay on the workers, the model holds their cross-products (see the user guide's
        "Data beyond one machine").
    weights, offset : str or array_like, optional
        Prior weights and a known offset (column names or arrays).
    subset : array_like, optional
    missing : {"drop", "raise"}
        Rows with missing values are dropped and counted, or raise.
    correlation : mlmext.cor.CorStruct, optional
        Residual correlation within groups, as nlme's ``lme(correlation=)``:
        ``mlmext.cor.AR1(time="t", group="g")`` (nlme's ``corAR1(form = ~ t | g)``),
        ``CAR1(time=, group=)`` (``corCAR1``) or ``CompSymm(group=)`` (``corCompSymm``).

    Returns
    -------
    LinearMixedModel
        Call ``.fit(reml=True)`` on it (a
        :class:`~mlmext.cor.CorrelatedLinearMixedModel` with ``correlation``).
    """
    if is_dask_frame(data):          # cross-products summed on the workers (mlmext.dask)
        if correlation is not None:
            raise NotImplementedError("correlation= is not available for Dask data")
        return DaskLinearMixedModel.from_formula(formula, data, weights=weights, offset=offset,
                                                 subset=subset, missing=missing,
                                                 eval_env=eval_env + 1, **kwargs)
    if correlation is not None:
        return CorrelatedLinearMixedModel.from_formula(
            formula, data, weights=weights, offset=offset, subset=subset, missing=missing,
            eval_env=eval_env + 1, correlation=correlation, **kwargs)
    return LinearMixedModel.from_formula(formula, data, weights=weights, offset=offset, subset=subset,
                                         missing=missing, eval_env=eval_env + 1, **kwargs)


__all__ = ["lmer", "glmer", "glmer_nb", "clmm", "gee_select"]


def _not_yet(name, issue):
    def f(*args, **kwargs):
        raise NotImplementedError(f"mlmext.formula.api.{name} is not implemented yet ({issue})")
    f.__name__ = name
    return f


def glmer(formula, data, family=None, weights=None, offset=None, subset=None, missing="drop",
          eval_env=0, ziformula=None, hurdle=False, **kwargs):
    """Generalized linear mixed model from an lme4-style formula (lme4's ``glmer``).

    Parameters
    ----------
    formula : str
        ``"y ~ x + (1 | g)"``.  Binomial responses: 0/1 numbers, booleans, a
        two-level categorical (first level = failure, as in R), proportions
        with ``weights`` = number of trials, or ``cbind(successes, failures)``.
        ``offset(np.log(t))`` adds a known offset.
    data : pandas.DataFrame
    family : statsmodels.genmod.families.Family
        ``sm.families.Binomial()`` (default), ``sm.families.Poisson()``, or
        ``sm.families.Gamma()`` / ``sm.families.InverseGaussian()`` (positive
        responses; the dispersion ``scale`` estimated jointly, glmmTMB's
        Laplace), with any link the family accepts; or R's family name.
        ``"beta"`` or ``mlmext.glmm.Beta()``: responses in (0, 1), logit link,
        the precision ``phi`` estimated jointly (glmmTMB's ``beta_family()``).
    weights, offset : str or array_like, optional
        Prior weights (binomial proportions: trials) and a known offset.
    subset : array_like, optional
    missing : {"drop", "raise"}
    ziformula : str, optional
        Poisson family: a zero-inflated Poisson model (glmmTMB's ``ziformula``), the
        zero-inflation probability ``logit(pi) = X_zi gamma`` from this one-sided formula
        (``"~ 1"``, ``"~ x"``; fixed effects only).  Returns a
        :class:`~mlmext.glmm.zimodel.ZeroInflatedMixedModel`.
    hurdle : bool
        With ``ziformula``: a hurdle model instead (glmmTMB's ``truncated_poisson``):
        ``P(y = 0) = pi``, positive counts from the zero-truncated Poisson.

    Returns
    -------
    mlmext.glmm.GeneralizedLinearMixedModel
        Call ``.fit()`` (Laplace) or ``.fit(nagq=25)`` (adaptive
        Gauss-Hermite quadrature, single grouping factor, up to three random
        effects per level).
    """
    if is_dask_frame(data):          # PIRLS passes over rows persisted on the workers
        if ziformula is not None or hurdle is not False or is_beta_family(family):
            raise NotImplementedError("zero-inflated, hurdle and beta models of Dask data are not "
                                      "implemented (binomial and Poisson GLMMs are)")
        return DaskGeneralizedLinearMixedModel.from_formula(
            formula, data, family=family, weights=weights, offset=offset, subset=subset,
            missing=missing, eval_env=eval_env + 1, **kwargs)
    if ziformula is not None or hurdle is not False:
        return ZeroInflatedMixedModel.from_formula(
            formula, data, ziformula=ziformula, hurdle=hurdle, family=family, weights=weights,
            offset=offset, subset=subset, missing=missing, eval_env=eval_env + 1, **kwargs)
    if is_beta_family(family):
        return BetaMixedModel.from_formula(formula, data, family=family, weights=weights,
                                           offset=offset, subset=subset, missing=missing,
                                           eval_env=eval_env + 1, **kwargs)
    return GeneralizedLinearMixedModel.from_formula(formula, data, family=family, weights=weights,
                                                    offset=offset, subset=subset, missing=missing,
                                                    eval_env=eval_env + 1, **kwargs)


def glmer_nb(formula, data, weights=None, offset=None, subset=None, missing="drop", eval_env=0,
             variance="nb2", ziformula=None, hurdle=False, **kwargs):
    """Negative binomial (log link) mixed model (lme4's ``glmer.nb``; glmmTMB's ``nbinom1``).

    ``variance="nb2"`` (default): ``Var(y | b) = mu + alpha mu^2``; ``alpha`` is
    estimated jointly with the other parameters (results: ``.alpha``; lme4's
    theta is ``1 / alpha``).  ``variance="nb1"``: ``Var(y | b) = mu (1 + phi)``
    (glmmTMB's ``nbinom1``, statsmodels' ``loglike_method="nb1"``), ``phi``
    estimated jointly (results: ``.phi``), glmmTMB's Laplace.  ``ziformula`` gives a
    zero-inflated NB2 (NB1) model and, with ``hurdle=True``, a hurdle NB2 (NB1) model (glmmTMB's
    ``nbinom2`` / ``truncated_nbinom2``, ``nbinom1`` / ``truncated_nbinom1`` with
    ``ziformula``; a :class:`~mlmext.glmm.zimodel.ZeroInflatedMixedModel`).  Other arguments as
    :func:`glmer`.

    Returns
    -------
    mlmext.glmm.NegativeBinomialMixedModel or mlmext.glmm.NB1MixedModel
    """
    if is_dask_frame(data):
        raise NotImplementedError("negative binomial GLMMs of Dask data are not implemented "
                                  "(alpha's gradient needs its own pass); glmer with the "
                                  "binomial or Poisson family takes a Dask DataFrame")
    key = str(variance).lower().replace(" ", "") if isinstance(variance, str) else variance
    if key not in ("nb1", "nb2"):
        raise ValueError(f"variance must be 'nb2' (mu + alpha mu^2) or 'nb1' (mu (1 + phi)); "
                         f"got {variance!r}")
    if ziformula is not None or hurdle is not False:
        if "family" in kwargs:
            raise TypeError("glmer_nb's family is always the negative binomial: remove family=")
        return ZeroInflatedMixedModel.from_formula(
            formula, data, ziformula=ziformula, hurdle=hurdle,
            family=NB1Family() if key == "nb1" else NBFamily(),
            weights=weights, offset=offset, subset=subset, missing=missing,
            eval_env=eval_env + 1, **kwargs)
    if key == "nb1":
        return NB1MixedModel.from_formula(formula, data, weights=weights, offset=offset,
                                          subset=subset, missing=missing,
                                          eval_env=eval_env + 1, **kwargs)
    return NegativeBinomialMixedModel.from_formula(formula, data, weights=weights, offset=offset,
                                                   subset=subset, missing=missing,
                                                   eval_env=eval_env + 1, **kwargs)


def clmm(formula, data, link="logit", threshold="flexible", levels=None, weights=None, offset=None,
         subset=None, missing="drop", eval_env=0, **kwargs):
    """Cumulative link mixed model for an ordinal response (R's ``ordinal::clmm``).

    ``P(Y <= j | b) = F(theta_j - x' beta - z' b)`` with increasing
    thresholds ``theta_1 < ... < theta_{K-1}`` (see
    :class:`mlmext.ordinal.OrdinalMixedModel`).

    The fixed part has **no intercept**: the thresholds carry it.  The
    formula is written as usual (``"rating ~ temp + contact + (1 | judge)"``)
    and its intercept column is dropped after the design is built, so
    factors keep treatment contrasts (``temp[T.warm]``).  A formula without
    an intercept (``0 + x``) is treated like one with it, with a warning,
    as ``clmm`` does.

    Parameters
    ----------
    formula : str
        Response, fixed part and lme4-style random-effects terms:
        ``(1 | g)``, ``(1 + x | g)``, ``(x || g)``, ``(1 | a/b)``,
        ``(1 | a) + (1 | a:b)``, crossed terms; ``offset(expr)``.
    data : pandas.DataFrame
        The response must be a column: a pandas ordered ``Categorical``, or
        integers (numeric order), or any values with ``levels``.  Unused
        categories are dropped with a warning.
    link : {"logit", "probit", "cloglog", "loglog", "cauchit"}
    threshold : {"flexible", "equidistant", "symmetric"}
        As ``clmm``'s ``threshold``.
    levels : sequence, optional
        Order of the response categories, lowest first (needed for a string
        response or an unordered categorical).
    weights, offset : str or array_like, optional
        Prior (frequency) weights and a known offset added to ``x' beta``.
    subset : array_like, optional
    missing : {"drop", "raise"}

    Returns
    -------
    mlmext.ordinal.OrdinalMixedModel
        Call ``.fit()`` (Laplace) or ``.fit(nagq=10)`` (adaptive
        Gauss-Hermite quadrature, single grouping factor).
    """
    if is_dask_frame(data):
        raise NotImplementedError("cumulative link mixed models of Dask data are not implemented "
                                  "(lmer, and glmer with the binomial or Poisson family, take a "
                                  "Dask DataFrame)")
    return OrdinalMixedModel.from_formula(formula, data, link=link, threshold=threshold, levels=levels,
                                          weights=weights, offset=offset, subset=subset,
                                          missing=missing, eval_env=eval_env + 1, **kwargs)
