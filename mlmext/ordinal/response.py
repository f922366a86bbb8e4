"""Category codes and labels of an ordinal response."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = ["ordinal_response"]


def ordinal_response(values, levels=None, name="response"):
    """Category codes and labels of an ordinal response.

    Parameters
    ----------
    values : array_like
        A pandas ordered ``Categorical`` (its category order is used), or
        integers (sorted numerically unless ``levels`` is given), or strings
        / an unordered categorical together with ``levels``.
    levels : sequence, optional
        The categories from lowest to highest.  Values not in ``levels``
        are an error.
    name : str
        Used in messages.

    Returns
    -------
    codes : ndarray of float
        ``0, ..., K - 1`` with ``nan`` for missing values.
    labels : list
        The categories in order (all of them, used or not).
    """
    s = pd.Series(values)
    if levels is not None:
        levels = list(levels)
        if len(set(map(str, levels))) != len(levels):
            raise ValueError(f"levels for {name!r} has duplicates: {levels}")
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        present = s.dropna()
        lut = {str(v): i for i, v in enumerate(levels)}
        keys = present.map(str)
        unknown = sorted(set(keys) - set(lut))
        if unknown:
            raise ValueError(f"response {name!r} has values {unknown[:10]} that are not in levels={levels}")
        codes = np.full(len(s), np.nan)
        codes[s.notna().to_numpy()] = keys.map(lut).to_numpy(dtype=float)
        return codes, levels
    if isinstance(s.dtype, pd.CategoricalDtype):
        if not s.cat.ordered:
            raise ValueError(
                f"the response {name!r} is an unordered categorical; declare the order of its "
                f"categories, e.g. data[{name!r}] = data[{name!r}].cat.as_ordered() (to use the "
                f"current category order {list(s.cat.categories)[:6]}) or pass levels=[lowest, ..., highest]")
        codes = s.cat.codes.to_numpy().astype(float)
        codes[codes < 0] = np.nan
        return codes, list(s.cat.categories)
    if pd.api.types.is_numeric_dtype(s.dtype):
        present = s.dropna().to_numpy(dtype=float)
        if present.size and not np.all(present == np.round(present)):
            raise ValueError(f"the response {name!r} has non-integer numbers; an ordinal response "
                             "must be an ordered categorical, integers, or values with levels=[...]")
        uniq = np.unique(present)
        labels = [int(v) for v in uniq]
        codes = np.full(len(s), np.nan)
        ok = s.notna().to_numpy()
        codes[ok] = np.searchsorted(uniq, present)
        return codes, labels
    example = list(pd.unique(s.dropna()))[:4]
    raise ValueError(
        f"the response {name!r} holds unordered values such as {example}; an ordinal response needs "
        f"an order: make it a pandas ordered Categorical, e.g. "
        f"pd.Categorical(data[{name!r}], categories=[...], ordered=True), or pass levels=[lowest, ..., highest]")


def _drop_unused_levels(codes, labels, name):
    """Drop unused categories (with a warning); at least two must be observed."""
    ok = ~np.isnan(codes)
    used = np.unique(codes[ok]).astype(int)
    if used.size < 2:
        raise ValueError(f"the response {name!r} has {used.size} observed categor"
                         f"{'y' if used.size == 1 else 'ies'}"
                         f"{' (' + str(labels[used[0]]) + ')' if used.size == 1 else ''}; "
                         "an ordinal model needs at least two")
    if used.size < len(labels):
        unused = [labels[i] for i in range(len(labels)) if i not in set(used)]
        warnings.warn(f"response {name!r}: unused categories {unused} were dropped", UserWarning,
                      stacklevel=4)
        remap = np.full(len(labels), -1.0)
        remap[used] = np.arange(used.size)
        new = np.full_like(codes, np.nan)
        new[ok] = remap[codes[ok].astype(int)]
        return new, [labels[i] for i in used]
    return codes, list(labels)
