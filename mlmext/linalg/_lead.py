"""Machinery shared by the factors whose first block is block-diagonal and whose rest is dense.

The first random-effects block (the one with the most random effects) is never filled: its part of
the factor is one ``q1 x q1`` block per level, ``M1_g = Lambda_1' A11_g Lambda_1 + I``.
Eliminating it leaves the Schur complement

    S = Lambda_r' (A_rr - A_r1 B A_1r) Lambda_r,   B = Lambda_1 M1^-1 Lambda_1'

on the remainder (the blocks stored densely, then X and y), which the factors reduce further (the
nested chain) and factor densely into ``Lr``.  :class:`LeadBlockFactor` holds the cross-products
``A11``, ``A_r1`` (sparse, r x m1 q1) and ``A_rr`` (dense), forms them (:meth:`set_data`, or
:meth:`reweight` through a plan reused between PIRLS steps), and computes ``M1`` and ``S`` at a
theta; which blocks belong to the dense remainder is the subclass's choice (``depth``).
"""
from __future__ import annotations

import functools
from contextlib import nullcontext

import numpy as np
from scipy import linalg, sparse

from .._blas import INVERSE_THREADED_MIN_ROWS, inverse_threads
from .._malloc import trim_heap
from ._row_products import row_cross_products
from ._schur import SMALL_DENSE, DenseSchur, SchurProduct
from ._schur_rows import SplitSchur
from ._stacks import (block_cross, colwise_sums, rest_sums, sandwich, small_index,
                      spd_inv_logdet, times_or_same, unless_ones)
from .base import Factor

#: reweight sums several columns of [X y] by levels with sparse products up to this many rows
SPARSE_SUMS_ROWS = 200_000


class LeadBlockFactor(Factor):
    """Base of the factors with a block-diagonal first block and a dense remainder.

    Parameters
    ----------
    blocks : list of ReBlock
        Random-effects blocks, the first one with the most random effects.
    XY : ndarray, shape (n, p + 1)
        Fixed-effects design with the response as its last column
        (``p`` may be 0, as in the penalized least squares step of a GLMM).
    weights : ndarray, shape (n,), optional
        Prior (or working) weights.
    reweighting : bool
        Build only what :meth:`reweight` needs (its structure-reusing path),
        not the general one of :meth:`set_data`.
    depth : int
        Number of leading blocks the subclass keeps out of the dense remainder.
    """

    _scratch = ("_S",)
    #: :meth:`reweight` takes ``[X y]`` as the pair ``(X, y)`` too (large data with X: its
    #: columns are read one at a time, no n x (p + 1) array is made)
    reweight_columns = True
    #: the sparse remainder's plan and the positions of its random effects (dense.py); None:
    #: natural order, dense factorization
    _sn = _rpos = None
    #: set_cross_products keeps what the Schur product needs for new values of the same
    #: structure (DenseFactor.refresh_cross_products: a Dask GLMM's PIRLS iterations)
    _refreshable_schur = False

    def __init__(self, blocks, XY, weights=None, reweighting=False, depth=1):
        # XY: [X y], or (X, y) with reweighting on a factor that reweights by columns
        self._structure(blocks, XY[0].shape[1] if isinstance(XY, tuple) else XY.shape[1] - 1,
                        depth)
        if reweighting:             # set up for repeated reweight() calls (GLMM PIRLS) only
            self.reweight(XY, weights)
        else:
            self.set_data(XY, weights)

    def _structure(self, blocks, p, depth):
        self.blocks = blocks
        b1 = blocks[0]
        self.m1, self.q1 = b1.m, b1.q
        self._k0 = depth                                 # index of the first densely stored block
        rest = blocks[depth:]
        self._rest_blocks = rest
        self.rest_sizes = [b.nre for b in rest]
        self.rz = int(sum(self.rest_sizes))
        self.p = p
        self.r = self.rz + self.p + 1
        self._scalar_rest = all(b.q == 1 for b in rest)
        self._schur = None

    @classmethod
    def from_cross_products(cls, blocks, A11, A_r1, A_rr):
        """The factor of data seen only through their cross-products (see
        :meth:`set_cross_products`); :meth:`set_data`, :meth:`reweight` and
        :meth:`local_inverse` need the rows and are not available on it."""
        self = cls.__new__(cls)
        rz = sum(b.nre for b in blocks[1:])
        self._structure(blocks, A_rr.shape[0] - rz - 1, 1)
        return self.set_cross_products(A11, A_r1, A_rr)

    # sparse model matrices, built when first needed (small systems' set_data does without them)
    @functools.cached_property
    def _Zrest(self):
        return sparse.hstack([b.Z() for b in self._rest_blocks], format="csc") if self.rz else None

    @functools.cached_property
    def _Z1(self):
        return self.blocks[0].Z().tocsc()

    def set_data(self, XY, weights=None):
        """(Re)compute the cross-products for new [X y] values and/or weights.

        The random-effects structure is kept; a GLMM calls this once per
        PIRLS iteration with its working weights and response.
        """
        w = None if weights is None else np.asarray(weights, dtype=float)
        # the sparse model matrices are cached for the next call (a GLMM's PIRLS steps)
        A11, A_r1, A_rr = row_cross_products(self.blocks[0], self._rest_blocks, XY, w,
                                             lambda: (self._Z1, self._Zrest),
                                             dense_rr=not self._sparse_rr_wanted())
        return self.set_cross_products(A11, A_r1, A_rr)

    def _sparse_rr_wanted(self):
        """Hook: whether :meth:`set_data` hands ``A_rr`` over sparse (the reordering of a sparse
        remainder reads its pattern and permutes it sparse, then makes it dense)."""
        return False

    def set_cross_products(self, A11, A_r1, A_rr):
        """Take the cross-products as given (summed over row chunks elsewhere: Dask).

        ``A11`` (m1, q1, q1): the first block's per-level ``Z_1g' W Z_1g``; ``A_r1``
        (r, m1 q1), sparse: ``[Z_rest X y]' W Z_1``; ``A_rr`` (r, r), dense:
        ``[Z_rest X y]' W [Z_rest X y]`` (blocks in factor order, levels in each block's
        order, the response last): what :func:`row_cross_products` gives (``A_rr`` may be
        sparse: it is made dense here).
        """
        m1q1 = self.m1 * self.q1
        if A_rr.shape != (self.r, self.r) or A_r1.shape != (self.r, m1q1) \
                or A11.shape != (self.m1, self.q1, self.q1):
            raise ValueError("the cross-products do not match the factor's blocks")
        self.A11, self.A_r1 = A11, sparse.csr_matrix(A_r1)
        self.A_rr = sparse.csr_matrix(A_rr, dtype=float) if sparse.issparse(A_rr) \
            else np.asarray(A_rr, dtype=float)
        self._order_rest()
        self.A_1r = self.A_r1.T.tocsr()
        if not self._set_sparse_rest():
            if sparse.issparse(self.A_rr):
                self.A_rr = self.A_rr.toarray()
            if self.r * m1q1 <= SMALL_DENSE:
                self._schur = DenseSchur(self.A_r1, self.m1, self.q1)
            else:
                # the pairs of the random-effects rows; the X and y rows by dense products
                self._schur = SplitSchur(self.A_r1, self.rz, self.m1, self.q1,
                                         refreshable=self._refreshable_schur)
        self._set_operators()
        self._a1y = self.A_r1[self.r - 1].toarray().ravel()      # A_1r[:, -1], for solve()
        self._S = np.zeros(self.A_rr.shape)             # calloc'd: pages zeroed when touched
        return self

    def _set_sparse_rest(self):
        """Hook: set up the Schur product of a remainder factored on its pattern (``A_rr`` may
        stay sparse); False: the general product and a dense ``A_rr``."""
        return False

    def _order_rest(self):
        """Hook: reorder the remainder's random effects (rows of ``A_r1``, rows and columns of
        ``A_rr``, dense or sparse) for the factorization; the general storage's sparse path
        does."""
        self._rpos = self._sn = None

    # -- fast re-weighting (PIRLS) ----------------------------------------------------
    def workspace(self):
        new = super().workspace()
        plan = self.__dict__.get("_rw_plan")
        if plan is not None:      # reweight writes A_r1's, A_1r's and the Schur product's values in place
            own = dict(plan, A_r1=plan["A_r1"].copy(), A_1r=plan["A_1r"].copy(),
                       schur=plan["schur"].own_copy())
            new._rw_plan = own
            if self.__dict__.get("_schur") is plan["schur"]:
                new.A_r1, new.A_1r, new._schur = own["A_r1"], own["A_1r"], own["schur"]
                new._set_operators()
        return new

    def reweight(self, XY, weights=None):
        """:meth:`set_data` for new ``[X y]`` values and weights, reusing the structure.

        Gives the same cross-products as ``set_data`` (same blocks, same number
        of columns in ``XY``).  The sparsity pattern of ``A_r1``, its transpose
        and the Schur-product pairs are worked out on the first call; later
        calls cost a few ``bincount`` passes over the rows and no sparse-matrix
        construction.  This is the path for a GLMM's PIRLS iterations, where
        only the working response and weights change.
        """
        cols = None
        if isinstance(XY, tuple):        # (X, y): [X y]'s columns, stacked only where needed
            X_ = np.asarray(XY[0], dtype=float)
            cols = [X_[:, j] for j in range(X_.shape[1])] + [np.asarray(XY[1], dtype=float)]
            shape = (cols[-1].shape[0], len(cols))
        else:
            XY = np.asarray(XY, dtype=float)
            shape = XY.shape
        if len(shape) != 2 or shape[1] != self.p + 1:
            raise ValueError(f"XY must have {self.p + 1} columns (the factorization was set up "
                             f"with p = {self.p}); got shape {shape}")
        n = shape[0]
        self._rpos = self._sn = None                     # the PIRLS path keeps the natural order
        plan = getattr(self, "_rw_plan", None)
        if plan is None:
            plan = self._rw_plan = self._make_reweight_plan()
            trim_heap(n)           # its temporaries (100 MB at 1M rows): not kept resident
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        b1 = self.blocks[0]
        rz, m1q1 = self.rz, self.m1 * self.q1
        g1 = b1.codes
        if plan["x1sq"] is not None:                     # scalar first block
            x1sq = plan["x1sq"]
            self.A11 = np.bincount(g1, weights=w if plan["x1"] is None else w * x1sq,
                                   minlength=b1.m).reshape(-1, 1, 1)
        else:
            self.A11 = block_cross(b1.X, b1.codes, b1.m, w)
        A_r1, A_1r = plan["A_r1"], plan["A_1r"]
        nnz1 = plan["nnz1"]
        # large data with X (lme4's first stage): W [X y] a column at a time, not n x (p + 1)
        # at once (32 MB at 1M rows, at the fit's peak of memory)
        colwise = self.p > 0 and plan["Z1T"] is None and n > SPARSE_SUMS_ROWS
        if cols is not None and not colwise:
            XY = np.column_stack(cols)
        if nnz1:
            wr = w if plan["row1"] is None else w[plan["row1"]]
            A_r1.data[:nnz1] = np.bincount(plan["dest1"], weights=times_or_same(wr, plan["val1"]),
                                           minlength=nnz1)
            del wr
        # after that bincount (its int64 copy of dest1 and its weights): not beside them
        WXY = None if colwise else XY * w[:, None]
        if colwise:
            ZtW, YY = colwise_sums(XY if cols is None else cols, w, g1, plan["x1"],
                                   plan["rest_nz"] if rz else None, rz,
                                   A_r1.data[nnz1:].reshape(self.p + 1, m1q1))
        elif plan["x1sq"] is not None and plan["Z1T"] is None:
            x1 = plan["x1"]
            tail = A_r1.data[nnz1:].reshape(self.p + 1, m1q1)
            for j in range(self.p + 1):
                tail[j] = np.bincount(g1, weights=WXY[:, j] if x1 is None else WXY[:, j] * x1,
                                      minlength=m1q1)
        else:
            A_r1.data[nnz1:] = np.asarray(plan["Z1T"] @ WXY).T.ravel()
        np.take(A_r1.data, plan["tperm"], out=A_1r.data)       # no nnz-sized temporary
        self._a1y = A_r1.data[A_r1.data.size - m1q1:].copy()      # A_1r[:, -1], for solve()
        # A_rr by its parts (its nonzeros, the rest x [X y] block, [X y]' W [X y]): the Schur
        # complement is formed from them (_rr_into), no r x r array is kept (72 MB at 3,000 items)
        vals_rr = None
        if rz:
            wr = w if plan["row_rr"] is None else w[plan["row_rr"]]
            vals_rr = np.bincount(plan["dest_rr"], weights=times_or_same(wr, plan["val_rr"]),
                                  minlength=plan["uniq_rr"].size)
        if not colwise:
            ZtW = rest_sums(plan.get("rest_nz"), plan.get("ZrT"), WXY, rz) if rz else None
            YY = XY.T @ WXY
        self.A_r1, self.A_1r = A_r1, A_1r
        self._A_rr, self._rr_parts = None, (plan.get("uniq_rr"), vals_rr, ZtW, YY)
        plan["schur"].refresh(A_r1)
        self._schur = plan["schur"]
        self._set_operators()
        if getattr(self, "_S", None) is None or self._S.shape != (self.r, self.r):
            self._S = np.empty((self.r, self.r))
        return self

    _A_rr = _rr_parts = None

    @property
    def A_rr(self):
        """``[Z_rest X y]' W [Z_rest X y]`` (r x r, dense).  After :meth:`reweight` it is held
        by its parts and made when asked (the factorization forms the Schur complement from
        the parts directly)."""
        if self._A_rr is None and self._rr_parts is not None:
            A = np.empty((self.r, self.r))
            self._A_rr = self._rr_into(A)
        return self._A_rr

    @A_rr.setter
    def A_rr(self, value):
        self._A_rr, self._rr_parts = value, None

    def _rr_into(self, S):
        """``A_rr`` written into ``S`` (from :meth:`reweight`'s parts when it left them)."""
        if self._A_rr is not None or self._rr_parts is None:
            np.copyto(S, self._A_rr)
            return S
        uniq, vals, ZtW, YY = self._rr_parts
        rz = self.rz
        S.fill(0.0)
        if rz:
            S.ravel()[uniq] = vals
            S[:rz, rz:] = ZtW
            S[rz:, :rz] = ZtW.T
        S[rz:, rz:] = YY
        return S

    def _set_operators(self):
        """``_ar1`` / ``_a1r``: ``A_r1`` / ``A_1r`` for the per-theta products.  Small systems
        keep them as dense arrays (the dense Schur product holds ``A_r1`` anyway): a numpy
        product of a few hundred entries costs ~1 us, a scipy.sparse one ~20 us of overhead."""
        schur = self._schur
        if isinstance(schur, DenseSchur) and schur.A.size <= SMALL_DENSE:
            self._ar1, self._a1r = schur.A, schur.A.T
        else:
            self._ar1, self._a1r = self.A_r1, self.A_1r


    def _rest_plan(self, plan, b1, n, q1, m1q1, r):
        """The reweighting plan's entries for the rest's random effects (into ``plan``): where
        each row's products go in ``A_r1`` and in the rest x rest part of ``A_rr``; returns the
        positions of ``A_r1``'s nonzeros in the rest's rows."""
        Zr = self._Zrest.tocsr()
        self.__dict__.pop("_Zrest", None)         # not beside the sorts (made anew if asked)
        Zr.sort_indices()
        cnt = np.diff(Zr.indptr)
        rows = np.repeat(np.arange(n), cnt)
        cols, vals = Zr.indices.astype(np.int64), Zr.data
        # key = cols m1q1 + codes[row] q1 + comp in place, without an all-zero comp nor a copy
        # of rows for q1 = 1: the plan's temporaries are its phase's peak of memory
        comp = np.tile(np.arange(q1), rows.size) if q1 > 1 else 0
        row1 = np.repeat(rows, q1) if q1 > 1 else rows
        key = np.repeat(cols, q1) * m1q1
        key += b1.codes[row1] * q1 + comp if q1 > 1 else b1.codes[row1]
        uniq1, dest1 = np.unique(key, return_inverse=True)
        plan["dest1"] = small_index(dest1.ravel())
        del key, dest1
        x1 = np.asarray(b1.X[row1, comp], dtype=float)
        x1 *= np.repeat(vals, q1) if q1 > 1 else vals
        plan.update(row1=row1, val1=unless_ones(x1))
        del x1, comp
        # rest x rest: all ordered pairs of a row's entries (one entry: itself at both ends)
        e1s, e2s = [], []
        for kv in np.unique(cnt[cnt > 0]):
            st = Zr.indptr[:-1][cnt == kv]
            a, b = np.meshgrid(np.arange(kv), np.arange(kv), indexing="ij")
            e1s.append(st if kv == 1 else (st[:, None] + a.ravel()[None, :]).ravel())
            e2s.append(st if kv == 1 else (st[:, None] + b.ravel()[None, :]).ravel())
        e1, e2 = (e[0] if len(e) == 1 else np.concatenate(e) for e in (e1s, e2s))
        del cnt, e1s, e2s
        pair = cols[e1] * r
        pair += cols[e2]
        uniq_rr, dest_rr = np.unique(pair, return_inverse=True)
        cols32, dest_rr = small_index(cols), small_index(dest_rr.ravel())
        del pair, cols
        if dest_rr.dtype == cols32.dtype and np.array_equal(dest_rr, cols32):
            # one scalar rest block with every level used: the same index array (4 MB at 1M)
            dest_rr = cols32
        plan.update(row_rr=rows[e1], val_rr=unless_ones(vals[e1] * vals[e2]), uniq_rr=uniq_rr,
                    dest_rr=dest_rr, rest_nz=(rows, cols32, unless_ones(vals)))
        del dest_rr, e1, e2, row1
        ident = np.arange(n)
        for key in ("row1", "row_rr"):                # skip the gather when it is the identity
            if plan[key].size == n and np.array_equal(plan[key], ident):
                plan[key] = None
        if rows.size == n and np.array_equal(rows, ident):
            plan["rest_nz"] = (None,) + plan["rest_nz"][1:]
        return uniq1

    def _make_reweight_plan(self):
        b1 = self.blocks[0]
        n = b1.X.shape[0]
        q1, m1q1, rz, r, p1 = self.q1, self.m1 * self.q1, self.rz, self.r, self.p + 1
        plan = {}
        if rz:
            # in a function of its own: its n-sized temporaries are freed before the Schur
            # product's pairs are built (60 MB at 1M rows)
            uniq1 = self._rest_plan(plan, b1, n, q1, m1q1, r)
            trim_heap(n)
        else:
            uniq1 = np.zeros(0, dtype=np.int64)
        plan["nnz1"] = nnz1 = uniq1.size
        plan["x1sq"] = plan["x1"] = None
        if q1 == 1:
            x1 = b1.X[:, 0]
            ones = bool(np.all(x1 == 1.0))
            plan["x1"] = None if ones else x1.copy()
            plan["x1sq"] = True if ones else x1 * x1
        row_all = np.concatenate([uniq1 // m1q1, np.repeat(np.arange(rz, r), m1q1)])
        col_all = np.concatenate([uniq1 % m1q1, np.tile(np.arange(m1q1), p1)])
        indptr = np.searchsorted(row_all, np.arange(r + 1))
        nnz = row_all.size
        A_r1 = sparse.csr_matrix((np.zeros(nnz), col_all, indptr), shape=(r, m1q1))
        idx = A_r1.copy()
        idx.data = np.arange(1.0, nnz + 1.0)
        T = idx.T.tocsr()
        T.sort_indices()
        plan["tperm"] = small_index(T.data.astype(np.int64) - 1)
        plan["A_1r"] = sparse.csr_matrix((np.zeros(nnz), T.indices, T.indptr), shape=(m1q1, r))
        plan["A_r1"] = A_r1
        # [X y]'s sums per level of the first block and per rest effect: one sparse product
        # for all columns (the same sums in the same order as a bincount per column, several
        # times faster for lme4's first stage with X); by bincount on large scalar data (the
        # product's matrices cost 12 bytes per row)
        sums_by_product = p1 > 1 and n <= SPARSE_SUMS_ROWS
        plan["Z1T"] = None
        if q1 > 1 or sums_by_product:
            plan["Z1T"] = self._Z1.T.tocsr()
            plan["Z1T"].sort_indices()
        if rz and sums_by_product:
            rows_, cols_, vals_ = plan["rest_nz"]
            order = np.argsort(cols_, kind="stable")
            plan["ZrT"] = sparse.csr_matrix(
                (np.ones(order.size) if vals_ is None else vals_[order],
                 order if rows_ is None else rows_[order],
                 np.searchsorted(cols_[order], np.arange(rz + 1))), shape=(rz, n))
        del idx, T, row_all, col_all
        # the plan has what reweight reads of the model matrices (set_data builds them again)
        self.__dict__.pop("_Z1", None)
        self.__dict__.pop("_Zrest", None)
        # dense Schur product when it costs less than the enumerated pairs
        csc = A_r1.tocsc()
        kk = np.diff(csc.indptr[0:m1q1 + 1:q1]).astype(np.int64)
        npairs = int((kk * (kk + 1) // 2).sum()) * q1 * q1
        if r * r * m1q1 <= 4 * npairs and r * m1q1 <= 50_000_000:
            plan["schur"] = DenseSchur(A_r1, self.m1, q1)
        else:
            plan["schur"] = SchurProduct(A_r1, self.m1, q1, refreshable=True, fused=True)
        del nnz1
        return plan

    # -- per-theta factorization -------------------------------------------------
    def _lambda_rest(self, lams):
        """Lambda on the rest (other RE blocks, then identity on X and y)."""
        if self._scalar_rest:
            d = np.ones(self.r)
            off = 0
            for b, lam in zip(self._rest_blocks, lams[self._k0:]):
                d[off:off + b.nre] = lam[0, 0]
                off += b.nre
            if self._rpos is not None:                   # the factorization's order
                d[:self.rz] = d[:self.rz][self._rperm]
            return d
        mats = [sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                for b, lam in zip(self._rest_blocks, lams[self._k0:])]
        mats.append(sparse.identity(self.p + 1))
        return sparse.block_diag(mats, format="csr")


    def _eliminate_first(self, lams):
        """``M1`` (and its inverse and log-determinant) at ``lams``, and the Schur complement
        ``S = Lambda_r' (A_rr - A_r1 B A_1r) Lambda_r`` in the scratch matrix (lower triangle at
        least; the full matrix when Lambda_r is not diagonal)."""
        lam1 = lams[0]
        if self.q1 == 1:
            t2 = lam1[0, 0] ** 2
            d = t2 * self.A11[:, 0, 0] + 1.0
            self.M1 = d
            self.logdet1 = np.log(d).sum()
            B = t2 / d
            self.M1inv = (1.0 / d)[:, None, None]
        else:
            M = sandwich(self.A11, lam1, lam1)
            M[:, np.arange(self.q1), np.arange(self.q1)] += 1.0
            self.M1 = M
            self.M1inv, self.logdet1 = spd_inv_logdet(M)       # closed forms for q1 = 2
            B = sandwich(self.M1inv, lam1.T, lam1.T)           # Lambda_1 M1^-1 Lambda_1', (m1, q1, q1)
        self.lam1 = lam1
        lr = self._lambda_rest(lams)
        self.lam_rest = lr
        return self._schur_complement(B, lr)

    def _schur_complement(self, B, lr):
        """``S = Lambda_r' (A_rr - A_r1 blockdiag(B) A_1r) Lambda_r`` in the scratch matrix."""
        S = self._rr_into(self._S)
        self._schur.subtract_from(S, B)
        if isinstance(lr, np.ndarray):
            S *= lr[:, None]
            S *= lr[None, :]
        else:
            if self._schur.P is not None:                # only the lower triangle is current
                S = np.tril(S) + np.tril(S, -1).T
            S = np.asarray((lr.T @ (lr.T @ S).T).T)
        return S

    def _factor_rest(self, S):
        """``Lr``: the dense Cholesky factor of ``S + I_z`` (S is overwritten)."""
        idx = np.arange(self.rz)
        S[idx, idx] += 1.0
        # In-place LAPACK on the transposed view: a C-ordered lower factor is a Fortran-ordered
        # upper one, so nothing is copied.  Only the lower triangle of Lr is meaningful.
        S = np.ascontiguousarray(S)
        # the library's threads on free cores as for the inverse of this order (the fit runs
        # one thread below THREADED_MIN_ROWS); smaller orders skip the limit's ~30 us
        with inverse_threads(self.r) if self.r >= INVERSE_THREADED_MIN_ROWS else nullcontext():
            c, info = linalg.lapack.dpotrf(S.T, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor is not positive definite")
        self.Lr = c.T

    @property
    def diag_rest(self):
        return np.diagonal(self.Lr)

    # -- solutions at the current theta -------------------------------------------
    def _solve_M1(self, rhs):
        """Solve (Lambda_1' A_11 Lambda_1 + I) x = rhs blockwise; rhs is (m1 q1,)."""
        if self.q1 == 1:
            return rhs / self.M1
        return (self.M1inv @ rhs.reshape(self.m1, self.q1, 1)).reshape(-1)

    def _apply_lam1T(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1).reshape(-1)   # rows: Lambda_1' v_g

    def _apply_lam1(self, v):
        return (v.reshape(self.m1, self.q1) @ self.lam1.T).reshape(-1)

    def _apply_lam_rest(self, v):
        lr = self.lam_rest
        return lr * v if isinstance(lr, np.ndarray) else lr @ v


    def _lam_rest_T(self, v):
        lr = self.lam_rest
        return lr * v if isinstance(lr, np.ndarray) else lr.T @ v

