"""The scales of estimated marginal means: emmeans' weights for averaging over the reference
grid, the back-transformation of a transformed LMM response (``np.log(y) ~ ...``: emmeans'
``type = "response"``) and ``regrid`` (means and contrasts on the response scale).

Weights (emmeans' ``weights =``) use the grid's cell counts ``.wgt.``: the number of fitted rows
with each combination of the grid's factor levels (numeric covariates are not counted; a
covariate given several values in ``at=`` repeats the counts).  An LMM's prior weights count
only where emmeans (1.8.4) counts them: when its fixed part calls a function (``np.log(x)``,
``C(g)``, ``offset()``) or has ``**`` (R's ``^``), emmeans rebuilds the rows with ``model.frame``, which keeps them; a
plain formula's rows come from lme4's frame without them (:func:`row_counts`).
With ``n[a, c]`` the count of the combination ``a`` of the variables averaged over within the
cell ``c`` of the ``specs`` / ``by`` variables, the mean of ``c`` weights ``a`` by

* ``"equal"``: 1;
* ``"proportional"``: ``sum_c n[a, c]``, the same for every cell;
* ``"outer"``: the product of the marginal totals of each variable averaged over;
* ``"cells"``: ``n[a, c]`` (the ordinary mean of the cell's fitted rows' predictions);
* ``"flat"``: 1 where ``n[a, c] > 0``, else 0 (empty cells left out);
* a sequence of numbers, one per combination ``a`` (first variable varying fastest).
"""
from __future__ import annotations

import re

import numpy as np

WEIGHTS = ("equal", "proportional", "outer", "cells", "flat")


def row_counts(model):
    """What each fitted row of an LMM adds to ``.wgt.``: its prior weight where the fixed part
    has a function call or an offset (emmeans' ``.has.fcns``), else 1."""
    parsed = model.formula_info["parsed"]
    w = np.asarray(model.weights, dtype=float)
    # (emmeans' .has.fcns: any name( call and any operator but ~ + - * / : ( |, so R's ^ (our
    # **) and %in% count too)
    if parsed.offsets or re.search(r"[A-Za-z_][\w.]*\s*\(|\*\*|%in%", str(parsed.fixed_rhs)):
        return w
    return np.ones(w.size)


def cell_counts(data, grid, cats, wts):
    """``.wgt.``: the sum of ``wts`` over the rows of ``data`` matching each grid row on the
    factor columns ``cats``."""
    cats = [c for c in grid.columns if c in cats and c in data.columns]
    if not cats:
        return np.ones(len(grid))
    keys = list(zip(*[data[c].astype(object).to_numpy() for c in cats]))
    totals = {}
    for k, w in zip(keys, wts):
        totals[k] = totals.get(k, 0.0) + float(w)
    gkeys = zip(*[grid[c].astype(object).to_numpy() for c in cats])
    return np.array([totals.get(k, 0.0) for k in gkeys])


def weight_matrix(weights, counts, n_cells, dims):
    """The weights of the grid rows, shape ``(n_avg, n_cells)``, each column summing to 1.

    ``counts`` are the grid rows' ``.wgt.`` (grid order: the cells vary fastest, then the
    averaged variables, whose numbers of values are ``dims``)."""
    n = np.asarray(counts, dtype=float).reshape(-1, n_cells)
    n_avg = n.shape[0]
    if np.all(n == 0):                         # as emmeans: no counts at all, equal weights
        n = n + 1
    if isinstance(weights, str):
        if weights == "equal":
            W = np.ones_like(n)
        elif weights == "proportional":
            W = np.repeat(n.sum(axis=1, keepdims=True), n_cells, axis=1)
        elif weights == "outer":               # product of the averaged variables' margins
            tab = n.sum(axis=1).reshape(dims, order="F")
            w = np.ones(tuple(dims))
            for d in range(len(dims)):
                margin = tab.sum(axis=tuple(i for i in range(len(dims)) if i != d))
                shape = [1] * len(dims)
                shape[d] = dims[d]
                w = w * margin.reshape(shape)
            W = np.repeat(w.ravel(order="F").reshape(-1, 1), n_cells, axis=1)
        elif weights == "cells":
            W = n
        else:                                  # flat
            W = (n > 0).astype(float)
    else:
        w = np.asarray(weights, dtype=float).ravel()
        if w.size != n_avg:
            raise ValueError(f"weights: {w.size} numbers given for {n_avg} combinations of "
                             "the variables averaged over")
        if not np.all(np.isfinite(w)) or w.sum() <= 1e-8:
            raise ValueError("weights must be finite numbers with a positive sum")
        W = np.repeat(w.reshape(-1, 1), n_cells, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return W / W.sum(axis=0, keepdims=True)     # a cell with no rows: NaN, as emmeans


def check_weights(weights):
    if isinstance(weights, str):
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS} or a sequence of numbers, got "
                             f"{weights!r}")
        return weights
    try:
        return np.asarray(weights, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"weights must be one of {WEIGHTS} or a sequence of numbers, got "
                         f"{weights!r}") from None


# ----------------------------------------------------------------------- response transforms
class ResponseTransform:
    """A transformation of the response, in the interface of a statsmodels link
    (``inverse``, ``inverse_deriv``); ``base`` is the base of a log (contrasts become ratios)."""

    def __init__(self, name, inverse, inverse_deriv, base=None):
        self.name, self.base = name, base
        self.inverse, self.inverse_deriv = inverse, inverse_deriv


_TRANSFORMS = {
    "log": lambda: ResponseTransform("log", np.exp, np.exp, np.e),
    "log2": lambda: ResponseTransform("log2", lambda e: 2.0 ** e,
                                      lambda e: np.log(2.0) * 2.0 ** e, 2.0),
    "log10": lambda: ResponseTransform("log10", lambda e: 10.0 ** e,
                                       lambda e: np.log(10.0) * 10.0 ** e, 10.0),
    "log1p": lambda: ResponseTransform("log1p", np.expm1, np.exp),
    "sqrt": lambda: ResponseTransform("sqrt", np.square, lambda e: 2.0 * e),
}


def response_transform(endog_name):
    """The transformation of a response written ``np.log(y)`` (also ``log2``, ``log10``,
    ``log1p``, ``sqrt``; ``numpy.`` or no prefix), None for an untransformed response;
    NotImplementedError naming it for any other expression."""
    name = str(endog_name)
    if re.fullmatch(r"[\w.]+", name):
        return None
    m = re.fullmatch(r"\s*(?:np\.|numpy\.)?(\w+)\(\s*[\w.]+\s*\)\s*", name)
    if m and m.group(1) in _TRANSFORMS:
        return _TRANSFORMS[m.group(1)]()
    raise NotImplementedError(f"the response {name!r} is transformed in a way emmeans' back-"
                     f"transformation here does not know; known: np.log, np.log2, np.log10, "
                     f"np.log1p, np.sqrt of a column (use type='link')")


def link_transform(family):
    """A GLMM's link as a :class:`ResponseTransform` (log and logit differences become ratios
    and odds ratios on the response scale, as emmeans)."""
    link = family.link
    name = type(link).__name__.lower()
    return ResponseTransform(name, link.inverse, link.inverse_deriv,
                             np.e if name in ("log", "logit") else None)


def regrid_df(df_means, C):
    """emmeans' df of contrasts ``C`` of regridded means: the means' mean df when their df
    differ by less than 0.01, else the smallest df of the means a contrast uses."""
    df_means = np.asarray(df_means, dtype=float)
    if np.all(np.isinf(df_means)) or np.ptp(df_means) < 0.01:
        return np.full(C.shape[0], np.mean(df_means))
    return np.array([np.min(df_means[np.abs(c) > 1e-12]) for c in np.atleast_2d(C)])


def regridded(info, tran):
    """The fields of regridded means (emmeans' ``regrid``): ``g^-1(m)``, delta-method SEs, the
    rows ``g'(m) L`` on beta for contrasts, and the df rule of :func:`regrid_df`."""
    d = tran.inverse_deriv(info.est)
    df = np.asarray(info.df, dtype=float)
    return dict(est=tran.inverse(info.est), se=np.abs(d) * info.se, L=d[:, None] * info.L,
                tran=tran, type="response", regridded=True, regrid_df=df,
                df=regrid_df(df, np.eye(len(df))))
