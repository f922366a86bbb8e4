"""Formula + data -> a model frame: response, fixed design, random-effects terms, weights, offset.

lme4 builds its model frame first (rows with a missing value in any variable
used are dropped, unused factor levels are dropped) and only then its model
matrices; we do the same, so that a level seen only in dropped rows, or an
unused category of a pandas ``Categorical``, does not become a column (a
variance for nothing, or a reference level with no data that silently
relabels the contrasts).

Two ways give the same frame.  With patsy (statsmodels' default engine) every
piece of the formula is evaluated in one pass over the columns it uses
(:mod:`.patsy_pass`); incomplete rows are found with boolean masks and, when
the formula is row-wise and no level is lost, dropped by slicing the
matrices.  Otherwise (formulaic, or a formula the one-pass build does not
take) each piece goes through statsmodels' engine on its own
(:func:`_generic_pieces`).  Either way, when rows were dropped or categories
are unused and the matrices could depend on them, the matrices are evaluated
again on the complete rows (stateful transforms such as ``center(x)`` then
see the rows lme4 sees).
"""
from __future__ import annotations

import difflib
import functools

import numpy as np
import pandas as pd

from .._frames import as_dataframe, column_labels, convert_columns, pandas_table
from ..immutable_cache import names_index, per_object
from ..design import RandomEffectsDesign, ReTerm, grouping_factor
from ..identifiability import warn_constant_slopes
from .engine import display_name, evaluate, formula_error, formula_manager, names_in, quote_names
from .columns import FrameColumns, shallow_copy
from .patsy_pass import HAVE_PATSY, Fallback, FixedParts
from .plan_cache import plan_for
from .pieces import drop_unused_categories, generic_pieces, one_pass_pieces
from .terms import BarTerm, ParsedFormula, parse_formula

if HAVE_PATSY:
    from patsy import DesignInfo
else:  # pragma: no cover - formulaic only
    DesignInfo = None

__all__ = ["ModelFrame", "FixedParts", "build_model_frame", "used_columns", "quote_names", "display_name",
           "apply_subset", "evaluate", "formula_error", "formula_manager"]


def apply_subset(data, subset):
    """Rows of ``data`` selected by ``subset``: a boolean mask, index labels, or an expression.

    A string is evaluated by ``DataFrame.eval`` (R's ``subset = x > 0``).
    """
    if subset is None:
        return data
    if isinstance(subset, str):
        try:
            mask = data.eval(subset)
        except Exception as exc:  # noqa: BLE001 - re-raised naming the argument
            raise ValueError(f"could not evaluate subset={subset!r} on the data: {exc}") from exc
        mask = pd.Series(mask, index=data.index) if np.ndim(mask) else None
        if mask is None or mask.dtype != bool:
            raise ValueError(f"subset={subset!r} must give one True/False per row")
        return data.loc[mask.to_numpy()]
    sub = np.asarray(subset)
    if sub.dtype == bool:
        if sub.shape != (len(data),):
            raise ValueError(f"a boolean subset needs one value per row ({len(data)}); got {sub.shape}")
        return data.loc[sub]
    try:
        return data.loc[subset]
    except KeyError as exc:
        raise ValueError(f"subset has labels that are not in the data's index: {exc}") from exc


class ModelFrame:
    """What a formula and a data frame give a mixed model.

    Attributes
    ----------
    y, X : pandas.DataFrame
        Response (one or more columns, e.g. ``cbind(s, f)``) and fixed design,
        on the complete rows, columns named as the results show them.
    y_column : pandas.Series or None
        A one-column response as a Series (the column of ``y``, whose frame is then made
        on first use: the usual model reads only this), else None.
    y_values, y_name : ndarray and str, or None
        That response's values and name (the Series is made on first use).
    x_values, x_names : ndarray and list
        The fixed design's values and column names (``X`` is made on first use: a model
        built from these arrays may never need it).
    design : RandomEffectsDesign
    weights, offset : ndarray or None
    info : dict
        ``formula``, ``parsed``, ``fixed_spec`` (for new data), ``nrows_dropped``,
        ``dropped`` (rows dropped by reason), ``row_labels`` (of the rows kept),
        ``data`` (the model frame), ``eval_env``, ``has_offset``, ``has_weights``,
        ``engine``.
    """

    def __init__(self, y, X, design, weights, offset, info=None, y_column=None, *,
                 y_values=None, y_name=None, x_values=None, x_names=None):
        if y is None and y_column is None and y_values is None:
            raise ValueError("a model frame needs its response (y, y_column or y_values)")
        self._y, self._y_column, self.y_values, self.y_name = y, y_column, y_values, y_name
        self._X, self.x_values, self.x_names = X, x_values, x_names
        self.design, self.weights, self.offset = design, weights, offset
        self.info = {} if info is None else info

    @property
    def y(self):
        if self._y is None and self.y_column is not None:
            self._y = self.y_column.to_frame()
        return self._y

    @property
    def y_column(self):
        if self._y_column is None and self.y_values is not None:
            self._y_column = pd.Series(self.y_values, name=self.y_name)
        return self._y_column

    @property
    def X(self):
        if self._X is None:
            self._X = pd.DataFrame(self.x_values, columns=names_index(self.x_names))
        return self._X


def _column_or_array(data, v, what):
    if v is None:
        return None
    if isinstance(v, str):
        if v not in data.columns:
            raise ValueError(f"unknown column {v!r} given as {what} (the data has columns "
                             f"{list(data.columns)})")
        col = data[v]
        if not (pd.api.types.is_numeric_dtype(col) or col.isna().all()):
            raise ValueError(f"{what} column {v!r} must be numeric; it has dtype {col.dtype}")
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    try:
        arr = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a column name or numbers: {exc}") from exc
    if arr.shape[0] != len(data):
        raise ValueError(f"{what} has {arr.shape[0]} values for {len(data)} rows")
    return arr


def _numeric_part(y_df):
    """The numeric columns of a response frame as floats (n x k, k may be 0)."""
    num = [c for c, dt in y_df.dtypes.items() if dt.kind in "iuf"]
    return y_df[num].to_numpy(dtype=float) if num else np.zeros((0, 1))


_sum = np.add.reduce


def _nonfinite_columns(A):
    """Per column of ``A``: has it a non-finite value?  (Column sums first: finite sums, the
    usual case, need no n x p mask.)"""
    if A.shape[0] == 0 or np.all(np.isfinite(A.sum(axis=0))):
        return np.zeros(A.shape[1], dtype=bool)
    return (~np.isfinite(A)).any(axis=0)


def _check_finite(y_num, X, xnames, lhs, parsed):
    """Infinite values are not missing (R's lm: "NA/NaN/Inf in 'y'"): name where they are."""
    # one finite total: every value finite (an inf or an overflow of the sum: look closer)
    # (the sums without ndarray.sum's Python wrapper: the same reduction)
    if np.isfinite(_sum(y_num, None) + _sum(X, None)
                   + sum(_sum(Z, None) for Z, _, _ in lhs.values())):
        return
    if _nonfinite_columns(y_num).any():
        rows = np.flatnonzero((~np.isfinite(y_num)).any(axis=1))
        raise ValueError(f"the response {display_name(parsed.response)!r} has {rows.size} infinite "
                         f"value(s) (first at row {int(rows[0])}); infinite values are not missing "
                         "values: remove or recode them")
    bad_cols = [display_name(c) for c, b in zip(xnames, _nonfinite_columns(X)) if b]
    if bad_cols:
        raise ValueError(f"the fixed-effects design has infinite values in column(s) {bad_cols}; "
                         "remove or recode them")
    for lhs_expr, (Z, znames, _) in lhs.items():
        bad_cols = [display_name(c) for c, b in zip(znames, _nonfinite_columns(Z)) if b]
        if bad_cols:
            bars = [b.source for b in parsed.bars if b.lhs == lhs_expr]
            raise ValueError(f"random-effects term {bars[0]} has infinite values in column(s) "
                             f"{bad_cols}; remove or recode them")


def _check_terms_have_columns(mgr, spec, where, data):
    """A term with no columns is a factor with one level in the rows used: R refuses it
    ("contrasts can be applied only to factors with 2 or more levels"); dropping it
    silently would fit a different model than the one written."""
    # (patsy's own slices when the spec is its DesignInfo: what the manager returns a copy of)
    slices = spec.term_name_slices if type(spec) is DesignInfo else None
    if slices is None:
        try:
            slices = mgr.get_term_name_slices(spec)
        except Exception:  # noqa: BLE001 - an engine without term slices: nothing to check
            return
    for name, sl in slices.items():
        if name in ("Intercept", "1") or sl.stop > sl.start:
            continue
        cols = [c for c in names_in(name) if c in data.columns]
        levels = ""
        if cols:
            vals = pd.unique(data[cols[0]].dropna())
            levels = f": {cols[0]!r} has the single level {vals[0]!r} in the rows used" \
                if len(vals) == 1 else ""
        raise ValueError(f"term {display_name(name)!r} of {where} has no columns{levels}; a factor "
                         "needs at least 2 levels (remove the term)")


def _check_column_types(parsed, dtypes):
    """Columns the formula engine would read wrongly: a datetime becomes one level per date."""
    exprs = [parsed.fixed_rhs] + [b.lhs for b in parsed.bars] + list(parsed.offsets)
    for name in dict.fromkeys(n for e in exprs for n in names_in(e)):
        if name in dtypes and dtypes[name].kind in "Mm":
            raise ValueError(f"column {name!r} holds dates or times; a formula needs numbers: "
                             f"convert it, e.g. (data[{name!r}] - data[{name!r}].min()).dt.days")


def _aligned(v, data, original_index, what):
    """A weights/offset array or Series as one value per row of ``data`` (after subset).

    A Series is aligned by index, as pandas aligns; an array of the original data's
    length is subset with the data (R's subset applies to weights too).
    """
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, pd.Series):
        missing = data.index.difference(v.index)
        if len(missing):
            raise ValueError(f"{what} is a Series whose index lacks {len(missing)} of the data's "
                             f"row labels (e.g. {missing[0]!r}); give one value per row")
        return v.reindex(data.index).to_numpy()
    arr = np.asarray(v)
    if arr.ndim == 1 and len(original_index) != len(data) and arr.shape[0] == len(original_index):
        return pd.Series(arr, index=original_index).reindex(data.index).to_numpy()
    return v


def used_columns(parsed, data, weights, offset):
    """The columns of ``data`` (a table, or its column labels) the model uses, in the data's
    order: names in the formula (and the head of a dotted name, ``x`` of ``x.mean()``),
    grouping factors, weights and offset."""
    names = set()
    for e in [parsed.response, parsed.fixed_rhs] + [b.lhs for b in parsed.bars] + list(parsed.offsets):
        for name in names_in(e):
            names.add(name)
            names.add(name.split(".")[0])
    names.update(f for b in parsed.bars for f in b.factors)
    names.update(v for v in (weights, offset) if isinstance(v, str))
    labels = data if isinstance(data, tuple) else column_labels(data.columns)
    return [c for c in labels if str(c) in names]


def _model_data(data, used, kept, resp_col, dtypes, columns):
    """The model frame kept for predictions: the used columns on the rows kept, a RangeIndex,
    unused categories dropped (the response's kept); and its :class:`FrameColumns` (those of
    ``data``, ``columns``, while the rows and columns are ``data``'s)."""
    frame = data if len(used) == data.shape[1] else \
        data.take([data.columns.get_loc(c) for c in used], axis=1)      # data[used], faster
    if kept is not None:
        frame = frame.take(kept)
    idx = frame.index
    if kept is not None or not (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1):
        frame = frame.reset_index(drop=True)
    elif frame is data:
        frame = shallow_copy(data)
    same = kept is None           # the same rows: data's columns are the frame's
    cats = [c for c in used if isinstance(dtypes[c], pd.CategoricalDtype)]
    changed = False
    if cats:
        frame, changed = drop_unused_categories(frame, resp_col, cats, columns if same else None)
    return frame, (columns if same and not changed else FrameColumns(frame))


@functools.lru_cache(maxsize=512)
def _parsed_formula(formula, columns, engine):
    formula_q = quote_names(formula, columns, engine)
    return formula_q, parse_formula(formula_q)


def parsed_formula(formula, columns, engine):
    """The formula quoted for the engine (:func:`quote_names`) and parsed (:func:`parse_formula`),
    once per (formula, frozenset of column labels, engine): both are functions of these only.
    The parse is handed out as a copy (callers may keep it)."""
    if not isinstance(formula, str):
        return formula, parse_formula(formula)        # parse_formula raises the TypeError
    formula_q, p = _parsed_formula(formula, columns, engine)
    # (each bar made by its constructor, as dataclasses.replace does, without replace's
    # inspection of the fields: it cost ~5 us a bar)
    return formula_q, ParsedFormula(p.response, p.fixed_rhs,
                                    [BarTerm(b.lhs, b.factors, b.name, b.source) for b in p.bars],
                                    list(p.offsets))


#: the one-pass build (patsy); tests set it False to compare with the generic path
_ONE_PASS = True


def build_model_frame(formula, data, *, subset=None, weights=None, offset=None, missing="drop",
                      env=None, fixed_matrices, mgr, fixed_parts=None):
    """Evaluate an lme4-style formula on ``data``: the :class:`ModelFrame` of a mixed model.

    Parameters
    ----------
    formula : str
    data : DataFrame-like
        pandas, polars or pyarrow table (see :func:`mlmext._frames.as_dataframe`).
    subset : array_like or str, optional
        Boolean mask, index labels, or an expression (``"x > 0"``).
    weights, offset : str or array_like, optional
        Column names or one value per row of ``data``.  Rows with zero weight
        are dropped and counted, as R's ``glm`` and ``clmm`` do.
    missing : {"drop", "raise"}
    env : dict
        Namespace for names in the formula that are not columns.
    fixed_matrices : callable
        ``(mgr, parsed, data, env) -> (y_df, X_df)``, the model's own reading
        of the fixed part (a clmm has no intercept column, for one).
    mgr : statsmodels FormulaManager
    fixed_parts : callable, optional
        ``parsed -> FixedParts``: the same reading for the one-pass build
        (:mod:`.patsy_pass`), used with patsy; without it every piece goes
        through ``mgr`` on its own.
    """
    data = pandas_table(data)
    if isinstance(subset, str):         # an expression may read any column: all converted
        data = as_dataframe(data)
    original_index = data.index
    data = apply_subset(data, subset)
    weights = _aligned(weights, data, original_index, "weights")
    offset = _aligned(offset, data, original_index, "offset")
    if missing not in ("drop", "raise", "none"):
        raise ValueError(f"missing must be 'drop' or 'raise', not {missing!r}")
    if len(data) == 0:
        raise ValueError("the data have no rows" + (" (after subset)" if subset is not None else ""))
    row_labels = data.index
    engine = getattr(mgr, "engine", "patsy")
    labels = column_labels(data.columns)
    label_set = per_object(frozenset, labels)
    formula_q, parsed = parsed_formula(formula, label_set, engine)
    used = used_columns(parsed, labels, weights, offset)
    # nullable and Arrow-backed columns the model reads as NumPy-backed ones (as_dataframe's
    # conversions); the others are not read
    columns = FrameColumns(data)
    data, used_dtypes = convert_columns(data, used, [columns.dtype(c) for c in used], columns)
    if columns.data is not data:
        columns = FrameColumns(data)
    dtypes = dict(zip(used, used_dtypes))
    _check_column_types(parsed, dtypes)
    for bar in parsed.bars:
        for f in bar.factors:
            if f not in label_set:       # (the conversions keep the labels; a set, not the Index)
                close = difflib.get_close_matches(f, [str(c) for c in data.columns], n=1)
                raise ValueError(f"unknown column {f!r} in random-effects term {bar.source}"
                                 + (f"; did you mean {close[0]!r}?" if close else "")
                                 + f" (the data has columns {list(data.columns)})")
    w_all = _column_or_array(data, weights, "weights")
    off_all = _column_or_array(data, offset, "offset")
    if w_all is not None and np.any(w_all[np.isfinite(w_all)] < 0):
        raise ValueError(f"weights must be non-negative (min {np.nanmin(w_all):g})")
    resp_col = (display_name(parsed.response),)

    pieces = plan = None
    if _ONE_PASS and engine == "patsy" and fixed_parts is not None:
        try:
            fixed = fixed_parts(parsed)
            plan = plan_for(parsed, fixed, data.columns, env, cbind=(env or {}).get("cbind"))
            pieces = one_pass_pieces(plan, fixed, parsed, data, w_all, off_all, missing, resp_col,
                                     columns)
        except Fallback:
            pieces = plan = None
    if pieces is None:
        data = data.reset_index(drop=True)
        pieces = generic_pieces(mgr, parsed, data, env, fixed_matrices, w_all, off_all,
                                 missing, resp_col)
    if pieces.frame is None:
        sub, sub_columns = _model_data(data, used, pieces.kept, resp_col, dtypes, columns)
    else:
        sub = pieces.frame if len(used) == pieces.frame.shape[1] else pieces.frame[used]
        sub_columns = FrameColumns(sub)
    kept, n_missing, n_zero = pieces.kept, pieces.n_missing, pieces.n_zero
    y_num = _numeric_part(pieces.y) if pieces.y_num is None else pieces.y_num
    _check_finite(y_num, pieces.X, pieces.xnames, pieces.lhs, parsed)
    _check_terms_have_columns(mgr, pieces.fixed_spec, "the fixed effects", sub)
    for bar in parsed.bars:
        _check_terms_have_columns(mgr, pieces.lhs[bar.lhs][2], f"random-effects term {bar.source}",
                                  sub)

    terms = []
    factors = {}
    for bar in parsed.bars:
        Z, znames, spec = pieces.lhs[bar.lhs]
        if Z.shape[1] == 0:         # (0 | g): no theta (lme4 stops: "length(theta) > 0L")
            raise ValueError(f"random-effects term {bar.source} has no columns; give it an "
                             "intercept or a slope, e.g. (1 | g), or remove it")
        key = tuple(bar.factors)
        if key not in factors:
            factors[key] = grouping_factor(sub_columns.array, list(bar.factors))
        codes, levels, keys, kinds = factors[key]
        t = ReTerm(bar.name, bar.factors, bar.lhs, Z, [display_name(c) for c in znames],
                   codes, levels, keys, kinds)
        t.spec = spec
        t.source = bar.source           # the term as written, for messages
        terms.append(t)
    design = RandomEffectsDesign(terms)
    # lmer(), glmer() and clmm() call from_formula, which calls this: point at their caller
    warn_constant_slopes(design, stacklevel=4)
    nkept = len(sub)
    off = None                         # no offset: the model's zeros (no n-sized array)
    if pieces.offs or off_all is not None:
        off = np.zeros(nkept)
        for o in pieces.offs:
            off += o
        if off_all is not None:
            off += off_all if kept is None else off_all[kept]
    w = None if w_all is None else (w_all.copy() if kept is None else w_all[kept])
    for what, v in (("the weights have", w), ("the offset has", off)):
        if v is not None and not np.isfinite(v).all():   # as R: lmer / glmer stop
            rows = np.flatnonzero(~np.isfinite(v))
            raise ValueError(f"{what} {rows.size} infinite value(s) (first at row "
                             f"{int(rows[0])}); infinite values are not missing values: remove "
                             "or recode them")
    y_df, y_values = pieces.y, None
    ycols = y_df.columns.tolist() if pieces.ycols is None else pieces.ycols
    ynames = [display_name(c) for c in ycols]
    if y_df is None and len(ynames) == 1:
        # the engine's response column, its Series made on first use (ModelFrame.y_column):
        # its one-column frame, and the column read back from it, cost ~20 us more and the
        # usual model reads only the array
        y_values = pieces.y_num[:, 0]
    elif y_df is None:
        y_df = pd.DataFrame(pieces.y_num, columns=names_index(ynames))
    elif ynames != ycols:       # (setting a frame's columns costs ~50 us)
        y_df.columns = ynames
    dropped = {k: v for k, v in (("missing values", n_missing), ("zero weights", n_zero)) if v}
    info = {
        "formula": formula,
        "parsed": parsed,
        "fixed_spec": pieces.fixed_spec,
        "nrows_dropped": n_missing + n_zero,
        "dropped": dropped,
        "row_labels": row_labels if kept is None else row_labels[kept],
        "data": sub,
        "eval_env": env,
        "engine": engine,
        "has_offset": bool(parsed.offsets) or off_all is not None,
        "offset_arg": offset if isinstance(offset, str) else (None if offset is None else "array"),
        "has_weights": w_all is not None,
        # how the matrices were made: "numpy" / "pandas" (the one-pass modes) or "generic"
        "frame_path": "generic" if plan is None else ("pandas" if plan.pandas else "numpy"),
    }
    return ModelFrame(y=y_df, X=None, design=design, weights=w, offset=off, info=info,
                      y_values=y_values, y_name=None if y_values is None else ynames[0],
                      x_values=pieces.X,
                      x_names=[display_name(c) for c in pieces.xnames])
