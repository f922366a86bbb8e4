"""Results of a cumulative link mixed model fit."""
from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.iolib.summary import Summary

from .. import laplace as _laplace
from ..printing import param_index, params_table
from ..results import MixedResults, add_notes, dropped_note
from .links import category_probabilities

__all__ = ["OrdinalMixedResults"]


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
        return pd.Series(self._fe_values(), index=param_index(self.model.exog_names_fe),
                         name="fe_params")

    def _fe_values(self):
        return np.asarray(self.params, dtype=float)[self.model.thr.k:]

    @property
    def bse_fe(self):
        """Standard errors of the fixed effects, a Series."""
        k = self.model.thr.k
        se = np.sqrt(np.diag(np.asarray(self.normalized_cov_params)))[k:]
        return pd.Series(se, index=param_index(self.model.exog_names_fe), name="bse_fe")

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
        dev = model.deviance()            # its own factor, at the optimum
        _, modes = dev.loglike_parts(params[:k], params[k:], self.theta, nagq=1, u0=self._u)
        cv = _laplace.factor_at(dev.chol, modes).condvar_u()
        return [np.einsum("ij,gjk,lk->gil", lam, c, lam) for lam, c in zip(lams, cv)]

    # ------------------------------------------------------------ prediction
    _which = {"prob": "category probabilities", "cumprob": "cumulative probabilities",
              "linear": "the linear predictor"}
    _which_hints = {"link": "linear", "mean": "prob", "response": "prob", "class": "prob"}

    def predict(self, exog=None, data=None, re=True, which="prob", offset=None, **kwargs):
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
        offset : str or array_like, optional
            The ``offset=`` part of the offset for new rows (see
            :meth:`mlmext.results.MixedResults.predict`).

        Returns
        -------
        pandas.DataFrame or pandas.Series
            Columns are the response categories.
        """
        data = self._predict_args(exog, data, re, which, kwargs)
        eta = self.linear_predictor(data, re=bool(re), offset=offset)
        index = self.model.formula_info.get("row_labels") if data is None else getattr(data, "index", None)
        if index is not None and len(index) != len(eta):
            index = None
        if which == "linear":
            return pd.Series(eta, index=index, name="linear_predictor")
        P = category_probabilities(self.model.link, np.asarray(self.thresholds), eta)
        cols = pd.Index(self.model.levels, name=str(self.model.endog_names))
        if which == "prob":
            return pd.DataFrame(P, index=index, columns=cols)
        return pd.DataFrame(np.minimum(np.cumsum(P, axis=1), 1.0), index=index, columns=cols)

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
        ngrps = ", ".join(f"{n}: {m}" for n, m in {t.name: t.m for t in model.re_design.terms}.items())
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
        k = model.thr.k
        if model.k_fe:
            smry.tables.append(params_table(self, alpha, slice(k, None), title="Coefficients"))
        smry.tables.append(params_table(self, alpha, slice(0, k), title="Threshold coefficients"))
        notes = []
        if model.threshold != "flexible":
            th = self.thresholds
            notes.append("Thresholds: " + ", ".join(f"{i} {v:.4f}" for i, v in th.items()))
        if self.is_singular():
            notes.append("Boundary (singular) fit: a random-effects variance is estimated at zero; "
                         "its parameter is left out of the Hessian (as clmm does).")
        if model.nrows_dropped:
            notes.append(dropped_note(model))
        notes.append(self.optim.describe())
        add_notes(smry, notes)
        return smry
