"""Predictive variance of new observations of a linear mixed model (for log scores)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._args import check_flag
from ._common import _raw, _require_independent, _require_lmm


def predictive_variance(res, data, re=True, weights=None):
    """Variance of a new observation of an LMM at each row of ``data``, given the estimates.

    ``sigma^2 / weight + z' V z`` for the row's random-effects covariates ``z`` of each
    grouping factor, where ``V`` is

    * ``re=True``: the conditional covariance of that level's random effects given the data
      (lme4's ``condVar``, the level's whole block) for levels seen in fitting, and the
      random-effects covariance for new levels -- the spread around ``predict(re=True)``;
    * ``re=False``: the random-effects covariance -- the marginal variance around
      ``predict(re=False)``.

    The estimates of beta and theta are taken as known, and for crossed grouping factors
    the conditional covariances between factors are left out (each factor's block only).

    Parameters
    ----------
    res : LMMResults
    data : pandas.DataFrame
        New rows with the formula's columns.
    re : bool
    weights : array_like, optional
        Prior weights of the new rows (1 by default).

    Returns
    -------
    pandas.Series
        Indexed like ``data``; NaN where a variable is missing.
    """
    check_flag("re", re)             # (re='False' gave the re=True variances)
    r = _raw(res)
    _require_lmm(r, "predictive_variance")
    # (a new row of a seen group is correlated with that group's fitted residuals)
    _require_independent(r, "predictive_variance")
    model = r.model
    des = model.re_design
    _, terms, _ = model._new_design(data, re=True)
    n = len(data)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights has {w.size} values for {n} rows of data")
    out = r.sigma ** 2 / w
    cvs = r._block_condvar() if re else None
    for bi, (blk, lam) in enumerate(zip(des.blocks, des.lambdas(r.theta))):
        pos = [des.terms.index(t) for t in blk.terms]
        Z = np.hstack([terms[i][0] for i in pos])        # the block's columns, in b's order
        codes = terms[pos[0]][1]                          # the terms of a block share its levels
        cov = r.sigma ** 2 * lam @ lam.T
        v = np.einsum("ij,jk,ik->i", Z, cov, Z)
        if re:
            seen = codes >= 0
            v[seen] = np.einsum("ij,ijk,ik->i", Z[seen], cvs[bi][codes[seen]], Z[seen])
        out = out + v
    return pd.Series(out, index=getattr(data, "index", None), name="predictive_variance")
