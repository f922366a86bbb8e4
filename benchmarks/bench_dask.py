"""Linear mixed models of Parquet data through Dask: time per pass and per evaluation, the
client's peak memory, and agreement with the in-memory fit.

The ratings design of ``bench_scale.py`` (``y ~ x + grp + (1 + x | user) + (1 | item)``, ML,
users uniform, items Zipf(1.3)) is written to Parquet in files of 250k rows (the writer never
holds all rows), then fitted in a fresh process through a ``LocalCluster`` of 2 worker
processes with a memory limit each: the client reads nothing but the cross-products.

    python benchmarks/bench_dask.py                         # 1M rows, and the pandas fit to compare
    python benchmarks/bench_dask.py --rows 10000000 --users 200000 --items 5000 --no-pandas
    python benchmarks/bench_dask.py --rows 60000000 --users 500000 --worker-memory 1GB \
        --no-pandas --formula "y ~ x + grp + (1 + x | user)"

    python benchmarks/bench_dask.py --family binomial --users 20000 --items 500   # a GLMM

With ``--family binomial`` (or ``poisson``) the response is a 0/1 (count) column drawn from the
same linear predictor and the model ``yb ~ x + grp + (1 | user) + (1 | item)`` (``yc ~ ...``) is
fitted by ``mf.glmer``: the rows are persisted on the workers, every PIRLS iteration and every
gradient is one pass over them; the table gives the passes.

The last line is a larger-than-memory run: the rows in memory outweigh the two workers'
limits together (the table prints both).  Its model has one grouping factor: with the crossed
items the client's per-evaluation cost grows with rows x ratings per user (the Schur product's
pairs; see the note in the user guide).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

FORMULA = "y ~ x + grp + (1 + x | user) + (1 | item)"
GLMM_FORMULA = {"binomial": "yb ~ x + grp + (1 | user) + (1 | item)",
                "poisson": "yc ~ x + grp + (1 | user) + (1 | item)"}
CHUNK = 250_000


def write_parquet(path, n_rows, n_users, n_items, seed=14, glmm=False):
    """The ratings rows in files of CHUNK rows (user and item as integer codes); with ``glmm``
    a 0/1 and a count response too."""
    import pandas as pd
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    u0, u1, v = rng.normal(0, 0.6, n_users), rng.normal(0, 0.2, n_users), rng.normal(0, 0.9, n_items)
    grp_user = rng.integers(0, 2, n_users).astype(float)
    pop = np.arange(1, n_items + 1, dtype=float) ** -1.3
    pop /= pop.sum()
    for k, start in enumerate(range(0, n_rows, CHUNK)):
        n = min(CHUNK, n_rows - start)
        r = np.random.default_rng([seed, k])
        user = r.integers(0, n_users, n)
        item = r.choice(n_items, size=n, p=pop)
        x = r.normal(size=n)
        grp = grp_user[user]
        y = 3.0 + 0.5 * x + 0.3 * grp + u0[user] + u1[user] * x + v[item] + r.normal(size=n)
        cols = {"y": y, "x": x, "grp": grp, "user": user, "item": item}
        if glmm:
            eta = -0.5 + 0.5 * x + 0.3 * grp + u0[user] + v[item]
            cols["yb"] = (r.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
            cols["yc"] = r.poisson(np.exp(eta)).astype(float)
        pd.DataFrame(cols).to_parquet(
            os.path.join(path, f"part-{k:04d}.parquet"), index=False)


def child_dask(path, worker_memory, out, formula=FORMULA):
    import dask.dataframe as dd
    import distributed
    from mlmext.formula import api as mf
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit=worker_memory, dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        ddf = dd.read_parquet(path)
        mem_rows = None
        t0 = time.perf_counter()
        model = mf.lmer(formula, ddf)
        t1 = time.perf_counter()
        res = model.fit(reml=False)
        t2 = time.perf_counter()
        mem_rows = float(ddf.memory_usage(deep=True).sum().compute()) / 2 ** 20
    rec = {"build": t1 - t0, "fit": t2 - t1, "nfev": res.optim.nfev, "timings": model.timings,
           "npartitions": model.npartitions, "rows_in_memory_mb": mem_rows,
           "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "params": list(map(float, res.params)), "theta": list(map(float, res.theta)),
           "llf": float(res.llf), "nobs": res.nobs, "r": int(model._cross_products().r)}
    json.dump(rec, open(out, "w"))


def child_dask_glmm(path, worker_memory, out, formula, family):
    import dask.dataframe as dd
    import distributed
    from mlmext.formula import api as mf
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  memory_limit=worker_memory, dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        ddf = dd.read_parquet(path)
        t0 = time.perf_counter()
        model = mf.glmer(formula, ddf, family=family)
        t1 = time.perf_counter()
        res = model.fit()
        t2 = time.perf_counter()
    rec = {"build": t1 - t0, "fit": t2 - t1, "nfev": res.optim.nfev, "timings": model.timings,
           "npartitions": model.npartitions, "passes_build": 2, "passes_fit": res.passes,
           "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "params": list(map(float, res.params)), "theta": list(map(float, res.theta)),
           "llf": float(res.llf), "nobs": res.nobs}
    json.dump(rec, open(out, "w"))


def child_pandas(path, out, formula=FORMULA, family=None):
    import pandas as pd
    from mlmext.formula import api as mf
    df = pd.read_parquet(path)
    t0 = time.perf_counter()
    res = (mf.lmer(formula, df).fit(reml=False) if family is None
           else mf.glmer(formula, df, family=family).fit())
    rec = {"nfev": res.optim.nfev, "total": time.perf_counter() - t0, "params": list(map(float, res.params)),
           "theta": list(map(float, res.theta)), "llf": float(res.llf),
           "bse": list(map(float, res.bse)),
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    json.dump(rec, open(out, "w"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--worker-memory", default="2GB", help="memory limit of each of the 2 workers")
    ap.add_argument("--no-pandas", action="store_true", help="skip the in-memory fit")
    ap.add_argument("--formula", default=None, help=f"the model (default: {FORMULA}; with "
                    "--family, the GLMM formulas above)")
    ap.add_argument("--family", default=None, choices=["binomial", "poisson"],
                    help="fit a GLMM of this family (mf.glmer) instead of the LMM")
    ap.add_argument("--dir", default=None, help="where to write the Parquet files (default: a temp dir)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.formula is None:
        args.formula = GLMM_FORMULA[args.family] if args.family else FORMULA
    if args.child:
        kind, path, out = args.child
        if kind == "dask" and args.family:
            return child_dask_glmm(path, args.worker_memory, out, args.formula, args.family)
        return (child_dask(path, args.worker_memory, out, args.formula) if kind == "dask"
                else child_pandas(path, out, args.formula, args.family))
    tmp = args.dir or tempfile.mkdtemp(prefix="mlmext_dask_")
    glmm = args.family is not None
    path = os.path.join(tmp, f"ratings_{args.rows}_{args.users}_{args.items}" + ("_glmm" if glmm else ""))
    t0 = time.perf_counter()
    if not os.path.isdir(path):
        write_parquet(path, args.rows, args.users, args.items, glmm=glmm)
    disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2 ** 20
    print(f"{args.formula}\n{args.rows:,} rows, {args.users:,} users, {args.items:,} items: Parquet {disk:.0f} MiB "
          f"on disk (written in {time.perf_counter() - t0:.1f} s)")
    recs = {}
    for kind in ["dask"] + ([] if args.no_pandas else ["pandas"]):
        out = os.path.join(tmp, f"{kind}.json")
        subprocess.run([sys.executable, __file__, "--worker-memory", args.worker_memory,
                        "--formula", args.formula, "--child", kind, path, out]
                       + (["--family", args.family] if glmm else []), check=True)
        recs[kind] = json.load(open(out))
    d = recs["dask"]
    if glmm:
        return report_glmm(args, recs)
    t = d["timings"]
    print(f"Dask, LocalCluster of 2 worker processes ({args.worker_memory} each), "
          f"{d['npartitions']} partitions; rows in memory {d['rows_in_memory_mb']:.0f} MiB")
    print(f"  pass 1 (levels)          {t['levels_pass']:8.2f} s")
    print(f"  template model           {t['template']:8.2f} s")
    print(f"  pass 2 (cross-products)  {t['cross_products_pass']:8.2f} s")
    print(f"  factor set-up            {t['factor_setup']:8.2f} s")
    print(f"  fit                      {d['fit']:8.2f} s  ({d['nfev']} evaluations, "
          f"{d['fit'] / max(d['nfev'], 1):.3f} s each; dense remainder of order {d['r']})")
    print(f"  total                    {d['build'] + d['fit']:8.2f} s; client peak RSS "
          f"{d['client_peak_mb']:.0f} MiB")
    if "pandas" in recs:
        p = recs["pandas"]
        print(f"pandas in memory: {p['total']:.2f} s, peak RSS {p['peak_mb']:.0f} MiB")
        print_agreement(d, p)


def print_agreement(d, p):
    """The Dask fit ``d`` against the pandas fit ``p``: llf, fixed effects in SEs, theta."""
    dpar = np.max(np.abs(np.subtract(d["params"], p["params"])) / np.asarray(p["bse"]))
    print(f"  agreement: llf {d['llf']:.9f} vs {p['llf']:.9f} (diff {d['llf'] - p['llf']:.2e}); "
          f"fixed effects {dpar:.2e} SE; theta max rel "
          f"{np.max(np.abs(np.subtract(d['theta'], p['theta'])) / np.abs(p['theta'])):.2e}")


def report_glmm(args, recs):
    d, t = recs["dask"], recs["dask"]["timings"]
    print(f"{args.family} GLMM (Laplace), LocalCluster of 2 worker processes "
          f"({args.worker_memory} each), {d['npartitions']} partitions")
    print(f"  pass 1 (levels)               {t['levels_pass']:8.2f} s")
    print(f"  template model                {t['template']:8.2f} s")
    print(f"  pass 2 (rows persisted)       {t['rows_pass']:8.2f} s")
    print(f"  fit                           {d['fit']:8.2f} s  ({d['nfev']} evaluations, "
          f"{d['passes_fit']} passes: {d['fit'] / max(d['passes_fit'], 1):.3f} s per pass, "
          f"{d['passes_fit'] / max(d['nfev'], 1):.1f} per evaluation)")
    print(f"  total                         {d['build'] + d['fit']:8.2f} s; client peak RSS "
          f"{d['client_peak_mb']:.0f} MiB")
    if "pandas" in recs:
        p = recs["pandas"]
        print(f"pandas in memory: {p['total']:.2f} s ({p['nfev']} evaluations), peak RSS "
              f"{p['peak_mb']:.0f} MiB")
        print_agreement(d, p)


if __name__ == "__main__":
    main()
