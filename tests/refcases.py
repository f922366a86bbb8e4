"""Loading the stored R reference fits (tests/reference) and their data (tests/data)."""
import json
import os
import re

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
REF = os.path.join(HERE, "reference")


def read_data(name):
    """Read tests/data/NAME (or NAME.gz) with R's factor levels from NAME.levels.json."""
    path = os.path.join(DATA, name)
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path = path + ".gz"
    df = pd.read_csv(path)
    base = os.path.join(DATA, name[:-4] if name.endswith(".csv") else name)
    lv = base + ".levels.json"
    if os.path.exists(lv):
        with open(lv) as fh:
            levels_spec = json.load(fh)
        for col, spec in levels_spec.items():
            levels = [str(v) for v in spec["levels"]]
            ordered = bool(spec.get("ordered", [False])[0])
            df[col] = pd.Categorical(df[col].astype(str), categories=levels, ordered=ordered)
    return df


def load_ref(subdir, name):
    with open(os.path.join(REF, subdir, name + ".json")) as fh:
        return json.load(fh)


def ref_names(subdir):
    return sorted(f[:-5] for f in os.listdir(os.path.join(REF, subdir)) if f.endswith(".json"))


def norm(s):
    """One spelling for R and Python coefficient names: 'MachineB' == 'Machine[T.B]'."""
    s = str(s).replace(" ", "").replace("(Intercept)", "Intercept").replace("**", "^")
    s = re.sub(r"\[(?:T\.)?([^\]]+)\]", r"\1", s)
    return s


def by_name(series, ref):
    """Values of ``series`` in the order of the R names in ``ref`` (a dict)."""
    mine = {norm(k): float(v) for k, v in series.items()}
    return np.array([mine[norm(k)] for k in ref]), np.array([float(v) for v in ref.values()])


def group_key(grp):
    """lme4's g, g.1 labels and a:b orders compared alike."""
    return ":".join(sorted(re.sub(r"[()]", "", grp).split(":")))


def case_params(names, slow=()):
    """pytest parameters for the reference cases ``names``, the ones in ``slow`` marked slow."""
    import pytest
    return [pytest.param(c, marks=pytest.mark.slow) if c in slow else c for c in names]


def ref_fits(subdir, fit_case):
    """A module-scoped fixture ``fits``: ``fits(name)`` is ``(reference, fit_case(reference))``
    for the stored case NAME of tests/reference/SUBDIR, each fitted once per test module."""
    import pytest

    @pytest.fixture(scope="module")
    def fits():
        cache = {}

        def get(name):
            if name not in cache:
                ref = load_ref(subdir, name)
                cache[name] = (ref, fit_case(ref))
            return cache[name]
        return get
    return fits


def check_ranef(re, ref, scale=1.0):
    """``ranef(condvar=True)`` against R's ``ref["ranef"]`` and ``ref["condsd"]`` (lme4's layout):
    the same groups and levels, modes within 5e-3 of max(scale, largest |R mode|), conditional sds
    within 0.5 % (+ 1e-6 scale).  ``scale``: the residual sd for an LMM, 1 for a GLMM."""
    assert {group_key(k) for k in re} == {group_key(k) for k in ref["ranef"]}
    lookup = {group_key(k): v for k, v in re.items()}
    for g, rows in ref["ranef"].items():
        df = lookup[group_key(g)]
        assert [str(r[".level"]) for r in rows] == list(df.index)
        cols = [k for k in rows[0] if k not in (".level", "_row")]
        mycols = {norm(c): c for c in df.columns}
        for j, c in enumerate(cols):
            mine = df[mycols[norm(c)]].to_numpy()
            theirs = np.array([r[c] for r in rows])
            np.testing.assert_allclose(mine, theirs, atol=5e-3 * max(scale, np.abs(theirs).max()))
            sd = np.asarray(ref["condsd"][g][j])
            mysd = df.attrs["condsd"][mycols[norm(c)]].to_numpy()
            np.testing.assert_allclose(mysd, sd, rtol=5e-3, atol=1e-6 * scale)


def _no_suffix(grp):
    """lme4's label of a repeated grouping factor without its counter: g.1 -> g (not grp.id)."""
    return re.sub(r"\.\d+$", "", grp)


def check_varcorr(vc, ref, strip_ref_suffix=False):
    """``varcorr()`` against R's ``as.data.frame(VarCorr(fit))`` rows in ``ref["varcorr"]``:
    SDs within 0.2 % (+ 1e-6), correlations within 0.01.  lme4 names repeated grouping factors
    ``g.1``, ``g.2`` (``(x || g)``); ``strip_ref_suffix`` drops that suffix from R's names."""
    mine = {}
    for _, r in vc.iterrows():
        mine.setdefault((group_key(_no_suffix(r["grp"])), norm(r["var1"] or ""), norm(r["var2"] or "")),
                        []).append(r["sdcor"])
    for r in ref["varcorr"]:
        grp = _no_suffix(r["grp"]) if strip_ref_suffix else r["grp"]
        key = (group_key(grp), norm(r["var1"]), norm(r["var2"]))
        assert key in mine, (key, list(mine))
        got = min(mine[key], key=lambda v: abs(v - r["sdcor"]))
        if r["var2"]:
            assert abs(got - r["sdcor"]) < 0.01
        else:
            assert abs(got - r["sdcor"]) <= 2e-3 * max(abs(r["sdcor"]), 1e-3) + 1e-6


# ------------------------------------------------------------------ results of separate fits
# A fit stops where its optimizer's convergence criterion is met, and rounding (the BLAS kernel,
# the number of threads) can move that point anywhere the criterion allows: fitted results are
# compared to what the criterion guarantees, not to one CPU's digits.  If a fit's deviance
# D = -2 llf is within eps of its minimum, each estimate is within sqrt(eps) standard errors of
# the optimum (Cauchy-Schwarz in the metric of the inverse covariance, Hessian(D) / 2): two such
# fits differ by at most 2 sqrt(eps) SE and their log-likelihoods by eps / 2.

#: GLMM fit: Newton decrement of D below tol = 1e-8, so D is within tol / 2 of its minimum; x10
#: because the decrement uses a Hessian refreshed only while it is above 1e-4
GLMM_EPS = 5e-8
#: clmm fit: decrement of -llf below 1e-12 (Newton, one scalar term) or a predicted decrease below
#: 1e-10 (bounded BFGS, else): 2e-10 in D, x10 for the quasi-Newton model's curvature
CLMM_EPS = 2e-9


def lmm_eps(res):
    """Deviance bound of an LMM fit: L-BFGS-B stops when a step lowers D by less than ftol =
    1e-10 relative (or the projected gradient is below 1e-5, which leaves less here); for a
    quasi-Newton method converging superlinearly that last decrease bounds what is left.  A
    theta set to its bound at the end (``optim.snapped``) may cost up to 1e-5 more."""
    dev = -2.0 * float(res.llf)
    snapped = len(getattr(res.optim, "snapped", []) or [])
    return 1e-10 * max(1.0, abs(dev)) + (1e-5 if snapped else 0.0)


def assert_fe_close(a, b, eps, shift=0.0):
    """Fixed effects of two fits (``a - shift`` against ``b``) within 2 sqrt(eps) of b's standard
    errors, for fits whose deviances are each within ``eps`` of the same minimum."""
    fa = np.asarray(a.fe_params, dtype=float) - shift
    fb, se = np.asarray(b.fe_params, dtype=float), np.asarray(b.bse_fe, dtype=float)
    assert np.all(np.abs(fa - fb) <= 2.0 * np.sqrt(eps) * se), (fa, fb, se, eps)


def no_warning(category, f):
    """``f()`` with warnings of ``category`` turned into errors (a fit that must not warn)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", category)
        return f()


def assert_zi_matches_glmmtmb(r, ref):
    """A zero-inflated / hurdle fit against glmmTMB's stored one: conditional and zi
    coefficients within 0.002 SE, their SEs and the SDs within 0.2 %, correlations within
    0.002, llf not below glmmTMB's by 1e-3, the parameter count and AIC/BIC."""
    assert r.converged
    for mine, se_mine, key in ((r.fe_params, r.bse_fe, ""), (r.zi_params, r.bse_zi, "_zi")):
        est, rest = by_name(mine, ref["fixef" + key])
        # vcov(fit)$zi names its rows "zi~(Intercept)"
        se, rse = by_name(se_mine, {k.replace("zi~", ""): v for k, v in ref["se" + key].items()})
        np.testing.assert_array_less(np.abs(est - rest) / rse, 0.002)
        np.testing.assert_allclose(se, rse, rtol=2e-3)
    for grp, vc in ref["varcorr"].items():
        cov = r.cov_re()[grp].to_numpy()
        sd = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(sd, vc["sd"], rtol=2e-3)
        if vc.get("cor") is not None:
            assert abs(cov[1, 0] / (sd[0] * sd[1]) - vc["cor"]) < 2e-3
    assert r.llf > ref["loglik"] - 1e-3
    assert r.k_params == ref["df"]
    np.testing.assert_allclose([r.aic, r.bic], [ref["aic"], ref["bic"]], atol=2e-3)


def level_integrals(codes, sd, loglik_level):
    """``sum_g log int exp(loglik_level(rows of g, b)) N(b; 0, sd^2) db`` by ``quad``, each
    integral centred at its mode: the direct value AGQ and Laplace approximate (one scalar
    random effect per level)."""
    from scipy import integrate, optimize, stats
    total = 0.0
    for g in np.unique(codes):
        i = codes == g

        def f(b):
            return float(loglik_level(i, b)) + stats.norm.logpdf(b, 0.0, sd)
        bh = optimize.minimize_scalar(lambda b: -f(b), bracket=(-sd, sd), tol=1e-10).x
        top = f(bh)
        val, _ = integrate.quad(lambda b: np.exp(f(b) - top), bh - 12 * sd, bh + 12 * sd,
                                epsabs=0, epsrel=1e-12, limit=400, points=[bh])
        total += top + np.log(val)
    return total


def assert_score_matches_differences(model, p, atol=2e-6):
    """``model.score(p)`` against central differences of ``model.loglike`` (step 1e-6)."""
    g = model.score(p)
    e = 1e-6
    fd = [(model.loglike(p + e * v) - model.loglike(p - e * v)) / (2 * e) for v in np.eye(p.size)]
    np.testing.assert_allclose(g, fd, atol=atol)
