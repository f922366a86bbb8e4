"""The objective as an object: the full-parameter log-likelihood round-trips, fits of one model
are independent (side by side and in threads), and reading a result never changes another."""
import threading
import warnings

import numpy as np
import pytest

from mlmext.formula import api as mf
from mlmext.objective import MixedParams
from refcases import read_data


def _fit_in_threads(fits):
    """Run the callables ``fits`` concurrently (one thread each); their results in order."""
    out = [None] * len(fits)
    errors = []
    start = threading.Barrier(len(fits))

    def run(i):
        try:
            start.wait()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[i] = fits[i]()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _same_fit(a, b):
    """Two runs of the same deterministic computation: equal to rounding."""
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(a.params), np.asarray(b.params), rtol=1e-12, atol=1e-14)
    assert a.llf == pytest.approx(b.llf, rel=1e-13)


# ----------------------------------------------------------------------------- LMM
@pytest.fixture(scope="module")
def sleep_model():
    return mf.lmer("Reaction ~ Days + (Days | Subject)", read_data("sleepstudy.csv"))


@pytest.mark.parametrize("reml", [True, False])
def test_lmm_loglike_round_trip(sleep_model, reml):
    res = sleep_model.fit(reml=reml)
    po = res.params_object
    assert isinstance(po, MixedParams)
    assert list(po.extra) == [res.sigma]
    assert sleep_model.loglike(po, reml=reml) == pytest.approx(res.llf, abs=1e-9)
    packed = po.get_packed()
    assert len(packed) == len(sleep_model.param_names) == 2 + 3 + 1
    assert sleep_model.loglike(packed, reml=reml) == pytest.approx(res.llf, abs=1e-9)
    # at the estimates the score vanishes in the directions the criterion depends on
    g = sleep_model.score(packed, reml=reml)
    if reml:       # the restricted likelihood does not depend on beta
        assert np.abs(g[:2]).max() < 1e-6
    assert np.abs(g).max() < 1e-2 * np.abs(packed).max()
    # moving a fixed effect lowers the ML log-likelihood by the quadratic form
    if not reml:
        step = np.zeros_like(packed)
        step[1] = float(res.bse.iloc[1]) if hasattr(res.bse, "iloc") else float(res.bse[1])
        drop = res.llf - sleep_model.loglike(packed + step, reml=False)
        assert drop == pytest.approx(0.5, rel=0.05)     # one SE away: half a unit of log-likelihood


def test_lmm_loglike_checks_the_layout(sleep_model):
    with pytest.raises(ValueError, match=r"needs 6 values \(\['Intercept', 'Days', 'Subject.Intercept', "):
        sleep_model.loglike(np.ones(3))
    with pytest.raises(ValueError, match="sigma must be positive"):
        sleep_model.loglike(np.r_[250.0, 10.0, 1.0, 0.0, 0.2, -1.0])


def test_lmm_fits_of_one_model_are_independent(sleep_model):
    serial = [sleep_model.fit(reml=True), sleep_model.fit(reml=False)]
    threaded = _fit_in_threads([lambda: sleep_model.fit(reml=True),
                                lambda: sleep_model.fit(reml=False)] * 2)
    for k, r in enumerate(threaded):
        _same_fit(r, serial[k % 2])


def test_lmm_crossed_fits_in_threads_equal_serial():
    model = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", read_data("penicillin.csv"))
    serial = model.fit()
    for r in _fit_in_threads([model.fit] * 4):
        _same_fit(r, serial)


def test_lmm_results_do_not_share_state(sleep_model):
    r_ml = sleep_model.fit(reml=False)
    r_reml = sleep_model.fit(reml=True)
    before = r_ml.ranef(condvar=True)["Subject"].attrs["condvar"].copy()
    r_reml.ranef(condvar=True)
    after = r_ml.ranef(condvar=True)["Subject"].attrs["condvar"]
    np.testing.assert_array_equal(before, after)
    assert r_ml.state.theta.flags.writeable is False
    with pytest.raises(ValueError):
        r_ml.state.theta[0] = 0.0
