"""Results of mixed-model fits: one class for LMMs, GLMMs and ordinal models.

The fixed effects are the statsmodels ``params`` (``bse``, ``tvalues``, ``pvalues``, ``conf_int``,
``t_test``, ``wald_test`` work on them); variance components, modes and predictions follow lme4.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.base.model import LikelihoodModelResults
from statsmodels.base.wrapper import populate_wrapper, union_dicts
from statsmodels.base import wrapper as wrap
from statsmodels.iolib.summary import Summary
from statsmodels.iolib.table import SimpleTable
from functools import cached_property as cache_readonly

from ._args import RE_HINT, check_flag, reject_unknown
from .prediction import re_contribution
from .inference import InferenceMixin, robust_note
from .inference.ddf_default import check_fit_ddf, ddf_note, summary_ddf, z_results
from .objective import MixedParams, read_only
from .results_rows import FittedRowsMixin
from .printing import (fe_series, fit_html, fit_text, fixed_decimals, param_index, params_table,
                       re_table)

__all__ = ["MixedResults", "LMMResults", "MixedResultsWrapper"]


def add_notes(smry, notes):
    """Append lines to a statsmodels ``Summary``'s notes (``add_extra_txt`` replaces them)."""
    old = getattr(smry, "extra_txt", None)
    smry.add_extra_txt(([old] if old else []) + list(notes))


def dropped_note(model):
    """"3 rows with missing values and 2 rows with zero weights were dropped."."""
    dropped = model.formula_info.get("dropped") or {"missing values": model.nrows_dropped}
    parts = [f"{k} row{'s' if k != 1 else ''} with {why}" for why, k in dropped.items()]
    return " and ".join(parts) + (" were" if model.nrows_dropped != 1 else " was") + " dropped."


class MixedResults(FittedRowsMixin, InferenceMixin, LikelihoodModelResults):
    """Results of a mixed model fit.

    ``params``, ``bse``, ``cov_params()``, ``t_test()`` and ``wald_test()`` refer to the fixed
    effects (``fe_params``, ``bse_fe``); ``llf``, ``aic``, ``bic`` and ``deviance`` are as lme4
    reports them.

    Attributes
    ----------
    theta : numpy.ndarray
        lme4's relative covariance parameters.
    theta_names : list of str
        Names of the entries of ``theta``.
    sigma : float
        Residual standard deviation (1 for families without a scale).
    reml : bool
        Whether the model was fitted by REML.
    nobs : float
        Number of observations used.
    nrows_dropped : int
        Rows dropped for missing values.
    converged : bool
        Whether the convergence checks passed (``optim.message`` says which).
    optim : mlmext.optimize.OptSummary
        What the optimizer did: start, end, evaluations, methods tried, the checks.
    """

    _has_residual = True
    _family_name = "Gaussian"

    def __init__(self, model, fe_params, cov_fe, theta, u, sigma, criterion, optim,
                 reml=False, **extra):
        super().__init__(model, np.asarray(fe_params, dtype=float),
                         normalized_cov_params=read_only(cov_fe), scale=1.0)
        self.theta = read_only(theta)     # a caller's edit must not move predict() or ranef()
        self.theta_names = model.re_design.theta_names()
        self._u = read_only(u)
        self.sigma = float(sigma)
        self.scale = 1.0
        self.reml = bool(reml)
        self.criterion = float(criterion)
        self.optim = optim
        self.converged = bool(getattr(optim, "success", True))
        self.use_t = False
        self.nobs = model.nobs
        self.k_fe = model.k_fe
        self.df_resid = self.nobs - self.k_fe
        self.df_model = self.k_fe - 1
        self.nrows_dropped = model.nrows_dropped
        for k, v in extra.items():
            setattr(self, k, v)

    # ---------------------------------------------------------------- basic
    @property
    def fe_params(self):
        """Fixed-effects estimates (lme4's ``fixef``), a Series named by the design columns."""
        return fe_series(np.array(self.params, dtype=float), self._design_model(), "fe_params")

    @property
    def bse_fe(self):
        """Standard errors of the fixed effects, a Series."""
        return fe_series(np.sqrt(self.cov_params().diagonal()), self._design_model(), "bse_fe")

    def _fe_values(self):
        return np.asarray(self.params, dtype=float)      # fe_params without its Series

    def _design_model(self):
        return self.model       # one with this fit's design (a batched refit's: the fit's)

    @property
    def k_params(self):
        """Number of estimated parameters (fixed effects, theta and the scale)."""
        return self.k_fe + len(self.theta) + int(self._has_residual)

    @property
    def df_modelwc(self):
        return self.k_params

    @cache_readonly
    def llf(self):
        """Log-likelihood (lme4's ``logLik``); the REML log-likelihood for REML fits."""
        return -0.5 * self.criterion

    @cache_readonly
    def aic(self):
        """Akaike's information criterion, ``-2 llf + 2 k_params`` (REML fits too, as lme4)."""
        return -2.0 * self.llf + 2.0 * self.k_params

    @cache_readonly
    def bic(self):
        """Bayesian information criterion, ``-2 llf + log(nobs) k_params``."""
        return -2.0 * self.llf + np.log(self.nobs) * self.k_params

    @cache_readonly
    def deviance(self):
        """-2 log-likelihood (the REML criterion for REML fits)."""
        return -2.0 * self.llf

    def _extra_params(self):
        """The family's parameters in the model's full parameter vector (see ``params_object``)."""
        return []

    @property
    def params_object(self):
        """All estimates, as :meth:`model.loglike` takes them (statsmodels' ``MixedLMParams``).

        A :class:`~mlmext.objective.MixedParams`: ``fe_params`` (this result's ``params``),
        ``theta`` and ``extra`` (``[sigma]`` for an LMM, ``[alpha]`` for the negative
        binomial); ``get_packed()`` gives the vector in the order of ``model.param_names``.
        """
        return MixedParams(self.params, self.theta, self._extra_params())

    def is_singular(self, tol=1e-4):
        """True when a random-effects covariance is singular (lme4's ``isSingular``).

        Scale-free: a template diagonal counts as zero when it times the root mean square
        of its predictor is below ``tol`` (theta of a slope on x is in units of 1/x: a
        slope SD of 5e-5 per unit of a predictor in the thousands is not zero).
        """
        des = self.model.re_design
        # (Python floats over a handful of entries: every fit asks, np.any's wrapper cost more)
        scaled = (self.theta * des.theta_units()).tolist()
        return any(v < tol for v, lo in zip(scaled, des.lower.tolist()) if math.isfinite(lo))

    # ------------------------------------------------- variance components
    def _term_names(self):
        """lme4's group labels: repeated grouping factors become g, g.1, ..."""
        seen, out = {}, []
        for t in self.model.re_design.terms:
            k = seen.get(t.name, 0)
            out.append(t.name if k == 0 else f"{t.name}.{k}")
            seen[t.name] = k + 1
        return out

    def cov_re(self):
        """Covariance matrix of each term's random effects (dict by group label)."""
        des = self.model.re_design
        return {label: pd.DataFrame(self.sigma ** 2 * des.term_cov(self.theta, t), index=t.colnames,
                                    columns=t.colnames) for label, t in zip(self._term_names(), des.terms)}

    def varcorr(self):
        """Variance components as lme4's ``as.data.frame(VarCorr(fit))``.

        Returns
        -------
        pandas.DataFrame
            Columns ``grp, var1, var2, vcov, sdcor``: for each term one row per standard
            deviation, then one per correlation, then ``Residual``; cells lme4 leaves ``NA``
            are None.  Indexed by the parameters' names (``sd_Days|Subject``,
            ``cor_Days.Intercept|Subject``, ``sigma``, as in profiles and ``allfit``).
        """
        rows, index = [], []
        for label, names, C, sd in self._re_cov_sd():
            for i, nm in enumerate(names):
                rows.append((label, nm, None, C[i, i], sd[i]))
                index.append(f"sd_{nm}|{label}")
            for j in range(len(names)):
                for i in range(j + 1, len(names)):
                    denom = sd[i] * sd[j]
                    rows.append((label, names[j], names[i], C[i, j],
                                 C[i, j] / denom if denom > 0 else np.nan))
                    index.append(f"cor_{names[i]}.{names[j]}|{label}")
        if self._has_residual:
            rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
            index.append("sigma")
        out = pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"],
                           index=param_index(index))
        for c in ("var1", "var2"):               # None, not NaN (which is truthy)
            out[c] = out[c].astype(object).where(out[c].notna(), None)
        return out

    # -------------------------------------------------- conditional modes
    def _blocks_b(self):
        """Conditional modes b = Lambda u per block, as (m, q) arrays (block order)."""
        des = self.model.re_design
        out, off = [], 0
        for b, lam in zip(des.blocks, des.lambdas(self.theta)):
            u = self._u[off:off + b.nre].reshape(b.m, b.q)
            out.append(u @ lam.T)
            off += b.nre
        return out

    def _block_condvar(self):
        """Conditional covariance of b per block (m, q, q); set by the model's fit."""
        raise NotImplementedError("conditional variances are not available for this model")

    def ranef(self, condvar=False):
        """Conditional modes of the random effects, one DataFrame per grouping factor.

        Parameters
        ----------
        condvar : bool
            Also compute conditional variances: each DataFrame then carries
            ``attrs["condvar"]`` (levels x q x q array) and ``attrs["condsd"]``
            (DataFrame of conditional standard deviations).

        Returns
        -------
        dict of pandas.DataFrame
            Keyed by grouping factor in lme4's order, rows = levels, columns =
            the terms' column names.
        """
        des, bs = self.model.re_design, self._blocks_b()
        cvs = self._block_condvar() if check_flag("condvar", condvar) else None
        out, order = {}, []
        for t in des.terms:                 # lme4's order of grouping factors
            bi = next(i for i, b in enumerate(des.blocks) if t in b.terms)
            if bi not in order:
                order.append(bi)
        for bi in order:
            blk = des.blocks[bi]
            cols = [c for t in blk.terms for c in t.colnames]
            df = pd.DataFrame(bs[bi], index=pd.Index(blk.levels, name=blk.name), columns=cols)
            if cvs is not None:
                df.attrs["condvar"] = cvs[bi]
                df.attrs["condsd"] = pd.DataFrame(
                    np.sqrt(np.diagonal(cvs[bi], axis1=1, axis2=2)), index=df.index, columns=cols)
            out[blk.name] = df
        return out

    @property
    def random_effects(self):
        """Conditional modes (statsmodels ``MixedLM`` name for ``ranef()``)."""
        return self.ranef()

    # -------------------------------------------------------- prediction
    def _re_contribution(self, term_arrays):
        """Sum of Z_t b_t over terms for (X_t, codes) pairs; code -1 contributes 0."""
        return re_contribution(self.model.re_design, self._blocks_b(), term_arrays)

    def linear_predictor(self, data=None, re=True, offset=None):
        """X beta (+ Z b when ``re``) + offset, for the fitted rows or new ``data``; beta is
        ``fe_params`` (for a clmm the fixed effects without the thresholds)."""
        model, beta = self.model, np.asarray(self.fe_params)
        check_flag("re", re)
        if data is None:
            if offset is not None:
                raise TypeError("offset= is for new data: the fitted rows use the fitted offset")
            if model.exog is None:
                raise ValueError("remove_data() removed the fitted rows: pass new data to predict")
            eta = model.exog @ beta + model.offset
            if re:
                eta = eta + self._re_contribution([(t.X, t.codes) for t in model.re_design.terms])
            return eta
        X, terms, off = model._new_design(data, re=re, offset=offset)
        eta = X @ beta + off
        if re:
            eta = eta + self._re_contribution(terms)
        return eta

    _which = {"mean": "the response scale", "linear": "the linear predictor (link scale)"}
    _which_hints = {"link": "linear", "response": "mean", "eta": "linear", "mu": "mean"}

    def _predict_args(self, exog, data, re, which, kwargs):
        """Check predict()'s arguments (nothing is silently ignored); return the new data."""
        reject_unknown(kwargs, "predict()", accepted=["exog", "data", "re", "which", "offset"],
                       hints={"re_formula": RE_HINT})   # (R's re.form, not MixedLM's)
        if exog is not None and data is not None:
            raise TypeError("predict() takes the new rows as exog= or data=, not both")
        if not isinstance(re, (bool, np.bool_)):
            raise ValueError(f"re must be True (with the random effects) or False (population "
                             f"level, lme4's re.form = NA); got {re!r}")
        if which not in self._which:
            hint = self._which_hints.get(str(which))
            raise ValueError(f"which={which!r} is not one of {list(self._which)}"
                             + (f"; use which={hint!r}" if hint else ""))
        return exog if data is None else data

    def predict(self, exog=None, data=None, re=True, which="mean", offset=None, **kwargs):
        """Predictions with (``re=True``) or without random effects.

        Parameters
        ----------
        exog, data : pandas.DataFrame, optional
            New data with the formula's columns (either name works); the
            fitted rows when omitted.  Grouping levels are matched by value
            (a group fitted as ``1`` is the group ``1.0``); levels not seen in
            fitting, and missing grouping values, get the population value
            (random effect 0).  A row with a missing predictor gets NaN.
        re : bool
            Include the conditional modes of the random effects.
        which : {"mean", "linear"}
            Response scale or linear predictor (the same for an LMM).
        offset : str or array_like, optional
            The ``offset=`` part of the offset for the new rows.  By default
            the column the model was fitted with (when ``offset=`` named a
            column); a model fitted with an array offset needs it here.
            ``offset(...)`` terms in the formula are always evaluated on the
            new data.

        Returns
        -------
        pandas.Series
            Indexed like the new data (or the fitted rows).
        """
        data = self._predict_args(exog, data, re, which, kwargs)
        eta = self.linear_predictor(data, re=bool(re), offset=offset)
        out = eta if which == "linear" else self._inverse_link(eta)
        index = self.model.formula_info.get("row_labels") if data is None else getattr(data, "index", None)
        if index is not None and len(index) == len(out):
            return pd.Series(out, index=index, name="predicted")
        return pd.Series(out, name="predicted")

    def _inverse_link(self, eta):
        return eta

    # ------------------------------------------------------------ summary
    def _re_cov_sd(self):
        """``(label, names, covariance matrix, standard deviations)`` per random-effects term,
        for :meth:`varcorr` and the summary's table."""
        for label, cov in self.cov_re().items():
            C = cov.to_numpy()
            yield label, list(cov.index), C, np.sqrt(np.diag(C))

    def _re_table(self):
        return re_table(self)

    def _summary_top(self):
        return [("Method:", ["REML" if self.reml else "ML"])]

    def summary(self, alpha=0.05, title=None, ddf=None, correlation=False):
        """Summary in lme4's layout built from statsmodels ``Summary`` tables.

        LMMs show t tests on the df method of the fit (``fit(ddf=...)``, Satterthwaite by
        default, as lmerTest); ``ddf="satterthwaite"``, ``"kenward-roger"`` or ``"z"`` here
        overrides it for this table.  ``correlation=True`` adds lme4's ``Correlation of Fixed
        Effects:`` (see ``corr_fe``)."""
        model = self.model
        ngrps = ", ".join(f"{n}: {m}" for n, m in {t.name: t.m for t in model.re_design.terms}.items())
        top_left = [("Model:", [type(model).__name__]),
                    ("Dependent Variable:", [str(model.endog_names)]),
                    ("Family:", [self._family_name])] + self._summary_top() + \
                   [("No. Observations:", [str(int(self.nobs))]),
                    ("Groups (levels):", [ngrps])]
        if self.reml:
            fit_stats = [("REML criterion:", [f"{self.criterion:.4f}"])]
        else:
            fit_stats = [("Log-Likelihood:", [f"{self.llf:.4f}"]),
                         ("Deviance:", [f"{self.deviance:.4f}"])]
        top_right = fit_stats + [("AIC:", [f"{self.aic:.4f}"]), ("BIC:", [f"{self.bic:.4f}"]),
                                 ("Converged:", ["Yes" if self.converged else "No"])]
        smry = Summary()
        smry.add_table_2cols(self, gleft=top_left, gright=top_right,
                             title=title or f"Mixed Model Results: {model.formula_info.get('formula', '')}")
        sr = self._summary_resid_quantiles()
        if sr is not None:
            d = fixed_decimals(sr, sig=3, most=4)      # one count of decimals, as R prints them
            smry.tables.append(SimpleTable([[f"{v:.{d}f}" for v in sr]],
                                           headers=["Min", "1Q", "Median", "3Q", "Max"],
                                           title="Scaled residuals"))
        smry.tables.append(self._re_table())
        ddf = summary_ddf(self, ddf)          # None: the fit's own (z for GLMMs)
        smry.tables.append(params_table(z_results(self), alpha) if ddf in (None, "z") else
                           self._ddf_params_table(ddf, alpha))
        self._add_extra_tables(smry, ddf)
        notes = []
        if self.is_singular():
            notes.append("Boundary (singular) fit: a random-effects covariance is singular "
                         "(some variance estimated at zero).")
        if self.nrows_dropped:
            notes.append(dropped_note(self.model))
        notes.append(self.optim.describe())
        add_notes(smry, notes + ([self._corr_fe_text()] if correlation else []))
        return smry

    def _add_extra_tables(self, smry, ddf=None):
        pass

    def _summary_resid_quantiles(self):
        """The summary's quantiles: kept by ``remove_data()`` once the rows are gone."""
        if getattr(self.model, "endog", None) is None:
            return self.__dict__.get("_kept_resid_quantiles")
        return self._scaled_resid_quantiles()

    def _scaled_resid_quantiles(self):
        r = np.asarray(self.resid) * np.sqrt(self.model.weights) / self.sigma
        return np.quantile(r, [0, 0.25, 0.5, 0.75, 1.0])

    __repr__ = fit_text                # lme4's print block (summary() has the full tables)
    _repr_html_ = fit_html


class LMMResults(MixedResults):
    """Results of :class:`mlmext.lmm.LinearMixedModel` fits.

    Parameters
    ----------
    model : LinearMixedModel
    state : mlmext.objective.LMMState
        The model at the estimates (kept as ``state``).
    optim : scipy.optimize.OptimizeResult
        What the optimizer did.
    """

    def __init__(self, model, state, optim, ddf="satterthwaite"):
        super().__init__(model, state.beta, state.cov_beta, theta=state.theta, u=state.u,
                         sigma=state.sigma, criterion=state.criterion, optim=optim,
                         reml=state.reml)
        self.state = state
        self.ddf = check_fit_ddf(ddf, self.reml)     # the tests' df: computed on first use
        self.use_t = self.ddf != "z"

    @property
    def reml_criterion(self):
        """The REML criterion at the optimum (lme4's ``REMLcrit``); None for ML fits."""
        return self.criterion if self.reml else None

    def _extra_params(self):
        return [self.sigma]

    def _add_extra_tables(self, smry, ddf=None):
        if self.cov_type != "nonrobust":          # cluster-robust: say which and how tested
            return add_notes(smry, [robust_note(self)])
        add_notes(smry, [f"Covariance of the fixed effects: {ddf_note(self, ddf)}."])

    @cache_readonly
    def _condvar(self):
        return self.model.deviance(self.reml).condvar(self.theta, self.sigma)

    def _block_condvar(self):
        return self._condvar


class MixedResultsWrapper(wrap.ResultsWrapper):
    """statsmodels' wrapper (pandas-labelled attributes) that prints as the result does."""

    def __repr__(self):
        return repr(self._results)

    def _repr_html_(self):
        return self._results._repr_html_()

    _attrs = {"params": "columns", "bse": "columns", "tvalues": "columns", "pvalues": "columns"}
    _wrap_attrs = union_dicts(_attrs, wrap.ResultsWrapper._wrap_attrs)
    # conf_int labels its own rows: the profile / bootstrap intervals add the variance
    # parameters, which relabelling by the parameter names would drop
    _methods = {"cov_params": "cov"}
    _wrap_methods = union_dicts(_methods, wrap.ResultsWrapper._wrap_methods)


populate_wrapper(MixedResultsWrapper, MixedResults)
MixedResults._results_wrapper = MixedResultsWrapper      # for get_robustcov_results
