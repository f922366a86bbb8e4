"""Inference and model comparison for mixed models.

Module functions (all take a fitted mixed-model result) and :class:`InferenceMixin`,
which puts them on the results class as methods:

* :func:`anova` -- likelihood-ratio tests between nested models (lme4's ``anova``);
* :func:`satterthwaite`, :func:`kenward_roger` -- denominator degrees of freedom for
  fixed effects and contrasts (lmerTest / pbkrtest);
* :func:`profile`, :func:`conf_int_profile` -- profile-likelihood intervals
  (lme4's ``profile`` / ``confint(method = "profile")``);
* :func:`bootstrap`, :func:`conf_int_boot` -- parametric bootstrap (lme4's ``bootMer``);
* :func:`icc`, :func:`r2_nakagawa`, :func:`r2_snijders_bosker` -- variance explained;
* :func:`simulate`, :func:`power_sim` -- simulation from a fit and simulation-based power;
* :func:`influence`, :func:`cooks_distance` -- group-deletion diagnostics (HLMdiag);
* :func:`check_convergence` -- a scale-free gradient check of the optimum.

Variance parameters are reported on the standard-deviation / correlation scale and named
``sd_<column>|<group>``, ``cor_<column i>.<column j>|<group>`` and ``sigma`` (lme4's
``oldNames = FALSE`` names with mlmext's column names), in the order of ``theta``: for each
random-effects term the lower triangle of its covariance matrix, column by column, with
standard deviations on the diagonal and correlations below it.  ``names="lme4"`` gives
lme4's ``.sig01, .sig02, ..., .sigma`` instead.
"""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pandas as pd
from scipy import linalg, optimize, sparse, stats

__all__ = [
    "anova", "AnovaTable", "satterthwaite", "kenward_roger", "profile", "conf_int_profile",
    "bootstrap", "conf_int_boot", "icc", "r2_nakagawa", "r2_snijders_bosker", "simulate",
    "power_sim", "PowerSimResults", "influence", "cooks_distance", "check_convergence",
    "ConvergenceCheck", "varpar_names", "InferenceMixin",
]

_LOG2PI = np.log(2.0 * np.pi)


# =============================================================================================
# small helpers
# =============================================================================================
def _raw(res):
    """The results instance behind a statsmodels ``ResultsWrapper``."""
    return getattr(res, "_results", res)


def _cache(res):
    res = _raw(res)
    c = res.__dict__.get("_inference_cache")
    if c is None:
        c = {}
        res.__dict__["_inference_cache"] = c
    return c


def _is_lmm(res):
    m = _raw(res).model
    return hasattr(m, "deviance_profiled") and hasattr(m, "chol")


def _require_lmm(res, what):
    if not _is_lmm(res):
        raise NotImplementedError(f"{what} is implemented for linear mixed models (lmer fits) only; "
                                  f"this is a {type(_raw(res).model).__name__} (for intervals use "
                                  "conf_int(method='boot') or the Wald intervals)")


def _fe_names(res):
    return list(_raw(res).model.exog_names)


def _params(res):
    return np.asarray(_raw(res).params, dtype=float)


def _beta(res):
    """The fixed effects (``fe_params``: ``params`` may also hold e.g. clmm's thresholds)."""
    r = _raw(res)
    fe = getattr(r, "fe_params", None)
    return np.asarray(fe if fe is not None else r.params, dtype=float)


class _Progress:
    """A plain-text progress bar on stderr (no dependency)."""

    def __init__(self, total, enabled, label=""):
        self.total, self.enabled, self.label = int(total), bool(enabled), label
        self.t0 = time.time()
        self.k = 0
        self._last = -1.0

    def step(self, k=1):
        if not self.enabled:
            return
        self.k += k
        now = time.time()
        if self.k < self.total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        frac = self.k / max(self.total, 1)
        bar = "#" * int(round(width * frac))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else float("nan")
        sys.stderr.write(f"\r{self.label}[{bar:<{width}}] {self.k}/{self.total} "
                         f"{el:6.1f}s elapsed, ~{eta:5.1f}s left")
        if self.k >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ---- numerical derivatives (central differences with Richardson extrapolation) --------------
def _steps(x, d, eps=1e-4, zero_tol=1.781e-5):
    x = np.asarray(x, dtype=float)
    return np.abs(d * x) + eps * (np.abs(x) < zero_tol)


def _richardson(est, r=4, v=2.0):
    """Extrapolate estimates ``est(k)`` made with steps h / v**k (error in even powers of h)."""
    a = [np.asarray(est(k), dtype=float) for k in range(r)]
    for m in range(1, r):
        fac = v ** (2 * m)
        a = [(fac * a[k + 1] - a[k]) / (fac - 1.0) for k in range(len(a) - 1)]
    return a[0]


def _jacobian(f, x, d=1e-4, r=4):
    """d f / d x for vector- (or matrix-) valued f; returns (size of f, len(x))."""
    x = np.asarray(x, dtype=float)
    h0 = _steps(x, d)

    def est(k):
        h = h0 / 2.0 ** k
        cols = []
        for i in range(x.size):
            e = np.zeros(x.size)
            e[i] = h[i]
            cols.append((np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2 * h[i]))
        return np.column_stack(cols)
    return _richardson(est, r)


def _hessian(f, x, d=0.1, r=4):
    """Hessian of a scalar function; relative steps ``d`` refined by Richardson extrapolation."""
    x = np.asarray(x, dtype=float)
    k = x.size
    h0 = _steps(x, d)
    f0 = f(x)

    def est(level):
        h = h0 / 2.0 ** level
        H = np.empty((k, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = h[i]
            H[i, i] = (f(x + e) - 2 * f0 + f(x - e)) / h[i] ** 2
            for j in range(i):
                ej = np.zeros(k)
                ej[j] = h[j]
                H[i, j] = H[j, i] = (f(x + e + ej) - f(x + e - ej) - f(x - e + ej) + f(x - e - ej)) / (4 * h[i] * h[j])
        return H
    return _richardson(est, r)


# =============================================================================================
# the LMM objective in several parameterizations (nothing of order n per evaluation)
# =============================================================================================
class _LMMObjective:
    """Deviance pieces of a linear mixed model as functions of (theta, sigma) or (sd/cor, sigma).

    All evaluations use the blocked Cholesky factor of the model, so they cost nothing of
    order n (``BlockedCholesky.update``).
    """

    def __init__(self, model):
        self.model = model
        self.des = model.re_design
        self.n = float(model.nobs)
        self.p = int(model.k_fe)
        w = np.asarray(model.weights, dtype=float)
        self.logw = float(np.log(w[w > 0]).sum())

    def factor(self, theta):
        return self.model.chol.update(self.des.lambdas(np.asarray(theta, dtype=float)))

    @staticmethod
    def _lxx(ch):
        """L_XX, the fixed-effects block of the factor (only the lower triangle of ``Lr`` is set)."""
        rz, p = ch.rz, ch.p
        return np.tril(ch.Lr[rz:rz + p, rz:rz + p])

    @classmethod
    def beta_hat(cls, ch):
        """beta(theta) from L_XX' beta = l_yX (the last row of the factor)."""
        rz, p = ch.rz, ch.p
        return np.linalg.solve(cls._lxx(ch).T, ch.Lr[-1, rz:rz + p])

    @classmethod
    def cov_beta_unscaled(cls, ch):
        """(L_XX L_XX')^-1 (small dense inverse; cheaper than a triangular solve with I here)."""
        Li = np.linalg.inv(cls._lxx(ch))
        return Li.T @ Li

    def dev_theta_sigma(self, theta, sigma, reml):
        """-2 log-likelihood (REML: restricted) at (theta, sigma), beta profiled out (lmerTest)."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        s2 = sigma ** 2
        dev = ch.logdet_zz + ch.r2 / s2 + self.n * (_LOG2PI + np.log(s2)) - self.logw
        if reml:
            dev += ch.logdet_xx - self.p * (_LOG2PI + np.log(s2))
        return dev

    def cov_beta(self, theta, sigma):
        return sigma ** 2 * self.cov_beta_unscaled(self.factor(theta))

    # ---- sd / correlation scale (lme4's profile parameterization) -----------------------
    def sdcor_from_theta(self, theta, sigma):
        out = []
        for t in self.des.terms:
            C = sigma ** 2 * self.des.term_cov(theta, t)
            sd = np.sqrt(np.clip(np.diag(C), 0, None))
            for j in range(t.q):
                for i in range(j, t.q):
                    if i == j:
                        out.append(sd[i])
                    else:
                        den = sd[i] * sd[j]
                        out.append(C[i, j] / den if den > 0 else 0.0)
        return np.array(out)

    def theta_from_sdcor(self, v, sigma):
        theta = np.empty(self.des.ntheta)
        k = 0
        for t in self.des.terms:
            q = t.q
            m = v[k:k + t.ntheta]
            sd = np.zeros(q)
            R = np.eye(q)
            kk = 0
            for j in range(q):
                for i in range(j, q):
                    if i == j:
                        sd[i] = m[kk]
                    else:
                        R[i, j] = R[j, i] = m[kk]
                    kk += 1
            L = _psd_chol(R * np.outer(sd, sd) / sigma ** 2)
            kk = 0
            for j in range(q):
                for i in range(j, q):
                    theta[t.theta_index[kk]] = L[i, j]
                    kk += 1
            k += t.ntheta
        return theta

    def dev_sdcor(self, vp):
        """ML deviance at (sd/cor parameters, sigma), beta profiled out (lme4's ``devfun2``)."""
        sigma = vp[-1]
        return self.dev_theta_sigma(self.theta_from_sdcor(vp[:-1], sigma), sigma, reml=False)

    def dev_fixed(self, theta, j, value):
        """ML deviance, profiled over sigma and the other fixed effects, at beta_j = value."""
        try:
            ch = self.factor(theta)
        except np.linalg.LinAlgError:
            return np.inf
        b = self.beta_hat(ch)
        cjj = self.cov_beta_unscaled(ch)[j, j]
        r2 = ch.r2 + (value - b[j]) ** 2 / cjj
        return ch.logdet_zz + self.n * (1.0 + _LOG2PI + np.log(r2 / self.n)) - self.logw


def _psd_chol(A):
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    q = A.shape[0]
    L = np.zeros_like(A, dtype=float)
    scale = max(float(np.max(np.abs(np.diag(A)))), 1e-300)
    for j in range(q):
        d = A[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-13 * scale:
            continue
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, q):
            L[i, j] = (A[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


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


# =============================================================================================
# refitting and rebuilding models
# =============================================================================================
def _subset_design(des, keep):
    from ..design import RandomEffectsDesign, ReTerm
    terms = []
    for t in des.terms:
        codes = t.codes[keep]
        used, newcodes = np.unique(codes, return_inverse=True)
        nt = ReTerm(t.name, t.factors, t.lhs, t.X[keep], t.colnames, newcodes.astype(np.int64),
                    [t.levels[i] for i in used])
        if hasattr(t, "spec"):
            nt.spec = t.spec
        terms.append(nt)
    return RandomEffectsDesign(terms)


def _rebuild_model(model, endog=None, exog=None, keep=None, design=None):
    """A new model of the same class with a new response, fixed design, or a subset of rows."""
    data = getattr(model, "data", None)
    y = getattr(data, "orig_endog", None)
    if y is None:
        y = model.endog
    X = getattr(data, "orig_exog", None)
    if X is None:
        X = model.exog
    if endog is not None:
        endog = np.asarray(endog, dtype=float)
        if isinstance(y, pd.Series) and endog.ndim == 1:
            y = pd.Series(endog, index=y.index, name=y.name)
        elif isinstance(y, pd.DataFrame):
            y = pd.DataFrame(endog.reshape(y.shape), index=y.index, columns=y.columns)
        else:
            y = endog
    if exog is not None:
        X = exog
    w = np.asarray(model.weights, dtype=float)
    off = np.asarray(model.offset, dtype=float)
    des = model.re_design if design is None else design
    info = dict(getattr(model, "formula_info", {}))
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        y = y[keep] if not hasattr(y, "iloc") else y.iloc[np.flatnonzero(keep)]
        X = X[keep] if not hasattr(X, "iloc") else X.iloc[np.flatnonzero(keep)]
        w, off = w[keep], off[keep]
        des = _subset_design(des, keep)
        if info.get("row_labels") is not None:
            info["row_labels"] = info["row_labels"][keep]
        if isinstance(info.get("data"), pd.DataFrame):
            info["data"] = info["data"].loc[keep].reset_index(drop=True)
    kwargs = {}
    try:
        kwargs = dict(model._get_init_kwds())
    except Exception:  # noqa: BLE001 - statsmodels models without init keys
        pass
    for k in ("weights", "offset", "formula_info", "missing"):
        kwargs.pop(k, None)
    for k in ("family",):
        if hasattr(model, k) and k not in kwargs:
            kwargs[k] = getattr(model, k)
    try:
        new = type(model)(y, X, des, weights=w, offset=off, formula_info=info, **kwargs)
    except TypeError as exc:
        raise NotImplementedError(f"cannot rebuild a {type(model).__name__} from arrays "
                                  f"(needed to refit it): {exc}") from exc
    new.formula = getattr(model, "formula", None)
    return new


def _fit_kwargs(res):
    r = _raw(res)
    kw = {}
    if _is_lmm(r):
        kw["reml"] = bool(r.reml)
    nagq = getattr(r, "nagq", None)
    if nagq is not None:
        kw["nagq"] = nagq
    return kw


def _refit(model, res, start=True, **override):
    kw = _fit_kwargs(res)
    kw.update(override)
    if start and _is_lmm(res):
        kw.setdefault("start_params", _raw(res).theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _raw(model.fit(**kw))


def _ml_fit(res):
    """The ML fit of a model (itself when it is not a REML fit); cached."""
    r = _raw(res)
    if not getattr(r, "reml", False):
        return r
    c = _cache(r)
    if "ml_fit" not in c:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c["ml_fit"] = _raw(r.model.fit(reml=False, start_params=r.theta))
    return c["ml_fit"]


# =============================================================================================
# 1. likelihood-ratio tests
# =============================================================================================
class AnovaTable(pd.DataFrame):
    """Likelihood-ratio table returned by :func:`anova` (a ``pandas.DataFrame``).

    Columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)`` as lme4 prints them;
    ``attrs["formulas"]`` holds the models' formulas and ``attrs["refitted_ml"]`` says
    whether REML fits were refitted by maximum likelihood (shown in the printout).
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def _header(self):
        lines = []
        if self.attrs.get("refitted_ml"):
            lines.append("refitting model(s) with ML (instead of REML)")
        forms = self.attrs.get("formulas", {})
        if forms:
            lines.append("Models:")
            lines += [f"{k}: {v}" for k, v in forms.items()]
        return "\n".join(lines)

    def __repr__(self):
        return self._header() + "\n" + pd.DataFrame(self).to_string()

    def __str__(self):
        return self.__repr__()


def _same_rows(a, b):
    ra, rb = _raw(a), _raw(b)
    if int(ra.nobs) != int(rb.nobs):
        return False, f"{int(ra.nobs)} and {int(rb.nobs)} observations"
    la = ra.model.formula_info.get("row_labels") if hasattr(ra.model, "formula_info") else None
    lb = rb.model.formula_info.get("row_labels") if hasattr(rb.model, "formula_info") else None
    if la is not None and lb is not None and not pd.Index(la).equals(pd.Index(lb)):
        return False, "different rows of the data (row labels differ)"
    ya = np.asarray(ra.model.endog, dtype=float)
    yb = np.asarray(rb.model.endog, dtype=float)
    if ya.shape != yb.shape or not np.allclose(ya, yb, rtol=1e-10, atol=0, equal_nan=True):
        return False, "different responses"
    return True, ""


def _re_signature(res):
    """{grouping factor: set of random-effect columns} of a mixed model."""
    out = {}
    model = _raw(res).model
    des = getattr(model, "re_design", None)
    if des is None:
        return out
    for t in des.terms:
        out.setdefault(tuple(sorted(t.factors)), set()).update(t.colnames)
    return out


def _nested(small, large):
    """Whether ``small``'s parameters look like a subset of ``large``'s (names only)."""
    fs, fl = set(_fe_names(small)), set(_fe_names(large))
    if not fs <= fl:
        return False
    rs, rl = _re_signature(small), _re_signature(large)
    for g, cols in rs.items():
        if g not in rl or not cols <= rl[g]:
            return False
    if type(_raw(small).model) is not type(_raw(large).model):
        return False
    return True


def anova(*results, names=None, refit=True):
    """Likelihood-ratio tests of nested mixed models (lme4's ``anova(m1, m2, ...)``).

    Parameters
    ----------
    *results : MixedResults
        Two or more fits (LMM, GLMM or clmm) of models to the same rows of the same data.
    names : list of str, optional
        Row labels; ``m1, m2, ...`` in the order given by default.
    refit : bool
        Refit REML fits by maximum likelihood first, as lme4 does (REML likelihoods of
        models with different fixed effects are not comparable).

    Returns
    -------
    AnovaTable
        One row per model, ordered by number of parameters: ``npar, AIC, BIC, logLik,
        deviance, Chisq, Df, Pr(>Chisq)``.  ``Chisq`` compares each model with the one
        above it (``2 * max(0, difference in logLik)``) on ``Df`` = the difference in
        the number of parameters.

    Raises
    ------
    ValueError
        Fewer than two models, or models fitted to different rows or responses.

    Warns
    -----
    UserWarning
        When consecutive models are not nested in their parameters (fixed-effect names and
        random-effect terms of the smaller model are not contained in the larger one's).
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    if len(results) < 2:
        raise ValueError("anova needs at least two fitted models to compare")
    if names is None:
        names = [f"m{i + 1}" for i in range(len(results))]
    names = [str(n) for n in names]
    if len(names) != len(results) or len(set(names)) != len(names):
        raise ValueError("names must give one distinct name per model")
    for r in results:
        for attr in ("llf", "k_params", "nobs", "model"):
            if not hasattr(r, attr):
                raise ValueError(f"anova needs fitted model results; got {type(r).__name__} without {attr!r}")
    for i in range(1, len(results)):
        ok, why = _same_rows(results[0], results[i])
        if not ok:
            raise ValueError(f"models {names[0]!r} and {names[i]!r} were not fitted to the same data "
                             f"({why}); likelihood-ratio tests need the same observations")
    is_reml = [bool(getattr(_raw(r), "reml", False)) for r in results]
    refitted = False
    fits = [_raw(r) for r in results]
    if any(is_reml):
        if refit:
            fits = [_ml_fit(r) if rm else r for r, rm in zip(fits, is_reml)]
            refitted = True
        else:
            fe = {tuple(_fe_names(r)) for r in fits}
            if len(fe) > 1:
                warnings.warn("comparing REML fits of models with different fixed effects: their "
                              "REML likelihoods are not comparable (use refit=True)", UserWarning,
                              stacklevel=2)
    npar = np.array([float(r.k_params) for r in fits])
    order = np.argsort(npar, kind="stable")
    rows = []
    prev = None
    for i in order:
        r = fits[i]
        llf, k, n = float(r.llf), float(r.k_params), float(r.nobs)
        row = {"npar": int(k), "AIC": -2 * llf + 2 * k, "BIC": -2 * llf + np.log(n) * k,
               "logLik": llf, "deviance": -2 * llf, "Chisq": np.nan, "Df": np.nan,
               "Pr(>Chisq)": np.nan}
        if prev is not None:
            pr = fits[prev]
            df = k - float(pr.k_params)
            chisq = 2.0 * max(0.0, llf - float(pr.llf))
            row["Chisq"] = chisq
            row["Df"] = df
            row["Pr(>Chisq)"] = float(stats.chi2.sf(chisq, df)) if df > 0 else np.nan
            if not _nested(results[prev], results[i]):
                warnings.warn(f"models {names[prev]!r} and {names[i]!r} do not look nested (the "
                              f"parameters of {names[prev]!r} are not a subset of those of "
                              f"{names[i]!r}); the likelihood-ratio test assumes nesting",
                              UserWarning, stacklevel=2)
        rows.append(row)
        prev = i
    tab = AnovaTable(rows, index=pd.Index([names[i] for i in order]))
    tab["npar"] = tab["npar"].astype(int)
    tab.attrs["refitted_ml"] = refitted
    tab.attrs["formulas"] = {names[i]: _raw(results[i]).model.formula_info.get("formula", "")
                             if hasattr(_raw(results[i]).model, "formula_info") else ""
                             for i in order}
    return tab


# =============================================================================================
# 2. denominator degrees of freedom
# =============================================================================================
def _satt_pieces(res):
    """Asymptotic covariance of (theta, sigma) and the Jacobian of vcov(beta); cached (lmerTest)."""
    _require_lmm(res, "Satterthwaite's degrees of freedom")
    r = _raw(res)
    c = _cache(r)
    if "satt" in c:
        return c["satt"]
    obj = _LMMObjective(r.model)
    reml = bool(r.reml)
    vp = np.append(r.theta, r.sigma)
    f = lambda x: obj.dev_theta_sigma(x[:-1], x[-1], reml)
    H = _hessian(f, vp)
    evals, evecs = np.linalg.eigh((H + H.T) / 2)
    tol = 1e-8
    if np.any(evals < -tol):
        warnings.warn("the Hessian of the deviance in (theta, sigma) has negative eigenvalues "
                      f"({evals[evals < -tol]}); the model may not have converged", UserWarning,
                      stacklevel=3)
    pos = evals > tol
    A = 2.0 * (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    p = r.k_fe
    J = _jacobian(lambda x: obj.cov_beta(x[:-1], x[-1]), vp)
    jac = [J[:, i].reshape(p, p) for i in range(vp.size)]
    obj.factor(r.theta)
    c["satt"] = (A, jac, np.asarray(r.cov_params(), dtype=float))
    return c["satt"]


def _contrast_matrix(res, r_matrix):
    from statsmodels.formula._manager import FormulaManager
    names = list(_raw(res).model.data.cov_names) if hasattr(_raw(res).model, "data") else _fe_names(res)
    if isinstance(r_matrix, str) or (isinstance(r_matrix, (list, tuple)) and r_matrix
                                     and isinstance(r_matrix[0], str)):
        lc = FormulaManager().get_linear_constraints(r_matrix, names)
        L, q = np.asarray(lc.constraint_matrix, dtype=float), lc.constraint_values
        q = np.zeros(L.shape[0]) if q is None else np.asarray(q, dtype=float).ravel()
        return L, q
    if isinstance(r_matrix, tuple) and len(r_matrix) == 2:
        L, q = r_matrix
        L = np.atleast_2d(np.asarray(L, dtype=float))
        return L, np.broadcast_to(np.asarray(q, dtype=float).ravel(), (L.shape[0],)).copy()
    L = np.atleast_2d(np.asarray(r_matrix, dtype=float))
    if L.shape[1] != len(names):
        raise ValueError(f"the contrast matrix has {L.shape[1]} columns for {len(names)} fixed effects")
    return L, np.zeros(L.shape[0])


def satterthwaite(res, L=None):
    """Satterthwaite denominator degrees of freedom, as lmerTest computes them.

    The asymptotic covariance A of (theta, sigma) is twice the (pseudo-)inverse of the
    Hessian of the deviance (REML or ML, as fitted) in (theta, sigma) with beta profiled
    out; J_i is the derivative of vcov(beta) = sigma^2 (X' V^-1 X)^-1 with respect to
    parameter i.  For a contrast l: ``df = 2 (l' C l)^2 / (g' A g)`` with ``g_i = l' J_i l``.
    Derivatives are central differences with Richardson extrapolation (as numDeriv).

    Parameters
    ----------
    res : LMM results
    L : array_like, optional
        Contrasts (rows); the fixed effects one by one when omitted.

    Returns
    -------
    numpy.ndarray
        One df per row of ``L``.
    """
    r = _raw(res)
    A, jac, C = _satt_pieces(r)
    L = np.eye(r.k_fe) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    out = np.empty(L.shape[0])
    for k, l in enumerate(L):
        var = l @ C @ l
        g = np.array([l @ J @ l for J in jac])
        den = g @ A @ g
        out[k] = 2.0 * var ** 2 / den if den > 0 else np.inf
    return out


def satterthwaite_ftest(res, L, rhs=0.0):
    """Satterthwaite F test of ``L beta = rhs`` (lmerTest's ``contestMD``).

    Returns
    -------
    dict
        ``F``, ``df_num``, ``df_denom``, ``pvalue``.
    """
    r = _raw(res)
    A, jac, C = _satt_pieces(r)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    beta = _params(r) - np.linalg.pinv(L) @ np.broadcast_to(np.asarray(rhs, float), (L.shape[0],))
    VL = L @ C @ L.T
    d, P = np.linalg.eigh(VL)
    idx = np.argsort(d)[::-1]
    d, P = d[idx], P[:, idx]
    pos = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0)
    q = int(pos.sum())
    PtL = (P.T @ L)[:q]
    t2 = (PtL @ beta) ** 2 / d[:q]
    F = t2.sum() / q
    nu = []
    for m in range(q):
        g = np.array([PtL[m] @ J @ PtL[m] for J in jac])
        nu.append(2 * d[m] ** 2 / (g @ A @ g))
    nu = np.array(nu)
    if q == 1:
        ddf = nu[0]
    elif np.all(np.abs(np.diff(nu)) < 1e-8):
        ddf = nu.mean()
    elif np.any(nu <= 2):
        ddf = 2.0
    else:
        E = np.sum(nu / (nu - 2))
        ddf = 2 * E / (E - q)
    return {"F": F, "df_num": q, "df_denom": ddf, "pvalue": float(stats.f.sf(F, q, ddf))}


def _kr_pieces(res):
    """pbkrtest's adjusted covariance and its P, W pieces, computed in the random-effects space."""
    _require_lmm(res, "Kenward-Roger's method")
    r = _raw(res)
    c = _cache(r)
    if "kr" in c:
        return c["kr"]
    if not r.reml:
        raise ValueError("Kenward-Roger's method is only available for REML fits (as in pbkrtest "
                         "and lmerTest); refit with reml=True")
    model = r.model
    w = np.asarray(model.weights, dtype=float)
    if not np.allclose(w, 1.0):
        raise NotImplementedError("Kenward-Roger's method is not implemented for weighted models")
    des = model.re_design
    n = int(model.nobs)
    Z = sparse.hstack([b.Z() for b in des.blocks], format="csc")
    q = Z.shape[1]
    if n * q > 8e7:
        raise NotImplementedError(f"Kenward-Roger needs an n x q dense matrix ({n} x {q}); "
                                  "too large here, use Satterthwaite")
    lams = des.lambdas(r.theta)
    Lam = sparse.block_diag([sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                             for b, lam in zip(des.blocks, lams)], format="csc")
    X = np.asarray(model.exog, dtype=float)
    s2 = r.sigma ** 2
    ZL = (Z @ Lam).tocsc()
    M = (ZL.T @ ZL).toarray() + np.eye(q)
    Mc = linalg.cho_factor(M, lower=True)
    Minv = linalg.cho_solve(Mc, np.eye(q))

    def S(B):                                    # V^-1 B for dense B
        B = np.asarray(B, dtype=float)
        return (B - ZL @ linalg.cho_solve(Mc, np.asarray(ZL.T @ B))) / s2

    SZ = S(Z.toarray())
    SX = S(X)
    W = np.asarray(Z.T @ SZ)
    K = np.asarray(SZ.T @ X)
    W2 = SZ.T @ SZ
    K2 = SZ.T @ SX
    XS2X = SX.T @ SX
    XS3X = SX.T @ S(SX)
    trS2 = (n - q + np.sum(Minv * Minv)) / s2 ** 2
    # E_r: structure of each covariance parameter (per term, lower triangle), in block columns
    E = []
    off_blocks = np.cumsum([0] + [b.nre for b in des.blocks])
    for bi, b in enumerate(des.blocks):
        off = 0
        for t in b.terms:
            for j in range(t.q):
                for i in range(j, t.q):
                    e = np.zeros((b.q, b.q))
                    e[off + i, off + j] = e[off + j, off + i] = 1.0
                    Eb = sparse.kron(sparse.identity(b.m), sparse.csr_matrix(e), format="csr")
                    full = sparse.block_diag([sparse.csr_matrix((off_blocks[k + 1] - off_blocks[k],) * 2)
                                              if k != bi else Eb for k in range(len(des.blocks))],
                                             format="csr")
                    E.append(full)
            off += t.q
    ng = len(E) + 1                                # + residual
    Phi = np.asarray(r.cov_params(), dtype=float)
    PP = [np.asarray(-(K.T @ (Er @ K))) for Er in E] + [-XS2X]
    EW = [np.asarray((Er @ W)) for Er in E]
    EK = [np.asarray(Er @ K) for Er in E]

    def QQ(a, b):
        if a < ng - 1 and b < ng - 1:
            return EK[a].T @ W @ EK[b]
        if a < ng - 1:
            return EK[a].T @ K2
        if b < ng - 1:
            return K2.T @ EK[b]
        return XS3X

    def Ktr(a, b):
        if a < ng - 1 and b < ng - 1:
            return np.sum(EW[a] * EW[b].T)
        if a < ng - 1:
            return float(E[a].multiply(W2).sum())          # tr(E_a W2), both symmetric
        if b < ng - 1:
            return float(E[b].multiply(W2).sum())
        return trS2

    IE2 = np.empty((ng, ng))
    Q = {}
    for a in range(ng):
        PhiPa = Phi @ PP[a]
        for b in range(a, ng):
            Q[a, b] = QQ(a, b)
            IE2[a, b] = IE2[b, a] = Ktr(a, b) - 2 * np.sum(Phi * Q[a, b]) + np.sum(PhiPa * (PP[b] @ Phi))
    ev = np.linalg.eigvalsh(IE2)
    WW = 2 * (np.linalg.inv(IE2) if np.min(np.abs(ev)) > 1e-10 else np.linalg.pinv(IE2))
    UU = np.zeros_like(Phi)
    for a in range(ng - 1):
        for b in range(a + 1, ng):
            UU += WW[a, b] * (Q[a, b] - PP[a] @ Phi @ PP[b])
    UU = UU + UU.T
    for a in range(ng):
        UU += WW[a, a] * (Q[a, a] - PP[a] @ Phi @ PP[a])
    PhiA = Phi + 2 * Phi @ UU @ Phi
    c["kr"] = (PhiA, PP, WW, Phi)
    return c["kr"]


def _kr_ddf(L, V0, P, W):
    """pbkrtest's ``Lb_ddf``: Kenward-Roger denominator df for the hypothesis L beta = 0."""
    L = np.atleast_2d(L)
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    TV = Theta @ V0
    A1 = A2 = 0.0
    g = len(P)
    us = [TV @ P[i] @ V0 for i in range(g)]
    for i in range(g):
        for j in range(i, g):
            e = 1.0 if i == j else 2.0
            A1 += e * W[i, j] * np.trace(us[i]) * np.trace(us[j])
            A2 += e * W[i, j] * np.sum(us[i] * us[j].T)
    q = L.shape[0]
    B = (A1 + 6 * A2) / (2 * q)
    gg = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    den = 3 * q + 2 * (1 - gg)
    c1, c2, c3 = gg / den, (q - gg) / den, (q + 2 - gg) / den
    V0_ = 1 + c1 * B
    V1 = 1 - c2 * B
    V2 = 1 - c3 * B
    V0_ = 0.0 if abs(V0_) < 1e-10 else V0_
    x = 1 - A2 / q
    ratio = 1.0 if (abs(x) < 1e-14 and abs(V1) < 1e-14) else x / V1
    rho = ratio ** 2 * V0_ / V2 / q
    return 4 + (q + 2) / (q * rho - 1)


def kenward_roger(res, L=None):
    """Kenward-Roger adjusted covariance and denominator df (pbkrtest / lmerTest).

    Parameters
    ----------
    res : LMM results fitted by REML (unweighted)
    L : array_like, optional
        Contrast rows; the fixed effects one by one when omitted.

    Returns
    -------
    df : numpy.ndarray
        One df per row of ``L``.
    vcov_adj : numpy.ndarray
        The adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj``).
    """
    PhiA, P, W, Phi = _kr_pieces(res)
    L = np.eye(Phi.shape[0]) if L is None else np.atleast_2d(np.asarray(L, dtype=float))
    return np.array([_kr_ddf(l[None, :], Phi, P, W) for l in L]), PhiA


def _ddf_frame(res, ddf, alpha=0.05):
    r = _raw(res)
    method = _ddf_method(ddf)
    beta = _params(r)
    if method == "satterthwaite":
        df = satterthwaite(r)
        se = np.sqrt(np.diag(np.asarray(r.cov_params(), dtype=float)))
    else:
        df, V = kenward_roger(r)
        se = np.sqrt(np.diag(V))
    t = beta / se
    p = 2 * stats.t.sf(np.abs(t), df)
    qq = stats.t.ppf(1 - alpha / 2, df)
    return pd.DataFrame({"coef": beta, "std err": se, "df": df, "t": t, "P>|t|": p,
                         f"[{alpha / 2:g}": beta - qq * se, f"{1 - alpha / 2:g}]": beta + qq * se},
                        index=_fe_names(r))


def _ddf_method(ddf):
    d = str(ddf).lower().replace("_", "-").replace(" ", "-")
    if d in ("satterthwaite", "satt"):
        return "satterthwaite"
    if d in ("kenward-roger", "kr", "kenwardroger"):
        return "kenward-roger"
    raise ValueError(f"unknown ddf method {ddf!r}; use 'satterthwaite' or 'kenward-roger'")


# =============================================================================================
# 3. profile-likelihood and bootstrap intervals
# =============================================================================================
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
        self.se_beta = np.sqrt(np.diag(np.asarray(fit.cov_params(), dtype=float)))
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


def _select(names, cols):
    if cols is None:
        return list(range(len(names)))
    if isinstance(cols, (str, int, np.integer)):
        cols = [cols]
    out = []
    for c in cols:
        if isinstance(c, (int, np.integer)):
            out.append(int(c))
        elif c in names:
            out.append(names.index(c))
        else:
            raise ValueError(f"unknown parameter {c!r}; choose from {names}")
    return out


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


# =============================================================================================
# 4. variance explained
# =============================================================================================
def _family(res):
    m = _raw(res).model
    fam = getattr(m, "family", None)
    return fam


def _distribution_variance(res):
    """Residual ("distribution-specific") variance on the latent scale (insight / performance)."""
    r = _raw(res)
    fam = _family(r)
    if fam is None:
        if _is_lmm(r) or getattr(r, "_has_residual", False):
            return r.sigma ** 2
        # ordinal (clmm): the latent variable's variance for the link
        link = getattr(r.model, "link", "logit")
        link = str(getattr(link, "name", link)).lower()
        return {"logit": np.pi ** 2 / 3, "probit": 1.0, "cloglog": np.pi ** 2 / 6}.get(link, np.pi ** 2 / 3)
    from statsmodels.genmod import families
    link = type(fam.link).__name__.lower()
    if isinstance(fam, families.Gaussian):
        return r.sigma ** 2
    if isinstance(fam, families.Binomial):
        table = {"logit": np.pi ** 2 / 3, "probit": 1.0, "cloglog": np.pi ** 2 / 6}
        if link not in table:
            raise NotImplementedError(f"R2 for a binomial model with a {link} link")
        return table[link]
    if isinstance(fam, families.Poisson):
        if link != "log":
            raise NotImplementedError(f"R2 for a Poisson model with a {link} link")
        null = _null_model_fit(r)
        mu = float(np.exp(_params(null)[0]))
        return float(np.log1p(1.0 / mu))
    raise NotImplementedError(f"R2 / ICC for the {type(fam).__name__} family is not implemented")


def _null_model_fit(res, intercept_only_re=False):
    """Refit with the intercept as the only fixed effect (same random effects)."""
    r = _raw(res)
    c = _cache(r)
    key = ("null", intercept_only_re)
    if key in c:
        return c[key]
    model = r.model
    X = getattr(model.data, "orig_exog", None)
    idx = X.index if isinstance(X, pd.DataFrame) else None
    X0 = pd.DataFrame({"Intercept": np.ones(int(model.nobs))}, index=idx)
    des = None
    if intercept_only_re:
        from ..design import RandomEffectsDesign, ReTerm
        terms = []
        seen = set()
        for t in model.re_design.terms:
            if t.factors in seen:
                continue
            seen.add(t.factors)
            nt = ReTerm(t.name, t.factors, "1", np.ones((t.X.shape[0], 1)), ["Intercept"], t.codes, t.levels)
            terms.append(nt)
        des = RandomEffectsDesign(terms)
    m0 = _rebuild_model(model, exog=X0, design=des)
    c[key] = _refit(m0, r, start=False)
    return c[key]


def _variance_components(res):
    """var_fixed, var_random and var_residual as insight::get_variance defines them."""
    r = _raw(res)
    model = r.model
    X = np.asarray(model.exog, dtype=float)
    eta = X @ _beta(r)
    var_fixed = float(np.var(eta, ddof=1)) if eta.size > 1 else 0.0
    des = model.re_design
    s2 = r.sigma ** 2 if getattr(r, "_has_residual", True) and _is_lmm(r) else 1.0
    fe = _fe_names(r)
    var_random = 0.0
    for t in des.terms:
        Sig = s2 * des.term_cov(r.theta, t)
        missing = [c for c in t.colnames if c not in fe and c != "Intercept"]
        if missing:
            warnings.warn(f"random slopes {missing} of ({t.lhs} | {t.name}) are not fixed effects; "
                          "their variance is averaged over their own values", UserWarning, stacklevel=3)
        var_random += float(np.einsum("ij,jk,ik->", t.X, Sig, t.X)) / t.X.shape[0]
    var_resid = _distribution_variance(r)
    return var_fixed, var_random, var_resid


def r2_nakagawa(res):
    """Nakagawa & Schielzeth's marginal and conditional R² (Johnson's extension for slopes).

    ``var_fixed`` is the variance of the fixed-effects linear predictor, ``var_random``
    the mean over observations of ``z_i' Sigma z_i`` summed over random-effects terms, and
    ``var_residual`` the residual variance (LMM) or the family's latent-scale variance
    (binomial: pi^2/3 logit, 1 probit, pi^2/6 cloglog; Poisson log link: log(1 + 1/mu) with
    mu the exponentiated intercept of the intercept-only model), as ``performance::r2_nakagawa``.

    Returns
    -------
    pandas.Series
        ``marginal``, ``conditional``, and the three variances.
    """
    vf, vr, ve = _variance_components(res)
    tot = vf + vr + ve
    return pd.Series({"marginal": vf / tot, "conditional": (vf + vr) / tot, "var_fixed": vf,
                      "var_random": vr, "var_residual": ve}, name="r2_nakagawa")


def icc(res):
    """Intraclass correlation: adjusted ``vr / (vr + ve)`` and conditional ``vr / (vf + vr + ve)``.

    Variances as in :func:`r2_nakagawa` (``performance::icc``).

    Returns
    -------
    pandas.Series
        ``adjusted``, ``conditional``.
    """
    vf, vr, ve = _variance_components(res)
    return pd.Series({"adjusted": vr / (vr + ve), "conditional": vr / (vf + vr + ve)}, name="icc")


def r2_snijders_bosker(res, null=None, group_size="mean"):
    """Snijders & Bosker's level-1 and level-2 R² for a two-level random-intercept model.

    ``R2_1 = 1 - (s2 + t2) / (s2_0 + t2_0)`` and
    ``R2_2 = 1 - (s2 / nbar + t2) / (s2_0 / nbar + t2_0)``, where ``s2``, ``t2`` are the
    residual and random-intercept variances of the model and ``s2_0``, ``t2_0`` those of the
    empty model ``y ~ 1 + (1 | g)`` (Snijders & Bosker 2012, sec. 7.1).

    Parameters
    ----------
    res : LMM results with a single random-intercept term ``(1 | g)``
    null : LMM results, optional
        The empty model's fit; refitted (same REML/ML) when omitted.
    group_size : {"mean", "harmonic"} or float
        ``nbar``: the mean group size ``n / J``, the harmonic mean of the group sizes, or a
        given value.

    Returns
    -------
    pandas.Series
        ``level1``, ``level2``, ``nbar``.
    """
    _require_lmm(res, "Snijders-Bosker R2")
    r = _raw(res)
    des = r.model.re_design
    if len(des.terms) != 1 or des.terms[0].q != 1 or des.terms[0].colnames != ["Intercept"]:
        raise ValueError("the Snijders-Bosker R2 is defined here for models with one random "
                         "intercept (1 | g) only")
    t = des.terms[0]
    n0 = _raw(null) if null is not None else _null_model_fit(r)
    if null is not None:
        ok, why = _same_rows(r, n0)
        if not ok:
            raise ValueError(f"the null model was fitted to other data ({why})")
    t2 = r.sigma ** 2 * r.theta[0] ** 2
    s2 = r.sigma ** 2
    t20 = n0.sigma ** 2 * n0.theta[0] ** 2
    s20 = n0.sigma ** 2
    counts = np.bincount(t.codes, minlength=t.m)
    if group_size == "mean":
        nbar = counts.sum() / t.m
    elif group_size == "harmonic":
        nbar = t.m / np.sum(1.0 / counts)
    else:
        nbar = float(group_size)
    return pd.Series({"level1": 1 - (s2 + t2) / (s20 + t20),
                      "level2": 1 - (s2 / nbar + t2) / (s20 / nbar + t20), "nbar": nbar},
                     name="r2_snijders_bosker")


# =============================================================================================
# 5. simulation and power
# =============================================================================================
def simulate(res, nsim=1, seed=None, re=True, use_u=False, params=None):
    """Simulate responses from a fitted model (lme4's ``simulate``).

    Parameters
    ----------
    res : MixedResults
    nsim : int
    seed : int or numpy.random.Generator, optional
    re : bool
        Include random-effect variation.  ``re=True`` draws new random effects from their
        fitted distribution (lme4's default); ``re=False`` sets them to zero (population
        level plus residual noise).
    use_u : bool
        With ``re=True``, use the conditional modes instead of new draws (lme4's
        ``use.u = TRUE``).
    params : array_like, optional
        Fixed effects to simulate with instead of the estimates.

    Returns
    -------
    pandas.DataFrame
        One column per simulation (``sim_1``, ...), rows as the fitted data.
    """
    r = _raw(res)
    model = r.model
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = int(model.nobs)
    beta = _beta(r) if params is None else np.asarray(params, dtype=float)
    eta = np.asarray(model.exog, dtype=float) @ beta + np.asarray(model.offset, dtype=float)
    eta = np.repeat(eta[:, None], nsim, axis=1)
    lmm = _is_lmm(r)
    scale = r.sigma if lmm else 1.0
    des = model.re_design
    if re:
        if use_u:
            for blk, b in zip(des.blocks, r._blocks_b()):
                eta += (blk.Z() @ b.reshape(-1))[:, None]
        else:
            for blk, lam in zip(des.blocks, des.lambdas(r.theta)):
                u = rng.standard_normal((blk.m, blk.q, nsim))
                b = np.einsum("ij,gjs->gis", lam, u).reshape(blk.m * blk.q, nsim) * scale
                eta += blk.Z() @ b
    fam = _family(r)
    w = np.asarray(model.weights, dtype=float)
    if lmm and (fam is None or type(fam).__name__ == "Gaussian"):
        with np.errstate(divide="ignore"):
            sd = np.where(w > 0, r.sigma / np.sqrt(w), 0.0)
        y = eta + sd[:, None] * rng.standard_normal((n, nsim))
    elif hasattr(r, "_simulate_response"):
        y = r._simulate_response(eta, rng)
    elif fam is not None:
        mu = fam.link.inverse(eta)
        name = type(fam).__name__
        if name == "Poisson":
            y = rng.poisson(mu).astype(float)
        elif name == "Binomial":
            # the response is a proportion of `weights` trials (1 for 0/1 data), as glmer stores it
            ntr = np.round(w).astype(np.int64)
            if np.any(np.abs(w - ntr) > 1e-8):
                raise NotImplementedError("simulating a binomial response needs integer trials "
                                          "(weights)")
            succ = rng.binomial(ntr[:, None], np.clip(mu, 0.0, 1.0)).astype(float)
            y = np.divide(succ, ntr[:, None], out=np.zeros_like(succ), where=ntr[:, None] > 0)
        else:
            raise NotImplementedError(f"simulation from a {name} mixed model is not implemented")
    else:
        raise NotImplementedError(f"simulation from a {type(model).__name__} is not implemented")
    index = model.formula_info.get("row_labels") if hasattr(model, "formula_info") else None
    return pd.DataFrame(y, index=index, columns=[f"sim_{k + 1}" for k in range(nsim)])


class PowerSimResults:
    """Result of :func:`power_sim` (simr's ``powerSim``).

    Attributes
    ----------
    power : float
        Fraction of simulations with p < alpha.
    conf_int : tuple
        Clopper-Pearson interval for the power (as simr, ``binom.test``).
    successes, nsim, failed : int
    pvalues : numpy.ndarray
        One p-value per simulation (NaN for failed refits).
    """

    def __init__(self, term, effect, pvalues, alpha, test, conf_level):
        self.term, self.effect, self.alpha, self.test = term, effect, alpha, test
        self.pvalues = np.asarray(pvalues, dtype=float)
        ok = np.isfinite(self.pvalues)
        self.nsim = int(ok.sum())
        self.failed = int((~ok).sum())
        self.successes = int((self.pvalues[ok] < alpha).sum())
        self.power = self.successes / self.nsim if self.nsim else np.nan
        ci = stats.binomtest(self.successes, max(self.nsim, 1)).proportion_ci(conf_level, method="exact")
        self.conf_int = (float(ci.low), float(ci.high))
        self.conf_level = conf_level

    def __repr__(self):
        lo, hi = self.conf_int
        return (f"Power for predictor {self.term!r} ({self.test} test, alpha = {self.alpha}, "
                f"effect = {self.effect:g}), ({100 * self.conf_level:g}% confidence interval):\n"
                f"      {100 * self.power:.2f}% ({100 * lo:.2f}, {100 * hi:.2f})\n"
                f"Based on {self.nsim} simulations ({self.failed} failed).")


def power_sim(res, term, effect=None, nsim=100, alpha=0.05, test="satterthwaite", seed=None,
              conf_level=0.95, progress=False):
    """Power to detect a fixed effect by simulate-and-refit (simr's ``powerSim``).

    Responses are simulated from the fitted model (new random effects, the fitted variance
    components), with the fixed effect ``term`` set to ``effect`` when given; the model is
    refitted to each and the effect tested.

    Parameters
    ----------
    res : MixedResults
    term : str
        A fixed-effect name (a column of the design, e.g. ``"x"`` or ``"f[T.b]"``).
    effect : float, optional
        The effect size to simulate with (the estimate by default).
    nsim : int
    alpha : float
        Significance level of the test.
    test : {"satterthwaite", "kenward-roger", "z", "lrt"}
        t-test with Satterthwaite / Kenward-Roger df (LMM), Wald z-test, or likelihood-ratio
        test against the model without the term (ML refits).
    seed : int, optional
    conf_level : float
        Level of the Clopper-Pearson interval for the power.
    progress : bool

    Returns
    -------
    PowerSimResults
    """
    r = _raw(res)
    names = _fe_names(r)
    if term not in names:
        raise ValueError(f"unknown fixed effect {term!r}; the fixed effects are {names}")
    j = names.index(term)
    test = str(test).lower()
    if test not in ("z", "lrt"):
        try:
            test = _ddf_method(test)
        except ValueError:
            raise ValueError("test must be 'satterthwaite', 'kenward-roger', 'z' or 'lrt'") from None
    if test in ("satterthwaite", "kenward-roger"):
        _require_lmm(r, f"the {test} test")
    beta = _beta(r).copy()
    if effect is not None:
        beta[j] = float(effect)
    rng = np.random.default_rng(seed)
    ys = simulate(r, nsim=nsim, seed=rng, params=beta)
    bar = _Progress(nsim, progress, "power ")
    pv = np.full(nsim, np.nan)
    X = getattr(r.model.data, "orig_exog", None)
    for k in range(nsim):
        y = ys.iloc[:, k].to_numpy() if isinstance(ys, pd.DataFrame) else ys[k]
        try:
            m = _rebuild_model(r.model, endog=y)
            if test == "lrt":
                full = _refit(m, r, reml=False) if _is_lmm(r) else _refit(m, r)
                Xr = X.drop(columns=[term]) if isinstance(X, pd.DataFrame) else np.delete(r.model.exog, j, axis=1)
                red = _refit(_rebuild_model(m, exog=Xr), r, reml=False) if _is_lmm(r) else \
                    _refit(_rebuild_model(m, exog=Xr), r)
                pv[k] = stats.chi2.sf(max(0.0, 2 * (full.llf - red.llf)), 1)
            else:
                fit = _refit(m, r)
                est = _beta(fit)[j]
                if test == "z":
                    se = float(np.asarray(fit.bse_fe, dtype=float)[j])
                    pv[k] = 2 * stats.norm.sf(abs(est / se))
                elif test == "satterthwaite":
                    se = np.sqrt(np.asarray(fit.cov_params(), dtype=float)[j, j])
                    df = satterthwaite(fit, np.eye(len(names))[j:j + 1])[0]
                    pv[k] = 2 * stats.t.sf(abs(est / se), df)
                else:
                    df, V = kenward_roger(fit, np.eye(len(names))[j:j + 1])
                    pv[k] = 2 * stats.t.sf(abs(est / np.sqrt(V[j, j])), df[0])
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            pass
        bar.step()
    return PowerSimResults(term, beta[j], pv, alpha, test, conf_level)


# =============================================================================================
# 6. diagnostics
# =============================================================================================
def _group_block(model, group):
    des = model.re_design
    if group is None:
        return des.terms[0]
    for t in des.terms:
        if t.name == group or ":".join(t.factors) == group or group in (t.factors if len(t.factors) == 1 else ()):
            return t
    raise ValueError(f"unknown grouping factor {group!r}; the model has {[t.name for t in des.terms]}")


def influence(res, group=None, method="one-step"):
    """Influence of each level of a grouping factor on the fixed effects.

    ``method="one-step"`` is HLMdiag's ``cooks.distance(model, level = group)``: with the
    variance components held at their estimates, deleting the rows I of a level changes
    the GLS fixed effects by
    ``d_I = (X'V^-1X)^-1 X' V^-1[:, I] P_II^-1 (V^-1 e)_I`` (``P = V^-1 - V^-1 X (X'V^-1X)^-1 X'V^-1``,
    ``e = y - X beta``), and Cook's distance is ``D_I = d_I' (X'V^-1X) d_I / p``.  It is
    computed through ``V^-1 = sigma^-2 (I - Z Lambda M^-1 Lambda' Z')`` without forming an
    n x n matrix.  ``method="refit"`` refits the model without each level instead (the
    variance components re-estimated) and uses the same distance.

    Parameters
    ----------
    res : LMM results
    group : str, optional
        Grouping factor (the first in lme4's order by default).
    method : {"one-step", "refit"}

    Returns
    -------
    pandas.DataFrame
        Index: the levels; columns ``cooks_d`` and one per fixed effect with the change
        ``beta_hat - beta_hat(without the level)``.
    """
    _require_lmm(res, "Group-deletion influence")
    r = _raw(res)
    model = r.model
    t = _group_block(model, group)
    X = np.asarray(model.exog, dtype=float)
    p = X.shape[1]
    beta = _params(r)
    names = _fe_names(r)
    rows = []
    if method == "one-step":
        des = model.re_design
        w = np.asarray(model.weights, dtype=float)
        Z = sparse.hstack([b.Z() for b in des.blocks], format="csr")
        Lam = sparse.block_diag([sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                                 for b, lam in zip(des.blocks, des.lambdas(r.theta))], format="csc")
        sw = np.sqrt(w)
        ZL = sparse.diags(sw) @ (Z @ Lam)                     # W^1/2 Z Lambda
        ZL = ZL.tocsr()
        q = ZL.shape[1]
        M = (ZL.T @ ZL).toarray() + np.eye(q)
        Mc = linalg.cho_factor(M, lower=True)
        s2 = r.sigma ** 2

        def Vinv(B):                                         # V = sigma^2 (W^-1 + Z Lam Lam' Z')
            Bw = B * sw[:, None]
            return (Bw - ZL @ linalg.cho_solve(Mc, np.asarray(ZL.T @ Bw))) * sw[:, None] / s2

        y = np.asarray(model.endog, dtype=float) - np.asarray(model.offset, dtype=float)
        VX = Vinv(X)
        XVX = X.T @ VX
        C = np.linalg.inv(XVX)
        bgls = C @ (VX.T @ y)
        e = y - X @ bgls
        Ve = Vinv(e[:, None])[:, 0]
        Minv = linalg.cho_solve(Mc, np.eye(q))
        order = np.argsort(t.codes, kind="stable")
        starts = np.searchsorted(t.codes[order], np.arange(t.m + 1))
        for g in range(t.m):
            I = order[starts[g]:starts[g + 1]]
            F = ZL[I].toarray()
            VII = (np.diag(np.ones(I.size)) - F @ Minv @ F.T) * np.outer(sw[I], sw[I]) / s2
            PII = VII - VX[I] @ C @ VX[I].T
            d = C @ (VX[I].T @ np.linalg.solve(PII, Ve[I]))
            rows.append(np.concatenate([[d @ XVX @ d / p], d]))
    elif method == "refit":
        Vb = np.asarray(r.cov_params(), dtype=float)
        Vbi = np.linalg.inv(Vb)
        for g in range(t.m):
            keep = t.codes != g
            m = _rebuild_model(model, keep=keep)
            fit = _refit(m, r, start=False)
            d = beta - _params(fit)
            rows.append(np.concatenate([[d @ Vbi @ d / p], d]))
    else:
        raise ValueError("method must be 'one-step' or 'refit'")
    out = pd.DataFrame(rows, index=pd.Index(t.levels, name=t.name), columns=["cooks_d"] + names)
    out.attrs["method"] = method
    return out


def cooks_distance(res, group=None, method="one-step"):
    """Cook's distance per level of a grouping factor (see :func:`influence`).

    Returns
    -------
    pandas.Series
    """
    return influence(res, group=group, method=method)["cooks_d"]


class ConvergenceCheck:
    """Result of :func:`check_convergence`.

    Attributes
    ----------
    converged : bool
    gradient, hessian : numpy.ndarray
        Derivatives of the profiled deviance with respect to theta at the estimate.
    newton_step : numpy.ndarray
        ``H^-1 g`` on the parameters not at a bound.
    decrement : float
        The deviance decrease a Newton step would still achieve, ``g' H^-1 g / 2``
        (deviance units: independent of the sample size).
    lme4_maxgrad : float
        lme4's statistic ``max(min(|H^-1 g|, |g|))`` (its default tolerance is 0.002).
    min_eigenvalue : float
        Smallest eigenvalue of the Hessian on the free parameters.
    messages : list of str
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        msg = "; ".join(self.messages) if self.messages else "ok"
        return (f"ConvergenceCheck(converged={self.converged}, decrement={self.decrement:.3g}, "
                f"lme4_maxgrad={self.lme4_maxgrad:.3g}, min_eigenvalue={self.min_eigenvalue:.3g}: {msg})")


def check_convergence(res, tol=1e-5):
    """Gradient-based check that the optimizer reached a minimum of the profiled deviance.

    lme4 flags a fit when ``max(min(|H^-1 g|, |g|)) > 0.002`` for the gradient g and
    Hessian H of the deviance in theta; the absolute gradient grows with n, so large data
    sets raise false alarms.  This check uses the Newton decrement ``g' H^-1 g / 2``, the
    deviance decrease still available from the estimate, which has deviance units whatever
    the size of the data: the fit passes when it is below ``tol`` and H is positive
    definite on the parameters that are not at a bound (a parameter at its bound with a
    gradient pointing out of the feasible set is fine).  Derivatives are Richardson-
    extrapolated central differences; no n-sized work per evaluation.

    Parameters
    ----------
    res : LMM results
    tol : float
        Tolerance on the Newton decrement (deviance units).

    Returns
    -------
    ConvergenceCheck
    """
    _require_lmm(res, "check_convergence")
    r = _raw(res)
    model = r.model
    f = lambda th: model.deviance_profiled(th, reml=r.reml)
    th = r.theta.copy()
    lower = model.re_design.lower
    g = _jacobian(lambda x: np.array([f(x)]), th)[0]
    H = _hessian(f, th)
    obj = _LMMObjective(model)
    obj.factor(r.theta)
    atb = np.isfinite(lower) & (th <= lower + 1e-10)
    free = ~(atb & (g >= 0))
    messages = []
    Hf = H[np.ix_(free, free)]
    gf = g[free]
    if free.any():
        ev = np.linalg.eigvalsh((Hf + Hf.T) / 2)
        mine = float(ev.min())
        try:
            step = np.linalg.solve(Hf, gf)
        except np.linalg.LinAlgError:
            step = np.full(gf.size, np.inf)
        dec = float(gf @ step / 2) if mine > 0 else float("nan")
    else:
        mine, step, dec = float("inf"), np.zeros(0), 0.0
    full_step = np.zeros(th.size)
    full_step[free] = step
    lme4_stat = float(np.max(np.minimum(np.abs(full_step), np.abs(g)))) if th.size else 0.0
    if mine <= 0:
        messages.append(f"the Hessian is not positive definite (smallest eigenvalue {mine:.3g}): "
                        "not at a minimum")
    elif dec > tol:
        messages.append(f"a Newton step would lower the deviance by {dec:.3g} (> tol = {tol:g})")
    return ConvergenceCheck(converged=not messages, gradient=g, hessian=H, newton_step=full_step,
                            decrement=dec, lme4_maxgrad=lme4_stat, min_eigenvalue=mine,
                            messages=messages)


# =============================================================================================
# results methods
# =============================================================================================
class _UnwrappedMethod:
    """A method that statsmodels' results wrapper must leave alone.

    ``populate_wrapper`` wraps every method in ``_wrap_methods`` that the results class
    has, reindexing its output by the parameter names.  ``conf_int`` with
    ``method="profile"``/``"boot"`` returns extra rows (the variance parameters), so this
    descriptor hides the method from that class-level lookup; the wrapper then forwards
    the call to the results instance unchanged, and ``conf_int`` does the pandas labelling
    of the Wald intervals itself (the same DataFrame the wrapper used to make).
    """

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__
        self.__wrapped__ = func

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.__name__)
        return self.func.__get__(obj, owner)


class InferenceMixin:
    """Inference methods of mixed-model results (first base class of ``MixedResults``)."""

    def df_satterthwaite(self):
        """Satterthwaite denominator df per fixed effect (lmerTest's ``summary`` df).

        Returns
        -------
        pandas.Series
            Indexed by the fixed-effect names.
        """
        return pd.Series(satterthwaite(self), index=_fe_names(self), name="df_satterthwaite")

    def df_kenward_roger(self):
        """Kenward-Roger denominator df per fixed effect (REML fits; pbkrtest / lmerTest).

        Returns
        -------
        pandas.Series
        """
        return pd.Series(kenward_roger(self)[0], index=_fe_names(self), name="df_kenward_roger")

    def cov_params_kenward_roger(self):
        """pbkrtest's adjusted covariance of the fixed effects (``vcovAdj``)."""
        V = kenward_roger(self)[1]
        return pd.DataFrame(V, index=_fe_names(self), columns=_fe_names(self))

    def t_test(self, r_matrix, cov_p=None, use_t=None, df=None):
        """t tests of linear hypotheses ``R beta = q``, optionally with lmerTest's df.

        Parameters
        ----------
        r_matrix : array_like, str, or tuple
            As in statsmodels (``"Days = 0"``, a matrix, or ``(R, q)``).
        cov_p, use_t
            As in statsmodels (used when ``df`` is None).
        df : {None, "satterthwaite", "kenward-roger"}
            Denominator degrees of freedom per contrast.  Kenward-Roger also uses the
            adjusted covariance for the standard errors (as lmerTest).

        Returns
        -------
        statsmodels.stats.contrast.ContrastResults
        """
        if df is None:
            return super().t_test(r_matrix, cov_p=cov_p, use_t=use_t)
        from statsmodels.stats.contrast import ContrastResults
        method = _ddf_method(df)
        L, q = _contrast_matrix(self, r_matrix)
        beta = _params(self)
        if method == "satterthwaite":
            dfs = satterthwaite(self, L)
            V = np.asarray(self.cov_params(), dtype=float)
        else:
            dfs, V = kenward_roger(self, L)
        effect = L @ beta
        sd = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
        t = (effect - q) / sd
        return ContrastResults(effect=effect, t=t, sd=sd, df_denom=dfs)

    def _conf_int(self, alpha=0.05, cols=None, method="wald", nsim=500, seed=None,
                  boot_type="perc", progress=False, names="descriptive"):
        """Confidence intervals for the fixed effects, and variance parameters.

        Parameters
        ----------
        alpha : float
            1 - confidence level.
        cols : array_like, optional
            ``method="wald"``: as statsmodels (positions of fixed effects).  Otherwise the
            rows to compute (names or positions).
        method : {"wald", "profile", "boot"}
            ``"wald"``: statsmodels' normal intervals for the fixed effects (unchanged).
            ``"profile"``: profile-likelihood intervals (lme4's
            ``confint(method = "profile")``, see :func:`conf_int_profile`).
            ``"boot"``: parametric bootstrap (:func:`conf_int_boot`).
        nsim, seed, boot_type, progress
            Bootstrap settings: replicates, seed, ``"perc"``/``"basic"``/``"norm"``,
            progress bar.
        names : {"descriptive", "lme4"}
            Row names of the variance parameters: ``sd_Days|Subject``,
            ``cor_Days.Intercept|Subject``, ``sigma`` -- or lme4's ``.sig01``, ``.sigma``.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            Wald: what statsmodels returns.  Profile / boot: a DataFrame with columns
            ``lower``, ``upper`` and rows for the variance parameters (sd / correlation
            scale, then ``sigma``) and the fixed effects; one-sided intervals at a bound
            are listed in ``attrs["boundary"]`` (profile).
        """
        m = str(method).lower()
        if m == "wald":
            ci = _wald_conf_int(self, alpha, cols)
            return ci
        if m == "profile":
            return conf_int_profile(self, alpha=alpha, cols=cols, names=names)
        if m in ("boot", "bootstrap"):
            return conf_int_boot(self, alpha=alpha, cols=cols, nsim=nsim, seed=seed,
                                 boot_type=boot_type, progress=progress, names=names)
        raise ValueError(f"unknown method {method!r}; use 'wald', 'profile' or 'boot'")

    conf_int = _UnwrappedMethod(_conf_int)

    def profile(self, cols=None, alpha=0.01, npoints=6, names="descriptive"):
        """Profile zeta traces; see :func:`mlmext.inference.profile`."""
        return profile(self, cols=cols, alpha=alpha, npoints=npoints, names=names)

    def bootstrap(self, func=None, nsim=100, seed=None, re=True, progress=False):
        """Parametric bootstrap replicates; see :func:`mlmext.inference.bootstrap`."""
        return bootstrap(self, func=func, nsim=nsim, seed=seed, re=re, progress=progress)

    def icc(self):
        """Adjusted and conditional ICC; see :func:`mlmext.inference.icc`."""
        return icc(self)

    def r2(self, method="nakagawa", **kwargs):
        """R² of the model.

        Parameters
        ----------
        method : {"nakagawa", "snijders-bosker"}
            Nakagawa & Schielzeth marginal / conditional (:func:`r2_nakagawa`) or
            Snijders & Bosker level-1 / level-2 (:func:`r2_snijders_bosker`).
        """
        m = method.lower().replace("_", "-")
        if m == "nakagawa":
            return r2_nakagawa(self)
        if m in ("snijders-bosker", "sb"):
            return r2_snijders_bosker(self, **kwargs)
        raise ValueError("method must be 'nakagawa' or 'snijders-bosker'")

    def simulate(self, nsim=1, seed=None, re=True, use_u=False):
        """Simulated responses; see :func:`mlmext.inference.simulate`."""
        return simulate(self, nsim=nsim, seed=seed, re=re, use_u=use_u)

    def power_sim(self, term, effect=None, nsim=100, alpha=0.05, test="satterthwaite", seed=None,
                  progress=False):
        """Simulation-based power for a fixed effect; see :func:`mlmext.inference.power_sim`."""
        return power_sim(self, term, effect=effect, nsim=nsim, alpha=alpha, test=test, seed=seed,
                         progress=progress)

    def influence(self, group=None, method="one-step"):
        """Group-deletion influence; see :func:`mlmext.inference.influence`."""
        return influence(self, group=group, method=method)

    def cooks_distance(self, group=None, method="one-step"):
        """Cook's distance per level; see :func:`mlmext.inference.cooks_distance`."""
        return cooks_distance(self, group=group, method=method)

    def check_convergence(self, tol=1e-5):
        """Gradient check of the optimum; see :func:`mlmext.inference.check_convergence`."""
        return check_convergence(self, tol=tol)

    def _ddf_params_table(self, ddf, alpha=0.05):
        """The fixed-effects table with t tests on ``ddf`` degrees of freedom (for ``summary``)."""
        from statsmodels.iolib.table import SimpleTable
        fr = _ddf_frame(self, ddf, alpha)
        data = [[f"{v:.4f}", f"{s:.3f}", f"{d:.2f}", f"{t:.3f}", f"{p:.3f}" if p >= 0.001 else f"{p:.2e}",
                 f"{lo:.3f}", f"{hi:.3f}"] for v, s, d, t, p, lo, hi in fr.to_numpy()]
        return SimpleTable(data, headers=list(fr.columns), stubs=list(fr.index),
                           title=f"Fixed effects (t tests, {_ddf_method(ddf).title()} df)")


def _wald_conf_int(res, alpha, cols):
    """statsmodels' Wald interval, labelled as its results wrapper labels it."""
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
