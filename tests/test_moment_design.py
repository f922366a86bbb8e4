"""The moment start's design pieces (:func:`mlmext.linalg.levels_batch._moment_design`) are
computed once per design and shared by its evaluators' copies; the moment estimates from them
are bit for bit those computed afresh (single refits of one fit reuse them)."""
import numpy as np
import pytest

from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.linalg.levels_batch import LevelsBatch


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


def _one_row_subject(d):
    """sleepstudy with one subject reduced to one row (its A_g is singular: pseudo-inverse)."""
    first = d["Subject"] == d["Subject"].iloc[0]
    keep = ~first | (d["Days"] == 0)
    return d[keep].reset_index(drop=True)


def _fresh(lv):
    """A copy of the evaluator without the shared dict: the pieces computed every call."""
    c = object.__new__(type(lv))
    c.__dict__.update(lv.__dict__)
    del c.__dict__["_shared"]
    return c


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (Days | Subject)",
                                     "Reaction ~ Days + (Days || Subject)",
                                     "Reaction ~ Days + (1 | Subject)"])
@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("reml", [True, False])
def test_cached_design_pieces_give_the_same_moment_estimates(sleep, formula, one_row, reml):
    d = _one_row_subject(sleep) if one_row else sleep
    r = mf.lmer(formula, d).fit(reml=reml)
    m = r.model
    base = m._small_levels()
    blk = m.re_design.blocks[0]
    Y = np.asarray(r.simulate(nsim=3, seed=4)) - m.offset[:, None]
    lv = base.criterion(reml, m.nobs, m._logw)
    assert "moment_design" not in base._shared
    T1 = LevelsBatch(lv, Y).moment_thetas(blk)
    got = base._shared["moment_design"]                # the model's evaluator's dict: shared
    assert lv._shared is base._shared
    assert all(not a.flags.writeable for a in got if isinstance(a, np.ndarray))
    T0 = LevelsBatch(_fresh(lv), Y).moment_thetas(blk)
    np.testing.assert_array_equal(T1, T0)
    assert np.isfinite(T1).all()
    # a copy for another response (a refit's model) reads the same entry: the same numbers
    # (to rounding: its cross-products are copies, and NumPy's sums may round differently
    # with another memory alignment)
    other = base.with_response(Y[:, 0]).criterion(reml, m.nobs, m._logw)
    assert other._shared["moment_design"] is got
    np.testing.assert_allclose(LevelsBatch(other, Y).moment_thetas(blk), T0, rtol=1e-12)
    for j in range(3):                                 # one response at a time (single refits)
        y = Y[:, j:j + 1]
        np.testing.assert_array_equal(LevelsBatch(lv, y).moment_thetas(blk),
                                      LevelsBatch(_fresh(lv), y).moment_thetas(blk))


def test_single_refits_reuse_the_pieces_and_match_a_fresh_start(sleep):
    """Refits of one fit compute the design's pieces once; each refit equals the refit whose
    moment start computed them afresh (the same start: the same result, bit for bit)."""
    r = mf.lmer("Reaction ~ Days + (Days | Subject)", sleep).fit()
    Y = np.asarray(r.simulate(nsim=3, seed=9))
    a = [r.refit(Y[:, j]) for j in range(3)]
    shared = r.model._small_levels()._shared
    got = shared["moment_design"]
    for j in range(3):
        shared.clear()                                 # afresh for each refit
        b = r.refit(Y[:, j])
        assert shared["moment_design"] is not got
        np.testing.assert_array_equal(a[j].theta, b.theta)
        np.testing.assert_array_equal(a[j].fe_params, b.fe_params)
        assert a[j].llf == b.llf and a[j].converged
