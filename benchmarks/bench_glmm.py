"""GLMM timings: mlmext vs statsmodels' BinomialBayesMixedGLM (and R's lme4 / glmmTMB times).

Run from the repository root:  python benchmarks/bench_glmm.py [--repeat N] [--quick]

* The VerbAgg crossed binomial model ``r2 ~ Anger + Gender + btype + situ + (1 | id) +
  (1 | item)`` (7584 rows, 316 x 24 crossed levels; lme4's data set, shipped in tests/data) and
  a simulated data set of the same shape.  statsmodels has no maximum-likelihood GLMM; its
  ``BinomialBayesMixedGLM`` (variational Bayes ``fit_vb`` and posterior mode ``fit_map``) fits the
  same model with crossed variance components and is timed for comparison.
* Negative binomial against its Poisson counterpart (same formula and data): grouseticks and a
  simulated 6000-row count data set.
* zero-inflated and hurdle Poisson / NB2 (glmmTMB's ``ziformula``) on their reference models;
* NB1 and beta (glmmTMB's ``nbinom1`` and ``beta_family()``) on their reference models, beside
  glmmTMB's stored fit times.

"fit" times are ``model.fit()`` on a freshly built model (the best of ``--repeat`` runs, so
the per-model setup of the factorization is included); "build" is the formula step.  The
machine is shared and noisy: read the ratios.  R times (``R_s``: lme4, or glmmTMB where the
row says so) are R's own (default settings) fit times stored with the reference fits
(``r_seconds``).
"""
import argparse
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# MLMEXT_CODE: time another checkout's mlmext with these cases (compare_revisions.py)
sys.path.insert(0, os.environ.get("MLMEXT_CODE", ROOT))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import statsmodels.api as sm  # noqa: E402

from mlmext.formula import api as mf  # noqa: E402
from refcases import load_ref, read_data  # noqa: E402

from _timing import best_time  # noqa: E402

VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"


def time_fit(build, repeat, **fit_kw):
    """(build seconds, fit seconds, results): fit timed on a fresh model each time."""
    tb, _ = best_time(build, repeat)
    best, res = np.inf, None
    for _ in range(repeat):
        mod = build()
        t0 = time.perf_counter()
        res = mod.fit(**fit_kw)
        best = min(best, time.perf_counter() - t0)
    return tb, best, res


def simulated_verbagg(seed=1):
    """Binary responses with the VerbAgg design: 316 subjects x 24 items, fully crossed."""
    rng = np.random.default_rng(seed)
    ns, ni = 316, 24
    d = pd.DataFrame({"id": np.repeat(np.arange(ns), ni), "item": np.tile(np.arange(ni), ns)})
    anger = rng.integers(11, 40, ns)
    gender = rng.choice(["F", "M"], ns, p=[0.77, 0.23])
    btype = np.array(["curse", "scold", "shout"])[np.arange(ni) % 3]
    situ = np.array(["other", "self"])[(np.arange(ni) // 12) % 2]
    d["Anger"] = anger[d.id]
    d["Gender"] = pd.Categorical(gender[d.id], categories=["F", "M"])
    d["btype"] = pd.Categorical(btype[d.item], categories=["curse", "scold", "shout"])
    d["situ"] = pd.Categorical(situ[d.item], categories=["other", "self"])
    eta = (0.2 + 0.057 * d.Anger + 0.32 * (d.Gender == "M") - 1.06 * (d.btype == "scold")
           - 2.1 * (d.btype == "shout") - 1.06 * (d.situ == "self")
           + rng.normal(0, 1.34, ns)[d.id] + rng.normal(0, 0.5, ni)[d.item])
    d["r2"] = pd.Categorical(np.where(rng.random(len(d)) < 1 / (1 + np.exp(-eta)), "Y", "N"),
                             categories=["N", "Y"])
    d["id"] = pd.Categorical(d.id.astype(str))
    d["item"] = pd.Categorical("i" + d.item.astype(str))
    return d


def simulated_counts(seed=2, ng=150, nper=40):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(ng), nper)
    d = pd.DataFrame({"g": pd.Categorical(g.astype(str)), "x": rng.normal(size=ng * nper)})
    mu = np.exp(0.5 + 0.4 * d.x + rng.normal(0, 0.7, ng)[g])
    d["y"] = rng.negative_binomial(2.0, 2.0 / (2.0 + mu))
    return d


def bayes_crossed(d):
    from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM
    d = d.assign(y=(d["r2"].astype(str) == "Y").astype(float))
    return BinomialBayesMixedGLM.from_formula("y ~ Anger + Gender + btype + situ",
                                              {"id": "0 + C(id)", "item": "0 + C(item)"}, d)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the statsmodels Bayes fits")
    ap.add_argument("--csv", help="also write mlmext's fit times (case, seconds) to this file")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    try:
        import threadpoolctl  # noqa: F401
        blas = "threadpoolctl found: one BLAS thread during fits"
    except ImportError:
        blas = "threadpoolctl not installed: BLAS threads as configured (slow on a loaded machine)"
    print(f"mlmext GLMM benchmark ({blas}); best of {args.repeat}\n")
    rows = []

    va = read_data("verbagg.csv")
    r_va = load_ref("glmm", "verbagg_crossed")["r_seconds"]
    for label, data in (("VerbAgg crossed binomial (lme4 data)", va),
                        ("VerbAgg-shaped simulated binomial", simulated_verbagg())):
        tb, tf, res = time_fit(lambda: mf.glmer(VERBAGG, data, family=sm.families.Binomial()), args.repeat)
        rows.append((label, "mlmext glmer Laplace", tb, tf, res.llf, r_va if "lme4" in label else np.nan))
        if not args.quick:
            bm = bayes_crossed(data)
            t_vb, vb = best_time(lambda: bm.fit_vb(), max(1, args.repeat // 2))
            rows.append((label, "statsmodels BinomialBayesMixedGLM.fit_vb", np.nan, t_vb, np.nan, np.nan))
            t_map, _ = best_time(lambda: bm.fit_map(), max(1, args.repeat // 2))
            rows.append((label, "statsmodels BinomialBayesMixedGLM.fit_map", np.nan, t_map, np.nan, np.nan))
            if "lme4" in label:
                fe_vb = pd.Series(vb.fe_mean, index=bm.exog_names)
                print("fixed effects, mlmext (ML, Laplace) vs BinomialBayesMixedGLM.fit_vb (posterior means):")
                print(pd.DataFrame({"mlmext": res.fe_params, "fit_vb": fe_vb.reindex(res.fe_params.index)}).round(4))
                print(f"random-effect SDs mlmext: {np.round(res.varcorr().sdcor.to_numpy(), 4)}, "
                      f"fit_vb: {np.round(np.exp(vb.vcp_mean), 4)}\n")

    nb_rows = []
    gt = read_data("grouseticks.csv")
    sim = simulated_counts()
    r_nb = load_ref("glmm", "grouseticks_negbin")["r_seconds"]
    for label, data, form in (("grouseticks (1 | LOCATION)", gt, "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)"),
                              ("grouseticks (1 | LOCATION) + (1 | BROOD)", gt,
                               "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)"),
                              ("simulated counts, 6000 rows, 150 groups", sim, "y ~ x + (1 | g)")):
        _, tp, rp = time_fit(lambda: mf.glmer(form, data, family=sm.families.Poisson()), args.repeat)
        _, tn, rn = time_fit(lambda: mf.glmer_nb(form, data), args.repeat)
        rows.append((label, "mlmext glmer Poisson", np.nan, tp, rp.llf, np.nan))
        rows.append((label, "mlmext glmer_nb", np.nan, tn, rn.llf,
                     r_nb if form == "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)" else np.nan))
        nb_rows.append((label, tp, tn, tn / tp))

    # NB1 and beta against glmmTMB (its default fit's time, the median of three in R)
    for name in ("nb1_salamanders", "nb1_crossed", "beta_g", "beta_slope"):
        ref = load_ref("nb1beta", name)
        data = read_data(ref["data"])
        if ref["family"] == "nbinom1":
            build, what = (lambda: mf.glmer_nb(ref["formula"], data, variance="nb1")), "glmer_nb nb1"
        else:
            build, what = (lambda: mf.glmer(ref["formula"], data, family="beta")), "glmer beta"
        tb, tf, res = time_fit(build, args.repeat)
        rows.append((f"{ref['data'][:-4]} {ref['formula']} (R: glmmTMB)", f"mlmext {what}", tb,
                     tf, res.llf, ref["r_seconds"]))

    # zero-inflated and hurdle counts against glmmTMB (its default fit's time, one fit in R)
    for name in ("zip_mined", "zinb_mined", "hurdle_pois_mined", "hurdle_nb_mined", "zip_crossed",
                 "zislope_zinb", "zislope_hurdle_pois"):
        ref = load_ref("zi", name)
        data = read_data(ref["data"])
        nb = ref["family"].endswith("nbinom2")
        hurdle = ref["family"].startswith("truncated")
        if nb:
            build = (lambda: mf.glmer_nb(ref["formula"], data, ziformula=ref["ziformula"],
                                         hurdle=hurdle))
        else:
            build = (lambda: mf.glmer(ref["formula"], data, family="poisson",
                                      ziformula=ref["ziformula"], hurdle=hurdle))
        tb, tf, res = time_fit(build, args.repeat)
        rows.append((f"{ref['data'][:-4]} {ref['formula']}, zi {ref['ziformula']} (R: glmmTMB)",
                     f"mlmext {ref['family']}", tb, tf, res.llf, ref["r_seconds"]))

    # R_s: R's time for the same model (lme4's glmer / glmer.nb, or glmmTMB where said)
    tab = pd.DataFrame(rows, columns=["data", "fit", "build_s", "fit_s", "llf", "R_s"])
    if args.csv:
        ours = tab[tab["fit"].str.startswith("mlmext")]
        pd.DataFrame({"case": ours["data"] + ", " + ours["fit"], "seconds": ours["fit_s"]}).to_csv(
            args.csv, index=False)
    with pd.option_context("display.width", 160, "display.max_colwidth", 48):
        print(tab.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print()
    for label, tp, tn, ratio in nb_rows:
        print(f"negative binomial / Poisson fit time, {label}: {tn:.4f} s / {tp:.4f} s = {ratio:.2f}x")
    va_fit = tab[(tab.data.str.startswith("VerbAgg crossed")) & (tab.fit == "mlmext glmer Laplace")].fit_s.iloc[0]
    sim_fit = tab[(tab.data.str.startswith("VerbAgg-shaped")) & (tab.fit == "mlmext glmer Laplace")].fit_s.iloc[0]
    print(f"VerbAgg crossed Laplace fit: {va_fit:.4f} s (target <= 0.06 s; lme4 {r_va:.2f} s, "
          f"{r_va / va_fit:.0f}x); simulated VerbAgg shape: {sim_fit:.4f} s")


if __name__ == "__main__":
    main()
