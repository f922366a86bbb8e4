"""BLAS threads during fits: capped by the cores the load average leaves free."""
import pytest

from mlmext import _blas

threadpoolctl = pytest.importorskip("threadpoolctl")


def _fake_machine(monkeypatch, ncpu, load):
    monkeypatch.setattr(_blas.os, "cpu_count", lambda: ncpu)
    monkeypatch.setattr(_blas.os, "getloadavg", lambda: (load, load, load))


@pytest.mark.parametrize("ncpu, load, free", [
    (2, 0.0, 2), (2, 1.0, 2), (2, 1.3, 2),      # idle, or this process alone
    (2, 1.6, 1), (2, 2.0, 1), (2, 9.0, 1),      # another process busy on a core
    (8, 1.0, 8), (8, 3.0, 6), (8, 20.0, 1),
])
def test_free_cores_from_load_average(monkeypatch, ncpu, load, free):
    _fake_machine(monkeypatch, ncpu, load)
    assert _blas.free_cores() == free


def test_free_cores_without_load_average(monkeypatch):
    def missing():
        raise OSError("no load average")
    monkeypatch.setattr(_blas.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(_blas.os, "getloadavg", missing)
    assert _blas.free_cores() == 4


def _blas_threads_now():
    return max(lib["num_threads"] for lib in threadpoolctl.threadpool_info()
               if lib.get("user_api") == "blas")


def test_threaded_inverse_capped_by_busy_cores(monkeypatch):
    _blas._controller()
    default = _blas._state["default"]
    if default is None or default < 2:
        pytest.skip("a BLAS with one thread: nothing to cap")
    before = _blas_threads_now()
    _fake_machine(monkeypatch, default, 0.0)
    with _blas.inverse_threads(5000):
        assert _blas_threads_now() == default
    _fake_machine(monkeypatch, default, default + 3.0)      # every core busy elsewhere
    with _blas.inverse_threads(5000):
        assert _blas_threads_now() == 1
    with _blas.inverse_threads(100):                          # small: one thread anyway
        assert _blas_threads_now() == 1
    assert _blas_threads_now() == before


def test_one_thread_already_in_force_is_left_alone(monkeypatch):
    """A small fit in a process already on one BLAS thread sets nothing and restores nothing;
    a threaded context inside it still gives the one thread back."""
    _blas._controller()
    default = _blas._state["default"]
    if default is None:
        pytest.skip("no BLAS found by threadpoolctl")
    before = _blas_threads_now()
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        with _blas.blas_threads(10) as ctx:
            assert ctx._entry is None and not _blas._active
            assert _blas_threads_now() == 1
            if default > 1:
                _fake_machine(monkeypatch, default, 0.0)
                with _blas.inverse_threads(5000):
                    assert _blas_threads_now() == default
            assert _blas_threads_now() == 1
        assert _blas_threads_now() == 1
    assert _blas_threads_now() == before
    if before > 1:                       # not in force: set for the context, given back after
        with _blas.blas_threads(10) as ctx:
            assert ctx._entry is not None and _blas_threads_now() == 1
        assert _blas_threads_now() == before and not _blas._active


def test_tiny_level_by_level_fit_leaves_the_setting_alone(monkeypatch):
    """A one-factor fit of a system under TINY_ROWS rows (sleepstudy: 39) evaluates level by
    level, with no product OpenBLAS threads: it neither sets nor restores the thread count
    (the library scan is made all the same, once), and gives the estimates of a fit under
    the one-thread limit bit for bit."""
    import numpy as np
    from mlmext import datasets
    from mlmext.formula.api import lmer

    m = lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy"))
    assert m.deviance().cheap_hessian and m.deviance().size < _blas.TINY_ROWS
    calls = []
    orig = _blas.blas_threads
    monkeypatch.setattr(_blas, "blas_threads", lambda rows: calls.append(rows) or orig(rows))
    monkeypatch.setitem(_blas._state, "controller", None)
    r = m.fit()
    assert calls == []
    assert _blas._state["controller"] is not None
    monkeypatch.setattr(_blas, "TINY_ROWS", 0)           # the limited path: the same numbers
    r1 = m.fit()
    assert calls == [m.deviance().size]
    assert np.array_equal(r.fe_params, r1.fe_params) and r.llf == r1.llf
    assert np.array_equal(r.theta, r1.theta)


def test_dense_factor_threaded_on_free_cores(monkeypatch):
    """The dense remainder's Cholesky factorization takes the library's threads from
    INVERSE_THREADED_MIN_ROWS rows on free cores, as its inverse does, inside a fit's one-thread
    setting; smaller orders stay on one thread.  The factor is S + I's either way."""
    import numpy as np

    from mlmext.linalg import _lead
    from mlmext.linalg.dense import DenseFactor
    _blas._controller()
    default = _blas._state["default"]
    if default is None or default < 2:
        pytest.skip("a BLAS with one thread: nothing to thread")
    real, seen = _lead.linalg.lapack.dpotrf, []

    def spy(*args, **kwargs):
        seen.append(_blas_threads_now())
        return real(*args, **kwargs)

    monkeypatch.setattr(_lead.linalg.lapack, "dpotrf", spy)
    _fake_machine(monkeypatch, default, 0.0)
    rng = np.random.default_rng(5)
    for r in (_blas.INVERSE_THREADED_MIN_ROWS + 50, 100):
        f = DenseFactor.__new__(DenseFactor)
        f.r = f.rz = r
        A = rng.normal(size=(r, r))
        S = A @ A.T / r
        with threadpoolctl.threadpool_limits(1, user_api="blas"):        # the fit's setting
            f._factor_rest(S.copy())
            assert _blas_threads_now() == 1
        L = np.tril(f.Lr)
        np.testing.assert_allclose(L @ L.T, S + np.eye(r), rtol=1e-10, atol=1e-10)
    assert seen == [default, 1]
