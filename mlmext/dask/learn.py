"""Pass 1 over a Dask DataFrame: the formula's state, and the model that holds it.

The formula engine learns its state from the rows it sees: the levels of each grouping factor
(and of each interaction ``a:b``, only the combinations that occur), the levels of categorical
predictors, and the columns of the fixed design.  One pass over the partitions collects, on the
complete rows, every combination of the grouping and categorical columns that occurs, and the
first rows of each partition.  The *template* is then built in memory, by the ordinary
``from_formula``, on a small frame that holds exactly those combinations (numeric columns filled
from the real rows): its grouping levels, categorical levels, column names and specs are those
of the full data, and the accumulation pass (:mod:`.accumulate`) evaluates each partition
through them, as predictions evaluate new data.

Not learned here: stateful transforms (``center(x)``, ``standardize(x)``, splines) would learn
their state from the small frame, so they raise; transform the columns first.
"""
from __future__ import annotations

import re
import time
import warnings

import numpy as np
import pandas as pd

from ..frame import names_in, parse_formula, quote_names, used_columns

__all__ = ["FormulaState", "Laps", "learn", "ship", "tree_reduce", "check_rows_args"]

#: rows of each partition kept as real values for the numeric columns of the template frame
SAMPLE_ROWS = 2000
#: patsy's stateful transforms: their state would come from the template frame
_STATEFUL = re.compile(r"\b(center|standardize|scale|bs|cr|cc|te|CubicRegressionSpline)\s*\(")
_CATEGORICAL_CALL = re.compile(r"\bC\(")


def ship(obj):
    """``obj`` as one object of the task graph, sent to the workers once (scattered when a
    distributed client is running: not embedded in the graph)."""
    try:
        from distributed import default_client
        client = default_client()
    except (ImportError, ValueError):            # no distributed, or no client: local scheduler
        client = None
    if client is not None:
        return client.scatter(obj, broadcast=True, hash=False)
    import dask
    return dask.delayed(obj, pure=False, traverse=False)


class Laps:
    """Wall-clock seconds of each step of a model's build (``times``: step name -> seconds)."""

    def __init__(self):
        self.times = {}
        self._last = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.times[name], self._last = now - self._last, now


def tree_reduce(parts, combine, fan_in=4):
    """Combine Dask delayed values in a tree on the workers (no step holds them all)."""
    import dask
    parts = list(parts)
    while len(parts) > 1:
        parts = [dask.delayed(_combine_all)(combine, *parts[i:i + fan_in])
                 for i in range(0, len(parts), fan_in)]
    return parts[0]


def _combine_all(combine, *values):
    out = values[0]
    for v in values[1:]:
        out = combine(out, v)
    return out


class FormulaState:
    """What pass 1 learned: the columns used, the column groups whose combinations the template
    frame holds, and the frame itself."""

    def __init__(self, formula, parsed, used, groups, weights, offset):
        self.formula = formula
        self.parsed = parsed
        self.used = used
        self.groups = groups
        self.weights = weights
        self.offset = offset
        self.frame = self.spec_frame = None
        self.columns = None            # the data's column names, for messages


def _first_argument(expr, start):
    """The first argument of the call whose parenthesis opens just before ``start``."""
    depth = 0
    for i in range(start, len(expr)):
        ch = expr[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return expr[start:i]
            depth -= 1
        elif ch == "," and depth == 0:
            return expr[start:i]
    return expr[start:]


def _column_groups(parsed, meta, used):
    """Columns whose value combinations the template must hold: the factors of each grouping
    term joined (``a/b`` gives the ``a:b`` combinations), then each categorical predictor."""
    groups = []
    for bar in parsed.bars:
        cols = set(bar.factors)
        for g in [g for g in groups if g & cols]:
            groups.remove(g)
            cols |= g
        groups.append(cols)
    grouped = set().union(*groups) if groups else set()
    for c in _categorical_predictors(parsed, meta, used):
        if c not in grouped:
            groups.append({c})
    return [[c for c in used if c in g] for g in groups]


def _categorical_predictors(parsed, meta, used):
    """Used columns the formula engine reads as categorical (their levels shape the design):
    non-numeric and boolean columns, and any column inside ``C(...)``."""
    in_c = set()
    for expr in [parsed.fixed_rhs] + [b.lhs for b in parsed.bars]:
        for m in _CATEGORICAL_CALL.finditer(expr):
            in_c.update(names_in(_first_argument(expr, m.end())))
    out = []
    for c in used:
        dt = meta[c].dtype
        if not pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt) or str(c) in in_c:
            out.append(c)
    return out


def _spec_frame(parsed, frame, used):
    """The rows of the template frame the formula engine's specs can be rebuilt from (after
    unpickling, on a worker): every value of each column in the fixed part or a term's model
    matrix that is read as categorical, and a few more rows; the grouping levels are not in
    the specs.  A handful of rows instead of one per level of the largest grouping factor."""
    names = set()
    for expr in [parsed.response, parsed.fixed_rhs] + [b.lhs for b in parsed.bars]:
        names.update(names_in(expr))
    rows = set(range(min(64, len(frame))))
    for c in _categorical_predictors(parsed, frame, used):
        if str(c) in names:
            rows.update(frame.drop_duplicates(subset=[c]).index.tolist())
    return frame.loc[sorted(rows)].reset_index(drop=True)


def _check_args(ddf, meta, formula, weights, offset):
    for name, v in (("weights", weights), ("offset", offset)):
        if v is not None and not isinstance(v, str):
            raise TypeError(f"{name}= must name a column of the Dask DataFrame (an array cannot "
                            "be aligned with its partitions)")
        if isinstance(v, str) and v not in meta.columns:
            raise ValueError(f"unknown column {v!r} for {name}= (the data has columns "
                             f"{list(meta.columns)})")
    m = _STATEFUL.search(formula)
    if m:
        raise NotImplementedError(
            f"the stateful transform {m.group(1)}() learns its state from the rows, which a Dask "
            "fit evaluates partition by partition; add the transformed column to the Dask "
            "DataFrame first (e.g. ddf.assign(xc=ddf.x - ddf.x.mean()))")
    for c in meta.columns:
        dt = meta[c].dtype
        if isinstance(dt, pd.CategoricalDtype) and not ddf[c].cat.known:
            raise ValueError(f"column {c!r} is categorical with categories unknown to Dask; call "
                             f"ddf.categorize(columns=[{c!r}]) first (or convert it to strings)")


def _partition_summary(part, used, groups, weights, nsample, offset=None):
    """Combinations of each column group and the first rows, on the partition's complete rows."""
    part = part[used]
    ok = part.notna().all(axis=1)
    if weights is not None:
        ok &= part[weights] != 0                 # zero-weight rows are not observations
    part = part.loc[ok]
    for what, col in (("weights", weights), ("offset", offset)):
        # (here, before the template frame's extreme rows carry them: not missing, refused)
        if col is not None and pd.api.types.is_float_dtype(part[col]) \
                and not np.isfinite(part[col].to_numpy()).all():
            raise ValueError(f"the {what} column {col!r} has infinite values; infinite values "
                             "are not missing values: remove or recode them")
    return {"groups": [part[g].drop_duplicates() for g in groups], "sample": part.head(nsample),
            "extremes": _extreme_rows(part)}


def _extreme_rows(part):
    """The rows holding each numeric column's smallest and largest value: the template frame
    then has the data's range (a 0/1 response sorted by its value has both values in it, so
    the template's response checks are the data's)."""
    cols = [c for c in part.columns if pd.api.types.is_numeric_dtype(part[c])
            and not isinstance(part[c].dtype, pd.CategoricalDtype)]
    if not cols or len(part) == 0:
        return part.iloc[:0]
    pos = np.unique(np.concatenate([[np.argmin(part[c].to_numpy()), np.argmax(part[c].to_numpy())]
                                    for c in cols]))
    return part.iloc[pos]


def _merge_summaries(a, b):
    groups = [pd.concat([x, y], ignore_index=True).drop_duplicates() for x, y in zip(a["groups"], b["groups"])]
    sample = a["sample"]
    if len(sample) < SAMPLE_ROWS:
        sample = pd.concat([sample, b["sample"].head(SAMPLE_ROWS - len(sample))], ignore_index=True)
    extremes = _extreme_rows(pd.concat([a["extremes"], b["extremes"]], ignore_index=True))
    return {"groups": groups, "sample": sample, "extremes": extremes}


def learn(ddf, formula, weights=None, offset=None):
    """Pass 1: the formula state of ``ddf`` and the template frame that holds it.

    Returns
    -------
    FormulaState
        ``frame`` is a pandas DataFrame with every combination of each column group (and so
        every grouping level and categorical level of the complete rows), numeric columns taken
        from real rows, in a fixed pseudo-random arrangement (the same for the same data).
    """
    import dask
    meta = ddf._meta
    _check_args(ddf, meta, formula, weights, offset)
    parsed = parse_formula(quote_names(formula, meta.columns))
    used = used_columns(parsed, meta, weights, offset)
    groups = _column_groups(parsed, meta, used)
    state = FormulaState(formula, parsed, used, groups, weights, offset)
    state.columns = [str(c) for c in meta.columns]      # (for messages)
    parts = [dask.delayed(_partition_summary)(p, used, groups, weights, SAMPLE_ROWS, offset)
             for p in ddf.to_delayed()]
    summary = tree_reduce(parts, _merge_summaries).compute()
    # the extreme rows first: the frame below keeps every sample row
    sample = pd.concat([summary["extremes"], summary["sample"]], ignore_index=True)
    if len(sample) == 0:
        raise ValueError("no row of the data is complete (every row has a missing value in a "
                         f"column the model uses, {used}, or a zero weight)")
    sizes = [len(g) for g in summary["groups"]]
    n = max([len(sample), 64] + sizes)
    rng = np.random.default_rng(0)
    frame = sample.iloc[np.resize(np.arange(len(sample)), n)].reset_index(drop=True)
    for cols, uniq in zip(groups, summary["groups"]):
        try:                        # independent of the partitions' order where values sort
            uniq = uniq.sort_values(cols, kind="stable")
        except TypeError:
            pass
        uniq = uniq.reset_index(drop=True)
        pick = rng.permutation(np.resize(np.arange(len(uniq)), n))
        for c in cols:
            frame[c] = uniq[c].iloc[pick].reset_index(drop=True)
    state.frame = frame
    state.spec_frame = _spec_frame(parsed, frame, used)
    return state


def build_template(cls, state, env, kwargs):
    """The in-memory model of the template frame: the formula's specs and levels.

    Its data warnings (constant slopes) would describe the template frame, not the data, so
    they are not shown; :mod:`.model` checks the data through the cross-products.  A column
    the template drops as collinear raises: whether the data's own column is collinear too
    is not known here, and a Dask fit does not drop columns.
    """
    # the template frame has about one row per level: lme4's levels-versus-rows checks are
    # for the data, and the model checks them on its counts
    template_cls = type("Template" + cls.__name__, (cls,), {"_check_nlev_vs_nobs": False})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            model = template_cls.from_formula(state.formula, state.frame, weights=state.weights,
                                              offset=state.offset, eval_env=env, **kwargs)
        except ValueError as e:
            # the template frame holds the used columns only: name the data's own columns
            listed = f"(the data has columns {[str(c) for c in state.frame.columns]})"
            if listed not in str(e) or getattr(state, "columns", None) is None:
                raise
            raise ValueError(str(e).replace(listed, f"(the data has columns {state.columns})")) \
                from None
    for w in seen:
        if "rank deficient" in str(w.message):
            raise ValueError(f"the fixed-effects design is rank deficient ({w.message}); drop "
                             "the redundant columns (a Dask fit does not drop them as lme4 does)")
    return model


def check_rows_args(subset, missing):
    """The row arguments a Dask model's ``from_formula`` does not take (the LMM's and GLMM's)."""
    if subset is not None:
        raise NotImplementedError("subset= is not taken for Dask data; select the rows "
                                  "first (ddf[ddf.x > 0])")
    if missing != "drop":
        raise NotImplementedError("missing='raise' is not taken for Dask data (rows with a "
                                  "missing value are dropped and counted)")
