"""Results of batched refits whose model is made on first use.

A refit's results hold the model with the new response (:meth:`_with_response`: a copy of
the fit's model, its data and a pandas Series of the response; ~35 us, more than the rest of
a lockstep member's results).  Most uses of many refits -- a bootstrap statistic, ``llf``,
``fe_params``, ``theta`` -- read none of it.  :class:`BatchLMMResults` keeps the fit's model
and the response and makes the member's model when ``model`` is first read (then it is that
object, as a single refit's); :class:`BatchResultsWrapper` labels ``params`` and the other
wrapped attributes from the fit's model's data (the same names as the member's), so reading
them does not make it either.  A member's ``state`` and ``optim`` are made on first read too
(from its own fields and the batch's numbers: ~5 us a member, ~10 with cold caches, that a
bootstrap statistic or ``llf`` does not read).  Everything else is an
:class:`~mlmext.results.LMMResults`.
"""
from __future__ import annotations

import threading

import numpy as np

from .objective.lmm import state_of
from .results import LMMResults, MixedResultsWrapper

__all__ = ["BatchLMMResults", "BatchResultsWrapper", "lazy_results", "lazy_results_many"]

#: held while a member's model is made (see :attr:`BatchLMMResults.model`)
_MAKE_MODEL = threading.Lock()


class BatchLMMResults(LMMResults):
    """:class:`~mlmext.results.LMMResults` of one member of a batched refit (see the module)."""

    @property
    def model(self):
        """The model refitted: the fit's model with this member's response."""
        d = self.__dict__
        m = d.get("_model")
        if m is None:
            # one model per result, whichever thread reads it first (two would differ in
            # identity, and the second pop would fail)
            with _MAKE_MODEL:
                m = d.get("_model")
                if m is None:
                    m = d["_model"] = d["_template"]._with_response(
                        d.pop("_lazy_endog"), checked=True, factor=False)
        return m

    @model.setter
    def model(self, value):
        d = self.__dict__
        if "_template" not in d and "_model" not in d:
            d["_template"] = value          # (construction) the fit's model
        else:                               # a model set later is the model
            d["_model"] = value
            d.pop("_lazy_endog", None)

    @property
    def state(self):
        """The estimates as an :class:`~mlmext.objective.LMMState` (made on first read from
        this result's fields: the same objects)."""
        d = self.__dict__
        st = d.get("state")
        if st is None:
            st = d["state"] = state_of(theta=d["theta"], beta=d["params"], u=d["_u"],
                                       sigma=d["sigma"], criterion=d["criterion"],
                                       cov_beta=d["normalized_cov_params"], reml=d["reml"])
        return st

    @state.setter
    def state(self, value):
        self.__dict__["state"] = value

    @property
    def optim(self):
        """What the optimizer did (an :class:`~mlmext.optimize.OptSummary`, made on first read
        by the batch's ``make(theta, criterion, *args)``)."""
        d = self.__dict__
        o = d.get("optim")
        if o is None:
            with _MAKE_MODEL:           # (one summary, whichever thread reads it first)
                o = d.get("optim")
                if o is None:
                    make, args = d["_lazy_optim"]
                    o = d["optim"] = make(d["theta"], d["criterion"], *args)
                    del d["_lazy_optim"]
        return o

    @optim.setter
    def optim(self, value):
        self.__dict__["optim"] = value

    def _design_model(self):
        """The member's model once made, else the fit's (the same names and design)."""
        d = self.__dict__
        return d["_model"] if "_model" in d else d["_template"]

    def _labels(self):
        """The model data that labels wrapped attributes (the fit's: the same names)."""
        return self._design_model().data


class BatchResultsWrapper(MixedResultsWrapper):
    """statsmodels' wrapper, labelling from :meth:`BatchLMMResults._labels` (no model made)."""

    def __getattribute__(self, attr):
        get = object.__getattribute__
        # a name of neither the wrapper's class nor the instance is the results': read there
        # directly (the wrapper's own lookup would fail first, an exception per read of llf)
        if attr in _WRAPPER_NAMES or attr in get(self, "__dict__"):
            try:
                return get(self, attr)
            except AttributeError:
                pass
        results = get(self, "_results")
        obj = getattr(results, attr)
        how = get(self, "_wrap_attrs").get(attr)
        if how:
            data = results._labels()
            obj = data.wrap_output(obj, how[0], *how[1:]) if isinstance(how, tuple) else \
                data.wrap_output(obj, how=how)
        return obj


#: the names the wrapper's class has (its own, statsmodels' wrapped methods, object's)
_WRAPPER_NAMES = frozenset(dir(BatchResultsWrapper))


def _wrapper(res):
    """``BatchResultsWrapper(res)`` without the constructor's guarded attribute sets."""
    w = object.__new__(BatchResultsWrapper)
    # (its dict by object's lookup: the wrapper's own is a Python call)
    _getattribute(w, "__dict__").update(_results=res, __doc__=res.__doc__)
    return w


_getattribute = object.__getattribute__


def lazy_results(model, endog, state, optim, ddf):
    """Wrapped results of ``model`` refitted to ``endog`` (checked) at ``state``, as
    ``model._with_response(endog)._results_from_state(state, optim, ddf)`` but with that
    model made on first use (models whose results are not :class:`LMMResults`: made now)."""
    if model._results_class is not LMMResults:
        return model._with_response(endog, checked=True, factor=False)._results_from_state(
            state, optim, ddf)
    res = BatchLMMResults.__new__(BatchLMMResults)
    res.__dict__["_lazy_endog"] = np.array(endog, dtype=float)      # (a copy: Y may change)
    LMMResults.__init__(res, model, state, optim, ddf)
    return _wrapper(res)


#: what :meth:`LMMResults.__init__` sets from the state and the optimizer (the rest is the
#: model's, the same for every member of a batch): ``lazy_results_many`` sets these itself
_MEMBER_KEYS = ("params", "normalized_cov_params", "theta", "_u", "sigma", "criterion",
                "optim", "converged", "state", "_lazy_endog", "_lazy_optim", "llf")


def lazy_results_many(model, endogs, fields, optims, ddf, cache=None):
    """``[lazy_results(model, y, state, optim, ddf) ...]`` of each response in ``endogs``, its
    state given by ``fields`` and its ``optim`` by ``optims``, all converged: the first made
    so, the others as copies of it with their own numbers (the constructor's per-model work
    -- statsmodels' set-up, the theta names, the df method's check -- done once), their
    ``state`` and ``optim`` made on first read.

    Parameters
    ----------
    model : LinearMixedModel
        The fit's model.
    endogs : ndarray (B, n)
        The responses (copied).
    fields : tuple
        ``(theta, beta, u, sigma, criterion, cov_beta, reml)``: per member the rows of the
        first, third and sixth stacks (read-only), items of the lists ``sigma`` and
        ``criterion`` (floats); ``reml`` a bool.
    optims : tuple
        ``(make, args)``: member ``j``'s summary is ``make(theta_j, criterion_j, *args[j])``
        (picklable: a module-level function, tuples of numbers and arrays).
    ddf : str
    cache : dict, optional
        A dict of the fit refitted (its results' cache) that keeps the per-model part for
        the next call on ``model``, which then makes no member by the constructor.

    ``tests/test_refit_many.py`` checks that every attribute equals the constructor's, so a
    new one in :class:`LMMResults` that depends on the fit shows there.
    """
    theta, beta, u, sigma, crit, cov, reml = fields
    make, args = optims
    endogs = np.array(endogs, dtype=float)      # (one copy of them all: Y may change)

    def made(j):                                # member j's state and summary, made now
        st = state_of(theta=theta[j], beta=beta[j], u=u[j], sigma=sigma[j], criterion=crit[j],
                      cov_beta=cov[j], reml=reml)
        return st, make(st.theta, st.criterion, *args[j])

    if model._results_class is not LMMResults:
        return [lazy_results(model, endogs[j], *made(j), ddf) for j in range(len(endogs))]
    key = ("lazy_results_base", ddf)
    got = None if cache is None else cache.get(key)
    base, lists = (None, None) if got is None or got[0] is not model else got[1:]
    out = []
    new = object.__new__
    for j, (y, t, b, uj, sg, cr, cv, a) in enumerate(zip(endogs, theta, beta, u, sigma, crit,
                                                         cov, args)):
        if base is None:
            first = lazy_results(model, y, *made(j), ddf)
            first._results.__dict__["llf"] = -0.5 * cr      # (as every member: below)
            base = {k: v for k, v in first._results.__dict__.items() if k not in _MEMBER_KEYS}
            lists = [k for k, v in base.items() if isinstance(v, (list, dict, set))]
            if cache is not None:
                # (copies of its mutable values: the first member's own may change)
                cache[key] = (model, {k: v.copy() if k in lists else v
                                      for k, v in base.items()}, lists)
            out.append(first)
            continue
        res = new(BatchLMMResults)
        d = res.__dict__
        d.update(base)
        for k in lists:                            # (mutable: each result its own)
            d[k] = base[k].copy()
        d["params"], d["normalized_cov_params"], d["theta"], d["_u"] = b, cv, t, uj
        # llf, the cached property's value, set now: the property's lock and lookups cost ~1 us
        # a read, and most uses of many refits read it (a parametric bootstrap's statistic)
        d["sigma"], d["criterion"], d["converged"], d["llf"] = sg, cr, True, -0.5 * cr
        d["_lazy_optim"], d["_lazy_endog"] = (make, a), y
        out.append(_wrapper(res))
    return out
