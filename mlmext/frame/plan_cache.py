"""The one-pass plan of a formula (:func:`.patsy_pass.make_plan`), made once per formula and
set of column labels when nothing but those decided it.

A plan says which termlists patsy evaluates and how the columns are handed to it; making it
parses each factor's code and resolves its names (~25 us on sleepstudy, ~2% of a build).
When every name in the formula is a column of the data (``Reaction ~ Days + (Days |
Subject)``), the plan is a function of the formula's pieces and the column labels only
(:attr:`Plan.env_free`); a name looked up in the caller's namespace (``np.log``, a variable,
``C``, ``Q``) may mean something else at the next call, and such plans are made afresh each
time.  A kept plan is handed out as a shallow copy carrying the caller's namespace (plans are
not changed once made).  At most :data:`MAX_ENTRIES` are kept; safe across threads.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import pandas as pd

from ..immutable_cache import column_labels, per_object
from .patsy_pass import HAVE_PATSY, make_plan

if HAVE_PATSY:
    from patsy.eval import EvalEnvironment

__all__ = ["plan_for", "clear", "MAX_ENTRIES"]

#: plans kept
MAX_ENTRIES = 256

_plans = OrderedDict()
_lock = threading.Lock()


def clear():
    """Forget every plan kept."""
    with _lock:
        _plans.clear()


def plan_for(parsed, fixed, columns, env, cbind=None):
    """:func:`~.patsy_pass.make_plan`'s plan, or a copy of the one it made for the same
    formula pieces and column labels when that one was :attr:`~.patsy_pass.Plan.env_free`."""
    if not HAVE_PATSY or not isinstance(env, dict) or isinstance(columns, pd.MultiIndex):
        return make_plan(parsed, fixed, columns, env, cbind)        # (raises Fallback)
    key = (fixed.formula, fixed.response_column, tuple(b.lhs for b in parsed.bars),
           tuple(parsed.offsets), per_object(frozenset, column_labels(columns)))
    with _lock:
        kept = _plans.get(key)
        if kept is not None:
            _plans.move_to_end(key)
    if kept is None:
        plan = make_plan(parsed, fixed, columns, env, cbind)
        if plan.env_free:
            kept = plan.copy()
            kept.env = None                # (the caller's namespace is not kept)
            with _lock:
                _plans[key] = kept
                while len(_plans) > MAX_ENTRIES:
                    _plans.popitem(last=False)
        return plan
    plan = kept.copy()
    plan.env = EvalEnvironment([env])
    return plan
