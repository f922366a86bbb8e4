"""Dense storage for small systems: every random effect, X and y in one dense factor.

For a model with few random effects (sleepstudy's ``(Days | Subject)``: 36, Penicillin's crossed
intercepts: 30) the whole of ``Lambda' [Z X y]' W [Z X y] Lambda + I_Z`` has order
``N = nre + p + 1`` of a few dozen.  One LAPACK Cholesky factorization of it costs a few
microseconds; the structured storages reach the same numbers through stacks of per-level blocks
and Schur complements whose fixed cost per call (dozens of NumPy calls) dominates such small fits.
Here an evaluation is one scaling by ``Lambda`` (two small matrix products), one ``potrf``, and
the pieces of the gradient are one ``potri`` and one matrix-vector product.

Only for small N: the work grows as N^3 (:data:`SMALL_ORDER` bounds it).  The cross-products
are formed once (:meth:`SmallDenseFactor.set_data`); :meth:`SmallDenseFactor.with_response`
gives a factor for a new response on the same design, recomputing only the response's row.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg, sparse

from ._stacks import dense_Z, solve_lower_t
from .base import Factor

__all__ = ["SmallDenseFactor", "SMALL_ORDER", "small_dense_fits"]

#: largest order ``nre + p + 1`` held densely (measured: below it one dense factorization
#: beats the structured storages on evaluation time; above it its N^3 work does not)
SMALL_ORDER = 64


_potrf, _trtri = linalg.lapack.dpotrf, linalg.lapack.dtrtri

#: largest n x nre for a dense Z when forming the cross-products (else sparse)
DENSE_Z_MAX = 4_000_000


def small_dense_fits(blocks, p):
    """Whether :class:`SmallDenseFactor` takes a model with these blocks and ``p`` fixed effects."""
    return sum(b.nre for b in blocks) + p + 1 <= SMALL_ORDER


def _tri_inv(L):
    """``L^-1`` of a lower-triangular ``L`` whose strict upper triangle is 0 (dtrtri writes the
    lower triangle only)."""
    if L.shape[0] == 0:                          # LAPACK rejects empty systems (no fixed effects)
        return np.zeros((0, 0))
    R, info = _trtri(L, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return R


def _potri(L):
    """``(L L')^-1`` (full symmetric) from a lower Cholesky factor ``L``."""
    if L.shape[0] == 0:
        return np.zeros((0, 0))
    inv, info = linalg.lapack.dpotri(L, lower=1)
    if info:
        raise np.linalg.LinAlgError("singular triangular factor")
    return np.tril(inv) + np.tril(inv, -1).T


class SmallDenseFactor(Factor):
    """Factor of ``Lambda' [Z X y]' W [Z X y] Lambda + I_Z`` held as one dense matrix.

    ``SmallDenseFactor(blocks, XY, weights=None)``: any number of blocks (crossed or nested);
    see :class:`~mlmext.linalg.base.Factor` for the interface.  ``Lr`` is the whole factor
    (``rz`` = the number of random effects), so everything the base class reads off ``Lr``
    (``logdet_xx``, ``r2``, ``cov_beta_unscaled``) applies as it is.
    """

    def __init__(self, blocks, XY, weights=None):
        self.blocks = list(blocks)
        self.p = XY.shape[1] - 1
        nres = [b.nre for b in self.blocks]
        self.rz = sum(nres)
        self.r = self.rz + self.p + 1
        self._offsets = [sum(nres[:i]) for i in range(len(nres))]
        # positions of each block template's lower triangle in the (nre x nre) Lambda: entry
        # (i, j) of block b at (off_b + g q + i, off_b + g q + j) for every level g; and the
        # theta entry there (-1: a structural zero of a template holding several terms):
        # d Lambda / d theta_k is 1 at its positions
        rows, cols, vals, th, base = [], [], [], [], 0
        for b, off in zip(self.blocks, self._offsets):
            q = b.q
            tri = [(i, j) for i in range(q) for j in range(i + 1)]
            ii, jj = np.array(tri, dtype=np.int64).T
            g = np.arange(b.m)[:, None] * q + off
            rows.append((g + ii).ravel())
            cols.append((g + jj).ravel())
            vals.append(np.broadcast_to(base + ii * q + jj, (b.m, ii.size)).ravel())
            tmap = dict(zip(zip(b.t_rows.tolist(), b.t_cols.tolist()), b.t_idx.tolist()))
            th.append(np.broadcast_to(np.array([tmap.get(ij, -1) for ij in tri], dtype=np.int64),
                                      (b.m, len(tri))).ravel())
            base += q * q
        cat = (lambda a: a[0]) if len(rows) == 1 else np.concatenate
        self._lam_pos = (cat(rows), cat(cols))
        self._lam_val = cat(vals)
        th = cat(th)
        keep = th >= 0
        self._dpos = (self._lam_pos[0][keep], self._lam_pos[1][keep], th[keep])
        self.ntheta = int(th.max()) + 1 if keep.any() else 0
        self.set_data(XY, weights)

    # -- data and theta ---------------------------------------------------------------
    def _design_Z(self, n):
        """The random-effects model matrix: dense for small n (one BLAS product), else sparse."""
        if n * self.rz <= DENSE_Z_MAX:
            return np.hstack([dense_Z(b) for b in self.blocks])
        return sparse.hstack([b.Z() for b in self.blocks], format="csc")

    def set_data(self, XY, weights=None):
        """The cross-products ``A = [Z X y]' W [Z X y]`` (order N)."""
        XY = np.asarray(XY, dtype=float)
        if XY.ndim != 2 or XY.shape[1] != self.p + 1:
            raise ValueError(f"XY must have {self.p + 1} columns; got shape {XY.shape}")
        n = XY.shape[0]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        Z = self._design_Z(n)
        WZ = Z.multiply(w[:, None]).tocsc() if sparse.issparse(Z) else Z * w[:, None]
        WXY = XY * w[:, None]
        rz = self.rz
        A = np.empty((self.r, self.r))
        ZZ = WZ.T @ Z
        A[:rz, :rz] = ZZ.toarray() if sparse.issparse(ZZ) else ZZ
        A[:rz, rz:] = np.asarray(WZ.T @ XY)
        A[rz:, :rz] = A[:rz, rz:].T
        A[rz:, rz:] = XY.T @ WXY
        self.A = A
        self._Zw, self._xy = (Z, w), XY          # for a new response (with_response)
        self._patterns = self._dense_patterns()  # shared by workspaces and new responses
        return self

    def with_response(self, y):
        """A factor over the same design and weights for the response ``y`` (the column of
        ``[X y]`` after the offset): only the response's row and column of ``A`` change."""
        Z, w = self._Zw
        y = np.asarray(y, dtype=float)
        new = self.workspace()
        A = self.A.copy()
        wy = w * y
        rz, p = self.rz, self.p
        col = np.empty(self.r)
        col[:rz] = np.asarray(Z.T @ wy).ravel()
        XY = self._xy.copy()
        XY[:, p] = y
        col[rz:] = XY.T @ wy
        A[:, -1] = col
        A[-1, :] = col
        new.A, new._xy = A, XY
        return new

    def _lam_matrix(self, lams):
        """The (nre x nre) Lambda of the block templates ``lams``."""
        vals = np.concatenate([lam.ravel() for lam in lams])[self._lam_val] \
            if len(lams) > 1 else lams[0].ravel()[self._lam_val]
        Lam = np.zeros((self.rz, self.rz))
        Lam[self._lam_pos] = vals
        return Lam

    def update(self, lams):
        """Factor for the block templates ``lams`` (from ``design.lambdas(theta)``)."""
        Lam = self._lam_matrix(lams)
        rz, r = self.rz, self.r
        A = self.A
        # potrf reads the lower triangle only: [Lambda' A_ZZ Lambda, .; A_rZ Lambda, A_rr]
        C = A[:, :rz] @ Lam                               # [A_ZZ; A_rZ] Lambda (r x rz)
        Om = np.empty((r, r), order="F")                  # LAPACK's order: no copy in potrf
        Om[:rz, :rz] = Lam.T @ C[:rz]
        Om[rz:, :rz] = C[rz:]
        Om[rz:, rz:] = A[rz:, rz:]
        Om.T.reshape(-1)[:rz * (r + 1):r + 1] += 1.0     # + I_Z (a view of the diagonal)
        c, info = _potrf(Om, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"{info}-th leading minor is not positive definite")
        d = np.log(np.diagonal(c))           # (a NaN stays NaN: OpenBLAS's potrf lets one through)
        if not np.isfinite(d.sum()):
            raise np.linalg.LinAlgError("the system has non-finite values")
        self.Lr, self.lams, self._Lam, self._C, self._logd = c, lams, Lam, C, d
        return self

    # -- the profiled objective -------------------------------------------------------
    def _logdiag(self):
        d = self._logd
        if d is None:
            d = self._logd = np.log(np.diagonal(self.Lr))
        return d

    @property
    def logdet_zz(self):
        return 2.0 * float(self._logdiag()[:self.rz].sum())

    @property
    def logdet_xx(self):
        return 2.0 * float(self._logdiag()[self.rz:self.rz + self.p].sum())

    @property
    def M1(self):
        """``Lambda_1' A_11 Lambda_1 + I`` of the first block, as the other storages give it."""
        b, lam = self.blocks[0], self.lams[0]
        A11 = self.A[:b.nre, :b.nre].reshape(b.m, b.q, b.m, b.q)
        g = np.arange(b.m)
        M = lam.T @ A11[g, :, g, :] @ lam + np.eye(b.q)
        return M[:, 0, 0] if b.q == 1 else M

    def cov_beta_unscaled(self):
        rz, p = self.rz, self.p
        R = _tri_inv(self.Lr[rz:rz + p, rz:rz + p])
        return R.T @ R

    # -- solutions and pieces of the inverse ----------------------------------------------
    def solve(self):
        """Spherical modes ``u`` and fixed effects ``beta``: ``L_11' [u; beta] = l_y``."""
        x = solve_lower_t(self.Lr[:-1, :-1], self.Lr[-1, :-1])
        return x[:self.rz], x[self.rz:]

    def _zz_inverse(self):
        return _potri(self.Lr[:self.rz, :self.rz])

    def _diag_blocks(self, Minv):
        """The level-diagonal (q x q) blocks of an (nre x nre) matrix, one (m, q, q) per block."""
        out = []
        for b, off in zip(self.blocks, self._offsets):
            B = Minv[off:off + b.nre, off:off + b.nre].reshape(b.m, b.q, b.m, b.q)
            g = np.arange(b.m)
            out.append(B[g, :, g, :])
        return out

    def solve_re(self, v):
        L = self.Lr[:self.rz, :self.rz]
        return linalg.cho_solve((L, True), np.asarray(v, dtype=float), check_finite=False)

    def condvar_u(self):
        return self._diag_blocks(self._zz_inverse())

    def inverse_block_sums(self, k):
        """Sums over levels of the diagonal blocks of ``Omega_P^-1`` (``P``: the random effects
        and the first ``k`` fixed effects): with ``R = L_P^-1``, ``Omega_P^-1 = R' R`` and the
        block of level g is ``R_g' R_g`` (R_g: its q columns), so each block's sum is one
        product of R's columns for that block, rows and levels stacked."""
        P = self.rz + k
        R = _tri_inv(self.Lr[:P, :P])
        out = []                  # (Lr's upper triangle is 0, and dtrtri writes the lower only)
        for b, off in zip(self.blocks, self._offsets):
            Rb = np.ascontiguousarray(R[:, off:off + b.nre]).reshape(P * b.m, b.q)
            out.append(Rb.T @ Rb)
        return out

    def ztres(self, u, beta, lams):
        """``Z' W (y - X beta - Z Lambda u)`` per block: ``A_Z. [-Lambda u; -beta; 1]``."""
        Lam = self._Lam if lams is self.lams else self._lam_matrix(lams)
        c = np.concatenate([-(Lam @ np.asarray(u, dtype=float)), -np.asarray(beta, dtype=float), [1.0]])
        v = self.A[:self.rz] @ c
        return [v[off:off + b.nre].reshape(b.m, b.q) for b, off in zip(self.blocks, self._offsets)]

    def local_inverse(self):
        Minv = self._zz_inverse()
        ts, idx = [], []
        for b, lam, off in zip(self.blocks, self.lams, self._offsets):
            ts.append(b.X @ lam)                                  # row i: (Lambda' x_i)'
            idx.append(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :])
        rhos = []
        for ib in range(len(self.blocks)):
            rho = 0.0
            for jb in range(len(self.blocks)):
                blk = Minv[idx[ib][:, :, None], idx[jb][:, None, :]]   # (n, q_b, q_b')
                rho = rho + np.einsum("iab,ib->ia", blk, ts[jb])
            rhos.append(rho)
        return ts, rhos

    # -- exact derivatives in theta (the dense storage has every piece at hand) ------------
    def derivatives(self, k):
        """First and second derivatives in theta of ``log det Omega_Q`` and of ``r2`` at the
        current theta (``Q``: the random effects and the first ``k`` fixed effects; REML's
        log-determinant has ``k = p``, ML's ``k = 0``).

        With ``E_k = d Lambda / d theta_k`` (a 0/1 pattern: Lambda is linear in theta),
        ``B = A Lambda`` and ``Omega_k = E_k' B + B' E_k``:

        * ``d log det Omega_Q = tr(Omega_Q^-1 Omega_k)``, and its derivative
          ``2 tr(Omega_Q^-1 E_k' A E_l) - tr(Omega_Q^-1 Omega_k Omega_Q^-1 Omega_l)``;
        * with ``x = [u; beta]`` and ``res = A_Py - B x``: ``d r2 = -2 res' E_k x`` and
          ``d2 r2 = -2 v_k' Omega_P^-1 v_l + 2 (E_k x)' A (E_l x)``,
          ``v_k = E_k' res - B' E_k x``.

        Returns ``(d logdet, d2 logdet, d r2, d2 r2)``: arrays (K,), (K, K), (K,), (K, K).
        """
        rz, p = self.rz, self.p
        P, Q = rz + p, rz + k
        EZ, ind, AA = self._patterns
        rows, cols, _ = self._dpos
        A = self.A
        App = A[:P, :P]
        B = self._b_matrix(P)
        x = solve_lower_t(self.Lr[:-1, :-1], self.Lr[-1, :-1])     # [u; beta]
        u = x[:rz]
        res = A[:P, -1] - B @ x
        K = EZ.shape[0]
        Ex = np.zeros((P, K))
        Ex[:rz] = (EZ @ u).T                                 # column k: E_k x
        V = -(B.T @ Ex)
        V[:rz] += (np.swapaxes(EZ, 1, 2) @ res[:rz]).T       # + E_k' res
        Rp = _tri_inv(self.Lr[:P, :P])
        Oinv = Rp.T @ Rp                                     # Omega_P^-1
        dr2 = -2.0 * (res @ Ex)
        d2r2 = -2.0 * (V.T @ Oinv @ V) + 2.0 * (Ex.T @ App @ Ex)
        if Q == P:
            OQ = Oinv
        else:
            RQ = _tri_inv(self.Lr[:Q, :Q])
            OQ = RQ.T @ RQ
        T = np.zeros((K, Q, Q))
        T[:, :rz, :] = np.swapaxes(EZ, 1, 2) @ B[:rz, :Q]    # T_k = E_k' B
        G = OQ @ (T + np.swapaxes(T, 1, 2))                  # Omega_Q^-1 Omega_k
        dld = np.trace(G, axis1=1, axis2=2)
        trGG = G.reshape(K, -1) @ np.swapaxes(G, 1, 2).reshape(K, -1).T
        S = ind.T @ (OQ[cols[:, None], cols[None, :]] * AA) @ ind
        return dld, 2.0 * S - trGG, dr2, d2r2

    def _b_matrix(self, P):
        """``B = A_PP diag(Lambda, I)``: its random-effects columns are ``A_PZ Lambda``, which
        :meth:`update` formed."""
        B = self.A[:P, :P].copy()
        B[:, :self.rz] = self._C[:P]
        return B

    def first_derivatives(self, k):
        """``(d log det Omega_Q, d r2)`` in theta at the current theta (:meth:`derivatives`'s
        first derivatives alone): ``2 sum_(r,c) (B Omega_Q^-1)_rc`` and ``-2 sum_(r,c) res_r x_c``
        over the positions (r, c) of each theta entry.  Exact at a zero diagonal too.

        The positions' rows are random effects, so only B's first ``rz`` rows enter:
        ``B_Z = [A_ZZ Lambda, A_ZX]`` (:meth:`update` formed ``A_ZZ Lambda``)."""
        rz, p = self.rz, self.p
        Q = rz + k
        rows, cols, th = self._dpos
        A, C, Lr = self.A, self._C, self.Lr
        x = solve_lower_t(Lr[:-1, :-1], Lr[-1, :-1])     # [u; beta]
        v = np.empty(p + 1)
        v[:p] = -x[rz:]
        v[p] = 1.0
        res = A[:rz, rz:] @ v - C[:rz] @ x[:rz]           # (A_Py - B x) on the random effects
        K = self.ntheta
        dr2 = -2.0 * np.bincount(th, weights=res[rows] * x[cols], minlength=K)
        RQ = _tri_inv(Lr[:Q, :Q])
        Oinv = RQ.T @ RQ
        BO = C[:rz] @ Oinv[:rz] if k == 0 else C[:rz] @ Oinv[:rz] + A[:rz, rz:Q] @ Oinv[rz:]
        dld = 2.0 * np.bincount(th, weights=BO[rows, cols], minlength=K)
        return dld, dr2

    def cov_beta_derivatives(self):
        """``(Omega_P^-1)_XX`` (``vcov(beta) / sigma^2``) and its derivatives in theta, one (p, p)
        array per theta entry: ``-[Omega_P^-1 Omega_k Omega_P^-1]_XX`` with ``Omega_k = E_k' B +
        B' E_k``; with ``W = Omega_P^-1[:, X]`` that is ``-(T_k + T_k')``, ``T_k = (E_k W_Z)'
        (B W)_Z`` (``E_k`` lives on the random effects' rows)."""
        rz, p = self.rz, self.p
        P = rz + p
        Rp = _tri_inv(self.Lr[:P, :P])                    # Omega_P^-1 = Rp' Rp
        W = Rp.T @ Rp[:, rz:]
        BW = self._b_matrix(P) @ W
        T = np.swapaxes(self._patterns[0] @ W[:rz], 1, 2) @ BW[:rz]
        return W[rz:], [-(Tk + Tk.T) for Tk in T]

    def _dense_patterns(self):
        """``E_k`` on the random effects as a dense (K, nre, nre) stack, the (positions x K)
        indicator of each position's theta entry, and ``A`` at pairs of the positions' rows
        (random effects only: the same for a new response)."""
        rows, cols, th = self._dpos
        EZ = np.zeros((self.ntheta, self.rz, self.rz))
        EZ[th, rows, cols] = 1.0
        ind = np.zeros((th.size, self.ntheta))
        ind[np.arange(th.size), th] = 1.0
        return EZ, ind, self.A[rows[:, None], rows[None, :]]
