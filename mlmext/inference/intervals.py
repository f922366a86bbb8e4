"""Confidence intervals: profile likelihood, parametric bootstrap, and Wald.

Variance parameters are reported on the standard-deviation / correlation scale and named
``sd_<column>|<group>``, ``cor_<column i>.<column j>|<group>`` and ``sigma`` (lme4's
``oldNames = FALSE`` names with mlmext's column names), in the order of ``theta``: for each
random-effects term the lower triangle of its covariance matrix, column by column, with
standard deviations on the diagonal and correlations below it.  ``names="lme4"`` gives
lme4's ``.sig01, .sig02, ..., .sigma`` instead.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ._common import _Progress, _beta, _fe_names, _is_lmm, _params, _raw, _require_lmm, _select
from ._objective import _LMMObjective
from ._refit import _ml_fit, _rebuild_model, _refit
from .simulation import simulate


def varpar_names(res, names="descriptive"):
    """Names of the variance parameters on the sd / correlation scale (plus ``sigma``).

    Parameters
    ----------
    res : MixedResults
    names : {"descriptive", "lme4"}
        ``sd_Days|Subject``, ``cor_Days.Intercept|Subject``, ``sigma`` (lme4's
        ``oldNames = FALSE`` with mlmext's column names), or ``.sig01``, ..., ``.sigma``.
    """
    r = _raw(res)
    des = r.model.re_design
    out = []
    for label, t in zip(r._term_names(), des.terms):
        for j in range(t.q):
            for i in range(j, t.q):
                if i == j:
                    out.append(f"sd_{t.colnames[i]}|{label}")
                else:
                    out.append(f"cor_{t.colnames[i]}.{t.colnames[j]}|{label}")
    if names == "lme4":
        out = [f".sig{k + 1:02d}" for k in range(len(out))]
        return out + ([".sigma"] if r._has_residual else [])
    if names != "descriptive":
        raise ValueError("names must be 'descriptive' or 'lme4'")
    return out + (["sigma"] if r._has_residual else [])


def _varpar_kinds(res):
    """'sd' or 'cor' per sd/cor parameter (theta order)."""
    kinds = []
    for t in _raw(res).model.re_design.terms:
        for j in range(t.q):
            for i in range(j, t.q):
                kinds.append("sd" if i == j else "cor")
    return kinds


def _bmin(f, x0, lo, hi, scale):
    """Minimize f over a box by L-BFGS-B in scaled coordinates with central-difference gradients."""
    x0 = np.asarray(x0, dtype=float)
    if x0.size == 0:
        return float(f(x0)), x0
    s = np.asarray(scale, dtype=float)
    ylo, yhi = lo / s, hi / s
    g = lambda y: f(y * s)

    def jac(y):
        h = 1e-5 * np.maximum(1.0, np.abs(y))
        out = np.empty(y.size)
        for i in range(y.size):
            up, dn = y.copy(), y.copy()
            a = min(h[i], yhi[i] - y[i]) if np.isfinite(yhi[i]) else h[i]
            b = min(h[i], y[i] - ylo[i]) if np.isfinite(ylo[i]) else h[i]
            if a <= 0 and b <= 0:
                out[i] = 0.0
                continue
            up[i] += max(a, 0)
            dn[i] -= max(b, 0)
            out[i] = (g(up) - g(dn)) / (max(a, 0) + max(b, 0))
        return out

    y0 = np.clip(x0 / s, ylo, yhi)
    bounds = list(zip(np.where(np.isfinite(ylo), ylo, None), np.where(np.isfinite(yhi), yhi, None)))
    best = None
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = optimize.minimize(g, y0, jac=jac, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-6})
        if best is None or r.fun <= best.fun:
            best = r
        if best is r and r.success:
            break
        y0 = best.x
    return float(best.fun), best.x * s


class _Profiler:
    """Profile zeta functions of an LMM's ML fit on lme4's (sd/cor, sigma, beta) scale."""

    def __init__(self, res):
        _require_lmm(res, "Profile likelihood")
        self.res = _raw(res)
        self.fit = _ml_fit(self.res)
        self.obj = _LMMObjective(self.fit.model)
        fit = self.fit
        self.theta = fit.theta.copy()
        self.sigma = fit.sigma
        self.vp = np.append(self.obj.sdcor_from_theta(fit.theta, fit.sigma), fit.sigma)
        self.kinds = _varpar_kinds(fit) + ["sigma"]
        self.beta = _params(fit)
        self.se_beta = fit.bse_fe.to_numpy()
        self.base = self.obj.dev_sdcor(self.vp)
        # the optimizer's own optimum may be a hair off: polish it on this scale
        f0, x0 = _bmin(self.obj.dev_sdcor, self.vp, self.lower_vp(), self.upper_vp(), self.scale_vp())
        if f0 < self.base:
            self.base, self.vp = f0, x0
        self.nvp = self.vp.size
        self.names = varpar_names(fit) + _fe_names(fit)
        self.lme4_names = varpar_names(fit, "lme4") + _fe_names(fit)
        self.est = np.concatenate([self.vp, self.beta])
        self._starts = {}                 # per parameter: (value, optimum of the others)
        for w in range(self.est.size):    # the estimate itself is a solution of every profile
            others = self.vp[np.arange(self.nvp) != w] if w < self.nvp else self.theta
            self._starts[w] = [(self.est[w], np.array(others, dtype=float))]
        self.low_dev = 0.0
        self._memo = {}

    def lower_vp(self):
        return np.array([0.0 if k == "sd" else (-1.0 if k == "cor" else 1e-8 * self.sigma)
                         for k in self.kinds])

    def upper_vp(self):
        return np.array([1.0 if k == "cor" else np.inf for k in self.kinds])

    def scale_vp(self):
        out = []
        for k, v in zip(self.kinds, self.vp):
            out.append(1.0 if k == "cor" else max(abs(v), 0.05 * self.sigma))
        return np.array(out)

    def bounds(self, w):
        if w < self.nvp:
            return self.lower_vp()[w], self.upper_vp()[w]
        return -np.inf, np.inf

    def _start(self, w, x, f, lo, hi):
        """Warm start: the solution at the nearest profiled value, or the linear extrapolation
        from the two nearest ones when that is better."""
        pts = self._starts[w]
        xs = np.array([p[0] for p in pts])
        order = np.argsort(np.abs(xs - x))
        cands = [np.clip(pts[order[0]][1], lo, hi)]
        if len(pts) > 1 and xs[order[0]] != xs[order[1]]:
            (x0, y0), (x1, y1) = pts[order[0]], pts[order[1]]
            cands.append(np.clip(y0 + (x - x0) / (x1 - x0) * (y1 - y0), lo, hi))
        vals = [f(c) for c in cands]
        return cands[int(np.nanargmin(np.where(np.isfinite(vals), vals, np.nan)))] \
            if np.any(np.isfinite(vals)) else cands[0]

    def devdiff(self, w, x):
        """Profiled deviance minus the minimum, with parameter w fixed at x."""
        obj = self.obj
        if w < self.nvp:
            others = np.delete(np.arange(self.nvp), w)
            lo, hi = self.lower_vp()[others], self.upper_vp()[others]
            sc = self.scale_vp()[others]

            def f(y):
                v = np.empty(self.nvp)
                v[w] = x
                v[others] = y
                return obj.dev_sdcor(v)
            fv, y = _bmin(f, self._start(w, x, f, lo, hi), lo, hi, sc)
        else:
            j = w - self.nvp
            lo = self.fit.model.re_design.lower
            hi = np.full(lo.size, np.inf)
            sc = np.maximum(np.abs(self.theta), 0.1)
            f = lambda th: obj.dev_fixed(th, j, x)
            fv, y = _bmin(f, self._start(w, x, f, lo, hi), lo, hi, sc)
        self._starts.setdefault(w, []).append((x, y))
        d = fv - self.base
        if d < -1e-6:
            self.low_dev = min(self.low_dev, d)
        return max(d, 0.0)

    def zeta(self, w, x):
        key = (w, float(x))
        if key not in self._memo:
            self._memo[key] = np.sign(x - self.est[w]) * np.sqrt(self.devdiff(w, x))
        return self._memo[key]

    def step0(self, w):
        if w >= self.nvp:
            return self.se_beta[w - self.nvp]
        v = self.vp[w]
        k = self.kinds[w]
        if k == "cor":
            return 0.1
        return max(0.2 * abs(v), 0.05 * self.sigma)

    def limit(self, w, side, z):
        """The value where |zeta| reaches z on one side (or the bound, one-sided).

        zeta is close to linear in the parameter, so secant steps towards the target land
        near the root at once; a bracket, once found, is finished by Brent's method.
        """
        est = self.est[w]
        lo, hi = self.bounds(w)
        bound = hi if side > 0 else lo
        if (side > 0 and est >= hi) or (side < 0 and est <= lo):
            return bound, True
        absz = lambda x: abs(self.zeta(w, x))
        step = self.step0(w)
        x_prev, z_prev = est, 0.0
        x = est + side * step
        for _ in range(100):
            at_bound = False
            if (side > 0 and x >= hi) or (side < 0 and x <= lo):
                x, at_bound = bound, True
            zx = absz(x)
            if abs(zx - z) < 2e-8 * z:
                return x, False
            if zx > z:                                   # bracketed: [x_prev, x]
                a, b = sorted((x_prev, x))
                if abs(b - a) <= 1e-9 * max(abs(est), 1e-300):
                    return x, False
                root = optimize.brentq(lambda t: absz(t) - z, a, b,
                                       xtol=1e-8 * max(abs(est), abs(b - a)), rtol=1e-9)
                return root, False
            if at_bound:
                return bound, True
            dist = abs(x - x_prev)
            slope = (zx - z_prev) / dist
            if slope <= 0:
                nxt = 2 * dist
            else:
                nxt = float(np.clip((z - zx) / slope, 1e-3 * dist, 10 * dist))
                if nxt < 0.05 * dist:                    # nearly there: aim a hair beyond
                    nxt *= 1.02
            x_prev, z_prev = x, zx
            x = x + side * nxt
        raise RuntimeError(f"profile of {self.names[w]} did not reach |zeta| = {z}")


def conf_int_profile(res, alpha=0.05, cols=None, names="descriptive"):
    """Profile-likelihood confidence intervals (lme4's ``confint(method = "profile")``).

    As lme4 does, the profile is that of the maximum-likelihood fit (REML fits are
    refitted by ML first): for each parameter, the deviance minimized over all other
    parameters is computed with the parameter held fixed, and the interval ends are where
    ``zeta = sign(x - x_hat) sqrt(deviance - deviance_min)`` reaches the normal quantiles.
    The ends are found by root finding on the exact profile (lme4 interpolates a spline
    through a grid of profile points; the two agree to about 1e-4 relative).

    Parameters
    ----------
    res : LMM results
    alpha : float
        1 - confidence level.
    cols : list of str or int, optional
        Parameters to profile (names as in the output, or positions); all by default.
    names : {"descriptive", "lme4"}
        Row names, see :func:`varpar_names`.

    Returns
    -------
    pandas.DataFrame
        Rows: variance parameters (``sd_...``, ``cor_...``, ``sigma``) then fixed effects;
        columns ``lower``, ``upper``; ``attrs["boundary"]`` lists the (row, side) pairs where
        the profile reached a parameter bound (SD 0, correlation +-1) before the cutoff:
        those intervals are one-sided and end at the bound.
    """
    pr = _Profiler(res)
    z = stats.norm.ppf(1 - alpha / 2)
    idx = _select(pr.names, cols) if not (cols is not None and names == "lme4") else \
        _select(pr.lme4_names, cols)
    rows, boundary = [], []
    for w in idx:
        lo, blo = pr.limit(w, -1, z)
        hi, bhi = pr.limit(w, +1, z)
        rows.append((lo, hi))
        if blo:
            boundary.append((pr.names[w], "lower"))
        if bhi:
            boundary.append((pr.names[w], "upper"))
    if pr.low_dev < -1e-6:
        warnings.warn(f"profiling found a deviance {-pr.low_dev:.3g} below the fit's: the fit had "
                      "not converged to the maximum", UserWarning, stacklevel=2)
    pr.obj.factor(pr.res.theta)          # leave the shared factorization at the fit's theta
    labels = pr.lme4_names if names == "lme4" else pr.names
    out = pd.DataFrame(rows, index=[labels[w] for w in idx], columns=["lower", "upper"])
    out.attrs["boundary"] = boundary
    out.attrs["method"] = "profile"
    return out


def profile(res, cols=None, alpha=0.01, npoints=6, names="descriptive"):
    """Profile zeta traces (lme4's ``profile``), for plotting and checking.

    Parameters
    ----------
    res : LMM results
    cols : list, optional
        Parameters (names or positions); all by default.
    alpha : float
        The traces extend to the profile interval of level ``1 - alpha`` on each side.
    npoints : int
        Points per side.

    Returns
    -------
    pandas.DataFrame
        Long format: ``parameter``, ``value``, ``zeta`` (sorted by parameter and value).
    """
    pr = _Profiler(res)
    z = stats.norm.ppf(1 - alpha / 2)
    labels = pr.lme4_names if names == "lme4" else pr.names
    idx = _select(labels, cols)
    rows = []
    for w in idx:
        rows.append((labels[w], pr.est[w], 0.0))
        for side in (-1, 1):
            lim, _ = pr.limit(w, side, z)
            for x in np.linspace(pr.est[w], lim, npoints + 1)[1:]:
                rows.append((labels[w], x, pr.zeta(w, x)))
    pr.obj.factor(pr.res.theta)
    out = pd.DataFrame(rows, columns=["parameter", "value", "zeta"])
    return out.sort_values(["parameter", "value"], kind="stable").reset_index(drop=True)


def profile_zeta(res, param, values):
    """zeta of the profile of one parameter at given values (lme4's ``.zeta``)."""
    pr = _Profiler(res)
    w = _select(pr.names, param)[0] if not str(param).startswith(".") else _select(pr.lme4_names, param)[0]
    out = np.array([pr.zeta(w, float(x)) for x in np.atleast_1d(values)])
    pr.obj.factor(pr.res.theta)
    return out


def _boot_statistic(r, names="descriptive"):
    r = _raw(r)
    obj = _LMMObjective(r.model)               # only its sd / correlation conversion is used
    if getattr(r, "_has_residual", True):
        vp = np.append(obj.sdcor_from_theta(r.theta, r.sigma), r.sigma)
    else:                                       # GLMM: theta is on the random effects' own scale
        vp = obj.sdcor_from_theta(r.theta, 1.0)
    return np.concatenate([vp, _beta(r)])


def bootstrap(res, func=None, nsim=100, seed=None, re=True, progress=False):
    """Parametric bootstrap (lme4's ``bootMer(type = "parametric")``).

    Simulates ``nsim`` responses from the fitted model (new random effects when ``re``),
    refits the model to each (same REML/ML setting, started at the estimates) and applies
    ``func`` to each refit.

    Parameters
    ----------
    res : MixedResults
    func : callable, optional
        ``func(results) -> array_like``; by default the variance parameters on the sd /
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
    r = _raw(res)
    rng = np.random.default_rng(seed)
    fn = func if func is not None else _boot_statistic
    t0 = np.atleast_1d(np.asarray(fn(r), dtype=float))
    names = (varpar_names(r) + _fe_names(r)) if func is None else [f"t{i + 1}" for i in range(t0.size)]
    if len(names) != t0.size:
        names = [f"t{i + 1}" for i in range(t0.size)]
    ys = simulate(r, nsim=nsim, seed=rng, re=True, use_u=not re)
    bar = _Progress(nsim, progress, "bootstrap ")
    out = np.full((nsim, t0.size), np.nan)
    failed = 0
    for k in range(nsim):
        try:
            m = _rebuild_model(r.model, endog=np.asarray(ys.iloc[:, k]) if isinstance(ys, pd.DataFrame) else ys[..., k])
            fit = _refit(m, r)
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
    out = pd.DataFrame(rows, index=boot.columns, columns=["lower", "upper"])
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
        Columns ``lower``, ``upper``; rows as :func:`conf_int_profile`;
        ``attrs["boot"]`` holds the replicates.
    """
    b = bootstrap(res, nsim=nsim, seed=seed, progress=progress)
    ci = boot_ci(b, alpha=alpha, boot_type=boot_type)
    if names == "lme4" and _is_lmm(res):
        ci.index = varpar_names(res, "lme4") + _fe_names(res)
    if cols is not None:
        ci = ci.iloc[_select(list(ci.index), cols)]
    ci.attrs["boot"] = b
    return ci


def _wald_conf_int(res, alpha, cols):
    """statsmodels' Wald interval, with the parameter names as row labels for pandas data."""
    from statsmodels.base.model import LikelihoodModelResults
    from statsmodels.base.data import PandasData
    ci = np.asarray(LikelihoodModelResults.conf_int(_raw(res), alpha=alpha))
    data = getattr(_raw(res).model, "data", None)
    names = list(getattr(data, "param_names", None) or _fe_names(res))
    if cols is not None:
        idx = _select(names, cols)
        ci, names = ci[idx], [names[i] for i in idx]
    if isinstance(data, PandasData):
        return pd.DataFrame(ci, index=names)
    return ci
