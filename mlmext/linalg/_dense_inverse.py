"""The GLMM gradient's pieces of the inverse, for :class:`~mlmext.linalg.dense.DenseFactor`.

The exact Laplace gradient of a GLMM needs solves with the random-effects part of the factor
and the inverse's entries where the rows' random effects meet (:meth:`local_inverse`); the
LMM's objective needs none of it.  A mixin, so the storage keeps one class.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import linalg, sparse

from .._blas import inverse_threads
from .._malloc import trim_heap
from ._local import LocalInverse, coupling_on_pattern, pattern_keys
from ._potri import potri_upper
from ._stacks import blockdiag_sparse, small_index

__all__ = ["ReInverseMixin", "symmetrize_lower"]

#: entries of the dense coupling K (first-block effects x rest effects) above which the
#: GLMM gradient holds it compact (only where rows read it): 32 MB
COMPACT_ABOVE = 4_000_000


class ReInverseMixin:
    """Solves with the random-effects part of a :class:`DenseFactor` and the inverse's
    entries the GLMM gradient reads."""

    #: ``(S^-1, diagonal of the factor)`` once the factor was inverted in place (``Lr`` None)
    _inv = None
    #: let :meth:`local_inverse` invert the factor in its own scratch array instead of a copy:
    #: until the next :meth:`update` only :meth:`solve_re`, ``logdet_zz`` and the inverse's
    #: pieces are then available (what a GLMM's gradient and the next PIRLS start need;
    #: :class:`~mlmext.glmm.deviance.LaplaceDeviance` sets it on its own factor)
    inverse_in_place = False

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
        full[:rz] = vr - self._lam_rest_T(full)[:rz]
        full[rz:] = 0.0
        xr = self._solve_zz(full)[:rz]
        full[:] = 0.0
        full[:rz] = xr
        x1 = self._solve_M1(v1 - self._apply_lam1T(self._a1r @ self._apply_lam_rest(full)))
        return np.concatenate([x1, xr[self._rest_index(np.arange(rz))]])

    def _solve_zz(self, v):
        """``(L_zz L_zz')^-1 v[:rz]`` in the first rz entries of an r-vector ``v`` whose other
        entries are 0 (overwritten).  Through the whole factor, so LAPACK reads ``Lr`` in
        place (the leading block is a strided view that it would copy: 72 MB and 0.2 s
        for 3,000 items): the forward step's first rz entries only involve L_zz; with the
        rest set to 0 the backward step leaves them 0 and gives L_zz^-T on the first rz."""
        if self.Lr is None:                # the factor was inverted in place: S^-1 itself
            y = np.zeros_like(v)
            y[:self.rz] = self._inv[0] @ v[:self.rz]
            return y
        U = self.Lr.T                      # Fortran-ordered upper: LAPACK takes it as it is
        y, info = linalg.lapack.dtrtrs(U, v, lower=0, trans=1)
        if info == 0:
            y[self.rz:] = 0.0
            y, info = linalg.lapack.dtrtrs(U, y, lower=0, trans=0, overwrite_b=1)
        if info:
            raise np.linalg.LinAlgError("singular factor in solve_re")
        return y

    def _a1z_index(self):
        """Entries of ``A_1r`` in the random-effects columns of the rest: (positions, cols, indptr, rows)."""
        A = self.A_1r
        cache = getattr(self, "_a1z_cache", None)
        # keyed on the pattern's content, not its identity: the Dask GLMM rebuilds an equal
        # pattern at every iteration, and an O(nnz) comparison is far cheaper than the keys
        if cache is None or not (cache[0] is A.indices and cache[1] is A.indptr) and not (
                cache[0].shape == A.indices.shape and cache[1].shape == A.indptr.shape
                and np.array_equal(cache[1], A.indptr) and np.array_equal(cache[0], A.indices)):
            # kept across evaluations: 32-bit where they fit (7 MB less at 1M rows)
            keep = small_index(np.flatnonzero(A.indices < self.rz))
            rows = small_index(np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))[keep])
            indptr = np.searchsorted(rows, np.arange(A.shape[0] + 1))
            # the last item: what the compact local inverse derives from the structure
            cache = (A.indices, A.indptr, keep, A.indices[keep], indptr, rows, {})
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
        return self.local_parts().rows(self.blocks)

    def local_parts(self):
        """:meth:`local_inverse_parts` as :meth:`local_inverse` takes them (its rows in
        chunks: the in-memory GLMM gradient on large data)."""
        # compact only where the dense coupling would be large: on small designs whose rows
        # read most of it (VerbAgg: every person answers every item) the dense product is
        # several times faster than the per-level products
        return self.local_inverse_parts(compact=self.m1 * self.q1 * self.rz > COMPACT_ABOVE)

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
        G = self._rest_inverse()                            # S^-1 (rest random effects)
        lr = self.lam_rest
        keep, cols, indptr, rows = self._a1z_index()
        if compact:                     # the pattern and C's positions in it: once per structure
            cache = self._a1z_cache[-1]
            if "keys" not in cache:
                cache["keys"] = pattern_keys(*self._local_pattern(rows, cols), rz)
                trim_heap(rows.size)         # (once per structure: the sort's temporaries)
            keys = cache["keys"]
        if q1 == 1 and isinstance(lr, np.ndarray):        # scalar blocks: work on the arrays
            A = self.A_1r
            cdata = A.data[keep] * (lams[0][0, 0] * Minv[rows, 0, 0]) * lr[cols]
            if compact:
                Kp = coupling_on_pattern(indptr, cols, cdata, G, 1, keys)[:, 0]
                if "c_index" not in cache:
                    cache["c_index"] = small_index(_key_index(keys, rows, cols, rz))
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

    def _rest_inverse(self):
        """``(L_zz L_zz')^-1``, symmetric: the leading rz x rz view of an r x r array.

        potri runs on the whole factor with identity rows after rz (a C-ordered lower factor
        is a Fortran-ordered upper one: no transposing copy, which for the strided leading
        block costs as much as half the inversion).  With ``inverse_in_place``, where the
        factor lives in the factor's own scratch array (the dense path: the next
        :meth:`update` overwrites it anyway), it is inverted there, not copied (72 MB at 3,000
        items): ``Lr`` is then None, the inverse and the factor's diagonal are kept in
        ``_inv`` for :meth:`solve_re` and ``diag_rest`` until the next factorization;
        anything else that reads ``Lr`` fails loudly."""
        rz, r = self.rz, self.r
        if self.Lr is None:
            return self._inv[0]
        in_place = (self.inverse_in_place and self._sn is None
                    and getattr(self, "_S", None) is not None and np.shares_memory(self.Lr, self._S))
        X = self.Lr if in_place else self.Lr.copy()
        diag = np.diagonal(X).copy()
        X[rz:, :] = 0.0
        X[np.arange(rz, r), np.arange(rz, r)] = 1.0
        with inverse_threads(rz):
            info = potri_upper(X.T)
        if info:
            if in_place:                                   # neither factor nor inverse now
                self.Lr, self._inv = None, None
            raise np.linalg.LinAlgError("singular factor in local_inverse")
        G = symmetrize_lower(X)[:rz, :rz]
        if in_place:
            self.Lr, self._inv = None, (G, diag)
        return G

    @property
    def diag_rest(self):
        return self._inv[1] if self.Lr is None else np.diagonal(self.Lr)

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


def symmetrize_lower(A, step=512):
    """``A`` (its lower triangle, as dpotri leaves it) made symmetric in place, by blocks of
    columns (``np.tril(A) + np.tril(A, -1).T`` makes three n x n temporaries and costs as
    much as dpotri itself for n = 3000)."""
    n = A.shape[0]
    for s in range(0, n, step):
        e = min(s + step, n)
        blk = A[s:e, s:e]
        iu = _upper_indices(e - s)
        blk[iu] = blk.T[iu]
        A[s:e, e:] = A[e:, s:e].T
    return A


@functools.lru_cache(maxsize=8)
def _upper_indices(n):
    """``np.triu_indices(n, 1)`` (read-only), made once per size: on small systems (VerbAgg's
    24 items) making them cost more than the inversion."""
    iu = np.triu_indices(n, 1)
    for a in iu:
        a.flags.writeable = False
    return iu


def _key_index(keys, lvl, pos, rz):
    """Positions in ``keys`` of ``lvl * rz + pos`` (all must be there: C's nonzeros lie in the
    pattern)."""
    key = np.asarray(lvl, dtype=np.int64) * rz + pos
    idx = np.searchsorted(keys, key)
    if key.size and (idx.max() >= keys.size or not np.array_equal(keys[idx], key)):
        raise RuntimeError("a nonzero of the coupling lies outside the rows' pattern")
    return idx
