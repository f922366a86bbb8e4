"""Refit a model with every available optimizer and compare the fits (lme4's ``allFit``).

A fit that several optimizers reach from the same start is at the optimum; one that moves when
the optimizer changes is not (or its likelihood is flat there).  :func:`allfit` refits the model
of a result and tabulates the deviance, the estimates, convergence and time per optimizer;
:meth:`AllFitTable.summary` condenses the table into the largest disagreements.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy import optimize

from ..objective import sdcor_from_theta
from ._common import _is_lmm, _raw, _require_independent, _require_no_zero_part
from ._profile_common import varpar_names
from ._refit import _fit_kwargs

__all__ = ["allfit", "AllFitTable", "LMM_METHODS", "DERIVATIVE_FREE"]

#: The optimizers an LMM is refitted with besides its default (``fit(method=...)``).
LMM_METHODS = ("COBYQA", "Nelder-Mead", "Powell", "L-BFGS-B")
#: The derivative-free minimizers of ``-2 loglike`` for GLMMs and clmm (scipy methods).
DERIVATIVE_FREE = ("COBYQA", "Nelder-Mead", "Powell")

_STATUS = ["converged", "seconds", "note"]


class AllFitTable(pd.DataFrame):
    """
    The fits of :func:`allfit`: a DataFrame, one row per optimizer.

    Columns: ``deviance`` (-2 log-likelihood; the REML criterion for REML fits),
    the fixed effects (with clmm's thresholds), the variance parameters (sd /
    correlation scale, ``sigma`` for LMMs, ``alpha`` for negative binomial
    models), ``converged``, ``seconds`` and ``note`` (the optimizer's message,
    warnings, or the error of a fit that failed: its estimates are NaN).

    ``attrs`` holds ``se`` (standard errors of the fixed effects from the
    original fit, the unit of :meth:`spread`), ``fe_names`` and ``vp_names``
    (the columns of the fixed effects and of the variance parameters) and
    ``title`` (the model, for :meth:`summary`).
    """

    @property
    def _constructor(self):
        return pd.DataFrame          # slices and copies are plain DataFrames

    def spread(self):
        """The largest disagreements between the fits that ran (finite deviance).

        Returns
        -------
        pandas.Series
            ``deviance`` (largest minus smallest deviance), ``deviance_worst``
            (the optimizer with the largest), ``fixed_se`` (largest range of a
            fixed effect in standard errors of the original fit) with
            ``fixed_worst``, ``varpar_rel`` (largest range of a variance
            parameter relative to its largest absolute value, absolute for
            correlations) with ``varpar_worst``, ``n_fits``, ``n_converged``.
        """
        ok = self[np.isfinite(self["deviance"].to_numpy(dtype=float))]
        out = {"n_fits": len(ok), "n_converged": int(ok["converged"].sum())}
        dev = ok["deviance"].astype(float)
        out["deviance"] = float(dev.max() - dev.min()) if len(ok) else np.nan
        out["deviance_worst"] = dev.idxmax() if len(ok) else ""
        fe_names, vp_names = self.attrs["fe_names"], self.attrs["vp_names"]
        fe = ok[fe_names].astype(float)
        se = pd.Series(self.attrs["se"], index=fe_names, dtype=float)
        rng = (fe.max() - fe.min()) / se.where(se > 0)
        out["fixed_se"] = float(rng.max()) if rng.notna().any() else np.nan
        out["fixed_worst"] = rng.idxmax() if rng.notna().any() else ""
        vp = ok[vp_names].astype(float)
        unit = vp.abs().max().where(lambda s: s > 0)
        unit[[c.startswith("cor_") for c in vp_names]] = 1.0
        rel = (vp.max() - vp.min()) / unit
        out["varpar_rel"] = float(rel.max()) if rel.notna().any() else np.nan
        out["varpar_worst"] = rel.idxmax() if rel.notna().any() else ""
        return pd.Series(out, dtype=object)

    def summary(self):
        """A few lines: how many fits converged and how far apart they are."""
        s = self.spread()
        failed = [str(i) for i in self.index[~np.isfinite(self["deviance"].to_numpy(dtype=float))]]
        lines = [f"allfit: {self.attrs['title']}",
                 f"  {s['n_fits']} of {len(self)} fits ran, {s['n_converged']} converged"
                 + (f"; failed: {', '.join(failed)}" if failed else ""),
                 f"  deviance: largest difference {s['deviance']:.3g} (highest: {s['deviance_worst']})",
                 f"  fixed effects: largest spread {s['fixed_se']:.3g} SE ({s['fixed_worst']})"]
        if self.attrs["vp_names"]:
            lines.append(f"  variance parameters: largest relative spread {s['varpar_rel']:.3g} "
                         f"({s['varpar_worst']})")
        return "\n".join(lines)


def _timed(fn):
    """``(value, seconds, warning messages, error)`` of ``fn()``."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, err = fn(), None
        except Exception as exc:  # noqa: BLE001 - a failed optimizer is a row of the table
            out, err = None, f"{type(exc).__name__}: {exc}"
    msgs = list(dict.fromkeys(str(w.message).split("; ")[0][:100] for w in caught))
    return out, time.perf_counter() - t0, msgs, err


def _note(*parts):
    return "; ".join(p for p in parts if p)


class _Layout:
    """Where a model's parameter vector (``model.param_names``) keeps what."""

    def __init__(self, res):
        r = _raw(res)
        self.model = r.model
        self.design = r.model.re_design
        self.lmm = _is_lmm(r)
        self.fe_names = [str(n) for n in r.model.data.param_names]     # statsmodels: the names of params
        self.has_sigma = bool(getattr(r, "_has_residual", False))
        vp = varpar_names(r)
        names = list(getattr(r.model, "param_names", []))
        th = self.design.theta_names()
        self.extra_names = [n for n in names if n not in self.fe_names and n not in th]
        self.vp_names = vp + self.extra_names
        if not self.lmm:
            self.i_fe = [names.index(n) for n in self.fe_names]
            self.i_theta = [names.index(n) for n in th]
            self.i_extra = [names.index(n) for n in self.extra_names]
            self.n = len(names)

    def row_from_results(self, r):
        r = _raw(r)
        sigma = float(r.sigma) if self.has_sigma else 1.0
        vp = list(sdcor_from_theta(self.design, np.asarray(r.theta, dtype=float), sigma))
        vp += [sigma] if self.has_sigma else []
        vp += [float(getattr(r, n)) for n in self.extra_names]
        return -2.0 * float(r.llf), np.asarray(r.params, dtype=float), np.array(vp)

    def pack(self, fe, theta, extra):
        x = np.empty(self.n)
        x[self.i_fe], x[self.i_theta], x[self.i_extra] = fe, theta, extra
        return x

    def row_from_vector(self, x, deviance):
        vp = list(sdcor_from_theta(self.design, x[self.i_theta], 1.0)) + list(x[self.i_extra])
        return deviance, x[self.i_fe], np.array(vp)

    def lower(self):
        lo = np.full(self.n, -np.inf)
        lo[self.i_theta] = self.design.lower
        lo[self.i_extra] = 1e-10            # negative binomial alpha > 0
        return lo


def _objective(model, nagq):
    """``x -> -2 model.loglike(x)``, infinite where the log-likelihood is not defined."""
    def f(x):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = -2.0 * float(model.loglike(np.asarray(x, dtype=float), nagq=nagq))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, RuntimeError):
            return np.inf
        return v if np.isfinite(v) else np.inf
    return f


def _minimize(f, x0, lower, method, maxfev):
    """A bounded derivative-free minimization of ``f`` from ``x0`` (scipy)."""
    bounds = optimize.Bounds(lower, np.full(len(lower), np.inf))
    x0 = np.maximum(x0, lower)
    scale = max(1.0, float(np.max(np.abs(x0))))
    opts = {"COBYQA": {"maxfev": maxfev, "initial_tr_radius": 0.1 * scale, "final_tr_radius": 1e-9 * scale},
            "Nelder-Mead": {"maxfev": maxfev, "maxiter": maxfev, "xatol": 1e-8, "fatol": 1e-10,
                            "adaptive": len(x0) > 4},
            "Powell": {"maxfev": maxfev, "xtol": 1e-8, "ftol": 1e-12}}.get(method, {"maxiter": maxfev})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return optimize.minimize(f, x0, method=method, bounds=bounds, options=opts)


def _lme4_start(lay, f, r):
    """lme4's start: the model without random effects (theta = 0) for the fixed part, then
    theta at the design's start (1 on the diagonals); extra parameters at the fit's values."""
    theta0 = np.zeros(len(lay.i_theta))
    extra = np.array([float(getattr(r, n)) for n in lay.extra_names])
    g = lambda fe: f(lay.pack(fe, theta0, extra))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fe = optimize.minimize(g, np.asarray(r.params, dtype=float), method="BFGS",
                               options={"gtol": 1e-6}).x
    return lay.pack(fe, np.asarray(lay.design.theta_start, dtype=float), extra)


def allfit(res, methods=None, maxfev=20000):
    """
    Refit the model of ``res`` with every available optimizer (lme4's ``allFit``).

    Parameters
    ----------
    res : MixedResults
        A fitted ``lmer``, ``glmer``, ``glmer_nb`` or ``clmm`` model.
    methods : sequence of str, optional
        The optimizers besides the default fit.  LMMs: methods of
        ``fit(method=...)`` (default :data:`LMM_METHODS`: COBYQA,
        Nelder-Mead, Powell, L-BFGS-B; any bounded ``scipy.optimize.minimize``
        method works).  GLMMs and clmm, which have one built-in optimizer:
        scipy methods that minimize ``-2 * model.loglike(params, nagq)`` over
        all parameters at once without derivatives (default
        :data:`DERIVATIVE_FREE`: COBYQA, Nelder-Mead, Powell).
    maxfev : int
        Largest number of evaluations of each derivative-free minimizer
        (GLMMs and clmm; TypeError for an LMM when not the default).

    Returns
    -------
    AllFitTable
        A DataFrame with one row per optimizer (``default``, then, for GLMMs
        and clmm, ``default, lme4 start``, then ``methods``) and columns
        ``deviance``, the fixed effects, the variance parameters,
        ``converged``, ``seconds`` and ``note``; ``summary()`` prints the
        largest differences (deviance, fixed effects in standard errors,
        variance parameters relative to their size).

    Notes
    -----
    LMMs are refitted with ``fit(reml=..., method=m)`` (the criterion of the
    original fit), from the default start.  GLMMs and clmm are refitted with
    ``fit(nagq=...)`` (the original fit's quadrature); once from the default
    start and once from lme4's start (the fixed part of the model without
    random effects, theta 1 on the diagonals and 0 elsewhere), and the
    derivative-free minimizers start from lme4's start too, as ``allFit``
    starts every optimizer from one point.  A method that fails gives a row of
    NaN with the error in ``note``; nothing is raised.

    Examples
    --------
    >>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy).fit()
    >>> fits = res.allfit()
    >>> print(fits.summary())     # largest disagreements between the optimizers
    """
    _require_independent(res, "allfit()")
    _require_no_zero_part(res, "allfit()")
    r = _raw(res)
    lay = _Layout(r)
    kw = _fit_kwargs(r)
    rows, names = [], []

    def add(name, values, converged, seconds, note):
        names.append(name)
        rows.append((values, converged, seconds, note))

    nan = (np.nan, np.full(len(lay.fe_names), np.nan), np.full(len(lay.vp_names), np.nan))
    if lay.lmm:
        if maxfev != 20000:
            # (was ignored: each LMM method runs with its fit's own limits, fit(maxiter=...))
            raise TypeError("maxfev is read for GLMMs and clmm (their derivative-free "
                            "minimizers); an LMM's methods run as fit(method=m)")
        todo = [("default", {})] + [(m, {"method": m}) for m in (LMM_METHODS if methods is None else methods)]
        for name, extra in todo:
            fit, secs, msgs, err = _timed(lambda extra=extra: lay.model.fit(**kw, **extra))
            if err:
                add(name, nan, False, secs, err)
                continue
            f = _raw(fit)
            add(name, lay.row_from_results(f), bool(f.converged), secs,
                _note(f"{f.optim.optimizer}: {f.optim.message}", *msgs))
        title = f"{getattr(lay.model, 'formula', '')} ({'REML' if kw.get('reml') else 'ML'})"
    else:
        nagq = int(kw.get("nagq", 1))
        f = _objective(lay.model, nagq)
        start, secs0, _, err0 = _timed(lambda: _lme4_start(lay, f, r))
        starts = [("default", None), ("default, lme4 start", start)]
        for name, sp in starts:
            if name != "default" and err0:
                add(name, nan, False, secs0, f"no start: {err0}")
                continue
            fit, secs, msgs, err = _timed(lambda sp=sp: lay.model.fit(**kw, **({} if sp is None else
                                                                              {"start_params": sp})))
            if err:
                add(name, nan, False, secs, err)
                continue
            fr = _raw(fit)
            add(name, lay.row_from_results(fr), bool(fr.converged), secs + (secs0 if sp is not None else 0.0),
                _note(str(getattr(fr.optim, "message", "")), *msgs))
        for m in (DERIVATIVE_FREE if methods is None else methods):
            if err0:
                add(m, nan, False, 0.0, f"no start: {err0}")
                continue
            out, secs, msgs, err = _timed(lambda m=m: _minimize(f, start, lay.lower(), m, maxfev))
            if err or not np.isfinite(out.fun):
                add(m, nan, False, secs, err or "no finite log-likelihood reached")
                continue
            # 'converged' here is scipy's own verdict (no second-order checks on this row)
            add(m, lay.row_from_vector(out.x, float(out.fun)), bool(out.success), secs,
                _note(f"{int(getattr(out, 'nfev', 0))} evaluations: {out.message} (scipy's "
                      "convergence test)", *msgs))
        title = f"{getattr(lay.model, 'formula', '')} ({'Laplace' if nagq == 1 else f'AGQ, {nagq} nodes'})"

    data = {"deviance": [v[0][0] for v in rows]}
    for k, n in enumerate(lay.fe_names):
        data[n] = [v[0][1][k] for v in rows]
    for k, n in enumerate(lay.vp_names):
        data[n] = [v[0][2][k] for v in rows]
    data["converged"] = [v[1] for v in rows]
    data["seconds"] = [v[2] for v in rows]
    data["note"] = [v[3] for v in rows]
    table = AllFitTable(data, index=pd.Index(names, name="optimizer"))
    table.attrs.update(se=np.asarray(r.bse, dtype=float).tolist(), fe_names=lay.fe_names,
                       vp_names=lay.vp_names, title=title)
    return table
