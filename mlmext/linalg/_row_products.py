"""The cross-products of rows that the lead-block factors take (:func:`row_cross_products`):
per level of the first block, and of the rest with ``[X y]``, densely for small data and by
sparse products otherwise.  Sums of these over row chunks are the cross-products of all rows
(:mod:`mlmext.dask`)."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from ._stacks import block_cross, dense_Z

__all__ = ["row_cross_products", "SMALL_DENSE_FLOPS"]

#: set_data forms the cross-products with dense matrices when that costs at most this many flops
SMALL_DENSE_FLOPS = 2_000_000

def row_cross_products(b1, rest, XY, weights=None, sparse_Z=None, dense_rr=True):
    """``(A11, A_r1, A_rr)`` of rows: what :meth:`LeadBlockFactor.set_cross_products` takes.

    The blocks hold the rows' model matrices and level codes (``X``, ``codes``); the first
    block's (``b1``) cross-products are per level, the ``rest`` (and ``XY``, the response
    last) enter ``A_r1`` and ``A_rr``.  Sums of these over row chunks are the cross-products of
    all the rows (:mod:`mlmext.dask`).  ``sparse_Z``: ``() -> (Z_1, Z_rest)`` (csc) when
    the caller caches them.  ``dense_rr=False``: ``A_rr`` as a sparse matrix where it is
    formed sparse (a chunk's share of a crossed factor's block is mostly zero).
    """
    n = XY.shape[0]
    w = np.ones(n) if weights is None else weights
    A11 = block_cross(b1.X, b1.codes, b1.m, w)
    r = sum(b.nre for b in rest) + XY.shape[1]
    if n * (b1.nre + r) * r <= SMALL_DENSE_FLOPS:
        # small: dense products (scipy.sparse construction would cost ~1 ms of overhead)
        sw = np.sqrt(w)[:, None]
        Zr = np.hstack([dense_Z(b) for b in rest] + [XY]) * sw
        A_rr = Zr.T @ Zr
        return A11, sparse.csr_matrix(Zr.T @ (dense_Z(b1) * sw)), \
            A_rr if dense_rr else sparse.csr_matrix(A_rr)
    if sparse_Z is None:
        Z1 = b1.Z().tocsc()
        Zrest = sparse.hstack([b.Z() for b in rest], format="csc") if rest else None
    else:
        Z1, Zrest = sparse_Z()
    # by blocks of [Z_rest, [X y]]: stacking the dense n x (p + 1) columns into a sparse matrix
    # and scaling it by sqrt(W) cost more than all the products (1.5 s of 1.9 s at 1M rows)
    WXY = XY * w[:, None]
    W = None if weights is None or np.all(w == 1.0) else sparse.diags(w)
    A_y1 = _csr_of_dense(np.asarray(Z1.T @ WXY).T)                 # [X y]' W Z_1
    A_yy = XY.T @ WXY
    if Zrest is None:
        return A11, A_y1, A_yy if dense_rr else sparse.csr_matrix(A_yy)
    ZrT = Zrest.T.tocsr()
    WZ1 = Z1 if W is None else (W @ Z1).tocsc()
    A_z1 = ZrT @ WZ1                                               # Z_rest' W Z_1
    A_zz = ZrT @ (Zrest if W is None else (W @ Zrest).tocsc())
    A_zy = np.asarray(ZrT @ WXY)                                   # Z_rest' W [X y]
    A_r1 = sparse.vstack([A_z1, A_y1], format="csr")
    if dense_rr:
        rz = A_zz.shape[0]
        A_rr = np.zeros((r, r))        # calloc'd: A_zz's entries only (toarray: 3 passes of r^2)
        A_zz = A_zz.tocoo()
        A_zz.sum_duplicates()
        A_rr[A_zz.row, A_zz.col] = A_zz.data
        A_rr[:rz, rz:] = A_zy
        A_rr[rz:, :rz] = A_zy.T
        A_rr[rz:, rz:] = A_yy
    else:
        A_rr = sparse.bmat([[A_zz, _csr_of_dense(A_zy)],
                            [_csr_of_dense(A_zy.T), _csr_of_dense(A_yy)]], format="csr")
    return A11, A_r1, A_rr


def _csr_of_dense(D):
    """``csr_matrix(D)`` of a dense 2-d array, its nonzeros only, without scipy's detour
    through COO (2 ms for STAR's 14 x 10,732 [X y]' Z_1, against 0.2 ms)."""
    D = np.asarray(D, dtype=float)
    nz = D != 0
    indptr = np.zeros(D.shape[0] + 1, dtype=np.int64)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    return sparse.csr_matrix((D[nz], np.nonzero(nz)[1], indptr), shape=D.shape)
