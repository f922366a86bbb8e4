"""patsy's ``build_design_matrices`` for designs made of numeric columns only, without patsy.

When every factor of every piece of a formula is a numeric column named as it is (sleepstudy's
``Reaction ~ Days + (Days | Subject)``: ``Reaction`` and ``Days``), each column of each design
matrix is the intercept's ones or a product of such columns, and patsy's general machinery
(factor evaluation, NA handling over pandas-aware checks, subterm column combinations) costs
~0.25 ms of a ~1 ms build.  :func:`numeric_matrices` makes the same matrices from the same
values with the same operations (a column set to 1 and multiplied in place by each factor's
values in the subterm's order, rows with a NaN in any factor dropped), so they are equal bit
for bit; anything else (a categorical, a function or transform of a column, a factor of more
than one column) is left to patsy.
"""
from __future__ import annotations

import numpy as np

__all__ = ["numeric_matrices", "ENABLED"]

#: tests turn it off to compare with patsy's own build
ENABLED = True


def _values(infos, store, bare):
    """factor -> its values (1-D numeric arrays, from ``store``), or None when a factor is not a
    bare numeric column patsy would read as one."""
    values = {}
    for info in infos:
        for factor, fi in info.factor_infos.items():
            if factor in values:
                continue
            code = getattr(factor, "code", None)
            state = fi.state or {}
            if fi.type != "numerical" or fi.num_columns != 1 or code is None or \
                    bare.get(code) != code or state.get("eval_code") != code or \
                    state.get("transforms"):
                return None
            v = store[code]
            if not (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iuf"):
                return None
            values[factor] = v
    return values


def numeric_matrices(infos, store, na, bare):
    """The matrices ``build_design_matrices(infos, store, NA_action=na)`` gives (as plain
    arrays), or None where a factor is not a bare numeric column (``bare``: the plan's factor
    code -> column).  ``na`` (:class:`~.patsy_pass.RecordingNA`) gets the mask of rows
    with a NaN in some factor, as patsy's NA handling gives it."""
    if not ENABLED:
        return None
    values = _values(infos, store, bare)
    if not values:
        return None
    n = store.nrows
    if any(v.shape[0] != n for v in values.values()):
        return None
    mask = np.zeros(n, dtype=bool)
    for v in values.values():
        if v.dtype.kind == "f":
            mask |= np.isnan(v)
    na.mask = mask
    if mask.any():
        good = ~mask
        values = {f: v[good] for f, v in values.items()}
        n = int(np.count_nonzero(good))
    mats = []
    for info in infos:
        m = np.empty((n, len(info.column_names)))
        j = 0
        for subterms in info.term_codings.values():
            for sub in subterms:
                if sub.num_columns != 1:
                    return None
                col = m[:, j]
                col[...] = 1
                for f in sub.factors:
                    col *= values[f]
                j += 1
        if j != m.shape[1]:
            return None
        mats.append(m)
    return mats
