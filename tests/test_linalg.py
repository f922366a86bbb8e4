"""The factor storages of mlmext.linalg against each other and against dense algebra.

Every quantity of the factor interface (log-determinants, r2, solve, cov_beta_unscaled,
condvar_u, inverse_block_sums, ztres, solve_re, local_inverse) is computed three ways at a fixed
theta: by the storage the factory picks (a chain of nested blocks kept block-diagonal, at depths
2 to 4, q = 1 to 3 per block, with and without crossed factors after the chain; the diagonal
storage of a single scalar block), by the general dense path (``nested=False``), and directly
from the dense matrix ``Lambda' [Z X y]' W [Z X y] Lambda + I``.  Deterministic, so the
tolerance is tight.
"""
import concurrent.futures

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mlmext.formula import api as mf
from mlmext.linalg import BlockedCholesky, DenseFactor, NestedFactor, OneBlockFactor, ScalarFactor

RTOL = 1e-10


def _chain_data(seed=11, n_a=4, n_b=3, n_c=3, n_d=2, per=4, n_item=3):
    """Rows in d within c within b within a (every level nested in the next), a crossed item."""
    rng = np.random.default_rng(seed)
    n_cells = n_a * n_b * n_c * n_d
    cell = np.repeat(np.arange(n_cells), per)
    d = cell
    c = d // n_d
    b = c // n_c
    a = b // n_b
    n = cell.size
    x, z = rng.normal(size=n), rng.uniform(-1.0, 1.0, n)
    item = rng.integers(0, n_item, n)
    y = (1.0 + 0.5 * x + rng.normal(size=n_a)[a] + 0.4 * rng.normal(size=n_a)[a] * x
         + 0.6 * rng.normal(size=a.max() * n_b + n_b)[b] + 0.5 * rng.normal(size=c.max() + 1)[c]
         + 0.4 * rng.normal(size=d.max() + 1)[d] + 0.3 * rng.normal(size=n_item)[item]
         + rng.normal(size=n))
    lab = lambda v, p: pd.Categorical([f"{p}{i}" for i in v])  # noqa: E731
    # labels repeat across parents (b0 in every a), as in data where nesting is implicit
    return pd.DataFrame({"y": y, "x": x, "z": z, "a": lab(a, "a"), "b": lab(b % n_b, "b"),
                         "c": lab(c % n_c, "c"), "d": lab(d % n_d, "d"), "item": lab(item, "i")})


@pytest.fixture(scope="module")
def data():
    return _chain_data()


# (formula, depth of the nested chain the factory should keep block-diagonal)
DESIGNS = [
    ("y ~ x + (1 | a/b)", 2),
    ("y ~ x + (x | a) + (1 | a:b)", 2),                              # q2 = 2
    ("y ~ x + (x | a:b) + (1 | a)", 2),                              # q1 = 2
    ("y ~ x + (x + z | a) + (z | a:b)", 2),                          # q2 = 3 (general inverse)
    ("y ~ x + (1 | a/b/c)", 3),
    ("y ~ x + (1 | a/b/c/d)", 4),
    ("y ~ x + (x | a:b) + (1 | a:b:c) + (x | a)", 3),                # vector blocks in the chain
    ("y ~ x + (x | a:b:c) + (1 | a:b) + (x | a)", 3),                # q1 = 2, q3 = 2
    ("y ~ x + (1 | a/b/c) + (1 | item)", 3),                         # crossed block after the chain
    ("y ~ x + (x | a:b:c) + (1 | a:b) + (x | a) + (x | item)", 3),   # crossed vector block
    ("y ~ x + (1 | a/b/c) + (x | item)", 2),                         # crossed block breaks the chain
]


def _lam_full(des, lams):
    return sparse.block_diag([sparse.kron(sparse.identity(b.m), lam) for b, lam in
                              zip(des.blocks, lams)]).toarray()


def _dense_reference(des, XY, w, lams, v):
    """Every quantity of the interface from the dense matrix Lambda' [Z X y]' W [Z X y] Lambda + I."""
    Z = des.Z().toarray()
    nre, p = Z.shape[1], XY.shape[1] - 1
    G = np.hstack([Z @ _lam_full(des, lams), XY])
    Om = G.T @ (w[:, None] * G)
    Om[:nre, :nre] += np.eye(nre)
    L = np.linalg.cholesky(Om)
    d = np.diag(L)
    sol = np.linalg.solve(Om[:-1, :-1], Om[:-1, -1])
    u, beta = sol[:nre], sol[nre:]
    Minv = np.linalg.inv(Om[:nre, :nre])

    def per_block(Ainv, summed):
        out, off = [], 0
        for b in des.blocks:
            idx = off + np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :]
            blocks = Ainv[idx[:, :, None], idx[:, None, :]]
            out.append(blocks.sum(axis=0) if summed else blocks)
            off += b.nre
        return out

    res = XY[:, -1] - XY[:, :-1] @ beta - G[:, :nre] @ u
    ztr = Z.T @ (w * res)
    ztres, off = [], 0
    for b in des.blocks:
        ztres.append(ztr[off:off + b.nre].reshape(b.m, b.q))
        off += b.nre
    # local pieces: t_i = Lambda' z_i at the row's positions, rho_i = (M^-1 t_i) there
    pos, t, off = [], [], 0
    for b, lam in zip(des.blocks, lams):
        pos.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
        t.append(b.X @ lam)
        off += b.nre
    P, T = np.hstack(pos), np.hstack(t)
    rho = np.einsum("ikl,il->ik", Minv[P[:, :, None], P[:, None, :]], T)
    return {
        "logdet_zz": 2.0 * np.log(d[:nre]).sum(), "logdet_xx": 2.0 * np.log(d[nre:nre + p]).sum(),
        "r2": d[-1] ** 2, "u": u, "beta": beta, "cov_beta": np.linalg.inv(Om[:-1, :-1])[nre:, nre:],
        "ibs_ml": _flat(per_block(Minv, True)),
        "ibs_reml": _flat(per_block(np.linalg.inv(Om[:nre + p, :nre + p]), True)),
        "condvar": _flat(per_block(Minv, False)), "ztres": _flat(ztres), "solve_re": Minv @ v,
        "local_t": T.ravel(), "local_rho": rho.ravel(),
    }


def _flat(arrs):
    return np.concatenate([np.ravel(a) for a in arrs])


def _factor_quantities(ch, lams, v):
    ch.update(lams)
    u, beta = ch.solve()
    t, rho = ch.local_inverse()
    return {
        "logdet_zz": ch.logdet_zz, "logdet_xx": ch.logdet_xx, "r2": ch.r2, "u": u, "beta": beta,
        "cov_beta": ch.cov_beta_unscaled(),
        "ibs_ml": _flat(ch.inverse_block_sums(0)), "ibs_reml": _flat(ch.inverse_block_sums(ch.p)),
        "condvar": _flat(ch.condvar_u()), "ztres": _flat(ch.ztres(u, beta, lams)),
        "solve_re": ch.solve_re(v), "local_t": np.hstack(t).ravel(), "local_rho": np.hstack(rho).ravel(),
    }


def _assert_same(got, ref, what):
    for key in ref:
        a, b = np.asarray(got[key], dtype=float), np.asarray(ref[key], dtype=float)
        assert a.shape == b.shape, (what, key)
        scale = max(np.max(np.abs(b), initial=0.0), 1e-300)
        err = np.max(np.abs(a - b), initial=0.0) / scale
        assert err <= RTOL, f"{what}: {key} differs by {err:.3g} (relative)"


def _setup(data, formula, seed=7):
    model = mf.lmer(formula, data)
    des = model.re_design
    rng = np.random.default_rng(seed)
    theta = des.theta_start + 0.4 * rng.random(des.ntheta)
    w = rng.uniform(0.5, 2.0, model._XY.shape[0])
    v = rng.normal(size=des.nre)
    return model, des, des.lambdas(theta), w, v, rng


@pytest.mark.parametrize("reweighting", [False, True], ids=["set_data", "reweight"])
@pytest.mark.parametrize("formula,depth", DESIGNS)
def test_nested_chain_matches_dense(data, formula, depth, reweighting):
    model, des, lams, w, v, rng = _setup(data, formula)
    fast = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting)
    dense = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting, nested=False)
    assert isinstance(fast, NestedFactor) and fast.nested and fast.depth == depth
    assert isinstance(dense, DenseFactor) and not dense.nested
    assert fast.rz == sum(b.nre for b in des.blocks[depth:])
    ref = _dense_reference(des, model._XY, w, lams, v)
    _assert_same(_factor_quantities(fast, lams, v), ref, "nested")
    _assert_same(_factor_quantities(dense, lams, v), ref, "dense")
    if reweighting:                  # new response and weights through the reused structure
        XY = model._XY.copy()
        XY[:, -1] = rng.normal(size=XY.shape[0])
        w2 = rng.uniform(0.2, 3.0, XY.shape[0])
        fast.reweight(XY, w2)
        dense.reweight(XY, w2)
        ref = _dense_reference(des, XY, w2, lams, v)
        _assert_same(_factor_quantities(fast, lams, v), ref, "nested, reweighted")
        _assert_same(_factor_quantities(dense, lams, v), ref, "dense, reweighted")


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a/b/c)", "y ~ x + (x | a:b) + (1 | a:b:c) + (x | a)"])
def test_random_effects_only_system(data, formula):
    """p = 0 (a GLMM's PIRLS system, make_chol): XY is the working response alone."""
    model, des, lams, w, v, rng = _setup(data, formula, seed=3)
    XY = rng.normal(size=(model._XY.shape[0], 1))
    fast = BlockedCholesky(des.blocks, np.ones_like(XY), np.ones(XY.shape[0]), reweighting=True)
    fast.reweight(XY, w)
    assert fast.p == 0 and fast.depth == 3
    _assert_same(_factor_quantities(fast, lams, v), _dense_reference(des, XY, w, lams, v), "p = 0")


@pytest.mark.parametrize("reweighting", [False, True], ids=["set_data", "reweight"])
@pytest.mark.parametrize("formula", ["y ~ x + (1 | a:b:c)", "y ~ x + (0 + z | a:b)"])
def test_scalar_factor_matches_dense(data, formula, reweighting):
    model, des, lams, w, v, rng = _setup(data, formula)
    fast = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting)
    dense = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting, nested=False)
    assert isinstance(fast, ScalarFactor) and isinstance(dense, DenseFactor)
    ref = _dense_reference(des, model._XY, w, lams, v)
    _assert_same(_factor_quantities(fast, lams, v), ref, "scalar")
    _assert_same(_factor_quantities(dense, lams, v), ref, "dense")
    XY = rng.normal(size=(model._XY.shape[0], 1))          # p = 0, as PIRLS's system
    fast = BlockedCholesky(des.blocks, np.ones_like(XY), reweighting=reweighting).reweight(XY, w)
    _assert_same(_factor_quantities(fast, lams, v), _dense_reference(des, XY, w, lams, v), "scalar, p = 0")
    # the factor PIRLS's scalar path wraps around its own diagonal gives the same pieces
    diag = ScalarFactor.from_diagonal(des.blocks[0], lams, fast.M1)
    t, rho = diag.local_inverse()
    t0, rho0 = fast.local_inverse()
    _assert_same({"logdet_zz": diag.logdet_zz, "solve_re": diag.solve_re(v), "condvar": _flat(diag.condvar_u()),
                  "ibs": _flat(diag.inverse_block_sums(0)), "t": t[0], "rho": rho[0]},
                 {"logdet_zz": fast.logdet_zz, "solve_re": fast.solve_re(v), "condvar": _flat(fast.condvar_u()),
                  "ibs": _flat(fast.inverse_block_sums(0)), "t": t0[0], "rho": rho0[0]}, "from_diagonal")
    with pytest.raises(RuntimeError, match="cross-products"):
        diag.solve()


@pytest.mark.parametrize("formula", ["y ~ x + (x | a:b)", "y ~ x + (x + z | a)",
                                     "y ~ x + (x || a:b:c)", "y ~ x + (1 | a) + (0 + x | a)"])
def test_one_block_factor_matches_dense(data, formula):
    """One grouping factor with q >= 2: the stack storage gives every quantity of the interface
    (with weights, at a theta away from the start), as the general storage and the dense matrix."""
    model, des, lams, w, v, rng = _setup(data, formula)
    fast = BlockedCholesky(des.blocks, model._XY, w)
    dense = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert isinstance(fast, OneBlockFactor) and isinstance(dense, DenseFactor)
    ref = _dense_reference(des, model._XY, w, lams, v)
    _assert_same(_factor_quantities(fast, lams, v), ref, "one block")
    _assert_same(_factor_quantities(dense, lams, v), ref, "dense")
    # new data in place of the old (a refit's response): the cross-products follow
    XY = np.column_stack([model._XY[:, :-1], rng.normal(size=model._XY.shape[0])])
    fast.set_data(XY, w)
    _assert_same(_factor_quantities(fast, lams, v), _dense_reference(des, XY, w, lams, v), "set_data")
    # the PIRLS system (reweighting) keeps the general storage
    assert isinstance(BlockedCholesky(des.blocks, model._XY, w, reweighting=True), DenseFactor)
    # a system that is not positive definite (negative weights) is an error, not a value
    fast.set_data(XY, -w)
    with pytest.raises(np.linalg.LinAlgError):
        fast.update([10.0 * lam for lam in lams])


def test_chain_detection(data):
    des = mf.lmer("y ~ x + (1 | a/b/c/d) + (1 | item)", data).re_design
    XY = np.column_stack([np.ones(len(data)), data["y"]])
    ch = BlockedCholesky(des.blocks, XY)
    assert ch.depth == 4 and ch.rz == des.blocks[4].nre and ch.r == ch.rz + 2
    assert isinstance(BlockedCholesky(des.blocks, XY, nested=False), DenseFactor)
    # a crossed first block: nothing nested, and nested=True says so
    crossed = mf.lmer("y ~ x + (1 | item) + (1 | a)", data).re_design
    assert isinstance(BlockedCholesky(crossed.blocks, XY), DenseFactor)
    with pytest.raises(ValueError, match="not nested"):
        BlockedCholesky(crossed.blocks, XY, nested=True)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a/b/c) + (1 | item)",          # nested chain
                                     "y ~ x + (x | a:b:c) + (1 | a:b) + (x | a)",
                                     "y ~ x + (1 | item) + (x | a)",               # dense storage
                                     "y ~ x + (x | a:b)",                           # one block
                                     "y ~ x + (1 | a:b)"])                          # diagonal
def test_workspaces_are_independent(data, formula):
    """Two workspaces updated at different theta keep their own factor (and leave the original's)."""
    model, des, lams0, w, v, rng = _setup(data, formula, seed=5)
    ch = BlockedCholesky(des.blocks, model._XY, w)
    thetas = [des.theta_start + 0.5 * rng.random(des.ntheta) for _ in range(2)]
    lams1, lams2 = (des.lambdas(t) for t in thetas)
    before = _factor_quantities(ch, lams0, v)
    ws1, ws2 = ch.workspace(), ch.workspace()
    assert type(ws1) is type(ch)
    ws1.update(lams1)
    ws2.update(lams2)                 # after ws1: a shared buffer would now hold theta 2 in both
    got1 = {"logdet_zz": ws1.logdet_zz, "r2": ws1.r2, "solve": _flat(ws1.solve()),
            "condvar": _flat(ws1.condvar_u())}
    got2 = {"logdet_zz": ws2.logdet_zz, "r2": ws2.r2, "solve": _flat(ws2.solve()),
            "condvar": _flat(ws2.condvar_u())}
    for got, lams in ((got1, lams1), (got2, lams2)):
        ref = _dense_reference(des, model._XY, w, lams, v)
        _assert_same(got, {"logdet_zz": ref["logdet_zz"], "r2": ref["r2"],
                           "solve": np.concatenate([ref["u"], ref["beta"]]),
                           "condvar": ref["condvar"]}, "workspace")
    # the original still holds its own factor at lams0
    _assert_same({"logdet_zz": ch.logdet_zz, "r2": ch.r2, "u": ch.solve()[0]},
                 {k: before[k] for k in ("logdet_zz", "r2", "u")}, "original")
    # and concurrently, one workspace per thread
    grid = [des.theta_start + 0.5 * rng.random(des.ntheta) for _ in range(6)]

    def run(theta):
        f = ch.workspace()
        out = []
        for _ in range(20):
            f.update(des.lambdas(theta))
            out.append((f.logdet_zz, f.r2))
        return out

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        results = list(ex.map(run, grid))
    for theta, res in zip(grid, results):
        ref = _dense_reference(des, model._XY, w, des.lambdas(theta), v)
        for ld, r2 in res:
            assert ld == pytest.approx(ref["logdet_zz"], rel=RTOL)
            assert r2 == pytest.approx(ref["r2"], rel=RTOL)


@pytest.mark.parametrize("storage", ["pairs", "levels", "levels-natural-bincount"])
@pytest.mark.parametrize("formula", ["y ~ x + (1 | a:b:c) + (x | item)",           # q1 = 1
                                     "y ~ x + (x | a:b:c) + (1 | item)",           # q1 = 2
                                     "y ~ x + (x + z | a:b:c) + (x | item)"])      # q1 = 3
def test_crossed_schur_product_storages_match_dense(data, formula, storage, monkeypatch):
    """Large crossed systems keep A_r1 sparse and enumerate its pairs per level (one block of
    P per pair of template components), or, when P would be too large, work level by level
    (dense blocks per level, rows renumbered by popularity or not, summed by np.add.at or
    bincount); each must give the dense reference, by set_data and by reweight."""
    from mlmext.linalg import _lead, _levels, _schur
    from mlmext.linalg._schur_rows import SplitSchur
    monkeypatch.setattr(_lead, "SMALL_DENSE", 0)            # small data: force the sparse path
    if storage != "pairs":
        monkeypatch.setattr(_schur.SchurProduct, "max_pairs", 0)
        monkeypatch.setattr(_levels, "CHUNK", 64)           # several batches per group of levels
    if storage == "levels-natural-bincount":
        monkeypatch.setattr(_levels.LevelGather, "reorder", False)
        monkeypatch.setattr(_levels.LevelGather, "use_add_at", False)
    model, des, lams, w, v, rng = _setup(data, formula)
    for reweighting in (False, True):
        ch = BlockedCholesky(des.blocks, model._XY, w, reweighting=reweighting, nested=False)
        assert isinstance(ch, DenseFactor)
        if not reweighting:
            assert isinstance(ch._schur, SplitSchur)
            assert isinstance(ch._schur.pairs, _schur.SchurProduct)
            assert (ch._schur.P is None) == (storage != "pairs")
        _assert_same(_factor_quantities(ch, lams, v), _dense_reference(des, model._XY, w, lams, v),
                     f"{storage}, reweighting={reweighting}")


def _school_data(seed=5, n_sch=30, tch_per=10, pupils=500, movers=0.004):
    """STAR's shape: pupils (the first block) each taught by four teachers of their school over
    the years, a few pupils changing school; teachers within schools.  The remainder (teachers
    and schools, 330 random effects) is sparse, so the sparse factorization takes it."""
    rng = np.random.default_rng(seed)
    sch = rng.integers(0, n_sch, pupils)
    rows = []
    for i in range(pupils):
        s = sch[i]
        for year in range(4):
            if rng.random() < movers:
                s = rng.integers(0, n_sch)
            rows.append((i, s * tch_per + rng.integers(0, tch_per), s, year))
    d = pd.DataFrame(rows, columns=["pupil", "tch", "sch", "year"])
    n = len(d)
    d["x"] = rng.normal(size=n)
    d["y"] = (d["x"] + rng.normal(size=pupils)[d["pupil"]] + 0.5 * rng.normal(size=n_sch * tch_per)[d["tch"]]
              + 0.7 * rng.normal(size=n_sch)[d["sch"]] + rng.normal(size=n))
    for c in ("pupil", "tch", "sch"):
        d[c] = pd.Categorical([f"{c[0]}{v}" for v in d[c]])
    return d


@pytest.mark.parametrize("formula", ["y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)",
                                     "y ~ x + (x | pupil) + (1 | tch) + (1 | sch)"])   # q1 = 2
def test_sparse_remainder_matches_dense(formula, monkeypatch):
    """A sparse remainder is reordered and factored on its pattern (supernodes): every quantity
    of the interface equals the dense matrix's, in the natural order of the random effects."""
    from mlmext.linalg import _supernodal
    data = _school_data()
    model, des, lams, w, v, rng = _setup(data, formula)
    ch = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert isinstance(ch, DenseFactor) and ch._sn is not None
    plan = ch._sn
    assert plan.nnz < 0.25 * ch.r * ch.r / 2                    # the pattern is sparse ...
    assert not np.array_equal(plan.perm, np.arange(ch.rz))       # ... and the order not natural
    ref = _dense_reference(des, model._XY, w, lams, v)
    _assert_same(_factor_quantities(ch, lams, v), ref, "supernodal")
    # nothing of the factor lies outside the stored pattern (the steps never wrote there)
    mask = np.zeros((ch.r, ch.r), dtype=bool)
    for a, b, R in plan.supernodes:
        mask[a:b, a:b] = True
        mask[R, a:b] = True
    mask[ch.rz:, ch.rz:] = True
    assert np.all(np.tril(ch.Lr)[~mask] == 0.0)
    # the same object through the dense path
    monkeypatch.setattr(DenseFactor, "sparse_rest", False)
    dense = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert dense._sn is None
    _assert_same(_factor_quantities(dense, lams, v), ref, "dense")
    # merged supernodes of one column each: the pattern changes, the numbers do not
    monkeypatch.setattr(DenseFactor, "sparse_rest", True)
    monkeypatch.setattr(_supernodal, "MAX_COLS", 1)
    single = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert len(single._sn.supernodes) == single.rz
    _assert_same(_factor_quantities(single, lams, v), ref, "one column per supernode")
    # too many pairs for the compact product: the storage is filled from r x r arrays
    from mlmext.linalg import _schur
    monkeypatch.setattr(_schur.SchurProduct, "max_pairs", 10)
    levels = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert levels._sn is not None and levels._rest is None and levels._schur.P is None
    _assert_same(_factor_quantities(levels, lams, v), ref, "pairs level by level")
    monkeypatch.undo()
    # an indefinite matrix is an error, as dpotrf's is in the dense path (-I in the storage)
    minus_eye = np.zeros(single._sn.size)
    minus_eye[single._sn.diag] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        single._sn.factor(minus_eye, [])
    # the storage's positions: the diagonal's are where dense() puts them; none above it
    dense_eye = single._sn.dense(-minus_eye)
    np.testing.assert_array_equal(dense_eye, np.eye(single.r))
    with pytest.raises(ValueError, match="lower triangle"):
        single._sn.positions(0, 1)


def test_sparse_remainder_reused_buffers_across_kk_and_theta():
    """The sparse remainder's selected inverse writes into a buffer kept between calls (reset
    on its pattern) and reads the diagonal blocks' inverses of the last factorization: ML and
    REML sums alternated over two thetas equal the dense reference each time."""
    data = _school_data(seed=11)
    model, des, lams0, w, v, rng = _setup(data, "y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)", seed=6)
    ch = BlockedCholesky(des.blocks, model._XY, w, nested=False).workspace()
    assert ch._sn is not None and ch._Xsel is not None
    thetas = [des.theta_start + 0.5 * rng.random(des.ntheta) for _ in range(2)]
    refs = [_dense_reference(des, model._XY, w, des.lambdas(t), v) for t in thetas]
    for theta, ref in list(zip(thetas, refs)) * 2:
        ch.update(des.lambdas(theta))
        for key, k in (("ibs_reml", ch.p), ("ibs_ml", 0), ("ibs_reml", ch.p)):
            np.testing.assert_allclose(_flat(ch.inverse_block_sums(k)), ref[key], rtol=1e-9)
        u, beta = ch.solve()
        np.testing.assert_allclose(beta, ref["beta"], rtol=1e-9)
        np.testing.assert_allclose(u, ref["u"], rtol=1e-8, atol=1e-10 * np.abs(ref["u"]).max())


def test_sparse_remainder_fit_equals_dense_fit(monkeypatch):
    """The fit through the sparse remainder reaches the dense path's optimum."""
    data = _school_data(seed=9)
    f = "y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)"
    m = mf.lmer(f, data)
    res = m.fit()
    assert m._cross_products()._sn is not None
    monkeypatch.setattr(DenseFactor, "sparse_rest", False)
    m0 = mf.lmer(f, data)
    res0 = m0.fit()
    assert m0._cross_products()._sn is None
    assert res.optim.converged and res0.optim.converged
    # both stop on the checks' Newton decrement (1e-7 deviance units): objectives agree to that
    assert abs(res.llf - res0.llf) < 1e-6
    assert np.max(np.abs(res.fe_params - res0.fe_params) / res0.bse_fe) < 2e-3
    assert np.allclose(res.theta, res0.theta, rtol=1e-3, atol=1e-4)


def test_sparse_remainder_workspaces_in_threads():
    """Workspaces of a sparse-remainder factor share the plan and the compact Schur product
    read-only: updated from several threads at different theta, each keeps its own numbers."""
    data = _school_data()
    model, des, lams0, w, v, rng = _setup(data, "y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)", seed=4)
    ch = BlockedCholesky(des.blocks, model._XY, w, nested=False)
    assert ch._sn is not None and ch._rest is not None
    grid = [des.theta_start + 0.5 * rng.random(des.ntheta) for _ in range(2)] * 2

    def run(theta):
        f = ch.workspace()
        out = []
        for _ in range(5):
            f.update(des.lambdas(theta))
            out.append((f.logdet_zz, f.r2, _flat(f.inverse_block_sums(f.p))))
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run, grid))
    refs = [_dense_reference(des, model._XY, w, des.lambdas(t), v) for t in grid[:2]]
    for ref, res in zip(refs * 2, results):
        for ld, r2, ibs in res:
            assert ld == pytest.approx(ref["logdet_zz"], rel=RTOL)
            assert r2 == pytest.approx(ref["r2"], rel=RTOL)
            np.testing.assert_allclose(ibs, ref["ibs_reml"], rtol=1e-9)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | pupil) + (1 | tch) + (1 | sch)",     # sparse rest
                                     "y ~ x + (x | sch) + (1 | tch)",                   # q1 = 2
                                     "y ~ x + (1 | tch)"])                              # one block
def test_cross_products_summed_over_row_chunks(formula):
    """The seam the Dask fit uses: the cross-products of row chunks, summed, set up the same
    factor as the rows (every interface quantity that needs no rows)."""
    from mlmext.linalg import row_cross_products
    data = _school_data()
    model, des, lams, w, v, rng = _setup(data, formula)
    XY = model._XY
    ref = DenseFactor(des.blocks, XY, w)
    cuts = np.sort(rng.choice(np.arange(1, XY.shape[0]), 4, replace=False))
    sums = None
    for rows in np.split(np.arange(XY.shape[0]), cuts):      # chunks that split levels
        blocks = []
        for b in des.blocks:
            c = b.__class__.__new__(b.__class__)
            c.__dict__.update(b.__dict__, X=b.X[rows], codes=b.codes[rows])
            blocks.append(c)
        part = row_cross_products(blocks[0], blocks[1:], XY[rows], w[rows], dense_rr=False)
        sums = part if sums is None else tuple(a + b for a, b in zip(sums, part))
    A11, A_r1, A_rr = sums
    got = DenseFactor.from_cross_products(des.blocks, A11, A_r1, A_rr.toarray())
    assert (got._sn is None) == (ref._sn is None)
    keys = ["logdet_zz", "logdet_xx", "r2", "u", "beta", "cov_beta", "ibs_ml", "ibs_reml",
            "condvar", "ztres", "solve_re"]
    want = {k: v_ for k, v_ in _factor_quantities(ref, lams, v).items() if k in keys}
    got.update(lams)
    u, beta = got.solve()
    _assert_same({"logdet_zz": got.logdet_zz, "logdet_xx": got.logdet_xx, "r2": got.r2, "u": u,
                  "beta": beta, "cov_beta": got.cov_beta_unscaled(),
                  "ibs_ml": _flat(got.inverse_block_sums(0)),
                  "ibs_reml": _flat(got.inverse_block_sums(got.p)),
                  "condvar": _flat(got.condvar_u()), "ztres": _flat(got.ztres(u, beta, lams)),
                  "solve_re": got.solve_re(v)}, want, "from summed cross-products")
    with pytest.raises(NotImplementedError):
        NestedFactor.from_cross_products(des.blocks, A11, A_r1, A_rr.toarray())


def test_supernodal_postorder_is_the_depth_first_order():
    """The elimination tree's postorder computed from subtree sizes equals the order a
    depth-first search emits (children in index order), on random forests."""
    from mlmext.linalg._supernodal import _postorder

    def dfs(parent):
        children = [[] for _ in parent]
        roots = []
        for j, p in enumerate(parent):
            (children[p] if p >= 0 else roots).append(j)
        out = []

        def visit(v):
            for c in children[v]:
                visit(c)
            out.append(v)
        for v in roots:
            visit(v)
        return out

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        parent = np.array([int(rng.integers(j + 1, n)) if j < n - 1 and rng.random() < 0.8 else -1
                           for j in range(n)])
        assert _postorder(parent).tolist() == dfs(parent)


def _minimum_degree_reference(n, indptr, indices):
    """Minimum degree with mass elimination, by a full scan for the minimum at every step
    (ties to the smallest index, as the heap's order breaks them)."""
    adj = [set(indices[indptr[i]:indptr[i + 1]].tolist()) - {i} for i in range(n)]
    live, order, structs = set(range(n)), [], []
    while live:
        v = min(live, key=lambda i: (len(adj[i]), i))
        nb = adj[v]
        live.discard(v)
        order.append(v)
        structs.append(set(nb))
        mass = []
        for u in sorted(nb):
            adj[u] = (adj[u] | nb) - {u, v}
            if len(adj[u]) == len(nb) - 1:
                mass.append(u)
        rest = set(nb)
        for u in mass:                          # in the order the neighbours were visited
            rest.discard(u)
            live.discard(u)
            order.append(u)
            structs.append(set(rest))
        for u in rest:
            adj[u] -= set(mass)
    return order, structs


def test_minimum_degree_order():
    """The heap-driven minimum degree (entries re-keyed lazily) eliminates a node of minimum
    degree at every step: the same fill as a full scan for the minimum on random patterns,
    and every column's rows are the eliminated node's neighbours then."""
    from mlmext.linalg._supernodal import minimum_degree
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(5, 120))
        A = sparse.random(n, n, density=float(rng.uniform(0.01, 0.08)), random_state=int(rng.integers(1e9)))
        G = ((A + A.T) != 0).astype(float).tocsr()
        G.sort_indices()
        order, structs = minimum_degree(n, G.indptr, G.indices)
        ref_order, ref_structs = _minimum_degree_reference(n, G.indptr, G.indices)
        assert sorted(order.tolist()) == list(range(n))
        assert sum(map(len, structs)) == sum(map(len, ref_structs))
        # the rows of each column are those of the symbolic elimination in this order
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        adj = [set(G.indices[G.indptr[i]:G.indptr[i + 1]].tolist()) - {i} for i in range(n)]
        for k, v in enumerate(order):
            later = {u for u in adj[v] if pos[u] > k}
            assert later == set(structs[k])
            for u in later:
                adj[u] |= later - {u}
