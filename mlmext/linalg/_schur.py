"""The Schur-complement product of the first random-effects block: ``A_r1 blockdiag(B) A_1r``.

Eliminating the first (block-diagonal) block from the system subtracts ``A_r1 B A_1r`` from the
dense remainder, ``B = Lambda_1 M_1^-1 Lambda_1'`` one ``q1 x q1`` block per level.  The product is
needed at every theta with the same ``A_r1``; two classes precompute what does not change:

* :class:`SchurProduct` enumerates, once, the pairs of nonzeros of ``A_r1`` that share a level,
  so that a theta costs one sparse matrix-vector product (large, sparse systems: InstEval), or
  where they are too many to store, works level by level (:mod:`~mlmext.linalg._levels`);
* :class:`DenseSchur` holds ``A_r1`` dense (few rows, or a first factor crossed with a small one).
"""
from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from ._levels import LevelGather

try:       # y += A x for a csc A, into y (scipy's kernel behind csc_matrix @ vector); A' x
    from scipy.sparse._sparsetools import csc_matvec as _matvec_into
    from scipy.sparse._sparsetools import csr_matvec as _matvec_t_into
except ImportError:  # pragma: no cover - a scipy without it: the allocating product
    _matvec_into = _matvec_t_into = None

#: systems with ``A_r1`` (r x m1 q1) of at most this many entries hold it dense for the
#: per-theta products (scipy.sparse's per-call overhead outweighs the arithmetic there)
SMALL_DENSE = 20_000


def _level_pairs(starts, T, it, chunk=1 << 18):
    """Entry pairs (e1 >= e2) within each level, in level order, in chunks of levels.

    Level g owns entries ``starts[g]:starts[g] + k`` and ``T[g] = k(k+1)/2`` pairs; pair l of a
    level decodes as a = floor((sqrt(8 l + 1) - 1) / 2), b = l - a(a+1)/2.  Yields
    ``(first level, end level, e1, e2)``.
    """
    for g0, g1, g, l in _chunks(T, it, chunk):
        a = ((np.sqrt(8.0 * l + 1.0) - 1.0) * 0.5).astype(it)
        b = l - a * (a + 1) // 2
        bad = np.flatnonzero((b < 0) | (b > a))          # rounding of the square root (rare)
        if bad.size:
            a[bad] += np.where(b[bad] > a[bad], 1, -1).astype(it)
            b[bad] = l[bad] - a[bad] * (a[bad] + 1) // 2
        base = starts[g].astype(it)
        yield g0, g1, a + base, b + base


def _chunks(T, it, chunk):
    """(first level, end level, level of each pair, its index within the level), for chunks
    of levels holding about ``chunk`` pairs (the temporaries stay small)."""
    m = T.size
    cum = np.cumsum(T)
    g0 = 0
    while g0 < m:
        g1 = int(np.searchsorted(cum, (cum[g0 - 1] if g0 else 0) + chunk, side="right"))
        g1 = max(g1, g0 + 1)
        Tc = T[g0:g1]
        n = int(Tc.sum())
        g = np.repeat(np.arange(g0, g1, dtype=it), Tc)
        l = np.arange(n, dtype=it) - np.repeat((np.cumsum(Tc) - Tc).astype(it), Tc)
        yield g0, g1, g, l
        g0 = g1


class SchurProduct:
    """Computes the lower triangle of ``G = A_r1 blockdiag(B) A_1r`` for many B.

    For each level g of the first block, every pair of nonzeros of
    ``A_r1[:, g-columns]`` contributes ``A[i, (g,a)] B_g[a, b] A[j, (g, b)]`` to
    ``G[i, j]``.  The pairs are enumerated once into a sparse matrix P (rows:
    positions ``i*r + j`` with i >= j, columns: (g, a, b); in blocks (a, b) with the levels
    grouped by their counts, ``_order``, unless refreshable), so each theta costs one
    sparse matrix-vector product ``P @ b`` (accumulated into S in place).  When P would be too
    large (more than ``max_pairs`` pairs) the products go level by level
    (:class:`~mlmext.linalg._levels.LevelGather`: full matrices).
    """

    max_pairs = 30_000_000
    _levels = None
    #: per block of P's columns, the levels in their column order (None: level order)
    _order = None

    def __init__(self, A_r1, m1, q1, refreshable=False, fused=False):
        self.r = r = A_r1.shape[0]
        self.m1, self.q1 = m1, q1
        self._plan = None
        self._ab = None               # column layout of P: None is (g, a, b), else blocks (a, b)
        if refreshable:                                  # remember where each csc entry comes from
            idx = A_r1.tocsr(copy=True)
            idx.data = np.arange(idx.nnz, dtype=float)
            A = idx.tocsc()
            A.sort_indices()
            perm = A.data.astype(np.int64)
            A.data = np.asarray(A_r1.tocsr().data, dtype=float)[perm]
        else:
            A = A_r1.tocsc()
            A.sort_indices()
        starts = A.indptr[0:m1 * q1 + 1:q1]             # entries of level g: starts[g]:starts[g+1]
        k = np.diff(starts)
        npairs = int((k.astype(np.int64) * (k + 1) // 2).sum())
        self.P = None
        if npairs > self.max_pairs:
            # too many pairs to store: the products go level by level (dense blocks per level)
            self._levels = LevelGather(A, m1, q1, refreshable=refreshable)
            return
        it = np.int32 if max(npairs, A.nnz, r * r) < 2**31 - 1 else np.int64
        if not refreshable:
            self._build_blocks(A, it)
            return
        if q1 == 1:
            self._build_by_count(A, perm, starts, k, it,
                                 fused=fused and _matvec_t_into is not None)
            return
        comp = np.repeat(np.arange(m1 * q1) % q1, np.diff(A.indptr))   # component of each entry
        T = k.astype(np.int64) * (k + 1) // 2
        indices = A.indices.astype(it, copy=False)
        chunks = list(_level_pairs(starts, T, it))
        e1 = np.concatenate([c[2] for c in chunks])
        e2 = np.concatenate([c[3] for c in chunks])
        g = np.repeat(np.arange(m1, dtype=it), T)
        val = np.take(A.data, e1)
        val *= np.take(A.data, e2)
        i, j = np.take(indices, e1), np.take(indices, e2)
        dbl = None
        if q1 > 1:   # same row, two components: the pair stands for both orders
            dbl = (i == j) & (e1 != e2)
            val = np.where(dbl, 2.0 * val, val)
        hi, lo = np.maximum(i, j).astype(np.int64), np.minimum(i, j).astype(np.int64)
        col = g if q1 == 1 else (g.astype(np.int64) * q1 + comp[e1]) * q1 + comp[e2]
        # columns (g, a, b), built so that new values for the same structure need one bincount
        rr = r * r
        key = col.astype(np.int64) * rr + (hi.astype(np.int64) * r + lo)
        uniq, dest = np.unique(key, return_inverse=True)
        indptr = np.searchsorted(uniq // rr, np.arange(m1 * q1 * q1 + 1))
        data = np.bincount(dest, weights=val, minlength=uniq.size)
        self.P = sparse.csc_matrix((data, uniq % rr, indptr), shape=(rr, m1 * q1 * q1))
        self._plan = (perm, e1, e2, dbl, dest.ravel(), uniq.size)

    def _build_by_count(self, A, perm, starts, k, it, chunk=1 << 20, fused=False):
        """The refreshable P of a scalar first block, its columns (levels) grouped by their
        number of entries k: a group's pairs are the lower triangle of each level's k x k
        outer product, the same positions for all of its levels, so :meth:`refresh` needs
        only the group's entries (``nnz`` positions in all) and no index per pair (the pairs
        and their merge by sort cost 5 times P's size: 1 GB at 1M ratings).

        ``fused``: P's values are not stored (41 MB at 1M binomial rows); each product
        computes them group by group from ``A_r1``'s values into a buffer of one group
        (:meth:`_fused_groups`), the same numbers in the same order.  P is then a
        :class:`_PairPattern` (no ``data``)."""
        r, m1 = self.r, self.m1
        order = np.argsort(k, kind="stable")
        kk = k[order].astype(np.int64)
        T = kk * (kk + 1) // 2
        indptr = np.zeros(m1 + 1, dtype=np.int64)
        np.cumsum(T, out=indptr[1:])
        rows = np.empty(int(indptr[-1]), dtype=it)
        groups = []
        bounds = np.flatnonzero(np.diff(kk)) + 1
        for c0, c1 in zip(np.r_[0, bounds], np.r_[bounds, m1]):
            kv = int(kk[c0])
            if kv == 0:
                continue
            ta, tb = np.tril_indices(kv)
            step = max(1, chunk // (kv * (kv + 1) // 2))
            for s0 in range(int(c0), int(c1), step):                # bounded temporaries
                s1 = min(s0 + step, int(c1))
                ent = starts[order[s0:s1]][:, None].astype(it) + np.arange(kv, dtype=it)
                I = A.indices[ent].astype(it, copy=False)              # sorted in each level
                pos = I[:, ta] * it(r)
                pos += I[:, tb]
                rows[indptr[s0]:indptr[s1]] = pos.ravel()
                # the entries' positions in A_r1's (CSR) values, which refresh takes
                groups.append((int(indptr[s0]), int(indptr[s1]), perm[ent].astype(it), ta, tb,
                               s0, s1))
        self._ab, self._order = [(0, 0)], [order]         # (the layout of _build_blocks)
        values = np.empty(A.nnz)                              # A's values in CSR order
        values[perm] = A.data
        if fused:
            self.P = _PairPattern(rows, indptr.astype(it), (r * r, m1))
            self._plan = ("fused", groups)
            self._values = values
            return
        self.P = sparse.csc_matrix((np.empty(rows.size), rows, indptr.astype(it)),
                                   shape=(r * r, m1), copy=False)
        self._plan = ("count", groups)
        self._fill_by_count(values)

    def _fill_by_count(self, values):
        """P's values from ``A_r1``'s (CSR order) for the plan of :meth:`_build_by_count`."""
        data = self.P.data
        for a, b, ent, ta, *_ in self._plan[1]:
            _group_values(values, ent, ta, data[a:b])

    def _fused_groups(self):
        """``(a, b, s0, s1, values)`` per group of the fused P: its pairs ``a:b`` (columns
        ``s0:s1``) and their values, computed into one buffer reused by the groups."""
        groups = self._plan[1]
        buf = np.empty(max((g[1] - g[0] for g in groups), default=0))
        for a, b, ent, ta, _, s0, s1 in groups:
            yield a, b, s0, s1, _group_values(self._values, ent, ta, buf[:b - a])

    def _build_blocks(self, A, it, chunk=1 << 16):
        """P in blocks, one per pair of components a >= b of the first block's template, a column
        per level in each: block (a, a) pairs the entries of a level's column a with each other
        (rows sorted, so e1 >= e2 is i >= j); block (a, b), a > b, pairs each entry of column a
        with each of column b and stands for both orders (doubled on the diagonal, i = j).
        Each block's columns (levels) are ordered by their number of pairs:
        the levels with the same counts pair their entries by one pattern, so each group is
        a few whole-array operations written contiguously into arrays of P's final size (no
        decoding of pair numbers, no sort, no concatenation: at 1M ratings P holds 27M pairs).
        ``_order[k]``: the levels in block k's column order."""
        m1, q1, ptr = self.m1, self.q1, A.indptr
        counts = [(ptr[a + 1:m1 * q1 + 1:q1] - ptr[a:m1 * q1:q1]).astype(np.int64) for a in range(q1)]
        starts = [ptr[a:m1 * q1:q1].astype(np.int64) for a in range(q1)]
        self._ab = [(a, b) for a in range(q1) for b in range(a + 1)]
        plans, total = [], 0
        for a, b in self._ab:
            ka, kb = counts[a], counts[b]
            key = ka if a == b else ka * (int(kb.max(initial=0)) + 1) + kb
            order = np.argsort(key, kind="stable")
            ks = key[order]
            cut = np.flatnonzero(np.diff(ks)) + 1
            groups = np.split(order, cut)
            T = ka * (ka + 1) // 2 if a == b else ka * kb
            plans.append((a, b, order, groups, T[order]))
            total += int(T.sum())
        indptr = np.zeros(m1 * len(self._ab) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([p[4] for p in plans]), out=indptr[1:])
        data = np.empty(total)
        rows = np.empty(total, dtype=it)
        vals, ind, r = A.data, A.indices.astype(it, copy=False), it(self.r)
        off = 0
        for a, b, order, groups, _ in plans:
            for lv_all in groups:
                na, nb = int(counts[a][lv_all[0]]), int(counts[b][lv_all[0]])
                T = na * (na + 1) // 2 if a == b else na * nb
                if T == 0:
                    continue
                step = max(1, chunk // T)                     # temporaries of ~chunk entries
                for s0 in range(0, lv_all.size, step):
                    lv = lv_all[s0:s0 + step]
                    n = lv.size * T
                    out = data[off:off + n].reshape(lv.size, T)
                    pos = rows[off:off + n].reshape(lv.size, T)
                    Va, Ia = _level_entries(vals, ind, starts[a][lv], na)
                    if a == b:
                        _pairs_within(Va, Ia, r, out, pos)
                    else:
                        _pairs_across(Va, Ia, *_level_entries(vals, ind, starts[b][lv], nb),
                                      r, out, pos)
                    off += n
        self._order = [p[2] for p in plans]
        self.P = sparse.csc_matrix((data, rows, indptr.astype(it)),
                                   shape=(self.r * self.r, m1 * len(self._ab)), copy=False)

    def _b_vector(self, B):
        """B (m1, q1, q1) in the order of P's columns."""
        if self._ab is None:
            return B.ravel()
        if self._order is None:
            return B.ravel() if self.q1 == 1 else np.concatenate([B[:, a, b] for a, b in self._ab])
        B = B.reshape(self.m1, self.q1, self.q1)
        if self.q1 == 1:
            return B.reshape(-1).take(self._order[0])
        return np.concatenate([B[o, a, b] for o, (a, b) in zip(self._order, self._ab)])

    def pair_sums(self, K):
        """``P' vec(K)`` as an (m1, q1, q1) array (the lower triangle for the block layout):
        the sums over a level's pairs of K at the pair's position times the pair's product."""
        if isinstance(self.P, _PairPattern):
            P, x = self.P, np.ascontiguousarray(K.ravel(), dtype=float)
            v = np.zeros(P.shape[1])
            for a, b, s0, s1, data in self._fused_groups():
                _matvec_t_into(s1 - s0, P.shape[0], P.indptr[s0:s1 + 1] - P.indptr[s0],
                               P.indices[a:b], data, x, v[s0:s1])
        else:
            v = self.P.T @ K.ravel()
        if self._ab is None:
            return v.reshape(self.m1, self.q1, self.q1)
        V = np.zeros((self.m1, self.q1, self.q1))
        m1 = self.m1
        for k, (a, b) in enumerate(self._ab):
            if self._order is None:
                V[:, a, b] = v[k * m1:(k + 1) * m1]
            else:
                V[self._order[k], a, b] = v[k * m1:(k + 1) * m1]
        return V

    def compact(self, rows, index):
        """The product on the positions ``rows`` alone (flat positions ``i r + j`` of the lower
        triangle holding every row of P; ``index``: each entry of P's row in ``rows``):
        :meth:`subtract_from` and :meth:`pair_sums` then take and give vectors over ``rows``
        instead of r x r arrays (the sparse remainder)."""
        new = copy.copy(self)
        P = self.P
        new.P = sparse.csc_matrix((P.data, index.astype(P.indices.dtype), P.indptr),
                                  shape=(rows.size, P.shape[1]))
        new._plan = None                                  # not refreshable
        return new

    def own_copy(self):
        """A copy whose values :meth:`refresh` can overwrite without touching this one's."""
        new = copy.copy(self)
        if isinstance(self.P, _PairPattern):        # values read from A_r1's at each product
            pass
        elif self.P is not None:                    # new values, the structure shared
            P = self.P
            new.P = sparse.csc_matrix((P.data.copy(), P.indices, P.indptr), shape=P.shape,
                                      copy=False)
        else:
            new._levels = self._levels.own_copy()
        return new

    def refresh(self, A_r1):
        """New values of ``A_r1`` with the structure it had at construction (``refreshable=True``)."""
        if self.P is None:
            self._levels.refresh(A_r1)
            return
        if isinstance(self._plan[0], str) and self._plan[0] == "fused":
            self._values = A_r1.data
            return
        if isinstance(self._plan[0], str):
            self._fill_by_count(A_r1.data)
            return
        perm, e1, e2, dbl, dest, nnz = self._plan
        v = A_r1.data[perm]
        val = v[e1] * v[e2]
        if dbl is not None:
            val[dbl] *= 2.0
        self.P.data[:] = np.bincount(dest, weights=val, minlength=nnz)

    def trace_weights(self, K):
        """v with ``v . vec(B) = trace(K G(B))`` for symmetric K and B, shape (m1, q1, q1)."""
        if self.P is not None:
            Kw = 2.0 * K
            Kw[np.diag_indices(self.r)] *= 0.5                 # off-diagonal pairs count twice
            return self.pair_sums(Kw)
        return self._levels.trace_weights(K)          # P too large to store: level by level

    def subtract_from(self, S, B):
        """S -= G(B) on the lower triangle (full matrix in the fallback)."""
        if isinstance(self.P, _PairPattern):
            P, out = self.P, S.reshape(-1)
            if not np.shares_memory(out, S):
                raise ValueError("the fused Schur product accumulates into a contiguous S")
            x = -np.ascontiguousarray(self._b_vector(B), dtype=float)
            for a, b, s0, s1, data in self._fused_groups():
                _matvec_into(P.shape[0], s1 - s0, P.indptr[s0:s1 + 1] - P.indptr[s0],
                             P.indices[a:b], data, x[s0:s1], out)
        elif self.P is not None:
            P, out = self.P, S.reshape(-1)
            if _matvec_into is not None and np.shares_memory(out, S) \
                    and P.indptr.dtype == P.indices.dtype and P.data.dtype == np.float64:
                # accumulated in place: P @ b would allocate (and page in) an r^2 vector per call
                _matvec_into(P.shape[0], P.shape[1], P.indptr, P.indices, P.data,
                             -np.ascontiguousarray(self._b_vector(B), dtype=float), out)
            else:
                out -= P @ self._b_vector(B)
                if not np.shares_memory(out, S):
                    S[...] = out.reshape(S.shape)
        else:
            self._levels.subtract_from(S, B)
        return S


class _PairPattern:
    """The pairs' positions of a fused :class:`SchurProduct` (a csc pattern, no values)."""

    data = None

    def __init__(self, indices, indptr, shape):
        self.indices, self.indptr, self.shape = indices, indptr, shape


def _level_entries(vals, ind, start, k):
    """Values and rows of ``k`` entries from each of ``start`` (levels x k arrays)."""
    ent = start[:, None] + np.arange(k)
    return vals[ent], ind[ent]


def _pairs_within(V, I, r, out, pos):
    """The lower triangle of each level's outer product by rows, ``V_p V_q`` at ``I_p r + I_q``
    for q <= p (rows sorted in a level: ``I_p >= I_q``), into ``out`` and ``pos`` (levels x
    pairs): gathers from the levels' few entries (cache-resident), not from all of A's."""
    pa, pb = _tril(V.shape[1])
    np.multiply(V.take(pa, axis=1), V.take(pb, axis=1), out=out)
    np.add((I * r).take(pa, axis=1), I.take(pb, axis=1), out=pos)


def _pairs_across(Va, Ia, Vb, Ib, r, out, pos):
    """Each entry of column a with each of column b (levels x ka x kb, by rows of a), at the
    lower-triangle position ``max(i, j) r + min(i, j)``; a pair on the diagonal (i = j) stands
    for both orders, doubled."""
    L, ka, kb = Va.shape[0], Va.shape[1], Vb.shape[1]
    out3, pos3 = out.reshape(L, ka, kb), pos.reshape(L, ka, kb)
    np.multiply(Va[:, :, None], Vb[:, None, :], out=out3)
    if ka == kb and np.array_equal(Ia, Ib) and (Ia[:, 1:] > Ia[:, :-1]).all():
        # the same (strictly increasing) rows in both columns, as a slope and its intercept:
        # the positions are a symmetric pattern of the level's rows, i = j on the diagonal
        p = np.arange(ka)
        hi = np.maximum(p[:, None], p[None, :]).ravel()
        lo = np.minimum(p[:, None], p[None, :]).ravel()
        np.add((Ia * r).take(hi, axis=1), Ia.take(lo, axis=1), out=pos)
        out[:, ::ka + 1] *= 2.0
        return
    i, j = Ia[:, :, None], Ib[:, None, :]
    np.maximum(i, j, out=pos3)
    pos3 *= r
    pos3 += np.minimum(i, j)
    np.multiply(out3, 2.0, out=out3, where=i == j)


def _tril(k):
    """``np.tril_indices(k)`` (rows, then columns) without its k x k mask."""
    pa = np.repeat(np.arange(k), np.arange(1, k + 1))
    return pa, np.arange(pa.size) - np.repeat(np.cumsum(np.arange(k)), np.arange(1, k + 1))


def _group_values(values, ent, ta, out):
    """The pair products of a group of levels with ``ent.shape[1]`` entries each (``ent``:
    their positions in ``values``), the lower triangle of each level's outer product by rows,
    written into ``out`` (flat, levels x pairs)."""
    V = values[ent]
    out = out.reshape(ent.shape[0], ta.size)
    # row i of the lower triangle: V_i V_0..i, written in place (no pair-sized gathers)
    for i in range(ent.shape[1]):
        o = i * (i + 1) // 2
        np.multiply(V[:, i:i + 1], V[:, :i + 1], out=out[:, o:o + i + 1])
    return out.reshape(-1)


class DenseSchur:
    """``G = A_r1 blockdiag(B) A_1r`` with ``A_r1`` held dense (few rows, dense fill).

    Same interface as :class:`SchurProduct` (``P`` is None: full matrices);
    used by the reweighting path of the factors when the dense product is cheaper
    than enumerating the pairs, e.g. a large first factor crossed with a small one.
    """

    P = None

    def __init__(self, A_r1, m1, q1):
        self.r = A_r1.shape[0]
        self.m1, self.q1 = m1, q1
        A = A_r1.tocsr()
        rows = np.repeat(np.arange(self.r), np.diff(A.indptr))
        self._flat = rows * (m1 * q1) + A.indices
        self.A = np.zeros((self.r, m1 * q1))
        self.refresh(A)

    def own_copy(self):
        """A copy whose values :meth:`refresh` can overwrite without touching this one's."""
        new = copy.copy(self)
        new.A = self.A.copy()
        return new

    def refresh(self, A_r1):
        self.A.ravel()[self._flat] = A_r1.data

    def subtract_from(self, S, B):
        A = self.A
        if self.q1 == 1:
            S -= (A * B.reshape(1, -1)) @ A.T
        else:
            T = np.einsum("rga,gab->rgb", A.reshape(self.r, self.m1, self.q1),
                          B.reshape(self.m1, self.q1, self.q1)).reshape(self.r, -1)
            S -= T @ A.T
        return S

    def trace_weights(self, K):
        A = self.A
        F = K @ A
        return np.einsum("iga,igb->gab", A.reshape(self.r, self.m1, self.q1),
                         F.reshape(self.r, self.m1, self.q1))
