"""The model's matrices on the complete rows, two ways (:func:`generic_pieces`,
:func:`one_pass_pieces`); :mod:`.model_frame` names and checks them.

Both follow lme4's model frame: rows with a missing value in any piece (response, fixed
design, a bar term's matrix, an offset), a grouping factor, a weight or an offset are dropped
and counted, then rows with zero weight; unused categories are dropped on the rows kept, and
the matrices evaluated again there when they could change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..design import used_categories
from .engine import evaluate
from .columns import FrameColumns, shallow_copy
from .patsy_pass import ColumnStore, engine_pass, levels_kept

__all__ = ["Pieces", "generic_pieces", "one_pass_pieces", "drop_unused_categories"]


@dataclass
class Pieces:
    """The model's matrices on the rows kept, before names and checks (both paths give these)."""

    y: pd.DataFrame | None     # response, the engine's column names (None: from y_num)
    y_num: np.ndarray | None   # its numeric columns (None: to be found from y)
    X: np.ndarray
    xnames: list
    fixed_spec: object
    lhs: dict                  # bar left-hand side -> (Z, engine's column names, spec)
    offs: list                 # one array per offset() term
    kept: np.ndarray | None    # positions of the rows kept (None: every row)
    n_missing: int
    n_zero: int
    frame: pd.DataFrame        # the data on the rows kept, unused categories dropped
    ycols: list | None = None  # y's column names (None: read from y)


_count = np.add.reduce          # (of a boolean mask: the number of its True entries)


def _no_rows(n_zero):
    why = "all weights are zero" if n_zero else "every row has a missing value in a variable used"
    return ValueError(f"no rows left to fit: {why}")


def _too_many_missing(n_missing):
    return ValueError(f"{n_missing} rows have missing values (missing='raise'); "
                      "use missing='drop' to drop them")


def _evaluate_pieces(mgr, parsed, data, env, fixed_matrices):
    """Response, fixed design, each bar term's model matrix and the offsets on ``data``."""
    y_df, X_df = fixed_matrices(mgr, parsed, data, env)
    spec = mgr.get_model_spec(X_df)                   # before slicing the frame loses it
    lhs = {}
    for bar in parsed.bars:
        if bar.lhs not in lhs:
            Z = evaluate(mgr, bar.lhs, data, env, f"random-effects term {bar.source}")
            lhs[bar.lhs] = (Z, mgr.get_model_spec(Z))
    offs = []
    for expr in parsed.offsets:
        o = evaluate(mgr, f"0 + {expr}", data, env, f"offset({expr})")
        if o.shape[1] != 1:
            raise ValueError(f"offset({expr}) must be a single numeric column")
        offs.append(o.iloc[:, 0])
    return y_df, X_df, lhs, offs, spec


def _complete_rows(pieces, data, parsed, extra):
    """Index of rows complete in every piece, and the count of rows dropped per reason."""
    y_df, X_df, lhs, offs, _ = pieces
    keep = pd.Index(y_df.index).intersection(X_df.index)
    for Z, _ in lhs.values():
        keep = keep.intersection(Z.index)
    for o in offs:
        keep = keep.intersection(o.index)
    for bar in parsed.bars:
        for f in bar.factors:
            keep = keep.intersection(data.index[data[f].notna().to_numpy()])
    for arr in extra:           # (NaN is missing; an infinite value is kept, and refused)
        if arr is not None:
            keep = keep.intersection(data.index[~np.isnan(arr)])
    return keep.sort_values()


def drop_unused_categories(df, keep_cols=(), columns=None, series=None):
    """``df`` with unused categories of its categorical columns removed (R's drop.unused.levels).

    Columns in ``keep_cols`` (the response) are left to the model, which warns about its
    unused categories (an ordinal response) or reads them (a binomial factor response).
    ``columns``: the only columns to look at (default: all); ``series``: where to read
    ``df``'s columns from (a :class:`~.columns.FrameColumns` of ``df`` or of a frame
    with the same columns and rows; default ``df`` itself).
    """
    changed = {}
    # (the columns' arrays: no Series made)
    get = (lambda c: df[c].array) if series is None else series.array
    pairs = zip(df.columns, df.dtypes) if columns is None else ((c, get(c).dtype) for c in columns)
    for c, dt in pairs:
        if c in keep_cols or not isinstance(dt, pd.CategoricalDtype):
            continue
        cat = get(c)
        if not np.logical_and.reduce(used_categories(np.asarray(cat.codes), len(dt.categories))):
            changed[c] = cat.remove_unused_categories()
    if not changed:
        return df, False
    df = shallow_copy(df)
    for c, cat in changed.items():
        df[c] = cat
    return df, True


def _isna(a):
    """``Series(a).isna()`` of a column's array (:meth:`FrameColumns.array`) as an array, None
    when the dtype holds no missing value (or a categorical has none)."""
    dt = a.dtype
    if isinstance(dt, pd.CategoricalDtype):
        codes = np.asarray(a.codes)           # (no code below 0, the usual case: no mask)
        return codes < 0 if len(codes) and np.minimum.reduce(codes) < 0 else None
    if isinstance(dt, np.dtype) and dt.kind in "iub":
        return None
    if isinstance(dt, np.dtype) and dt.kind == "f":
        return np.isnan(a)
    if isinstance(dt, pd.api.extensions.ExtensionDtype):
        return np.asarray(a.isna(), dtype=bool)
    return pd.isna(a)


def generic_pieces(mgr, parsed, data, env, fixed_matrices, w_all, off_all, missing, resp_col):
    """The formula engine once per piece on the DataFrame, rows dropped by index intersection,
    evaluated again on the complete rows (any engine)."""
    pieces = _evaluate_pieces(mgr, parsed, data, env, fixed_matrices)
    keep = _complete_rows(pieces, data, parsed, (w_all, off_all))
    n_missing = len(data) - len(keep)
    if n_missing and missing == "raise":
        raise _too_many_missing(n_missing)
    n_zero = 0
    if w_all is not None:
        nz = keep[w_all[keep.to_numpy()] > 0]
        n_zero = len(keep) - len(nz)
        keep = nz
    if len(keep) == 0:
        raise _no_rows(n_zero)
    # lme4's model frame: complete rows, unused levels dropped, then the matrices
    all_rows = len(keep) == len(data)
    sub, changed = drop_unused_categories(data if all_rows else
                                          data.loc[keep].reset_index(drop=True), resp_col)
    kept_pos = keep.to_numpy()
    second_pass = not all_rows or changed
    for _ in range(3):
        if not second_pass:
            break
        pieces = _evaluate_pieces(mgr, parsed, sub, env, fixed_matrices)
        sub_w = None if w_all is None else w_all[kept_pos]
        sub_o = None if off_all is None else off_all[kept_pos]
        keep2 = _complete_rows(pieces, sub, parsed, (sub_w, sub_o)).to_numpy()
        if len(keep2) == len(sub):
            break
        kept_pos, n_missing = kept_pos[keep2], n_missing + len(sub) - len(keep2)
        sub, changed = drop_unused_categories(sub.loc[keep2].reset_index(drop=True), resp_col)
    else:
        raise RuntimeError("the model frame did not settle after dropping incomplete rows")
    y_df, X_df, lhs, offs, fixed_spec = pieces
    lhs = {k: (Z.to_numpy(dtype=float), list(Z.columns), spec) for k, (Z, spec) in lhs.items()}
    return Pieces(y=y_df.reset_index(drop=True), y_num=None, X=X_df.to_numpy(dtype=float),
                  xnames=list(X_df.columns), fixed_spec=fixed_spec, lhs=lhs,
                  offs=[o.to_numpy(dtype=float) for o in offs], kept=kept_pos,
                  n_missing=n_missing, n_zero=n_zero, frame=sub)


def one_pass_pieces(plan, fixed, parsed, data, w_all, off_all, missing, resp_col, columns=None):
    """:mod:`.patsy_pass`: one engine pass over the columns used; incomplete rows found with
    boolean masks and, for a row-wise formula whose categorical factors keep their levels,
    dropped by slicing the matrices (else the engine runs again on the complete rows, as the
    generic path does).  Raises :class:`~.patsy_pass.Fallback` for the generic path.
    ``columns``: the build's :class:`~.patsy_pass.FrameColumns` of ``data``."""
    n = len(data)
    cols = FrameColumns(data) if columns is None else columns
    gf_cols = list(dict.fromkeys(f for bar in parsed.bars for f in bar.factors))
    store = ColumnStore(data, drop_unused=plan.rowwise, keep=resp_col, pandas=plan.pandas,
                        columns=cols)
    infos, mats, na = engine_pass(plan, store)
    # rows missing something outside the engine: a grouping factor, a weight, an offset
    other = None
    for f in gf_cols:
        m = _isna(cols.array(f))
        if m is not None:
            other = m if other is None else other | m
    for arr in (w_all, off_all):   # (NaN is missing; an infinite value is kept, and refused)
        if arr is not None:
            m = np.isnan(arr)
            other = m if other is None else other | m
    if fixed.response_column is not None:
        m = cols[fixed.response_column].isna().to_numpy()
        other = m if other is None else other | m
    # (no mask where nothing is missing: na and other are None then)
    bad = na if other is None else other if na is None else na | other
    n_missing = 0 if bad is None else int(_count(bad))    # (no np.count_nonzero wrappers)
    if n_missing and missing == "raise":
        raise _too_many_missing(n_missing)
    keep = None if not n_missing else ~bad
    n_zero = 0
    if w_all is not None:
        pos = w_all > 0
        n_zero = n - n_missing - int(np.count_nonzero(pos if keep is None else pos & keep))
        if n_zero:
            keep = pos if keep is None else keep & pos
    if n_missing + n_zero == n:
        raise _no_rows(n_zero)
    kept = None if keep is None else np.flatnonzero(keep)
    again = False
    if keep is None:
        again = not plan.rowwise and store.has_unused()
    elif plan.rowwise and levels_kept(plan, infos, store, keep):
        sel = keep[~na] if na is not None and na.any() else keep
        mats = [m[sel] for m in mats]
    else:
        again = True
    if again:
        # as the generic path: the engine again on the complete rows, unused levels dropped,
        # until no row is incomplete
        for _ in range(3):
            sub = ColumnStore(data, rows=kept, drop_unused=True, keep=resp_col, pandas=plan.pandas,
                              columns=cols)
            infos, mats, na = engine_pass(plan, sub)
            bad = na if other is None or kept is None else \
                other[kept] if na is None else na | other[kept]
            if bad is None or not bad.any():
                break
            n_missing += int(np.count_nonzero(bad))
            kept = np.flatnonzero(~bad) if kept is None else kept[~bad]
        else:
            raise RuntimeError("the model frame did not settle after dropping incomplete rows")
    if fixed.response_column is None:
        y_num = mats[plan.y]
        ycols = infos[plan.y].column_names
        y_df = None                  # (made by build_model_frame, on first use when one column)
    else:
        ys = cols[fixed.response_column]
        y_df = (ys if kept is None else ys.take(kept)).reset_index(drop=True).to_frame()
        y_num = ycols = None
    # column-major, as the generic path's DataFrame.to_numpy() gives them: the same layout,
    # so that products with them round as before
    lhs = {k: (np.asfortranarray(mats[i]), infos[i].column_names, infos[i])
           for k, i in plan.lhs.items()}
    offs = [mats[i][:, 0] for i in plan.offsets]
    return Pieces(y=y_df, y_num=y_num, X=mats[plan.x], xnames=infos[plan.x].column_names,
                  fixed_spec=infos[plan.x], lhs=lhs, offs=offs, kept=kept,
                  n_missing=n_missing, n_zero=n_zero, frame=None,
                  ycols=None if ycols is None else list(ycols))
