"""Pass 2 over a Dask DataFrame: each partition's cross-products, summed on the workers.

A partition's rows go through the template model as new data go through ``predict`` (its
specs and fitted levels; every level occurs in the template, so no row is unmatched); the
complete rows give ``(A11, A_r1, A_rr)`` exactly as the in-memory factor forms them
(:func:`mlmext.linalg.row_cross_products`), with ``A_rr`` kept sparse until the client (the
crossed blocks' part of it is mostly zero), plus what the checks and the optimizer's start
need: row counts, the sum of log weights, the response's range, ``X'X`` and each random-effects
column's sum of squares.
"""
from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from ..frame import evaluate, formula_manager
from ..linalg import row_cross_products
from .learn import ship, tree_reduce

__all__ = ["accumulate", "partition_rows"]


def partition_rows(template, part, state):
    """The model rows of one partition: ``(XY, weights, Z per term, codes per term, kept)``."""
    part = part[state.used]
    n_rows = len(part)
    ok = np.array(part.notna().all(axis=1), dtype=bool)       # writable (pandas may share)
    n_missing = int(n_rows - ok.sum())
    w = None
    if state.weights is not None:
        w_all = part[state.weights].to_numpy(dtype=float)
        if np.any(w_all[ok] < 0):
            raise ValueError(f"weights must be non-negative (min {np.min(w_all[ok]):g})")
        zero = ok & (w_all == 0)
        ok = ok & ~zero
        w = w_all[ok]
    sub = part.loc[ok]
    X, terms, off = template._new_design(sub, re=True)
    parsed = template.formula_info["parsed"]
    y = evaluate(formula_manager(), f"0 + {parsed.response}", sub.reset_index(drop=True),
                 template.formula_info.get("eval_env"), "the response").iloc[:, 0].to_numpy(dtype=float)
    for name, arr in (("the response", y), ("the fixed-effects design", X), ("the offset", off)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has non-finite values (after dropping rows with missing "
                             "values)")
    for t, (Z, codes) in zip(template.re_design.terms, terms):
        if len(codes) and codes.min() < 0:        # pass 1 saw every level: cannot happen
            raise RuntimeError(f"a level of {t.name!r} was not seen in the first pass")
    XY = np.column_stack([X, y - off])
    return XY, w, terms, dict(n_rows=n_rows, n_missing=n_missing,
                              n_zero=int(n_rows - n_missing - ok.sum()), index=sub.index,
                              offset=off, response=y)


def _row_blocks(template, terms):
    """The template's blocks holding this partition's rows (factor order)."""
    des = template.re_design
    by_term = {id(t): arrays for t, arrays in zip(des.terms, terms)}
    out = []
    for blk in des.blocks:
        b = copy.copy(blk)
        arrays = [by_term[id(t)] for t in blk.terms]
        b.X = np.hstack([Z for Z, _ in arrays]) if len(arrays) > 1 else arrays[0][0]
        b.codes = arrays[0][1]
        out.append(b)
    return out


def _partition_sums(part, template, state):
    XY, w, terms, counts = partition_rows(template, part, state)
    n = XY.shape[0]
    blocks = _row_blocks(template, terms)
    A11, A_r1, A_rr = row_cross_products(blocks[0], blocks[1:], XY, w, dense_rr=False)
    ww = np.ones(n) if w is None else w
    y = XY[:, -1]
    m1, q1 = A11.shape[:2]
    return {
        # sparse: a partition touches some of the first block's levels (the tree's partial
        # sums wait in the workers' memory)
        "A11": sparse.csr_matrix(A11.reshape(m1, q1 * q1)),
        "A_r1": sparse.csr_matrix(A_r1), "A_rr": sparse.csr_matrix(A_rr),
        "XtX": XY[:, :-1].T @ XY[:, :-1],
        "zsq": [np.sum(Z * Z, axis=0) for Z, _ in terms],
        "n": n, "n_rows": counts["n_rows"], "n_missing": counts["n_missing"],
        "n_zero": counts["n_zero"], "sumlogw": float(np.log(ww[ww > 0]).sum()),
        "ymin": float(y.min()) if n else np.inf, "ymax": float(y.max()) if n else -np.inf,
        "partitions": 1,
    }


def _add(a, b):
    out = {}
    for k, v in a.items():
        if k == "zsq":
            out[k] = [x + y for x, y in zip(v, b[k])]
        elif k == "ymin":
            out[k] = min(v, b[k])
        elif k == "ymax":
            out[k] = max(v, b[k])
        else:
            out[k] = v + b[k]
    return out


def accumulate(ddf, template, state):
    """Pass 2: the cross-products of all complete rows (a dict; ``A_rr`` dense on the client).

    ``template`` evaluates a partition's rows (its ``_new_design`` and ``re_design``): the
    model being built, which holds the formula state and no rows.
    """
    import dask
    tmpl = ship(template)                               # one object, shared by the tasks
    light = copy.copy(state)
    light.frame = None                                 # the workers read the columns' names only
    parts = [dask.delayed(_partition_sums)(p, tmpl, light) for p in ddf.to_delayed()]
    sums = tree_reduce(parts, _add).compute()
    m1, q1 = template.re_design.blocks[0].m, template.re_design.blocks[0].q
    sums["A11"] = sums["A11"].toarray().reshape(m1, q1, q1)
    sums["A_rr"] = sums["A_rr"].toarray()
    sums["A_r1"] = sums["A_r1"].tocsr()
    return sums
