"""The Schur product with the X and y rows apart (:class:`mlmext.linalg._schur_rows.SplitSchur`):
pairs among the random-effects rows of A_r1, the dense rows of X and y by dense products.  Its
product, its pair sums and its trace weights must equal those of all rows' pairs
(:class:`~mlmext.linalg._schur.SchurProduct`, the path it replaces) and the dense algebra, for
the stored pairs, the level-by-level fallback, new values and a new response row."""
import numpy as np
import pytest
from scipy import sparse

from mlmext.linalg import _schur
from mlmext.linalg._schur import SchurProduct
from mlmext.linalg._schur_rows import SplitSchur

from test_schur_pairs import _design


def _system(seed, m1, q1, rz, t, shared=False):
    """A_r1 (csr): ``rz`` sparse random-effects rows (levels of 0 to 6 entries), then ``t``
    rows with an entry at nearly every level (X and y; one level's entries zero); symmetric
    positive B per level."""
    rng = np.random.default_rng(seed)
    Az = _design(seed, m1, q1, rz, shared) if rz else sparse.csc_matrix((0, m1 * q1))
    X = rng.normal(size=(t, m1 * q1))
    X[:, :q1] = 0.0
    A = sparse.vstack([Az, sparse.csr_matrix(X)], format="csr")
    L = rng.normal(size=(m1, q1, q1))
    B = L @ np.swapaxes(L, 1, 2) + 0.1 * np.eye(q1)
    return A, B, rng


def _dense(A, B, m1):
    Bd = sparse.block_diag([B[g] for g in range(m1)]).toarray()
    return A.toarray() @ Bd @ A.toarray().T


def _sym(V):
    return 0.5 * (V + np.swapaxes(V, 1, 2))


def _lower_k(rng, r, zero_from):
    """K as the gradient gives it: lower triangle, its off-diagonal doubled, 0 from row
    ``zero_from`` on (the rows outside the leading kk)."""
    K = np.tril(rng.normal(size=(r, r)))
    K[zero_from:] = 0.0
    return K


@pytest.mark.parametrize("q1", [1, 2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_split_product_equals_all_pairs(q1, shared):
    m1, rz, t = 40, 25, 4
    A, B, rng = _system(3, m1, q1, rz, t, shared)
    r = rz + t
    split = SplitSchur(A, rz, m1, q1)
    full = SchurProduct(A.T.tocsr().T, m1, q1)
    assert split.P.nnz < full.P.nnz and not np.any(split.P.indices // r >= rz)
    S0 = rng.normal(size=(r, r))
    Sa, Sb = split.subtract_from(S0.copy(), B), full.subtract_from(S0.copy(), B)
    scale = np.abs(Sb).max()
    np.testing.assert_allclose(np.tril(Sa), np.tril(Sb), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(np.tril(Sa), np.tril(S0 - _dense(A, B, m1)), rtol=0,
                               atol=1e-12 * scale)
    # the gradient's sums: ML (K zero on the X rows), REML (zero on y's row), all rows
    for zero_from in (rz, r - 1, r):
        K = _lower_k(rng, r, zero_from)
        Va, Vb = _sym(split.pair_sums(K)), _sym(full.pair_sums(K))
        np.testing.assert_allclose(Va, Vb, rtol=0, atol=1e-12 * np.abs(Vb).max())
    Kf = rng.normal(size=(r, r))
    Kf = Kf + Kf.T
    Wa, Wb = split.trace_weights(Kf), full.trace_weights(Kf)
    np.testing.assert_allclose(_sym(Wa), _sym(Wb), rtol=0, atol=1e-12 * np.abs(Wb).max())
    # the contract: v . vec(B) = trace(K G(B)) for symmetric B
    assert float(np.sum(Wa * B)) == pytest.approx(float(np.sum(Kf * _dense(A, B, m1))),
                                                 rel=1e-11)


@pytest.mark.parametrize("q1", [1, 2])
def test_split_product_level_by_level_is_the_full_matrix(q1, monkeypatch):
    """Too many pairs to store: the random-effects rows go level by level (full matrices), and
    the X rows' part is written on both sides of the diagonal too."""
    monkeypatch.setattr(_schur.SchurProduct, "max_pairs", 0)
    m1, rz, t = 30, 20, 3
    A, B, rng = _system(5, m1, q1, rz, t)
    r = rz + t
    split = SplitSchur(A, rz, m1, q1)
    assert split.P is None
    S0 = rng.normal(size=(r, r))
    G = _dense(A, B, m1)
    np.testing.assert_allclose(split.subtract_from(S0.copy(), B), S0 - G, rtol=0,
                               atol=1e-12 * np.abs(G).max())
    K = rng.normal(size=(r, r))
    K = K + K.T
    np.testing.assert_allclose(float(np.sum(split.trace_weights(K) * B)), float(np.sum(K * G)),
                               rtol=1e-11)


@pytest.mark.parametrize("q1", [1, 2])
def test_split_product_refresh_and_response(q1):
    """New values of the same structure (refreshable), and a new response row, equal products
    built anew; the response's copy shares the pairs and leaves the parent as it was."""
    m1, rz, t = 30, 20, 3
    A, B, rng = _system(7, m1, q1, rz, t)
    r = rz + t
    split = SplitSchur(A, rz, m1, q1, refreshable=True)
    A2 = A.copy()
    A2.data = rng.normal(size=A2.nnz)
    split.refresh(A2)
    S0 = rng.normal(size=(r, r))
    ref = SplitSchur(A2, rz, m1, q1, refreshable=True)         # (the same layout of P)
    np.testing.assert_array_equal(np.tril(split.subtract_from(S0.copy(), B)),
                                  np.tril(ref.subtract_from(S0.copy(), B)))
    a_new = rng.normal(size=m1 * q1)
    A3 = A2.toarray()
    A3[-1] = a_new
    resp = split.with_response(a_new)
    assert resp.pairs is split.pairs
    fresh = SplitSchur(sparse.csr_matrix(A3), rz, m1, q1, refreshable=True)
    np.testing.assert_array_equal(np.tril(resp.subtract_from(S0.copy(), B)),
                                  np.tril(fresh.subtract_from(S0.copy(), B)))
    K = _lower_k(rng, r, r)
    np.testing.assert_array_equal(resp.pair_sums(K), fresh.pair_sums(K))
    np.testing.assert_array_equal(np.tril(split.subtract_from(S0.copy(), B)),
                                  np.tril(ref.subtract_from(S0.copy(), B)))


def test_split_product_without_random_effect_rows():
    """No rows but X and y (rz = 0): no pairs, the dense product alone."""
    m1, q1, t = 25, 2, 3
    A, B, rng = _system(9, m1, q1, 0, t)
    split = SplitSchur(A, 0, m1, q1)
    S0 = rng.normal(size=(t, t))
    G = _dense(A, B, m1)
    np.testing.assert_allclose(np.tril(split.subtract_from(S0.copy(), B)), np.tril(S0 - G),
                               rtol=0, atol=1e-12 * np.abs(G).max())
    K = _lower_k(rng, t, t)
    full = SchurProduct(A.T.tocsr().T, m1, q1)
    np.testing.assert_allclose(_sym(split.pair_sums(K)), _sym(full.pair_sums(K)), rtol=0,
                               atol=1e-12 * np.abs(full.pair_sums(K)).max())
