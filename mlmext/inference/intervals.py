"""Confidence intervals: profile likelihood, parametric bootstrap, and Wald.

Variance parameters are reported on the standard-deviation / correlation scale and named
``sd_<column>|<group>``, ``cor_<column i>.<column j>|<group>`` and ``sigma`` (lme4's
``oldNames = FALSE`` names with mlmext's column names), in the order of ``theta``: for each
random-effects term the lower triangle of its covariance matrix, column by column, with
standard deviations on the diagonal and correlations below it.  ``names="lme4"`` gives
lme4's ``.sig01, .sig02, ..., .sigma`` instead.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ._common import _beta, _fe_names, _Progress, _raw, _require_independent, _select
from ..objective import sdcor_from_thetas
from ..printing import param_index
from ._profile import _Profiler
from ._profile_common import check_names, varpar_names
from ._refit import _rebuild_model, _refit
from .ddf_default import ddf_active, default_conf_int
from .refit_batch import _batched_or_none
from .._args import check_flag
from .simulation import simulate

# Every conf_int method labels its columns as statsmodels' conf_int does (0 = lower, 1 = upper),
# so code written for statsmodels results reads profile and bootstrap intervals unchanged.
CI_COLUMNS = [0, 1]


@contextlib.contextmanager
def _profiling(res, nb_alpha=None):
    """A profiler for ``res``, run with the fit's BLAS threading (it has its own deviance)."""
    pr = _Profiler(res, nb_alpha)
    with pr.context():
        yield pr


def conf_int_profile(res, alpha=0.05, cols=None, names="descriptive", nb_alpha=None):
    """Profile-likelihood confidence intervals (lme4's ``confint(method = "profile")``).

    For each parameter, the deviance minimized over all other parameters is computed with
    the parameter held fixed, and the interval ends are where
    ``zeta = sign(x - x_hat) sqrt(deviance - deviance_min)`` reaches the normal quantiles.
    The ends are found by root finding on the exact profile (lme4 interpolates a spline
    through a grid of profile points; the two agree to about 1e-4 relative).

    * LMMs: as lme4, the profile is that of the maximum-likelihood fit (REML fits are
      refitted by ML first); the parameters are the sd / correlation parameters, ``sigma``
      and the fixed effects.
    * GLMMs (``glmer``, ``glmer_nb``): the deviance is the fit's own -- Laplace, or
      adaptive Gauss-Hermite for ``nagq > 1`` -- and every other variance parameter and
      fixed effect is re-optimized at each profile point (lme4's ``devfun2``).  There is no
      ``sigma``.  The family's own parameter is re-optimized at each point and profiled
      itself, as glmmTMB does: ``scale`` (Gamma, inverse Gaussian), ``phi`` (NB1, beta;
      glmmTMB's ``sigma``), and for zero-inflated / hurdle models the zero-inflation
      coefficients ``zi_...`` and NB2's ``alpha`` -- a dispersion profiled on its log scale
      and reported on its own (the interval is the same: zeta is invariant under monotone
      transformations).  For ``glmer_nb`` fits the dispersion ``alpha`` is held at its
      estimate and not profiled, as lme4 holds ``glmer.nb``'s theta, unless
      ``nb_alpha="free"``.

    clmm fits raise ``NotImplementedError``.

    Parameters
    ----------
    res : LMM or GLMM results
    alpha : float
        1 - confidence level.
    cols : list of str or int, optional
        Parameters to profile (names as in the output, or positions); all by default.
    names : {"descriptive", "lme4"}
        Row names, see :func:`varpar_names`.
    nb_alpha : {None, "fixed", "free"}
        ``glmer_nb`` fits only: ``"fixed"`` (the default, lme4's) holds alpha at its
        estimate; ``"free"`` re-optimizes it at each point and adds a row for it (glmmTMB's
        profile of ``nbinom2``).  Other models: ``TypeError``.

    Returns
    -------
    pandas.DataFrame
        Rows: variance parameters (``sd_...``, ``cor_...``, LMMs: ``sigma``), the family's
        dispersion (``scale``, ``phi`` or ``alpha``), the fixed effects, then zero-inflation
        coefficients; columns ``0`` (lower) and ``1`` (upper) as statsmodels';
        ``attrs["boundary"]`` lists the (row, side) pairs where the profile reached a
        parameter bound (SD 0, correlation +-1) before the cutoff: those intervals are
        one-sided and end at the bound (an SD's lower limit is then 0, as lme4 reports it).
        A dispersion or zero-inflation coefficient whose profile stays below the cutoff
        within a factor e^30 (30 on the logit scale) of its estimate -- NB's alpha towards
        the Poisson limit, a zero-inflation intercept towards no zero inflation -- gets the
        limit 0 (dispersion) or -inf / inf there (glmmTMB reports NA).
    """
    _require_independent(res, "conf_int_profile()")
    check_names(names)
    z = stats.norm.ppf(1 - alpha / 2)
    with _profiling(res, nb_alpha) as pr:
        idx = _select(pr.names, cols) if not (cols is not None and names == "lme4") else \
            _select(pr.lme4_names, cols)
        rows, boundary = [], []
        for w in idx:
            lo, blo = pr.limit(w, -1, z)
            hi, bhi = pr.limit(w, +1, z)
            rows.append((pr.report(w, lo, limit=True), pr.report(w, hi, limit=True)))
            if blo:
                boundary.append((pr.names[w], "lower"))
            if bhi:
                boundary.append((pr.names[w], "upper"))
    if pr.low_dev < -1e-6:
        warnings.warn(f"profiling found a deviance {-pr.low_dev:.3g} below the fit's: the fit had "
                      "not converged to the maximum", UserWarning, stacklevel=2)
    labels = pr.lme4_names if names == "lme4" else pr.names
    out = pd.DataFrame(rows, index=param_index(labels[w] for w in idx), columns=CI_COLUMNS)
    out.attrs["boundary"] = boundary
    out.attrs["method"] = "profile"
    return out


def profile(res, cols=None, alpha=0.01, npoints=6, names="descriptive", nb_alpha=None):
    """Profile zeta traces (lme4's ``profile``), for plotting and checking.

    LMMs and GLMMs, with the profiles of :func:`conf_int_profile`.

    Parameters
    ----------
    res : LMM or GLMM results
    cols : list, optional
        Parameters (names or positions); all by default.
    alpha : float
        The traces extend to the profile interval of level ``1 - alpha`` on each side (or
        to a parameter bound, such as an SD of 0, reached before it).
    npoints : int
        Points per side.
    names : {"descriptive", "lme4"}
        Parameter names, see :func:`varpar_names`.
    nb_alpha : {None, "fixed", "free"}
        As :func:`conf_int_profile`.

    Returns
    -------
    pandas.DataFrame
        Long format: ``parameter``, ``value``, ``zeta`` (sorted by parameter and value);
        one row per parameter at its estimate, with zeta 0.  A dispersion's points are
        equally spaced on its log scale.
    """
    _require_independent(res, "profile()")
    check_names(names)
    z = stats.norm.ppf(1 - alpha / 2)
    with _profiling(res, nb_alpha) as pr:
        labels = pr.lme4_names if names == "lme4" else pr.names
        idx = _select(labels, cols)
        rows = []
        for w in idx:
            rows.append((labels[w], pr.report(w, pr.est[w]), 0.0))
            for side in (-1, 1):
                lim, _ = pr.limit(w, side, z)
                for x in np.linspace(pr.est[w], lim, npoints + 1)[1:]:
                    if x != pr.est[w]:
                        rows.append((labels[w], pr.report(w, x), pr.zeta(w, x)))
    out = pd.DataFrame(rows, columns=["parameter", "value", "zeta"])
    return out.sort_values(["parameter", "value"], kind="stable").reset_index(drop=True)


def profile_zeta(res, param, values, nb_alpha=None):
    """zeta of the profile of one parameter at given values (lme4's ``.zeta``).

    ``param`` is a name (descriptive or lme4's ``.sig01``) or a position; ``values`` are
    on the scale of :func:`conf_int_profile` (a dispersion on its own, positive, scale);
    ``nb_alpha`` as there.
    """
    with _profiling(res, nb_alpha) as pr:
        w = _select(pr.names, param)[0] if not str(param).startswith(".") else \
            _select(pr.lme4_names, param)[0]
        return np.array([pr.zeta(w, pr.internal(w, float(x))) for x in np.atleast_1d(values)])


def _boot_statistic(r):
    """The bootstrap's default statistic of one fit: its variance parameters on the sd /
    correlation scale (and sigma), then its fixed effects."""
    r = _raw(r)
    # (a batched refit's member reads the fit's design: its own model is not made)
    return _boot_statistics(r._design_model() if hasattr(r, "_design_model") else r.model,
                            [r])[0]


def _boot_statistics(model, fits):
    """:func:`_boot_statistic` of each of ``fits`` (results of ``model``'s design), in one pass
    over the stacked estimates: a row's bits do not depend on the batch."""
    fits = [_raw(f) for f in fits]
    des = model.re_design
    thetas = np.array([f.theta for f in fits], dtype=float).reshape(len(fits), des.ntheta)
    if getattr(fits[0], "_has_residual", True):
        sig = np.array([f.sigma for f in fits], dtype=float)
        vp = np.column_stack([sdcor_from_thetas(des, thetas, sig), sig])
    else:                                       # GLMM: theta is on the random effects' own scale
        vp = sdcor_from_thetas(des, thetas, np.ones(len(fits)))
    return np.column_stack([vp, np.array([_beta(f) for f in fits], dtype=float).reshape(len(fits), -1)])


def _wrapped(fit):
    """``fit`` as ``fit()`` returns it: its statsmodels wrapper (unchanged if it is one)."""
    if hasattr(fit, "_results"):
        return fit
    wrapper = getattr(fit, "_results_wrapper", None)
    return fit if wrapper is None else wrapper(fit)


#: simulated responses refitted together (refit_many's own chunk: its fixed cost per call is
#: ~0.5-1 ms, which 64 responses a call left at ~12 us per refit on sleepstudy)
_BOOT_CHUNK = 256


def bootstrap(res, func=None, nsim=100, seed=None, re=True, progress=False):
    """Parametric bootstrap (lme4's ``bootMer(type = "parametric")``).

    Simulates ``nsim`` responses from the fitted model (new random effects when ``re``),
    refits the model to each (same REML/ML setting, started at the estimates) and applies
    ``func`` to each refit.

    Parameters
    ----------
    res : MixedResults
    func : callable, optional
        ``func(results) -> array_like``, called with results as ``fit()`` returns them
        (``params`` a labelled Series) for the fit and each refit; by default the variance parameters on the sd /
        correlation scale, sigma and the fixed effects (the rows of ``conf_int``).
    nsim : int
    seed : int or numpy.random.Generator, optional
    re : bool
        Draw new random effects (lme4's ``use.u = FALSE``); otherwise condition on the
        conditional modes.
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    pandas.DataFrame
        ``nsim`` rows; ``attrs["t0"]`` holds the statistic of the original fit and
        ``attrs["failed"]`` the number of failed refits (rows of NaN).
    """
    _require_independent(res, "bootstrap()")
    check_flag("re", re)
    r = _raw(res)
    rng = np.random.default_rng(seed)
    # func sees what fit() returns (pandas-labelled params) for this fit and every refit:
    # this fit and single refits are raw results here, lockstep members wrappers
    fn = _boot_statistic if func is None else (lambda fit: func(_wrapped(fit)))
    t0 = np.atleast_1d(np.asarray(fn(r), dtype=float))
    names = (varpar_names(r) + _fe_names(r)) if func is None else [f"t{i + 1}" for i in range(t0.size)]
    if len(names) != t0.size:
        names = [f"t{i + 1}" for i in range(t0.size)]
    ys = simulate(r, nsim=nsim, seed=rng, re=True, use_u=not re)
    bar = _Progress(nsim, progress, "bootstrap ")
    out = np.full((nsim, t0.size), np.nan)
    failed = 0
    Y = np.asarray(ys, dtype=float) if isinstance(ys, pd.DataFrame) else None
    for lo in range(0, nsim, _BOOT_CHUNK):
        # an LMM on a small one-factor design: the chunk's refits in lockstep (refit_many)
        fits = _batched_or_none(r, Y[:, lo:lo + _BOOT_CHUNK]) if Y is not None and Y.ndim == 2 else None
        if fits is not None and func is None:       # the default statistic: the batch at once
            ok = np.array([f is not None for f in fits])
            if ok.any():
                out[lo:lo + ok.size][ok] = _boot_statistics(r.model, [f for f in fits if f is not None])
            failed += int(ok.size - ok.sum())
            for _ in range(ok.size):
                bar.step()
            continue
        for k in range(lo, min(lo + _BOOT_CHUNK, nsim)):
            try:
                if fits is None:
                    m = _rebuild_model(r.model, endog=np.asarray(ys.iloc[:, k]) if isinstance(ys, pd.DataFrame) else ys[..., k])
                    fit = _refit(m, r)
                else:
                    fit = fits[k - lo]
                    if fit is None:
                        raise ValueError("the refit failed")
                out[k] = np.asarray(fn(fit), dtype=float)
            except (np.linalg.LinAlgError, ValueError, RuntimeError):
                failed += 1
            bar.step()
    df = pd.DataFrame(out, columns=names)
    df.attrs["t0"] = pd.Series(t0, index=names)
    df.attrs["failed"] = failed
    return df


def _norm_inter(t, alphas):
    """boot's ``norm.inter``: order-statistic quantiles interpolated on the normal scale."""
    t = np.sort(t[np.isfinite(t)])
    R = t.size
    out = []
    for a in np.atleast_1d(alphas):
        rk = (R + 1) * a
        k = int(np.trunc(rk))
        if k == rk and 0 < k <= R:
            out.append(t[k - 1])
        elif k <= 0:
            out.append(t[0])
        elif k >= R:
            out.append(t[-1])
        else:
            z, z1, z2 = stats.norm.ppf(a), stats.norm.ppf(k / (R + 1)), stats.norm.ppf((k + 1) / (R + 1))
            out.append(t[k - 1] + (z - z1) / (z2 - z1) * (t[k] - t[k - 1]))
    return np.array(out)


def boot_ci(boot, alpha=0.05, boot_type="perc"):
    """Intervals from :func:`bootstrap` replicates (``boot.ci`` types perc / basic / norm)."""
    t0 = boot.attrs["t0"]
    rows = []
    for c in boot.columns:
        t = boot[c].to_numpy(dtype=float)
        t = t[np.isfinite(t)]
        if boot_type == "perc":
            rows.append(_norm_inter(t, [alpha / 2, 1 - alpha / 2]))
        elif boot_type == "basic":
            q = _norm_inter(t, [1 - alpha / 2, alpha / 2])
            rows.append(2 * t0[c] - q)
        elif boot_type == "norm":
            bias = t.mean() - t0[c]
            merr = np.sqrt(t.var(ddof=1)) * stats.norm.ppf(1 - alpha / 2)
            rows.append(np.array([t0[c] - bias - merr, t0[c] - bias + merr]))
        else:
            raise ValueError("boot_type must be 'perc', 'basic' or 'norm'")
    out = pd.DataFrame(rows, index=param_index(boot.columns), columns=CI_COLUMNS)
    out.attrs["method"] = f"boot ({boot_type})"
    return out


def conf_int_boot(res, alpha=0.05, cols=None, nsim=500, seed=None, boot_type="perc",
                  progress=False, names="descriptive"):
    """Parametric-bootstrap intervals (lme4's ``confint(method = "boot")``).

    Parameters
    ----------
    res : MixedResults
    alpha : float
    cols : list, optional
        Rows to return (names or positions).
    nsim : int
        Bootstrap replicates.
    seed : int, optional
    boot_type : {"perc", "basic", "norm"}
        Percentile, basic, or bias-corrected normal intervals (as ``boot::boot.ci``).
    progress : bool
        Progress bar on stderr.

    Returns
    -------
    pandas.DataFrame
        Columns ``0`` (lower), ``1`` (upper); rows as :func:`conf_int_profile`;
        ``attrs["boot"]`` holds the replicates.
    """
    _require_independent(res, "conf_int_boot()")
    check_names(names)              # before the refits
    b = bootstrap(res, nsim=nsim, seed=seed, progress=progress)
    ci = boot_ci(b, alpha=alpha, boot_type=boot_type)
    if names == "lme4":                          # LMMs and GLMMs alike (.sig01, ..., [.sigma])
        lme4 = varpar_names(res, "lme4") + _fe_names(res)
        if len(lme4) == len(ci.index):
            ci.index = param_index(lme4)
    if cols is not None:
        ci = ci.iloc[_select(list(ci.index), cols)]
    ci.attrs["boot"] = b
    return ci


def _wald_conf_int(res, alpha, cols):
    """statsmodels' Wald interval (t on the fit's df for LMMs), with the parameter names as row
    labels for pandas data."""
    from statsmodels.base.model import LikelihoodModelResults
    from statsmodels.base.data import PandasData
    if ddf_active(res):             # t quantiles on the fit's df, as summary() shows
        ci = default_conf_int(res, alpha)
    else:
        ci = np.asarray(LikelihoodModelResults.conf_int(_raw(res), alpha=alpha))
    data = getattr(_raw(res).model, "data", None)
    names = list(getattr(data, "param_names", None) or _fe_names(res))
    if cols is not None:
        idx = _select(names, cols)
        ci, names = ci[idx], [names[i] for i in idx]
    if isinstance(data, PandasData):
        return pd.DataFrame(ci, index=param_index(names), columns=CI_COLUMNS)
    return ci
