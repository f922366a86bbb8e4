"""Where refits of an LMM to new responses start: on a small design with one grouping factor
each response's moment estimate of theta
(:meth:`~mlmext.linalg.levels_batch.LevelsBatch.moment_thetas`) where its criterion is below
the fit's theta's (:func:`moment_start` for :func:`~mlmext.inference.refit`,
:func:`moment_starts` for the batched refits of :mod:`.refit_batch`)."""
from __future__ import annotations

import numpy as np

from ..linalg.levels_batch import LevelsBatch
from ._common import _cache, _is_lmm

__all__ = ["criterion", "moment_start", "moment_starts"]


def _batchable(r):
    """The level-by-level evaluator of the one-block small-system LMM fits the lockstep
    refits handle (else None)."""
    if not _is_lmm(r) or not getattr(r.model, "_response_refit", False):
        return None
    lv = r.model._small_levels() if hasattr(r.model, "_small_levels") else None
    if lv is None or lv.K == 0 or lv.p == 0:
        return None
    return lv


def criterion(r):
    """The level-by-level evaluator of the LMM fit ``r`` (batchable: :func:`_batchable`) set to
    its criterion (REML or ML), for :class:`~mlmext.linalg.levels_batch.LevelsBatch`, which
    only reads it: made once per fit."""
    c = _cache(r)
    lv = c.get("levels_criterion")
    if lv is None:
        model = r.model
        lv = c["levels_criterion"] = model._small_levels().criterion(bool(r.reml), model.nobs,
                                                                     model._logw)
    return lv


def moment_starts(batch, blk, theta0):
    """The members' thetas to start from: the moment estimate
    (:meth:`~mlmext.linalg.levels_batch.LevelsBatch.moment_thetas`) where it exists, else the
    fit's theta; and which rows are moment estimates (the caller keeps the fit's theta where
    its criterion is lower)."""
    T = batch.moment_thetas(blk)
    has = np.logical_and.reduce(np.isfinite(T), axis=1)
    T[~has] = theta0
    return T, has


def moment_start(r, y, reml):
    """The start of a single refit of ``r`` to the response ``y`` (finite, one value per row)
    by REML or ML: its moment estimate of theta where its criterion is below the fit's
    theta's (a small design with one grouping factor: on a balanced one the optimum itself,
    Newton's first evaluation passes the checks), else the fit's theta."""
    theta0 = np.asarray(r.theta, dtype=float)
    lv = _batchable(r)
    if lv is None:
        return theta0
    model = r.model
    yo = np.asarray(y, dtype=float) - np.asarray(model.offset, dtype=float)
    batch = LevelsBatch(lv.criterion(bool(reml), model.nobs, model._logw), yo[:, None])
    T, has = moment_starts(batch, model.re_design.blocks[0], theta0)
    if not has[0]:
        return theta0
    f = batch.values(np.concatenate([T, theta0[None]]), np.zeros(2, dtype=int))
    return T[0] if f[0] < f[1] else theta0
