"""Before / after: the benchmark scripts' mlmext fit times for two checkouts, in one run.

Run from the repository root:

    python benchmarks/compare_revisions.py BEFORE [--quick] [--rounds 2] [--repeat 3]

BEFORE is a git revision (e.g. the last landed commit); "after" is this working tree.  The
revision's ``mlmext/`` is exported to a temporary directory and each script
(``bench_lmm.py``, ``bench_glmm.py``, ``bench_clmm.py``, and with ``--scripts
optimum_suite.py`` the optimum suite's default fits, from this tree, so both sides run the
same cases) is run with ``MLMEXT_CODE`` pointing at one checkout or the other,
alternating before / after ``--rounds`` times so that the machine's load hits both alike.
Each case's time is the best over all runs; the table shows after / before (below 1: faster).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = ["bench_lmm.py", "bench_glmm.py", "bench_clmm.py"]


def export(rev, dest):
    """``mlmext/`` of git revision ``rev`` into ``dest``."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "mlmext"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def run(script, code, csv, args):
    cmd = [sys.executable, os.path.join(HERE, script), "--repeat", str(args.repeat), "--csv", csv]
    if args.quick:
        cmd.append("--quick")
    if script == "optimum_suite.py":
        cmd.append("--timing-only")      # its default fits' times, not the comparison
    env = dict(os.environ, MLMEXT_CODE=code)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{script} failed with {code}:\n{out.stderr[-2000:]}")
    return pd.read_csv(csv).set_index("case")["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="git revision to compare with (e.g. a commit hash)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scripts", nargs="*", default=SCRIPTS)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export(args.before, tmp)
        for script in args.scripts:
            best = {"before": None, "after": None}
            for k in range(args.rounds):
                for side, code in (("before", tmp), ("after", ROOT)):
                    t = run(script, code, os.path.join(tmp, f"{side}.csv"), args)
                    best[side] = t if best[side] is None else best[side].combine(t, min)
            for case in best["after"].index:
                b = best["before"].get(case, float("nan"))
                a = best["after"][case]
                rows.append({"script": script, "case": case, "before_s": b, "after_s": a,
                             "after/before": a / b})
    tab = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        print(f"mlmext fit times, best of {args.rounds} rounds x {args.repeat} repeats; "
              f"before = {args.before}, after = working tree")
        print(tab.to_string(index=False))
    r = tab["after/before"].dropna()
    print(f"\nafter/before: median {r.median():.3f}, geometric mean "
          f"{float(r.prod() ** (1 / len(r))):.3f}, max {r.max():.3f} ({len(r)} cases)")


if __name__ == "__main__":
    main()
