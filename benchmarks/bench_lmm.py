"""Side-by-side LMM timings: mlmext vs statsmodels MixedLM (and R's lme4 times from the references).

Run from the repository root:  python benchmarks/bench_lmm.py [--quick]

Crossed models go to MixedLM through its single-group variance-component trick.  Times are the
best of ``--repeat`` runs (default 3) of model construction + fit; the machine is shared and
noisy, so read the ratios.  lme4 times are R's own fit times on this kind of machine, stored with
the reference fits (tests/reference/lmm/*.json, ``r_seconds``), or below (``LME4_SCHOOLS_S``) for
the synthetic nested data set, which has no reference fit.

``--dense-second-block`` turns off the nested fast path of the factorization (the blocks of a
chain of nested factors stored block-diagonally, :class:`mlmext.linalg.NestedFactor`): every
block after the first is then dense, the timings before that path existed.
"""
import argparse
import os
import sys
import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# MLMEXT_CODE: time another checkout's mlmext with these cases (compare_revisions.py)
sys.path.insert(0, os.environ.get("MLMEXT_CODE", ROOT))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from mlmext.formula import api as mf  # noqa: E402
from mlmext.linalg import BlockedCholesky  # noqa: E402
from refcases import load_ref, read_data  # noqa: E402

from _timing import best_time  # noqa: E402

#: lme4 (R 4.2) on the data of ``schools_data()`` (written to csv, school and cls read as factors):
#: ``system.time(lmer(y ~ x + (1 | school/cls), REML = TRUE))`` and the same for
#: ``y ~ x + (x | school) + (1 | school:cls)``, best of 3 in one R session, lowest of 7 sessions on
#: this shared 2-core machine (session bests 0.54-0.91 s and 1.17-2.23 s; medians 0.56 / 1.41 s).
LME4_SCHOOLS_S = {"intercepts": 0.54, "slopes": 1.17}


def schools_data(n_school=1500, n_cls=4, n_pupil=10, seed=20240501):
    """Synthetic nested data: pupils in classes (6,000) in schools (1,500), 60,000 rows.

    Random school intercepts (sd 0.5) and slopes in x (sd 0.2), class intercepts (sd 0.3),
    residual sd 1, fixed effects 1 + 0.5 x.
    """
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(n_school), n_cls * n_pupil)
    cls = np.repeat(np.arange(n_school * n_cls), n_pupil)
    n = school.size
    x = rng.normal(size=n)
    u_s = rng.normal(scale=0.5, size=n_school)
    s_s = rng.normal(scale=0.2, size=n_school)
    u_c = rng.normal(scale=0.3, size=n_school * n_cls)
    y = 1.0 + 0.5 * x + u_s[school] + s_s[school] * x + u_c[cls] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "school": [f"s{i:04d}" for i in school],
                         "cls": [f"c{i % n_cls}" for i in cls]})


def r_seconds(name):
    try:
        return float(load_ref("lmm", name)["r_seconds"])
    except Exception:  # noqa: BLE001
        return np.nan


def cases(quick):
    sleep = read_data("sleepstudy.csv")
    pen = read_data("penicillin.csv")
    pastes = read_data("pastes.csv")
    ie = read_data("insteval.csv")
    sub = ie.sample(frac=0.005, random_state=1).reset_index(drop=True)
    for c in ("s", "d", "dept"):
        sub[c] = sub[c].cat.remove_unused_categories()
    schools = schools_data()
    one = np.ones
    out = [
        ("sleepstudy (Days|Subject)", "sleepstudy_reml", sleep,
         lambda d: mf.lmer("Reaction ~ Days + (Days | Subject)", d).fit(),
         lambda d: smf.mixedlm("Reaction ~ Days", d, groups="Subject", re_formula="~Days").fit(reml=True)),
        ("Penicillin crossed", "penicillin_crossed", pen,
         lambda d: mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", d).fit(),
         lambda d: smf.mixedlm("diameter ~ 1", d, groups=one(len(d)), re_formula="0",
                               vc_formula={"plate": "0 + C(plate)", "sample": "0 + C(sample)"}).fit(reml=True)),
        ("Pastes nested", "pastes_nested", pastes,
         lambda d: mf.lmer("strength ~ 1 + (1 | batch/cask)", d).fit(),
         lambda d: smf.mixedlm("strength ~ 1", d, groups="batch", re_formula="1",
                               vc_formula={"cask": "0 + C(cask)"}).fit(reml=True)),
        # 60,000 rows; MixedLM (groups=school, vc_formula cls) needs ~50 s / ~40 s here: not run
        ("Schools nested (1|school/cls)", LME4_SCHOOLS_S["intercepts"], schools,
         lambda d: mf.lmer("y ~ x + (1 | school/cls)", d).fit(), None),
        ("Schools nested (x|school)+(1|school:cls)", LME4_SCHOOLS_S["slopes"], schools,
         lambda d: mf.lmer("y ~ x + (x | school) + (1 | school:cls)", d).fit(), None),
        ("InstEval 0.5% crossed", None, sub,
         lambda d: mf.lmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", d).fit(),
         lambda d: smf.mixedlm("y ~ service", d, groups=one(len(d)), re_formula="0",
                               vc_formula={"s": "0 + C(s)", "d": "0 + C(d)", "dept": "0 + C(dept)"}).fit(reml=True)),
        ("InstEval full crossed", "insteval_crossed", ie,
         lambda d: mf.lmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", d).fit(), None),
    ]
    return out[:-2] if quick else out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the InstEval models")
    ap.add_argument("--dense-second-block", action="store_true",
                    help="factor the blocks after the first densely even when nested (the old path)")
    ap.add_argument("--csv", help="also write mlmext's fit times (case, seconds) to this file")
    args = ap.parse_args()
    if args.dense_second_block:
        BlockedCholesky.nested_default = False
    rows = []
    for label, ref, data, ours, theirs in cases(args.quick):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ours, res = best_time(lambda: ours(data), args.repeat)
            if theirs is not None:
                t_sm, sm = best_time(lambda: theirs(data), 1 if len(data) > 1000 else args.repeat)
                dllf = res.llf - sm.llf
            else:
                t_sm, dllf = np.nan, np.nan
        r = np.nan if ref is None else (r_seconds(ref) if isinstance(ref, str) else float(ref))
        rows.append({"model": label, "n": len(data), "mlmext_s": t_ours, "statsmodels_s": t_sm,
                     "statsmodels/mlmext": t_sm / t_ours, "lme4_s": r, "lme4/mlmext": r / t_ours,
                     "llf(mlmext)-llf(sm)": dllf})
    df = pd.DataFrame(rows).set_index("model")
    if args.csv:
        df["mlmext_s"].rename("seconds").rename_axis("case").to_csv(args.csv)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(df)
    print("\nInstEval reference points (DESIGN.md, best of 3 on this kind of machine): "
          "lme4 17.5 s, glmm 0.99 s, mixedlm 1.95 s.")


if __name__ == "__main__":
    main()
