"""The profiled LMM deviance of many responses on one design with one grouping factor, each at
its own theta, evaluated together (batched refits: bootstrap, simulation, power).

:class:`~mlmext.linalg.small_levels.OneBlockLevels`' criterion, gradient and Hessian with a
leading axis over the members: the B responses differ only in the response's column of the
level cross-products ``C_g`` and of ``[X y]' W [X y]``, so every step of the single
evaluator is one NumPy call over (B, m, ...) stacks (the (p+1)-square Schur complement's
factor and its inverse by stacked ``cholesky`` and ``inv``).  The formulas are the single
evaluator's (its module docstring): each evaluation costs about as many NumPy calls as one
single evaluation, whatever B.
"""
from __future__ import annotations

import numpy as np

from .small_levels import _level_sums, _spd_stack, _stacked_cholesky

__all__ = ["LevelsBatch", "constant_value", "design_piece", "eigh_finite", "inv_of_factor"]

_LOG2PI = np.log(2.0 * np.pi)
# (the ndarray methods' Python wrappers: ~1 us a call, and more code to bring into the caches)
_sum, _all, _max = np.add.reduce, np.logical_and.reduce, np.maximum.reduce

try:        # the gufuncs np.linalg's inv and eigh call (private; else np.linalg)
    from numpy.linalg import _umath_linalg as _gu
    _gu_inv, _gu_eigh, _gu_chol = _gu.inv, _gu.eigh_lo, _gu.cholesky_lo
except (ImportError, AttributeError):           # pragma: no cover
    _gu_inv = _gu_eigh = _gu_chol = None


def inv_of_factor(L):
    """``np.linalg.inv`` of a stack of float Cholesky factors (finite, positive diagonals:
    never singular), by its gufunc directly: the same LAPACK call and numbers without the
    wrapper's type checks and error state (~5 us a call warm, ~45 us with cold caches, as a
    batch's first refit after ``gc.collect()`` has them), which only matter on errors."""
    return np.linalg.inv(L) if _gu_inv is None else _gu_inv(L, signature="d->d")


def _factor_or_none(A, gufunc, fallback):
    """``fallback(A)`` (``np.linalg.cholesky`` or ``inv``) of a finite float stack by its
    gufunc directly: the same LAPACK call and numbers without the wrapper (~40 us with the
    cold caches of a fit's first batch of refits, once per wrapper); None where it fails
    (where the wrapper raises ``LinAlgError``: the gufunc's output is NaN there, and finite
    elsewhere from finite input)."""
    if gufunc is None:                          # pragma: no cover
        try:
            return fallback(A)
        except np.linalg.LinAlgError:
            return None
    with np.errstate(all="ignore"):             # (a failure's flags: the wrapper's error)
        F = gufunc(A, signature="d->d")
    return F if _all(np.isfinite(F), axis=None) else None


def eigh_finite(A):
    """``np.linalg.eigh(A)`` (lower triangle) of a float stack: by its gufunc directly (as
    :func:`inv_of_factor`) where ``A`` is finite, else by ``np.linalg.eigh`` (its error on
    NaN)."""
    if _gu_eigh is None or not _all(np.isfinite(A), axis=None):
        return np.linalg.eigh(A)
    return _gu_eigh(A, signature="d->dd")


def _read_only(a):
    a.setflags(write=False)
    return a


def constant_value(a):
    """The one number of a broadcast array of zero stride (``design.constant_rows``: a
    model's zero offset, its unit weights), else None."""
    return float(a[0]) if a.ndim == 1 and a.size and a.strides[0] == 0 else None


def design_piece(lv, key, make):
    """``make()`` (read-only: never written), computed once per design: kept under ``key`` in
    the dict ``lv._shared`` that the evaluators of a design share (their copies for a
    criterion or a response: single and batched refits of one fit compute it once)."""
    shared = lv.__dict__.get("_shared")
    got = None if shared is None else shared.get(key)
    if got is None:
        got = make()
        if shared is not None:   # two threads may both compute it: same value, either one kept
            shared[key] = got
    return got


def _moment_design(lv, blk):
    """The design's pieces of :meth:`LevelsBatch.moment_thetas`, free of the response: the
    level blocks' (pseudo-)inverses ``Ai`` (m, q, q) and the rank of ``Z``, ``C_gX`` (m q, p)
    and ``A_g^+ C_gX``, the number of eigenvalues of ``X``'s residual cross-products after
    ``Z`` that count and those eigenvalues ``e`` and vectors ``Ux``, ``Ai``'s mean, the
    template's independent terms ``keep`` (q, q; None: all of them, a full lower triangle)
    and ``(X' W X)^-1`` (None: singular).  Read-only, computed once per design on block
    ``lv.blk`` (:func:`design_piece`)."""
    if blk is lv.blk:
        return design_piece(lv, "moment_design", lambda: _moment_design_of(lv, blk))
    return _moment_design_of(lv, blk)


def _moment_design_of(lv, blk):
    m, q, p = lv.m, lv.q, lv.p
    Ai, _, ok = _spd_stack(lv.Af, q)            # (closed forms for q <= 2)
    if _all(ok):
        Ai, rank = Ai.reshape(m, q, q), m * q
    else:       # a level with fewer rows than q (or collinear ones): the pseudo-inverse
        Ai, rank = np.linalg.pinv(lv.Ag), int(np.linalg.matrix_rank(lv.Ag).sum())
    # the residual within the levels: of [X y] after each level's Z (S = [X y]' W [X y] -
    # sum_g C_g' A_g^+ C_g), then of y after what X adds to Z (S_XX, the same for every
    # member, is ~0 where Z's columns span X's), on n - rank [X Z] degrees of freedom
    CX = lv.Cg[:, :, :p].reshape(m * q, p)                  # (X's columns: every member's)
    AiCX = (Ai @ lv.Cg[:, :, :p]).reshape(m * q, p)
    e, Ux = eigh_finite(lv.V[:p, :p] - CX.T @ AiCX)
    big = e > 1e-9 * _max(np.abs(np.diagonal(lv.V)[:p]))
    keep = None             # (a full lower triangle: every term free, no mask to apply)
    if len(blk.t_rows) != q * (q + 1) // 2:
        E = np.zeros((q, q))
        E[blk.t_rows, blk.t_cols] = 1.0
        keep = (E @ E.T) != 0                  # (the template's independent terms)
    # (X' W X)^-1: the fixed effects' least squares of every member (None: singular)
    XXi = _factor_or_none(lv.V[:p, :p], _gu_inv, np.linalg.inv)
    arrays = (Ai, CX, AiCX, e[big], Ux[:, big], _sum(Ai, axis=0) / m, keep, XXi)
    for a in arrays:
        if a is not None:
            a.setflags(write=False)
    return (Ai, rank) + arrays[1:3] + (int(_sum(big)),) + arrays[3:]


class LevelsBatch:
    """The responses ``Y`` (n, B), offsets removed, on the design of ``levels``.

    Parameters
    ----------
    levels : OneBlockLevels
        The model's level-by-level evaluator, with its criterion set
        (:meth:`~mlmext.linalg.small_levels.OneBlockLevels.criterion`); its cross-products are
        read, never written.
    Y : ndarray (n, B)
        The responses minus the offset.
    """

    def __init__(self, levels, Y):
        lv = levels
        codes, ind, Wq, XY, w = lv._rows
        m, q, p = lv.m, lv.q, lv.p
        Y = np.asarray(Y, dtype=float)
        n, nb = Y.shape
        self.lv, self.m, self.q, self.p, self.K = lv, m, q, p, lv.K
        # the response's column of C_g per member: (B, m, q)
        cy = _level_sums(codes, m, (Wq[:, :, None] * Y[:, None, :]).reshape(n, q * nb), ind)
        self.cy = cy = cy.reshape(m, q, nb)                       # (levels first: moment_thetas)
        cyb = cy.transpose(2, 0, 1)
        Cg = np.empty((nb, m, q, p + 1))
        Cg[...] = lv.Cg
        Cg[..., p] = cyb
        # C_g' (B, m, p+1, q) for products with a member's lambda as one matrix product per
        # member, not per level (filled as C_g: a transposed copy of C_g is a slow strided one)
        CgT = np.empty((nb, m, p + 1, q))
        CgT[...] = design_piece(lv, "CgT", lambda: _read_only(lv.Cg.transpose(0, 2, 1).copy()))
        CgT[:, :, p] = cyb
        WY = Y if constant_value(w) == 1.0 else Y * w[:, None]        # (Y * 1: Y bit for bit)
        V = np.empty((nb, p + 1, p + 1))
        V[:] = lv.V
        V[:, :p, p] = V[:, p, :p] = (XY[:, :p].T @ WY).T
        V[:, p, p] = np.add.reduce(Y * WY, axis=0)
        self.Cg, self.V, self.CgT = Cg, V, CgT
        self.Ag2 = lv.Ag.reshape(-1, q)                           # A_g stacked (m q, q)

    # -- the pieces at the members' thetas ------------------------------------------------
    def theta_pieces(self, T):
        """What the criterion at thetas ``T`` (nt, K) takes from the design alone (no response,
        no criterion): ``lambda``, ``M_g^-1``, the sums of ``log det M_g``, whether every
        ``M_g`` is positive definite and ``G_g = lambda M_g^-1 lambda'``; for :meth:`values`
        at a theta evaluated again and again (the fit's, by every batch of its refits)."""
        lv, q = self.lv, self.q
        nt, qq = T.shape[0], q * q
        lam = (T @ lv._Eb).reshape(nt, q, q)
        KK = (lam[:, :, None, :, None] * lam[:, None, :, None, :]).reshape(nt, qq, qq)
        M = lv.Af @ KK + lv._I                                   # (B, m, q q)
        Mi, ldm, ok = _spd_stack(M.reshape(-1, qq), q)
        Mi = Mi.reshape(nt, -1, qq)
        G = Mi @ KK.transpose(0, 2, 1)                           # lambda M_g^-1 lambda'
        return lam, Mi, _sum(ldm.reshape(nt, -1), axis=1), _all(ok.reshape(nt, -1), axis=1), G

    def _core(self, T, idx, design=None):
        """The criterion's pieces at thetas ``T`` (B, K) of members ``idx`` (None: all, in
        order); ``T`` of one row: that theta for every member (its level blocks once; for
        :meth:`values` only, whose ``design`` may give :meth:`theta_pieces` of it)."""
        lv, q, p = self.lv, self.q, self.p
        Cg, V = (self.Cg, self.V) if idx is None else (self.Cg[idx], self.V[idx])
        nt, nb = T.shape[0], Cg.shape[0]
        lam, Mi, ldm, ok, G = self.theta_pieces(T) if design is None else design
        if nt != nb or design is not None:
            ok = np.repeat(ok, nb // nt)      # (a new array: set in place below)
        Cf = Cg.reshape(nb, -1, p + 1)
        S = V - Cf.transpose(0, 2, 1) @ (G.reshape(nt, -1, q, q) @ Cg).reshape(nb, -1, p + 1)
        Ls = _stacked_cholesky(S, ok)
        d = np.log(Ls.diagonal(0, 1, 2))
        r2 = Ls[:, p, p] ** 2
        nu = lv.nu
        f = ldm + nu * (1.0 + _LOG2PI + np.log(r2 / nu)) - lv.logw
        if lv.reml:
            f += 2.0 * _sum(d[:, :p], axis=1)
        ok &= np.isfinite(f)
        if not _all(ok):
            f = np.where(ok, f, np.inf)
        return dict(f=f, ok=ok, lam=lam, Mi=Mi, Ls=Ls, r2=r2, Cg=Cg, idx=idx)

    def _first(self, c):
        """The gradients (B, K), as :meth:`OneBlockLevels._first` member by member."""
        lv, q, p = self.lv, self.q, self.p
        lam, Cg = c["lam"], c["Cg"]
        nb = lam.shape[0]
        Li = inv_of_factor(c["Ls"])            # (failed members' factors: the identity)
        Mi = c["Mi"].reshape(nb, -1, q, q)
        m = Mi.shape[1]
        Al = (self.Ag2 @ lam).reshape(nb, m, q, q)               # A_g lambda
        Q = Al @ Mi                                              # A_g N_g
        CgT = self.CgT if c["idx"] is None else self.CgT[c["idx"]]
        lC = (CgT.reshape(nb, -1, q) @ lam).reshape(nb, m, p + 1, q)
        # (stacks of tiny products: NumPy's are faster on contiguous operands, a copy is not)
        Vv = Mi @ np.ascontiguousarray(lC.transpose(0, 1, 3, 2))  # N_g' C_g (B, m, q, p+1)
        del lC              # (each stack freed when done: the batch's peak memory, whose new
        #                     pages a first batch after a collection pays a fault each, ~3 us)
        Ut = Cg - Al @ Vv                                        # P_g' C_g
        # (one product per member: Li is the member's, the same for every level)
        VU = np.concatenate([Vv, Ut], axis=2)
        del Vv, Ut
        Y = (VU.reshape(nb, -1, p + 1) @ Li.transpose(0, 2, 1)).reshape(nb, m, 2 * q, p + 1)
        del VU
        Yf = Y.reshape(nb, Y.shape[1], -1)
        KY = Yf.transpose(0, 2, 1) @ Yf
        Tt = KY.reshape(nb, -1)[:, lv._tk]                       # (B, K, p+1, p+1)
        grad = 2.0 * (_sum(Q.reshape(nb, -1, q * q), axis=1)[:, lv._qjk]
                      - Tt.diagonal(0, 2, 3) @ lv._w)
        c.update(Li=Li, Al=Al, Q=Q, Y=Y, Tt=Tt)
        return grad

    def _hessian(self, c):
        """The Hessians (B, K, K), as :meth:`OneBlockLevels._hessian` member by member."""
        lv, q, K = self.lv, self.q, self.K
        qq = q * q
        Al, Q, Y, Tt = c["Al"], c["Q"], c["Y"], c["Tt"]
        nb = Y.shape[0]
        Mi = c["Mi"].reshape(nb, -1, q, q)
        Z = (Y * lv._w) @ np.ascontiguousarray(Y.transpose(0, 1, 3, 2))  # [N'DN, N'DP; ., P'DP]
        NDN, NDP, PDP = Z[..., :q, :q], Z[..., :q, q:], Z[..., q:, q:]
        AW = lv.Ag - Q @ np.ascontiguousarray(Al.transpose(0, 1, 3, 2))   # A - A G A
        X1 = np.concatenate([AW, -PDP], axis=1).reshape(nb, -1, qq)
        del AW, PDP                                   # (freed when done: see _first)
        Y1 = np.concatenate([Mi + NDN, Mi], axis=1).reshape(nb, -1, qq)
        H = (X1.transpose(0, 2, 1) @ Y1).reshape(nb, -1)[:, lv._h1]
        del X1, Y1, NDN
        R = NDP - 0.5 * Q.transpose(0, 1, 3, 2)
        del Z, NDP
        X2 = (R.reshape(nb, -1, qq).transpose(0, 2, 1) @ Q.reshape(nb, -1, qq)).reshape(nb, -1)
        X2 = X2[:, lv._h2]
        H += X2 + X2.transpose(0, 2, 1)
        F = (Tt + Tt.transpose(0, 1, 3, 2)).reshape(nb, K, -1)   # -(Li dS_k Li')
        H = 2.0 * H - (F * lv._w2) @ F.transpose(0, 2, 1)
        return 0.5 * (H + H.transpose(0, 2, 1))

    # -- a start ------------------------------------------------------------------------
    def moment_thetas(self, blk):
        """Starting thetas (B, K) by the method of moments (Swamy's two-stage estimator), from
        the members' cross-products alone: each level's least-squares random effects after the
        fixed effects' least squares, their covariance between the levels less their mean
        sampling covariance, relative to the residual variance within the levels (on
        ``n - rank [X Z]`` degrees of freedom), mapped to ``blk``'s template (terms the
        template keeps independent stay so).  On a balanced design (the same ``Z_g`` in every
        level, ``X`` in their span) this is REML's estimate, and ML's with ``m`` for ``m - 1``,
        where that is inside the bounds: Newton from it passes the checks at its first
        evaluation where from the fit's theta it needs four or five (sleepstudy); elsewhere it
        is a start only (the caller keeps the fit's theta where that is lower).  A row is NaN
        where the estimate does not exist (no residual degrees of freedom, no residual
        variation within the levels, no positive variance)."""
        lv, m, q, p, K = self.lv, self.m, self.q, self.p, self.K
        Cg, V = self.Cg, self.V
        nb = Cg.shape[0]
        T = np.full((nb, K), np.nan)
        if m < 2:
            return T
        Ai, rank, CX, AiCX, nbig, e, Ux, Aim, keep, XXi = _moment_design(lv, blk)
        dof = lv.n_obs - rank - nbig
        if dof <= 0 or XXi is None:
            return T
        cy = self.cy                                            # Z_g' W y (m, q, B)
        ay = Ai @ cy                                            # A_g^+ Z_g' W y (m, q, B)
        cay = _sum((cy * ay).reshape(m * q, nb), axis=0)
        ay = ay.reshape(m * q, nb)
        xy = V[:, :p, p]
        sxy = (xy - (CX.T @ ay).T) @ Ux
        rss = V[:, p, p] - cay - _sum((sxy * sxy) / e, axis=1)
        s2 = rss / dof
        # each level's effects: its least squares after the fixed effects' (their spread)
        beta = XXi @ xy.T                                       # (p, B)
        b = (ay - AiCX @ beta).T.reshape(nb, m, q)
        b -= _sum(b, axis=1, keepdims=True) / m
        # no residual variation: no estimate (NaN there, not a division by ~0: no error state
        # to set, ~30 us with cold caches)
        good = np.isfinite(s2) & (rss > 1e-12 * V[:, p, p])
        s2b = (s2 if _all(good) else np.where(good, s2, np.nan))[:, None, None]
        R = (b.transpose(0, 2, 1) @ b / (m - lv.reml) - s2b * Aim) / s2b
        good &= np.isfinite(_sum(R.reshape(nb, -1), axis=1))
        if not _all(good):
            R = np.where(good[:, None, None], R, np.eye(q))
        L = _factor_or_none(R if keep is None else R * keep, _gu_chol, np.linalg.cholesky)
        if L is None:
            # variances estimated negative: a small fraction of the largest (Newton takes them
            # on); a largest that is not positive: no estimate
            w, U = np.linalg.eigh(R)
            good &= w[:, -1] > 0
            w = np.maximum(w, 1e-2 * np.abs(w[:, -1:]))
            Rp = (U * w[:, None, :]) @ U.transpose(0, 2, 1)
            L = np.linalg.cholesky(np.where(good[:, None, None],
                                            Rp if keep is None else Rp * keep, np.eye(q)))
        if _all(good):
            T[:, blk.t_idx] = L[:, blk.t_rows, blk.t_cols]
        else:
            T[np.ix_(good, blk.t_idx)] = L[good][:, blk.t_rows, blk.t_cols]
        return T

    # -- the objective ------------------------------------------------------------------
    def values(self, T, idx, design=None):
        """The criterion of members ``idx`` (None: all) at thetas ``T`` (inf where
        indefinite); ``T`` of
        one row: that theta for every member (a fraction of the cost), and ``design`` may be
        its :meth:`theta_pieces` (computed before, on this design)."""
        return self._core(np.asarray(T, dtype=float), idx, design)["f"]

    def fixed_theta(self, theta):
        """What :meth:`fixed_values` takes from the design alone at one ``theta`` (the fit's,
        evaluated by every batch of its refits): ``G_g`` (m, q, q), ``G_g C_gX`` stacked
        (m q, p), ``L_XX^-1`` of ``S_XX = L_XX L_XX'`` (the same for every response) and the
        criterion's terms free of the response; None where ``S_XX`` or a level block is not
        positive definite.  Read-only."""
        lv, m, q, p = self.lv, self.m, self.q, self.p
        _, _, ldm, ok, G = self.theta_pieces(np.asarray(theta, dtype=float)[None])
        if not ok[0]:
            return None
        G = G.reshape(m, q, q)
        CX = lv.Cg[:, :, :p]
        GCX = (G @ CX).reshape(m * q, p)
        Lxx = _factor_or_none(lv.V[:p, :p] - CX.reshape(m * q, p).T @ GCX, _gu_chol,
                              np.linalg.cholesky)
        if Lxx is None:
            return None
        const = ldm[0] - lv.logw
        if lv.reml:
            const += 2.0 * _sum(np.log(np.diagonal(Lxx)))
        return tuple(_read_only(a) for a in (G, GCX, inv_of_factor(Lxx))) + (float(const),)

    def fixed_values(self, fixed):
        """The criterion of every member at the theta of ``fixed`` (:meth:`fixed_theta`'s;
        None: inf), as :meth:`values` gives it (to rounding) from the response's row of ``S``
        alone: ``s_Xy = c_Xy - sum_g C_gX' G_g c_gy``, ``s_yy = y'Wy - sum_g c_gy' G_g c_gy``
        and ``r^2 = s_yy - |L_XX^-1 s_Xy|^2``."""
        nb = self.V.shape[0]
        if fixed is None:
            return np.full(nb, np.inf)
        G, GCX, Lxxi, const = fixed
        m, q, p, V, cy = self.m, self.q, self.p, self.V, self.cy
        cyf = cy.reshape(m * q, nb)
        l = (V[:, :p, p] - (GCX.T @ cyf).T) @ Lxxi.T
        r2 = V[:, p, p] - _sum((G @ cy).reshape(m * q, nb) * cyf, axis=0) - _sum(l * l, axis=1)
        nu = self.lv.nu
        pos = r2 > 0
        if _all(pos):
            return const + nu * (1.0 + _LOG2PI + np.log(r2 / nu))
        f = np.full(nb, np.inf)
        f[pos] = const + nu * (1.0 + _LOG2PI + np.log(r2[pos] / nu))
        return f

    def value_grad_hess(self, T, idx, pieces=False):
        """Criterion (B,), exact gradient (B, K) and Hessian (B, K, K) of members ``idx``
        (None: all) at
        thetas ``T`` (B, K); members whose system is indefinite get inf, 0, NaN.  ``pieces``:
        the criterion's pieces as a fourth item, for :meth:`estimates` at these thetas."""
        c = self._core(np.asarray(T, dtype=float), idx)
        grad = self._first(c)
        H = self._hessian(c)
        for k in ("Al", "Q", "Y", "Tt"):        # (the Hessian's alone: not kept in the pieces)
            del c[k]
        ok = c["ok"]
        if not _all(ok):
            grad[~ok] = 0.0
            H[~ok] = np.nan
        return (c["f"], grad, H, c) if pieces else (c["f"], grad, H)

    def estimates(self, T, idx, pieces=None):
        """``(beta, u, sigma, criterion, cov_beta)`` of members ``idx`` at thetas ``T``, stacked
        (as :meth:`mlmext.objective.LMMDeviance.at`); ``u`` in the levels' order.  With
        ``pieces`` (:meth:`value_grad_hess`'s, at those thetas) ``idx`` are rows of them
        (None: all) and
        ``T`` is not used: nothing is evaluated again."""
        if pieces is None:
            c = self._core(np.asarray(T, dtype=float), idx)
        else:
            c = pieces if idx is None else \
                {k: pieces[k][idx] for k in ("Ls", "lam", "Mi", "Cg", "r2", "f", "Li")
                 if k in pieces}
        lv, m, q, p = self.lv, self.m, self.q, self.p
        Ls, lam = c["Ls"], c["lam"]
        nb = Ls.shape[0]
        # L_XX^-1: the leading block of the gradient's L^-1 where it was made (L is lower
        # triangular), else its own inverse
        Li = c.get("Li")
        Lxi = np.linalg.inv(Ls[:, :p, :p]) if Li is None else Li[:, :p, :p]
        beta = (Ls[:, p:, :p] @ Lxi)[:, 0]                      # L_XX' beta = l_yX
        cov = Lxi.transpose(0, 2, 1) @ Lxi
        Cg = c["Cg"].reshape(nb, m * q, p + 1)
        wg = Cg[..., p] - (Cg[..., :p] @ beta[:, :, None])[..., 0]   # c_gy - C_gX beta (B, m q)
        # u_g = M_g^-1 lambda' w_g (lambda' w_g for all levels: one product per member)
        u = c["Mi"].reshape(nb, m, q, q) @ (wg.reshape(nb, m, q) @ lam)[..., None]
        sigma2 = c["r2"] / lv.nu
        return beta, u.reshape(nb, -1), np.sqrt(sigma2), c["f"], sigma2[:, None, None] * cov
