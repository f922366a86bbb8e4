"""Nested storage: a chain of nested blocks kept block-diagonal, the rest dense.

When every level of block k lies within one level of block k+1 for k = 0 .. D-2 (``(1 | a/b/c)``:
each a:b:c in one a:b, each a:b in one a; or ``(x | school) + (1 | school:cls)``), none of these D
blocks fills.  A level g of block i meets, in block k > i, only its ancestor ``anc_k(g)``, so

* the off-diagonal block ``(k, i)`` of the system and of its factor has one ``q_k x q_i`` block per
  level of i (at row ``anc_k(g)``): a stack ``(m_i, q_k, q_i)``;
* the Schur complement of the blocks before k in block k is block diagonal: a stack ``M_k``.

The chain is factored as a block LDL' (no square roots per level), with the Schur-updated
off-diagonal blocks ``U_ki`` and ``K_ki = M_i^-1 U_ki'``:

    U_ki = Lambda_k' A_ki Lambda_i - sum_{j<i} sum_{g' in g} U_kj[g'] K_ij[g']
    M_k  = Lambda_k' A_kk Lambda_k + I - sum_{i<k} sum_{g in h} U_ki[g] K_ki[g]

and only the blocks after the chain (``rz`` random effects), X and y form the dense ``Lr``, from
the Schur complement ``S - sum_k P_k M_k^-1 P_k'`` with ``P_k = Lambda_r' (A_rk Lambda_k - sum_{i<k}
P_i K_ki)`` (block 0's term is the lead block's Schur product).  This is what MixedModels.jl does
for nested factors (``isnested`` keeps their diagonal blocks block-diagonal); it turns the
O((m q)^3) dense factorization of the nesting blocks into O(D^2 m q^3) work.  Solves and the
diagonal of the inverse walk the chain down and up through the level maps (:class:`LevelMap`).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg

from ._lead import LeadBlockFactor
from ._potri import potri_upper
from ._stacks import (LevelMap, block_cross, bmm, level_gram, lmul, rmul, sandwich, solve_last_row_t,
                      spd_inv_logdet, tr, tri_inv)

__all__ = ["NestedFactor", "nesting_parent", "nesting_chain"]


def nesting_parent(b1, b2):
    """``parent[g]``: the level of block ``b2`` that holds level g of ``b1``, or None when some
    level of ``b1`` meets several levels of ``b2`` (not nested)."""
    parent = np.full(b1.m, -1, dtype=np.int64)
    parent[b1.codes] = b2.codes
    if parent.min() < 0 or not np.array_equal(parent[b1.codes], b2.codes):
        return None
    return parent


def nesting_chain(blocks):
    """Parent maps of the longest run ``blocks[0] in blocks[1] in ...`` of nested blocks.

    Only a leading run stays block-diagonal: a block crossed with an earlier one fills in, and so
    does every block after it.
    """
    parents = []
    for b1, b2 in zip(blocks, blocks[1:]):
        par = nesting_parent(b1, b2)
        if par is None:
            break
        parents.append(par)
    return parents


class NestedFactor(LeadBlockFactor):
    """Blocked Cholesky factor with a chain of D >= 2 nested blocks kept block-diagonal.

    ``NestedFactor(blocks, XY, weights=None, reweighting=False, parents=None)``: ``parents[k]``
    maps the levels of ``blocks[k]`` to those of ``blocks[k + 1]`` (default: the longest chain,
    :func:`nesting_chain`).  See :class:`~mlmext.linalg._lead.LeadBlockFactor` for the other
    parameters and :class:`~mlmext.linalg.base.Factor` for the interface.  ``depth`` is D.
    """

    nested = True

    def __init__(self, blocks, XY, weights=None, reweighting=False, parents=None):
        parents = nesting_chain(blocks) if parents is None else list(parents)
        if not parents:
            raise ValueError(f"the levels of {blocks[0].name!r} are not nested in those of "
                             f"{blocks[1].name!r}" if len(blocks) > 1 else "a single block is not nested")
        D = self.depth = len(parents) + 1
        # up[i, k]: the levels of block i -> their ancestors in block k > i
        up = {(i, i + 1): LevelMap(parents[i], blocks[i + 1].m) for i in range(D - 1)}
        for i in range(D - 1):
            for k in range(i + 2, D):
                up[i, k] = up[i, k - 1].then(up[k - 1, k])
        self._up = up
        self._mq = [(b.m, b.q) for b in blocks[:D]]      # (levels, effects per level) of the chain
        self._rest_plans = {}
        super().__init__(blocks, XY, weights, reweighting, depth=D)

    def workspace(self):
        new = super().workspace()
        new._rest_plans = dict(self._rest_plans)        # a cache the copy may add to
        return new

    # -- cross-products of the chain --------------------------------------------------
    @classmethod
    def from_cross_products(cls, blocks, A11, A_r1, A_rr):
        raise NotImplementedError("the nested storage needs the chain's own cross-products; "
                                  "use DenseFactor.from_cross_products")

    def set_data(self, XY, weights=None):
        super().set_data(XY, weights)
        self._chain_cross(XY, self._weights(XY, weights))
        return self

    reweight_columns = False          # the chain's cross-products read [X y] as one array

    def reweight(self, XY, weights=None):
        super().reweight(XY, weights)
        self._chain_cross(np.asarray(XY, dtype=float), self._weights(XY, weights))
        return self

    @staticmethod
    def _weights(XY, weights):
        return np.ones(XY.shape[0]) if weights is None else np.asarray(weights, dtype=float)

    def _chain_cross(self, XY, w):
        """Cross-products of the chain: ``A_diag[k]`` (m_k, q_k, q_k; ``A_diag[0]`` is the lead's
        ``A11``), ``A_off[k, i]`` (m_i, q_k, q_i) for i < k (the only nonzero block of each level
        of i in block k's rows) and ``A_R[k]`` (r, m_k q_k, dense) for k >= 1 (``A_R[0]`` is the
        lead's sparse ``A_r1``)."""
        A_diag, A_off, A_R = [self.A11], {}, [None]
        for k in range(1, self.depth):
            bk = self.blocks[k]
            A_diag.append(block_cross(bk.X, bk.codes, bk.m, w))
            for i in range(k):
                bi = self.blocks[i]
                Xiw = bi.X * w[:, None]
                Aki = np.empty((bi.m, bk.q, bi.q))
                for a in range(bk.q):
                    for b in range(bi.q):
                        Aki[:, a, b] = np.bincount(bi.codes, weights=Xiw[:, b] * bk.X[:, a], minlength=bi.m)
                A_off[k, i] = Aki
            A_R.append(self._rest_cross(k, XY, w))
        self.A_diag, self.A_off, self.A_R = A_diag, A_off, A_R
        self._first_dest()

    def _rest_cross(self, k, XY, w):
        """``A_R[k]``: the dense remainder's rows against block k, (r, m_k q_k)."""
        bk, rz = self.blocks[k], self.rz
        m, q = bk.m, bk.q
        A = np.empty((self.r, m * q))
        Xw = bk.X * w[:, None]
        for j in range(self.p + 1):
            row = A[rz + j].reshape(m, q)
            for a in range(q):
                row[:, a] = np.bincount(bk.codes, weights=Xw[:, a] * XY[:, j], minlength=m)
        if rz:
            plan = self._rest_plans.get(k)
            if plan is None:                             # rest nonzeros -> (rest column, level of k)
                Zr = self._Zrest.tocoo()
                rows = np.repeat(Zr.row.astype(np.int64), q)
                comp = np.tile(np.arange(q), Zr.nnz)
                key = np.repeat(Zr.col.astype(np.int64), q) * (m * q) + bk.codes[rows] * q + comp
                plan = self._rest_plans[k] = (rows, np.repeat(Zr.data, q) * bk.X[rows, comp], key)
            rows, vals, key = plan
            A[:rz] = np.bincount(key, weights=w[rows] * vals, minlength=rz * m * q).reshape(rz, m * q)
        return A

    # -- per-theta factorization -------------------------------------------------------
    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        S = self._eliminate_first(lams)
        self._eliminate_chain(lams, S)
        self._factor_rest(S)
        self.lams = lams
        return self

    def _eliminate_chain(self, lams, S):
        """Factor the chain blocks after the first at ``lams``, and subtract from the Schur
        complement ``S`` of the dense remainder what they remove, ``sum_k P_k M_k^-1 P_k'``.

        Every result is bound anew (lists and dicts built here), so a workspace sharing the
        cross-products never sees another's factor.
        """
        D, r, up = self.depth, self.r, self._up
        lr = self.lam_rest
        Minv, logdet = [self.M1inv], 0.0
        U, K = {}, {}
        Q = [None]                                       # A_rk Lambda_k - sum_i Q_i K_ki, (r, m_k q_k)
        for k in range(1, D):
            lk = lams[k]
            m, q = self._mq[k]
            for i in range(k):
                Uki = sandwich(self.A_off[k, i], lk, lams[i])
                for j in range(i):
                    Uki -= up[j, i].sum(bmm(U[k, j], K[i, j]))
                U[k, i] = Uki
                K[k, i] = bmm(Minv[i], tr(Uki))
            Mk = sandwich(self.A_diag[k], lk, lk)
            if q == 1:
                Mk += 1.0
            else:
                for a in range(q):
                    Mk[:, a, a] += 1.0
            for i in range(k):
                Mk -= up[i, k].sum(bmm(U[k, i], K[k, i]))
            Mkinv, ld = spd_inv_logdet(Mk)
            Minv.append(Mkinv)
            logdet += ld
            Qk = rmul(self.A_R[k].reshape(r, m, q), lk).reshape(r, m * q)
            Qk -= self._first_times(K[k, 0], lams[0], k)
            for i in range(1, k):                        # (r, m_i, q_i) K_ki summed into block k
                QK = bmm(Q[i].reshape(r, -1, lams[i].shape[0]).transpose(1, 0, 2), K[k, i])
                Qk -= up[i, k].sum(QK).transpose(1, 0, 2).reshape(r, m * q)
            Q.append(Qk)
            P = Qk * lr[:, None] if isinstance(lr, np.ndarray) else np.asarray(lr.T @ Qk)
            if q == 1:
                T = P * Mkinv.reshape(1, m)
            else:                                        # P_k M_k^-1, level by level
                T = bmm(P.reshape(r, m, q).transpose(1, 0, 2), Mkinv).transpose(1, 0, 2).reshape(r, -1)
            S -= T @ P.T
        self.Minv, self.logdet_chain, self.U, self.K = Minv, logdet, U, K

    def _first_dest(self):
        """Where each entry of ``A_r1`` lands in ``A_r1 Lambda_1 K_k0`` summed into block k's
        columns (the entry's row and its level's ancestor), per k; kept while ``A_r1``'s
        structure is (the reweighting plan reuses it)."""
        A, r, q1 = self.A_r1, self.r, self.q1
        key = getattr(self, "_ar1_dest", None)
        if key is not None and key[0] is A.indices and key[1] == A.indices.size:
            return
        rows = np.repeat(np.arange(r, dtype=np.int64), np.diff(A.indptr))
        cols = A.indices.astype(np.int64)
        dest = {}
        for k in range(1, self.depth):
            m, q = self.blocks[k].m, self.blocks[k].q
            dest[k] = ((rows * (m * q) + self._up[0, k].idx[cols // q1] * q)[:, None]
                       + np.arange(q)).ravel()
        self._ar1_dest = (A.indices, A.indices.size, cols, dest)

    def _first_times(self, Kk0, lam1, k):
        """``A_r1 Lambda_1 K_k0`` summed into block k's columns, (r, m_k q_k): one bincount over
        the entries of ``A_r1`` (each level of block 0 has its one block at its ancestor)."""
        _, _, cols, dest = self._ar1_dest
        mk, qk = self._mq[k]
        if self.q1 == 1:
            Dk = (lam1[0, 0] * Kk0).reshape(-1, qk)
        else:
            Dk = lmul(lam1, Kk0).reshape(-1, qk)                 # Lambda_1 K_k0 per level
        Dc = np.take(Dk, cols, axis=0)
        vals = self.A_r1.data[:, None] * Dc if qk > 1 else self.A_r1.data * Dc[:, 0]
        return np.bincount(dest[k], weights=vals.ravel(), minlength=self.r * mk * qk).reshape(self.r, -1)

    @property
    def logdet_zz(self):
        """log |L_ZZ|^2 = log det(Lambda' Z' W Z Lambda + I)."""
        return self.logdet1 + self.logdet_chain + 2.0 * np.log(self.diag_rest[:self.rz]).sum()

    # -- the chain part of solves and inverses ---------------------------------------------
    def _chain_solve(self, c):
        """Solve the chain's system ``Omega_FF x = c``; ``c[k]`` is (m_k, q_k, ncol).

        Block LDL': down the chain ``z_k = c_k - sum_{i<k} U_ki y_i``, ``y_k = M_k^-1 z_k``
        (sums into the ancestors), then up ``x_k = y_k - sum_{j>k} K_jk x_j[anc_j]``.
        """
        D, up, U, K, Minv = self.depth, self._up, self.U, self.K, self.Minv
        y = []
        for k in range(D):
            z = c[k]
            for i in range(k):
                z = z - up[i, k].sum(bmm(U[k, i], y[i]))
            y.append(bmm(Minv[k], z))
        x = [None] * D
        for k in reversed(range(D)):
            xk = y[k]
            for j in range(k + 1, D):
                xk = xk - bmm(K[j, k], up[k, j].take(x[j]))
            x[k] = xk
        return x

    def _tree_inverse(self, k):
        """Columns of ``T = L^-1`` (L the unit lower factor of the chain) below block k's levels:
        ``T[j]`` (m_k, q_j, q_k) at the ancestor in block j > k; ``T_jk = -sum_{k<=i<j} K_ji' T_ik``."""
        T = {}
        for j in range(k + 1, self.depth):
            acc = -tr(self.K[j, k])
            for i in range(k + 1, j):
                acc = acc - bmm(tr(self._up[k, i].take(self.K[j, i])), T[i])
            T[j] = acc
        return T

    def _chain_diag(self):
        """Diagonal blocks of ``Omega_FF^-1`` per chain block: ``M_k^-1 + sum_{j>k} T_jk' M_j^-1 T_jk``."""
        out = []
        for k in range(self.depth):
            T = self._tree_inverse(k)
            d = self.Minv[k]
            for j, Tj in T.items():
                d = d + bmm(tr(Tj), bmm(self._up[k, j].take(self.Minv[j]), Tj))
            out.append(d)
        return out

    def _chain_rest(self, Kr):
        """The chain's rows of the system times ``Kr`` (the first rows of the rest), per block
        (m_k, q_k, ncol): ``Lambda_k' A_kR Kr``."""
        nr, ncol = Kr.shape
        if nr < self.r:                                  # zero rows rather than a column slice
            Kr = np.concatenate([Kr, np.zeros((self.r - nr, ncol))])
        F = [lmul(self.lam1.T, np.asarray(self._a1r @ Kr).reshape(self.m1, self.q1, ncol))]
        for k in range(1, self.depth):
            m, q = self._mq[k]
            F.append(lmul(self.lams[k].T, (self.A_R[k].T @ Kr).reshape(m, q, ncol)))
        return F

    def _rest_lam_cols(self, Linv, nr):
        """``Lambda_R Linv'`` for the first ``nr`` rest rows (``Linv`` is nr x nr)."""
        lr = self.lam_rest
        if isinstance(lr, np.ndarray):
            return (Linv * lr[:nr][None, :]).T
        return np.asarray(lr[:nr, :nr] @ Linv.T)

    def _rest_inverse(self, kk):
        """The pieces of the inverse that the leading ``kk`` rows of the dense factor give:
        ``E = Omega_FF^-1 Omega_FP L_P^-T`` per chain block, and ``L_P^-1``'s columns for each
        further block, shaped (kk, m, q)."""
        Linv = tri_inv(self.Lr[:kk, :kk])
        E = self._chain_solve(self._chain_rest(self._rest_lam_cols(Linv, kk)))
        cols, off = [], 0
        for b in self._rest_blocks:
            cols.append(Linv[:, off:off + b.nre].reshape(kk, b.m, b.q))
            off += b.nre
        return E, cols

    def _split(self, v):
        """A vector over the chain's random effects -> per block (m_k, q_k, 1), and the rest."""
        out, off = [], 0
        for m, q in self._mq:
            out.append(v[off:off + m * q].reshape(m, q, 1))
            off += m * q
        return out, v[off:]

    # -- the interface --------------------------------------------------------------------
    def solve(self):
        """Spherical modes ``u`` (all blocks, in block order) and fixed effects ``beta``."""
        r, rz, m1, q1 = self.r, self.rz, self.m1, self.q1
        v_rest = solve_last_row_t(self.Lr)
        t = self._apply_lam_rest(np.append(v_rest, 0.0))
        c = [self._apply_lam1T(self._a1y - self._a1r @ t).reshape(m1, q1, 1)]
        for k in range(1, self.depth):
            (m, q), A = self._mq[k], self.A_R[k]
            c.append(((A[r - 1] - t @ A).reshape(m, q) @ self.lams[k]).reshape(m, q, 1))
        x = self._chain_solve(c)
        return np.concatenate([xk.ravel() for xk in x] + [v_rest[:rz]]), v_rest[rz:]

    def condvar_u(self):
        """Diagonal blocks of ``(L_ZZ L_ZZ')^-1`` per block, as (m, q, q) arrays."""
        out = self._chain_diag()
        if self.rz:
            E, cols = self._rest_inverse(self.rz)
            out = [d + np.einsum("gir,gjr->gij", e, e) for d, e in zip(out, E)]
            out.extend(np.einsum("rgi,rgj->gij", c, c) for c in cols)
        return out

    def inverse_block_sums(self, k):
        """Sums over levels of the diagonal blocks of ``Omega_P^-1``, with the chain as the
        (sparse) front F: ``(Omega_P^-1)_FF = Omega_FF^-1 + E E'``, ``E = Omega_FF^-1 Omega_FP
        L_P^-T``, and ``(Omega_P^-1)_PP = L_P^-T L_P^-1`` (``L_P``: leading rows of ``Lr``)."""
        kk = self.rz + k
        out = [d.sum(axis=0) for d in self._chain_diag()]
        if kk == 0:
            return out
        E, cols = self._rest_inverse(kk)
        out = [s + level_gram(e) for s, e in zip(out, E)]
        out.extend(np.einsum("rgi,rgj->ij", c, c) for c in cols)
        return out

    def ztres(self, u, beta, lams):
        """``Z' W (y - X beta - Z Lambda u)`` per block, as (m, q) arrays (no n-sized work)."""
        D, rz, up = self.depth, self.rz, self._up
        uc, u_rest = self._split(u)
        b = [lmul(lam, uk) for uk, lam in zip(uc, lams)]             # Lambda_k u_k, (m_k, q_k, 1)
        b_rest = self._apply_lam_rest(np.concatenate([u_rest, np.zeros(self.p + 1)]))[:rz]
        c_r = np.concatenate([-b_rest, -np.asarray(beta, dtype=float), [1.0]])
        out = []
        for k in range(D):
            m, q = self._mq[k]
            if k == 0:
                w = (self._a1r @ c_r).reshape(m, q, 1)
            else:
                w = (c_r @ self.A_R[k]).reshape(m, q, 1)
            w -= bmm(self.A_diag[k], b[k])
            for j in range(k):                           # finer blocks: sums into level k
                w -= up[j, k].sum(bmm(self.A_off[k, j], b[j]))
            for j in range(k + 1, D):                    # coarser blocks: their ancestor's value
                w -= bmm(tr(self.A_off[j, k]), up[k, j].take(b[j]))
            out.append(w.reshape(m, q))
        if rz:
            wr = -(self._ar1 @ b[0].ravel())[:rz] + self.A_rr[:rz] @ c_r
            for k in range(1, D):
                wr -= self.A_R[k][:rz] @ b[k].ravel()
            off = 0
            for blk in self._rest_blocks:
                out.append(wr[off:off + blk.nre].reshape(blk.m, blk.q))
                off += blk.nre
        return out

    def solve_re(self, v):
        """Solve ``(Lambda' Z' W Z Lambda + I) x = v`` (all random effects in block order)."""
        v = np.asarray(v, dtype=float)
        rz, r = self.rz, self.r
        vc, v_rest = self._split(v)
        y = self._chain_solve(vc)
        if rz == 0:
            return np.concatenate([yk.ravel() for yk in y])
        full = np.zeros(r)
        full[:rz] = (self._ar1 @ self._apply_lam1(y[0].ravel()))[:rz]
        for k in range(1, self.depth):
            m, q = self._mq[k]
            full[:rz] += self.A_R[k][:rz] @ (y[k].reshape(m, q) @ self.lams[k].T).ravel()
        rhs = v_rest - self._lam_rest_T(full)[:rz]
        xr = linalg.cho_solve((self.Lr[:rz, :rz], True), rhs, check_finite=False)
        full[:] = 0.0
        full[:rz] = xr
        t = self._apply_lam_rest(full)
        c = [vc[0] - self._apply_lam1T(self._a1r @ t).reshape(self.m1, self.q1, 1)]
        for k in range(1, self.depth):
            m, q = self._mq[k]
            c.append(vc[k] - ((t @ self.A_R[k]).reshape(m, q) @ self.lams[k]).reshape(m, q, 1))
        x = self._chain_solve(c)
        return np.concatenate([xk.ravel() for xk in x] + [xr])

    def _joint_blocks(self):
        """Per level g of block 0, the joint block of ``Omega_FF^-1`` over g and its ancestors,
        (m1, qf, qf): ``sum_{j >= max(a, b)} T_ja' M_j^-1 T_jb`` at the ancestors in blocks a, b."""
        D, up = self.depth, self._up
        qs = [b.q for b in self.blocks[:D]]
        off = np.concatenate([[0], np.cumsum(qs)])
        to0 = [None] + [up[0, k] for k in range(1, D)]             # block 0 -> block k
        at = lambda X, k: X if k == 0 else to0[k].take(X)          # noqa: E731 - value at g's ancestor
        Ts = [self._tree_inverse(a) for a in range(D)]
        F = np.empty((self.m1, off[-1], off[-1]))
        for a in range(D):
            for b in range(a, D):
                blk = 0.0
                for j in range(b, D):
                    Mj = at(self.Minv[j], j)
                    Ta = None if j == a else at(Ts[a][j], a)
                    Tb = None if j == b else at(Ts[b][j], b)
                    MT = Mj if Tb is None else bmm(Mj, Tb)
                    blk = blk + (MT if Ta is None else bmm(tr(Ta), MT))
                F[:, off[a]:off[a + 1], off[b]:off[b + 1]] = blk
                if b > a:
                    F[:, off[b]:off[b + 1], off[a]:off[a + 1]] = tr(blk)
        return F

    def local_inverse(self):
        """Row-wise pieces of ``M^-1`` (see :meth:`Factor.local_inverse`): a row's random effects
        in the chain sit at its level g of block 0 and g's ancestors, whose joint block of
        ``Omega_FF^-1`` is known per g; the rest as in the crossed case, ``C = Omega_FF^-1 Omega_FR``."""
        D, rz, lams = self.depth, self.rz, self.lams
        chain = self.blocks[:D]
        g = chain[0].codes
        qs = [b.q for b in chain]
        cuts = np.cumsum(qs)[:-1]
        a = np.hstack([b.X @ lam for b, lam in zip(chain, lams)])           # (n, qf)
        Fl = self._joint_blocks()
        if rz == 0:
            rho = bmm(np.take(Fl, g, axis=0), a[:, :, None])[:, :, 0]
            return np.split(a, cuts, axis=1), np.split(rho, cuts, axis=1)
        P_list, c_list = [], []
        off = 0
        for b, lam in zip(self._rest_blocks, lams[D:]):
            P_list.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
            c_list.append(b.X @ lam)
            off += b.nre
        P, c = np.hstack(P_list), np.hstack(c_list)
        # the C-ordered lower factor is a Fortran upper one: the recursive inverse in place
        Ginv = np.array(self.Lr[:rz, :rz], order="C")
        if potri_upper(Ginv.T):
            raise np.linalg.LinAlgError("singular factor in local_inverse")
        G = np.tril(Ginv) + np.tril(Ginv, -1).T                    # S^-1 (rest random effects)
        Cs = self._chain_solve(self._chain_rest(self._rest_lam_cols(np.eye(rz), rz)))
        C = np.concatenate([Ck.reshape(-1, rz) for Ck in Cs])
        KK = C @ G                                                 # (nF, rz)
        fidx, base = [], 0                                         # (m1, qf): g's chain positions
        for k, b in enumerate(chain):
            lev = np.arange(self.m1) if k == 0 else self._up[0, k].idx
            fidx.append(base + lev[:, None] * b.q + np.arange(b.q)[None, :])
            base += b.nre
        fidx = np.hstack(fidx)
        J = np.einsum("gar,gbr->gab", KK[fidx], C[fidx])
        fi = fidx[g]                                               # (n, qf)
        KP = KK[fi[:, :, None], P[:, None, :]]                     # (n, qf, k)
        GPP = G[P[:, :, None], P[:, None, :]]                      # (n, k, k)
        rho = bmm(np.take(Fl + J, g, axis=0), a[:, :, None])[:, :, 0] - np.einsum("iak,ik->ia", KP, c)
        rhor = np.einsum("ikl,il->ik", GPP, c) - np.einsum("iak,ia->ik", KP, a)
        t_out, rho_out = np.split(a, cuts, axis=1), np.split(rho, cuts, axis=1)
        off = 0
        for b, cb in zip(self._rest_blocks, c_list):
            t_out.append(cb)
            rho_out.append(rhor[:, off:off + b.q])
            off += b.q
        return t_out, rho_out
