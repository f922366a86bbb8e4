"""Sparse (supernodal) Cholesky of the dense remainder when its random-effects part is sparse.

After the first block is eliminated, the remainder ``S`` (the other random-effects blocks, then
X and y) is factored densely.  Where the remaining grouping factors are nearly nested (pupils'
teachers within schools in STAR: 1454 random effects, 0.8 % of the pairs nonzero) almost all of
that ``O(r^3)`` work multiplies zeros.  :class:`SupernodalPlan` fixes, once per model, a
fill-reducing order of the random effects (minimum degree) and groups the columns of the factor
into *supernodes*: runs of columns factored as one dense block, each with the sorted list ``R``
of the rows below it that can be nonzero (always including the dense X and y rows at the end).
Per theta the numbers go through the same ``r x r`` array the dense path uses (so every reader
of ``Lr`` is unchanged, in the permuted order), but only the blocks of the pattern are touched:

* :meth:`SupernodalPlan.factor` -- right-looking: per supernode one Cholesky of its diagonal
  block, one triangular solve for its rows ``R`` and one rank update of ``R x R``;
* :meth:`SupernodalPlan.selected_inverse` -- the entries of ``(L L')^-1`` on the pattern of
  ``L`` (Takahashi's recurrence, last supernode first), which is all the gradient reads
  (the diagonal, and pairs of random effects that share a level of the first block).

The pattern is that of the elimination with whole supernodes (merged runs count as dense), so
every entry a step reads was computed by an earlier step; entries outside it stay exact zeros.
"""
from __future__ import annotations

import heapq
import itertools

import numpy as np
from scipy import linalg

__all__ = ["SupernodalPlan", "minimum_degree"]

#: use the sparse factorization only for remainders with at least this many random effects
#: (below, one dense LAPACK call is cheaper than a Python loop over supernodes) ...
MIN_RZ = 256
#: ... and when the pattern itself has at most this density (STAR: 0.8 %; the 100k ratings'
#: items, 7 %, fill in to 22 %: minimum degree is not worth running there) ...
MAX_DENSITY = 0.03
#: ... and the factor's pattern holds at most this fraction of the dense lower triangle
MAX_FILL = 0.08
#: ... and when the merged supernodes' blocks hold at most this fraction of it
MAX_STORED = 0.25
#: merged supernodes: at most this many columns, and a merge may add this many rows to ``R``
MAX_COLS = 48
MAX_EXTRA_ROWS = 8


def minimum_degree(n, indptr, indices, max_fill=None):
    """Minimum-degree elimination order of a symmetric pattern (CSR, diagonal ignored).

    Eliminates on the explicit graph (each step joins the neighbours of the eliminated node
    into a clique), with mass elimination: neighbours left with no other neighbours than that
    clique are eliminated right after it (no fill; the teachers of one school in STAR), which
    saves re-forming the clique once per member.  Returns ``(order, structs)``: ``order[k]`` is
    the node eliminated k-th and ``structs[k]`` its neighbours at that moment (the rows of its
    column of the factor, in original numbering); or None once the fill passes ``max_fill``
    entries (the pattern is too dense for a sparse factorization to pay).
    """
    flat, ptr = indices.tolist(), indptr.tolist()
    adj = [set(flat[ptr[i]:ptr[i + 1]]) for i in range(n)]
    for i in range(n):
        adj[i].discard(i)
    # the heap holds, for each node, an entry keyed at most its degree (key: the smallest): a
    # degree that grew is re-keyed when its entry comes up, one that fell gets a new entry
    # (an entry per neighbour and elimination, as plain lazy deletion pushes, costs 4x the pops)
    key = [len(a) for a in adj]
    heap = [(k, i) for i, k in enumerate(key)]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    done = bytearray(n)
    order, structs, fill = [], [], 0
    while heap:
        d, v = pop(heap)
        if done[v]:
            continue
        t = len(adj[v])
        if t > d:                      # grew since pushed: back in at its degree
            key[v] = t
            push(heap, (t, v))
            continue
        if t < d:                      # an older, higher entry (the lower one came first)
            continue
        done[v] = 1
        nb = adj[v]
        adj[v] = None
        order.append(v)
        structs.append(nb)
        fill += t
        if max_fill is not None and fill > max_fill:
            return None
        mass = []
        m1 = t - 1
        for u in nb:
            a = adj[u]
            a.discard(v)
            a |= nb
            a.discard(u)
            if len(a) == m1:
                mass.append(u)
        if mass:
            rest = set(nb)
            for u in mass:
                rest.discard(u)
                done[u] = 1
                adj[u] = None
                order.append(u)
                structs.append(set(rest))
                fill += len(rest)
            for u in rest:
                adj[u].difference_update(mass)
            if max_fill is not None and fill > max_fill:
                return None
            nb = rest
        for u in nb:                   # degrees that fell below their key: a lower entry
            k = len(adj[u])
            if k < key[u]:
                key[u] = k
                push(heap, (k, u))
    return np.array(order, dtype=np.int64), structs


class SupernodalPlan:
    """Order, supernodes, row patterns and storage of the remainder's factor (fixed per model).

    Parameters
    ----------
    indptr, indices : ndarray
        Symmetric CSR pattern of the random-effects part (``rz x rz``) of the remainder.
    rz, r : int
        Random effects in the remainder, and its order (``r - rz`` dense rows of X and y).

    Attributes
    ----------
    perm : ndarray
        ``perm[i]``: the random effect (original index) at position i of the permuted order.
    supernodes : list of (int, int, ndarray)
        ``(a, b, R)``: columns ``a:b`` (permuted order) and the rows below them that can be
        nonzero, sorted, the X and y rows last.
    nnz : int
        Entries of the factor's pattern (its lower triangle, as stored blocks).
    size : int
        Length of the flat storage: per supernode a C-ordered panel of ``b - a + R.size``
        rows and ``b - a`` columns (its diagonal block, then its rows ``R``), then the dense
        ``t x t`` block of the X and y rows (``t = r - rz``).  The factor, the matrix it is
        computed from and the selected inverse all live in such vectors; :meth:`positions`
        maps entries (i, j) to them.
    diag : ndarray
        Positions of the diagonal entries 0 .. r - 1.
    """

    def __init__(self, indptr, indices, rz, r, order):
        self.rz, self.r = rz, r
        order, structs = order
        pos = np.empty(rz, dtype=np.int64)
        pos[order] = np.arange(rz)
        # column structures in the elimination order, then an elimination-tree postorder, which
        # keeps the pattern and puts each subtree's columns next to each other
        # (as flat arrays: a numpy call per column costs more than the work at STAR's 1,454)
        lens = np.fromiter(map(len, structs), dtype=np.int64, count=rz)
        rows = pos[np.fromiter(itertools.chain.from_iterable(structs), dtype=np.int64,
                               count=int(lens.sum()))]
        first = np.cumsum(lens) - lens
        parent = np.full(rz, -1, dtype=np.int64)          # the first row below each column
        full = lens > 0
        if full.any():
            parent[full] = np.minimum.reduceat(rows, first[full])
        post = _postorder(parent)
        newpos = np.empty(rz, dtype=np.int64)
        newpos[post] = np.arange(rz)
        self.perm = order[post]
        newcol = np.repeat(newpos, lens)
        newrow = newpos[rows]
        newrow = newrow[np.argsort(newcol * rz + newrow, kind="stable")]
        ptr = np.concatenate([[0], np.cumsum(lens[post])])
        self.supernodes = sn = _supernodes(newrow, ptr, rz, r)
        nb = np.array([b - a for a, b, _ in sn], dtype=np.int64)
        nR = np.array([R.size for _, _, R in sn], dtype=np.int64)
        self.nnz = int((nb * (nb + 1) // 2 + nb * nR).sum())
        t = r - rz
        self._off = np.concatenate([[0], np.cumsum((nb + nR) * nb)])
        self.size = int(self._off[-1]) + t * t
        self._nb, self._start = nb, np.array([a for a, _, _ in sn], dtype=np.int64)
        self._owner = np.repeat(np.arange(len(sn)), nb)
        # R of every supernode, keyed s r + i (sorted): where row i sits in supernode s's panel
        self._rkeys = np.concatenate([s * r + R for s, (_, _, R) in enumerate(sn)])
        self._rfirst = np.concatenate([[0], np.cumsum(nR)])
        # per supernode, the rank update's targets (R x R, lower triangle) and their sources
        # in the R x R product, fixed with the pattern
        # (one call of positions for all: per supernode it costs more than the work)
        tri = {}
        for n in set(nR.tolist()):
            k, l = np.tril_indices(n)
            tri[n] = (k, l, k * n + l)
        rows_k = np.concatenate([R[tri[R.size][0]] for _, _, R in sn])
        rows_l = np.concatenate([R[tri[R.size][1]] for _, _, R in sn])
        dst = np.split(self.positions(rows_k, rows_l), np.cumsum(nR * (nR + 1) // 2)[:-1])
        self._upd = [(d, tri[R.size][2]) for d, (_, _, R) in zip(dst, sn)]
        self.diag = self.positions(np.arange(r), np.arange(r))
        self._steps = {}               # kk -> selected_inverse's (and solve_t's) steps
        self._dense_map = None

    @classmethod
    def for_pattern(cls, indptr, indices, rz, r):
        """The plan, or None when the remainder is too small or its factor too dense to gain."""
        if rz < MIN_RZ or indices.size > MAX_DENSITY * rz * rz:
            return None
        order = minimum_degree(rz, indptr, indices, max_fill=MAX_FILL * rz * rz / 2)
        if order is None:
            return None
        plan = cls(indptr, indices, rz, r, order)
        if plan.nnz > MAX_STORED * r * r / 2:          # merged blocks made it nearly dense
            return None
        return plan

    def positions(self, i, j):
        """Positions in the flat storage of the entries ``(i, j)``, ``i >= j`` (permuted order);
        ValueError for an entry outside the stored pattern."""
        i, j = np.broadcast_arrays(np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64))
        shape, i, j = i.shape, i.ravel(), j.ravel()
        rz, r = self.rz, self.r
        out = np.empty(i.size, dtype=np.int64)
        tail = j >= rz
        out[tail] = self._off[-1] + (i[tail] - rz) * (r - rz) + (j[tail] - rz)
        z = ~tail
        iz, jz = i[z], j[z]
        s = self._owner[jz]
        a, nb = self._start[s], self._nb[s]
        row = iz - a
        below = row >= nb
        if below.any():
            key = s[below] * r + iz[below]
            within = np.arange(self._rkeys.size) - np.repeat(self._rfirst[:-1], np.diff(self._rfirst))
            if len(self.supernodes) * r <= 1 << 22:   # a table: row k of R_s at s r + R_s[k]
                table = np.full(len(self.supernodes) * r, -1, dtype=np.int64)
                table[self._rkeys] = within
                k = table[key]
            else:                                      # (binary searches: ~20x slower)
                at = np.minimum(np.searchsorted(self._rkeys, key), self._rkeys.size - 1)
                k = np.where(self._rkeys[at] == key, within[at], -1)
            if k.size and k.min() < 0:
                raise ValueError("an entry lies outside the factor's pattern")
            row[below] = nb[below] + k
        if np.any(iz < jz) or np.any(i[tail] < j[tail]):
            raise ValueError("positions are for the lower triangle (i >= j)")
        out[z] = self._off[s] + row * nb + (jz - a)
        return out.reshape(shape)

    def _panel(self, L, s):
        a, b, R = self.supernodes[s]
        return L[self._off[s]:self._off[s + 1]].reshape(b - a + R.size, b - a)

    def tail(self, L):
        """The dense ``t x t`` block of the X and y rows (a C-ordered view; lower triangle)."""
        t = self.r - self.rz
        return L[self._off[-1]:].reshape(t, t)

    def dense_map(self):
        """``(flat, src)``: the stored entries of the lower triangle, as flat positions
        ``i r + j`` of an r x r array and as positions in the storage."""
        if self._dense_map is None:
            flat, src = [], []
            r, off = self.r, self._off
            for s, (a, b, R) in enumerate(self.supernodes):
                nb = b - a
                i, j = np.tril_indices(nb)
                flat.append((a + i) * r + (a + j))
                src.append(off[s] + i * nb + j)
                k, c = np.divmod(np.arange(R.size * nb), nb)
                flat.append(R[k] * r + (a + c))
                src.append(off[s] + nb * nb + k * nb + c)
            t = r - self.rz
            i, j = np.tril_indices(t)
            flat.append((self.rz + i) * r + (self.rz + j))
            src.append(off[-1] + i * t + j)
            self._dense_map = (np.concatenate(flat), np.concatenate(src))  # (racing threads: same)
        return self._dense_map

    def dense(self, L):
        """The r x r array of the stored entries of ``L`` (lower triangle; zeros elsewhere)."""
        flat, src = self.dense_map()
        out = np.zeros((self.r, self.r))
        out.reshape(-1)[flat] = L[src]
        return out

    # -- per theta ----------------------------------------------------------------------
    def factor(self, L, inverses):
        """Overwrite ``L`` (the storage holding the matrix's lower triangle on the pattern,
        zeros elsewhere) with its Cholesky factor, right-looking: per supernode one Cholesky
        of its diagonal block, one product for its rows ``R`` and one rank update of
        ``R x R``.  ``inverses`` receives the inverse of each supernode's diagonal block of the
        factor (C-ordered, lower), which :meth:`solve_t` and :meth:`selected_inverse` read."""
        for s, (a, b, R) in enumerate(self.supernodes):
            nb = b - a
            P = self._panel(L, s)
            # a C-ordered lower block is a Fortran-ordered upper one: LAPACK works in place
            # (the strict upper triangle is never written: it stays 0)
            U, info = linalg.lapack.dpotrf(P[:nb].T, lower=0, clean=0, overwrite_a=1)
            if info:
                raise np.linalg.LinAlgError(f"{a + info}-th leading minor is not positive definite")
            Ui, info = linalg.lapack.dtrtri(U, lower=0)
            if info:
                raise np.linalg.LinAlgError("singular triangular factor")
            inverses.append(Ui.T)
            # F = W_Rs L_ss^-T in place (as F' = L_ss^-1 W_sR: the transpose of the C-ordered
            # rows is Fortran-ordered), then F F' by its upper triangle (half the product)
            Ft = P[nb:].T
            F2 = linalg.blas.dtrmm(1.0, Ui, Ft, side=0, lower=0, trans_a=1, overwrite_b=1)
            if not np.shares_memory(F2, Ft):                   # (a BLAS that copied)
                Ft[...] = F2
            G = linalg.blas.dsyrk(1.0, Ft, trans=1, lower=0)   # Fortran-ordered, upper
            dst, src = self._upd[s]
            L[dst] -= G.T.reshape(-1)[src]                     # G[l, k], l <= k: the lower (k, l)
        # the dense rows at the end (X and y): what the rank updates left of them
        _, info = linalg.lapack.dpotrf(self.tail(L).T, lower=0, clean=0, overwrite_a=1)
        if info:
            raise np.linalg.LinAlgError(f"{self.rz + info}-th leading minor is not positive definite")
        return L

    def solve_t(self, L, b, inverses):
        """Solve ``L_m' x = b`` for the leading ``m = len(b) >= rz`` rows and columns of the
        factor ``L`` by back substitution over the supernodes (``inverses``: those
        :meth:`factor` gave for ``L``)."""
        m, rz = b.size, self.rz
        x = np.array(b, dtype=float)
        if m > rz:                                     # the dense rows of X first
            x[rz:m] = linalg.lapack.dtrtrs(self.tail(L)[:m - rz, :m - rz], x[rz:m],
                                           lower=1, trans=1)[0]
        for s, a, b_, k, _ in self._inverse_steps(m):
            rhs = x[a:b_]
            if k:
                rhs = rhs - self._panel(L, s)[b_ - a:b_ - a + k].T @ x[self.supernodes[s][2][:k]]
            x[a:b_] = inverses[s].T @ rhs
        return x

    def selected_inverse(self, L, kk, out, inverses):
        """``(L_P L_P')^-1`` on the pattern of ``L``, ``L_P`` the leading ``kk`` rows and
        columns of ``L`` (all random effects and the first ``kk - rz`` fixed effects), by
        Takahashi's recurrence, last supernode first.

        Written into ``out`` (a storage vector, overwritten) and returned: the diagonal blocks
        (their lower triangles; the X rows' block whole), the rows below them, zeros in rows and
        columns from ``kk`` on.
        """
        rz, X = self.rz, out
        X.fill(0.0)
        if kk > rz:                                  # the dense fixed-effects rows first
            Ti = linalg.lapack.dtrtri(self.tail(L)[:kk - rz, :kk - rz], lower=1)[0]
            self.tail(X)[:kk - rz, :kk - rz] = Ti.T @ Ti
        for s, a, b, k, sq in self._inverse_steps(kk):
            nb = b - a
            Ui = inverses[s].T                       # L_ss^-T: Fortran-ordered, upper
            # L_ss^-T L_ss^-1 by LAPACK's triangular product: its lower triangle (C order) is
            # all that is read of a diagonal block (positions map (i, j) and (j, i) to i >= j)
            Sss = linalg.lapack.dlauum(Ui, lower=0)[0].T
            XP = self._panel(X, s)
            if k:                                    # rows inside the leading kk
                # Z = L_Rs L_ss^-1, as Z' = L_ss^-T L_sR (Fortran-ordered)
                Zt = linalg.blas.dtrmm(1.0, Ui, self._panel(L, s)[nb:nb + k].T, side=0, lower=0)
                SRs = X[sq].reshape(k, k) @ Zt.T
                SRs *= -1.0
                XP[nb:nb + k] = SRs
                Sss = Sss - Zt @ SRs
            XP[:nb] = Sss
        return X

    def _inverse_steps(self, kk):
        """The supernodes last first, each with the number ``k`` of its rows inside the leading
        ``kk`` and the positions of those rows' ``k x k`` block (both triangles), once per kk."""
        steps = self._steps.get(kk)
        if steps is None:
            steps = []
            for s in reversed(range(len(self.supernodes))):
                a, b, R = self.supernodes[s]
                k = int(np.searchsorted(R, kk))
                dst, _ = self._upd[s]
                sq = np.empty((R.size, R.size), dtype=np.int64)
                il, jl = np.tril_indices(R.size)
                sq[il, jl] = dst
                sq[jl, il] = dst
                steps.append((s, a, b, k, np.ascontiguousarray(sq[:k, :k]).reshape(-1)))
            self._steps[kk] = steps            # (threads racing here build the same list)
        return steps


def _postorder(parent):
    """Postorder of the forest given by ``parent`` (-1 at roots, else ``parent[j] > j``, as an
    elimination tree's), children in index order: the order a depth-first search emits.

    Without the search: node j's subtree takes the positions ``start[j] .. start[j] +
    size[j] - 1`` of the postorder, itself the last of them; ``start`` of a child is its
    parent's plus the sizes of its earlier siblings."""
    n = parent.size
    size = np.ones(n, dtype=np.int64)
    par = parent.tolist()
    sz = size.tolist()
    for j in range(n):                        # children before parents (parent[j] > j)
        if par[j] >= 0:
            sz[par[j]] += sz[j]
    size = np.array(sz, dtype=np.int64)
    # siblings in index order, grouped by parent (roots: parent n): offsets within the group
    key = np.where(parent >= 0, parent, n)
    sib = np.argsort(key, kind="stable")
    csum = np.cumsum(size[sib]) - size[sib]
    first = np.searchsorted(key[sib], key[sib], side="left")
    off = np.empty(n, dtype=np.int64)
    off[sib] = csum - csum[first]
    start = off.tolist()
    for j in range(n - 1, -1, -1):            # parents before children
        if par[j] >= 0:
            start[j] += start[par[j]]
    post = np.empty(n, dtype=np.int64)
    post[np.array(start, dtype=np.int64) + size - 1] = np.arange(n)
    return post


def _supernodes(flat, ptr, rz, r):
    """Runs of consecutive columns merged into supernodes, with their row patterns (column j's
    rows below it: ``flat[ptr[j]:ptr[j + 1]]``, sorted).

    A column joins the current run while the run stays within ``MAX_COLS`` columns and the
    union of the row patterns grows by at most ``MAX_EXTRA_ROWS`` rows beyond the larger of
    the two (a chain of columns with nested patterns, a fundamental supernode, merges at no
    cost).  Then the pattern is recomputed for the elimination by whole supernodes: a
    supernode's rows are its columns' own rows below it plus its children's rows (the
    supernodes whose first row falls in it), so that the fill of a merged (dense) block is
    part of the pattern.
    """
    runs, a = [], 0
    rows_list, bounds = flat.tolist(), ptr.tolist()         # (Python sets per column below)
    # the run's rows R as a set, or (while lazy is not None) those of column lazy = j - 1: when
    # j is that column's parent (its first row), R - {j} lies in column j's rows (an
    # elimination tree's property), so j joins the run and R becomes j's rows, with no sets
    parent = [rows_list[bounds[j]] if bounds[j] < bounds[j + 1] else -1 for j in range(rz)]
    lazy, R = 0, None
    for j in range(1, rz + 1):
        if j < rz and j - a < MAX_COLS:
            if lazy is not None:
                if parent[lazy] == j:
                    lazy = j
                    continue
                R, lazy = set(rows_list[bounds[lazy]:bounds[lazy + 1]]), None
            own = set(rows_list[bounds[j]:bounds[j + 1]])
            R.discard(j)
            merged = R | own
            if len(merged) <= max(len(R), len(own)) + MAX_EXTRA_ROWS:
                R = merged
                continue
        runs.append((a, j))
        if j < rz:
            a, lazy = j, j
    owner = np.empty(rz, dtype=np.int64)
    for s, (a, b) in enumerate(runs):
        owner[a:b] = s
    pending = [[] for _ in runs]                  # children's rows, handed up to the parent
    tail = np.arange(rz, r, dtype=np.int64)
    out = []
    for s, (a, b) in enumerate(runs):
        own = flat[ptr[a]:ptr[b]]                 # the run's columns are contiguous in flat
        R = np.unique(np.concatenate([own[own >= b]] + pending[s]))
        R = R[R >= b]
        if R.size:
            pending[owner[R[0]]].append(R)
        out.append((a, b, np.concatenate([R, tail])))
    return out
