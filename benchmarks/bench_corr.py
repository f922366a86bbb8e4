"""Time of LMM fits with residual correlation against nlme's lme (corAR1, corCAR1).

Run from the repository root:  PYTHONPATH=. python benchmarks/bench_corr.py

nlme's times come from tools/r_reference/corr_reference.R (tests/reference/corr/timing.json:
mean of 20 and 5 fits on the same data, one thread).  Ours: best of 5 fits of a built model,
and the build (formula, sorting, checks) + fit once.  No test reads these numbers.
"""
import json
import os
import time

import pandas as pd

import mlmext
from mlmext.formula import api as mf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_of(f, k=5):
    out = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return min(out)


def main():
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    r = json.load(open(os.path.join(ROOT, "tests", "reference", "corr", "timing.json")))
    data = lambda n: pd.read_csv(os.path.join(ROOT, "tests", "data", n + ".csv"))
    cases = [("AR(1), sleepstudy, (1 | Subject)", "sleepstudy", "Reaction ~ Days + (1 | Subject)",
              mlmext.cor.AR1(time="Days", group="Subject"), r["ar1_sleep_reml_seconds"]),
             ("CAR(1), carsim, (1 | id)", "carsim", "y ~ time + x + (1 | id)",
              mlmext.cor.CAR1(time="time", group="id"), r["car1_reml_seconds"])]
    for label, name, formula, cor, t_r in cases:
        df = data(name)
        mod = mf.lmer(formula, df, correlation=cor)
        mod.fit()                                   # warm-up (imports, first calls)
        t_fit = best_of(mod.fit)
        t_all = best_of(lambda: mf.lmer(formula, df, correlation=cor).fit(), 3)
        print(f"{label}: mlmext fit {t_fit * 1e3:.0f} ms (build + fit {t_all * 1e3:.0f} ms), "
              f"nlme lme {t_r * 1e3:.0f} ms: ratio {t_all / t_r:.1f}")


if __name__ == "__main__":
    main()
