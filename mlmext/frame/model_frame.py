"""Formula + data -> a model frame: response, fixed design, random-effects terms, weights, offset.

lme4 builds its model frame first (rows with a missing value in any variable
used are dropped, unused factor levels are dropped) and only then its model
matrices; we do the same, so that a level seen only in dropped rows, or an
unused category of a pandas ``Categorical``, does not become a column (a
variance for nothing, or a reference level with no data that silently
relabels the contrasts).  Rows are evaluated once; when rows were dropped or
categories are unused, the matrices are evaluated again on the complete rows
(stateful transforms such as ``center(x)`` then see the rows lme4 sees).

Names that are not Python identifiers (R's ``Sepal.Length``, ``class``, a
name with spaces written in backticks) are quoted for the formula engine here,
and unquoted again in the names the results show.
"""
from __future__ import annotations

import difflib
import keyword
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# statsmodels' formula engine (patsy, or formulaic when SM_FORMULA_ENGINE says so) sits behind a
# private module: this is the one place in mlmext that imports it
from statsmodels.formula._manager import FormulaManager

from .._frames import as_dataframe
from ..design import RandomEffectsDesign, ReTerm, grouping_factor, warn_constant_slopes
from .terms import parse_formula

__all__ = ["ModelFrame", "build_model_frame", "quote_names", "display_name", "apply_subset",
           "evaluate", "formula_error", "formula_manager"]


def formula_manager():
    """A fresh statsmodels ``FormulaManager`` (the formula engine statsmodels is set to use)."""
    return FormulaManager()


_IDENT_RUN = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


def _quote(name, engine):
    return f"`{name}`" if engine == "formulaic" else f"Q({name!r})"


def quote_names(formula, columns, engine="patsy"):
    """Quote column names the formula engine cannot read as Python names.

    A backticked name (R's `` `my var` ``) and a bare name that is a column but
    not a Python identifier (``Sepal.Length``, ``class``) become ``Q("...")``
    (patsy) or `` `...` `` (formulaic).  String literals are left alone.
    """
    cols = {str(c) for c in columns}
    out, i, n = [], 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch in "'\"":                                   # string literal: copy verbatim
            j = i + 1
            while j < n and formula[j] != ch:
                j += 2 if formula[j] == "\\" else 1
            out.append(formula[i:j + 1])
            i = j + 1
        elif ch == "`":
            j = formula.find("`", i + 1)
            if j < 0:
                raise ValueError(f"unclosed backtick in formula {formula!r}")
            out.append(_quote(formula[i + 1:j], engine))
            i = j + 1
        elif ch.isdigit():                                # a number such as 1.5e3
            m = re.compile(r"[0-9][A-Za-z0-9_.]*").match(formula, i)
            out.append(m.group(0))
            i = m.end()
        elif ch.isalpha() or ch in "_.":
            m = _IDENT_RUN.match(formula, i)
            tok = m.group(0)
            needs = tok in cols and (not tok.isidentifier() or keyword.iskeyword(tok))
            prev = formula[:i].rstrip()[-1:]
            out.append(_quote(tok, engine) if needs and prev != "." else tok)
            i = m.end()
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_QUOTED = re.compile(r"""Q\((["'])(.*?)\1\)|`([^`]*)`""")


def display_name(name):
    """A design column name without the quoting added by :func:`quote_names`."""
    return _QUOTED.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(3), str(name))


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


def names_in(expr):
    """Identifiers an expression uses (quoted names included), in order."""
    names = [m.group(2) or m.group(3) for m in _QUOTED.finditer(expr)]
    stripped = _QUOTED.sub(" ", re.sub(r"(['\"]).*?\1", " ", expr))
    names += [t for t in _IDENT_RUN.findall(stripped) if not t[0].isdigit()]
    return list(dict.fromkeys(names))


def _resolves(dotted, env):
    """Whether ``a.b.c`` is an attribute path in ``env`` (``np.log``), not a mistyped column."""
    head, *rest = dotted.split(".")
    obj = env.get(head)
    for part in rest:
        if obj is None or not part.isidentifier() or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return obj is not None


def formula_error(exc, where, data, env=None, formula=None):
    """A ValueError for a formula engine's failure, naming the unknown column if there is one."""
    msg = str(exc)
    m = re.search(r"name '([^']+)' is not defined", msg) or re.search(r"'([^']+)' is not present", msg)
    cols = [str(c) for c in data.columns]
    if m:
        name = m.group(1)
        close = difflib.get_close_matches(name, cols, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        dotted = [c for c in cols if c.startswith(name + ".")]
        if dotted:
            hint = (f"; {dotted[0]!r} is a column: names with dots are read as Python attribute "
                    f"access unless quoted, Q({dotted[0]!r}) or `{dotted[0]}`")
        return ValueError(f"unknown column {name!r} in {where}{hint} (the data has columns {cols})")
    first = msg.splitlines()[0] if msg else type(exc).__name__
    hint = ""
    if re.search(r"syntax|tokeniz|unexpected", msg, re.I):
        hint = ("; column names that are not Python names (dots, spaces, keywords such as "
                "'class') must be quoted, as Q(\"my name\") or `my name`")
        env = env or {}
        text = formula if isinstance(formula, str) else ""     # a stored spec has no text
        odd = [t for t in names_in(text) if ("." in t or keyword.iskeyword(t))
               and t not in cols and not _resolves(t, env)]
        if odd:
            close = difflib.get_close_matches(odd[0], cols, n=1)
            hint = (f"; {odd[0]!r} is not a column" + (f" (did you mean {close[0]!r}?)" if close
                                                        else f" (the data has columns {cols})"))
    return ValueError(f"could not evaluate {where}: {first}{hint}")


def evaluate(mgr, formula, data, env, where):
    """The formula engine's matrices with rows holding a missing value dropped (pandas)."""
    try:
        return mgr.get_matrices(formula, data, eval_env=env, pandas=True,
                                na_action=mgr.get_na_action("drop"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the column name
        raise formula_error(exc, where, data, env, formula) from exc


@dataclass
class ModelFrame:
    """What a formula and a data frame give a mixed model.

    Attributes
    ----------
    y, X : pandas.DataFrame
        Response (one or more columns, e.g. ``cbind(s, f)``) and fixed design,
        on the complete rows, columns named as the results show them.
    design : RandomEffectsDesign
    weights, offset : ndarray or None
    info : dict
        ``formula``, ``parsed``, ``fixed_spec`` (for new data), ``nrows_dropped``,
        ``dropped`` (rows dropped by reason), ``row_labels`` (of the rows kept),
        ``data`` (the model frame), ``eval_env``, ``has_offset``, ``has_weights``,
        ``engine``.
    """

    y: pd.DataFrame
    X: pd.DataFrame
    design: RandomEffectsDesign
    weights: np.ndarray | None
    offset: np.ndarray
    info: dict = field(default_factory=dict)


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
    for arr in extra:
        if arr is not None:
            keep = keep.intersection(data.index[np.isfinite(arr)])
    return keep.sort_values()


def _drop_unused_categories(df, keep_cols=()):
    """``df`` with unused categories of its categorical columns removed (R's drop.unused.levels).

    Columns in ``keep_cols`` (the response) are left to the model, which warns about its
    unused categories (an ordinal response) or reads them (a binomial factor response).
    """
    changed = {}
    for c in df.columns:
        if c in keep_cols:
            continue
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            codes = df[c].cat.codes.to_numpy()
            if np.unique(codes[codes >= 0]).size < len(df[c].cat.categories):
                changed[c] = df[c].cat.remove_unused_categories()
    if not changed:
        return df, False
    df = df.copy(deep=False)
    for c, s in changed.items():
        df[c] = s
    return df, True


def _check_finite(y_df, X_df, lhs, parsed):
    """Infinite values are not missing (R's lm: "NA/NaN/Inf in 'y'"): name where they are."""
    num = [c for c, dt in y_df.dtypes.items() if dt.kind in "iuf"]
    bad = ~np.isfinite(y_df[num].to_numpy(dtype=float)) if num else np.zeros((0, 1), bool)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"the response {display_name(parsed.response)!r} has {rows.size} infinite "
                         f"value(s) (first at row {int(rows[0])}); infinite values are not missing "
                         "values: remove or recode them")
    Xa = X_df.to_numpy(dtype=float)
    bad_cols = [display_name(c) for c, b in zip(X_df.columns, (~np.isfinite(Xa)).any(axis=0)) if b]
    if bad_cols:
        raise ValueError(f"the fixed-effects design has infinite values in column(s) {bad_cols}; "
                         "remove or recode them")
    for lhs_expr, (Z, _) in lhs.items():
        Za = Z.to_numpy(dtype=float)
        bad_cols = [display_name(c) for c, b in zip(Z.columns, (~np.isfinite(Za)).any(axis=0)) if b]
        if bad_cols:
            bars = [b.source for b in parsed.bars if b.lhs == lhs_expr]
            raise ValueError(f"random-effects term {bars[0]} has infinite values in column(s) "
                             f"{bad_cols}; remove or recode them")


def _check_terms_have_columns(mgr, spec, where, data):
    """A term with no columns is a factor with one level in the rows used: R refuses it
    ("contrasts can be applied only to factors with 2 or more levels"); dropping it
    silently would fit a different model than the one written."""
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


def _check_column_types(parsed, data):
    """Columns the formula engine would read wrongly: a datetime becomes one level per date."""
    exprs = [parsed.fixed_rhs] + [b.lhs for b in parsed.bars] + list(parsed.offsets)
    for name in dict.fromkeys(n for e in exprs for n in names_in(e)):
        if name in data.columns and data[name].dtype.kind in "Mm":
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


def build_model_frame(formula, data, *, subset=None, weights=None, offset=None, missing="drop",
                      env=None, fixed_matrices, mgr):
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
    """
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
    data = data.reset_index(drop=True)
    engine = getattr(mgr, "engine", "patsy")
    formula_q = quote_names(formula, data.columns, engine)
    parsed = parse_formula(formula_q)
    _check_column_types(parsed, data)
    for bar in parsed.bars:
        for f in bar.factors:
            if f not in data.columns:
                close = difflib.get_close_matches(f, [str(c) for c in data.columns], n=1)
                raise ValueError(f"unknown column {f!r} in random-effects term {bar.source}"
                                 + (f"; did you mean {close[0]!r}?" if close else "")
                                 + f" (the data has columns {list(data.columns)})")
    w_all = _column_or_array(data, weights, "weights")
    off_all = _column_or_array(data, offset, "offset")
    if w_all is not None and np.any(w_all[np.isfinite(w_all)] < 0):
        raise ValueError(f"weights must be non-negative (min {np.nanmin(w_all):g})")

    pieces = _evaluate_pieces(mgr, parsed, data, env, fixed_matrices)
    keep = _complete_rows(pieces, data, parsed, (w_all, off_all))
    n_missing = len(data) - len(keep)
    if n_missing and missing == "raise":
        raise ValueError(f"{n_missing} rows have missing values (missing='raise'); "
                         "use missing='drop' to drop them")
    n_zero = 0
    if w_all is not None:
        nz = keep[w_all[keep.to_numpy()] > 0]
        n_zero = len(keep) - len(nz)
        keep = nz
    if len(keep) == 0:
        why = "all weights are zero" if n_zero else "every row has a missing value in a variable used"
        raise ValueError(f"no rows left to fit: {why}")
    # lme4's model frame: complete rows, unused levels dropped, then the matrices
    resp_col = (display_name(parsed.response),)
    all_rows = len(keep) == len(data)
    sub, changed = _drop_unused_categories(data if all_rows else
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
        sub, changed = _drop_unused_categories(sub.loc[keep2].reset_index(drop=True), resp_col)
    else:
        raise RuntimeError("the model frame did not settle after dropping incomplete rows")
    y_df, X_df, lhs, offs, fixed_spec = pieces
    _check_finite(y_df, X_df, lhs, parsed)
    _check_terms_have_columns(mgr, fixed_spec, "the fixed effects", sub)
    for bar in parsed.bars:
        _check_terms_have_columns(mgr, lhs[bar.lhs][1], f"random-effects term {bar.source}", sub)
    y_df = y_df.reset_index(drop=True)
    X_df = X_df.reset_index(drop=True)

    terms = []
    for bar in parsed.bars:
        Z, spec = lhs[bar.lhs]
        codes, levels, keys, kinds = grouping_factor(sub, list(bar.factors))
        t = ReTerm(bar.name, bar.factors, bar.lhs, Z.to_numpy(dtype=float),
                   [display_name(c) for c in Z.columns], codes, levels, keys, kinds)
        t.spec = spec
        t.source = bar.source           # the term as written, for messages
        terms.append(t)
    design = RandomEffectsDesign(terms)
    # lmer(), glmer() and clmm() call from_formula, which calls this: point at their caller
    warn_constant_slopes(design, stacklevel=4)
    off = np.zeros(len(sub))
    for o in offs:
        off += o.to_numpy(dtype=float)
    if off_all is not None:
        off += off_all[kept_pos]
    w = None if w_all is None else w_all[kept_pos]
    y_df.columns = [display_name(c) for c in y_df.columns]
    X_df.columns = [display_name(c) for c in X_df.columns]
    dropped = {k: v for k, v in (("missing values", n_missing), ("zero weights", n_zero)) if v}
    info = {
        "formula": formula,
        "parsed": parsed,
        "fixed_spec": fixed_spec,
        "nrows_dropped": n_missing + n_zero,
        "dropped": dropped,
        "row_labels": row_labels[kept_pos],
        "data": sub,
        "eval_env": env,
        "engine": engine,
        "has_offset": bool(parsed.offsets) or off_all is not None,
        "offset_arg": offset if isinstance(offset, str) else (None if offset is None else "array"),
        "has_weights": w_all is not None,
    }
    return ModelFrame(y=y_df, X=X_df, design=design, weights=w, offset=off, info=info)

