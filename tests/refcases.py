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
        for col, spec in json.load(open(lv)).items():
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


def check_varcorr(vc, ref, strip_ref_suffix=False):
    """``varcorr()`` against R's ``as.data.frame(VarCorr(fit))`` rows in ``ref["varcorr"]``:
    SDs within 0.2 % (+ 1e-6), correlations within 0.01.  lme4 names repeated grouping factors
    ``g.1``, ``g.2`` (``(x || g)``); ``strip_ref_suffix`` drops that suffix from R's names."""
    mine = {}
    for _, r in vc.iterrows():
        mine.setdefault((group_key(r["grp"].split(".")[0]), norm(r["var1"]), norm(r["var2"])), []).append(r["sdcor"])
    for r in ref["varcorr"]:
        grp = r["grp"].split(".")[0] if strip_ref_suffix and r["grp"][-2:-1] == "." else r["grp"]
        key = (group_key(grp), norm(r["var1"]), norm(r["var2"]))
        assert key in mine, (key, list(mine))
        got = min(mine[key], key=lambda v: abs(v - r["sdcor"]))
        if r["var2"]:
            assert abs(got - r["sdcor"]) < 0.01
        else:
            assert abs(got - r["sdcor"]) <= 2e-3 * max(abs(r["sdcor"]), 1e-3) + 1e-6
