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
