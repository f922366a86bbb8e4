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

from .immutable_cache import column_labels

__all__ = ["frame_data"]


def frame_data(endog, exog):
    """The ``PandasData`` that ``handle_data(endog, exog, missing="none")`` makes, or None when
    the inputs are not a numeric Series and a DataFrame (then statsmodels' own path runs).

    Same attributes as statsmodels' ``ModelData.__init__`` sets with ``missing="none"`` and
    no extra arrays: ``orig_endog``, ``orig_exog``, ``endog``, ``exog``, ``const_idx``,
    ``k_constant``, ``_cache``; names and row labels come from the pandas inputs on first
    use, as there.
    """
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
        mx, mn = X.max(axis=0), X.min(axis=0)
        const = (mx == mn).nonzero()[0]
        # (a column of equal values has a nonzero mean exactly when its value is nonzero)
        if const.size == 1 and mx[const[0]] != 0 and np.isfinite(mx).all():
            data.k_constant, data.const_idx = 1, int(const[0])
            return
    data._handle_constant(None)
