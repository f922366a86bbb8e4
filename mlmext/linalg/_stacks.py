"""Small dense kernels of the factorization: stacks of per-level q x q blocks, triangular solves.

A block-diagonal matrix with one ``q x q`` block per level is held as an ``(m, q, q)`` array (a
*stack*); these helpers multiply, invert and reduce stacks without a Python loop over levels, and
wrap the few LAPACK calls the factors make on their dense parts (without scipy's per-call checks,
which cost more than the arithmetic on the small matrices of an objective evaluation).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg, sparse

from .._blas import inverse_threads


def dense_Z(b):
    """Dense n x (m q) model matrix of a block (as ``b.Z()``), for small systems."""
    n, q = b.X.shape
    Z = np.zeros((n, b.m * q))
    Z[np.arange(n)[:, None], b.codes[:, None] * q + np.arange(q)[None, :]] = b.X
    return Z


def block_cross(X, codes, m, w):
    """Per-level cross-products sum_i w_i x_i x_i' as an (m, q, q) array."""
    n, q = X.shape
    out = np.empty((m, q, q))
    Xw = X if np.all(w == 1.0) else X * w[:, None]           # unit weights: no copy
    for j in range(q):
        for k in range(j, q):
            v = np.bincount(codes, weights=Xw[:, j] * X[:, k], minlength=m)
            out[:, j, k] = v
            out[:, k, j] = v
    return out


def rmul(X, R):
    """``X_g R`` for a stack X (m, a, b) and one matrix R, as one matrix product."""
    if R.shape == (1, 1):                                # scalar template: no BLAS call
        return X * R[0, 0]
    m, a, b = X.shape
    return (X.reshape(m * a, b) @ R).reshape(m, a, -1)


def lmul(L, X):
    """``L X_g`` for one matrix L and a stack X (m, a, b), as one matrix product."""
    if L.shape == (1, 1):
        return L[0, 0] * X
    m, a, b = X.shape
    return np.swapaxes((np.swapaxes(X, 1, 2).reshape(m * b, a) @ L.T).reshape(m, b, -1), 1, 2)


def sandwich(X, L, R):
    """``L' X_g R`` for each matrix of the stack X, as one matrix product:
    ``vec(L' X R) = vec(X) kron(L, R)`` in row-major order (an einsum over the three operands
    loops per level and costs ~6x more for 50k levels)."""
    if L.shape == (1, 1) and R.shape == (1, 1):
        return X * (L[0, 0] * R[0, 0])
    m, a, b = X.shape
    c, d = L.shape[1], R.shape[1]
    K = (L[:, None, :, None] * R[None, :, None, :]).reshape(a * b, c * d)   # np.kron: 70 us
    return (X.reshape(m, a * b) @ K).reshape(m, c, d)


def spd_inv_logdet(M):
    """Inverses and the summed log-determinants of a stack of symmetric positive definite
    matrices (m, q, q), from their lower triangles; LinAlgError if one is not definite.
    Closed forms for q <= 2 (the common scalar and intercept-slope blocks)."""
    m, q, _ = M.shape
    if q == 1:
        d = M[:, 0, 0]
        if not d.min() > 0:                              # (NaN fails too)
            raise np.linalg.LinAlgError("block not positive definite")
        return (1.0 / d).reshape(m, 1, 1), float(np.log(d).sum())
    if q == 2:
        a, b, c = M[:, 0, 0], M[:, 1, 0], M[:, 1, 1]
        det = a * c - b * b
        if not ((a > 0).all() and (det > 0).all()):
            raise np.linalg.LinAlgError("block not positive definite")
        inv = np.empty_like(M)
        inv[:, 0, 0] = c / det
        inv[:, 1, 1] = a / det
        inv[:, 0, 1] = inv[:, 1, 0] = -b / det
        return inv, float(np.log(det).sum())
    L = np.linalg.cholesky(M)
    Li = np.linalg.inv(L)
    return np.swapaxes(Li, 1, 2) @ Li, 2.0 * float(np.log(np.diagonal(L, axis1=1, axis2=2)).sum())


def tri_inv(L):
    """Inverse of the lower triangle of ``L`` (its strict upper triangle is ignored)."""
    with inverse_threads(L.shape[0]):
        Li, info = linalg.lapack.dtrtri(L, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return np.tril(Li)


def solve_lower_t(L, b):
    """Solve ``L' x = b`` for lower-triangular ``L``: the LAPACK call ``solve_triangular`` makes
    for a C-ordered ``L`` (``trtrs`` on its transpose), without that wrapper's ~20 us of checks."""
    if L.shape[0] == 0:                          # LAPACK rejects empty systems
        return np.zeros(0)
    x, info = linalg.lapack.dtrtrs(L.T, b, lower=0, trans=0)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return x


def solve_last_row_t(L):
    """``x`` with ``L[:-1, :-1]' x = L[-1, :-1]`` (``L`` lower triangular, the response's row
    last): the fixed effects and modes of a factor.

    The leading block of a C-ordered ``L`` is not contiguous, so LAPACK would get a copy of it
    (72 MB at 3,000 rows, ~50 ms).  With the right-hand side extended by a zero the back
    substitution on the whole ``L`` gives a zero last entry and ``x`` unchanged above it, and
    the transposed view is passed in place.
    """
    r = L.shape[0]
    if r < 2 or not L.flags.c_contiguous or not L[-1, -1] != 0.0:
        return solve_lower_t(L[:-1, :-1], L[-1, :-1])
    b = np.zeros(r)
    b[:-1] = L[-1, :-1]
    x, info = linalg.lapack.dtrtrs(L.T, b, lower=0, trans=0)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return x[:-1]


def level_gram(E):
    """``sum_g E_g E_g'`` for a stack E (m, q, k): ``np.tensordot(E, E, ([0, 2], [0, 2]))`` as
    one matrix product, without tensordot's overhead."""
    F = np.swapaxes(E, 0, 1).reshape(E.shape[1], -1)
    return F @ F.T


def blockdiag_sparse(B):
    """(m, q, q) array -> sparse block-diagonal (m q) x (m q) matrix."""
    m, q, _ = B.shape
    return sparse.bsr_matrix((B, np.arange(m), np.arange(m + 1)), shape=(m * q, m * q)).tocsr()


def bmm(A, B):
    """``A_g B_g`` for stacks A (m, a, c) and B (m, c, b).

    For many blocks of up to 16 products each (q <= 2) the sum over c is written out on
    the strided components: numpy's matmul pays a per-matrix overhead (~70 ns) that makes
    it 3-5 times slower than that from a few hundred levels on; below, its single call
    beats the 2-8 vector operations.
    """
    m, a, c = A.shape
    b = B.shape[2]
    if a == b == c == 1:
        return A * B
    if a * b * c > 16 or m * a * b * c < 1024:
        return A @ B
    out = np.empty((m, a, b))
    for i in range(a):
        for j in range(b):
            s = A[:, i, 0] * B[:, 0, j]
            for k in range(1, c):
                s += A[:, i, k] * B[:, k, j]
            out[:, i, j] = s
    return out


def tr(A):
    """The transposes of a stack's blocks, (m, a, b) -> (m, b, a) (a view)."""
    return A.transpose(0, 2, 1)


class LevelMap:
    """The levels of one grouping factor -> the levels of a factor it is nested in.

    ``idx[g]`` is the level holding level g; :meth:`take` gathers a per-level array
    of the coarser factor onto the finer levels, :meth:`sum` adds a per-level array
    of the finer factor up into the coarser levels (the two products with the
    block-sparse off-diagonal blocks of a nested factor).
    """

    def __init__(self, idx, m):
        self.idx = np.asarray(idx, dtype=np.int64)
        self.m = int(m)
        self._mat = None

    def take(self, X):
        return X.take(self.idx, axis=0)              # ~10 times faster than X[idx] for small rows

    def sum(self, X):
        """(m_fine, ...) -> (m, ...): sums over the fine levels within each coarse level."""
        shape = X.shape[1:]
        k = math.prod(shape)
        if k == 1:
            return np.bincount(self.idx, weights=X.ravel(), minlength=self.m).reshape((self.m,) + shape)
        X2 = X.reshape(X.shape[0], k)
        if k <= 16:                                      # a few bincounts beat a sparse product
            out = np.empty((self.m, k))
            for j in range(k):
                out[:, j] = np.bincount(self.idx, weights=X2[:, j], minlength=self.m)
        else:
            if self._mat is None:    # on first use (workspaces racing here build it twice, harmlessly)
                n = self.idx.size
                self._mat = sparse.csr_matrix((np.ones(n), (self.idx, np.arange(n))), shape=(self.m, n))
            out = np.asarray(self._mat @ X2)
        return out.reshape((self.m,) + shape)

    def then(self, other):
        """The composed map: this one followed by ``other`` (nesting is transitive)."""
        return LevelMap(other.idx[self.idx], other.m)


# the reweighting plan's per-row arrays (_lead): intercepts' values (all ones) are not stored,
# indices are 32-bit where they fit (at 1M rows each stored array is 8 MB)
def unless_ones(v):
    """``v``, or None where it is all ones."""
    return None if np.all(v == 1.0) else v


def times_or_same(a, v):
    """``a * v``, or ``a`` for ``v`` None (all ones)."""
    return a if v is None else a * v


def small_index(i):
    """Indices as 32-bit integers where they fit."""
    return i.astype(np.int32) if i.size and i.max() < 2**31 - 1 else i


def rest_sums(rest_nz, ZrT, WXY, rz):
    """``Z_r' W [X y]`` (rz, p + 1) from the rest's nonzeros ``(rows, cols, vals)`` (rows or
    vals None: the identity, all ones): by ``ZrT`` (the same sums by one sparse product)
    when given, else a bincount per column."""
    if ZrT is not None:
        return ZrT @ WXY
    rows, cols, vals = rest_nz
    out = np.empty((rz, WXY.shape[1]))
    for j in range(WXY.shape[1]):
        out[:, j] = np.bincount(cols, weights=times_or_same(WXY[:, j] if rows is None else
                                                             WXY[rows, j], vals), minlength=rz)
    return out


def colwise_sums(XY, w, g1, x1, rest_nz, rz, tail):
    """The sums of ``W [X y]`` a column at a time (no n x (p + 1) product): per level of a
    scalar first block (codes ``g1``, values ``x1`` or None for ones) into ``tail`` (p + 1,
    m1); returns ``Z_r' W [X y]`` (None without a rest) and ``[X y]' W [X y]``.  ``XY``: the
    n x (p + 1) array, or the list of its columns."""
    columns = XY if isinstance(XY, list) else None
    p1 = len(columns) if columns is not None else XY.shape[1]
    ZtW = np.empty((rz, p1)) if rz else None
    YY = np.empty((p1, p1))
    for j in range(p1):
        wc = (XY[:, j] if columns is None else columns[j]) * w
        tail[j] = np.bincount(g1, weights=wc if x1 is None else wc * x1, minlength=tail.shape[1])
        if rz:
            rows, cols, vals = rest_nz
            ZtW[:, j] = np.bincount(cols, weights=times_or_same(wc if rows is None else wc[rows],
                                                                vals), minlength=rz)
        YY[:, j] = XY.T @ wc if columns is None else [c @ wc for c in columns]
    return ZtW, YY
