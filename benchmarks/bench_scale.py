"""Scale benchmark (issue 14): mlmext against glmm, mixedlm and statsmodels, with peak memory.

Run from the repository root:

    python benchmarks/bench_scale.py [--rounds 3] [--large] [--only TEXT ...] [--json FILE]

Prints one row per model: each package's best time and its process's peak RSS, and
mlmext / (fastest other package).  ``--large`` adds the 1,000,000-row ratings LMM and the
1,000,000-row crossed binomial GLMM (a minute or more per fit).  A second table checks that
the packages did the same work: max |fixed effect - mlmext's| / mlmext's SE and the
log-likelihood difference (REML criterion on REML fits), per package and row.

Packages
--------
* mlmext and statsmodels (``MixedLM``, only where it can express the model: one grouping
  factor, i.e. sleepstudy) run with this interpreter, or ``--mlmext-python``; ``PYTHONPATH``
  or ``MLMEXT_CODE`` decides which mlmext (the header prints its path).  Memory depends on
  what is installed: with pyarrow and polars present (the project's ``test`` extra), pandas
  and statsmodels import them and every process starts ~50-70 MiB larger.  A venv with the
  runtime dependencies only (``pip install .``), like the peers' venv, measures what a user
  who installs mlmext alone gets.
* glmm and mixedlm (Rust-backed lme4 clones on PyPI) run with ``--peers-python`` (default
  ``$MLMEXT_PEERS_PYTHON`` or /work/peers/bin/python), a separate venv made with
  ``python -m venv PEERS && PEERS/bin/pip install -r benchmarks/requirements-peers.txt``.
  They are benchmark extras only: nothing in mlmext imports them.  A package missing from its
  interpreter prints "-"; a package that cannot express a model prints "-" too.

What is timed
-------------
Every fit runs in a fresh subprocess per (row, package, round), so that the process's peak
RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read in the child at its end) is that package's
on that model: it includes the interpreter, the imported package and the data frame
(about 0.1-0.2 GB; the second table shows the RSS before the fit).  Rounds alternate the
packages, so a burst of load on this shared machine does not hit one package's rounds only.
Data are generated or read in the parent, stored in an .npz, and loaded in the child before
any timing; imports happen before timing too.  Each child first fits the same model to its
first ``--warmup`` rows (untimed), so lazy imports inside a package are not timed.
Threads: each library's own setting unless ``--threads N`` (mlmext limits OpenBLAS to one
thread during fits of small dense parts; glmm and mixedlm may use threads of their own); the
second table shows CPU time / wall time of each best fit.

* "formula to results" (all fit rows): from the formula string and the in-memory pandas
  DataFrame to the fixed effects, their standard errors and the log-likelihood as floats:
  - mlmext: ``mf.lmer(formula, df).fit(reml=...)`` (``mf.glmer(..., family=Binomial()).fit()``,
    Laplace), then ``fe_params``, ``bse_fe``, ``llf``.  Formula parsing, the model frame and
    the random-effects design are included; the "build" part (``mf.lmer(...)`` alone) is shown
    in the second table.
  - glmm: ``glmm.fit(df, formula, family, reml=...)`` with ``satterthwaite=False`` and
    ``wald_se="rx"`` on LMMs (lme4's work: lmer computes no Satterthwaite df and its vcov is
    the RX one; ``--glmm-defaults`` keeps glmm's defaults, Satterthwaite df and Hessian SEs);
    GLMMs with glmm's defaults (Laplace, Hessian SEs, as lme4's glmer).  Then ``beta``,
    ``se``, ``loglik``.
  - mixedlm: ``mixedlm.lmer(formula, df, REML=...)`` / ``mixedlm.glmer(..., family=
    Binomial())``, then ``fixef()``, ``sqrt(diag(vcov()))``, ``logLik()``.
  - statsmodels: ``smf.mixedlm(fixed, df, groups=..., re_formula=...).fit(reml=...)``, then
    ``fe_params``, ``bse_fe``, ``llf``.
  Best of ``--rounds`` processes (a package whose fit took over ``--max-repeat-seconds`` is
  not run again for that row); the ms-scale sleepstudy rows take the best of
  ``--small-repeats`` fits in each process as well.
  Each round starts with ``gc.collect()`` (so the peak RSS is one fit's).  A full collection
  walks every object of the process and evicts the CPU caches, so the fit after it runs
  cold: on sleepstudy mlmext's fit takes about 1.5x its time in a loop (same calls, no page
  faults; measured 2.15 against 1.41 ms).
* "formula to results, in a loop": the same sleepstudy fits back to back without the forced
  collection (the interpreter's own collections still run), as in a simulation or bootstrap
  loop of fresh fits.
* "model build only": mlmext's ``mf.lmer(formula, df)`` (formula to a model ready to fit).
* "refit(new_y), per refit": one fitted design refitted to ``--refits`` simulated responses of
  the same design (``results.refit(y)`` as lme4's ``refit``: the design is not rebuilt);
  the cell is the mean time per refit and, in brackets, how many times faster that is than a
  fresh formula-to-results fit of the same responses.  glmm has no refit: its cell is a fresh
  ``glmm.fit`` with ``warm_start`` (the previous fit's beta and theta).
* "refit, batched (per refit)": the same responses refitted in one call,
  ``results.refit_many(Y)`` (one result per column, equal to the refits one by one; on a small
  one-factor design they run in lockstep), its time divided by the number of responses.
* "parametric bootstrap, 500 refits": ``results.bootstrap(nsim=500)`` (lme4's ``bootMer``:
  simulate 500 responses, refit each, the variance parameters and fixed effects of each
  refit) on a fresh fit after ``gc.collect()``, its time divided by 500; the bracket compares
  with the same fresh fits as the rows above.

Estimation: lme4's defaults, REML for sleepstudy, STAR and InstEval; ML for the ratings
design (as in the issue); Laplace for the binomial GLMMs.

Models
------
* ratings: user x item ``y ~ x + grp + (1 + x | user) + (1 | item)``, ML.  Users uniform,
  item popularity Zipf(1.3) over the items, ``x`` standard normal per row, ``grp`` 0/1 per
  user; user intercepts SD 0.6, user slopes SD 0.2 (uncorrelated), item intercepts SD 0.9,
  residual SD 1; fixed effects 3 + 0.5 x + 0.3 grp.  100,000 rows on 10k users and 1k
  items; with ``--large`` 1,000,000 rows on 50k users and 3k items.  Levels without rows are
  dropped.
* STAR: Tennessee's Project STAR, mlmRev's ``star`` (benchmarks/data/star.csv.gz: the rows
  with math, gr, sx, eth, cltype, id, tch, sch observed; 24,578 rows), ``math ~ gr + sx + eth
  + cltype + (1 | id) + (1 | tch) + (1 | sch)``, REML: students, teachers and schools crossed.
* sleepstudy ``Reaction ~ Days + (Days | Subject)``, REML (180 rows).
* InstEval ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, REML (73,421 rows; tests/data).
* VerbAgg ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``, binomial Laplace
  (7,584 rows; r2 as 0/1).
* cbpp (lme4's ``cbpp``, 56 herd-periods): ``cbind(incidence, fail) ~ period + (1 | herd)``,
  binomial Laplace, ``fail = size - incidence`` (glmm's ``cbind`` takes two column names).
* binomial 1M (``--large``): ``y ~ x + grp + (1 | user) + (1 | item)`` on the 1M-row ratings
  design, logit eta = -0.5 + 0.5 x + 0.3 grp + user (SD 0.6) + item (SD 0.9).

The machine is shared and noisy: read the ratios, and take the best of several runs.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CODE = os.environ.get("MLMEXT_CODE", ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from refcases import read_data  # noqa: E402  (tests/data with R's levels; no mlmext import)

CHILD = os.path.join(HERE, "_scale_child.py")
PACKAGES = ["mlmext", "glmm", "mixedlm", "statsmodels"]
PEERS = {"glmm", "mixedlm"}
RATINGS = "y ~ x + grp + (1 + x | user) + (1 | item)"
SLEEP = "Reaction ~ Days + (Days | Subject)"
SLEEP_SM = {"formula": "Reaction ~ Days", "groups": "Subject", "re_formula": "~Days"}


# ----------------------------------------------------------------------------------------- data

def ratings_design(n_rows, n_users, n_items, seed):
    """Users uniform, items by Zipf(1.3) popularity, x ~ N(0, 1) per row, grp 0/1 per user."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_rows)
    pop = np.arange(1, n_items + 1, dtype=float) ** -1.3
    item = rng.choice(n_items, size=n_rows, p=pop / pop.sum())
    x = rng.normal(size=n_rows)
    grp = rng.integers(0, 2, n_users).astype(float)[user]
    return user, item, x, grp


def ratings_response(user, item, x, grp, n_users, n_items, seed, family="gaussian"):
    rng = np.random.default_rng(seed)
    u0 = rng.normal(0, 0.6, n_users)
    u1 = rng.normal(0, 0.2, n_users)
    v = rng.normal(0, 0.9, n_items)
    if family == "gaussian":
        return 3.0 + 0.5 * x + 0.3 * grp + u0[user] + u1[user] * x + v[item] + rng.normal(size=x.size)
    eta = -0.5 + 0.5 * x + 0.3 * grp + u0[user] + v[item]
    return (rng.random(x.size) < 1.0 / (1.0 + np.exp(-eta))).astype(float)


def as_factor(codes, prefix):
    used, inv = np.unique(codes, return_inverse=True)
    width = len(str(int(used.max())))
    return pd.Categorical.from_codes(inv.astype(np.int32), [f"{prefix}{i:0{width}d}" for i in used])


def ratings(n_rows, n_users, n_items, seed=14, family="gaussian", refits=0):
    user, item, x, grp = ratings_design(n_rows, n_users, n_items, seed)
    df = pd.DataFrame({"y": ratings_response(user, item, x, grp, n_users, n_items, seed + 1, family),
                       "x": x, "grp": grp, "user": as_factor(user, "u"), "item": as_factor(item, "i")})
    for k in range(refits):
        df[f"y_new_{k}"] = ratings_response(user, item, x, grp, n_users, n_items, seed + 100 + k, family)
    return df


def star():
    return read_csv_levels(os.path.join(HERE, "data", "star.csv.gz"))


def read_csv_levels(path):
    df = pd.read_csv(path)
    with open(path.replace(".csv.gz", ".levels.json")) as fh:
        for col, spec in json.load(fh).items():
            df[col] = pd.Categorical(df[col].astype(str), categories=[str(v) for v in spec["levels"]])
    return df


def sleepstudy(refits=0, seed=15):
    """sleepstudy; ``y_new_k``: responses simulated from lme4's REML fit on its design."""
    d = read_data("sleepstudy.csv")
    rng = np.random.default_rng(seed)
    codes = d["Subject"].cat.codes.to_numpy()
    ns = d["Subject"].cat.categories.size
    cov = np.array([[24.74 ** 2, 0.066 * 24.74 * 5.92], [0.066 * 24.74 * 5.92, 5.92 ** 2]])
    for k in range(refits):
        b = rng.multivariate_normal([0.0, 0.0], cov, ns)
        d[f"y_new_{k}"] = (251.4 + b[codes, 0] + (10.47 + b[codes, 1]) * d["Days"]
                           + rng.normal(0, 25.59, len(d)))
    return d


def insteval():
    return read_data("insteval.csv")


def verbagg():
    d = read_data("verbagg.csv")
    d["r2"] = (d["r2"].astype(str) == "Y").astype(float)
    return d


def cbpp():
    d = read_data("cbpp.csv")
    d["fail"] = d["size"] - d["incidence"]      # glmm's cbind() takes two column names
    return d


def save_frame(df, path):
    arrays = {}
    for c in df.columns:
        col = df[c]
        if isinstance(col.dtype, pd.CategoricalDtype):
            arrays[c + ".__codes"] = col.cat.codes.to_numpy().astype(np.int32)
            arrays[c + ".__cats"] = np.asarray(col.cat.categories.astype(str), dtype=str)
        else:
            arrays[c] = col.to_numpy(dtype=float)
    np.savez(path, **arrays)


# ---------------------------------------------------------------------------------------- cases

def cases(args):
    """(label, data key, spec, options): options has packages, rounds/inner repeats, large."""
    small = args.small_repeats
    out = [
        ("ratings 1M, ML: y ~ x + grp + (1+x|user) + (1|item)", "ratings_1m",
         dict(formula=RATINGS, family="gaussian", reml=False, mode="fit"), dict(large=True)),
        ("ratings 100k, ML (10k users, 1k items)", "ratings_100k",
         dict(formula=RATINGS, family="gaussian", reml=False, mode="fit"), {}),
        ("STAR: (1|id)+(1|tch)+(1|sch), REML", "star",
         dict(formula="math ~ gr + sx + eth + cltype + (1 | id) + (1 | tch) + (1 | sch)",
              family="gaussian", reml=True, mode="fit"), {}),
        ("sleepstudy (Days|Subject) formula to results", "sleepstudy",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="fit", statsmodels=SLEEP_SM),
         dict(inner=small)),
        ("sleepstudy formula to results, in a loop", "sleepstudy",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="fit", statsmodels=SLEEP_SM,
              collect=False), dict(inner=small)),
        ("sleepstudy model build only", "sleepstudy",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="build"), dict(inner=small, only=["mlmext"])),
        ("sleepstudy refit(new_y), per refit [fresh/refit]", "sleepstudy_refit",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="refit", refits=args.refits),
         dict(only=["mlmext", "glmm", "mixedlm"])),
        ("sleepstudy refit, batched (per refit) [fresh/refit]", "sleepstudy_refit",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="refit", refits=args.refits,
              batched=True), dict(only=["mlmext"])),
        ("sleepstudy parametric bootstrap, 500 refits (per refit) [fresh/refit]", "sleepstudy_refit",
         dict(formula=SLEEP, family="gaussian", reml=True, mode="refit", refits=args.refits,
              bootstrap=500), dict(only=["mlmext"])),
        ("ratings 100k refit(new_y), per refit [fresh/refit]", "ratings_100k_refit",
         dict(formula=RATINGS, family="gaussian", reml=False, mode="refit", refits=3),
         dict(only=["mlmext", "glmm", "mixedlm"])),
        ("InstEval (1|s)+(1|d)+(1|dept), REML", "insteval",
         dict(formula="y ~ service + (1 | s) + (1 | d) + (1 | dept)", family="gaussian", reml=True,
              mode="fit"), {}),
        ("VerbAgg crossed binomial, Laplace", "verbagg",
         dict(formula="r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", family="binomial",
              reml=False, mode="fit"), dict(inner=max(1, small // 20))),
        ("cbpp binomial cbind(incidence, fail) ~ period + (1|herd), Laplace", "cbpp",
         dict(formula="cbind(incidence, fail) ~ period + (1 | herd)", family="binomial",
              reml=False, mode="fit"), dict(inner=max(1, small // 5))),
        ("binomial 1M: y ~ x + grp + (1|user) + (1|item), Laplace", "binom_1m",
         dict(formula="y ~ x + grp + (1 | user) + (1 | item)", family="binomial", reml=False,
              mode="fit"), dict(large=True)),
    ]
    return out


DATA = {
    "ratings_1m": lambda a: ratings(1_000_000, 50_000, 3_000),
    "ratings_100k": lambda a: ratings(100_000, 10_000, 1_000),
    "ratings_100k_refit": lambda a: ratings(100_000, 10_000, 1_000, refits=3),
    "star": lambda a: star(),
    "sleepstudy": lambda a: sleepstudy(),
    "sleepstudy_refit": lambda a: sleepstudy(refits=a.refits),
    "insteval": lambda a: insteval(),
    "verbagg": lambda a: verbagg(),
    "cbpp": lambda a: cbpp(),
    "binom_1m": lambda a: ratings(1_000_000, 50_000, 3_000, seed=41, family="binomial"),
}


# ------------------------------------------------------------------------------------- running

def available(python, package, env):
    try:
        r = subprocess.run([python, "-c", f"import {package}"], env=env, capture_output=True, timeout=120)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_child(python, spec, env, timeout, tmp):
    path = os.path.join(tmp, "spec.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    try:
        r = subprocess.run([python, CHILD, path], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "note": f"timeout ({timeout:.0f} s)"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        return {"seconds": None, "note": f"failed: {tail[0][:120]}"}
    return json.loads(lines[-1])


def merge(best, new):
    """Best time over rounds; the largest peak RSS; the rest from the best round."""
    if best is None:
        return new
    if new.get("seconds") is not None and (best.get("seconds") is None or new["seconds"] < best["seconds"]):
        keep = dict(new)
    else:
        keep = dict(best)
    for k in ("rss_peak_mb", "rss_data_mb"):
        vals = [d.get(k) for d in (best, new) if d.get(k) is not None]
        if vals:
            keep[k] = max(vals)
    for k in ("build_seconds", "fresh_seconds"):
        vals = [d.get(k) for d in (best, new) if d.get(k) is not None and np.isfinite(d.get(k))]
        if vals:
            keep[k] = min(vals)
    return keep


def fmt_time(s):
    if s is None or not np.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_mem(mb):
    if mb is None:
        return ""
    return f"{mb / 1024:.2f} GiB" if mb >= 1000 else f"{mb:.0f} MiB"


def cell(r, mode):
    if r is None:
        return "-"
    if r.get("seconds") is None:
        return r.get("note") or "-"
    if mode == "refit":
        fresh = r.get("fresh_seconds")
        tag = " warm_start" if r.get("note") == "warm_start" else ""
        return f"{fmt_time(r['seconds'])} [{fresh / r['seconds']:.1f}x]{tag}"
    if mode == "build":
        return fmt_time(r["seconds"])
    return f"{fmt_time(r['seconds'])}, {fmt_mem(r.get('rss_peak_mb'))}"


def agreement(res):
    """Rows of the second table: each package's estimates against mlmext's."""
    ours = res.get("mlmext")
    rows = []
    for pkg, r in res.items():
        if r is None or r.get("fe") is None:
            continue
        cpu = r.get("cpu_seconds")
        row = {"package": pkg, "rss_data": fmt_mem(r.get("rss_data_mb")),
               "cpu/wall": f"{cpu / r['seconds']:.2f}" if cpu is not None and r.get("seconds") else "",
               "build": fmt_time(r.get("build_seconds")) if pkg == "mlmext" else ""}
        if pkg != "mlmext" and ours is not None and ours.get("fe") is not None:
            a, b, se = (np.asarray(v, float) for v in (r["fe"], ours["fe"], ours["se"]))
            pos = {name: i for i, name in enumerate(ours["fe_names"])}
            if sorted(r["fe_names"]) == sorted(pos):
                order = [pos[name] for name in r["fe_names"]]
                row["max|dfe|/SE"] = f"{np.max(np.abs(a - b[order]) / se[order]):.2g}"
            elif a.size == b.size:      # names that do not match: in order, and say so
                row["max|dfe|/SE"] = f"{np.max(np.abs(a - b) / se):.2g} (by position)"
            else:
                row["max|dfe|/SE"] = f"{a.size} vs {b.size} coefs"
            row["dllf"] = f"{r['llf'] - ours['llf']:+.2g}"
        else:
            row["llf"] = f"{r['llf']:.6g}"
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="processes per package and row (best of)")
    ap.add_argument("--small-repeats", type=int, default=100,
                    help="fits per process on the ms-scale sleepstudy rows (best of)")
    ap.add_argument("--refits", type=int, default=20, help="new responses in the sleepstudy refit row")
    ap.add_argument("--warmup", type=int, default=2000, help="rows of the untimed warm-up fit per process")
    ap.add_argument("--large", action="store_true", help="add the 1M-row LMM and GLMM rows")
    ap.add_argument("--only", nargs="*", help="rows whose label contains any of these strings")
    ap.add_argument("--packages", nargs="*", default=PACKAGES)
    ap.add_argument("--peers-python", default=os.environ.get("MLMEXT_PEERS_PYTHON", "/work/peers/bin/python"))
    ap.add_argument("--mlmext-python", default=sys.executable,
                    help="interpreter for mlmext's and statsmodels' processes (default: this one); "
                         "e.g. a venv with the runtime dependencies only, as the peers' venv")
    ap.add_argument("--glmm-defaults", action="store_true",
                    help="glmm.fit's defaults on LMMs (Satterthwaite df, Hessian SEs)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    ap.add_argument("--max-repeat-seconds", type=float, default=240.0,
                    help="a package whose fit took longer than this is not run again for that row")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every process's result")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--threads", type=int,
                    help="OPENBLAS/OMP/MKL/RAYON_NUM_THREADS for every package's process "
                         "(default: each library's own setting, as a user gets it)")
    args = ap.parse_args(argv)

    env_ours = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [CODE, HERE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env_peer = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLMEXT_CODE")}
    if args.threads:
        for env in (env_ours, env_peer):
            env.update({k: str(args.threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                        "MKL_NUM_THREADS", "RAYON_NUM_THREADS")})
    pythons = {}
    for pkg in args.packages:
        py, env = (args.peers_python, env_peer) if pkg in PEERS else (args.mlmext_python, env_ours)
        if os.path.exists(py) and available(py, pkg, env):
            pythons[pkg] = (py, env)
    todo = [c for c in cases(args) if args.large or not c[3].get("large")]
    if args.only:
        todo = [c for c in todo if any(s.lower() in c[0].lower() for s in args.only)]

    print(f"mlmext scale benchmark (issue 14): best of {args.rounds} processes per cell "
          f"(x{args.small_repeats} fits per process on sleepstudy); time = formula to results, "
          f"peak RSS of the process; threads: {args.threads or 'library defaults'}")
    print(f"{platform.node()} {platform.machine()} nproc={os.cpu_count()} "
          f"loadavg={' '.join(f'{v:.1f}' for v in os.getloadavg())} {time.strftime('%Y-%m-%d %H:%M')}")
    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        frames = {}
        # the quick rows first (their results are in hand early), the table in the order
        for idx, (label, key, spec, opt) in sorted(enumerate(todo), key=lambda t: bool(t[1][3].get("large"))):
            if key not in frames:
                path = os.path.join(tmp, key + ".npz")
                data = DATA[key](args)
                save_frame(data, path)
                frames[key] = (path, len(data))
                del data
            path, n = frames[key]
            pkgs = [p for p in args.packages if p in pythons and p in opt.get("only", args.packages)
                    and (p != "statsmodels" or "statsmodels" in spec)]
            res = {p: None for p in pkgs}
            for _ in range(args.rounds):
                for pkg in pkgs:
                    if res[pkg] is not None and (res[pkg].get("seconds") is None
                                                 or res[pkg]["seconds"] > args.max_repeat_seconds):
                        continue                  # timed out, failed, or too slow to repeat
                    py, env = pythons[pkg]
                    s = dict(spec, package=pkg, data=path, rounds=opt.get("inner", 1),
                             glmm_defaults=args.glmm_defaults,
                             warmup=args.warmup if n > 4 * args.warmup else 0)
                    if spec["mode"] == "refit":
                        s["rounds"] = 1
                    one = run_child(py, s, env, args.timeout, tmp)
                    res[pkg] = merge(res[pkg], one)
                    if args.verbose:
                        print(f"    {label} | {pkg}: {fmt_time(one.get('seconds')) if one.get('seconds') else one.get('note')}"
                              f" peak {fmt_mem(one.get('rss_peak_mb'))}", flush=True)
            raw.append({"model": label, "rows": n, "order": idx, "results": res})
            rows.append((idx, label, n, spec["mode"], res))
            print_row_progress(label, res)
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(raw, fh, indent=1, default=float)
        rows = [r[1:] for r in sorted(rows, key=lambda r: r[0])]
        versions = {}
        for entry in raw:
            for pkg, r in entry["results"].items():
                if r and r.get("file") and pkg not in versions:
                    versions[pkg] = f"{r.get('version') or ''} ({r['file']})".strip()

    print()
    for pkg in args.packages:
        print(f"  {pkg:12s} {versions.get(pkg, 'not available' if pkg not in pythons else '')}"
              + (f"  [{pythons[pkg][0]}]" if pkg in pythons else ""))
    print()
    table = []
    for label, n, mode, res in rows:
        line = {"model": label, "rows": f"{n:,}"}
        for pkg in args.packages:
            line[pkg] = cell(res.get(pkg), mode)
        ours = res.get("mlmext")
        others = [r["seconds"] for p, r in res.items() if p != "mlmext" and r and r.get("seconds") is not None]
        if mode == "fit" and ours and ours.get("seconds") is not None and others:
            line["mlmext / fastest"] = f"{ours['seconds'] / min(others):.2f}x"
        else:
            line["mlmext / fastest"] = "n/a" if mode == "refit" and ours and ours.get("seconds") is None else "-"
        table.append(line)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60, "display.max_columns", 20):
        print(pd.DataFrame(table).to_string(index=False))
        print("\nSame work? Each package against mlmext (max |fixed effect difference| / mlmext's SE; "
              "llf difference, REML criterion on REML fits); mlmext's build step; RSS before the fit; "
              "CPU time / wall time of the best fit (above 1: threads).")
        agree = []
        for label, n, mode, res in rows:
            if mode != "fit":
                continue
            for r in agreement(res):
                agree.append({"model": label[:40], **r})
        print(pd.DataFrame(agree).fillna("").to_string(index=False))


def print_row_progress(label, res):
    parts = []
    for pkg, r in res.items():
        if r is None:
            continue
        parts.append(f"{pkg} {fmt_time(r.get('seconds')) if r.get('seconds') is not None else r.get('note')}")
    print(f"  done: {label}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
