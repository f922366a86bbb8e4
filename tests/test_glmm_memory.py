"""Memory-lean paths of the in-memory GLMM: the rows in chunks, [X y] by its columns.

On large data :meth:`MemoryRows.gradient_sums` and ``gradient_second`` go over the rows in
chunks of ``ROW_CHUNK`` (their n-sized temporaries chunk-sized), and so do PIRLS's
evaluations of a binomial logit model; the gradient and the value must equal those from all
rows at once (the same sums in another order: rounding only).
"""
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import special

from mlmext.formula import api as mf
from mlmext.laplace import rows as rows_module
from mlmext.linalg import DenseFactor
from mlmext.linalg import _dense_inverse as dense_module


def _crossed(seed=3, nu=120, ni=30, per=9):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(nu), per)
    item = np.concatenate([rng.choice(ni, per, replace=False) for _ in range(nu)])
    x = rng.normal(size=user.size)
    eta = -0.3 + 0.5 * x + rng.normal(size=nu)[user] + 0.7 * rng.normal(size=ni)[item] \
        + 0.4 * rng.normal(size=nu)[user] * x
    mu = special.expit(eta)
    return pd.DataFrame({"user": [f"u{i}" for i in user], "item": [f"i{i}" for i in item], "x": x,
                         "y": rng.binomial(1, mu), "k": rng.poisson(3 * mu)})


def _fit_points(model, x, monkeypatch, chunk):
    monkeypatch.setattr(rows_module, "ROW_CHUNK", chunk)
    dev = model.deviance()
    out = [dev.loglike_and_score(x)[:2], dev.loglike_and_score(x + 0.03)[:2]]
    assert isinstance(dev.chol_u, DenseFactor)
    return out


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("formula, family", [
    ("y ~ x + (1 | user) + (1 | item)", sm.families.Binomial()),
    ("y ~ x + (1 + x | user) + (1 | item)", sm.families.Binomial()),
    ("k ~ x + (1 | user) + (1 | item)", "nb"),
])
def test_chunked_gradient_equals_one_pass(formula, family, compact, monkeypatch):
    monkeypatch.setattr(dense_module, "COMPACT_ABOVE", 0 if compact else 10**12)
    d = _crossed()
    if family == "nb":
        model = mf.glmer_nb(formula, d)
        extra = [np.log(0.5)]
    else:
        model = mf.glmer(formula, d, family=family)
        extra = []
    nt = model.re_design.ntheta
    x = np.concatenate([np.linspace(0.5, 0.9, nt), [-0.2, 0.4], extra])
    whole = _fit_points(model, x, monkeypatch, 1 << 17)
    # 97 rows per chunk: 12 chunks, the last one short; the users' levels split across chunks
    chunked = _fit_points(model, x, monkeypatch, 97)
    for (ll1, g1), (ll2, g2) in zip(whole, chunked):
        # the value: PIRLS's log-likelihood summed in chunks too (binomial logit)
        assert ll1 == pytest.approx(ll2, rel=1e-13)
        np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-10 * np.abs(g1).max())


@pytest.mark.parametrize("colwise", [True, False])
def test_reweight_takes_the_columns(colwise, monkeypatch):
    """``reweight((X, y), w)`` (lme4's first stage on large data: no n x (p + 1) array) gives
    the factor of ``reweight(column_stack([X, y]), w)``."""
    from mlmext.laplace import make_chol
    from mlmext.laplace.zops import _reweight
    from mlmext.linalg import _lead
    monkeypatch.setattr(_lead, "SPARSE_SUMS_ROWS", 0 if colwise else 10**9)
    d = _crossed()
    model = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    des, X = model.re_design, model.exog
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=len(d)), rng.uniform(0.1, 0.3, len(d))
    lams = des.lambdas(np.array([0.8, 0.6]))
    out = []
    for XY in (np.column_stack([X, z]), (X, z)):
        ch = make_chol(des, X=X)
        _reweight(ch, XY, w)
        ch.update(lams)
        out.append((ch.logdet_zz, ch.cov_beta_unscaled(), ch.solve()[0]))
    (l1, c1, u1), (l2, c2, u2) = out
    np.testing.assert_allclose(l2, l1, rtol=1e-13)
    np.testing.assert_allclose(c2, c1, rtol=1e-12)
    np.testing.assert_allclose(u2, u1, rtol=1e-10, atol=1e-12)
    # no bit-level claim for the stacked path: the same values in another array can take
    # another BLAS kernel path (alignment), one ulp apart on some CPUs


def test_trim_heap_is_safe():
    """``trim_heap`` only hands free pages back (nothing below its row threshold)."""
    from mlmext import _malloc
    before = np.arange(10.0)
    _malloc.trim_heap(0)
    _malloc.trim_heap(_malloc.TRIM_ROWS)
    assert np.array_equal(before, np.arange(10.0))


# -- the model's constant rows, the deviance's kept modes, PIRLS's dropped derivatives

def test_constant_rows_equal_explicit_arrays():
    """Unit weights, a zero offset and an intercept's ones are held as zero-stride broadcasts:
    the fit equals the one with the same values given as full arrays (the same arithmetic)."""
    d = _crossed()
    lean = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    assert lean.weights.strides == (0,) and lean.offset.strides == (0,)
    for t in lean.re_design.terms:
        assert t.X.strides == (0, 0) and t.X.shape == (len(d), 1) and np.all(t.X == 1.0)
    with pytest.raises(ValueError):
        lean.weights[0] = 2.0                 # read-only: never silently shared and changed
    full = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial(),
                    weights=np.ones(len(d)), offset=np.zeros(len(d)))
    assert full.weights.strides == (8,) and full.offset.strides == (8,)
    x = np.array([0.6, 0.8, -0.2, 0.4])
    a = lean.deviance().loglike_and_score(x)
    b = full.deviance().loglike_and_score(x)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    ra, rb = lean.fit(), full.fit()
    assert ra.llf == pytest.approx(rb.llf, rel=1e-12)
    np.testing.assert_allclose(ra.params, rb.params, rtol=1e-8, atol=1e-10)
    # the Z matrix of a broadcast intercept is the one of ones
    b0 = lean.re_design.blocks[0]
    np.testing.assert_array_equal(b0.Z().toarray().sum(axis=1), np.ones(len(d)))


def test_kept_modes_predict_as_the_full_ones():
    """Between evaluations the deviance keeps beta and the modes without eta (not X beta +
    offset and eta): the predicted start is the one from the full arrays."""
    from mlmext import laplace as lp
    d = _crossed()
    model = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    dev = model.deviance()
    x0 = np.array([0.6, 0.8, -0.2, 0.4])
    dev.loglike_and_score(x0)
    th0, b0, m0, lams0, extra0 = dev._last
    assert m0.eta is None and m0.d1 is not None and extra0 is None
    theta, beta = np.array([0.65, 0.75]), np.array([-0.1, 0.45])
    got = dev._predicted_start(theta, beta, dev.chol_u)
    X = model.exog
    want = lp.predict_modes(model.re_design, dev.chol_u, m0, theta - th0,
                            (X @ beta + model.offset) - (X @ b0 + model.offset), lams=lams0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert not np.array_equal(got, m0.u)
    # the next evaluation from the kept modes: the value of a cold start
    ll_warm = dev.loglike(np.concatenate([theta, beta]))
    ll_cold = model.deviance().loglike(np.concatenate([theta, beta]))
    assert ll_warm == pytest.approx(ll_cold, rel=1e-12)


@pytest.mark.parametrize("chunk", [1 << 17, 97])
@pytest.mark.parametrize("family", [sm.families.Binomial(), sm.families.Poisson()])
def test_trial_drops_and_restores_the_point_derivatives(family, chunk, monkeypatch):
    """A trial point drops the current point's d1 and w; read before a trial is accepted they
    are made again, the same numbers.  In chunks (binomial logit, large data) the trial's lin
    is not made: accepting moves lin in place, to the numbers of ``lin + t dlin``."""
    from mlmext.laplace.rows import MemoryRows
    monkeypatch.setattr(rows_module, "ROW_CHUNK", chunk)
    d = _crossed()
    resp = "y" if isinstance(family, sm.families.Binomial) else "k"
    model = mf.glmer(f"{resp} ~ x + (1 | user) + (1 | item)", d, family=family)
    des, cond = model.re_design, model._make_conditional()
    lams = des.lambdas(np.array([0.7, 0.9]))
    rows = MemoryRows(des, model.exog @ np.array([-0.2, 0.4]), cond)
    u = np.random.default_rng(1).normal(size=des.nre) * 0.3
    rows.point(u, None, lams)
    d1, w = rows.d1.copy(), rows.w.copy()
    rows.dlin = rows.linear(-0.5 * u, None, lams)
    rows.trial(1.0, 0.5 * u, None, lams)
    assert rows._d1 is None and rows._w is None         # not held beside the trial's
    np.testing.assert_array_equal(rows.d1, d1)          # made again from lin
    np.testing.assert_array_equal(rows.w, w)
    lin_t = rows.lin + 0.5 * rows.dlin
    ll_t = rows.trial(0.5, 0.75 * u, None, lams)
    chunked = chunk < len(d) and isinstance(family, sm.families.Binomial)
    assert isinstance(rows._trial[0], float) == chunked
    rows.accept()
    assert not rows._dropped and rows.d1 is rows._trial[2]
    np.testing.assert_array_equal(rows.lin, lin_t)
    ll, d1_t, w_t = rows._evaluate(rows.eta_fixed + lin_t)
    assert ll_t == pytest.approx(ll, rel=1e-13)
    np.testing.assert_array_equal(rows.d1, d1_t)
    np.testing.assert_array_equal(rows.w, w_t)


def test_zlam_in_chunks_equals_one_pass(monkeypatch):
    """``Z Lambda u`` of scalar blocks a chunk of rows at a time (no n-sized gathered values):
    the numbers of the whole-array expression, bit for bit (with an intercept's ones and a
    scalar slope block)."""
    from mlmext.laplace import zops
    d = _crossed()
    model = mf.glmer("y ~ x + (1 | user) + (0 + x | item)", d, family=sm.families.Binomial())
    des = model.re_design
    assert [b.q for b in des.blocks] == [1, 1]
    lams = des.lambdas(np.array([0.7, 0.3]))
    u = np.random.default_rng(2).normal(size=des.nre)
    want = np.zeros(len(d))                       # the whole-array expression
    off = 0
    for b, lam in zip(des.blocks, lams):
        v = (lam[0, 0] * u[off:off + b.nre])[b.codes]
        want += v * np.asarray(b.X[:, 0])
        off += b.nre
    whole = zops._ZOps(des).zlam(u, lams)
    monkeypatch.setattr(zops, "ZLAM_CHUNK", 97)    # 12 chunks, the last one short
    chunked = zops._ZOps(des).zlam(u, lams)
    np.testing.assert_array_equal(whole, want)
    np.testing.assert_array_equal(chunked, want)


def test_pirls_drops_the_step_and_working_response(monkeypatch):
    """The working response is not held through the factorization (the solution in the span
    makes it again: the step of the plain solve), and the step's ``dlin`` neither beside the
    next step's nor past its acceptance; the modes still solve ``Lambda' Z' d1 = u``."""
    import weakref
    from mlmext import laplace as lp
    from mlmext.laplace import rows as rows_mod
    from mlmext.laplace.rows import MemoryRows
    d = _crossed()
    model = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    des, cond = model.re_design, model._make_conditional()
    theta = np.array([0.7, 0.9])
    lams = des.lambdas(theta)
    eta_f = model.exog @ np.array([-0.2, 0.4])
    rows = MemoryRows(des, eta_f, cond)
    chol = lp.make_chol(des)
    rows.point(np.zeros(des.nre), None, lams)
    seen = []
    real = rows_mod._reweight

    def spy(ch, XY, w):
        seen.append(weakref.ref(XY.base if XY.base is not None else XY))
        return real(ch, XY, w)

    monkeypatch.setattr(rows_mod, "_reweight", spy)
    status, solved = rows.factor(chol, lams, False)
    assert status == "ok" and solved is None and seen[0]() is None
    u1 = chol.solve()[0]
    # the solution in the span, from the working response made again
    real_update = type(chol).update
    calls = []

    def failing_once(self, lams_):
        calls.append(1)
        if len(calls) == 1:
            raise np.linalg.LinAlgError("forced")
        return real_update(self, lams_)

    monkeypatch.setattr(type(chol), "update", failing_once)
    status, solved = rows.factor(chol, lams, False)
    monkeypatch.setattr(type(chol), "update", real_update)
    assert status == "ok" and solved is not None and len(calls) == 3
    np.testing.assert_allclose(solved[0], u1, rtol=1e-8, atol=1e-10 * np.abs(u1).max())
    rows.step(u1, None, lams)
    first = weakref.ref(rows.dlin)
    rows.step(u1, None, lams)
    assert first() is None                             # not held beside the new step
    rows.trial(1.0, u1, None, lams)
    rows.accept()
    assert rows.dlin is None
    modes = lp.pirls(des, lp.make_chol(des), eta_f, cond, theta, tol=1e-14)
    assert modes.converged
    score = lp.random_effects_transpose(des, modes.d1, lams) - modes.u
    assert np.abs(score).max() < 1e-8 * max(1.0, np.abs(modes.u).max())


def test_binomial_hessian_terms_in_place_equal_the_formulas():
    """The in-place binomial logit Hessian terms are the formulas' numbers, bit for bit."""
    from mlmext.glmm.conditional import GLMConditional
    rng = np.random.default_rng(8)
    eta = np.concatenate([rng.normal(scale=4.0, size=500), [-40.0, 0.0, 40.0]])
    for pw in (np.ones(eta.size), rng.integers(1, 9, eta.size).astype(float)):
        y = rng.binomial(pw.astype(int), 0.4) / pw
        c = GLMConditional(sm.families.Binomial(), y, pw)
        h, dw = c.hessian_terms(eta)
        mu = special.expit(eta)
        w = pw * mu * (1.0 - mu)
        np.testing.assert_array_equal(h, w)
        np.testing.assert_array_equal(dw, w * (1.0 - 2.0 * mu))


def test_score_drops_the_modes_eta_only_without_own_parameters():
    """loglike_and_score drops the modes' eta in the gradient (the same value and gradient
    as the gradient on modes that keep it); a model with parameters of its own keeps it."""
    from mlmext.laplace import laplace_gradient
    d = _crossed()
    mod = mf.glmer("y ~ x + (1 | user) + (1 | item)", d, family=sm.families.Binomial())
    dev = mod.deviance()
    x = np.array([0.7, 0.5, -0.2, 0.4])
    ll, g, modes = dev.loglike_and_score(x)
    assert modes.eta is None
    kept, _ = dev.modes(x[:2], x[2:], tol=1e-14, warm=False)
    assert kept.eta is not None
    gt, gb, _ = laplace_gradient(dev.design, dev.chol_u, dev.cond, x[:2], kept, X=mod.exog)
    assert kept.eta is not None                              # not released unless asked
    np.testing.assert_allclose(np.concatenate([gt, gb]), g, rtol=1e-7, atol=1e-9)
    nb = mf.glmer_nb("k ~ x + (1 | user) + (1 | item)", d)
    dnb = nb.deviance()
    assert dnb.loglike_and_score(np.array([0.6, 0.4, 0.9, 0.3, 0.0]))[2].eta is not None
