"""Input tables -> a pandas DataFrame with NumPy-backed columns the formula engine reads.

Users bring polars and pyarrow tables (statsmodels 0.15 accepts polars) and pandas
columns with nullable dtypes (``Int64``, ``Float64``, ``boolean``, ``string``,
pyarrow-backed) whose missing value is ``pd.NA``, which patsy cannot evaluate.
:func:`as_dataframe` converts them once at the front door so that ``pd.NA``
is an ordinary missing value (dropped and counted like NaN) and nothing later
needs to know where the table came from.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .immutable_cache import column_labels

__all__ = ["as_dataframe", "as_series", "categoricals_as_values", "column_labels", "convert_columns",
           "pandas_table"]


def as_dataframe(data, where="data"):
    """``data`` as a pandas DataFrame with NumPy-backed columns.

    Parameters
    ----------
    data : pandas.DataFrame, polars.DataFrame, pyarrow.Table, dict or structured array
        Anything with named columns.  A plain 2-D array has no column names
        for a formula to use and raises ``TypeError``.
    where : str
        The argument's name, for the error message.

    Returns
    -------
    pandas.DataFrame
        ``data`` itself when no column needed converting, else a shallow copy
        with nullable and pyarrow-backed columns converted: numbers to
        ``int64`` (no missing values) or ``float64`` with NaN, booleans to
        ``bool`` or ``object`` with None, strings to ``object`` with None.
    """
    df = pandas_table(data, where)
    return convert_columns(df, column_labels(df.columns), df.dtypes.tolist())[0]


def pandas_table(data, where="data"):
    """``data`` as a pandas DataFrame, its columns as they are (:func:`as_dataframe` without
    the conversions)."""
    if isinstance(data, pd.DataFrame):
        df = data
    elif type(data).__module__.split(".")[0] == "dask":
        # computing it here would pull all of it into memory: only the formula API's lmer
        # and glmer take Dask data
        raise TypeError(f"{where}: a Dask collection is taken by mf.lmer and mf.glmer only "
                        "(binomial and Poisson); other models, the statsmodels-style "
                        "constructors and new data for this method need a pandas DataFrame")
    elif hasattr(data, "to_pandas") and callable(data.to_pandas):   # polars, pyarrow, narwhals
        try:
            df = data.to_pandas()
        except ModuleNotFoundError:
            # polars' to_pandas needs pyarrow; its columns as lists need nothing
            if not hasattr(data, "to_dict"):
                raise
            df = pd.DataFrame(data.to_dict(as_series=False))
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{where}: {type(data).__name__}.to_pandas() did not give a DataFrame")
    elif isinstance(data, dict) or (isinstance(data, np.ndarray) and data.dtype.names):
        df = pd.DataFrame(data)
    else:
        raise TypeError(f"{where} must be a table with named columns (a pandas or polars DataFrame, "
                        f"a pyarrow Table or a dict of columns); got {type(data).__name__}")
    if not df.columns.is_unique:
        dup = df.columns[df.columns.duplicated()].unique().tolist()
        raise ValueError(f"{where} has duplicated column names {dup}; a formula cannot tell them apart")
    return df


def convert_columns(df, names, dtypes, series=None):
    """:func:`as_dataframe`'s conversions of the columns ``names`` (with their ``dtypes``) of a
    pandas DataFrame: ``(df, dtypes)``, ``df`` itself when none needed converting, else a
    shallow copy with those columns converted, and the dtypes after.  ``series``: where to
    read ``df``'s columns (default ``df``)."""
    get = df.__getitem__ if series is None else series.__getitem__
    converted = {c: _numpy_backed(get(c)) for c, dt in zip(names, dtypes) if _needs_conversion(dt)}
    if not converted:
        return df, list(dtypes)
    df = df.copy(deep=False)
    for c, s in converted.items():
        df[c] = s
    return df, [converted[c].dtype if c in converted else dt for c, dt in zip(names, dtypes)]


def as_series(values):
    """A polars / pyarrow column as a pandas Series (polars without pyarrow: through a list)."""
    try:
        return values.to_pandas()
    except ModuleNotFoundError:
        if not hasattr(values, "to_list"):
            raise
        return pd.Series(values.to_list(), name=getattr(values, "name", None))


def _needs_conversion(dtype):
    if isinstance(dtype, (pd.CategoricalDtype, pd.DatetimeTZDtype, pd.PeriodDtype,
                          pd.IntervalDtype, pd.SparseDtype)):
        return False
    if isinstance(dtype, pd.StringDtype):
        return dtype.na_value is pd.NA        # pandas' default "str" dtype uses NaN: fine as is
    return isinstance(dtype, pd.api.extensions.ExtensionDtype)


def _numpy_backed(s):
    """One nullable / pyarrow-backed column as a NumPy-backed Series (pd.NA -> NaN or None)."""
    na = s.isna().to_numpy()
    kind = getattr(s.dtype, "kind", "O")
    if kind in "iu":
        return s.astype("float64" if na.any() else "int64")
    if kind == "f":
        return s.astype("float64")
    if kind == "b":
        return s.astype(object).where(~na, None) if na.any() else s.astype(bool)
    if kind == "M":
        return pd.to_datetime(s)
    return s.astype(object).where(~na, None)


def categoricals_as_values(df):
    """``df`` with its pandas categorical columns as their values (``object``), for new data.

    The formula engine learned each factor's levels in fitting and matches new values to them
    by value, as R's ``model.frame(xlev=)``; a categorical column would instead have to carry
    exactly the fitted categories in the fitted order (patsy: "mismatching levels"), which
    new data made from a subset of rows, or with categories in another order, do not.
    """
    cats = [c for c, dt in zip(df.columns, df.dtypes) if isinstance(dt, pd.CategoricalDtype)]
    if not cats:
        return df
    df = df.copy(deep=False)
    for c in cats:
        df[c] = df[c].astype(object)
    return df
