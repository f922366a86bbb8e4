"""Checks and conversions of gee_select's inputs: columns, the family, the formula.

Each helper either returns the input in the form the fits need (a column as a Series on
the rows of the data, numeric time, a family instance, the formula's matrices) or raises
an error that names the column or argument at fault.
"""
from __future__ import annotations

import io
import keyword
import tokenize

import numpy as np
import pandas as pd
from statsmodels.genmod import families

from .._frames import as_dataframe, as_series
from ..design import column_keys
from ..frame import evaluate, formula_manager
from .criteria import _QIC_FAMILIES


def _label(value):
    """How messages name an argument: its column name, or ``(array)``."""
    return value if isinstance(value, str) else "(array)"


def _column(data, value, what):
    """A column of ``data`` given by name, or values with one per row of ``data``, as a Series.

    A pandas Series is matched to the rows of ``data`` by index label, not by
    position: a column of another frame holding the same rows in another order
    would otherwise be assigned to the wrong rows without an error.  Polars,
    pyarrow and nullable values are converted as ``data`` is (``pd.NA`` becomes
    a missing value).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in data.columns:
            raise ValueError(f"unknown column {value!r} for {what}; the data has columns {list(data.columns)}")
        return data[value]
    if isinstance(value, (list, tuple)) and 1 < len(value) < len(data) and all(
            isinstance(v, str) and v in data.columns for v in value):
        raise ValueError(f"{what} takes one column, got {list(value)}; for clusters defined by several "
                         "columns, combine them into one, e.g. "
                         f"data[{value[0]!r}].astype(str) + ':' + data[{value[1]!r}].astype(str)")
    if isinstance(value, pd.Series):
        if not value.index.equals(data.index):
            if not (len(value) == len(data) and value.index.is_unique and data.index.is_unique
                    and value.index.isin(data.index).all()):
                raise ValueError(f"{what} is a pandas Series whose index does not match the index of data; "
                                 f"give a column name, or {what}=<series>.to_numpy() to match rows by position")
            value = value.reindex(data.index)
    else:
        if hasattr(value, "to_pandas"):            # polars Series, pyarrow arrays
            value = as_series(value)
        if isinstance(value, (pd.Series, pd.Index)):
            value = value.array
        if np.ndim(value) != 1 or len(value) != len(data):
            raise ValueError(f"{what} must be a column name or an array with one value per row of data "
                             f"({len(data)} rows)")
        value = pd.Series(value, index=data.index)
    return as_dataframe(value.to_frame("v"))["v"]


_TIME_KINDS = ("datetime64", "datetime", "date", "timedelta64", "timedelta", "period")


def _numeric(s, what, label):
    """``s`` as float (missing values NaN), or ``ValueError`` naming the column."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype(object)
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if kind in _TIME_KINDS:
        if what != "time":
            raise ValueError(f"{what} {label!r} must be numeric; it holds {kind} values")
        # A datetime has no unit a lag could be counted in (it would be nanoseconds, and an
        # AR(1) over lags of 10**14 is meaningless), so the user chooses the unit.
        if kind.startswith("timedelta"):
            example = f"df[{label!r}].dt.days for days, df[{label!r}] / pd.Timedelta(weeks=1) for weeks"
        else:
            example = f"(df[{label!r}] - df[{label!r}].min()).dt.days for days"
        raise ValueError(f"time {label!r} holds {kind} values; AR(1) lags and unstructured cells are "
                         "differences of time in its own unit, which a date or duration does not have. "
                         f"Give numeric time in the unit a lag should use, e.g. {example}, "
                         "or visit numbers")
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna()
    if bad.any():
        hint = " (for dates, give numbers such as the days since the first date)" if what == "time" else ""
        raise ValueError(f"{what} {label!r} must be numeric; it has values such as "
                         f"{s[bad].iloc[0]!r}{hint}")
    return num.astype(float)


def _check_finite(values, what, labels):
    """``ValueError`` if ``values`` (the rows used) has an infinite or undefined value."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"{what} has {int(bad.sum())} infinite or undefined values on the rows used "
                         f"(first at row {labels[np.argmax(bad)]!r}); infinity is not a missing value: "
                         "correct those rows, or set them to NaN to drop them")


def _outside_arrays(formula, data, env):
    """Names in ``formula`` that are not columns of ``data`` but arrays of its length in ``env``."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(formula).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    env = getattr(env, "namespace", env)        # a patsy EvalEnvironment
    out = []
    for i, tok in enumerate(tokens):
        name = tok.string
        attribute = i > 0 and tokens[i - 1].string == "."                       # np.log
        argument = i + 1 < len(tokens) and tokens[i + 1].string == "="          # bs(x, df=3)
        if (tok.type == tokenize.NAME and not keyword.iskeyword(name) and name not in data.columns
                and name not in out and not attribute and not argument):
            try:
                obj = env[name]
            except Exception:  # noqa: BLE001 - not a variable of the namespace
                obj = None
            if (isinstance(obj, (np.ndarray, pd.Series, pd.Index, pd.DataFrame, list, tuple,
                                 pd.api.extensions.ExtensionArray))
                    and np.ndim(obj) >= 1 and len(obj) == len(data)):
                out.append(name)
    return out


def _aliased(X):
    """Columns of ``X`` that are linear combinations of the columns before them (R's aliased)."""
    X = np.asarray(X, dtype=float)
    if X.shape[1] == 0:
        return []
    r = np.linalg.qr(X, mode="r")
    dist = np.zeros(X.shape[1])            # distance of each column from the span of the earlier ones
    k = min(r.shape)
    dist[:k] = np.abs(np.diag(r)[:k])
    return list(np.flatnonzero(dist <= 1e-7 * np.linalg.norm(X, axis=0)))


def _formula_rows(formula, data, eval_env, what):
    """The formula's matrices on the complete cases of the variables it uses (row labels kept)."""
    return evaluate(formula_manager(), formula, data, eval_env, f"{what} {formula!r}")


def _check_terms_have_columns(X, formula):
    """``ValueError`` for a term the formula engine gave no columns: a factor with one level
    (geepack and glm stop: "contrasts can be applied only to factors with 2 or more levels");
    dropping it would fit another model than the one written."""
    info = getattr(X, "design_info", None)          # (patsy's; another engine: not checked)
    slices = getattr(info, "term_name_slices", None) or {}
    empty = [name for name, sl in slices.items() if name != "Intercept" and sl.stop == sl.start]
    if empty:
        raise ValueError(f"term {empty[0]!r} of {formula!r} has no columns: a factor needs at "
                         "least 2 levels in the rows used (remove the term)")


def _check_label_kinds(values, name):
    """``ValueError`` if the labels ``values`` mix numbers, strings, ... (e.g. ``1`` and ``"1"``):
    the rule the mixed models apply to their grouping columns (:func:`mlmext.design.column_keys`)."""
    column_keys(values, name)


_FAMILY_NAMES = {"gaussian": families.Gaussian, "binomial": families.Binomial,
                 "poisson": families.Poisson, "gamma": families.Gamma}


def _resolve_family(family):
    """A family instance from an instance or one of the names in ``_FAMILY_NAMES``."""
    if isinstance(family, str):
        cls = _FAMILY_NAMES.get(family.strip().lower())
        if cls is None:
            raise ValueError(f"gee_select: unknown family {family!r}; give one of {list(_FAMILY_NAMES)} "
                             "(default link) or a statsmodels family instance such as "
                             "sm.families.Binomial(link=sm.families.links.Probit())")
        return cls()
    if isinstance(family, type) and issubclass(family, families.Family):
        raise ValueError(f"gee_select: family must be a family instance: write "
                         f"sm.families.{family.__name__}() with parentheses")
    if not isinstance(family, _QIC_FAMILIES):
        raise ValueError("gee_select: family must be a statsmodels Gaussian, Binomial, Poisson or "
                         f"Gamma family instance (the families with a QIC), got {family!r}")
    return family
