"""One package's fits of one bench_scale.py case, in a process of its own (its peak RSS is the fit's).

Run by bench_scale.py as ``PYTHON _scale_child.py SPEC.json``; PYTHON is this venv's python for
mlmext and statsmodels, the peers venv's for glmm and mixedlm.  This file imports only numpy,
pandas and the one package it times (never mlmext in a peer's process): the peers venv needs
nothing of the project.  The last line printed is a JSON record of the result.

SPEC keys: package (mlmext | glmm | mixedlm | statsmodels), mode (fit | build | refit),
data (an .npz written by bench_scale.py), formula, family (gaussian | binomial), reml,
rounds (best of, in this process), refits (refit mode: how many new responses), batched (refit
mode, mlmext: all responses in one ``refit_many`` call), bootstrap (refit mode, mlmext: that
many refits of ``res.bootstrap(nsim=...)``, lme4's ``bootMer``, per refit), glmm_defaults,
warmup (fit mode: rows of an untimed first fit, so lazy imports and first-call setup inside a
package are not timed; 0: none), collect (fit mode, default true: ``gc.collect()`` before each
round; false: rounds back to back, the interpreter's own collections only).
"""
import gc
import json
import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd

import _timing  # noqa: F401  (glibc's allocator in its adapted state, as for the other benchmarks)


def rss_peak_mb():
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_frame(path):
    """The DataFrame bench_scale.py stored: numeric columns as they were, categoricals as codes
    (``NAME.__codes``) with their categories (``NAME.__cats``)."""
    z = np.load(path, allow_pickle=False)
    cols = {}
    for key in z.files:
        if key.endswith(".__cats"):
            continue
        if key.endswith(".__codes"):
            name = key[: -len(".__codes")]
            cols[name] = pd.Categorical.from_codes(z[key], categories=z[name + ".__cats"].astype(str))
        else:
            cols[key] = z[key]
    return pd.DataFrame(cols)


def fe_names_norm(names, df=None):
    """One spelling for every package: ``Intercept``, ``GenderM`` (mlmext/patsy ``Gender[T.M]``,
    glmm ``GenderM``, mixedlm ``Gender.1`` = the first non-reference level of Gender)."""
    out = []
    for n in map(str, names):
        n = n.replace("(Intercept)", "Intercept").replace("[T.", "").replace("]", "")
        col, _, k = n.rpartition(".")
        if df is not None and col in df.columns and k.isdigit() and \
                isinstance(df[col].dtype, pd.CategoricalDtype):
            n = col + str(df[col].cat.categories[int(k)])
        out.append(n)
    return out


# ----------------------------------------------------------------------------------- packages
# Each ``fit_*`` runs formula to results: parse the formula against the DataFrame, build the
# model, fit it, and read the fixed effects, their standard errors and the log-likelihood
# (REML criterion on a REML fit), so that a package computing SEs lazily pays for them too.

def mlmext_api():
    import statsmodels.api as sm
    from mlmext.formula import api as mf

    def build(spec, df):
        if spec["family"] == "gaussian":
            return mf.lmer(spec["formula"], df)
        return mf.glmer(spec["formula"], df, family=sm.families.Binomial())

    def fit_model(spec, m):
        res = m.fit(reml=spec["reml"]) if spec["family"] == "gaussian" else m.fit()
        out = (list(res.fe_params.index), np.asarray(res.fe_params, float),
               np.asarray(res.bse_fe, float), float(res.llf))
        return res, out

    return build, fit_model


def glmm_kwargs(spec):
    """lme4's work by default: no Satterthwaite df (lmer does not compute them) and, on an LMM,
    the RX (Schur complement) covariance of the fixed effects as lme4's vcov; a GLMM keeps
    glmm's Hessian SEs (lme4's glmer uses its Hessian too).  ``--glmm-defaults``: glmm.fit's
    own defaults (Satterthwaite df and Hessian SEs always)."""
    if spec["family"] == "gaussian":
        kw = {"reml": spec["reml"]}
        if not spec.get("glmm_defaults"):
            kw.update(satterthwaite=False, wald_se="rx")
        return kw
    return {}


def glmm_fit(spec, df, warm_start=None):
    import glmm
    kw = glmm_kwargs(spec)
    if warm_start is not None:
        kw["warm_start"] = warm_start
    f = glmm.fit(df, spec["formula"], spec["family"], **kw)
    return f, (list(f.names), np.asarray(f.beta, float), np.asarray(f.se, float), float(f.loglik))


def glmm_warm_start(f, family):
    """glmm's start for a refit (its README: "each refit can start from the previous answer"):
    the fixed effects and lme4's theta, the lower Cholesky factor of each grouping's
    covariance / sigma^2, column-major vech, groupings in ``varcorr`` order."""
    scale = float(f.dispersion) if family == "gaussian" else 1.0
    theta = []
    for vech in f.varcorr:
        vech = np.asarray(vech, float)
        q = int(round((np.sqrt(8 * vech.size + 1) - 1) / 2))
        S = np.zeros((q, q))
        S[np.tril_indices(q)[::-1]] = vech       # column-major lower triangle
        S = np.tril(S) + np.tril(S, -1).T
        try:
            L = np.linalg.cholesky(S / scale)
        except np.linalg.LinAlgError:
            L = np.diag(np.sqrt(np.clip(np.diag(S) / scale, 0, None)))
        theta.extend(L.T[np.triu_indices(q)])    # column-major lower = row-major upper of L^T
    return {"beta": list(map(float, f.beta)), "theta": theta}


def mixedlm_fit(spec, df):
    import mixedlm as mlm
    if spec["family"] == "gaussian":
        r = mlm.lmer(spec["formula"], df, REML=spec["reml"])
    else:
        r = mlm.glmer(spec["formula"], df, family=mlm.families.Binomial())
    fe = r.fixef()
    return r, (list(fe), np.array(list(fe.values()), float), np.sqrt(np.diag(np.asarray(r.vcov()))),
               float(r.logLik()))


def statsmodels_fit(spec, df):
    import statsmodels.formula.api as smf
    sm_spec = spec["statsmodels"]
    m = smf.mixedlm(sm_spec["formula"], df, groups=sm_spec["groups"],
                    re_formula=sm_spec.get("re_formula"))
    r = m.fit(reml=spec["reml"])
    return r, (list(r.fe_params.index), np.asarray(r.fe_params, float), np.asarray(r.bse_fe, float),
               float(r.llf))


# -------------------------------------------------------------------------------------- modes

def run_fit(spec, df):
    """Best of ``rounds`` formula-to-results times (and, for mlmext, of the build step alone)."""
    pkg = spec["package"]
    best, best_build, out = np.inf, np.nan, None
    if pkg == "mlmext":
        build, fit_model = mlmext_api()
        best_build = np.inf
    if spec.get("warmup"):
        warm = df.iloc[: spec["warmup"]].copy()
        for c in warm.columns:
            if isinstance(warm[c].dtype, pd.CategoricalDtype):
                warm[c] = warm[c].cat.remove_unused_categories()
        try:
            run_fit(dict(spec, rounds=1, warmup=0), warm)
        except Exception:  # noqa: BLE001 - a warm-up that fails is only a warm-up
            pass
    for _ in range(spec["rounds"]):
        m = res = None               # the last round's model and results are freed first:
        if spec.get("collect", True):
            gc.collect()             # the peak RSS is one fit's, not two
        c0 = time.process_time()
        t0 = time.perf_counter()
        if pkg == "mlmext":
            m = build(spec, df)
            t1 = time.perf_counter()
            res, out = fit_model(spec, m)
            best_build = min(best_build, t1 - t0)
        elif pkg == "glmm":
            res, out = glmm_fit(spec, df)
        elif pkg == "mixedlm":
            res, out = mixedlm_fit(spec, df)
        elif pkg == "statsmodels":
            res, out = statsmodels_fit(spec, df)
        t = time.perf_counter() - t0
        if t < best:
            best, cpu = t, time.process_time() - c0
    names, fe, se, llf = out
    return {"seconds": best, "cpu_seconds": cpu, "build_seconds": best_build, "fe_names": fe_names_norm(names, df),
            "fe": fe.tolist(), "se": se.tolist(), "llf": llf}


def run_build(spec, df):
    """mlmext's model construction alone (formula parsing, model frame, design): best of rounds."""
    if spec["package"] != "mlmext":
        return {"seconds": None, "note": "n/a"}
    build, _ = mlmext_api()
    best = np.inf
    for _ in range(spec["rounds"]):
        t0 = time.perf_counter()
        build(spec, df)
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best}


def run_refit(spec, df):
    """Per-refit time of refitting one fitted design to ``refits`` new responses (columns
    ``y_new_0``...), against a fresh formula-to-results fit of the same new responses.
    Both are the best over ``rounds`` passes of the mean per fit."""
    pkg = spec["package"]
    resp = spec["formula"].split("~")[0].strip()
    ys = [np.asarray(df[f"y_new_{k}"], float) for k in range(spec["refits"])]
    frames = [df.assign(**{resp: y}) for y in ys]

    def fresh(d):
        if pkg == "mlmext":
            build, fit_model = mlmext_api()
            return fit_model(spec, build(spec, d))
        if pkg == "glmm":
            return glmm_fit(spec, d)
        if pkg == "mixedlm":
            return mixedlm_fit(spec, d)
        return statsmodels_fit(spec, d)

    base, _ = fresh(df)
    batched = None
    nboot = spec.get("bootstrap")
    if pkg == "mlmext":
        if not hasattr(base, "refit"):
            return {"seconds": None, "note": "n/a (no refit)"}
        if nboot:               # simulate nboot responses, refit, the statistic of each refit
            if not hasattr(base, "bootstrap"):
                return {"seconds": None, "note": "n/a (no bootstrap)"}
            batched = lambda: base.bootstrap(nsim=nboot, seed=1)        # noqa: E731
        elif spec.get("batched"):
            if not hasattr(base, "refit_many"):
                return {"seconds": None, "note": "n/a (no refit_many)"}
            Y = np.column_stack(ys)
            batched = lambda: [float(r.llf) for r in base.refit_many(Y)]   # noqa: E731

        def refit(k):
            r = base.refit(ys[k])
            return float(r.llf)
    elif pkg == "mixedlm":
        def refit(k):
            r = base.refit(ys[k])
            return float(r.logLik())
    elif pkg == "glmm":
        ws = glmm_warm_start(base, spec["family"])

        def refit(k):
            return glmm_fit(spec, frames[k], warm_start=ws)[1][3]
    else:
        return {"seconds": None, "note": "n/a (no refit)"}

    t_fresh = t_refit = np.inf
    llf_fresh, llf_refit = [], []
    for _ in range(spec["rounds"]):
        gc.collect()
        t0 = time.perf_counter()
        llf_fresh = [fresh(d)[1][3] for d in frames]
        t_fresh = min(t_fresh, (time.perf_counter() - t0) / len(frames))
        gc.collect()
        t0 = time.perf_counter()
        llf_refit = batched() if batched is not None else [refit(k) for k in range(len(frames))]
        t_refit = min(t_refit, (time.perf_counter() - t0) / (nboot or len(frames)))
    if nboot:                   # (other responses than the fresh fits': no llf to compare)
        return {"seconds": t_refit, "fresh_seconds": t_fresh, "note": f"bootstrap({nboot})"}
    return {"seconds": t_refit, "fresh_seconds": t_fresh,
            "max_abs_dllf_refit_vs_fresh": float(np.max(np.abs(np.subtract(llf_refit, llf_fresh)))),
            "note": "warm_start" if pkg == "glmm" else ""}


def main():
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    warnings.simplefilter("ignore")
    df = load_frame(spec["data"])
    gc.collect()
    rss_data = rss_peak_mb()
    t_import = time.perf_counter()
    if spec["package"] == "mlmext":
        import mlmext  # noqa: F401  (imports outside the timed region, for every package)
        import mlmext.formula.api  # noqa: F401
        version, where = "", mlmext.__file__
    else:
        from importlib.metadata import version as dist_version
        mod = __import__(spec["package"])
        version, where = dist_version(spec["package"]), getattr(mod, "__file__", "")
    t_import = time.perf_counter() - t_import
    try:
        out = {"fit": run_fit, "build": run_build, "refit": run_refit}[spec["mode"]](spec, df)
    except Exception as exc:  # noqa: BLE001 - a failing package is a table cell, not a crash
        out = {"seconds": None, "note": f"error: {type(exc).__name__}: {str(exc)[:200]}"}
    out.update(package=spec["package"], version=version, file=where, import_seconds=t_import,
               rss_data_mb=rss_data, rss_peak_mb=rss_peak_mb(), python=sys.executable)
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
