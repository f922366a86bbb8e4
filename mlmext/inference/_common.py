"""Helpers the inference modules share: reading a fitted result, choosing rows, a progress bar."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._progress import Progress as _Progress  # noqa: F401  (the inference modules' bar)


def _raw(res):
    """The results instance behind a statsmodels ``ResultsWrapper``."""
    return getattr(res, "_results", res)


def _cache(res):
    res = _raw(res)
    c = res.__dict__.get("_inference_cache")
    if c is None:
        c = {}
        res.__dict__["_inference_cache"] = c
    return c


def _is_lmm(res):
    m = _raw(res).model
    return hasattr(m, "deviance_profiled")


def _is_glmm(res):
    m = _raw(res).model
    return hasattr(m, "family") and hasattr(m, "deviance")


def _require_lmm(res, what):
    if not _is_lmm(res):
        raise NotImplementedError(f"{what} is implemented for linear mixed models (lmer fits) only; "
                                  f"this is a {type(_raw(res).model).__name__} (for intervals use "
                                  "conf_int(method='boot') or the Wald intervals)")


def _require_independent(res, what):
    """NotImplementedError for a fit with ``correlation=`` (residuals correlated within groups):
    for what reads the model as if its residuals were independent (the results' methods of
    these names refuse it too; the module functions were reachable and answered for another
    model)."""
    cor = getattr(_raw(res).model, "correlation", None)
    if cor is not None:
        raise NotImplementedError(f"{what} is not implemented for models with a residual "
                                  f"correlation structure ({cor!r})")


def _require_no_zero_part(res, what):
    """NotImplementedError for a zero-inflated / hurdle fit, whose results' ``icc`` / ``r2`` /
    ``allfit`` refuse it: the count model's formulas would ignore the zero part."""
    if hasattr(_raw(res).model, "exog_zi"):
        raise NotImplementedError(f"{what} is not implemented for zero-inflated / hurdle models "
                                  "(the count model's formulas would ignore the zero part)")


def _fe_names(res):
    return list(_raw(res).model.exog_names)


def _params(res):
    return np.asarray(_raw(res).params, dtype=float)


def _beta(res):
    """The fixed effects (``fe_params``: ``params`` may also hold e.g. clmm's thresholds)."""
    r = _raw(res)
    if hasattr(r, "_fe_values"):
        return r._fe_values()
    fe = getattr(r, "fe_params", None)
    return np.asarray(fe if fe is not None else r.params, dtype=float)


def _family(res):
    """The model's statsmodels family (None for LMMs and clmm)."""
    return getattr(_raw(res).model, "family", None)


def _select(names, cols):
    """Positions of ``cols`` (names or positions) in ``names``; all when None."""
    if cols is None:
        return list(range(len(names)))
    if isinstance(cols, (str, int, np.integer)):
        cols = [cols]
    out = []
    for c in cols:
        if isinstance(c, (int, np.integer)):
            out.append(int(c))
        elif c in names:
            out.append(names.index(c))
        else:
            raise ValueError(f"unknown parameter {c!r}; choose from {names}")
    return out


def _same_rows(a, b):
    """(True, "") when two fits used the same rows and response, else (False, how they differ)."""
    ra, rb = _raw(a), _raw(b)
    if int(ra.nobs) != int(rb.nobs):
        return False, f"{int(ra.nobs)} and {int(rb.nobs)} observations"
    for m, other in ((ra.model, rb.model), (rb.model, ra.model)):
        if hasattr(m, "same_rows"):            # a Dask model: it holds no rows to compare
            return m.same_rows(other)
    la = ra.model.formula_info.get("row_labels") if hasattr(ra.model, "formula_info") else None
    lb = rb.model.formula_info.get("row_labels") if hasattr(rb.model, "formula_info") else None
    if la is not None and lb is not None and not pd.Index(la).equals(pd.Index(lb)):
        return False, "different rows of the data (row labels differ)"
    ya = np.asarray(ra.model.endog, dtype=float)
    yb = np.asarray(rb.model.endog, dtype=float)
    if ya.shape != yb.shape or not np.allclose(ya, yb, rtol=1e-10, atol=0, equal_nan=True):
        return False, "different responses"
    return True, ""
