"""Cumulative link mixed model timings: mlmext vs R's ordinal::clmm, with statsmodels' OrderedModel
(no random effects) as a floor.

Run from the repository root:
    python benchmarks/bench_clmm.py [--repeat 5] [--quick] [--blas-threads N] [--live-r]

* ``mlmext fit`` is ``model.fit()`` (optimization, Hessian / standard errors, conditional modes);
  ``mlmext total`` adds building the model from the formula (patsy, about 5 ms on the wine data).
* ``R clmm`` is R's own time for the whole ``clmm()`` call (formula to fitted object with the
  Hessian), stored with the reference fits (``r_seconds``, tests/reference/clmm/*.json; the
  wine Laplace case is the shared development value).
* ``--live-r`` also times R's ``clmm()`` now (best of ``--repeat``), on the same machine under
  the same load, since the shared machine's load changes the stored and the live times a lot.
* ``OrderedModel`` fits the same fixed part without random effects (statsmodels, BFGS): a floor
  for what one ordinal likelihood evaluation costs in statsmodels.

Times are the best of ``--repeat`` runs.  The machine is shared and noisy: read the ratios.  BLAS
runs single-threaded by default (``--blas-threads``): on a loaded 2-core machine OpenBLAS threads
make small dense factorizations many times slower (R's reference BLAS is single-threaded).
"""
import argparse
import os
import sys
import warnings

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# MLMEXT_CODE: time another checkout's mlmext with these cases (compare_revisions.py)
sys.path.insert(0, os.environ.get("MLMEXT_CODE", ROOT))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from statsmodels.miscmodels.ordinal_model import OrderedModel  # noqa: E402

from mlmext.formula import api as mf  # noqa: E402
from refcases import load_ref, read_data  # noqa: E402

from _timing import best_time  # noqa: E402


CASES = [
    # label, reference case, nagq, quick
    ("wine Laplace (72 rows, 9 judges, 5 cat.)", "wine_clmm_laplace", 1, True),
    ("wine AGQ 10", "wine_clmm_agq10", 10, True),
    ("ordsim Laplace (2,000 rows, 100 groups, 6 cat.)", "ordsim_laplace", 1, True),
    ("ordsim AGQ 10", "ordsim_agq10", 10, True),
    ("ordsim crossed (1|g) + (1|item)", "ordsim_crossed", 1, False),
    ("ordsim slope (1 + x1|g)", "ordsim_slope", 1, False),
    ("soup nested (1|RESP) + (1|RESP:PROD), 1,847 rows", "soup_nested", 1, False),
]


R_TIMER = r"""
suppressPackageStartupMessages({library(ordinal); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
csv <- args[1]; formula <- args[2]; link <- args[3]; threshold <- args[4]; nagq <- as.integer(args[5])
repeat_n <- as.integer(args[6])
d <- read.csv(csv, stringsAsFactors = FALSE)
lv <- sub("[.]csv$", ".levels.json", csv)
if (file.exists(lv)) {
  spec <- fromJSON(lv)
  for (col in names(spec))
    d[[col]] <- factor(as.character(d[[col]]), levels = spec[[col]]$levels, ordered = spec[[col]]$ordered)
}
f <- function() clmm(as.formula(formula), data = d, link = link, threshold = threshold, nAGQ = nagq)
invisible(f())
t <- sapply(seq_len(repeat_n), function(i) system.time(f())[["elapsed"]])
cat(min(t), "\n")
"""


def live_r_seconds(ref, nagq, repeat):
    """R's clmm() time measured now (best of ``repeat``), or nan without Rscript."""
    import shutil
    import subprocess
    import tempfile
    if shutil.which("Rscript") is None:
        return np.nan
    csv = os.path.join(ROOT, "tests", "data", ref["data"])
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(R_TIMER)
        script = fh.name
    try:
        out = subprocess.run(["Rscript", script, csv, ref["formula"], ref.get("link", "logit"),
                              ref.get("threshold", "flexible"), str(nagq), str(repeat)],
                             capture_output=True, text=True, timeout=3600)
        return float(out.stdout.split()[-1])
    except Exception:  # noqa: BLE001
        return np.nan
    finally:
        os.unlink(script)


def run(repeat, quick, live_r=False):
    rows = []
    for label, name, nagq, is_quick in CASES:
        if quick and not is_quick:
            continue
        ref = load_ref("clmm", name)
        data = read_data(ref["data"])
        kw = dict(link=ref.get("link", "logit"), threshold=ref.get("threshold", "flexible"),
                  weights=ref.get("weights"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = mf.clmm(ref["formula"], data, **kw)
            model.fit(nagq=nagq)                                   # warm-up (imports, caches)
            t_fit, res = best_time(lambda: model.fit(nagq=nagq), repeat)
            t_total, _ = best_time(lambda: mf.clmm(ref["formula"], data, **kw).fit(nagq=nagq), repeat)
            X = model.exog
            y = np.asarray(model.endog, dtype=int)
            om = lambda: OrderedModel(y, X, distr="logit" if kw["link"] == "logit" else "probit").fit(
                method="bfgs", disp=False, maxiter=1000)
            t_om, _ = best_time(om, repeat)
        r_now = live_r_seconds(ref, nagq, repeat) if live_r else np.nan
        rows.append(dict(label=label, fit=t_fit, total=t_total, r=float(ref["r_seconds"]), om=t_om,
                         dll=res.llf - ref["loglik"], r_now=r_now))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the crossed, slope and soup models")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads during the timings (0: leave the library default)")
    ap.add_argument("--live-r", action="store_true",
                    help="also time R's clmm() now, on the same machine and load (needs Rscript)")
    ap.add_argument("--csv", help="also write mlmext's fit times (case, seconds) to this file")
    args = ap.parse_args()
    limiter = None
    if args.blas_threads > 0:
        try:
            from threadpoolctl import threadpool_limits
            limiter = threadpool_limits(args.blas_threads)
        except ImportError:
            print("threadpoolctl not installed: BLAS threads left at the default")
    rows = run(args.repeat, args.quick, args.live_r)
    if limiter is not None:
        limiter.restore_original_limits()
    if args.csv:
        pd.DataFrame({"case": [r["label"] for r in rows],
                      "seconds": [r["fit"] for r in rows]}).to_csv(args.csv, index=False)
    print(f"best of {args.repeat}; BLAS threads: {args.blas_threads or 'default'}")
    live = "| R now | R now / fit " if args.live_r else ""
    hdr = (f"| {'model':50s} | mlmext fit | mlmext total | R clmm (stored) | R / fit | R / total "
           f"{live}| OrderedModel (no RE) | fit / OrderedModel | llf - R |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        lv = (f"| {r['r_now'] * 1e3:6.0f} ms | {r['r_now'] / r['fit']:10.1f}x "
              if args.live_r else "")
        print(f"| {r['label']:50s} | {r['fit'] * 1e3:7.1f} ms | {r['total'] * 1e3:9.1f} ms | "
              f"{r['r'] * 1e3:12.0f} ms | {r['r'] / r['fit']:6.1f}x | {r['r'] / r['total']:8.1f}x "
              f"{lv}| {r['om'] * 1e3:17.1f} ms | {r['fit'] / r['om']:17.2f} | {r['dll']:+.1e} |")


if __name__ == "__main__":
    main()
