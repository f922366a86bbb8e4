"""res.refit(y) on a small one-factor design: refit_many's lockstep with one member, its
results made as the constructors make them, and the single fit's own path (warnings,
boundary handling) where the lockstep leaves the member to it; the per-design and per-fit
pieces the lockstep keeps change nothing from one call to the next.

Tolerances as in ``test_refit_many.py``: two runs of the optimizer to the same optimum.
"""
import warnings

import numpy as np
import pytest
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from mlmext import datasets
from mlmext._batch_results import BatchLMMResults
from mlmext.formula import api as mf
from mlmext.inference._common import _cache

from test_refit_many import BATCHED, SLEEP, _alone, _assert_as_constructed, _equal_attr, _same


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def fit(sleep):
    return mf.lmer(SLEEP, sleep).fit()


def test_a_single_refit_is_the_lockstep_with_one_member(fit):
    Y = np.asarray(fit.simulate(nsim=5, seed=21))
    for b in range(5):
        a = fit.refit(Y[:, b])
        raw = a._results
        assert isinstance(raw, BatchLMMResults) and "_model" not in raw.__dict__
        assert a.optim.optimizer.startswith(BATCHED) and "1 response in lockstep" in a.optim.optimizer
        assert a.converged and a.optim.decrement < 1e-7 and a.optim.min_eigenvalue > 0
        # every attribute is what the constructors make of its numbers
        _assert_as_constructed(raw, fit.model, Y[:, b])
        # the same numbers as refit_many's member and as the single fit's own path
        m = fit.refit_many(Y[:, b:b + 1])[0]
        assert m.criterion == a.criterion and np.array_equal(m.theta, a.theta)
        np.testing.assert_array_equal(m.fe_params, a.fe_params)
        _same(a, _alone(fit, Y[:, b]))
        np.testing.assert_array_equal(a.model.endog, Y[:, b])   # its model, made on first use
        assert a.model is not fit.model and "_model" in raw.__dict__


def test_a_boundary_single_refit_takes_the_fits_path_with_its_warning(sleep, fit):
    """A response without slope variation: the single fit's snapping, probes and warning."""
    rng = np.random.default_rng(1)                    # (test_refit_many's boundary response)
    subj = sleep.Subject.cat.codes.to_numpy()
    y = 250 + 10 * sleep.Days.to_numpy() + rng.normal(0, 30, 18)[subj] + rng.normal(0, 25, 180)
    with pytest.warns(ConvergenceWarning, match="singular"):
        a = fit.refit(y)
    with pytest.warns(ConvergenceWarning, match="singular"):
        one = _alone(fit, y)
    assert a.is_singular() and not a.optim.optimizer.startswith(BATCHED)
    _same(a, one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = fit.refit_many(y[:, None])[0]
    assert m.criterion == a.criterion and np.array_equal(m.theta, a.theta)


def test_fit_arguments_and_other_designs_take_the_fits_path(fit):
    y = np.asarray(fit.simulate(nsim=1, seed=22))[:, 0]
    a = fit.refit(y, reml=False)
    assert not a.optim.optimizer.startswith(BATCHED) and not a.reml
    two = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", datasets.load("penicillin")).fit()
    z = np.asarray(two.simulate(nsim=1, seed=22))[:, 0]
    b = two.refit(z)                                   # (two grouping factors)
    assert not b.optim.optimizer.startswith(BATCHED) and b.converged
    _same(b, two.refit(z, start_params=two.theta))


def test_the_pieces_kept_per_design_and_fit_change_nothing(fit):
    """A second call reuses the response check's basis, the fit's theta's level blocks, the
    criterion's evaluator and the results' per-model part: the same numbers, bit for bit,
    and no mutable attribute shared with the first call's results."""
    Y = np.asarray(fit.simulate(nsim=6, seed=23))
    first = fit.refit_many(Y)
    kept = set(_cache(fit))
    assert {"lockstep_theta0", "lockstep_scales", "levels_criterion"} <= kept
    assert all(not a.flags.writeable for a in _cache(fit)["lockstep_theta0"][:3])
    shared = fit.model._small_levels()._shared
    # (the template's column map only where an end has a negative diagonal: made then)
    assert {"response_check", "moment_design"} <= set(shared)
    again = fit.refit_many(Y)
    for a, b in zip(first, again):
        ra, rb = a._results, b._results
        assert ra.__dict__.keys() == rb.__dict__.keys()
        for k, v in ra.__dict__.items():
            if k in ("optim", "state", "_lazy_optim"):      # (made when read: below)
                continue
            _equal_attr(rb.__dict__[k], v)
            if isinstance(v, (list, dict)):
                assert rb.__dict__[k] is not v
        assert ra.optim.initial.tolist() == rb.optim.initial.tolist()
        assert ra.criterion == rb.criterion and ra.optim.nfev == rb.optim.nfev


def test_weighted_response_checks_from_the_kept_basis(sleep):
    """Prior weights: the kept basis gives the single check's verdicts; a
    response the fixed effects fit exactly is refused as the single refit refuses it."""
    w = np.tile([1.0, 2.0, 0.5, 0.25, 1.0, 3.0], 30)
    r = mf.lmer(SLEEP, sleep.assign(w=w), weights="w").fit()
    Y = np.asarray(r.simulate(nsim=4, seed=24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        many = r.refit_many(Y)
        for b in range(4):
            _same(many[b], _alone(r, Y[:, b]))
            _same(r.refit(Y[:, b]), many[b])
    exact = r.model.exog @ np.array([3.0, 2.0])
    for call in (lambda: r.refit(exact), lambda: r.refit_many(np.column_stack([Y[:, 0], exact]))):
        with pytest.raises(ValueError, match="fit the response"):
            call()
