"""Randomized optimum suite (issue 13, "every fit reaches the optimum").

Run from the repository root:  python benchmarks/optimum_suite.py [--quick] [--csv PATH]
[--only SUBSTRING] [--repeat N]

For each simulated design (fixed seeds; nested, three-level, 3x3 covariances with correlations
near +-1, crossed with one small variance, badly scaled slopes; LMMs by REML and ML, GLMMs,
cumulative link mixed models) the default fit (``model.fit()``) is compared with the best of
several other ways of optimizing the same criterion:

* LMMs: ``fit(method=...)`` with COBYQA, Nelder-Mead and Powell; the default fit from a few
  starting thetas (``fit(start_params=theta)``); and COBYQA on ``-2 * model.loglike(params)``
  from the default's estimates (independent of the fit's own optimizer code).
* GLMMs and clmm (one built-in method): scipy's COBYQA, Nelder-Mead and Powell on
  ``-2 * model.loglike(params, nagq=...)`` from the default's estimates and from a start with
  the variance parameters inflated; the default fit from other ``start_params``.

Only the public API is used.  Every alternative is scored by the public ``model.loglike`` at
the parameters it returned (``params_object``), inside the variance bounds
(``model.re_design.lower``), so an alternative can only win with a real, admissible point.
The default is scored by what the user sees, ``-2 * res.llf``; ``llf_err`` reports how far
that is from ``-2 * model.loglike(res.params_object)``, for every fit of the design.

Deviance units: ``gap = default deviance - best deviance`` (positive: the default is worse),
REML criterion for REML fits.  A *silent wrong answer* is ``converged=True`` with
``gap > 1e-4``.  The exit code is 1 when any gap exceeds 1e-4 (or a default fit failed).

``MLMEXT_CODE`` selects the checkout whose ``mlmext`` is imported (as the other benchmarks).
"""
import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# MLMEXT_CODE: judge another checkout's mlmext with these designs (as compare_revisions.py)
sys.path.insert(0, os.environ.get("MLMEXT_CODE", ROOT))
sys.path.insert(0, HERE)          # _timing, also when this file is imported by the tests

from mlmext.formula import api as mf  # noqa: E402

from _timing import best_time  # noqa: E402

#: deviance units by which the default may miss the best point found
TOL = 1e-4


# =============================================================== data
def nested(r, sizes, n, sds, beta):
    """Rows in nested groups: columns a, b, c, ... (one per level, codes unique overall), x.

    ``sizes[k]`` levels of level k within each level above, ``n`` rows in each innermost
    level; level k's intercepts have sd ``sds[k]``.  Draws x, then the intercepts from the
    top down (the issue's reproducer draws in this order), and returns (frame, linear
    predictor); the response's own noise is drawn after.
    """
    tot = np.cumprod(sizes)
    nrow = int(tot[-1]) * n
    x = r.standard_normal(nrow)
    lp = beta[0] + beta[1] * x
    d = {"x": x}
    for k, (m, sd) in enumerate(zip(tot, sds)):
        code = np.repeat(np.arange(m), nrow // m)
        d["abcdefg"[k]] = code
        lp = lp + sd * r.standard_normal(m)[code]
    return pd.DataFrame(d), lp


def crossed(r, nu, nv, sds, beta, reps=None, nrow=None):
    """Two crossed factors u, v: every cell ``reps`` times, or ``nrow`` rows at random cells."""
    if reps is not None:
        u = np.repeat(np.arange(nu), nv * reps)
        v = np.tile(np.repeat(np.arange(nv), reps), nu)
    else:
        u, v = r.integers(0, nu, nrow), r.integers(0, nv, nrow)
    x = r.standard_normal(u.size)
    lp = beta[0] + beta[1] * x + sds[0] * r.standard_normal(nu)[u] + sds[1] * r.standard_normal(nv)[v]
    return pd.DataFrame({"x": x, "u": u, "v": v}), lp


def slopes(r, ng, n, sds, corr, beta, scale=1.0):
    """Correlated random intercept and slopes in ``x1, x2, ...`` by group g.

    ``sds``/``corr`` give the random effects' covariance on the scale of the simulated
    covariates; the frame's covariates are multiplied by ``scale`` (a badly scaled
    covariate: its theta is then ``1 / scale`` times larger).
    """
    q = len(sds)
    g = np.repeat(np.arange(ng), n)
    X = np.column_stack([np.ones(g.size)] + [r.standard_normal(g.size) for _ in range(q - 1)])
    cov = np.outer(sds, sds) * np.asarray(corr)
    b = r.multivariate_normal(np.zeros(q), cov, size=ng, method="eigh")
    lp = X @ np.asarray(beta, dtype=float) + np.sum(X * b[g], axis=1)
    d = {"g": g}
    for j in range(1, q):
        d[f"x{j}" if q > 2 else "x"] = X[:, j] * scale
    return pd.DataFrame(d), lp


def corr3(r12, r13, r23):
    """A 3x3 correlation matrix (checked positive definite)."""
    R = np.array([[1.0, r12, r13], [r12, 1.0, r23], [r13, r23, 1.0]])
    assert np.linalg.eigvalsh(R).min() > 0, R
    return R


def respond(r, frame, lp, family, sigma=None, cuts=None):
    """The frame with a response y drawn around the linear predictor ``lp``."""
    if family == "lmm":
        y = lp + sigma * r.standard_normal(lp.size)
    elif family == "binomial":
        y = r.binomial(1, 1.0 / (1.0 + np.exp(-lp)))
    elif family == "poisson":
        y = r.poisson(np.exp(lp))
    else:                                                  # ordinal: latent logistic, cut
        y = np.digitize(lp + r.logistic(size=lp.size), cuts)
    return frame.assign(y=y)


def simulate(structure, family, seed, sigma=None, cuts=None, **kw):
    """A zero-argument function simulating one data set (data are made when a design runs)."""
    def make():
        r = np.random.default_rng(seed)
        frame, lp = structure(r, **kw)
        return respond(r, frame, lp, family, sigma=sigma, cuts=cuts)
    return make


# ============================================================ designs
@dataclass
class Design:
    """One model on one simulated data set.

    Attributes
    ----------
    name : str
        Unique label (the table's row).
    family : {"lmm", "binomial", "poisson", "clmm"}
    formula : str
    make_data : callable
        ``make_data()`` returns the data frame (fixed seed).
    reml : bool
        REML or ML (LMMs only).
    nagq : int
        Quadrature nodes (GLMM / clmm; 1 is Laplace).
    quick : bool
        Part of ``--quick``.
    seed : int
        Seed of the random starting values.
    """

    name: str
    family: str
    formula: str
    make_data: Callable[[], pd.DataFrame] = field(repr=False)
    reml: bool = True
    nagq: int = 1
    quick: bool = False
    seed: int = 0

    @property
    def criterion(self):
        if self.family == "lmm":
            return "REML" if self.reml else "ML"
        return "Laplace" if self.nagq == 1 else f"AGQ{self.nagq}"

    def model(self, data=None):
        data = self.make_data() if data is None else data
        if self.family == "lmm":
            return mf.lmer(self.formula, data)
        if self.family == "clmm":
            return mf.clmm(self.formula, data)
        fam = sm.families.Binomial() if self.family == "binomial" else sm.families.Poisson()
        return mf.glmer(self.formula, data, family=fam)

    def fit_kwargs(self):
        """The criterion's arguments of ``model.fit``."""
        return {"reml": self.reml} if self.family == "lmm" else {"nagq": self.nagq}

    def loglike_kwargs(self):
        """The criterion's arguments of ``model.loglike``."""
        return {"reml": self.reml} if self.family == "lmm" else {"nagq": self.nagq}


def _lmm_designs():
    out = []

    def both(name, formula, make, quick=False, seed=0):
        # each LMM design by REML and by ML: the two criteria have different optima
        out.append(Design(f"{name} REML", "lmm", formula, make, True, quick=quick, seed=seed))
        out.append(Design(f"{name} ML", "lmm", formula, make, False, seed=seed + 1))

    # the reproducer: 30,420 rows, top sd 0.1, middle 1, residual 2.3
    both("nested2 repro(110) 130x18x13", "y ~ x + (1 | a/b)",
         simulate(nested, "lmm", 110, sigma=2.3, sizes=(130, 18), n=13, sds=(0.1, 1.0), beta=(5, 2.5)),
         quick=True, seed=1100)
    for seed, (A, B, n), sd_top in [(1, (100, 12, 10), 0.1), (2, (150, 20, 10), 0.1),
                                    (3, (120, 15, 8), 0.05), (4, (140, 10, 12), 0.2)]:
        both(f"nested2 s{seed} {A}x{B}x{n} top{sd_top}", "y ~ x + (1 | a/b)",
             simulate(nested, "lmm", seed, sigma=2.3, sizes=(A, B), n=n, sds=(sd_top, 1.0), beta=(5, 2.5)),
             seed=10 * seed)
    for seed, sds in [(11, (0.1, 0.2, 1.0)), (12, (0.05, 0.1, 0.8)), (13, (0.2, 0.05, 1.0))]:
        both(f"nested3 s{seed} sds{sds[:2]}", "y ~ x + (1 | a/b/c)",
             simulate(nested, "lmm", seed, sigma=1.5, sizes=(40, 6, 5), n=6, sds=sds, beta=(2, 1)),
             quick=seed == 11, seed=10 * seed)
    for seed, R in [(21, corr3(0.95, -0.9, -0.95)), (22, corr3(0.99, 0.99, 0.99)),
                    (23, corr3(-0.98, 0.97, -0.96))]:
        both(f"slopes3x3 s{seed} r12={R[0, 1]}", "y ~ x1 + x2 + (1 + x1 + x2 | g)",
             simulate(slopes, "lmm", seed, sigma=1.0, ng=80, n=25, sds=(1.0, 0.5, 0.3), corr=R,
                      beta=(1, 0.5, -0.5)),
             quick=seed == 21, seed=10 * seed)
    for seed, (nu, nv), sds, kw in [(31, (60, 40), (1.0, 0.05), {"reps": 2}),
                                    (32, (300, 50), (0.8, 0.1), {"nrow": 6000}),
                                    (33, (40, 30), (0.03, 1.0), {"reps": 3})]:
        both(f"crossed s{seed} {nu}x{nv} sds{sds}", "y ~ x + (1 | u) + (1 | v)",
             simulate(crossed, "lmm", seed, sigma=1.0, nu=nu, nv=nv, sds=sds, beta=(1, 0.5), **kw),
             quick=seed == 31, seed=10 * seed)
    for seed, scale, rho in [(41, 1e-4, 0.3), (42, 1e3, 0.3), (43, 1e-4, 0.95)]:
        both(f"badscale s{seed} x*{scale:g} rho{rho}", "y ~ x + (1 + x | g)",
             simulate(slopes, "lmm", seed, sigma=1.0, ng=60, n=20, sds=(1.0, 0.5),
                      corr=[[1, rho], [rho, 1]], beta=(1, 0.5), scale=scale),
             seed=10 * seed)
    return out


def _glmm_designs():
    bi, po = "binomial", "poisson"
    return [
        Design("glmm binomial nested2 top0.1", bi, "y ~ x + (1 | a/b)",
               simulate(nested, bi, 51, sizes=(60, 8), n=6, sds=(0.1, 0.8), beta=(-0.5, 0.8)),
               quick=True, seed=510),
        Design("glmm binomial nested3 top0.1", bi, "y ~ x + (1 | a/b/c)",
               simulate(nested, bi, 52, sizes=(30, 5, 4), n=6, sds=(0.1, 0.3, 1.0), beta=(0, 0.8)),
               seed=520),
        Design("glmm binomial crossed v0.05", bi, "y ~ x + (1 | u) + (1 | v)",
               simulate(crossed, bi, 53, nu=80, nv=30, sds=(1.0, 0.05), beta=(0.2, 0.6), reps=1),
               seed=530),
        Design("glmm binomial (1|a) sd0.1 AGQ5", bi, "y ~ x + (1 | a)",
               simulate(nested, bi, 54, sizes=(100,), n=15, sds=(0.1,), beta=(-0.3, 1.0)),
               nagq=5, seed=540),
        Design("glmm poisson nested2 top0.05", po, "y ~ x + (1 | a/b)",
               simulate(nested, po, 55, sizes=(50, 10), n=5, sds=(0.05, 0.5), beta=(0.5, 0.3)),
               seed=550),
        Design("glmm poisson crossed u0.03", po, "y ~ x + (1 | u) + (1 | v)",
               simulate(crossed, po, 56, nu=40, nv=40, sds=(0.03, 0.6), beta=(1.0, 0.3), reps=2),
               seed=560),
        Design("glmm poisson (1+x|g) rho0.97", po, "y ~ x + (1 + x | g)",
               simulate(slopes, po, 57, ng=80, n=20, sds=(0.4, 0.2), corr=[[1, 0.97], [0.97, 1]],
                        beta=(0.8, 0.3)),
               seed=570),
    ]


def _clmm_designs():
    cuts = (-1.5, -0.3, 0.6, 1.8)
    return [
        Design("clmm (1|a) sd0.1", "clmm", "y ~ x + (1 | a)",
               simulate(nested, "clmm", 61, cuts=cuts, sizes=(80,), n=15, sds=(0.1,), beta=(0, 0.9)),
               quick=True, seed=610),
        Design("clmm (1|a) sd0.1 AGQ5", "clmm", "y ~ x + (1 | a)",
               simulate(nested, "clmm", 62, cuts=cuts, sizes=(80,), n=15, sds=(0.1,), beta=(0, 0.9)),
               nagq=5, seed=620),
        Design("clmm nested2 top0.1", "clmm", "y ~ x + (1 | a/b)",
               simulate(nested, "clmm", 63, cuts=cuts, sizes=(50, 6), n=8, sds=(0.1, 0.8), beta=(0, 0.9)),
               seed=630),
        Design("clmm crossed v0.05", "clmm", "y ~ x + (1 | u) + (1 | v)",
               simulate(crossed, "clmm", 64, cuts=cuts, nu=60, nv=25, sds=(1.0, 0.05), beta=(0, 0.7),
                        reps=1),
               seed=640),
        Design("clmm (1+x|g) rho-0.95", "clmm", "y ~ x + (1 + x | g)",
               simulate(slopes, "clmm", 65, cuts=cuts, ng=60, n=20, sds=(0.8, 0.3),
                        corr=[[1, -0.95], [-0.95, 1]], beta=(0, 0.9)),
               seed=650),
    ]


def designs(quick=False):
    """All designs of the suite (``quick``: the ``--quick`` subset), in a fixed order."""
    out = _lmm_designs() + _glmm_designs() + _clmm_designs()
    return [d for d in out if d.quick] if quick else out


# ============================================================ scoring
METHODS = ("COBYQA", "Nelder-Mead", "Powell")


def public_deviance(model, design):
    """``params -> -2 * model.loglike(params)`` for the design's criterion.

    Points the model refuses (thresholds out of order, PIRLS failing, a singular factor)
    count as inf: an alternative cannot win there.
    """
    kw = design.loglike_kwargs()

    def f(p):
        try:
            v = -2.0 * model.loglike(np.asarray(p, dtype=float), **kw)
        except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError):
            return np.inf
        return float(v) if np.isfinite(v) else np.inf
    return f


def lower_bounds(model, res):
    """Lower bounds of the packed parameters ``(fe_params, theta, extra)`` of ``res``.

    Theta from ``model.re_design.lower`` (diagonals >= 0); the family's extra parameter
    (an LMM's sigma) must stay positive, so it gets a small positive bound.
    """
    po = res.params_object
    return np.concatenate([np.full(po.fe_params.size, -np.inf), model.re_design.lower,
                           np.full(po.extra.size, 1e-8)])


def theta_starts(model, theta, rng):
    """Starting thetas for the default fit: lme4's, the estimate shrunk and inflated, random.

    Diagonals are floored away from 0 (a start on the bound has no gradient to leave it).
    """
    lower = model.re_design.lower
    diag = np.isfinite(lower)
    rand = np.where(diag, np.exp(rng.normal(0.0, 1.0, theta.size)), rng.normal(0.0, 0.5, theta.size))
    return {"lme4 start": np.array(model.re_design.theta_start, dtype=float),
            "theta x0.3": np.where(diag, np.maximum(0.3 * theta, 0.05), 0.3 * theta),
            "theta x3": np.where(diag, np.maximum(3.0 * theta, 0.5), 3.0 * theta),
            "random": rand}


def _timed(fn):
    """(seconds, fn() or the exception it raised), warnings silenced."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001  (an alternative that fails just does not compete)
            out = e
    return time.perf_counter() - t0, out


def _fit_alternative(label, fn, dev):
    """Run an alternative fit; score it by the public deviance at its estimates."""
    t, res = _timed(fn)
    if isinstance(res, Exception):
        return {"label": label, "dev": np.nan, "reported": np.nan, "seconds": t,
                "error": f"{type(res).__name__}: {res}"[:120]}
    return {"label": label, "dev": dev(res.params_object.get_packed()), "reported": -2.0 * res.llf,
            "seconds": t, "error": "", "converged": bool(res.converged)}


def _scipy_alternative(label, method, dev, x0, lower):
    """scipy ``method`` on the public deviance from ``x0``, inside ``lower``."""
    dim = x0.size
    bounds = optimize.Bounds(lower, np.full(dim, np.inf))
    maxfev = min(200 * dim, 2000)
    opts = {"COBYQA": {"maxfev": maxfev, "final_tr_radius": 1e-8},
            "Nelder-Mead": {"maxfev": maxfev, "xatol": 1e-8, "fatol": 1e-10, "adaptive": dim > 4},
            "Powell": {"maxfev": maxfev, "xtol": 1e-8, "ftol": 1e-12}}[method]
    x0 = np.maximum(np.asarray(x0, dtype=float), lower)
    t, o = _timed(lambda: optimize.minimize(dev, x0, method=method, bounds=bounds, options=opts))
    if isinstance(o, Exception):
        return {"label": label, "dev": np.nan, "reported": np.nan, "seconds": t,
                "error": f"{type(o).__name__}: {o}"[:120]}
    # re-scored at the returned point, clipped to the bounds (never trust the optimizer's fun)
    return {"label": label, "dev": dev(np.maximum(o.x, lower)), "reported": np.nan, "seconds": t,
            "error": "", "converged": bool(o.success)}


def alternatives(design, model, base, rng):
    """The other optimizations of the design's criterion (see the module docstring)."""
    dev = public_deviance(model, design)
    fk = design.fit_kwargs()
    lower = lower_bounds(model, base)
    p0 = base.params_object.get_packed()
    fe = base.params_object.fe_params
    nfe, nth = fe.size, base.theta.size
    starts = theta_starts(model, base.theta, rng)
    out = []
    if design.family == "lmm":
        for m in METHODS:
            out.append(_fit_alternative(f"fit {m}", lambda m=m: model.fit(method=m, **fk), dev))
    else:
        inflated = p0.copy()
        inflated[nfe:nfe + nth] = starts["theta x3"]
        for m in METHODS:
            for where, x0 in (("est", p0), ("theta x3", inflated)):
                out.append(_scipy_alternative(f"{m} from {where}", m, dev, x0, lower))
    for label, th in starts.items():
        # the LMM fit takes theta; GLMM and clmm the full vector (fixed part, theta)
        sp = th if design.family == "lmm" else np.concatenate([fe, th])
        out.append(_fit_alternative(f"fit from {label}",
                                    lambda sp=sp: model.fit(start_params=sp, **fk), dev))
    if design.family == "lmm":
        # the LMM's loglike, minimized outside the fit's code: (beta, theta, sigma)
        out.append(_scipy_alternative("COBYQA on loglike from est", "COBYQA", dev, p0, lower))
    return out


def _warning_kinds(caught):
    """Short names of the warnings the default fit gave: conv, sing, hess, or the class."""
    kinds = set()
    for w in caught:
        msg = str(w.message).lower()
        if "did not converge" in msg or "convergence" in msg:
            kinds.add("conv")
        elif "singular" in msg:
            kinds.add("sing")
        elif "hessian" in msg:
            kinds.add("hess")
        else:
            kinds.add(w.category.__name__)
    return ",".join(sorted(kinds)) or "-"


def run_design(design, repeat=1):
    """Fit one design by default and by the alternatives; the comparison as a dict.

    Keys: design, family, crit, nobs, dev_default (``-2 llf``), best (the lowest public
    deviance of an alternative), gap, converged, warned (warning kinds of the default fit),
    t_default (best of ``repeat`` fits of a fresh model), t_others (all alternatives),
    best_by, near_best ("k/N" alternatives within TOL of best), spread (worst alternative
    minus best), silent_restarts (default fits from other starts that claim convergence but
    end more than TOL above best), llf_err (largest ``|-2 llf - (-2 loglike(params_object))|``
    of any fit), error, alternatives (the list of alternative records).
    """
    data = design.make_data()
    row = {"design": design.name, "family": design.family, "crit": design.criterion,
           "nobs": len(data), "error": ""}
    t_def, caught, base, model = np.inf, [], None, None
    for _ in range(repeat):
        model = design.model(data)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t, base = best_time(lambda: model.fit(**design.fit_kwargs()), 1)
        t_def, caught = min(t_def, t), caught + list(w)
    dev = public_deviance(model, design)
    dev_default = -2.0 * base.llf
    alts = alternatives(design, model, base, np.random.default_rng(design.seed))
    devs = np.array([a["dev"] for a in alts], dtype=float)
    ok = np.isfinite(devs)
    best = float(devs[ok].min()) if ok.any() else np.nan
    # the fit's reported llf against loglike at its own estimates, for every fit made
    errs = [abs(dev_default - dev(base.params_object.get_packed()))]
    errs += [abs(a["reported"] - a["dev"]) for a in alts if np.isfinite(a["reported"]) and np.isfinite(a["dev"])]
    row.update(dev_default=dev_default, best=best, gap=dev_default - best,
               converged=bool(base.converged), warned=_warning_kinds(caught), t_default=t_def,
               t_others=float(sum(a["seconds"] for a in alts)),
               best_by=alts[int(np.nanargmin(devs))]["label"] if ok.any() else "",
               near_best=f"{int(np.sum(devs[ok] <= best + TOL))}/{len(alts)}",
               spread=float(devs[ok].max() - best) if ok.any() else np.nan,
               silent_restarts=sum(a["label"].startswith("fit from") and a.get("converged", False)
                                   and not a["dev"] <= best + TOL for a in alts),
               llf_err=float(max(errs)), alternatives=alts)
    return row


# ============================================================ report
def _flat(rows):
    """The rows as a frame: each alternative's gap to the best in a column ``alt: label``,
    whether it claimed convergence in ``conv: label``."""
    out = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k != "alternatives"}
        for a in r.get("alternatives", []):
            flat[f"alt: {a['label']}"] = a["dev"] - r["best"]
            flat[f"conv: {a['label']}"] = a.get("converged")
        out.append(flat)
    return pd.DataFrame(out)


def summarize(df):
    """Summary lines: worst gap per family, failures, silent wrong answers, total times."""
    bad = df["gap"].isna() | (df["gap"] > TOL)
    silent = bad & df["converged"].fillna(False).astype(bool)
    lines = [f"designs: {len(df)}; gap > {TOL:g}: {int(bad.sum())}; converged=True but gap > "
             f"{TOL:g} (silent wrong answers): {int(silent.sum())}",
             f"worst gap: {df['gap'].max():.6g} ({df.loc[df['gap'].idxmax(), 'design'] if df['gap'].notna().any() else '-'})",
             f"total default fit time: {df['t_default'].sum():.2f} s; alternatives: {df['t_others'].sum():.1f} s",
             f"largest |-2 llf - (-2 loglike(params))| of any fit: {df['llf_err'].max():.3g}",
             f"default fits from other starts ending > {TOL:g} above best while converged=True: "
             f"{int(df['silent_restarts'].sum())} (in {int((df['silent_restarts'] > 0).sum())} designs)"]
    fam = df.groupby("family", sort=False).agg(designs=("gap", "size"), worst_gap=("gap", "max"),
                                               n_bad=("gap", lambda g: int((g > TOL).sum())),
                                               t_default=("t_default", "sum"))
    fam["silent"] = silent.groupby(df["family"], sort=False).sum().astype(int)
    return lines, fam


def time_defaults(todo, repeat, csv):
    """Best-of-``repeat`` time of each design's default fit of a fresh model (the model's
    construction outside the timing, its cached cross-products inside, as in run_design)."""
    rows = []
    for d in todo:
        data = d.make_data()
        t = np.inf
        for _ in range(repeat):
            model = d.model(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = min(t, best_time(lambda: model.fit(**d.fit_kwargs()), 1)[0])
        rows.append({"case": d.name, "seconds": t})
        print(f"{d.name}: {t:.4f} s", flush=True)
    out = pd.DataFrame(rows)
    if csv:
        out.to_csv(csv, index=False)
    print(f"total: {out['seconds'].sum():.3f} s")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset of the designs")
    ap.add_argument("--csv", help="write every design's row (and each alternative's gap) here")
    ap.add_argument("--only", help="run only designs whose name contains this")
    ap.add_argument("--repeat", type=int, default=1, help="default fits timed (best of)")
    ap.add_argument("--timing-only", action="store_true",
                    help="only time the default fits; --csv then gets (case, seconds), the format "
                         "compare_revisions.py reads (--scripts optimum_suite.py --timing-only)")
    args = ap.parse_args(argv)
    todo = [d for d in designs(args.quick) if not args.only or args.only in d.name]
    if args.timing_only:
        return time_defaults(todo, args.repeat, args.csv)
    t0 = time.perf_counter()
    rows = []
    cols = ["design", "crit", "nobs", "gap", "converged", "warned", "t_default", "t_others",
            "near_best", "spread", "silent_restarts", "best_by", "llf_err"]
    for d in todo:
        try:
            row = run_design(d, repeat=args.repeat)
        except Exception as e:  # noqa: BLE001  (the default fit itself failed: a failure row)
            row = {"design": d.name, "family": d.family, "crit": d.criterion, "gap": np.nan,
                   "converged": False, "error": f"{type(e).__name__}: {e}"[:200]}
        rows.append(row)
        print(" | ".join(f"{row.get(c, '')}" if not isinstance(row.get(c), float)
                         else f"{row[c]:.3g}" for c in cols), flush=True)
    df = _flat(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print()
    with pd.option_context("display.width", 250, "display.max_columns", 30,
                           "display.max_colwidth", 40, "display.float_format", "{:.3g}".format):
        print(df.reindex(columns=cols).set_index("design"))
        lines, fam = summarize(df)
        print()
        print(fam)
    print()
    print("\n".join(lines))
    errors = df[df["error"].fillna("") != ""]
    for _, r in errors.iterrows():
        print(f"default fit failed: {r['design']}: {r['error']}")
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return int(bool((df["gap"].isna() | (df["gap"] > TOL)).any()))


if __name__ == "__main__":
    sys.exit(main())
