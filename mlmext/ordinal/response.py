"""Category codes and labels of an ordinal response."""
from __future__ import annotations

import numbers
import re
import warnings

import numpy as np
import pandas as pd

__all__ = ["ordinal_response", "unwrap_factor_response"]


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
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        lut = {}
        for i, v in enumerate(levels):
            for key in _value_keys(v):
                if lut.get(key, i) != i:
                    raise ValueError(f"levels for {name!r} has duplicates: {levels} ({levels[lut[key]]!r} "
                                     f"and {v!r} are the same value)")
                lut[key] = i
        present = s.dropna()
        uniq = pd.unique(present.to_numpy(dtype=object))
        code_of = {}
        unknown = []
        for v in uniq:
            hit = next((lut[k] for k in _value_keys(v) if k in lut), None)
            if hit is None:
                unknown.append(v)
            code_of[_first_key(v)] = hit
        if unknown:
            shown = sorted(map(repr, unknown))[:10]
            raise ValueError(f"the response {name!r} has values {', '.join(shown)} that are not in "
                             f"levels={levels!r}; its values are "
                             f"{sorted(map(repr, uniq))[:10]} ({s.dtype} column): give levels as "
                             "those values (numbers match numerically: level 1 matches 1.0)")
        codes = np.full(len(s), np.nan)
        codes[s.notna().to_numpy()] = [code_of[_first_key(v)] for v in present.to_numpy(dtype=object)]
        return codes, levels
    if isinstance(s.dtype, pd.CategoricalDtype):
        if not s.cat.ordered:
            raise ValueError(
                f"the response {name!r} is an unordered categorical; declare the order of its "
                f"categories, e.g. data[{name!r}] = data[{name!r}].cat.as_ordered() (to use the "
                f"current category order {list(s.cat.categories)[:6]}), pass levels=[lowest, ..., highest], "
                f"or write the response as C({name}) in the formula (R's factor(): that order)")
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
        f"pd.Categorical(data[{name!r}], categories=[...], ordered=True), pass levels=[lowest, ..., "
        f"highest], or write the response as C({name}) in the formula to take the values in sorted "
        "order (R's factor())")


def _value_keys(v):
    """Keys under which a response value or a level matches: numbers by value (``1``, ``1.0``
    and ``np.int64(1)`` are one category), strings as written, and a string that spells a
    number also by that number (``"1"`` matches ``1``)."""
    if isinstance(v, (bool, np.bool_)):
        return [("bool", bool(v)), ("str", str(v))]
    if isinstance(v, numbers.Number):
        f = float(v)
        keys = [("num", f)]
        if f == int(f) if np.isfinite(f) else False:
            keys.append(("str", str(int(f))))
        return keys + [("str", str(v))]
    keys = [("str", str(v))]
    try:
        keys.append(("num", float(str(v))))
    except ValueError:
        pass
    return keys


def _first_key(v):
    return _value_keys(v)[0]


def _drop_unused_levels(codes, labels, name, weights=None):
    """Drop unused categories (with a warning); at least two must be observed.

    With ``weights``, a category is used when its total weight is positive: rows of zero
    weight carry no information (R's glm and clm drop them), so a category with only such
    rows is as unused as an empty one.  Those rows are given the code of the nearest used
    category below (or above), which changes nothing in the likelihood.
    """
    ok = ~np.isnan(codes)
    present = np.unique(codes[ok]).astype(int)
    used = present
    zero = []
    if weights is not None and len(weights) == len(codes):
        used = np.unique(codes[ok & (weights > 0)]).astype(int)
        zero = [labels[i] for i in present if i not in set(used)]
    if used.size < 2:
        raise ValueError(f"the response {name!r} has {used.size} observed categor"
                         f"{'y' if used.size == 1 else 'ies'}"
                         f"{' (' + str(labels[used[0]]) + ')' if used.size == 1 else ''}"
                         f"{' with positive weight' if zero else ''}; "
                         "an ordinal model needs at least two")
    if zero:
        warnings.warn(f"response {name!r}: categories {zero} have only rows with zero weight "
                      "and were dropped", UserWarning, stacklevel=4)
        near = {}
        for i in present:
            below = used[used <= i]
            near[int(i)] = int(below[-1]) if below.size else int(used[0])
        codes = codes.copy()
        codes[ok] = [near[int(c)] for c in codes[ok]]
    if used.size < len(labels):
        unused = [labels[i] for i in range(len(labels)) if i not in set(used) and labels[i] not in zero]
        if unused:
            warnings.warn(f"response {name!r}: unused categories {unused} were dropped", UserWarning,
                          stacklevel=4)
        remap = np.full(len(labels), -1.0)
        remap[used] = np.arange(used.size)
        new = np.full_like(codes, np.nan)
        new[ok] = remap[codes[ok].astype(int)]
        return new, [labels[i] for i in used]
    return codes, list(labels)


_FACTOR_CALL = re.compile(r"^\s*(C|factor|as\.factor|ordered|as\.ordered)\s*\((.*)\)\s*$", re.S)


def unwrap_factor_response(formula, data, levels):
    """``C(score) ~ ...`` (or R's ``factor(score)``, ``as.factor``, ``ordered``,
    ``as.ordered``): the formula with the bare column as response, and the categories.

    The wrapper says "the values are categories"; their order is then R's ``factor()``'s:
    a categorical column keeps its category order, numbers are sorted numerically and
    other values sorted (``levels=`` still decides when given).

    Returns
    -------
    formula : str
    levels : list or None
    """
    lhs, sep, rhs = formula.partition("~")
    m = _FACTOR_CALL.match(lhs)
    if not sep or m is None:
        return formula, levels
    inner = m.group(2).strip()
    if not inner or "," in inner or "(" in inner.replace("Q(", "", 1):
        raise ValueError(f"the response {lhs.strip()!r}: write the column alone inside "
                         f"{m.group(1)}() and give the category order with levels=[lowest, ..., "
                         "highest]")
    new = f"{inner} ~{rhs}"
    if levels is not None:
        return new, levels
    from ..frame import display_name
    col = display_name(inner)
    if col not in data.columns:
        return new, None                       # from_formula names the missing column
    s = data[col]
    if isinstance(s.dtype, pd.CategoricalDtype):
        return new, list(s.cat.categories)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return new, None                       # integers: sorted numerically already
    vals = pd.unique(s.dropna().to_numpy(dtype=object))
    try:
        return new, sorted(vals)
    except TypeError:                          # mixed types: as R, sort their text
        return new, sorted(vals, key=str)
