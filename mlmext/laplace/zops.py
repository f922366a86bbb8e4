"""``Z Lambda u`` for a design, and the PIRLS factorization (:func:`make_chol`)."""
from __future__ import annotations

import weakref

import numpy as np

from ..linalg import BlockedCholesky


# ----------------------------------------------------------------------------- Z Lambda u
#: rows per chunk of :meth:`_ZOps.zlam`'s scalar blocks
ZLAM_CHUNK = 1 << 17
#: levels x rows up to which :meth:`_ZOps.level_sums` keeps a dense indicator matrix (512 KB)
DENSE_INDICATOR = 1 << 16


class _ZOps:
    """Products with ``Z Lambda`` for a design, with per-block arrays cached."""

    def __init__(self, design):
        self.blocks = design.blocks
        self.n = self.blocks[0].X.shape[0]
        self.offsets = np.concatenate([[0], np.cumsum([b.nre for b in self.blocks])]).astype(int)
        self.scalar = [b.q == 1 for b in self.blocks]
        self.all_ones = [bool(b.q == 1 and np.all(b.X[:, 0] == 1.0)) for b in self.blocks]
        # (no copy of a column of ones: it is not read)
        self.x0 = [np.ascontiguousarray(b.X[:, 0]) if b.q == 1 and not ones else None
                   for b, ones in zip(self.blocks, self.all_ones)]
        self._indicators = {}

    def level_sums(self, V, k=0):
        """Sums of the rows of ``V`` (n, c) per level of block ``k``: (m, c).  One product with
        the dense level indicator on small data (a ``bincount`` per column costs more in
        calls than in work there), else a ``bincount`` per column."""
        b = self.blocks[k]
        if b.m * self.n <= DENSE_INDICATOR:
            G = self._indicators.get(k)
            if G is None:
                G = self._indicators[k] = np.zeros((b.m, self.n))
                G[b.codes, np.arange(self.n)] = 1.0
            return G @ V
        return np.column_stack([np.bincount(b.codes, weights=V[:, j], minlength=b.m)
                                for j in range(V.shape[1])])

    def zlam(self, u, lams):
        """``Z Lambda u`` (n,)."""
        out = np.zeros(self.n)
        for k, (b, lam) in enumerate(zip(self.blocks, lams)):
            ub = u[self.offsets[k]:self.offsets[k + 1]]
            if self.scalar[k]:
                vals = lam[0, 0] * ub
                # a chunk of rows at a time: no n-sized gathered values beside out (8 MB at
                # 1M rows, at PIRLS's step); the same numbers, element by element
                for a in range(0, self.n, ZLAM_CHUNK):
                    sl = slice(a, a + ZLAM_CHUNK)
                    v = vals[b.codes[sl]]
                    out[sl] += v if self.all_ones[k] else v * self.x0[k][sl]
            else:
                bb = ub.reshape(b.m, b.q) @ lam.T
                out += np.einsum("ij,ij->i", b.X, bb[b.codes])
        return out

    def ztv(self, v, lams):
        """``Lambda' Z' v`` (nre,) for an n-vector ``v``."""
        out = np.empty(self.offsets[-1])
        for k, (b, lam) in enumerate(zip(self.blocks, lams)):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            if self.scalar[k]:
                vv = v if self.all_ones[k] else v * self.x0[k]
                out[sl] = lam[0, 0] * np.bincount(b.codes, weights=vv, minlength=b.m)
            else:
                s = np.empty((b.m, b.q))
                for j in range(b.q):
                    s[:, j] = np.bincount(b.codes, weights=v * b.X[:, j], minlength=b.m)
                out[sl] = (s @ lam).ravel()
        return out

    def dtheta_cols(self, v, design, theta):
        """(n, ntheta): column k is ``Z (d Lambda / d theta_k) v``."""
        out = np.zeros((self.n, design.ntheta))
        for k, b in enumerate(self.blocks):
            vb = v[self.offsets[k]:self.offsets[k + 1]].reshape(b.m, b.q)
            if self.all_ones[k]:
                out[:, b.t_idx[0]] += vb[b.codes, 0]
                continue
            for r, c, t in zip(b.t_rows, b.t_cols, b.t_idx):
                out[:, t] += b.X[:, r] * vb[b.codes, c]
        return out


_ZOPS = weakref.WeakKeyDictionary()


def _zops(design):
    ops = _ZOPS.get(design)
    if ops is None:
        ops = _ZOps(design)
        _ZOPS[design] = ops
    return ops


def random_effects_transpose(design, v, lams):
    """``Lambda' Z' v``: an n-vector taken to the spherical random effects."""
    return _zops(design).ztv(np.asarray(v, dtype=float), lams)


def random_effects_linear(design, u, theta=None, lams=None):
    """``Z Lambda(theta) u``: the random-effects part of the linear predictor."""
    lams = design.lambdas(np.asarray(theta, dtype=float)) if lams is None else lams
    return _zops(design).zlam(np.asarray(u, dtype=float), lams)


def make_chol(design, n=None, X=None):
    """A :class:`~mlmext.linalg.BlockedCholesky` for PIRLS.

    With ``X=None`` the system is for ``u`` alone (``p = 0``); with a fixed
    design ``X`` (n, p) it is the joint system of lme4's ``nAGQ = 0`` stage.
    """
    n = design.blocks[0].X.shape[0] if n is None else n
    # (the values only set up the structure: PIRLS reweights before any solve; X and the
    # response column are not stacked where the factor takes them apart)
    XY = np.ones((n, 1)) if X is None else (np.asarray(X, dtype=float), np.ones(n))
    try:
        return BlockedCholesky(design.blocks, XY, None, reweighting=True)
    except TypeError:                      # a BlockedCholesky without the reweighting path
        return BlockedCholesky(design.blocks, np.column_stack(XY) if X is not None else XY,
                               np.ones(n))


def _reweight(chol, XY, w):
    """New working response and weights in the factorization (fast path when available).
    ``XY``: ``[X y]``, or the pair ``(X, y)`` (stacked here for a factor that needs it)."""
    if isinstance(XY, tuple) and not getattr(chol, "reweight_columns", False):
        XY = np.column_stack(XY)
    f = getattr(chol, "reweight", None)
    if f is not None:
        f(XY, w)
    else:
        chol.set_data(XY, w)
