"""The profiled LMM deviance of a small design with one grouping factor, level by level, with
its exact gradient and Hessian in theta.

With one random-effects block (sleepstudy's ``(Days | Subject)``: m = 18 levels of q = 2
effects) ``Omega = Lambda' A Lambda + I`` is block-diagonal in the levels plus the fixed
effects and the response.  With ``A_g = Z_g' W Z_g``, ``C_g = Z_g' W [X y]`` and ``lambda`` the
(q x q) template, the level blocks ``M_g = lambda' A_g lambda + I`` and the Schur complement of
``[X y]``

    S = [X y]' W [X y] - sum_g C_g' G_g C_g,      G_g = lambda M_g^-1 lambda',

give the criterion: ``log det Omega_Z = sum_g log det M_g``, and with ``S = L L'`` the fixed
effects' log-determinant and the penalized residual sum of squares read off ``L``.  Its
derivatives (``E_k = d lambda / d theta_k``, one 1 at the template position (i_k, j_k);
``N = lambda M^-1``, ``Q = A N``, ``P = I - G A``, ``W = A G A``):

* ``d log det M_g = 2 Q[i_k, j_k]`` and ``dG = P E_k N' + N E_k' P'``, so
  ``dS_k = -(T_k + T_k')`` with ``T_k = sum_g (C_g' P_g)[:, i_k] (N_g' C_g)[j_k, :]``;
* ``d2 log det M_g = 2 ((A - W)[i_k, i_l] M^-1[j_k, j_l] - Q[i_k, j_l] Q[i_l, j_k])``, and for
  a symmetric ``D_g = C_g Pi C_g'``, ``tr(D d2G_kl) / 2 = (P'DP)[i_k, i_l] M^-1[j_k, j_l]
  - (N'DN)[j_k, j_l] (A - W)[i_k, i_l] - (N'DP)[j_k, i_l] Q[i_k, j_l] - (k <-> l)'s last``.

The criterion is ``sum_g log det M_g + (c - nu) log det S_XX + nu log det S`` plus a constant
(``c`` = 1 for REML, 0 for ML; ``nu = n - p`` or ``n``), so with ``Pi = nu S^-1 + (c - nu)
S_XX^-1`` (padded) its S part has gradient ``tr(Pi dS_k)`` and Hessian ``tr(Pi d2S_kl) -
nu tr(S^-1 dS_k S^-1 dS_l) - (c - nu) tr(S_XX^-1 dS_k S_XX^-1 dS_l)``.  Sums over the levels
of products of two level matrices at index pairs are one (q^2 x m) (m x q^2) product each.

Each evaluation is a few dozen NumPy calls on (m, q, q) stacks, none of order n and none on
the (m q)-order dense system: a quarter of the dense storage's cost for the criterion and
gradient, a fifth for the Hessian.  :class:`OneBlockLevels` is an evaluator only: the fit's
state at the end (``beta``, ``u``, ``cov_beta``) comes from the dense factor it was built from.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy.linalg import lapack

__all__ = ["OneBlockLevels"]

_LOG2PI = np.log(2.0 * np.pi)
_potrf, _trtri = lapack.dpotrf, lapack.dtrtri


def _stacked_cholesky(S, ok):
    """Lower Cholesky factors of the stack ``S`` (k, r, r); a matrix that is not positive
    definite gets the identity and ``ok`` False (set in place)."""
    try:
        return np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        pass
    L = np.empty_like(S)
    for b in range(S.shape[0]):
        try:
            L[b] = np.linalg.cholesky(S[b])
        except np.linalg.LinAlgError:
            ok[b] = False
            L[b] = np.eye(S.shape[1])
    return L


def _spd_stack(M, q):
    """Inverses (flat, (m, q q)), log-determinants (m,) and positive definiteness (m,) of the
    level blocks ``M`` (flat); a block that is not (numerically) positive definite, or has a
    NaN, is replaced by the identity."""
    if q == 1:
        det = M[:, 0]
        ok = det > 0
        if not ok.all():
            det = np.where(ok, det, 1.0)
        return 1.0 / det[:, None], np.log(det), ok
    if q == 2:                       # closed form: a stacked inverse costs ~4x the arithmetic
        det = _det2(M)
        ok = (det > 0) & (M[:, 0] > 0)
        if not ok.all():
            det = np.where(ok, det, 1.0)
            M = np.where(ok[:, None], M, np.eye(2).ravel())
        return _inv2(M, det), np.log(det), ok
    M3 = M.reshape(-1, q, q)
    ok = np.ones(M3.shape[0], dtype=bool)
    L = _stacked_cholesky(M3, ok)
    Li = np.linalg.inv(L)
    Mi = np.swapaxes(Li, 1, 2) @ Li
    return Mi.reshape(-1, q * q), 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1), ok


def _spd_inverse(M, q):
    """Inverses (flat, (m, q q)) and log-determinants (m,) of the level blocks ``M`` (flat);
    None where one is not (numerically) positive definite."""
    if q == 2:      # (every evaluation: _spd_stack's test by one minimum, a NaN failing it)
        det = _det2(M)
        if not _min(np.minimum(det, M[:, 0])) > 0:
            return None
        return _inv2(M, det), np.log(det)
    Mi, ld, ok = _spd_stack(M, q)
    return (Mi, ld) if ok.all() else None


_min, _sum = np.minimum.reduce, np.add.reduce     # (the ndarray methods' Python wrappers: ~1 us)


#: the adjugate of a symmetric 2 x 2 matrix, flat: [a, b, b, c] -> [c, -b, -b, a]
_ADJ2 = np.array([[0.0, 0, 0, 1], [0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]])


def _det2(M):
    """Determinants of the symmetric 2 x 2 blocks ``M`` (flat, (m, 4))."""
    return M[:, 0] * M[:, 3] - M[:, 1] * M[:, 1]


def _inv2(M, det):
    """Inverses of the symmetric 2 x 2 blocks ``M`` (flat) with determinants ``det``."""
    return (M @ _ADJ2) / det[:, None]


#: largest levels x rows for the level sums as one product with a dense 0/1 indicator
#: (kept for new responses); larger designs sum by ``bincount``
INDICATOR_MAX = 1_000_000


def _level_sums(codes, m, F, ind=None):
    """Sums of the rows of ``F`` (n, k) by level: (m, k)."""
    if ind is not None:
        return ind @ F
    return np.column_stack([np.bincount(codes, weights=F[:, j], minlength=m)
                            for j in range(F.shape[1])]) if F.shape[1] else np.zeros((m, 0))


def _read_only(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=64)
def _layout(q, p, K, t_idx, t_rows, t_cols):
    """The index arrays of a template (read-only, shared by every evaluator of that layout):
    theta -> the flat template, and the flat positions of the gradient's and Hessian's
    entries in the level sums of products."""
    qq = q * q
    t_idx, t_rows, t_cols = (np.array(t, dtype=np.int64) for t in (t_idx, t_rows, t_cols))
    Eb = np.zeros((K, qq))                        # theta -> the flat template
    Eb[t_idx, t_rows * q + t_cols] = 1.0
    ik, jk = np.empty(K, dtype=np.int64), np.empty(K, dtype=np.int64)
    ik[t_idx], jk[t_idx] = t_rows, t_cols
    # flat positions in the (q^2 x q^2) level sums of products of the Hessian
    h1 = (ik[:, None] * q + ik[None, :]) * qq + jk[:, None] * q + jk[None, :]
    h2 = (jk[:, None] * q + ik[None, :]) * qq + ik[:, None] * q + jk[None, :]
    qjk = ik * q + jk
    # (Li T_k Li')[a, b] in the (2q (p+1))-square level sum of products of Y (see _first)
    r1 = p + 1
    ar = np.arange(r1)
    tk = (((q + ik)[:, None, None] * r1 + ar[None, :, None]) * (2 * q * r1)
          + jk[:, None, None] * r1 + ar[None, None, :])
    return _read_only(Eb, h1, h2, qjk, tk, np.eye(q).ravel())


class OneBlockLevels:
    """Criterion, gradient and Hessian in theta of an LMM with one random-effects block.

    Made by :meth:`from_rows` (the model's rows) for a design, then :meth:`criterion` for
    REML or ML; :meth:`with_response` gives the same design with another response.

    :meth:`value`, :meth:`value_and_grad` and :meth:`value_grad_hess` keep the pieces of
    their last theta, so a Hessian asked for at the point whose gradient was just computed
    costs only its own part; :meth:`estimates` gives the fit's state at a theta.
    """

    def __init__(self, blk, Ag, Cg, V, ntheta, rows=None):
        m, q = Ag.shape[0], Ag.shape[1]
        p = Cg.shape[2] - 1
        self.blk, self.m, self.q, self.p = blk, m, q, p
        self.Ag, self.Cg, self.V = Ag, Cg, V
        self.Af = Ag.reshape(m, q * q)
        self.Cf = Cg.reshape(m * q, p + 1)
        self._rows = rows
        # what depends on the design alone, computed on first use (moment starts): one dict
        # for this evaluator and its copies for a criterion or another response
        self._shared = {}
        self.K = int(ntheta)
        (self._Eb, self._h1, self._h2, self._qjk, self._tk,
         self._I) = _layout(q, p, self.K, tuple(blk.t_idx.tolist()), tuple(blk.t_rows.tolist()),
                            tuple(blk.t_cols.tolist()))
        self.criterion(True, 0.0, 0.0)

    @classmethod
    def from_rows(cls, blk, XY, weights, ntheta):
        """The level cross-products of block ``blk`` and ``XY = [X, y - offset]``."""
        X, codes, m = blk.X, blk.codes, blk.m
        n, q = X.shape
        w = np.asarray(weights, dtype=float)
        Wq = X * w[:, None]
        ind = None
        if n * m <= INDICATOR_MAX:
            ind = np.zeros((m, n))
            ind[codes, np.arange(n)] = 1.0
        F = np.concatenate([(Wq[:, :, None] * X[:, None, :]).reshape(n, q * q),
                            (Wq[:, :, None] * XY[:, None, :]).reshape(n, -1)], axis=1)
        L = _level_sums(codes, m, F, ind)
        Ag = np.ascontiguousarray(L[:, :q * q]).reshape(m, q, q)
        Cg = np.ascontiguousarray(L[:, q * q:]).reshape(m, q, -1)
        V = XY.T @ (XY * w[:, None])
        return cls(blk, Ag, Cg, V, ntheta, rows=(codes, ind, Wq, XY, w))

    def with_response(self, y):
        """The same design with the response ``y`` (minus the offset): only the response's
        column of ``C_g`` and of ``[X y]' W [X y]`` changes."""
        codes, ind, Wq, XY, w = self._rows
        p = self.p
        Cg = self.Cg.copy()
        Cg[:, :, p] = _level_sums(codes, self.m, Wq * y[:, None], ind)
        XY = XY.copy()
        XY[:, p] = y
        col = XY.T @ (w * y)
        V = self.V.copy()
        V[:, p] = col
        V[p, :] = col
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.Cg, new.Cf, new.V = Cg, Cg.reshape(-1, p + 1), V
        new._rows = (codes, ind, Wq, XY, w)
        new._key, new._c = None, None
        return new

    def criterion(self, reml, n_obs, logw):
        """This design's REML criterion (or -2 log-likelihood), ``n_obs`` observations with
        positive weight and ``logw`` the sum of their log weights: a new evaluator (its own
        pieces) sharing the cross-products."""
        new = self if not hasattr(self, "nu") else object.__new__(type(self))
        if new is not self:
            new.__dict__.update(self.__dict__)
        p = self.p
        new.reml = bool(reml)
        new.n_obs, new.logw = float(n_obs), float(logw)
        new.nu = new.n_obs - (p if reml else 0)
        # Pi = Li' diag(w) Li (Li = L^-1): nu S^-1 + (c - nu) S_XX^-1, padded
        new._w = np.full(p + 1, 1.0 if reml else 0.0)
        new._w[p] = new.nu
        # the weights of nu tr(S^-1 dS_k S^-1 dS_l) + (c - nu) tr(S_XX^-1 dS_k S_XX^-1 dS_l)
        # over the entries of Li dS_k Li' (c on the fixed effects' block, else nu)
        w2 = np.full((p + 1, p + 1), new.nu)
        w2[:p, :p] = 1.0 if reml else 0.0
        new._w2 = w2.ravel()
        new._key, new._c = None, None
        return new

    # -- the pieces at theta ------------------------------------------------------------
    def _core(self, theta):
        """The criterion's pieces at theta (None where the system is indefinite)."""
        key = theta.tobytes()
        if key == self._key:
            return self._c
        m, q, p = self.m, self.q, self.p
        lam = (theta @ self._Eb).reshape(q, q)
        Al = self.Ag @ lam                                       # A_g lambda
        # lambda' A_g lambda + I; with B_g = lambda' C_g and N_g' C_g = M_g^-1 B_g, the Schur
        # complement's sum is sum_g B_g' M_g^-1 B_g (no G_g = lambda M_g^-1 lambda' formed:
        # the gradient reads Al and N_g' C_g too)
        inv = _spd_inverse((lam.T @ Al).reshape(m, q * q) + self._I, q)
        c = None
        if inv is not None:
            Mi, ldm = inv
            B = lam.T @ self.Cg                                  # (m, q, p+1)
            Vv = Mi.reshape(m, q, q) @ B                         # N_g' C_g
            S = self.V - B.reshape(-1, p + 1).T @ Vv.reshape(-1, p + 1)
            Ls, info = _potrf(S, lower=1)
            if info == 0:
                # (the p + 1 diagonal entries in Python floats: NumPy calls cost more; potrf's
                # success means each is positive, or NaN or inf that the test below rejects)
                d = Ls.diagonal().tolist()
                r2 = d[p] * d[p]
                ldx = 0.0
                for v in d[:p]:
                    ldx += math.log(v)
                if math.isfinite(ldx) and math.isfinite(r2) and r2 > 0.0:
                    nu = self.nu
                    f = float(_sum(ldm)) + (2.0 * ldx if self.reml else 0.0) \
                        + nu * (1.0 + _LOG2PI + math.log(r2 / nu)) - self.logw
                    c = {"f": f, "lam": lam, "Mi": Mi, "Ls": Ls, "Al": Al, "Vv": Vv}
        self._key, self._c = key, c
        return c

    def value(self, theta):
        """The criterion at theta (inf where the system is indefinite)."""
        c = self._core(np.asarray(theta, dtype=float))
        return np.inf if c is None else c["f"]

    def _first(self, c):
        """Gradient pieces (kept in ``c``) and the gradient.

        With ``Li = L^-1`` (``S = L L'``) the S part's gradient ``tr(Pi dS_k)`` is
        ``-2 sum_a w_a (Li T_k Li')_aa`` (``Pi = Li' diag(w) Li``), and ``Li T_k Li'`` is a
        level sum of products of ``Y_g = [N_g' C_g; P_g' C_g] Li'``: one (2q (p+1))-square
        product holds every ``T_k``.
        """
        if "grad" in c:
            return c["grad"]
        m, q = self.m, self.q
        Ls, Al, Vv = c["Ls"], c["Al"], c["Vv"]
        Li, info = _trtri(Ls, lower=1)       # (potrf zeroed Ls's upper triangle: so is Li's)
        if info:
            raise np.linalg.LinAlgError("singular triangular factor")
        Q = Al @ c["Mi"].reshape(m, q, q)                        # A_g N_g
        Ut = self.Cg - Al @ Vv                                   # P_g' C_g = C_g - A_g G_g C_g
        Y = np.concatenate([Vv, Ut], axis=1) @ Li.T              # (m, 2q, p+1)
        Yf = Y.reshape(m, -1)
        KY = Yf.T @ Yf
        Tt = KY.take(self._tk)                                   # Li T_k Li' (K, p+1, p+1)
        grad = 2.0 * (_sum(Q.reshape(-1, q * q), axis=0).take(self._qjk)
                      - Tt.diagonal(0, 1, 2) @ self._w)
        c.update(grad=grad, Q=Q, Y=Y, Tt=Tt)
        return grad

    def value_and_grad(self, theta):
        """The criterion and its gradient at theta (``(inf, 0)`` where indefinite)."""
        theta = np.asarray(theta, dtype=float)
        c = self._core(theta)
        if c is None:
            return np.inf, np.zeros(theta.size)
        return c["f"], self._first(c).copy()

    def value_grad_hess(self, theta):
        """The criterion, its gradient and its exact Hessian at theta (``(inf, 0, NaN)`` where
        the system is indefinite)."""
        theta = np.asarray(theta, dtype=float)
        c = self._core(theta)
        K = self.K
        if c is None:
            return np.inf, np.zeros(K), np.full((K, K), np.nan)
        return c["f"], self._first(c).copy(), self._hess(c)

    def hessian(self, theta):
        """The exact Hessian alone at theta (NaN where the system is indefinite): Newton's
        iterations ask for it at the point whose gradient they just have."""
        theta = np.asarray(theta, dtype=float)
        c = self._core(theta)
        if c is None:
            return np.full((self.K, self.K), np.nan)
        self._first(c)
        return self._hess(c)

    def _hess(self, c):
        H = c.get("hess")
        if H is None:
            H = c["hess"] = self._hessian(c)
        return H.copy()

    def _hessian(self, c):
        m, q, K = self.m, self.q, self.K
        qq = q * q
        Al, Q, Y, Tt = c["Al"], c["Q"], c["Y"], c["Tt"]
        Mi = c["Mi"].reshape(m, q, q)
        Z = (Y * self._w) @ Y.transpose(0, 2, 1)                 # [N'DN, N'DP; ., P'DP]
        NDN, NDP, PDP = Z[:, :q, :q], Z[:, :q, q:], Z[:, q:, q:]
        AW = self.Ag - Q @ Al.transpose(0, 2, 1)                 # A - A G A
        # sum_g (A - W) (x) (M^-1 + N'DN) - P'DP (x) M^-1, as ((A - W) - P'DP) (x) M^-1 +
        # (A - W) (x) N'DN: one stacked operation fewer
        X1 = np.concatenate([AW - PDP, AW]).reshape(2 * m, qq)
        Y1 = np.concatenate([Mi, NDN]).reshape(2 * m, qq)
        H = (X1.T @ Y1).take(self._h1)
        R = NDP - 0.5 * Q.transpose(0, 2, 1)
        X2 = (R.reshape(m, qq).T @ Q.reshape(m, qq)).take(self._h2)
        H += X2 + X2.T
        F = (Tt + Tt.transpose(0, 2, 1)).reshape(K, -1)          # -(Li dS_k Li')
        H = 2.0 * H - (F * self._w2) @ F.T
        return 0.5 * (H + H.T)

    def estimates(self, theta):
        """``(beta, u, r2, criterion, (X' V^-1 X)^-1 / sigma^2)`` at theta: the fixed effects
        from ``L_XX' beta = l_yX`` (the last row of ``S``'s factor), the spherical random
        effects ``u_g = M_g^-1 lambda' (c_gy - C_gX beta)`` (levels in order)."""
        theta = np.asarray(theta, dtype=float)
        c = self._core(theta)
        if c is None:
            raise np.linalg.LinAlgError("the system is not positive definite at theta")
        m, q, p = self.m, self.q, self.p
        Ls = c["Ls"]
        if p:
            Lxi, info = _trtri(Ls[:p, :p], lower=1)
            if info:
                raise np.linalg.LinAlgError("singular triangular factor")
            beta = Lxi.T @ Ls[p, :p]
            cov = Lxi.T @ Lxi
        else:
            beta, cov = np.zeros(0), np.zeros((0, 0))
        bw = np.empty(p + 1)                                      # [-beta, 1] (np.append's
        bw[:p] = -beta                                            # wrapper costs more)
        bw[p] = 1.0
        wg = self.Cg @ bw                                         # c_gy - C_gX beta (m, q)
        u = (c["Mi"].reshape(m, q, q) @ (wg @ c["lam"])[:, :, None]).ravel()
        return beta, u, float(Ls[p, p]) ** 2, c["f"], cov
