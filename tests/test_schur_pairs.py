"""The pair enumeration of :class:`mlmext.linalg._schur.SchurProduct` against a plain loop.

P's columns hold, per block (a, b) of the first factor's template and per level (in
``_order``), the pairs of the level's entries of A_r1's columns a and b: for a = b the lower
triangle by rows (value ``v_p v_q`` at position ``i_p r + i_q``), for a > b every entry of a
with every entry of b (``max(i, j) r + min(i, j)``, doubled when i = j).  The loop below writes
that definition out pair by pair; the built P must equal it to the bit (the same products),
and every construction (blocks, refreshable, by count) must give the dense ``A_r1 B A_1r``.
"""
import numpy as np
import pytest
from scipy import sparse

from mlmext.linalg._schur import SchurProduct


def _design(seed, m1, q1, r, shared):
    """A_r1 (r x m1 q1) with levels of 0 to 6 entries (empty and one-entry levels included);
    ``shared``: a level's columns hold the same rows (a slope and its intercept), else their
    own (overlapping) rows."""
    rng = np.random.default_rng(seed)
    cols = []
    for g in range(m1):
        k = [0, 1, 6, 2, 3][g % 5] if g < 10 else int(rng.integers(0, 7))
        rows = np.sort(rng.choice(r, size=k, replace=False))
        for a in range(q1):
            own = rows if shared or a == 0 else np.sort(rng.choice(r, size=int(rng.integers(0, 5)),
                                                                   replace=False))
            col = np.zeros(r)
            col[own] = rng.normal(size=own.size)
            cols.append(col)
    return sparse.csc_matrix(np.column_stack(cols))


def _loop_pairs(A, m1, q1, order, ab):
    """(data, positions, column pointers) of P by the definition, pair by pair."""
    A = A.tocsc()
    A.sort_indices()
    r = A.shape[0]
    data, pos, ptr = [], [], [0]
    for (a, b), levels in zip(ab, order):
        for g in levels:
            ea = range(A.indptr[g * q1 + a], A.indptr[g * q1 + a + 1])
            eb = range(A.indptr[g * q1 + b], A.indptr[g * q1 + b + 1])
            for p, e1 in enumerate(ea):
                for q, e2 in enumerate(eb):
                    if a == b and q > p:
                        break
                    i, j = A.indices[e1], A.indices[e2]
                    v = A.data[e1] * A.data[e2]
                    if a != b and i == j:
                        v *= 2.0
                    data.append(v)
                    pos.append(max(i, j) * r + min(i, j))
            ptr.append(len(data))
    return np.array(data), np.array(pos), np.array(ptr)


def _dense_lower(A, B, m1, q1):
    Bd = sparse.block_diag([B[g] for g in range(m1)]).toarray()
    G = A.toarray() @ Bd @ A.toarray().T
    return np.tril(G)


@pytest.mark.parametrize("q1", [1, 2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_pairs_equal_their_definition(q1, shared):
    m1, r = 40, 9
    A = _design(q1 * 10 + shared, m1, q1, r, shared)
    S = SchurProduct(A, m1, q1)
    data, pos, ptr = _loop_pairs(A, m1, q1, S._order, S._ab)
    assert np.array_equal(S.P.data, data)                 # the same products: bit-identical
    assert np.array_equal(S.P.indices, pos)
    assert np.array_equal(S.P.indptr, ptr)


@pytest.mark.parametrize("q1", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("chunk", [None, 7])
def test_every_construction_gives_the_dense_product(q1, shared, chunk, monkeypatch):
    m1, r = 40, 9
    A = _design(q1 * 100 + shared, m1, q1, r, shared)
    if chunk is not None:                         # many small chunks of levels per group
        build = SchurProduct._build_blocks
        monkeypatch.setattr(SchurProduct, "_build_blocks",
                            lambda self, A, it: build(self, A, it, chunk=chunk))
    rng = np.random.default_rng(q1)
    L = rng.normal(size=(m1, q1, q1))
    B = L @ L.transpose(0, 2, 1)
    want = _dense_lower(A, B, m1, q1)
    for refreshable in (False, True):
        S = SchurProduct(A, m1, q1, refreshable=refreshable)
        got = np.tril(-S.subtract_from(np.zeros((r, r)), B))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    S = SchurProduct(A, m1, q1)
    K = rng.normal(size=(r, r))
    K = K + K.T
    # trace(K G(B)) = v . vec(B), v on the lower triangle of each level's block (a column
    # (a, b), a > b, stands for both B_ab and B_ba)
    v = S.trace_weights(K)
    np.testing.assert_allclose((v * np.tril(B)).sum(), np.trace(K @ (want + np.tril(want, -1).T)),
                               rtol=1e-10)
