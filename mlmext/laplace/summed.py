"""Rows held elsewhere, seen through sums: :class:`SummedRows` and the chunks' side.

A chunk of rows (:class:`RowChunk`: the random-effects blocks with its rows' model matrices
and codes, the fixed design, offset and conditional model) lives where the data are (a Dask
worker's persisted partition).  A pass sends every chunk a *request* (the point ``(u, beta)``,
``Lambda``; for the gradient the factor's row-independent part of ``M^-1``) and adds their
answers (:func:`chunk_sums`, :func:`add_sums`); :class:`SummedRows` is the rows object of
:func:`~mlmext.laplace.pirls` (see :mod:`.rows`) that does this, one pass per PIRLS
iteration and one per gradient, everything else from the summed cross-products.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from .chunkplan import chunk_cross_products
from .rows import _gradient_sums
from .zops import _zops

__all__ = ["SummedRows", "RowChunk", "chunk_sums", "add_sums"]


class RowChunk:
    """A chunk of rows for :class:`SummedRows`: the random-effects blocks with the chunk's
    model matrices and codes (``design``: any object with ``blocks`` and ``ntheta``), the
    fixed-effects design, the offset and the conditional model of the chunk's responses."""

    def __init__(self, design, X, offset, cond):
        self.design = design
        self.X = np.asarray(X, dtype=float)
        self.offset = np.asarray(offset, dtype=float)
        self.cond = cond
        self.n = self.X.shape[0]


def chunk_sums(chunk, request):
    """One chunk's share of a pass of :class:`SummedRows` (a dict of sums)."""
    ops = _zops(chunk.design) if chunk.n else None
    kind = request["kind"]
    if kind == "point":
        return _point_sums(chunk, ops, request)
    if kind == "gradient":
        return _gradient_chunk(chunk, ops, request)
    raise ValueError(f"unknown request {kind!r}")


def _eta(chunk, ops, u, beta, lams):
    return chunk.offset + chunk.X @ beta + ops.zlam(u, lams)


def _point_sums(chunk, ops, req):
    design, X, n, cond = chunk.design, chunk.X, chunk.n, chunk.cond
    has_x = req["has_x"]
    blocks = design.blocks
    lams = req["lams"]
    if not n:
        return None
    zl = ops.zlam(req["u"], lams)
    xb = X @ req["beta"]
    eta = chunk.offset + xb + zl
    with np.errstate(all="ignore"):
        lo, d1, w = cond.loglik_derivs(eta)
    ll = float(np.sum(lo))
    out = {"ll": ll, "n": n, "max_abs_eta": float(np.max(np.abs(eta)))}
    ok = bool(np.isfinite(ll) and np.isfinite(d1.sum()) and np.isfinite(w.sum()))
    out["bad"] = int(not ok or w.min() < 0)
    if not ok:
        return out
    lin = zl + xb if has_x else zl
    with np.errstate(divide="ignore", invalid="ignore"):
        z = lin + np.where(w > 0, d1 / w, 0.0)
    out["nz"] = int(np.count_nonzero(z))
    # X always: the gradient's X' W Z Lambda s reads it (the factor of u alone drops it)
    XY = np.column_stack([X, z])
    A11, A_r1, A_rr = chunk_cross_products(chunk, XY, w)
    m1, q1 = A11.shape[:2]
    out.update(A11=sparse.csr_matrix(A11.reshape(m1, q1 * q1)), A_r1=sparse.csr_matrix(A_r1),
               A_rr=sparse.csr_matrix(A_rr))
    # Z' d1 per block (unscaled columns): the gradient's Ks' d1 at these modes
    out["ztd1"] = [np.column_stack([np.bincount(b.codes, weights=d1 * b.X[:, j], minlength=b.m)
                                    for j in range(b.q)]) for b in blocks]
    return out


def _gradient_chunk(chunk, ops, req):
    design, X, n, cond = chunk.design, chunk.X, chunk.n, chunk.cond
    if not n:
        return None
    lams, theta, u = req["lams"], req["theta"], req["u"]
    eta = _eta(chunk, ops, u, req["beta"], lams)
    with np.errstate(all="ignore"):
        _, d1, w = cond.loglik_derivs(eta)
        _, dw = cond.hessian_terms(eta)
    t_list, rho_list = req["local"].rows(design.blocks)
    return _gradient_sums(design, ops, lams, theta, u, d1, w, dw, X, t_list, rho_list,
                          design.blocks)


def add_sums(a, b):
    """The sum of two chunks' dicts (None: an empty chunk)."""
    if a is None:
        return b
    if b is None:
        return a
    out = {}
    for k, v in a.items():
        if k not in b:                    # a chunk whose values were not finite: no products
            continue
        if k == "max_abs_eta":
            out[k] = max(v, b[k])
        elif v is None:
            out[k] = None
        elif isinstance(v, list):
            out[k] = [x + y for x, y in zip(v, b[k])]
        else:
            out[k] = v + b[k]
    return out


class SummedRows:
    """Rows in chunks evaluated elsewhere, seen through sums (see the module docstring).

    Parameters
    ----------
    design : RandomEffectsDesign
        The model's (no rows needed: block sizes and the theta map).
    mapper : callable
        ``mapper(request) -> dict``: :func:`chunk_sums` of every chunk for ``request``, added
        with :func:`add_sums` (one pass over the data).
    beta_fixed : ndarray
        The fixed effects (u alone is updated), or the starting beta with ``has_x``.
    has_x : bool
        Update beta inside PIRLS (lme4's first stage).
    p : int
        Number of fixed effects.
    """

    summed = True
    eta = d1 = w = None

    def __init__(self, design, mapper, beta_fixed, has_x, p):
        self.design, self.mapper = design, mapper
        self.beta_fixed = np.asarray(beta_fixed, dtype=float)
        self.has_x, self.p = has_x, p
        self.cond = None

    def _pass(self, u, beta, lams):
        beta = self.beta_fixed if not self.has_x else beta
        req = {"kind": "point", "u": np.asarray(u, dtype=float), "beta": beta, "lams": lams,
               "has_x": self.has_x}
        return self.mapper(req)

    def point(self, u, beta, lams):
        self.sums = self._pass(u, beta, lams)
        self._u, self._beta = np.asarray(u, dtype=float), beta
        return self.sums["ll"]

    def weights_problem(self):
        if self.sums["bad"]:
            return f"max |eta| = {self.sums['max_abs_eta']:.3g}"
        return None

    def factor(self, chol, lams, newton):
        if newton:
            raise NotImplementedError("Newton weights (a non-canonical link) on summed rows")
        s = self.sums
        A11, A_r1, A_rr = s["A11"], s["A_r1"].tocsr(), s["A_rr"].toarray()
        m1, q1 = self.design.blocks[0].m, self.design.blocks[0].q
        A11 = A11.toarray().reshape(m1, q1, q1)
        self.A = (A11, A_r1, A_rr)
        if not self.has_x:              # the factor of u alone: [Z_rest z] (X dropped)
            r = A_rr.shape[0]
            keep = np.r_[0:r - self.p - 1, r - 1]
            A_r1, A_rr = A_r1[keep], A_rr[np.ix_(keep, keep)]
        exact = s["nz"] == 0
        if exact:
            # a zero working response: any response outside the span gives the factor; one
            # orthogonal to every column with unit norm
            A_r1 = A_r1.tolil()
            A_r1[-1, :] = 0
            A_r1 = A_r1.tocsr()
            A_rr = A_rr.copy()
            A_rr[-1, :] = A_rr[:, -1] = 0.0
            A_rr[-1, -1] = 1.0
        try:
            # the pattern is the same at every iteration: refill the factor's structure
            getattr(chol, "refresh_cross_products", chol.set_cross_products)(A11, A_r1, A_rr)
            chol.update(lams)
        except np.linalg.LinAlgError:
            return "failed", None
        self.wt_is_w = True
        return ("exact" if exact else "ok"), None

    def _coords(self, u, beta, lams):
        """``(v1, vr)``: ``Lambda u`` of the first block (m1, q1) and ``[Lambda u of the rest,
        beta, 0]`` in the cross-products' order."""
        blocks = self.design.blocks
        vs, off = [], 0
        for b, lam in zip(blocks, lams):
            vs.append(u[off:off + b.nre].reshape(b.m, b.q) @ lam.T)
            off += b.nre
        rest = [v.ravel() for v in vs[1:]]
        rest.append(np.zeros(self.p) if beta is None else np.asarray(beta, dtype=float))
        rest.append(np.zeros(1))
        return vs[0], np.concatenate(rest)

    def bilinear(self, x, y):
        """``x' A y`` with the weighted cross-products of ``[Z X]`` held (x, y from
        :meth:`_coords`)."""
        A11, A_r1, A_rr = self.A
        (x1, xr), (y1, yr) = x, y
        val = float(np.einsum("ga,gab,gb->", x1, A11, y1))
        val += float(xr @ (A_r1 @ y1.ravel())) + float(yr @ (A_r1 @ x1.ravel()))
        return val + float(xr @ (A_rr @ yr))

    def predict_rhs(self, u, dl, lams, dbeta):
        """``Lambda(dtheta)' Z' d1 - Lambda' Z' W (Z Lambda(dtheta) u + X dbeta)`` at the
        current point (:func:`~mlmext.laplace.predict_modes`), from the sums."""
        A11, A_r1, A_rr = self.A
        c1, cr = self._coords(u, dbeta, dl)
        blocks = self.design.blocks
        b1 = blocks[0]
        z = [np.einsum("gab,gb->ga", A11, c1) + (A_r1.T @ cr).reshape(b1.m, b1.q)]
        zr = A_r1 @ c1.ravel() + A_rr @ cr
        off = 0
        for b in blocks[1:]:
            z.append(zr[off:off + b.nre].reshape(b.m, b.q))
            off += b.nre
        return np.concatenate([(zd @ d).ravel() - (zb @ lam).ravel()
                               for zd, d, zb, lam in zip(self.sums["ztd1"], dl, z, lams)])

    def step(self, u_new, b_new, lams):
        du = u_new - self._u
        db = (b_new - self._beta) if self.has_x else None
        c = self._coords(du, db, lams)
        return self.bilinear(c, c)

    def trial(self, t, u_t, b_t, lams):
        self._trial = self._pass(u_t, b_t, lams)
        self._trial_at = (u_t, b_t)
        return self._trial["ll"]

    def accept(self):
        self.sums = self._trial
        self._u, self._beta = self._trial_at

    # -- the gradient (canonical links: h = w)
    def gradient_sums(self, chol, lams, theta, u, dw=None, X=None):
        """The gradient's pass: the chunks' leverages from the factor's row-independent part
        of ``M^-1`` (:meth:`~mlmext.linalg.DenseFactor.local_inverse_parts`, sent to them)."""
        req = {"kind": "gradient", "u": np.asarray(u, dtype=float), "beta": self.beta_fixed,
               "lams": lams, "theta": theta,
               # K only where the rows read it, not the dense levels x levels coupling
               "local": chol.local_inverse_parts(compact=True)}
        self._u = np.asarray(u, dtype=float)
        return self.mapper(req)

    def gradient_second(self, chol, lams, theta, h, v, X=None):
        """No pass: the sums with ``Z Lambda s`` are bilinear forms of the cross-products at
        the modes (``h = w``), ``Ks' d1`` reads ``Z' d1`` of the last PIRLS pass."""
        s = chol.solve_re(v)
        design = self.design
        blocks = design.blocks
        ztd1 = self.sums["ztd1"]
        # Ks' d1: column k of Ks is Z dLambda_k s, so sum_g (Z'd1)[g, r] s_b[g, c]
        Ksd1 = np.zeros(design.ntheta)
        Ku_coords = [self._theta_coords(self._u, k) for k in range(design.ntheta)]
        off = 0
        for b, zd in zip(blocks, ztd1):
            sb = s[off:off + b.nre].reshape(b.m, b.q)
            off += b.nre
            for r, c, k in zip(b.t_rows, b.t_cols, b.t_idx):
                Ksd1[k] += zd[:, r] @ sb[:, c]
        zs = self._coords(s, None, lams)
        Kuhzs = np.array([self.bilinear(kc, zs) for kc in Ku_coords])
        Xhzs = None
        if X is not None:
            p = self.p
            Xhzs = np.array([self.bilinear(self._unit_beta(j), zs) for j in range(p)])
        return s, {"Ksd1": Ksd1, "Kuhzs": Kuhzs, "Xhzs": Xhzs}

    def _theta_coords(self, u, k):
        """Coordinates of ``Z dLambda_k u`` (as :meth:`_coords`)."""
        blocks = self.design.blocks
        vs, off = [], 0
        for b in blocks:
            ub = u[off:off + b.nre].reshape(b.m, b.q)
            off += b.nre
            v = np.zeros((b.m, b.q))
            for r, c, t in zip(b.t_rows, b.t_cols, b.t_idx):
                if t == k:
                    v[:, r] += ub[:, c]
            vs.append(v)
        rest = [v.ravel() for v in vs[1:]] + [np.zeros(self.p + 1)]
        return vs[0], np.concatenate(rest)

    def _unit_beta(self, j):
        b1 = self.design.blocks[0]
        vr = np.zeros(sum(b.nre for b in self.design.blocks[1:]) + self.p + 1)
        vr[len(vr) - self.p - 1 + j] = 1.0
        return np.zeros((b1.m, b1.q)), vr
