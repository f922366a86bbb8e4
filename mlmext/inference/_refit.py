"""Rebuilding a fitted model with other data (response, fixed design, rows) and refitting it."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..design import RandomEffectsDesign, ReTerm
from ._common import _cache, _is_lmm, _raw
from ._lockstep import lockstep_refit
from ._refit_start import moment_start


def _subset_design(des, keep):
    terms = []
    for t in des.terms:
        codes = t.codes[keep]
        used, newcodes = np.unique(codes, return_inverse=True)
        nt = ReTerm(t.name, t.factors, t.lhs, t.X[keep], t.colnames, newcodes.astype(np.int64),
                    [t.levels[i] for i in used])
        if hasattr(t, "spec"):
            nt.spec = t.spec
        terms.append(nt)
    return RandomEffectsDesign(terms)


def _rebuild_model(model, endog=None, exog=None, keep=None, design=None):
    """A new model of the same class with a new response, fixed design, or a subset of rows."""
    if exog is None and keep is None and design is None and endog is not None and \
            getattr(model, "_response_refit", False) and np.ndim(endog) == 1:
        return model._with_response(endog)      # only the response changes: nothing rebuilt
    data = getattr(model, "data", None)
    y = getattr(data, "orig_endog", None)
    if y is None:
        y = model.endog
    X = getattr(data, "orig_exog", None)
    if X is None:
        X = model.exog
    if endog is not None:
        endog = np.asarray(endog, dtype=float)
        if isinstance(y, pd.Series) and endog.ndim == 1:
            y = pd.Series(endog, index=y.index, name=y.name)
        elif isinstance(y, pd.DataFrame):
            y = pd.DataFrame(endog.reshape(y.shape), index=y.index, columns=y.columns)
        else:
            y = endog
    if exog is not None:
        X = exog
    w = np.asarray(model.weights, dtype=float)
    off = np.asarray(model.offset, dtype=float)
    des = model.re_design if design is None else design
    info = dict(getattr(model, "formula_info", {}))
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        y = y[keep] if not hasattr(y, "iloc") else y.iloc[np.flatnonzero(keep)]
        X = X[keep] if not hasattr(X, "iloc") else X.iloc[np.flatnonzero(keep)]
        w, off = w[keep], off[keep]
        des = _subset_design(des, keep)
        if info.get("row_labels") is not None:
            info["row_labels"] = info["row_labels"][keep]
        if isinstance(info.get("data"), pd.DataFrame):
            info["data"] = info["data"].loc[keep].reset_index(drop=True)
    kwargs = {}
    try:
        kwargs = dict(model._get_init_kwds())
    except Exception:  # noqa: BLE001 - statsmodels models without init keys
        pass
    for k in ("weights", "offset", "formula_info", "missing"):
        kwargs.pop(k, None)
    for k in ("family",):
        if hasattr(model, k) and k not in kwargs:
            kwargs[k] = getattr(model, k)
    try:
        new = type(model)(y, X, des, weights=w, offset=off, formula_info=info, **kwargs)
    except TypeError as exc:
        raise NotImplementedError(f"cannot rebuild a {type(model).__name__} from arrays "
                                  f"(needed to refit it): {exc}") from exc
    new.formula = getattr(model, "formula", None)
    return new


def _fit_kwargs(res):
    r = _raw(res)
    kw = {}
    if _is_lmm(r):
        kw["reml"] = bool(r.reml)
        kw["ddf"] = getattr(r, "ddf", "satterthwaite")     # the refit tests as this fit does
    nagq = getattr(r, "nagq", None)
    if nagq is not None:
        kw["nagq"] = nagq
    return kw


def _refit(model, res, start=True, **override):
    kw = _fit_kwargs(res)
    kw.update(override)
    if kw.get("ddf") == "kenward-roger" and kw.get("reml") is False:
        kw["ddf"] = "satterthwaite"      # an ML refit for a test or a profile: its df go unused
    if start and _is_lmm(res):
        kw.setdefault("start_params", _raw(res).theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _raw(model.fit(**kw))


def refit(res, endog, **fit_kwargs):
    """The fitted model refitted to a new response (lme4's ``refit(fit, newresp)``).

    Only the response changes: the fixed design, the random-effects design, weights and
    offsets are reused as they are (no formula is evaluated again), and the fit starts at
    this fit's theta (LMMs: on a small design with one grouping factor at the response's
    moment estimate of theta where its criterion is lower, see
    :meth:`~mlmext.linalg.levels_batch.LevelsBatch.moment_thetas`) with this fit's settings
    (REML/ML, ``nagq``); ``fit_kwargs`` override them.  Without ``fit_kwargs``, on such a
    design the refit is :func:`~mlmext.inference.refit_many`'s with one response: its
    lockstep Newton (the same checks, the results' model made on first use), and this
    function's own fit where that does not pass the checks or ends near a zero standard
    deviation (from the lowest point the lockstep found; so ``converged``, the warnings and
    boundary fits are a single fit's): ``refit(y)`` is ``refit_many([y])[0]``.

    Parameters
    ----------
    res : MixedResults
    endog : array_like
        One value per row of the fit (``res.nobs`` rows, after dropped rows), in the model's
        response scale: for a binomial model the proportions (or, for a ``cbind(s, f)`` or
        ``weights=`` model, a two-column array of successes and failures with the same
        totals); for a clmm a categorical (or labels) with the fit's categories, or the
        category codes ``0 .. K-1`` (the order of ``model.levels``) where the categories are
        not numbers other than those (ValueError: ambiguous).
    **fit_kwargs
        Passed to the model's ``fit``.

    Returns
    -------
    MixedResults
    """
    r = _raw(res)
    model = r.model
    old = np.asarray(model.endog, dtype=float)
    y = _ordinal_codes(model, endog) if hasattr(model, "y_codes") else np.asarray(endog, dtype=float)
    if y.ndim == 2 and y.shape[1] == 2 and old.ndim == 1 and _is_binomial(model):
        trials = y.sum(axis=1)
        if not np.allclose(trials, model.weights):
            raise ValueError("the successes and failures must add up to the fit's numbers of "
                             "trials (the binomial weights); refit changes the response only")
        y = np.divide(y[:, 0], trials, out=np.zeros(len(y)), where=trials > 0)
    if y.ndim == 2 and y.shape[1] == 1 and old.ndim == 1:
        y = y[:, 0]
    if y.shape != old.shape:
        raise ValueError(f"endog has shape {y.shape}; the fit's response has shape {old.shape} "
                         f"(one value per row used in the fit)")
    if not np.all(np.isfinite(y)):
        raise ValueError("endog has missing or non-finite values; refit keeps the rows of the fit")
    if not fit_kwargs and _is_lmm(r):
        fit, start = lockstep_refit(r, y)
        if fit is not None:
            return fit
        return refit_alone(r, y, start)
    return refit_alone(r, y, fit_kwargs=fit_kwargs)


def _ordinal_codes(model, endog):
    """A clmm's new response as the codes ``0 .. K-1`` of its categories: a categorical or
    labels mapped by the fit's levels, numbers checked to be such codes (labels 1..5 read as
    codes were a category off: an IndexError, or with labels 0..K-1 in another order, a silent
    refit to other categories; 1.5 was truncated to 1)."""
    y = pd.Series(np.asarray(endog).ravel()) if not isinstance(endog, pd.Series) else endog
    labels = [str(v) for v in model.levels]
    if isinstance(y.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(y.dtype):
        codes = y.astype(str).map({v: float(k) for k, v in enumerate(labels)})
        if codes.isna().any():
            bad = sorted(set(y.astype(str)[codes.isna()]))[:5]
            raise ValueError(f"endog has values {bad} that are not categories of the fit "
                             f"({labels})")
        return codes.to_numpy(dtype=float)
    nums = _numbers(labels)
    if nums is not None and nums != list(range(len(labels))):
        # categories that are numbers other than 0 .. K-1 (a fit to a column of 1..5): numbers
        # could be either those labels or the codes (the same column refitted, or codes
        # 0..3, would be read a category off in silence)
        raise ValueError(f"endog as numbers is ambiguous for this fit, whose categories are "
                         f"the numbers {labels}: give a categorical (or the labels as strings), "
                         f"e.g. pd.Categorical.from_codes(category codes, {labels})")
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(y)
    if np.any((y[ok] != np.round(y[ok])) | (y[ok] < 0) | (y[ok] > len(labels) - 1)):
        raise ValueError(f"endog must be the category codes 0 .. {len(labels) - 1} (in the "
                         f"order {labels}) or a categorical with those levels")
    return y


def _numbers(labels):
    """``labels`` as numbers (a list), or None where one is not a number."""
    try:
        return [float(v) for v in labels]
    except ValueError:
        return None


def refit_alone(r, y, start=None, fit_kwargs=None):
    """:func:`refit` of the fit ``r`` to the checked response ``y`` by the model's own fit
    (no lockstep), from ``start`` (None: :func:`refit`'s own start; members the lockstep
    leaves to a single refit start from the lowest point it found) with ``fit_kwargs``."""
    fit_kwargs = dict(fit_kwargs or {})
    if start is not None:
        fit_kwargs["start_params"] = start
    model = r.model
    kw = _fit_kwargs(r)
    if _is_lmm(r):
        kw["start_params"] = r.theta
    kw.update(fit_kwargs)
    new = _rebuild_model(model, endog=y)
    if _is_lmm(r) and "start_params" not in fit_kwargs:
        kw["start_params"] = moment_start(r, y, kw.get("reml", True))
    extras = getattr(getattr(r, "optim", None), "extras", {})
    scale = extras.get("scale")
    if _is_lmm(r) and scale is not None and new is not model:
        # the start is this fit's theta: so is the optimizer's scale, and this fit's Hessian
        # there tells a start far from the new optimum (settings of the private copy)
        new._refit_scale = (bool(r.reml), scale)
        H = extras.get("hessian")
        if H is not None:
            new._refit_hessian = (bool(r.reml), np.asarray(r.theta, dtype=float), scale,
                                  np.asarray(H, dtype=float))
    return new.fit(**kw)


def _is_binomial(model):
    return type(getattr(model, "family", None)).__name__ == "Binomial"


def _ml_fit(res):
    """The ML fit of a model (itself when it is not a REML fit); cached."""
    r = _raw(res)
    if not getattr(r, "reml", False):
        return r
    c = _cache(r)
    if "ml_fit" not in c:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c["ml_fit"] = _raw(r.model.fit(reml=False, start_params=r.theta))
    return c["ml_fit"]
