"""statsmodels' data object of a model built from a formula, without its pandas passes.

``statsmodels.base.data.handle_data`` turns the response Series and the design DataFrame into
a ``PandasData`` (the names and row labels the results wrap their output with).  On a small
model most of the build's time went there (~0.3 ms of ~2 ms on sleepstudy): reading the
frame through ``np.asarray`` asks for its dtypes (a new Series each time), and the checks
are pandas operations.  :func:`frame_data` makes the same object from the same inputs, the
arrays read with ``to_numpy`` (the same memory, layout and flags ``np.asarray`` gives) and
statsmodels' own constant detection and integrity check run on them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.base.data import PandasData

from .immutable_cache import column_labels, names_index

__all__ = ["frame_data", "formula_arrays", "FormulaResponse", "FormulaDesign", "LAZY_FRAMES"]


class FormulaResponse:
    """A formula's one-column response as an array and its name: the model's constructor takes
    it for the Series ``pd.Series(values, name=name)``, made only when something reads it."""

    __slots__ = ("values", "name")

    def __init__(self, values, name):
        self.values, self.name = values, name

    def series(self):
        """The Series it stands for (its values not copied)."""
        return pd.Series(self.values, name=self.name, copy=False)


class FormulaDesign:
    """A formula's fixed design as an (n, p) float array and its column names, for the
    DataFrame ``pd.DataFrame(values, columns=names_index(names))``."""

    __slots__ = ("values", "names")

    def __init__(self, values, names):
        self.values, self.names = values, names

    def frame(self):
        """The DataFrame it stands for (its values not copied)."""
        return pd.DataFrame(self.values, columns=names_index(self.names), copy=False)


def _copies_into_read_only():
    """Whether this pandas copies an array into a new Series / DataFrame and hands out read-only
    arrays of them, the frame's (n, p) array Fortran-ordered (pandas >= 3, copy-on-write): then
    :func:`frame_data` gives the model the same arrays from the build's arrays, and makes the
    pandas objects on first use only (after a garbage collection, making them cost ~0.15 ms
    of a ~1 ms sleepstudy build: pandas' code comes back from memory)."""
    A, y = np.zeros((3, 2)), np.zeros(3)
    a = pd.DataFrame(A).to_numpy(dtype=float)
    e = pd.Series(y).to_numpy()
    return (not np.shares_memory(a, A) and a.flags.f_contiguous and not a.flags.writeable
            and not np.shares_memory(e, y) and not e.flags.writeable)


#: the build hands the model a :class:`FormulaResponse` and a :class:`FormulaDesign`
LAZY_FRAMES = _copies_into_read_only()


def _read_only(a):
    a.flags.writeable = False
    return a


def formula_arrays(y, y_name, X, x_names):
    """A :class:`FormulaResponse` and a :class:`FormulaDesign` holding the copies that
    ``pd.Series(y, name=y_name)`` and ``pd.DataFrame(X, columns=x_names)`` hold where
    :data:`LAZY_FRAMES` (the design's Fortran-ordered): the model reads read-only views of
    them, as ``to_numpy()`` gives, and the pandas objects made on first use own them."""
    return (FormulaResponse(np.array(y), y_name),
            FormulaDesign(np.array(X, dtype=float, order="F"), list(x_names)))


class FormulaData(PandasData):
    """The ``PandasData`` of a :class:`FormulaResponse` and a :class:`FormulaDesign`: the same
    attributes, ``orig_endog`` and ``orig_exog`` made from the arrays when first read (each on
    its own: a copy of this object may have set one); pickled with both."""

    def __getattr__(self, name):
        src = self.__dict__.get("_formula_sources")
        if src is not None and name in ("orig_endog", "orig_exog"):
            value = src[0].series() if name == "orig_endog" else src[1].frame()
            setattr(self, name, value)
            return value
        raise AttributeError(name)

    def __getstate__(self):
        for name in ("orig_endog", "orig_exog"):
            getattr(self, name)
        d = super().__getstate__()
        d.pop("_formula_sources", None)
        return d


def frame_data(endog, exog):
    """The ``PandasData`` that ``handle_data(endog, exog, missing="none")`` makes, or None when
    the inputs are not a numeric Series and a DataFrame (then statsmodels' own path runs).

    Same attributes as statsmodels' ``ModelData.__init__`` sets with ``missing="none"`` and
    no extra arrays: ``orig_endog``, ``orig_exog``, ``endog``, ``exog``, ``const_idx``,
    ``k_constant``, ``_cache``; names and row labels come from the pandas inputs on first
    use, as there.
    """
    if type(endog) is FormulaResponse and type(exog) is FormulaDesign:
        return _formula_data(endog, exog)
    if type(endog) is not pd.Series or type(exog) is not pd.DataFrame:
        return None
    dt = endog.dtype
    if not (isinstance(dt, np.dtype) and dt.kind in "biuf") or len(endog) < 2:
        return None                    # (statsmodels' own checks and squeezing for those)
    data = PandasData.__new__(PandasData)
    data.orig_endog = endog
    data.orig_exog = exog
    data.endog = endog.to_numpy()
    xarr = exog.to_numpy(dtype=float)
    data.exog = xarr[:, None] if xarr.ndim == 1 else xarr
    data.const_idx = None
    data.k_constant = 0
    _handle_constant(data, data.exog)
    data._check_integrity()
    data._cache = {}
    if xarr.shape[1] and not isinstance(exog.columns, pd.MultiIndex):
        # the names statsmodels reads from the frame on first use (list(exog.columns) costs
        # ~2 us a label on an Index of Arrow strings; the build's Index comes with its labels)
        data._cache["xnames"] = list(column_labels(exog.columns))
    return data


def _handle_constant(data, X):
    """statsmodels' ``_handle_constant(None)`` on ``data``: ``k_constant`` and ``const_idx``
    of the design ``X``.  The usual design (finite, exactly one constant column, not zero: an
    intercept) is decided here with four array methods (statsmodels' own pass costs ~35 us of
    NumPy wrappers on a small model); any other design goes through statsmodels' code."""
    if X.shape[0] and X.shape[1]:
        # (the reductions by the ufuncs: ndarray.max's and .all's Python wrappers cost more here)
        mx, mn = np.maximum.reduce(X, axis=0), np.minimum.reduce(X, axis=0)
        const = (mx == mn).nonzero()[0]
        # (a column of equal values has a nonzero mean exactly when its value is nonzero)
        if const.size == 1 and mx[const[0]] != 0 and np.logical_and.reduce(np.isfinite(mx)):
            data.k_constant, data.const_idx = 1, int(const[0])
            return
    data._handle_constant(None)


def _formula_data(endog, exog):
    """:func:`frame_data` of ``endog.series()`` and ``exog.frame()`` (from
    :func:`formula_arrays`), the pandas objects left to :class:`FormulaData`."""
    data = FormulaData.__new__(FormulaData)
    data._formula_sources = (endog, exog)
    y, X = _read_only(endog.values.view()), _read_only(exog.values.view())
    data.endog, data.exog = y, X
    data.const_idx = None
    data.k_constant = 0
    _handle_constant(data, X)
    if len(X) != len(y):                 # (ModelData._check_integrity; the row labels are
        raise ValueError("endog and exog matrices are different sizes")   # both 0..n-1)
    data._cache = {"xnames": list(exog.names), "ynames": endog.name}
    return data
