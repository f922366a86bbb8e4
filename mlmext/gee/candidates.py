"""The working correlations gee_select compares: from its ``cov_structs`` argument to named factories.

Names (``"exchangeable"``, ``"ar1"``, ...) map to the structures of
:mod:`mlmext.gee.covstructs` or statsmodels; each candidate is a factory that returns a
fresh ``CovStruct`` per fit, and independence always comes first.
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import pandas as pd
from statsmodels.genmod import cov_struct as sm_cov

from .covstructs import PairwiseAR1, PairwiseExchangeable, PairwiseUnstructured


_STRUCTURES = {
    "independence": lambda ctx: sm_cov.Independence(),
    "exchangeable": lambda ctx: PairwiseExchangeable(),
    "ar1": lambda ctx: PairwiseAR1(),
    "unstructured": lambda ctx: PairwiseUnstructured(),
    "stationary": lambda ctx: _make_stationary(ctx),
    "nested": lambda ctx: _make_nested(ctx),
}


def _make_stationary(ctx):
    """statsmodels' Stationary with every lag the data have."""
    frame = ctx["frame"]
    if not ctx["has_time"]:
        return sm_cov.Stationary(max_lag=int(frame.groupby("__gee_groups").size().max()) - 1, grid=True)
    t = frame["__gee_time"].to_numpy(dtype=float)
    if not np.allclose(t, np.round(t)):
        raise ValueError(f"'stationary' needs integer values of time {ctx['time_name']!r}")
    span = frame.groupby("__gee_groups")["__gee_time"].agg(lambda s: s.max() - s.min()).max()
    return sm_cov.Stationary(max_lag=int(span), grid=False)


def _make_nested(ctx):
    if ctx["dep_data"] is None:
        raise ValueError("'nested' needs dep_data= (the nested grouping columns, e.g. "
                         "['classroom'] or '0 + classroom')")
    return sm_cov.Nested()


def _parse_structures(cov_structs, ctx):
    """[(name, factory)], independence first; each factory returns a fresh CovStruct."""
    if cov_structs is None:
        cov_structs = ["independence", "exchangeable", "ar1", "unstructured"]
    if isinstance(cov_structs, (str, sm_cov.CovStruct)):
        cov_structs = [cov_structs]
    if not isinstance(cov_structs, (list, tuple, dict, pd.Index, np.ndarray)):
        raise ValueError("cov_structs must be a name, a CovStruct instance, a list of them or a dict "
                         f"{{name: structure}}, got {cov_structs!r}")
    items = list(cov_structs.items()) if isinstance(cov_structs, dict) else [(None, c) for c in cov_structs]
    out, used, indep = [], set(), None
    for name, spec in items:
        if isinstance(spec, str):
            key = spec.lower()
            if key not in _STRUCTURES:
                raise ValueError(f"unknown working correlation {spec!r}; use one of "
                                 f"{list(_STRUCTURES)} or a statsmodels CovStruct instance")
            make = functools.partial(_STRUCTURES[key], ctx)
            make()   # a structure that cannot apply to these data raises here, before any fit
            name, is_indep = name or key, key == "independence"
        elif isinstance(spec, sm_cov.CovStruct):
            make = functools.partial(copy.deepcopy, spec)
            name, is_indep = name or type(spec).__name__.lower(), isinstance(spec, sm_cov.Independence)
        else:
            hint = (f"; write {spec.__name__}() with parentheses"
                    if isinstance(spec, type) and issubclass(spec, sm_cov.CovStruct) else "")
            raise ValueError(f"cov_structs entries must be names or CovStruct instances, got {spec!r}{hint}")
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        if is_indep and indep is None:
            indep = (name, make)
        else:
            out.append((name, make))
    return [indep or ("independence", functools.partial(_STRUCTURES["independence"], ctx))] + out
