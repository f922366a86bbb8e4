"""One pass of patsy over the columns a mixed-model formula uses.

The generic path of :mod:`.model_frame` asks statsmodels' formula engine for each
piece of the model on its own (the fixed part with its response, each bar term's
left-hand side, each offset), on the whole pandas ``DataFrame``.  With patsy
(statsmodels' default engine) this module does the same work once:

* the design infos of every piece are learned together (patsy's
  ``design_matrix_builders`` over one data source: a factor used by two pieces
  is memorized and sniffed once) and built with one ``build_design_matrices``
  call;
* the data source is a :class:`ColumnStore`: the columns the engine asks for,
  as NumPy arrays (pandas ``Categorical`` for categorical columns), converted
  on first use; patsy's missing-value checks are then NumPy operations, not
  pandas ones;
* rows with a missing value in any factor are recorded in one mask
  (:class:`RecordingNA`), so the caller can drop them together with rows
  missing a grouping factor, weight or offset.

The factors see the columns the way they see them in the generic path in one
of two modes.  In the *NumPy* mode, taken when a formula's code behaves alike on
NumPy arrays and on pandas Series (names are columns, numbers or strings, NumPy
ufuncs such as ``np.log``, operators, patsy's ``C``, ``I``, ``Q``, ``cbind``,
``abs``, ``round``, ``min``...), numeric columns are :class:`SeriesLikeArray`
views and categorical ones pandas ``Categorical``: no pandas work per factor.
Otherwise (stateful transforms such as ``center(x)``, whose results on a Series
pass through pandas arithmetic; NumPy functions other than ufuncs, which call a
Series' own methods -- ``np.mean(x)`` is ``x.mean()``, which skips NaN;
``x.std()``; functions of the caller) the *pandas* mode hands patsy each column
as the Series the generic path gives it, with its RangeIndex, and an extra
factor of the data's length so that patsy checks every factor's rows and index
against the data's as it does with a DataFrame.  A name that is neither a column
nor in the namespace, or any error, sends the formula to the generic path,
which then raises its own message.

A formula is *row-wise* when each factor's value in a row depends on that row
only (NumPy mode, elementwise: no ``len``, ``sum``, ``min`` or ``max``, no
array from the namespace, no ``C(x, levels=...)``).  For such a formula the
matrices of a subset of rows are the rows of the matrices of all rows, as long
as no categorical factor loses a level: the caller then drops incomplete rows
by slicing instead of evaluating again (:func:`levels_kept` says when it may).
"""
from __future__ import annotations

import functools
import keyword

import numpy as np
import pandas as pd

from .._frames import column_labels
from ..immutable_cache import per_object
from .columns import FrameColumns
from .design_cache import design_infos
from .numeric_build import numeric_matrices
from .factor_code import (MISSING as _MISSING, PATSY_BUILTINS, bare_column, code_info, kind_of,
                          resolve)

try:  # patsy is statsmodels' default engine; without it only the generic path exists
    from patsy.build import build_design_matrices, design_matrix_builders
    from patsy.desc import ModelDesc, Term
    from patsy.eval import EvalEnvironment, EvalFactor, ast_names, replace_bare_funcalls
    from patsy.missing import NAAction
    HAVE_PATSY = True
except ImportError:  # pragma: no cover - statsmodels installs patsy or formulaic
    HAVE_PATSY = False
    NAAction = object

__all__ = ["Fallback", "FixedParts", "ColumnStore", "SeriesLikeArray", "Plan", "make_plan",
           "engine_pass", "levels_kept", "HAVE_PATSY"]


class Fallback(Exception):
    """The one-pass build does not take this formula or data: the generic path does."""


class FixedParts:
    """How a model reads the fixed part of its formula.

    Parameters
    ----------
    formula : str
        ``"y ~ x"`` (the response from the formula engine) or ``"~ x"``.
    response_column : str, optional
        A response taken from the data as it is (clmm's ordered categorical),
        rows with a missing value dropped.
    """

    __slots__ = ("formula", "response_column")

    def __init__(self, formula, response_column=None):
        self.formula = formula
        self.response_column = response_column


# ------------------------------------------------------------------ the plan
@functools.lru_cache(maxsize=1024)
def _code_names(code):
    return tuple(ast_names(code))


@functools.lru_cache(maxsize=1024)
def _plain_code(code):
    return replace_bare_funcalls(code, lambda token: token)


class QuickFactor(EvalFactor if HAVE_PATSY else object):
    """patsy's ``EvalFactor``, whose set-up for a factor without a stateful transform reuses
    the parse of its code: patsy tokenizes the code three times per factor and build.

    The state is the one ``EvalFactor.memorize_passes_needed`` makes (no transforms, the
    namespace subset to the code's names, the code as patsy rewrites it, no memorize pass);
    a factor naming a stateful transform (``center``, ``bs``, ...) goes to patsy's own.
    Equal to (and hashed as) the ``EvalFactor`` of the same code.
    """

    def memorize_passes_needed(self, state, eval_env):
        env = eval_env.with_outer_namespace(PATSY_BUILTINS)
        ns = env.namespace
        names = [n for n in _code_names(self.code) if n in ns]
        if any(hasattr(ns[n], "__patsy_stateful_transform__") for n in names):
            return super().memorize_passes_needed(state, eval_env)
        state["transforms"] = {}
        state["eval_env"] = env.subset(names)
        state["eval_code"] = _plain_code(self.code)
        state["memorize_code"] = {}
        state["pass_bins"] = []
        return 0

    def eval(self, memorize_state, data):
        # a bare name: what patsy's eval of it finds first, the data's column (no compile)
        code = memorize_state["eval_code"]
        if code.isidentifier() and not keyword.iskeyword(code):
            try:
                return data[code]
            except KeyError:
                pass
        return super().eval(memorize_state, data)


def _quick_agrees():
    """Whether QuickFactor's set-up is patsy's own on this patsy (else EvalFactors are kept)."""
    try:
        env = EvalEnvironment([{"np": np, "k": 2.0}])
        code = "np.log(x) + k * C(f)"
        a, b = {}, {}
        na = EvalFactor(code).memorize_passes_needed(a, env)
        nb = QuickFactor(code).memorize_passes_needed(b, env)
        same_env = all(a["eval_env"].namespace[n] is b["eval_env"].namespace[n]
                       for n in ("np", "k", "C")) and a["eval_env"].flags == b["eval_env"].flags
        return (na == nb and a.keys() == b.keys() and same_env
                and all(a[k] == b[k] for k in ("transforms", "eval_code", "memorize_code",
                                                "pass_bins")))
    except Exception:  # noqa: BLE001 - a patsy that differs: keep its own factors
        return False


_QUICK = HAVE_PATSY and _quick_agrees()


def _quick(termlist):
    if not _QUICK:
        return termlist
    return [Term([QuickFactor(f.code, f.origin) if type(f) is EvalFactor else f
                  for f in term.factors]) for term in termlist]


@functools.lru_cache(maxsize=512)
def _desc(text):
    """patsy's parse of a formula as (lhs termlist, rhs termlist), factors as QuickFactors
    (terms and factors are immutable)."""
    desc = ModelDesc.from_formula(text)
    return _quick(desc.lhs_termlist), _quick(desc.rhs_termlist)


class Plan:
    """The termlists of every piece, where each piece's matrix is, and what the formula does.

    Attributes
    ----------
    termlists : list of lists of patsy Terms
    y, x : int or None
        Index of the response (None: read from the data) and the fixed design.
    lhs : dict
        Bar term left-hand side -> index.
    offsets : list of int
    pandas : bool
        Columns are handed to patsy as pandas Series (the pandas mode).
    rowwise : bool
    bare : dict
        Factor code -> the column it is (for :func:`levels_kept`).
    env : patsy EvalEnvironment
    """

    def __init__(self):
        self.termlists = []
        self.y = None
        self.x = None
        self.lhs = {}
        self.offsets = []
        self.pandas = False
        self.rowwise = True
        self.bare = {}
        self.env = None
        self.has_factors = False
        self.env_free = True      # nothing but the columns decided it (no name of the namespace)
        self.source = self.codes = None

    def copy(self):
        """A shallow copy (``copy.copy``'s, without its reduce protocol: ~25 us less cold)."""
        new = Plan.__new__(Plan)
        new.__dict__.update(self.__dict__)
        return new

    def _add(self, termlist):
        self.termlists.append(termlist)
        return len(self.termlists) - 1


def make_plan(parsed, fixed, columns, env, cbind=None):
    """The :class:`Plan` of a parsed formula on a table with ``columns``, or raise :class:`Fallback`.

    Parameters
    ----------
    parsed : ParsedFormula
    fixed : FixedParts
    columns : pandas.Index
    env : dict
        The formula's namespace.
    cbind : callable, optional
        mlmext's ``cbind`` (row-wise).
    """
    if not HAVE_PATSY or not isinstance(env, dict) or isinstance(columns, pd.MultiIndex):
        raise Fallback("no patsy, or a namespace / columns the one-pass build does not take")
    plan = Plan()
    try:
        lhs, rhs = _desc(fixed.formula)
        if fixed.response_column is None:
            if not lhs:
                raise Fallback("no response")
            plan.y = plan._add(lhs)
        elif lhs:
            raise Fallback("a response where none is expected")
        plan.x = plan._add(rhs)
        for bar in parsed.bars:
            if bar.lhs not in plan.lhs:
                lhs, rhs = _desc(bar.lhs)
                if lhs:
                    raise Fallback("a response in a bar term")
                plan.lhs[bar.lhs] = plan._add(rhs)
        for expr in parsed.offsets:
            lhs, rhs = _desc(f"0 + {expr}")
            if lhs:
                raise Fallback("a response in an offset")
            plan.offsets.append(plan._add(rhs))
    except Fallback:
        raise
    except Exception as exc:  # noqa: BLE001 - a formula patsy cannot parse: the generic path says why
        raise Fallback(str(exc)) from exc
    factors = {f for tl in plan.termlists for term in tl for f in term.factors}
    plan.has_factors = bool(factors)
    # what the termlists are made of (they are a function of these texts), and their codes
    plan.source = (fixed.formula, fixed.response_column, tuple(plan.lhs), tuple(parsed.offsets))
    plan.codes = tuple(sorted({f.code for f in factors}))
    for f in factors:
        if not isinstance(f, EvalFactor):
            raise Fallback("a factor that is not patsy code")
        info = code_info(f.code)
        if info is None:                # syntax the NumPy mode does not take
            plan.pandas = True
            continue
        if info.c_levels:
            plan.rowwise = False
        for path, called in info.refs:
            plan.env_free &= path[0] in columns
            obj = resolve(path, columns, env)
            if obj is _MISSING:
                if path[0] in columns:  # x.mean(): a Series' method
                    plan.pandas = True
                    continue
                raise Fallback(f"unknown name {'.'.join(path)!r}")
            if isinstance(obj, str) and obj == "column":
                continue
            kind = kind_of(obj, called, cbind)
            if kind == "pandas":
                plan.pandas = True
            elif kind != "rowwise":
                plan.rowwise = False
        plan.env_free &= info.bare is None or info.bare[0] not in ("C", "Q")
        col = bare_column(info.bare, columns, env)
        if col is not None:
            plan.bare[f.code] = col
    if plan.pandas:
        plan.rowwise = False
        # a factor of the data's length, with its index: patsy checks the other factors' rows
        # and index against it, as against a DataFrame's
        plan._add([Term([EvalFactor(ROWS)])])
        plan.has_factors = True
    plan.env = EvalEnvironment([env])
    return plan


# ------------------------------------------------------------------ the data
class SeriesLikeArray(np.ndarray):
    """A NumPy column whose elements iterate as Python scalars, as a pandas Series' do.

    patsy finds the levels of a categorical factor (``C(k)`` of an integer column) by
    iterating over its values: a Series gives ``1``, an array ``np.int64(1)``, and the levels
    name the design's columns (``C(k)[T.1]``).  Results of operations on it stay of this
    class, as pandas operations on a Series give a Series; ``np.asarray`` gives a plain array,
    as it does of a Series.
    """

    def __iter__(self):
        return iter(self.tolist()) if self.ndim == 1 else super().__iter__()


#: the store's name of a zero column with the data's rows (the pandas mode's row check)
ROWS = "_mlmext_rows_"


def _numpy_values(a, name):
    """A column (its :meth:`FrameColumns.array`) as patsy sees it through statsmodels (strings
    as objects), without pandas."""
    dt = a.dtype
    if isinstance(dt, pd.CategoricalDtype):
        return a
    if isinstance(dt, pd.StringDtype):               # statsmodels converts these to object
        return a.to_numpy(dtype=object)
    if isinstance(dt, np.dtype) and dt.kind == "O":
        return a
    if isinstance(dt, np.dtype) and dt.kind in "biufc":
        return a.view(SeriesLikeArray)
    raise Fallback(f"column {name!r} has dtype {dt}")


def _unused(cat):
    codes = np.asarray(cat.codes)
    k = len(cat.categories)
    if k == 0:
        return False
    present = np.bincount(codes[codes >= 0], minlength=k)
    return bool(np.any(present == 0))


def _series_values(s, rows):
    """A column as the generic path hands it to patsy: a Series with a RangeIndex (strings
    as objects, as statsmodels converts them)."""
    if rows is not None:
        s = s.take(rows)
    idx = s.index
    if not (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1):
        s = s.reset_index(drop=True)
    if isinstance(s.dtype, pd.StringDtype):
        s = s.astype(object)
    return s


def _categorical(v):
    """The pandas ``Categorical`` of a store value, or None."""
    if isinstance(v, pd.Categorical):
        return v
    if isinstance(v, pd.Series) and isinstance(v.dtype, pd.CategoricalDtype):
        return v.array
    return None


class ColumnStore:
    """The data patsy reads: the columns of ``data`` it asks for, converted when first asked
    for, on the rows ``rows`` (positions; None: all).

    In NumPy mode numeric columns are :class:`SeriesLikeArray` views, categoricals pandas
    ``Categorical``, others object arrays; in pandas mode (``pandas=True``) each column is
    the Series the generic path gives patsy.  With ``drop_unused`` the categoricals lose
    their unused categories (but those in ``keep``, the response), as R's model frame drops
    unused levels.
    """

    def __init__(self, data, rows=None, drop_unused=False, keep=(), pandas=False, columns=None):
        self.data = data
        self.columns = FrameColumns(data) if columns is None else columns
        self.rows = rows
        self.drop_unused = drop_unused
        self.keep = keep
        self.pandas = pandas
        self.values = {}
        self.nrows = len(data) if rows is None else len(rows)
        # patsy looks every name up here first (np, C, ...): a set answers faster than an Index
        self.labels = per_object(frozenset, column_labels(data.columns))

    def __getitem__(self, key):
        v = self.values.get(key, _MISSING) if isinstance(key, str) else _MISSING
        if v is not _MISSING:
            return v
        try:
            present = key in self.labels
        except TypeError:
            present = False
        if not present:
            if self.pandas and key == ROWS:
                v = self.values[key] = pd.Series(np.zeros(self.nrows))
                return v
            raise KeyError(key)
        if self.pandas:
            v = _series_values(self.columns[key], self.rows)
        else:
            v = _numpy_values(self.columns.array(key), key)
            if self.rows is not None:
                v = v[self.rows]
        cat = _categorical(v)
        if self.drop_unused and cat is not None and key not in self.keep and _unused(cat):
            v = v.cat.remove_unused_categories() if self.pandas else v.remove_unused_categories()
        self.values[key] = v
        return v

    def __contains__(self, key):
        try:
            self[key]
        except KeyError:
            return False
        return True

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def has_unused(self):
        """Whether a categorical the engine read (the response aside) has unused categories."""
        return any(k not in self.keep and _categorical(v) is not None and _unused(_categorical(v))
                   for k, v in self.values.items())


class RecordingNA(NAAction):
    """patsy's "drop" for None and NaN, keeping the rows dropped (``mask``, True: dropped);
    no copy when nothing is dropped."""

    def __init__(self):
        super().__init__(on_NA="drop", NA_types=["None", "NaN"])
        self.mask = None

    def _handle_NA_drop(self, values, is_NAs, origins):
        total = np.zeros(np.shape(is_NAs[0])[0], dtype=bool)
        for m in is_NAs:
            total |= np.asarray(m, dtype=bool)
        self.mask = total
        if not total.any():
            return values
        good = ~total
        return [v[good] if v.ndim == 1 else v[good, ...] for v in values]


def engine_pass(plan, store):
    """Design infos learned on ``store`` and every piece's matrix on its complete rows.

    Returns
    -------
    infos : list of patsy DesignInfo
    mats : list of ndarray
        On the rows not in ``mask``.
    mask : ndarray of bool or None
        Rows with a missing value in some factor (None: none has one).
    """
    na = RecordingNA()
    try:
        infos = design_infos(plan, store, lambda: design_matrix_builders(
            plan.termlists, lambda: iter([store]), plan.env, na))
        mats = numeric_matrices(infos, store, na, plan.bare) \
            if plan.has_factors and not plan.pandas else None
        if mats is None:
            data = store if plan.has_factors else pd.DataFrame(index=pd.RangeIndex(store.nrows))
            mats = build_design_matrices(infos, data, NA_action=na)
    except Fallback:
        raise
    except Exception as exc:  # noqa: BLE001 - the generic path raises its own message
        raise Fallback(str(exc)) from exc
    mask = na.mask
    if mask is not None and mask.shape != (store.nrows,):
        raise Fallback("factors with a number of rows other than the data's")
    mats = [np.asarray(m) for m in mats]
    nkeep = store.nrows - (0 if mask is None else int(np.add.reduce(mask)))
    if any(m.shape[0] != nkeep for m in mats):
        raise Fallback("matrices with a number of rows other than the data's")
    if plan.y is not None and mats[plan.y].shape[1] == 0:
        raise Fallback("a response with no columns")
    for i in plan.offsets:
        if mats[i].shape[1] != 1:
            raise Fallback("an offset that is not one column")
    return infos, mats, mask


def levels_kept(plan, infos, store, keep):
    """Whether every categorical factor keeps all its levels on the rows ``keep`` (a mask over
    the store's rows): then a row-wise formula's matrices there are the rows of its matrices."""
    seen = set()
    for info in infos:
        for fi in info.factor_infos.values():
            if fi.type != "categorical" or fi in seen:
                continue
            seen.add(fi)
            col = plan.bare.get(fi.factor.code)
            if col is None:
                return False
            if col in store.keep:       # the response keeps its categories
                continue
            v = store[col]
            k = len(fi.categories)
            if isinstance(v, pd.Categorical):
                codes = np.asarray(v.codes)[keep]
                if np.unique(codes[codes >= 0]).size < k:
                    return False
            elif v.dtype == bool:
                continue                 # patsy's levels of booleans are always (False, True)
            elif v.dtype.kind in "iufc":
                if np.unique(v[keep]).size != k:
                    return False
            elif len(set(pd.unique(v[keep]))) != k:
                return False
    return True
