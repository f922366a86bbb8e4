"""Simulating responses from a fit, and simulation-based power (lme4's ``simulate``, simr)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .._args import check_flag
from ._common import (_beta, _family, _fe_names, _is_lmm, _Progress, _raw, _require_independent,
                      _require_lmm)
from ._refit import _rebuild_model, _refit
from ._lockstep import _lockstep_fits
from .ddf import _ddf_method, kenward_roger, satterthwaite


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
        ``use.u = TRUE``); with ``re=False`` a TypeError.
    params : array_like, optional
        Fixed effects to simulate with instead of the estimates.

    Returns
    -------
    pandas.DataFrame
        One column per simulation (``sim_1``, ...), rows as the fitted data.
    """
    _require_independent(res, "simulate()")
    check_flag("re", re)
    check_flag("use_u", use_u)
    if use_u and not re:
        # (use_u was ignored: the population level; lme4 refuses use.u with re.form = NA)
        raise TypeError("use_u=True conditions on the random effects' modes, re=False leaves "
                        "them out: give one of them")
    r = _raw(res)
    model = r.model
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = model.exog.shape[0]          # rows (nobs leaves out zero-weight rows)
    beta = _beta(r) if params is None else np.asarray(params, dtype=float)
    if params is not None and (beta.shape != _beta(r).shape or not np.all(np.isfinite(beta))):
        # (was a matmul error naming no argument)
        raise ValueError(f"params must be {_beta(r).size} finite fixed effects "
                         f"({_fe_names(r)}); got {np.shape(params)}: {params!r}")
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
    elif hasattr(r, "_simulate_response"):   # every GLMM result: its family's draws
        y = r._simulate_response(eta, rng)
    else:
        raise NotImplementedError(f"simulation from a {type(model).__name__} is not implemented")
    index = model.formula_info.get("row_labels") if hasattr(model, "formula_info") else None
    return pd.DataFrame(y, index=index, columns=[f"sim_{k + 1}" for k in range(nsim)])


def one_at_a_time(res):
    """A function of a generator ``gen`` that gives ``simulate(res, 1, seed=gen)``'s response
    as an array, the same draws bit for bit, with what does not depend on them made once
    (the fixed part, each block's ``Z`` and template, the residual SDs): simulations drawn
    one at a time for a sequence that does not depend on how they are grouped
    (:func:`~mlmext.inference.pbtest.pb_test`).  An LMM's Gaussian responses; other models
    call :func:`simulate`."""
    _require_independent(res, "one_at_a_time()")
    r = _raw(res)
    model = r.model
    fam = _family(r)
    if not (_is_lmm(r) and (fam is None or type(fam).__name__ == "Gaussian")):
        return lambda gen: simulate(res, 1, seed=gen).iloc[:, 0].to_numpy()
    n = model.exog.shape[0]
    eta0 = np.asarray(model.exog, dtype=float) @ _beta(r) + np.asarray(model.offset, dtype=float)
    des, scale = model.re_design, r.sigma
    blocks = [(blk.m, blk.q, lam, blk.Z()) for blk, lam in zip(des.blocks, des.lambdas(r.theta))]
    w = np.asarray(model.weights, dtype=float)
    with np.errstate(divide="ignore"):
        sd = np.where(w > 0, r.sigma / np.sqrt(w), 0.0)[:, None]

    def draw(gen):                      # (simulate's steps with nsim = 1, in its order)
        eta = np.repeat(eta0[:, None], 1, axis=1)
        for m, q, lam, Z in blocks:
            u = gen.standard_normal((m, q, 1))
            eta += Z @ (np.einsum("ij,gjs->gis", lam, u).reshape(m * q, 1) * scale)
        return (eta + sd * gen.standard_normal((n, 1)))[:, 0]
    return draw


class PowerSimResults:
    """Result of :func:`power_sim` (simr's ``powerSim``).

    Attributes
    ----------
    power : float
        Fraction of simulations with p < alpha.
    conf_int : tuple
        Clopper-Pearson interval for the power (as simr, ``binom.test``).
    successes : int
        Simulations with p < alpha.
    nsim : int
        Simulations with a successful refit (the denominator of ``power``).
    failed : int
        Simulations whose refit failed.
    pvalues : numpy.ndarray
        One p-value per simulation (NaN for failed refits).
    warned : int
        Simulations whose refit or test raised a warning (simr's "warnings" count), e.g. a
        refit that stopped short of a minimum (the Satterthwaite Hessian not positive
        definite).  Their p-values are kept, as simr keeps them; look at ``warning_messages``.
    warning_messages : pandas.Series
        Each distinct warning message and the number of simulations that raised it.
    """

    def __init__(self, term, effect, pvalues, alpha, test, conf_level, sim_warnings=None):
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
        sim_warnings = sim_warnings or {}
        self.warned = len(sim_warnings)
        counts = {}
        for msgs in sim_warnings.values():
            for m in dict.fromkeys(msgs):
                counts[m] = counts.get(m, 0) + 1
        self.warning_messages = pd.Series(counts, dtype=np.int64, name="simulations")

    def __repr__(self):
        lo, hi = self.conf_int
        return (f"Power for predictor {self.term!r} ({self.test} test, alpha = {self.alpha}, "
                f"effect = {self.effect:g}), ({100 * self.conf_level:g}% confidence interval):\n"
                f"      {100 * self.power:.2f}% ({100 * lo:.2f}, {100 * hi:.2f})\n"
                f"Based on {self.nsim} simulations ({self.failed} failed, {self.warned} with "
                f"warnings).")


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
    ml = {"reml": False} if _is_lmm(r) else {}          # likelihood-ratio tests compare ML fits
    contrast = np.eye(len(names))[j:j + 1]
    sim_warnings = {}
    fits = _lockstep_or_none(r, ys, test)
    for k in range(nsim):
        y = ys.iloc[:, k].to_numpy() if isinstance(ys, pd.DataFrame) else ys[k]
        # a refit's warnings (e.g. no minimum found, so the Satterthwaite Hessian is not positive
        # definite) concern that simulation: count them per simulation, as simr does, instead of
        # repeating them on the console; they are reported in the result
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _one_test(r, y, test, term, j, X, ml, contrast, pv, k, fits[k])
        if caught:
            sim_warnings[k] = [f"{w.category.__name__}: {w.message}" for w in caught]
        bar.step()
    return PowerSimResults(term, beta[j], pv, alpha, test, conf_level, sim_warnings)


def _lockstep_or_none(r, ys, test):
    """The refits of the simulations in lockstep where the design allows (small one-factor
    LMMs, tests on the fit itself: :func:`~mlmext.inference.refit_many`'s path), one per
    simulation; None for those refitted one by one (all, or the members the lockstep leaves
    to single refits)."""
    nsim = ys.shape[1] if isinstance(ys, pd.DataFrame) else len(ys)
    if test == "lrt" or not isinstance(ys, pd.DataFrame):
        return [None] * nsim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # (as _refit's)
        try:
            both = _lockstep_fits(r, np.asarray(ys, dtype=float))
        except (np.linalg.LinAlgError, ValueError, RuntimeError, FloatingPointError):
            both = None                                   # each simulation on its own
    return [None] * nsim if both is None else [_raw(f) if f is not None else None for f in both[0]]


def _one_test(r, y, test, term, j, X, ml, contrast, pv, k, fit=None):
    """Refit to one simulated response (unless ``fit`` is its refit) and store the test's
    p-value in ``pv[k]`` (left NaN when the refit fails)."""
    try:
        m = _rebuild_model(r.model, endog=y) if fit is None else None
        if test == "lrt":
            full = _refit(m, r, **ml)
            Xr = X.drop(columns=[term]) if isinstance(X, pd.DataFrame) else np.delete(r.model.exog, j, axis=1)
            red = _refit(_rebuild_model(m, exog=Xr), r, **ml)
            pv[k] = stats.chi2.sf(max(0.0, 2 * (full.llf - red.llf)), 1)
        else:
            fit = _refit(m, r) if fit is None else fit
            est = _beta(fit)[j]
            if test == "z":
                pv[k] = 2 * stats.norm.sf(abs(est / fit.bse_fe.iloc[j]))
            elif test == "satterthwaite":
                df = satterthwaite(fit, contrast)[0]
                pv[k] = 2 * stats.t.sf(abs(est / fit.bse_fe.iloc[j]), df)
            else:
                df, V = kenward_roger(fit, contrast)
                pv[k] = 2 * stats.t.sf(abs(est / np.sqrt(V[j, j])), df[0])
    except (np.linalg.LinAlgError, ValueError, RuntimeError):
        pass
