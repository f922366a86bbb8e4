"""A model on a design with more levels of a grouping factor (simr's ``extend``)."""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from .make import formula_design, make_lmer

__all__ = ["extend"]


def extend(res, along, n, seed=None):
    """The model at the parameters of ``res`` on a design with ``n`` levels of ``along``.

    As simr's ``extend(fit, along=, n=)`` for a grouping factor: the first ``n`` levels
    (in order of appearance) are kept when ``n`` is at most their number; otherwise new
    levels are added, level ``k`` (0-based, ``k >= m`` for ``m`` levels) copying the rows of
    level ``k mod m`` and named ``"<along>_new<k + 1>"``.  The other columns of the copied
    rows are kept as they are: a factor crossed with ``along`` (items shared by subjects)
    keeps its levels.  The model is made by :func:`make_lmer`, so the whole response is
    simulated from the parameters (``seed``).

    Parameters
    ----------
    res : LMMResults
        A linear mixed model fitted from a formula, or made by :func:`make_lmer`.
    along : str
        A column of the data (a grouping factor).
    n : int
        The number of levels of ``along`` in the new design.
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    LMMResults
        As :func:`make_lmer` returns (not fitted).
    """
    model, data, formula = formula_design(res, "extend")
    if along not in data.columns:
        raise ValueError(f"along={along!r} is not a column of the data ({list(data.columns)})")
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    levels = pd.unique(data[along])
    m = len(levels)
    if n <= m:
        new = data.loc[data[along].isin(levels[:n])]
    else:
        col = data[along].astype(object)
        parts = [data]
        for k in range(m, n):
            rows = data.loc[col == levels[k % m]].copy()
            rows[along] = f"{along}_new{k + 1}"
            parts.append(rows)
        new = pd.concat(parts, ignore_index=True)
        new[along] = new[along].astype(str)       # old and new level names, one type
        if new[along].nunique() != n:
            raise ValueError(f"the new level names of {along!r} clash with existing ones")
    names = list(model.exog_names)
    return make_lmer(formula, new.reset_index(drop=True),
                     pd.Series(np.asarray(res.fe_params, dtype=float), index=names),
                     theta=res.theta, sigma=res.sigma, reml=bool(res.reml), seed=seed)
