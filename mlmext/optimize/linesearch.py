"""The backtracking line search all the fits' Newton and quasi-Newton loops use.

Each caller says what a trial step is (where it lands: projected onto bounds,
infeasible, ...) and when it is good enough (Armijo's sufficient decrease with
its own slack for rounding, or a plain increase); the halving loop is here.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["LineStep", "backtrack"]


class LineStep(NamedTuple):
    """The accepted step length ``t`` (None if none was), its value and payload, and the
    number of evaluations spent."""

    t: float | None
    value: float
    payload: object
    evaluations: int


def backtrack(trial, accept, maxtries=40, shrink=0.5, nonfinite_shrink=None):
    """Try steps ``t = 1, shrink, shrink^2, ...`` until one is accepted.

    Parameters
    ----------
    trial : callable
        ``trial(t) -> (value, payload)`` for step length ``t``, or None when ``t``
        is infeasible (nothing evaluated; the step is shortened).
    accept : callable
        ``accept(t, value, payload) -> bool``, asked for finite values only.
    maxtries : int
        Step lengths tried.
    shrink, nonfinite_shrink : float
        Factor after a rejected step, and after a non-finite value (default ``shrink``).

    Returns
    -------
    LineStep
        ``t`` is None when no step was accepted (value and payload are then the last trial's).
    """
    t, value, payload, n = 1.0, np.nan, None, 0
    for _ in range(maxtries):
        out = trial(t)
        if out is not None:
            value, payload = out
            n += 1
            if np.isfinite(value):
                if accept(t, value, payload):
                    return LineStep(t, value, payload, n)
            elif nonfinite_shrink is not None:
                t *= nonfinite_shrink
                continue
        t *= shrink
    return LineStep(None, value, payload, n)
