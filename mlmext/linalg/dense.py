"""The general storage: the first block block-diagonal, every other block dense.

This is the factor for crossed grouping factors (and the reference path for nested ones,
``nested=False``): the first block's part of ``L`` is one ``q1 x q1`` block per level, and the
remaining random-effects blocks, X and y share one dense factor ``Lr`` of the Schur complement
(:class:`~mlmext.linalg._lead.LeadBlockFactor`).  The gradient pieces avoid forming the
``(m1 q1) x r`` off-diagonal part of the inverse where they can: :meth:`inverse_block_sums`
reduces it through the enumerated pairs of the Schur product, :meth:`local_inverse` works on the
scalar arrays when every block is scalar.

When the remainder's random effects are sparse (nearly nested factors after the first: STAR's
teachers within schools), :meth:`_order_rest` reorders them once (minimum degree) and the
remainder is factored and inverted on its pattern only (:mod:`~mlmext.linalg._supernodal`),
in the plan's flat storage (``_Lv``; the Schur complement is assembled into it by
:mod:`~mlmext.linalg._sparse_rest`).  The objective and its gradient read that storage; ``Lr``
(the factor in that order, r x r) is made from it only when another reader asks for it.
``_rpos[i]`` is the position of random effect i of the remainder, and every method that reads
or returns per-block values maps through it.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from .._blas import inverse_threads
from ._dense_inverse import ReInverseMixin
from ._lead import LeadBlockFactor
from ._potri import potri_upper
from ._response import factor_with_response
from ._sparse_rest import SparseRest
from ._stacks import sandwich, solve_last_row_t
from ._supernodal import MAX_DENSITY, MIN_RZ, SupernodalPlan

__all__ = ["DenseFactor"]

#: the sparse remainder's pattern is looked for when the pairs of remainder effects sharing a
#: first-block level number at most this (their sparse product costs ~0.1 s at 8e6)
SPARSE_MAX_PAIRS = 8_000_000
#: rows of the pattern sampled to reject a remainder far denser than the sparse path allows
DENSITY_SAMPLE = 64
#: rows per band of the passes over a lower triangle (a band's part above the diagonal is
#: passed over too: 1/2 of a band's square, 6 % of the work at 1,000 rows)
LOWER_BAND = 64


class DenseFactor(ReInverseMixin, LeadBlockFactor):
    """Blocked Cholesky factor with the first block block-diagonal and the rest dense.

    ``DenseFactor(blocks, XY, weights=None, reweighting=False)``; see
    :class:`~mlmext.linalg._lead.LeadBlockFactor` for the parameters and
    :class:`~mlmext.linalg.base.Factor` for the interface; the GLMM gradient's solves and
    inverse entries are :class:`~mlmext.linalg._dense_inverse.ReInverseMixin`'s.
    """

    def __init__(self, blocks, XY, weights=None, reweighting=False):
        super().__init__(blocks, XY, weights, reweighting, depth=1)

    #: reorder a sparse remainder and factor it on its pattern (the tests set it to False to
    #: check the sparse path against the dense one)
    sparse_rest = True
    _rest = _A_zr = _rr_sparse = _Xsel = _Lv = _sn_inv = _Lr_dense = None
    #: the scaled inverse of the last gradient (see :meth:`rest_inverse_squares`)
    _inverse_kept = None
    #: written in place per evaluation: the Schur complement, and the sparse path's factor and
    #: selected inverse (flat storage vectors of the plan's layout)
    _scratch = ("_S", "_Xsel", "_Lv")

    @property
    def Lr(self):
        """The dense factor of the remainder (r x r, lower triangle); on the sparse path made
        from the flat storage when first read after an update (the objective and its gradient
        read the storage itself)."""
        L = self._Lr_dense
        if L is None and self._sn is not None and self._sn_inv is not None:
            L = self._Lr_dense = self._sn.dense(self._Lv)
        return L

    @Lr.setter
    def Lr(self, value):
        self._Lr_dense = value

    def _sparse_rr_wanted(self):
        return self.sparse_rest and self._scalar_rest and self.rz >= MIN_RZ

    def _order_rest(self):
        """A fill-reducing order of the remainder's random effects when they are sparse enough;
        ``A_r1`` and ``A_rr`` are permuted to it (X and y stay last).  ``_rr_sparse``: the
        permuted ``A_rr`` as a sparse matrix where it came sparse (its pattern and the
        random-effects rows' products are read from it), else None."""
        self._rpos, self._sn, self._rr_sparse = None, None, None
        rz = self.rz
        if not self._sparse_rr_wanted():
            return
        A = self.A_r1[:rz].tocsc()
        # pairs of rest effects sharing a first-block level: their number bounds the work
        cnt = np.diff(A.indptr).astype(np.int64)
        if int((cnt * cnt).sum()) > SPARSE_MAX_PAIRS:
            return
        # rest effects x first-block levels (the q1 columns of a level are coupled by M1^-1)
        level = np.repeat(np.arange(A.shape[1]) // self.q1, cnt)
        Ab = sparse.csr_matrix((np.ones(A.nnz), (A.indices, level)), shape=(rz, self.m1))
        # a sample of the pattern's rows first: where it is clearly too dense for the sparse path
        # (InstEval's lecturers: ~50 %) the whole product (~25 ms there) is not formed
        rows = np.unique(np.linspace(0, rz - 1, min(rz, DENSITY_SAMPLE)).astype(np.int64))
        if (Ab[rows] @ Ab.T).nnz > 2.0 * MAX_DENSITY * rows.size * rz:
            return
        Arr = self.A_rr
        rr_sparse = sparse.issparse(Arr)
        # (a scan of the dense r x r array costs ~10 ms at STAR's 1,467 rows)
        i, j = Arr[:rz, :rz].nonzero() if rr_sparse else np.nonzero(Arr[:rz, :rz])
        G = (Ab @ Ab.T + sparse.csr_matrix((np.ones(i.size), (i, j)), shape=(rz, rz))).tocsr()
        G.sort_indices()
        plan = SupernodalPlan.for_pattern(G.indptr, G.indices, rz, self.r)
        if plan is None:
            return
        full = np.concatenate([plan.perm, np.arange(rz, self.r)])
        self.A_r1 = self.A_r1[full]
        if rr_sparse:
            self.A_rr = self._rr_sparse = Arr[full][:, full].tocsr()
        else:
            self.A_rr = np.take(np.take(Arr, full, axis=0), full, axis=1)
        self._sn, self._rperm = plan, plan.perm
        self._rpos = np.empty(rz, dtype=np.int64)
        self._rpos[plan.perm] = np.arange(rz)

    def _set_sparse_rest(self):
        self._rest = None
        if self._sn is None:
            return False
        rest = SparseRest(self._sn, self.A_r1, self.A_rr, self.m1, self.q1,
                          refreshable=self._refreshable_schur)
        if not rest.ok:            # too many pairs to hold: the general product, r x r arrays
            return False
        self._rest, self._schur = rest, rest.schur
        return True

    def set_cross_products(self, A11, A_r1, A_rr):
        super().set_cross_products(A11, A_r1, A_rr)
        self._A_zr = None if self._rr_sparse is None else self._rr_sparse[:self.rz].tocsr()
        if self._sn is not None:
            self._Xsel, self._Lv = np.zeros(self._sn.size), np.zeros(self._sn.size)
        return self

    def refresh_cross_products(self, A11, A_r1, A_rr):
        """:meth:`set_cross_products` for new values: when ``A_r1`` and ``A_rr`` have the
        nonzeros of the last call's, the remainder's order, the Schur product's pairs and the
        compact positions are kept and only refilled (the structure is worked out again
        otherwise).  The path of the cross-products summed at every PIRLS iteration of a
        Dask GLMM, whose pattern does not change between iterations."""
        A_r1 = sparse.csr_matrix(A_r1)
        A_rr = A_rr.toarray() if sparse.issparse(A_rr) else np.asarray(A_rr, dtype=float)
        last = self.__dict__.get("_last_structure")
        if last is None or not (A_r1.shape == last[0].shape
                                and np.array_equal(A_r1.indptr, last[0].indptr)
                                and np.array_equal(A_r1.indices, last[0].indices)
                                and np.array_equal(A_rr != 0, last[1])):
            self._refreshable_schur = True
            self.set_cross_products(A11, A_r1, A_rr)
            self._last_structure = (A_r1, A_rr != 0)
            return self
        if A11.shape != (self.m1, self.q1, self.q1):
            raise ValueError("the cross-products do not match the factor's blocks")
        if self._sn is not None:                   # the remainder's order, as _order_rest
            full = np.concatenate([self._rperm, np.arange(self.rz, self.r)])
            A_r1 = A_r1[full]
            A_rr = np.take(np.take(A_rr, full, axis=0), full, axis=1)
        self.A11, self.A_r1, self.A_rr = A11, A_r1, A_rr
        self._A_zr = self._rr_sparse = None            # (their rows are read from A_rr now)
        self.A_1r = A_r1.T.tocsr()
        if self._rest is not None:
            self._rest.refresh(A_r1, A_rr)
        else:
            self._schur.refresh(A_r1)
        self._set_operators()
        self._a1y = A_r1[self.r - 1].toarray().ravel()
        return self

    def _block_bounds(self, lr):
        """Bounds of the remainder's blocks (its random-effects blocks, then X and y) when
        ``lr`` is constant on each (scalar blocks in their natural order), else None: the
        scalings by ``lr`` then go block by block over the lower triangle, one pass."""
        if self._rpos is not None or not isinstance(lr, np.ndarray) or self._schur.P is None:
            return None
        return np.concatenate([[0], np.cumsum(self.rest_sizes, dtype=np.int64), [self.r]])

    def _schur_complement(self, B, lr):
        if self._rest is not None:                 # into the sparse path's storage
            return self._rest.assemble(self._Lv, B, lr)
        bounds = self._block_bounds(lr)
        if bounds is None:
            return super()._schur_complement(B, lr)
        # the lower triangle only: P holds positions i >= j, and potrf reads no other (the
        # upper one keeps finite leftovers: set_cross_products' scratch is zeroed; reweight's
        # is not, and its A_rr is written whole from its parts)
        S = self._rr_into(self._S) if self._rr_parts is not None or self._A_rr is None \
            else _copy_lower(self._S, self._A_rr)
        self._schur.subtract_from(S, B)
        _scale_lower_blocks(S, bounds, lr)
        return S

    def _factor_rest(self, S):
        if self._sn is None:
            return super()._factor_rest(S)
        sn, L = self._sn, self._Lv
        if S is not L:               # a full r x r Schur complement (no compact product)
            flat, src = sn.dense_map()
            L.fill(0.0)
            L[src] = S.reshape(-1)[flat]
        L[sn.diag[:self.rz]] += 1.0
        self._sn_inv = self._Lr_dense = None
        inv = []                     # the diagonal blocks' inverses, for the selected inverse
        sn.factor(L, inv)
        self._sn_inv = inv

    # the objective's pieces read off the sparse path's storage (its tail block: X and y)
    @property
    def diag_rest(self):
        return np.diagonal(self.Lr) if self._sn is None else self._Lv[self._sn.diag]

    def _tail(self):
        return self.Lr[self.rz:, self.rz:] if self._sn is None else self._sn.tail(self._Lv)

    @property
    def logdet_xx(self):
        return 2.0 * np.log(np.diagonal(self._tail())[:self.p]).sum()

    @property
    def r2(self):
        return self._tail()[-1, -1] ** 2

    def cov_beta_unscaled(self):
        """``(X' V^-1 X)^-1 / sigma^2``: the inverse of ``L_XX L_XX'``."""
        Lxx = self._tail()[:self.p, :self.p]
        Li = linalg.solve_triangular(Lxx, np.eye(self.p), lower=True, check_finite=False)
        return Li.T @ Li

    def _rest_index(self, idx):
        """Positions in ``Lr`` of the remainder's random effects ``idx`` (natural order)."""
        return idx if self._rpos is None else self._rpos[idx]

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        self._inverse_kept = None                      # (it was for the last theta)
        self._factor_rest(self._eliminate_first(lams))
        self.lams = lams
        return self

    @property
    def logdet_zz(self):
        """log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)."""
        return self.logdet1 + 2.0 * np.log(self.diag_rest[:self.rz]).sum()

    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""
        r = self.r
        if self._sn is not None:                       # back substitution on the pattern
            sn, L = self._sn, self._Lv
            last = sn.__dict__.get("_last_row")
            if last is None:                           # (racing threads compute the same)
                last = sn._last_row = sn.positions(np.full(r - 1, r - 1), np.arange(r - 1))
            v_rest = sn.solve_t(L, L[last], self._sn_inv)
        else:
            v_rest = solve_last_row_t(self.Lr)
        full = np.zeros(r)
        full[:r - 1] = v_rest
        t = self._apply_lam_rest(full)                 # Lambda_r v (y entry 0)
        rhs = self._apply_lam1T(self._a1y - self._a1r @ t)
        u1 = self._solve_M1(rhs)
        u = np.concatenate([u1, v_rest[:self.rz][self._rest_index(np.arange(self.rz))]])
        beta = v_rest[self.rz:]
        return u, beta

    def condvar_u(self):
        """Diagonal blocks of (L_ZZ L_ZZ')^-1, per block as (m, q, q) arrays.

        This is lme4's conditional variance of the spherical random effects
        given beta, before scaling by sigma^2 and Lambda.
        """
        rz = self.rz
        out = []
        # first block: M1^-1 + E'E with E = Lzz^-1 Lambda_rz' A_rz,1 Lambda_1 M1^-1
        if rz:
            Lzz = self.Lr[:rz, :rz]
            Linv = linalg.solve_triangular(Lzz, np.eye(rz), lower=True, check_finite=False)
        if self.q1 == 1:
            base = (1.0 / self.M1)[:, None, None]
        else:
            base = np.linalg.inv(self.M1)
        if rz:
            lr = self.lam_rest
            if isinstance(lr, np.ndarray):
                K = Linv * lr[:rz][None, :]
            else:
                K = np.asarray((lr[:rz, :rz] @ Linv.T).T)
            # (m1 q1) x rz, then right-multiply by K' -> rows = columns of A_1,rz Lambda_rz Lzz^-T
            F = np.asarray(self.A_1r[:, :rz] @ K.T)     # (m1 q1) x rz
            F = F.reshape(self.m1, self.q1, rz)
            F = np.einsum("ji,gjr->gir", self.lam1, F)   # Lambda_1' applied per level
            if self.q1 == 1:
                E = F / self.M1[:, None, None]
            else:
                E = np.linalg.solve(self.M1, F)
            base = base + np.einsum("gir,gjr->gij", E, E)
        out.append(base)
        if rz:
            off = 0
            P = Linv
            for b in self.blocks[1:]:
                cols = P[:, self._rest_index(np.arange(off, off + b.nre))].reshape(rz, b.m, b.q)
                out.append(np.einsum("rgi,rgj->gij", cols, cols))
                off += b.nre
        return out

    # -- pieces of the gradient of the profiled objective ---------------------------
    def inverse_block_sums(self, k):
        """Sum over levels of the diagonal blocks of Omega_P^-1, one (q, q) array per block.

        Omega_P is the leading principal submatrix of the scaled system that
        holds all random effects and the first ``k`` fixed effects (k = 0 for
        the ML objective, k = p for REML).  With ``m I - S`` these give the
        derivative of log det Omega_P (see :meth:`mlmext.lmm.LinearMixedModel.deviance_and_gradient`).
        """
        rz, r = self.rz, self.r
        kk = rz + k
        out = []
        if self._sn is not None:
            # the entries on the factor's pattern: all that is read below
            X = self._sn.selected_inverse(self._Lv, kk, self._Xsel, self._sn_inv)
            if self._rest is None:                    # (no compact product: the r x r array)
                X = self._sn.dense(X)
        else:
            # inverse of the leading kk x kk block, embedded in an r x r array (zero elsewhere):
            # factor diag(L_P, I) -> potri gives diag(Omega_P^-1, I) in place (lower triangle);
            # with inverse_in_place in the factor's own scratch array (then no factor is left:
            # Lr is None until the next update)
            X = self.Lr
            if self.inverse_in_place and np.shares_memory(X, self._S):
                self.Lr = self._inv = None
            else:
                X = X.copy()
            X[kk:, :] = 0.0
            X[np.arange(kk, r), np.arange(kk, r)] = 1.0
            if kk:
                with inverse_threads(kk):
                    info = potri_upper(X.T)
                if info:
                    raise np.linalg.LinAlgError("singular factor in gradient")
            X[np.arange(kk, r), np.arange(kk, r)] = 0.0
        diagX = X[self._sn.diag] if X.ndim == 1 else np.diagonal(X).copy()
        blocks_rest = []
        off = 0
        for b in self.blocks[1:]:
            if b.q == 1:
                blocks_rest.append(diagX[self._rest_index(np.arange(off, off + b.m))].sum().reshape(1, 1))
            else:
                idx = self._rest_index(off + np.arange(b.m)[:, None] * b.q + np.arange(b.q)[None, :])
                low = np.tril(X[idx[:, :, None], idx[:, None, :]]).sum(axis=0)
                blocks_rest.append(low + np.tril(low, -1).T)
            off += b.nre
        lr = self.lam_rest
        if self._rest is not None:                    # the same sums on the storage's pattern
            V = self._rest.pair_sums(X, lr, kk)
        elif isinstance(lr, np.ndarray) and self._schur.P is not None:
            # only the lower triangle is read: K = Lambda_r X Lambda_r', off-diagonal doubled
            K = X
            bounds = self._block_bounds(lr)
            if bounds is None:
                K *= (2.0 * lr)[:, None]
                K *= lr[None, :]
            else:
                _scale_lower_blocks(K, bounds, lr, 2.0)
            K[np.diag_indices(r)] *= 0.5
            V = self._schur.pair_sums(K)
            self._inverse_kept = (K, lr, kk)         # (a fresh array: the Hessian's sums read it)
        else:
            # symmetric from the lower triangle (the upper one holds leftovers): one pass, no sums
            X = np.where(np.tri(r, dtype=bool), X, X.T)
            if isinstance(lr, np.ndarray):
                K = X * lr[:, None] * lr[None, :]
            else:
                K = np.asarray(lr @ np.asarray(lr @ X).T)         # Lambda_r X Lambda_r' (X symmetric)
            V = self._schur.trace_weights(K)
        # sum_g C_g' Vs_g C_g with C_g = Lambda_1 M1_g^-1: M1_g^-1 (Lambda_1' Vs_g Lambda_1) M1_g^-1
        Vs = 0.5 * (V + np.swapaxes(V, 1, 2))
        Mi, q, m = self.M1inv, self.q1, self.m1
        if q == 1:
            quad = (Vs * (self.lam1[0, 0] * Mi) ** 2).sum(axis=0)
        else:                        # sum over g as one product (M1_g^-1 is symmetric)
            X = sandwich(Vs, self.lam1, self.lam1) @ Mi
            quad = Mi.reshape(m * q, q).T @ X.reshape(m * q, q)
        out.append(Mi.sum(axis=0) + quad)
        out.extend(blocks_rest)
        return out

    def with_response(self, XY, weights=None):
        """This factor's cross-products for a new response (``XY``: the design's ``[X y]``
        with the new ``y``; the same weights): only the response's products are formed
        (:func:`~mlmext.linalg._response.factor_with_response`), or None where the storage
        needs a full :meth:`set_data` (the sparse remainder)."""
        return factor_with_response(self, XY, weights)

    def rest_inverse_squares(self, k):
        """Per pair of the remainder's (scalar) random-effects blocks, the sums of squares of
        the entries of ``X = Omega_P^-1`` (its remainder part) over their rows x columns, and
        per block the trace of ``X``: what the exact Hessian in the remainder's theta needs
        (:mod:`mlmext.objective.rest_hessian`), from the inverse the last
        :meth:`inverse_block_sums` formed (``k`` as there).  ``(F, tr)``, or None where that
        inverse is not kept (the sparse remainder, a non-diagonal Lambda) or was for another
        ``k``.  Valid for the factor's current theta only when the caller's last gradient
        was computed there."""
        kept = self._inverse_kept
        if kept is None or kept[2] != self.rz + k or self._rpos is not None:
            return None
        K, lr, _ = kept                      # lower triangle: 2 lr_i lr_j X_ij, diagonal lr_i^2 X_ii
        bounds = np.concatenate([[0], np.cumsum(self.rest_sizes, dtype=np.int64)])
        nb = bounds.size - 1
        F = np.zeros((nb, nb))
        tr = np.zeros(nb)
        for b in range(nb):
            rb = slice(bounds[b], bounds[b + 1])
            lb = lr[bounds[b]]
            if lb == 0.0:
                return None
            Kbb = K[rb, rb]
            d = np.diagonal(Kbb) / lb ** 2
            tr[b] = d.sum()
            F[b, b] = 2.0 * _strict_lower_sumsq(Kbb) / (4.0 * lb ** 4) + float(d @ d)
            for c in range(b):
                lc = lr[bounds[c]]
                blk = K[rb, bounds[c]:bounds[c + 1]]
                F[b, c] = F[c, b] = float(np.vdot(blk, blk)) / (4.0 * lb ** 2 * lc ** 2)
        return F, tr

    def ztres(self, u, beta, lams):
        """Z' W (y - X beta - Z Lambda u) per block, as (m, q) arrays (no n-sized work)."""
        m1, q1 = self.m1, self.q1
        b1 = (u[:m1 * q1].reshape(m1, q1) @ lams[0].T)
        u_rest = np.asarray(u[m1 * q1:], dtype=float)
        if self._rpos is not None:
            u_rest = u_rest[self._rperm]
        b_rest = self._apply_lam_rest(np.concatenate([u_rest, np.zeros(self.p + 1)]))[:self.rz]
        c_r = np.concatenate([-b_rest, -np.asarray(beta, dtype=float), [1.0]])
        w1 = -np.einsum("gij,gj->gi", self.A11, b1).ravel() + self._a1r @ c_r
        # all rows, then the first rz: a row slice of a sparse matrix costs more than p + 1 rows
        # (the sparse remainder's rows from A_rr's sparse form: a dense r x r product costs more
        # than the rest of this)
        Azr = self._A_zr if self._sn is not None and self._A_zr is not None else self.A_rr[:self.rz]
        wr = -(self._ar1 @ b1.ravel())[:self.rz] + Azr @ c_r
        out = [w1.reshape(m1, q1)]
        wr = wr[self._rest_index(np.arange(self.rz))]
        off = 0
        for b in self.blocks[1:]:
            out.append(wr[off:off + b.nre].reshape(b.m, b.q))
            off += b.nre
        return out


def _strict_lower_sumsq(K, rows=256):
    """Sum of squares of the strict lower triangle of the square ``K`` (its upper triangle may
    hold anything), by bands of rows: no r x r temporary."""
    n = K.shape[0]
    total = 0.0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        band = np.tril(K[r0:r1, :r1], r0 - 1)           # row i keeps columns j < i
        total += float(np.vdot(band, band))
    return total


def _scale_lower_blocks(S, bounds, lr, factor=1.0):
    """``S_ij *= factor lr_i lr_j`` on the lower triangle (and on parts of the upper triangles
    of the diagonal blocks), for ``lr`` constant between consecutive ``bounds``: one pass over
    the blocks instead of two over the whole array, a diagonal block by bands of rows."""
    vals = lr[bounds[:-1]]
    for b in range(bounds.size - 1):
        b0, b1 = bounds[b], bounds[b + 1]
        for c in range(b):
            f = factor * vals[b] * vals[c]
            if f != 1.0:
                S[b0:b1, bounds[c]:bounds[c + 1]] *= f
        f = factor * vals[b] * vals[b]
        if f != 1.0:
            for r0, r1 in _bands(b0, b1):
                S[r0:r1, b0:r1] *= f


def _bands(start, stop, step=LOWER_BAND):
    """``(r0, r1)``: rows ``start:stop`` in bands of ``step``."""
    return ((r0, min(r0 + step, stop)) for r0 in range(start, stop, step))


def _copy_lower(dst, src):
    """``src``'s lower triangle into ``dst`` (square), by bands of rows (with the band's part
    above the diagonal): half the memory traffic of a whole copy; the rest of ``dst`` is left
    as it was."""
    for r0, r1 in _bands(0, src.shape[0]):
        dst[r0:r1, :r1] = src[r0:r1, :r1]
    return dst
