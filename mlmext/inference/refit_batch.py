"""Refits of one fitted LMM design to many responses at once (bootstrap, simulation, power).

:func:`refit_many` gives what ``[res.refit(y) for y in Y]`` gives.  For a small design with
one grouping factor the B fits run in lockstep (:mod:`._lockstep`: Newton with the exact
Hessian from each member's moment estimate of theta, one batched evaluation for all of
them, each member stopping when the single fit's checks pass); a member that does not pass
them there, or ends near a zero standard deviation, is refitted on its own by
:func:`~mlmext.inference.refit`, so ``converged``, the warnings and boundary fits are those
of single refits.  The members' results make their model on first use
(:mod:`mlmext._batch_results`).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ._common import _raw
from ._lockstep import _lockstep_fits
from ._refit import refit, refit_alone
from ._refit_start import _batchable

__all__ = ["refit_many"]


def _responses(res, Y):
    """The responses as an (n, B) float array (columns), checked as refit checks one."""
    old = np.asarray(_raw(res).model.endog, dtype=float)
    if isinstance(Y, pd.DataFrame):
        Y = Y.to_numpy(dtype=float)
    elif isinstance(Y, (list, tuple)):
        Y = np.column_stack([np.asarray(y, dtype=float).ravel() for y in Y]) if len(Y) else \
            np.empty((old.size, 0))
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != old.size:
        raise ValueError(f"Y must have one row per observation of the fit ({old.size} rows, one "
                         f"column per response); got shape {Y.shape}")
    return Y


def refit_many(res, Y, **fit_kwargs):
    """The fitted model refitted to each of several responses (lme4's ``refit``, many times).

    Equal to ``[res.refit(y) for y in Y.T]`` (to the optimizer's tolerance), faster: on a
    small design with one grouping factor the refits run together (Newton with the exact
    Hessian from each response's moment estimate of theta or this fit's theta, the lower;
    one batched evaluation for all of them); members that
    do not pass the checks there, or end near a zero standard deviation, are refitted one
    by one as :meth:`refit` does.  Other models (several grouping factors, large systems,
    GLMMs, clmm) and any ``fit_kwargs`` refit one by one.

    Parameters
    ----------
    res : MixedResults
    Y : array_like or DataFrame
        One column per response, one row per observation of the fit (as :meth:`simulate`
        returns them); a list of vectors is taken as columns.
    **fit_kwargs
        Passed to each fit (then every response is refitted one by one).

    Returns
    -------
    list of MixedResults
        One per column of ``Y``, in order.
    """
    r = _raw(res)
    Y = _responses(res, Y)
    both = None if fit_kwargs else _lockstep_fits(r, Y)
    if both is None:
        return [refit(res, Y[:, b], **fit_kwargs) for b in range(Y.shape[1])]
    out = []
    for b, (fit, start) in enumerate(zip(*both)):
        if fit is None:          # a single refit, from the lowest point the lockstep found
            fit = refit_alone(_raw(res), Y[:, b], start)
        out.append(fit)
    return out


def _batched_or_none(res, Y):
    """For the bootstrap: each column's refit, warnings silenced and failures None (as its
    loop of single refits has them), in lockstep where the design allows; None (all of it)
    where it does not, and the caller refits one by one."""
    if _batchable(_raw(res)) is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return refit_many(res, Y)
        except (np.linalg.LinAlgError, ValueError, RuntimeError, FloatingPointError):
            pass                        # one response that fails: each refit on its own
        out = []
        for b in range(Y.shape[1]):
            try:
                out.append(refit(res, Y[:, b]))
            except (np.linalg.LinAlgError, ValueError, RuntimeError, FloatingPointError):
                out.append(None)
        return out
