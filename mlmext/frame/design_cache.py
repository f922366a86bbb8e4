"""patsy's design infos of a formula, learned once per kind of data and reused.

Learning the design infos (``design_matrix_builders``: sniffing each factor's type and levels,
laying out the columns) is most of the one-pass build of a small model (sleepstudy: ~0.4 ms of
~2.4 ms).  When every factor of a formula is a plain column name, what patsy learns depends only
on each column's kind: a number column gives one numerical column whatever its values, a boolean
the levels (False, True), a pandas ``Categorical`` its categories (the store has dropped the
unused ones already).  The infos are then a function of (the termlists, those kinds) -- the
termlists keyed by the formula texts they are parsed from (:attr:`.patsy_pass.Plan.source`) --
and :func:`design_infos` keeps them for the next model of the same formula on data of the same kinds
(a simulation, a bootstrap, a refit through the formula, a second model on one data set).

Anything else -- a function or transform of a column (``np.log(x)``, ``center(x)``, ``C(x)``,
whose levels or state come from the values), a string or object column (levels from the
values), a categorical with many categories, the pandas mode -- is learned afresh each time.
The infos are immutable (patsy's ``DesignInfo``); the cache holds at most :data:`MAX_ENTRIES`.
"""
from __future__ import annotations

import ast
import functools
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd

from ..immutable_cache import per_object
from .factor_code import resolve

__all__ = ["design_infos", "clear", "MAX_ENTRIES", "MAX_CATEGORIES"]

#: formulas x data kinds kept
MAX_ENTRIES = 64
#: categoricals with more categories are not keyed (hashing their labels is not free)
MAX_CATEGORIES = 2000

_cache = OrderedDict()
_lock = threading.Lock()
#: tests turn it off to compare with patsy's own learning
ENABLED = True


def clear():
    """Forget every design info kept."""
    with _lock:
        _cache.clear()


def _categories_key(cats):
    return str(cats.dtype), tuple(cats.tolist())


def _column_kind(v):
    """What patsy learns from a plain column, as a hashable key, or None (from its values)."""
    if isinstance(v, pd.Categorical):
        cats = v.categories
        if len(cats) > MAX_CATEGORIES:
            return None
        # (the categories' labels read once per Index object: it is immutable)
        return ("categorical", v.ordered) + per_object(_categories_key, cats)
    if isinstance(v, np.ndarray) and v.ndim == 1:
        if v.dtype.kind == "b":
            return ("bool",)
        if v.dtype.kind in "iuf":
            return ("number", v.dtype.str)
    return None


@functools.lru_cache(maxsize=256)
def _cbind_names(code):
    """The column names of each argument of ``cbind(a, b - a, ...)``: a tuple per argument, or
    None for any other code.  Arguments are names, numbers and ``+ - * /`` of them, each with
    a name (so one value per row)."""
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "cbind" and node.args and not node.keywords):
        return None
    out = []
    for arg in node.args:
        names = []
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Name):
                names.append(sub.id)
            elif isinstance(sub, ast.Constant):
                if not isinstance(sub.value, (int, float)) or isinstance(sub.value, bool):
                    return None
            elif not isinstance(sub, (ast.BinOp, ast.UnaryOp, ast.Load, ast.Add, ast.Sub,
                                      ast.Mult, ast.Div, ast.USub, ast.UAdd)):
                return None
        if not names:
            return None
        out.append(tuple(names))
    return tuple(out)


def _cbind_kind(plan, code, store):
    """mlmext's ``cbind`` of number columns (:func:`_cbind_names`): a float matrix with one
    column per argument whatever the values, so patsy learns one numerical factor of that many
    columns; None otherwise (``cbind`` a column or the caller's, a name not a column)."""
    args = _cbind_names(code)
    if args is None:
        return None
    # mlmext.base.cbind (named, not imported: base imports this package)
    obj = resolve(("cbind",), store.labels, plan.env.namespace)
    if (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) != \
            ("mlmext.base", "cbind"):
        return None
    kinds = []
    for name in sorted({n for names in args for n in names}):
        if name not in store.labels:
            return None
        kind = _column_kind(store[name])
        if kind is None or kind[0] != "number":
            return None
        kinds.append((name, kind))
    return ("cbind", len(args), tuple(kinds))


def _key(plan, store):
    """The cache key of a plan on a store, or None when the design infos could depend on values."""
    if plan.pandas or not plan.rowwise or plan.source is None:
        return None
    kinds = []
    for code in plan.codes:
        col = plan.bare.get(code)
        if col is None or code != col:          # a function of the column, C(x), Q("x") ...
            kind = _cbind_kind(plan, code, store)
            if kind is None:
                return None
            kinds.append((code, kind))
            continue
        kind = _column_kind(store[col])
        if kind is None:
            return None
        kinds.append((col, kind))
    # (the termlists are a function of the plan's source texts: cheaper to hash)
    return (plan.source, tuple(kinds))


def design_infos(plan, store, learn):
    """``learn()`` (patsy's design infos of ``plan`` on ``store``), or the infos it gave for an
    earlier store of the same kinds (see the module docstring)."""
    key = _key(plan, store) if ENABLED else None
    if key is None:
        return learn()
    with _lock:
        infos = _cache.get(key)
        if infos is not None:
            _cache.move_to_end(key)
            return infos
    infos = learn()
    with _lock:
        _cache[key] = infos
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return infos
