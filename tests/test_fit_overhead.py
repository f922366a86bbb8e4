"""The bookkeeping a small fit runs on every call, made cheaper (issue 14, ``coldfit``): each
shortcut against the general code it stands for.

* :func:`~mlmext.optimize.bound_steps.at_bound` and ``snap_to_bound`` (Python floats) against
  the NumPy expressions they replace, with infinite and NaN bounds and entries;
* the fit's reflection (``mlmext.lmm._canonical``): theta itself where no template diagonal
  is negative, else ``canonical_theta``;
* the exact Hessian alone (``LMMDeviance.hessian``) against ``value_grad_hess``, level by level
  and on the dense small system;
* ``OptSummary.from_result`` against the dataclass's own constructor;
* the state ``at`` gives (read-only arrays, float sigma) and the fitted values of sleepstudy;
* ``fe_params`` / ``bse_fe`` indexes shared per names across models, each a view of its own;
  their Series made through pandas' manager (``printing.fe_series``) as the constructor makes them.
"""
import numpy as np
import pytest
from scipy import optimize

from mlmext.formula import api as mf
from mlmext.lmm import _canonical
from mlmext.optimize import OptSummary, snap_to_bound
from mlmext.optimize.bound_steps import at_bound

from refcases import read_data


@pytest.fixture(scope="module")
def sleep():
    return read_data("sleepstudy.csv")


def test_at_bound_matches_the_numpy_expression():
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(0, 6))
        lower = rng.choice([0.0, -np.inf, np.inf, np.nan, -1.0], size=k)
        x = rng.choice([0.0, -0.0, -1e-12, 1e-12, -1.0, 2.0, np.nan, -np.inf], size=k)
        expect = [int(i) for i in np.flatnonzero(np.isfinite(lower) & (x <= lower))]
        assert at_bound(x, lower) == expect


def test_snap_to_bound_sets_only_entries_within_width_that_cost_little():
    lower = np.array([0.0, -np.inf, 0.0, 0.0])
    x = np.array([5e-7, 1e-7, 2e-6, 3e-7])
    calls = []

    def fun(t):
        calls.append(t.copy())
        return 1.0 + (1e-3 if t[3] == 0.0 else 0.0)      # snapping entry 3 costs 1e-3

    xs, fx, snapped, nfev = snap_to_bound(fun, x, 1.0, lower, 1e-9, width=1e-6)
    assert snapped == [0] and nfev == 2 and fx == 1.0      # entry 1: no bound; entry 2: too far
    np.testing.assert_array_equal(xs, [0.0, 1e-7, 2e-6, 3e-7])
    np.testing.assert_array_equal(x, [5e-7, 1e-7, 2e-6, 3e-7])          # the input untouched
    assert [c[3] for c in calls] == [3e-7, 0.0]


def test_reflection_returns_theta_itself_unless_a_diagonal_is_negative(sleep):
    m = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    des = m.re_design
    reflect = _canonical(des)
    th = np.array([0.9, 0.02, 0.2])
    assert reflect(th) is th
    zero = np.array([0.9, 0.02, -0.0])                     # -0.0 is not negative: not mirrored
    assert reflect(zero) is zero
    for th in (np.array([-0.9, 0.02, 0.2]), np.array([0.9, 0.02, -0.2]),
               np.array([-0.9, -0.02, -0.2])):
        got = reflect(th)
        assert got is not th
        np.testing.assert_array_equal(got, des.canonical_theta(th))
        assert np.all(got[[0, 2]] >= 0)
    assert reflect([-0.9, 0.02, 0.2]).tolist() == [0.9, -0.02, 0.2]      # a list: the general path


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)",
                                     "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"])
def test_hessian_alone_is_value_grad_hess_third_item(sleep, formula):
    m = mf.lmer(formula, sleep)
    for reml in (True, False):
        dev = m.deviance(reml)
        for th in (np.array([0.9, 0.02, 0.2])[:dev.nparams], np.array([0.5, 0.3, 0.1])[:dev.nparams]):
            H = dev.hessian(th)
            ref = m.deviance(reml).value_grad_hess(th)[2]
            np.testing.assert_allclose(H, ref, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(H, H.T)         # symmetric as Newton takes it
            H[0, 0] = 123.0                               # a copy: the cached pieces untouched
            assert dev.hessian(th)[0, 0] != 123.0


def test_hessian_of_an_indefinite_system_is_nan(sleep):
    dev = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).deviance()
    assert np.isnan(dev.hessian(np.array([np.nan, 0.0, 1.0]))).all()


def test_opt_summary_from_result_matches_the_constructor():
    res = optimize.OptimizeResult(x=np.array([1.0, 2.0]), fun=3.5, success=np.True_, message="ok",
                                  nfev=np.int64(7), tried=[("Newton", np.True_, np.int64(7))],
                                  method="Newton", decrement=1e-16, snapped=[])
    h = np.eye(2)
    got = OptSummary.from_result(res, initial=[0.5, 0.5], hessian=h)
    ref = OptSummary(initial=[0.5, 0.5], final=res.x, fmin=3.5, feval=7,
                     tried=[("Newton", True, 7)], converged=True, message="ok",
                     optimizer="Newton", extra_items=(("decrement", 1e-16), ("snapped", []),
                                                      ("hessian", h)))
    for name in ("fmin", "feval", "tried", "converged", "message", "optimizer"):
        assert getattr(got, name) == getattr(ref, name)
        assert type(getattr(got, name)) is type(getattr(ref, name))
    assert type(got.tried[0][1]) is bool and type(got.tried[0][2]) is int
    for name in ("initial", "final"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
        assert not getattr(got, name).flags.writeable
    assert [k for k, _ in got.extra_items] == ["decrement", "snapped", "hessian"]
    assert got.decrement == 1e-16 and got.hessian is h and got.nfev == 7
    with pytest.raises(Exception):
        got.fmin = 0.0                                    # still frozen
    plain = OptSummary.from_result(optimize.OptimizeResult(x=[1.0], fun=2.0, success=False, nfev=3),
                                   initial=[0.0], optimizer="COBYQA")
    assert plain.tried == (("COBYQA", False, 3),) and plain.optimizer == "COBYQA"


def test_fit_state_and_values(sleep):
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    st = r.state
    for a in (st.theta, st.beta, st.u, st.cov_beta):
        assert not a.flags.writeable
    assert type(st.sigma) is float and st.u.shape == (36,)
    # lme4 1.1-35: REML criterion 1743.628, fixef 251.405 / 10.467, SEs 6.825 / 1.546
    np.testing.assert_allclose(r.fe_params, [251.405105, 10.467286], rtol=1e-6)
    np.testing.assert_allclose(r.bse_fe, [6.824597, 1.545790], rtol=1e-5)
    np.testing.assert_allclose(-2 * r.llf, 1743.628272, rtol=1e-8)
    np.testing.assert_allclose(st.sigma, 25.591796, rtol=1e-6)
    assert r.converged and not r.is_singular() and r.optim.snapped == []


def test_fe_index_shared_per_names_with_views_of_their_own(sleep):
    a = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    b = mf.lmer("Reaction ~ Days + (1 | Subject)", sleep).fit()
    ia, ib = a.fe_params.index, b.bse_fe.index
    assert list(ia) == list(ib) == ["Intercept", "Days"]
    assert ia is not ib and ia.name == ib.name == "parameter"
    ia.name = "mine"
    assert b.fe_params.index.name == a.fe_params.index.name == "parameter"
    c = mf.lmer("Reaction ~ 0 + Days + (1 | Subject)", sleep).fit()
    assert list(c.fe_params.index) == ["Days"]


def test_is_singular_matches_the_scaled_test(sleep):
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    res = r._results
    units = r.model.re_design.theta_units()
    for th in ([0.9, 0.02, 0.2], [0.9, 0.02, 0.0], [1e-6, 0.3, 0.2], [np.nan, 0.1, 0.2]):
        res.theta = np.array(th)
        diag = np.isfinite(r.model.re_design.lower)
        assert res.is_singular() == bool(np.any((res.theta * units)[diag] < 1e-4))


def test_fe_series_as_the_constructor_makes_them(sleep, monkeypatch):
    """fe_params and bse_fe through pandas' manager path (printing.fe_series) equal the
    constructor's Series exactly (values, dtype, index, name), own their values, and the
    constructor's path (a pandas without the private API) gives the same."""
    import pandas as pd
    from mlmext import printing
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    fe, se = r.fe_params, r.bse_fe
    assert printing._make_series is not None           # this pandas has the fast path
    idx = pd.Index(["Intercept", "Days"], name="parameter")
    pd.testing.assert_series_equal(fe, pd.Series(r.params, index=idx, name="fe_params"))
    pd.testing.assert_series_equal(
        se, pd.Series(np.sqrt(np.diag(r.cov_params())), index=idx, name="bse_fe"))
    np.testing.assert_allclose(fe, [251.405105, 10.467286], rtol=1e-6)
    fe.iloc[0] = 0.0                                   # the Series owns its values
    se.iloc[0] = 0.0
    assert np.asarray(r.params)[0] != 0.0 and r.fe_params.iloc[0] == np.asarray(r.params)[0]
    assert r.bse_fe.iloc[0] > 6.8
    monkeypatch.setattr(printing, "_make_series", None)
    pd.testing.assert_series_equal(r.fe_params, pd.Series(r.params, index=idx, name="fe_params"))
    pd.testing.assert_series_equal(r.bse_fe, pd.Series(np.sqrt(np.diag(r.cov_params())),
                                                       index=idx, name="bse_fe"))
