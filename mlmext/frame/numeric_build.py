"""patsy's ``build_design_matrices`` for designs made of numeric columns only, without patsy.

When every factor of every piece of a formula is a numeric column named as it is (sleepstudy's
``Reaction ~ Days + (Days | Subject)``: ``Reaction`` and ``Days``), each column of each design
matrix is the intercept's ones or a product of such columns, and patsy's general machinery
(factor evaluation, NA handling over pandas-aware checks, subterm column combinations) costs
~0.25 ms of a ~1 ms build.  :func:`numeric_matrices` makes the same matrices from the same
values with patsy's operations (a column set to 1 and multiplied in place by each factor's
values in the subterm's order -- here set to the first factor's values, which 1 times them is
bit for bit -- rows with a NaN in any factor dropped), so they are equal bit for bit; anything
else (a categorical, a function or transform of a column, a factor of more than one column) is
left to patsy.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["numeric_matrices", "ENABLED", "MAX_RECIPES"]

#: tests turn it off to compare with patsy's own build
ENABLED = True


_any = np.logical_or.reduce      # (ndarray.any's Python wrapper costs as much as the test)
_sum = np.add.reduce

#: recipes kept (see :func:`_recipe`)
MAX_RECIPES = 64
_recipes = {}


def _make_recipe(infos, bare):
    """``(factors, layouts)``: each factor with its column (every factor a bare numeric column
    patsy reads as one, else None), and per matrix its number of columns and each column's
    factors in the subterm's order (None when a subterm has other than one column)."""
    factors = {}
    for info in infos:
        for factor, fi in info.factor_infos.items():
            if factor in factors:
                continue
            code = getattr(factor, "code", None)
            state = fi.state or {}
            if fi.type != "numerical" or fi.num_columns != 1 or code is None or \
                    bare.get(code) != code or state.get("eval_code") != code or \
                    state.get("transforms"):
                return None
            factors[factor] = code
    layouts = []
    for info in infos:
        cols = []
        for subterms in info.term_codings.values():
            for sub in subterms:
                if sub.num_columns != 1:
                    return tuple(factors.items()), None
                cols.append(tuple(sub.factors))
        if len(cols) != len(info.column_names):
            return tuple(factors.items()), None
        layouts.append((len(cols), tuple(cols)))
    return tuple(factors.items()), tuple(layouts)


def _recipe(infos, bare):
    """:func:`_make_recipe`, once per (infos, bare) pair of objects: both are the design cache's
    and the plan cache's, never changed, and reading patsy's objects again costs ~30 us of a
    build after a garbage collection (their memory is out of the CPU caches)."""
    key = (id(infos), id(bare))
    hit = _recipes.get(key)
    if hit is not None and hit[0] is infos and hit[1] is bare:
        return hit[2]
    recipe = _make_recipe(infos, bare)
    if len(_recipes) >= MAX_RECIPES:
        _recipes.clear()
    _recipes[key] = (infos, bare, recipe)         # (the objects kept: their ids stay theirs)
    return recipe


def numeric_matrices(infos, store, na, bare):
    """The matrices ``build_design_matrices(infos, store, NA_action=na)`` gives (as plain
    arrays), or None where a factor is not a bare numeric column (``bare``: the plan's factor
    code -> column).  ``na`` (:class:`~.patsy_pass.RecordingNA`) gets the mask of rows
    with a NaN in some factor, as patsy's NA handling gives it, or None when no row has one."""
    if not ENABLED:
        return None
    recipe = _recipe(infos, bare)
    if recipe is None or not recipe[0]:
        return None
    factors, layouts = recipe
    values = {}
    for factor, code in factors:
        v = store[code]
        if not (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iuf"):
            return None
        values[factor] = v
    n = store.nrows
    if any(v.shape[0] != n for v in values.values()):
        return None
    mask = None
    for v in values.values():
        # (a NaN shows in the column's sum: complete columns, the usual case, make no mask)
        if v.dtype.kind == "f" and math.isnan(_sum(v)):
            mask = np.isnan(v) if mask is None else mask | np.isnan(v)
    na.mask = mask                           # (None: no row has a NaN)
    if layouts is None:
        return None
    if mask is not None and _any(mask):
        good = ~mask
        values = {f: v[good] for f, v in values.items()}
        n = int(np.count_nonzero(good))
    mats = []
    for ncols, cols in layouts:
        m = np.empty((n, ncols))
        for j, fs in enumerate(cols):
            col = m[:, j]
            if not fs:
                col[...] = 1                 # the intercept
                continue
            col[...] = values[fs[0]]         # (what 1 times them is, bit for bit)
            for f in fs[1:]:
                col *= values[f]
        mats.append(m)
    return mats
