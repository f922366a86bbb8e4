"""Linear mixed models with residual correlation within groups (nlme's ``lme(correlation=)``).

The residual covariance is ``sigma^2 R(phi)``, R block-diagonal by the correlation's groups.
For fixed ``phi`` the whitened model ``L^-1 [Z X y]`` (``R = L L'``) is a standard LMM: its
profiled deviance in theta (:class:`~mlmext.objective.LMMDeviance`) plus ``log det R`` is the
exact criterion (REML or ML) of the correlated model.  ``phi`` is optimized outside,
over the minimum in theta (Brent in a logit scale of its interval, then Newton steps on
differences of that profile), so each value of ``phi`` costs one whitening (O(n)) and one
fit in theta from the previous optimum.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from ..design import RandomEffectsDesign, ReTerm, grouping_factor
from ..lmm import LinearMixedModel
from ..linalg import BlockedCholesky
from ..objective import LMMDeviance
from ..inference.ddf_default import check_fit_ddf
from ..optimize import OptSummary, minimize_theta
from .._args import reject_unknown
from .._blas import blas_threads
from .._frames import as_dataframe
from .results import CorrelatedLMMResults, CorrelatedResultsWrapper
from .structs import CorStruct

__all__ = ["CorrelatedLinearMixedModel", "CorrelatedDeviance"]

_CHECK_TOL = 1e-7         # the largest Newton decrement (deviance units) at a converged fit
# a second difference (deviance units, steps of 0.05 in the logit of the parameter) below this
# is the rounding noise of the fits in theta: the profile is flat, the parameter not identified
_FLAT = 1e-6


def _same_partition(codes, starts):
    """Whether sorted level codes change exactly where the correlation's groups start."""
    change = np.ones(len(codes), dtype=bool)
    change[1:] = codes[1:] != codes[:-1]
    return bool(np.array_equal(change, starts))


class _Whitened:
    """The whitened model at one ``phi``: what :class:`LMMDeviance` reads from a model."""

    def __init__(self, model, rho):
        cs = model._cor
        order, starts, lags = model._order, model._starts, model._lags
        M = np.column_stack([model._XY[order]] + [t.X[order] for t in model.re_design.terms])
        W, logdet = cs.whiten(rho, M, starts, lags)
        k = model._XY.shape[1]
        self._XY = W[:, :k]
        terms, off = [], k
        for t in model.re_design.terms:
            nt = ReTerm(t.name, t.factors, t.lhs, W[:, off:off + t.q], t.colnames, t.codes[order],
                        t.levels, t.keys, t.kinds)
            off += t.q
            terms.append(nt)
        self.re_design = RandomEffectsDesign(terms)
        self.nobs, self.k_fe = model.nobs, model.k_fe
        self.logdet = logdet
        self._logw = -logdet              # -2 log L gains log det R
        self._xprod = None

    def _cross_products(self):
        if self._xprod is None:
            self._xprod = BlockedCholesky(self.re_design.blocks, self._XY, np.ones(self._XY.shape[0]))
        return self._xprod


class CorrelatedDeviance:
    """The (RE)ML deviance of a correlated LMM in ``(theta, phi)``, for inference.

    ``value_sigma(x, sigma)`` and ``cov_beta(x, sigma)`` take ``x = (theta, phi)`` (lmerTest's
    Satterthwaite df then include ``phi`` among the variance parameters); ``value(theta)``,
    ``at(theta)`` and ``condvar`` are at the fitted ``phi``.
    """

    def __init__(self, model, reml, rho):
        self.model, self.reml, self.rho = model, bool(reml), float(rho)
        self._devs = {}

    def at_rho(self, rho):
        d = self._devs.get(rho)
        if d is None:
            if len(self._devs) > 64:
                self._devs.clear()
            d = self._devs[rho] = LMMDeviance(_Whitened(self.model, rho), reml=self.reml)
        return d

    def _split(self, x):
        x = np.asarray(x, dtype=float)
        lo, hi = self.model._cor.bounds(self.model._sizes)
        rho = float(x[-1])
        return x[:-1], rho, lo < rho < hi

    def value_sigma(self, x, sigma, reml=None):
        theta, rho, ok = self._split(x)
        return self.at_rho(rho).value_sigma(theta, sigma, reml) if ok else np.inf

    def cov_beta(self, x, sigma):
        theta, rho, _ = self._split(x)
        return self.at_rho(rho).cov_beta(theta, sigma)

    def value(self, theta):
        return self.at_rho(self.rho).value(theta)

    def at(self, theta):
        return self.at_rho(self.rho).at(theta)

    def condvar(self, theta, sigma):
        return self.at_rho(self.rho).condvar(theta, sigma)


class CorrelatedLinearMixedModel(LinearMixedModel):
    """Linear mixed model with residual correlation within groups (nlme's ``lme`` with
    ``correlation=``).

    Usually created with ``mlmext.formula.api.lmer(formula, data, correlation=...)``.

    Parameters
    ----------
    endog, exog, re_design, weights, offset
        As :class:`~mlmext.lmm.LinearMixedModel` (prior weights are not supported).
    correlation : CorStruct
        :class:`~mlmext.cor.AR1`, :class:`~mlmext.cor.CAR1` or :class:`~mlmext.cor.CompSymm`.
    cor_data : pandas.DataFrame
        The correlation's time and group columns, one row per row of ``endog``
        (``from_formula`` takes them from the data).
    """

    _response_refit = False      # the whitening depends on more than the design

    _api_name = "lmer"

    def __init__(self, endog, exog, re_design, weights=None, offset=None, correlation=None,
                 cor_data=None, **kwargs):
        if not isinstance(correlation, CorStruct):
            raise TypeError("correlation must be mlmext.cor.AR1(...), CAR1(...) or CompSymm(...); "
                            f"got {correlation!r}")
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        if weights is not None and not np.all(self.weights == 1):
            raise NotImplementedError("prior weights with a residual correlation structure are not "
                                      "implemented")
        self.correlation = correlation
        self._cor = correlation
        self._bind(cor_data)

    @classmethod
    def from_formula(cls, formula, data, subset=None, weights=None, offset=None, missing="drop",
                     eval_env=0, correlation=None, **kwargs):
        """As :meth:`LinearMixedModel.from_formula`, with ``correlation=``; the correlation's
        columns are read from ``data`` for the rows the model keeps."""
        if not isinstance(correlation, CorStruct):
            raise TypeError("correlation must be mlmext.cor.AR1(...), CAR1(...) or CompSymm(...); "
                            f"got {correlation!r}")
        if "cor_data" in kwargs:
            raise TypeError("cor_data is taken from data by from_formula")
        cols = [c for c in ((correlation.time,) if correlation.needs_time else ())
                + (correlation.group or ()) if c is not None]
        data_df = as_dataframe(data)
        absent = [c for c in cols if c not in data_df.columns]
        if absent:
            raise ValueError(f"correlation: unknown column(s) {absent} (the data has columns "
                             f"{list(data_df.columns)})")
        if not data_df.index.is_unique:
            raise ValueError("a correlation structure needs data with a unique row index "
                             "(use data.reset_index(drop=True))")
        env = eval_env + 1 if isinstance(eval_env, int) else eval_env
        base = LinearMixedModel.from_formula(formula, data, subset=subset, weights=weights,
                                             offset=offset, missing=missing, eval_env=env)
        info = base.formula_info
        labels = info.get("row_labels")
        cor_data = data_df.loc[labels, cols].reset_index(drop=True)
        mod = cls(base.data.orig_endog, base.data.orig_exog, base.re_design,
                  weights=None if not info.get("has_weights") else base.weights,
                  offset=base.offset if info.get("has_offset") else None, formula_info=info,
                  correlation=correlation, cor_data=cor_data, **kwargs)
        mod.formula = formula
        return mod

    def _bind(self, cor_data):
        """Order of the rows by group and time, the groups' sizes and the time lags."""
        cs = self._cor
        n = self.endog.shape[0]
        if not isinstance(cor_data, pd.DataFrame) or len(cor_data) != n:
            raise ValueError(f"cor_data must be a DataFrame with one row per observation ({n})")
        group = cs.group
        if group is None:
            facs = {t.factors for t in self.re_design.terms}
            if len(facs) != 1:
                raise ValueError("correlation: give group= (the model has several grouping factors)")
            group = next(iter(facs))
            codes = self.re_design.terms[0].codes
        else:
            if cor_data[list(group)].isna().any().any():
                raise ValueError(f"correlation: the group column(s) {list(group)} have missing values")
            codes = grouping_factor(cor_data, list(group))[0]
        self.cor_group = tuple(group)
        if cs.needs_time:
            time = pd.to_numeric(cor_data[cs.time], errors="coerce").to_numpy(dtype=float)
            if not np.all(np.isfinite(time)):
                raise ValueError(f"correlation: the time column {cs.time!r} needs finite numbers "
                                 "in every row the model uses")
            cs.check_time(time, cs.time)
        else:
            time = np.zeros(n)
        order = np.lexsort((time, codes))
        c, t = codes[order], time[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = c[1:] != c[:-1]
        lags = np.zeros(n)
        lags[1:] = t[1:] - t[:-1]
        if cs.needs_time and np.any(~starts & (lags == 0)):
            i = int(np.flatnonzero(~starts & (lags == 0))[0])
            raise ValueError(f"correlation: the time {t[i]:g} appears twice in one group "
                             f"({', '.join(self.cor_group)}); times must be unique within a group")
        for term in self.re_design.terms:    # whitening mixes rows of a group only
            tc = term.codes[order]
            if np.any(~starts[1:] & (tc[1:] != tc[:-1])):
                raise NotImplementedError(
                    f"the random-effects term ({term.lhs} | {term.name}) varies within the "
                    f"correlation's groups ({', '.join(self.cor_group)}): residual correlation is "
                    "implemented when each correlation group lies within one level of every "
                    "grouping factor (the same factor or one it is nested in), not for crossed ones")
        if not cs.needs_time:
            for term in self.re_design.terms:
                if "Intercept" in term.colnames and _same_partition(term.codes[order], starts):
                    warnings.warn(f"CompSymm within the levels of ({term.lhs} | {term.name}): its "
                                  f"{cs.param_name} and the intercept's variance are not separately "
                                  "identified (use it for groups nested in the random effects' "
                                  "factor)", UserWarning, stacklevel=5)
        self._order, self._starts, self._lags = order, starts, lags
        self._sizes = np.bincount(np.cumsum(starts) - 1)
        if np.max(self._sizes) < 2:
            raise ValueError("correlation: every group has one row; there is nothing to correlate")

    def whitened(self, rho):
        """The whitened model at ``rho`` (rows sorted by group and time)."""
        return _Whitened(self, float(rho))

    def deviance(self, reml=True, rho=None):
        """The criterion at a given correlation parameter (:class:`CorrelatedDeviance`)."""
        if rho is None:
            raise ValueError("give rho= (the correlation parameter) for the deviance of a "
                             "correlated model")
        return CorrelatedDeviance(self, reml, rho)

    def deviance_profiled(self, theta, reml=True, rho=None):
        return self.deviance(reml, rho).value(theta)

    def _profile(self, reml, start=None):
        """``z -> (criterion minimized over theta, optimizer result, phi, deviance)`` with warm
        starts, the memo of its fits, and the best point so far (with the first start)."""
        cs, sizes = self._cor, self._sizes
        memo = {}
        best = {"theta": start}

        def fit_at(z):
            if z in memo:
                return memo[z]
            rho = cs.from_unconstrained(z, sizes)
            dev = LMMDeviance(_Whitened(self, rho), reml=reml)
            des = dev.design
            units = des.theta_units()
            x0 = des.theta_start / units if best["theta"] is None else best["theta"]
            best.setdefault("initial", np.append(x0, rho))      # the first fit's start
            opt = minimize_theta(dev.value, x0, dev.lower, grad=dev.value_and_grad, scale=units,
                                 reflect=des.canonical_theta, tol=1e-10)
            memo[z] = (float(opt.fun), opt, rho, dev)
            if best.get("f") is None or opt.fun < best["f"]:
                best["f"], best["theta"] = float(opt.fun), np.asarray(opt.x, dtype=float)
            return memo[z]
        return fit_at, memo, best

    def loglike(self, params, reml=True):
        """Not implemented with a correlation structure (the fit's ``llf`` is the maximum)."""
        raise NotImplementedError("loglike(params) is not implemented for a model with a residual "
                                  "correlation structure; the fit's llf is its maximum")

    def score(self, params, reml=True):
        """Not implemented with a correlation structure."""
        raise NotImplementedError("score(params) is not implemented for a model with a residual "
                                  "correlation structure")

    def fit(self, reml=True, start_params=None, maxiter=200, disp=False, ddf="satterthwaite",
            **kwargs):
        """Fit by REML (default) or ML.

        Parameters
        ----------
        reml : bool
        start_params : array_like, optional
            Starting theta of the first fit in theta (as ``lmer``'s; e.g. a REML fit's theta
            for its ML refit).
        maxiter : int
            Iterations of the search in the correlation parameter.
        disp : bool
            Print the criterion and the number of fits in theta.
        ddf : {"satterthwaite", "z"}
            The tests of the fixed effects: t tests on Satterthwaite df with the correlation
            parameter as one more variance parameter (default, as for ``lmer``), or z tests.
            Kenward-Roger's method is not implemented with a correlation structure.

        Returns
        -------
        CorrelatedLMMResults

        Notes
        -----
        Theta is fitted as for ``lmer`` (with its second-order checks) for each value of the
        correlation parameter; the parameter is searched by Brent's method in the logit of
        its position in its interval, then refined by Newton steps on central differences
        of that profile.  ``converged`` means the fit in theta passed its checks and the
        profile's Newton decrement is below 1e-7 with positive curvature.
        """
        reject_unknown(kwargs, "fit()", accepted=["reml", "start_params", "maxiter", "disp", "ddf"])
        if not isinstance(reml, (bool, np.bool_)):
            raise ValueError(f"reml must be True (REML) or False (ML); got {reml!r}")
        if check_fit_ddf(ddf, reml) == "kenward-roger":
            raise NotImplementedError("Kenward-Roger's df are not implemented for models with a "
                                      "residual correlation structure; use ddf='satterthwaite'")
        cs, sizes = self._cor, self._sizes
        if start_params is not None:
            start_params = np.asarray(start_params, dtype=float).ravel()
            if start_params.size != self.re_design.ntheta:
                raise ValueError(f"start_params needs {self.re_design.ntheta} values (theta: "
                                 f"{self.re_design.theta_names()}); got {start_params.size}")
        fit_at, memo, best = self._profile(reml, start_params)
        f = lambda z: fit_at(float(z))[0]
        z0 = cs.to_unconstrained(cs.start(sizes), sizes)
        with blas_threads(1):
            f(z0)
            r = optimize.minimize_scalar(f, bounds=(-15.0, 15.0), method="bounded",
                                         options={"xatol": 1e-3, "maxiter": maxiter})
            z = float(r.x)
            h = 1e-3
            dec, curv, msg = np.inf, np.nan, ""
            for _ in range(6):                    # Newton on the profile's central differences
                fz, fp, fm = f(z), f(z + h), f(z - h)
                g, curv = (fp - fm) / (2 * h), (fp - 2 * fz + fm) / h ** 2
                if not curv > 0:
                    msg = f"the profile in {cs.param_name} is not convex at the end point"
                    break
                dec = 0.5 * g * g / curv
                step = -g / curv
                if dec < 0.01 * _CHECK_TOL:
                    break
                zn = float(np.clip(z + step, -15.0, 15.0))
                if f(zn) < fz:
                    z = zn
                else:
                    break
            d2 = f(z + 0.05) - 2.0 * f(z) + f(z - 0.05)     # a wider second difference: flat?
            if not msg and not d2 > _FLAT:
                msg = (f"the criterion is flat in {cs.param_name} around the end point (second "
                       f"difference {d2:.2g}): the correlation parameter is not identified")
            fz, opt, rho, dev = fit_at(z)
            state = dev.at(opt.x)
        at_edge = abs(z) >= 15.0 - 1e-6
        conv = (bool(opt.success) and dec < _CHECK_TOL and not at_edge and curv > 0
                and d2 > _FLAT)
        if not msg:
            msg = (f"{cs.param_name} at the edge of its interval" if at_edge else
                   f"profile Newton decrement {dec:.2g} in {cs.param_name}; theta: {opt.message}")
        if disp:
            print(f"profile in {cs.param_name}: second difference {d2:.3g} at steps of 0.05")
        nfits = len(memo)
        nfev = int(sum(m[1].nfev for m in memo.values()))
        res_opt = optimize.OptimizeResult(
            x=np.append(np.asarray(opt.x, float), rho), fun=fz, success=conv, message=msg,
            nfev=nfev, tried=[(f"Brent + Newton in {cs.param_name}", conv, nfits),
                              ("fits in theta (L-BFGS-B + Newton, second-order checks)",
                               bool(opt.success), nfev)])
        osum = OptSummary.from_result(res_opt, initial=best["initial"],
                                      optimizer=f"profile in {cs.param_name} over fits in theta")
        res = CorrelatedLMMResults(self, state, optim=osum, rho=rho, ddf=ddf)
        if disp:
            print(f"{'REML criterion' if reml else '-2 log-likelihood'} {fz:.6f} after {nfits} "
                  f"fits in theta ({nfev} evaluations): {msg}")
        if not res.converged:
            warnings.warn(f"the optimizer did not converge: {msg}", ConvergenceWarning, stacklevel=2)
        if res.is_singular():
            warnings.warn("boundary (singular) fit: a random-effects covariance is singular; see "
                          "results.is_singular()", ConvergenceWarning, stacklevel=2)
        return CorrelatedResultsWrapper(res)
