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
remainder is factored and inverted on its pattern only (:mod:`~mlmext.linalg._supernodal`).
``Lr`` then holds the factor in that order; ``_rpos[i]`` is the position of random effect i of
the remainder, and every method that reads or returns per-block values maps through it.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from .._blas import inverse_threads
from ._lead import LeadBlockFactor
from ._local import LocalInverse, coupling_on_pattern, pattern_keys
from ._stacks import blockdiag_sparse, sandwich, solve_last_row_t
from ._supernodal import MAX_DENSITY, MIN_RZ, SupernodalPlan

__all__ = ["DenseFactor"]

#: entries of the dense coupling K (first-block effects x rest effects) above which the
#: GLMM gradient holds it compact (only where rows read it): 32 MB
COMPACT_ABOVE = 4_000_000

#: the sparse remainder's pattern is looked for when the pairs of remainder effects sharing a
#: first-block level number at most this (their sparse product costs ~0.1 s at 8e6)
SPARSE_MAX_PAIRS = 8_000_000
#: rows of the pattern sampled to reject a remainder far denser than the sparse path allows
DENSITY_SAMPLE = 64


class DenseFactor(LeadBlockFactor):
    """Blocked Cholesky factor with the first block block-diagonal and the rest dense.

    ``DenseFactor(blocks, XY, weights=None, reweighting=False)``; see
    :class:`~mlmext.linalg._lead.LeadBlockFactor` for the parameters and
    :class:`~mlmext.linalg.base.Factor` for the interface.
    """

    def __init__(self, blocks, XY, weights=None, reweighting=False):
        super().__init__(blocks, XY, weights, reweighting, depth=1)

    #: reorder a sparse remainder and factor it on its pattern (the tests set it to False to
    #: check the sparse path against the dense one)
    sparse_rest = True
    _compact = _A_zr = _rr_sparse = _Xsel = _sn_inv = None
    #: written in place per evaluation: the Schur complement and the sparse path's selected inverse
    _scratch = ("_S", "_Xsel")

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

    def set_cross_products(self, A11, A_r1, A_rr):
        super().set_cross_products(A11, A_r1, A_rr)
        self._compact = None
        self._A_zr = None if self._rr_sparse is None else self._rr_sparse[:self.rz].tocsr()
        self._Xsel = None if self._sn is None else np.zeros((self.r, self.r))
        if self._sn is not None and self._schur.P is not None:
            # the Schur complement and the gradient's sums on the pattern's positions alone:
            # the Schur product's pairs, A_rr's nonzeros (lower triangle) and the diagonal
            r, A, P = self.r, self.A_rr, self._schur.P
            if self._rr_sparse is not None:             # A_rr's pattern from its sparse form
                sp = self._rr_sparse.tocoo()
                low = sp.row >= sp.col
                on = np.zeros(r * r, dtype=bool)
                on[sp.row[low].astype(np.int64) * r + sp.col[low]] = True
            else:
                on = np.tril(A != 0).ravel()
            on[P.indices] = True
            on[np.arange(self.rz) * (r + 1)] = True
            pat = np.flatnonzero(on)
            # read only at P's positions, all in pat: no need to zero the rest
            where = np.empty(r * r, dtype=np.int32 if pat.size < 2**31 else np.int64)
            where[pat] = np.arange(pat.size)
            pi, pj = np.divmod(pat, r)
            self._compact = dict(pat=pat, pi=pi, pj=pj, a=A.ravel()[pat],
                                 schur=self._schur.compact(pat, where[P.indices]),
                                 twice=np.where(pi == pj, 1.0, 2.0), stored=self._sn.stored_positions())
        return self

    def _block_bounds(self, lr):
        """Bounds of the remainder's blocks (its random-effects blocks, then X and y) when
        ``lr`` is constant on each (scalar blocks in their natural order), else None: the
        scalings by ``lr`` then go block by block over the lower triangle, one pass."""
        if self._rpos is not None or not isinstance(lr, np.ndarray) or self._schur.P is None:
            return None
        return np.concatenate([[0], np.cumsum(self.rest_sizes, dtype=np.int64), [self.r]])

    def _schur_complement(self, B, lr):
        c = self._compact
        if c is None:
            bounds = self._block_bounds(lr)
            if bounds is None:
                return super()._schur_complement(B, lr)
            S = self._S                    # the lower triangle only: P holds positions i >= j
            np.copyto(S, self.A_rr)
            self._schur.subtract_from(S, B)
            _scale_lower_blocks(S, bounds, lr)
            return S
        vals = c["a"].copy()
        c["schur"].subtract_from(vals, B)
        vals *= lr[c["pi"]] * lr[c["pj"]]
        S = self._S                        # zero off the pattern: reset what the last factor wrote
        S.ravel()[c["stored"]] = 0.0
        S.ravel()[c["pat"]] = vals
        return S

    def _factor_rest(self, S):
        if self._sn is None:
            return super()._factor_rest(S)
        idx = np.arange(self.rz)
        S[idx, idx] += 1.0
        inv = []                     # the diagonal blocks' inverses, for the selected inverse
        self.Lr = self._sn.factor(S, inverses=inv)
        self._sn_inv = inv

    def _rest_index(self, idx):
        """Positions in ``Lr`` of the remainder's random effects ``idx`` (natural order)."""
        return idx if self._rpos is None else self._rpos[idx]

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
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
            v_rest = self._sn.solve_t(self.Lr, self.Lr[r - 1, :r - 1], inverses=self._sn_inv)
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
            X = self._sn.selected_inverse(self.Lr, kk, out=self._Xsel, inverses=self._sn_inv)
        else:
            # inverse of the leading kk x kk block, embedded in an r x r array (zero elsewhere):
            # factor diag(L_P, I) -> potri gives diag(Omega_P^-1, I) in place (lower triangle)
            X = self.Lr.copy()
            X[kk:, :] = 0.0
            X[np.arange(kk, r), np.arange(kk, r)] = 1.0
            if kk:
                with inverse_threads(kk):
                    _, info = linalg.lapack.dpotri(X.T, lower=0, overwrite_c=1)
                if info:
                    raise np.linalg.LinAlgError("singular factor in gradient")
            X[np.arange(kk, r), np.arange(kk, r)] = 0.0
        diagX = np.diagonal(X).copy()
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
        if self._compact is not None:                 # the same sums on the pattern's positions
            c = self._compact
            V = c["schur"].pair_sums(X.ravel()[c["pat"]] * (lr[c["pi"]] * lr[c["pj"]] * c["twice"]))
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

    # -- pieces of the inverse for GLMM gradients (at the current factor) -----------------
    def solve_re(self, v):
        """Solve ``(Lambda' Z' W Z Lambda + I) x = v`` for the random effects.

        ``v`` and ``x`` hold all random effects in block order (as ``u`` from
        :meth:`solve`); the fixed-effects columns play no part.
        """
        v = np.asarray(v, dtype=float)
        m1q1, rz = self.m1 * self.q1, self.rz
        v1 = v[:m1q1]
        y1 = self._solve_M1(v1)
        if rz == 0:
            return y1
        full = np.zeros(self.r)
        t = self._ar1 @ self._apply_lam1(y1)
        full[:rz] = t[:rz]
        vr = v[m1q1:] if self._rpos is None else v[m1q1:][self._rperm]
        rhs = vr - self._lam_rest_T(full)[:rz]
        Lzz = self.Lr[:rz, :rz]
        xr = linalg.cho_solve((Lzz, True), rhs, check_finite=False)
        full[:] = 0.0
        full[:rz] = xr
        x1 = self._solve_M1(v1 - self._apply_lam1T(self._a1r @ self._apply_lam_rest(full)))
        return np.concatenate([x1, xr[self._rest_index(np.arange(rz))]])

    def _a1z_index(self):
        """Entries of ``A_1r`` in the random-effects columns of the rest: (positions, cols, indptr, rows)."""
        A = self.A_1r
        cache = getattr(self, "_a1z_cache", None)
        if cache is None or cache[0] is not A.indices or cache[1] != A.nnz:
            keep = np.flatnonzero(A.indices < self.rz)
            rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))[keep]
            indptr = np.searchsorted(rows, np.arange(A.shape[0] + 1))
            # the last item: what the compact local inverse derives from the structure
            cache = (A.indices, A.nnz, keep, A.indices[keep], indptr, rows, {})
            self._a1z_cache = cache
        return cache[2:6]

    def local_inverse(self):
        """Row-wise pieces of ``M^-1``, ``M = Lambda' Z' W Z Lambda + I``, at the current factor.

        For row i let ``t_i = Lambda' z_i`` (nonzero only at the row's own level
        of each block) and ``rho_i = M^-1 t_i`` restricted to those positions.

        Returns
        -------
        t, rho : list of ndarray
            One (n, q_b) array per block.  ``sum_b (t_b * rho_b).sum(1)`` is the
            leverage ``z_i' Lambda M^-1 Lambda' z_i``.  Cost: the dense inverse
            of the rest of the factor, the coupling ``K`` of the first block with the rest
            where the rows read it (``sum_g k_g^2`` products for ``k_g`` rest effects of
            level g) and O(n k^2) gathers for k random effects per row outside the first
            block; nothing of size n^2 or (first-block levels x rest effects).
        """
        # compact only where the dense coupling would be large: on small designs whose rows
        # read most of it (VerbAgg: every person answers every item) the dense product is
        # several times faster than the per-level products
        return self.local_inverse_parts(
            compact=self.m1 * self.q1 * self.rz > COMPACT_ABOVE).rows(self.blocks)

    def local_inverse_parts(self, compact=False):
        """What :meth:`local_inverse` needs of the factor, apart from the rows: a
        :class:`~mlmext.linalg._local.LocalInverse` whose ``rows(blocks)`` gives the row-wise
        pieces of any rows with these blocks' levels (a chunk of the data on a worker).

        ``compact``: hold the coupling ``K`` of the first block with the rest only where rows
        of the data read it (:func:`~mlmext.linalg._local.coupling_on_pattern`); else dense
        (first-block levels x rest effects: 1.2 GB for 50,000 users x 3,000 items)."""
        q1, m1, rz = self.q1, self.m1, self.rz
        lams = self.lams
        Minv = self.M1inv if self.q1 > 1 else (1.0 / self.M1)[:, None, None]
        rpos = self._rpos
        if rz == 0:
            return LocalInverse(lams, "one", Minv=Minv, rpos=rpos)
        Ginv, info = linalg.lapack.dpotri(self.Lr[:rz, :rz], lower=1)
        if info:
            raise np.linalg.LinAlgError("singular factor in local_inverse")
        G = _symmetrize_lower(Ginv)                         # S^-1 (rest random effects)
        lr = self.lam_rest
        keep, cols, indptr, rows = self._a1z_index()
        if compact:                     # the pattern and C's positions in it: once per structure
            cache = self._a1z_cache[-1]
            if "keys" not in cache:
                cache["keys"] = pattern_keys(*self._local_pattern(rows, cols), rz)
            keys = cache["keys"]
        if q1 == 1 and isinstance(lr, np.ndarray):        # scalar blocks: work on the arrays
            A = self.A_1r
            cdata = A.data[keep] * (lams[0][0, 0] * Minv[rows, 0, 0]) * lr[cols]
            if compact:
                Kp = coupling_on_pattern(indptr, cols, cdata, G, 1, keys)[:, 0]
                if "c_index" not in cache:
                    cache["c_index"] = _key_index(keys, rows, cols, rz)
                J = np.bincount(rows, weights=cdata * Kp[cache["c_index"]], minlength=m1)
                return LocalInverse(lams, "scalar", base=Minv[:, 0, 0] + J, G=G, rpos=rpos,
                                    keys=keys, Kp=Kp, cache=cache)
            if m1 * rz <= 4_000_000:
                Cd = np.zeros((m1, rz))
                Cd[rows, cols] = cdata
                K = Cd @ G
            else:
                K = np.asarray(sparse.csr_matrix((cdata, cols, indptr), shape=(m1, rz)) @ G)
            J = np.bincount(rows, weights=cdata * K[rows, cols], minlength=m1)
            return LocalInverse(lams, "scalar", base=Minv[:, 0, 0] + J, K=K, G=G, rpos=rpos)
        A1z = sparse.csr_matrix((self.A_1r.data[keep], cols, indptr), shape=(m1 * q1, rz))
        if isinstance(lr, np.ndarray):
            A1z = A1z @ sparse.diags(lr[:rz])
        else:
            A1z = A1z @ lr[:rz, :rz]
        A1z = sparse.csr_matrix(A1z)
        # C = M11^-1 Lambda_1' A_1z Lambda_z (sparse, level blocks of rows)
        C = blockdiag_sparse(np.einsum("gab,cb->gac", Minv, lams[0])) @ A1z
        C = sparse.csr_matrix(C)
        if compact:
            Kp = coupling_on_pattern(C.indptr, C.indices, C.data, G, q1, keys)
            crow = np.repeat(np.arange(m1 * q1), np.diff(C.indptr))
            # J[g, a, b] = sum_r K[g q1 + a, r] C[g q1 + b, r], over C's nonzeros
            KC = Kp[_key_index(keys, crow // q1, C.indices, rz)] * C.data[:, None]
            J = np.stack([np.bincount(crow, weights=KC[:, a], minlength=m1 * q1).reshape(m1, q1)
                          for a in range(q1)], axis=1)
            return LocalInverse(lams, "general", Minv=Minv + J, G=G, rpos=rpos, keys=keys, Kp=Kp,
                                cache=cache)
        K = np.asarray(C @ G)                              # (m1 q1) x rz, dense
        Cd = C.toarray().reshape(m1, q1, rz)
        K3 = K.reshape(m1, q1, rz)
        J = np.einsum("gar,gbr->gab", K3, Cd)
        return LocalInverse(lams, "general", Minv=Minv + J, K=K3, G=G, rpos=rpos)

    def _local_pattern(self, rows, cols):
        """(first-block level, rest position) of the nonzeros of ``A_1r``'s rest columns, with
        every effect of a vector block's level (a zero column leaves a gap in the pattern)."""
        lvl = rows // self.q1
        if all(b.q == 1 for b in self._rest_blocks):
            return lvl, cols
        # vector blocks in the rest: natural order (only scalar rests are reordered)
        start, q, off = [], [], 0
        for b in self._rest_blocks:
            start.append(off + np.repeat(np.arange(b.m) * b.q, b.q))
            q.append(np.full(b.nre, b.q))
            off += b.nre
        s0, qq = np.concatenate(start)[cols], np.concatenate(q)[cols]
        rep = np.repeat(np.arange(cols.size), qq)
        within = np.arange(rep.size) - np.repeat(np.cumsum(qq) - qq, qq)
        return lvl[rep], s0[rep] + within


def _scale_lower_blocks(S, bounds, lr, factor=1.0):
    """``S_ij *= factor lr_i lr_j`` on the lower triangle (and on the upper triangles of the
    diagonal blocks), for ``lr`` constant between consecutive ``bounds``: one pass over the
    blocks instead of two over the whole array."""
    vals = lr[bounds[:-1]]
    for b in range(bounds.size - 1):
        rows = slice(bounds[b], bounds[b + 1])
        for c in range(b + 1):
            f = factor * vals[b] * vals[c]
            if f != 1.0:
                S[rows, bounds[c]:bounds[c + 1]] *= f


def _symmetrize_lower(A, step=512):
    """``A`` (its lower triangle, as dpotri leaves it) made symmetric in place, by blocks of
    columns (``np.tril(A) + np.tril(A, -1).T`` makes three n x n temporaries and costs as
    much as dpotri itself for n = 3000)."""
    n = A.shape[0]
    for s in range(0, n, step):
        e = min(s + step, n)
        blk = A[s:e, s:e]
        blk[np.triu_indices(e - s, 1)] = blk.T[np.triu_indices(e - s, 1)]
        A[s:e, e:] = A[e:, s:e].T
    return A


def _key_index(keys, lvl, pos, rz):
    """Positions in ``keys`` of ``lvl * rz + pos`` (all must be there: C's nonzeros lie in the
    pattern)."""
    key = np.asarray(lvl, dtype=np.int64) * rz + pos
    idx = np.searchsorted(keys, key)
    if key.size and (idx.max() >= keys.size or not np.array_equal(keys[idx], key)):
        raise RuntimeError("a nonzero of the coupling lies outside the rows' pattern")
    return idx
