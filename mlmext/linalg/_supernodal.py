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
MAX_COLS = 64
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
    adj = [set(indices[indptr[i]:indptr[i + 1]].tolist()) for i in range(n)]
    for i in range(n):
        adj[i].discard(i)
    heap = [(len(a), i) for i, a in enumerate(adj)]
    heapq.heapify(heap)
    done = np.zeros(n, dtype=bool)
    order, structs, fill = [], [], 0
    while heap:
        d, v = heapq.heappop(heap)
        if done[v] or d != len(adj[v]):
            continue                     # stale entry: v's degree changed since it was pushed
        done[v] = True
        nb = adj[v]
        adj[v] = None
        order.append(v)
        structs.append(nb)
        fill += len(nb)
        if max_fill is not None and fill > max_fill:
            return None
        mass = []
        for u in nb:
            a = adj[u]
            a.discard(v)
            a |= nb
            a.discard(u)
            if len(a) == len(nb) - 1:    # adjacent to the clique only
                mass.append(u)
        rest = set(nb)
        for u in mass:                   # each one's column: the clique less those before it
            rest.discard(u)
            done[u] = True
            adj[u] = None
            order.append(u)
            structs.append(set(rest))
            fill += len(rest)
        if mass:
            for u in rest:
                adj[u].difference_update(mass)
        if max_fill is not None and fill > max_fill:
            return None
        for u in rest:
            heapq.heappush(heap, (len(adj[u]), u))
    return np.array(order, dtype=np.int64), structs


class SupernodalPlan:
    """Order, supernodes and row patterns of the remainder's factor (fixed per model).

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
        self.supernodes = _supernodes(newrow, ptr, rz, r)
        # flat positions (i r + j) each step gathers and scatters, fixed with the pattern:
        # the block of rows R below the columns, its transpose, and R x R
        self._flat = [((R[:, None] * r + np.arange(a, b)[None, :]),
                       (np.arange(a, b)[:, None] * r + R[None, :]),
                       (R[:, None] * r + R[None, :])) for a, b, R in self.supernodes]
        self._both = None              # both triangles of the pattern (selected_inverse's out)
        self._steps = {}               # kk -> selected_inverse's positions
        nb = np.array([b - a for a, b, _ in self.supernodes])
        nR = np.array([R.size for _, _, R in self.supernodes])
        self.nnz = int((nb * (nb + 1) // 2 + nb * nR).sum())

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

    def stored_positions(self):
        """Flat positions ``i r + j`` of the factor's lower-triangle pattern (what
        :meth:`factor` writes below the diagonal and on it), each once, not sorted."""
        r, out = self.r, []
        for a, b, R in self.supernodes:
            i, j = np.tril_indices(b - a)
            out.append((a + i) * r + (a + j))
            out.append((R[:, None] * r + np.arange(a, b)[None, :]).ravel())
        i, j = np.tril_indices(r - self.rz)
        out.append((self.rz + i) * r + (self.rz + j))
        return np.concatenate(out)

    # -- per theta ----------------------------------------------------------------------
    def factor(self, W, inverses=None):
        """Overwrite the lower triangle of ``W`` (r x r, permuted order) with its Cholesky
        factor; entries outside the pattern are left as they are (zeros of ``W``).

        ``inverses``: a list that receives the inverse of each supernode's diagonal block of
        the factor (what :meth:`selected_inverse` needs; the rows below are then found by a
        product with it instead of a triangular solve)."""
        r = self.r
        Wf = W.reshape(-1)                                     # a view: W is C-contiguous
        for (a, b, R), (cols, _, RR) in zip(self.supernodes, self._flat):
            Ls, info = linalg.lapack.dpotrf(W[a:b, a:b], lower=1, clean=1)
            if info:
                raise np.linalg.LinAlgError(f"{a + info}-th leading minor is not positive definite")
            W[a:b, a:b] = Ls
            if inverses is not None:
                Li, info = linalg.lapack.dtrtri(Ls, lower=1)
                if info:
                    raise np.linalg.LinAlgError("singular triangular factor")
                inverses.append(Li)
                if R.size:
                    F = Wf[cols] @ Li.T                        # W_Rs L_ss^-T
                    Wf[cols] = F
                    Wf[RR] -= F @ F.T
            elif R.size:
                Ft, _ = linalg.lapack.dtrtrs(Ls, Wf[cols].T, lower=1)     # L_ss^-1 W_sR: F'
                Wf[cols] = Ft.T
                Wf[RR] -= Ft.T @ Ft
        # the dense rows at the end (X and y): what the rank updates left of them
        t0 = self.rz
        if t0 < r:
            Lt, info = linalg.lapack.dpotrf(W[t0:, t0:], lower=1, clean=1)
            if info:
                raise np.linalg.LinAlgError(f"{t0 + info}-th leading minor is not positive definite")
            W[t0:, t0:] = Lt
        return W

    def solve_t(self, L, b, inverses=None):
        """Solve ``L_m' x = b`` for the leading ``m = len(b) >= rz`` rows and columns of ``L``
        (the factor :meth:`factor` wrote) by back substitution over the supernodes
        (``inverses``: those :meth:`factor` gave for ``L``: products instead of solves)."""
        m, rz = b.size, self.rz
        x = np.array(b, dtype=float)
        Lf = L.reshape(-1)
        if m > rz:                                     # the dense rows of X first
            x[rz:m] = linalg.lapack.dtrtrs(np.tril(L[rz:m, rz:m]), x[rz:m], lower=1, trans=1)[0]
        for s, (a, b_, cols, _, _, R) in enumerate(self._inverse_steps(m)):
            rhs = x[a:b_] - Lf[cols].T @ x[R] if cols is not None else x[a:b_]
            if inverses is None:
                x[a:b_] = linalg.lapack.dtrtrs(L[a:b_, a:b_], rhs, lower=1, trans=1)[0]
            else:
                x[a:b_] = inverses[len(inverses) - 1 - s].T @ rhs
        return x

    def selected_inverse(self, L, kk, out=None, inverses=None):
        """``(L_P L_P')^-1`` on the pattern of ``L``, ``L_P`` the leading ``kk`` rows and
        columns of ``L`` (all random effects and the first ``kk - rz`` fixed effects).

        Returns an ``r x r`` array holding those entries in both triangles (zeros elsewhere,
        and in rows and columns from ``kk`` on): ``out`` if given (an r x r array zero off
        the pattern, as the last call left it; the pattern's positions are reset here), else
        a new one.  ``inverses``: those :meth:`factor` gave for ``L`` (else computed here).
        """
        r, rz = self.r, self.rz
        if out is None:
            X = np.zeros((r, r))
        else:                          # a fresh r x r array costs ~2 ms of page faults at r = 1,467
            X = out
            if self._both is None:     # (the diagonal twice: no sort to make them unique)
                low = self.stored_positions()
                self._both = np.concatenate([low, (low % r) * r + low // r])
            X.reshape(-1)[self._both] = 0.0
        if kk > rz:                                  # the dense fixed-effects rows first
            T = np.tril(L[rz:kk, rz:kk])
            Ti = linalg.lapack.dtrtri(T, lower=1)[0]
            X[rz:kk, rz:kk] = Ti.T @ Ti
        Lf, Xf = L.reshape(-1), X.reshape(-1)
        steps = self._inverse_steps(kk)
        for s, (a, b, cols, colsT, RR, _) in enumerate(steps):
            # the diagonal block is clean (factor wrote it whole), so no tril is needed
            Li = linalg.lapack.dtrtri(L[a:b, a:b], lower=1)[0] if inverses is None \
                else inverses[len(inverses) - 1 - s]
            Sss = Li.T @ Li
            if cols is not None:                       # rows inside the leading kk
                Z = Lf[cols] @ Li                      # L_Rs L_ss^-1
                SRs = Xf[RR] @ Z
                SRs *= -1.0
                Xf[cols] = SRs
                Xf[colsT] = SRs.T
                Sss -= Z.T @ SRs
            X[a:b, a:b] = Sss
        return X

    def _inverse_steps(self, kk):
        """The supernodes last first with the flat positions :meth:`selected_inverse` (and
        :meth:`solve_t`) read and write for this ``kk`` (the rows inside the leading kk), and
        those rows, contiguous: once per kk
        (a gather through a sliced index array costs several times one through its copy)."""
        steps = self._steps.get(kk)
        if steps is None:
            steps = []
            for (a, b, R), (cols, colsT, RR) in zip(reversed(self.supernodes), reversed(self._flat)):
                k = int(np.searchsorted(R, kk))
                if k:
                    steps.append((a, b, np.ascontiguousarray(cols[:k]), np.ascontiguousarray(colsT[:, :k]),
                                  np.ascontiguousarray(RR[:k, :k]), R[:k].copy()))
                else:
                    steps.append((a, b, None, None, None, None))
            self._steps[kk] = steps            # (threads racing here build the same list)
        return steps


def _postorder(parent):
    """Postorder of the forest given by ``parent`` (-1 at roots), children in index order."""
    n = parent.size
    children = [[] for _ in range(n)]
    roots = []
    for j in range(n):
        (children[parent[j]] if parent[j] >= 0 else roots).append(j)
    out, stack = [], [(v, False) for v in reversed(roots)]
    while stack:
        v, seen = stack.pop()
        if seen:
            out.append(v)
            continue
        stack.append((v, True))
        stack.extend((c, False) for c in reversed(children[v]))
    return np.array(out, dtype=np.int64)


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
    R = set(rows_list[bounds[0]:bounds[1]]) if rz else set()
    for j in range(1, rz + 1):
        if j < rz and j - a < MAX_COLS:
            own = set(rows_list[bounds[j]:bounds[j + 1]])
            R.discard(j)
            merged = R | own
            if len(merged) <= max(len(R), len(own)) + MAX_EXTRA_ROWS:
                R = merged
                continue
        runs.append((a, j))
        if j < rz:
            a, R = j, set(rows_list[bounds[j]:bounds[j + 1]])
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
