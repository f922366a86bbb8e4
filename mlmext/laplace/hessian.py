"""The exact Hessian of the Laplace log-likelihood for one scalar term and a canonical link."""
from __future__ import annotations

import numpy as np

from ..linalg import ScalarFactor
from .pirls import factor_at
from .zops import _zops

__all__ = ["has_scalar_hessian", "scalar_laplace_hessian", "HESSIAN_CHUNK"]

#: rows per block of the Hessian's row-wise products (a few (rows, 1 + p) arrays at a time)
HESSIAN_CHUNK = 1 << 16


def has_scalar_hessian(design, cond):
    """Whether :func:`scalar_laplace_hessian` applies: one scalar random-effects term and a
    canonical link whose conditional model gives ``weight_derivatives`` (``dw/deta`` and
    ``d2w/deta2``), without parameters of its own."""
    return (len(design.blocks) == 1 and design.blocks[0].q == 1
            and getattr(cond, "canonical", False) and not getattr(cond, "k_extra", 0)
            and callable(getattr(cond, "weight_derivatives", None)))


def scalar_laplace_hessian(design, cond, modes, X):
    """Exact Hessian in ``(theta, beta)`` of the Laplace log-likelihood at converged modes.

    One scalar term (``lambda = theta``), canonical link (``w = -d2 l / d eta2``, the observed
    information), modes from PIRLS's scalar path (its diagonal factor, ``M_g = 1 + lambda^2
    S_g(w z^2)`` with ``S_g`` the sum over level ``g``'s rows).  The Laplace log-likelihood is
    ``F = h(u~) - sum_g log M_g / 2``, ``h = sum_i l_i - |u|^2 / 2``, and the modes solve
    ``lambda S_g(d1 z) = u_g`` level by level, so their derivatives follow by implicit
    differentiation in closed form: with ``psi = (lambda, beta)``, ``P = [z u, X]`` the partial
    derivatives of ``eta`` and ``C = e_0 S(d1 z) - lambda S(w z P)`` (``dh/du dpsi``), the
    modes move by ``U = C / M`` and ``eta`` by ``E = P + lambda z U``.  Then

    * ``d2 h(u~) = -P' W P + C' M^-1 C`` (the envelope theorem once more);
    * ``d M_g = 2 lambda S2 e_0 + lambda^2 S(w' z^2 E)`` with ``S2 = S(w z^2)``;
    * ``d2 M_g`` needs ``w''`` and the modes' second derivatives
      ``M u_kl = -d_k0 T_l - d_l0 T_k - lambda S(w' z E_k E_l) - lambda S2 (d_k0 u_l + d_l0 u_k)``,
      ``T = S(w z E)``; summed over the levels with ``1 / M_g`` its ``E_k E_l`` parts are one
      weighted cross-product ``E' diag(v) E`` and the rest is a row and column of ``theta``.

    Cost: O(n (1 + p)^2) in a few vector operations, against the ``2 (1 + p)`` gradients of
    central differences (each a PIRLS solve).

    Parameters
    ----------
    design : RandomEffectsDesign
        One scalar term (:func:`has_scalar_hessian`).
    cond : ConditionalModel
        Canonical link, with ``weight_derivatives(eta) -> (w, dw/deta, d2w/deta2)``.
    modes : Modes
        Converged modes, with ``eta``, ``d1`` and ``w`` at them.
    X : ndarray
        Fixed-effects design (n, p).

    Returns
    -------
    ndarray
        (1 + p, 1 + p): second derivatives of the Laplace log-likelihood (not the deviance).
    """
    fac = factor_at(None, modes)                        # (the scalar path's own factor)
    if not isinstance(fac, ScalarFactor):
        raise ValueError("the exact Hessian needs the diagonal factor of PIRLS's scalar path")
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    lam, M, u = float(fac.lam1[0, 0]), fac.M1, modes.u
    X = np.asarray(X, dtype=float)
    p = X.shape[1]
    w, w1, w2 = cond.weight_derivatives(modes.eta)
    ops = _zops(design)
    z = None if ops.all_ones[0] else ops.x0[0]
    w0 = w
    if z is not None:                                   # w z^2, w' z^2, w'' z^2, w' z
        wz, w1z, w = w * z, w1 * z, w * (z * z)
        w1, w2 = w1 * (z * z), w2 * (z * z)
    else:
        wz, w1z = w, w1
    d1z = modes.d1 if z is None else modes.d1 * z
    w1z3 = w1z if z is None else w1 * z
    n = codes.size
    # row blocks of at most HESSIAN_CHUNK rows: the (rows, 1 + p) arrays below stay small on
    # large data (one block on small data: the same operations)
    blocks = [slice(a, min(a + HESSIAN_CHUNK, n)) for a in range(0, n, HESSIAN_CHUNK)]
    # the per-level sums S2 = S(w z^2), s3 = S(w' z^3), S(d1 z), S(w z X), S(w' z^2 X)
    Ls = np.zeros((m, 3 + 2 * p))
    for sl in blocks:
        V = np.empty((sl.stop - sl.start, 3 + 2 * p))
        V[:, 0], V[:, 1], V[:, 2] = w[sl], w1z3[sl], d1z[sl]
        np.multiply(X[sl], wz[sl, None], out=V[:, 3:3 + p])
        np.multiply(X[sl], w1[sl, None], out=V[:, 3 + p:])
        if len(blocks) == 1:
            Ls = ops.level_sums(V)
        else:
            for k in range(V.shape[1]):
                Ls[:, k] += np.bincount(codes[sl], weights=V[:, k], minlength=m)
    S2, s3 = Ls[:, 0], Ls[:, 1]
    A = np.empty((m, 1 + p))                            # S(w z P), P = d eta / d psi at
    A[:, 0], A[:, 1:] = u * S2, Ls[:, 3:3 + p]         # fixed modes = [z u, X]
    C = -lam * A                                        # d2 h / du dpsi
    C[:, 0] += Ls[:, 2]
    U = C / M[:, None]                                  # d u / d psi
    B = np.empty((m, 1 + p))                            # S(w' z^2 P)
    B[:, 0], B[:, 1:] = u * s3, Ls[:, 3 + p:]
    lS2U = (lam * S2)[:, None] * U
    Sw1E = B + lam * s3[:, None] * U                    # S(w' z^2 E)
    G = (lam * lam) * Sw1E                              # d M / d psi, over M
    G[:, 0] += 2.0 * lam * S2
    G /= M[:, None]
    q = s3 / (M * M)
    # E' diag(v) E: lambda^2 S(w'' z^2 E_k E_l) / M and the modes' second derivatives'
    # -lambda^4 S(w' z E_k E_l) s3 / M^2; and P' W P
    vl = (lam * lam) / M
    ql = lam ** 4 * q
    Mkl = np.zeros((1 + p, 1 + p))
    PWP = np.zeros((1 + p, 1 + p))
    for sl in blocks:
        c = codes[sl]
        P = np.empty((sl.stop - sl.start, 1 + p))
        P[:, 0] = u[c] if z is None else u[c] * z[sl]
        P[:, 1:] = X[sl]
        E = (lam * U)[c]                                # d eta / d psi
        if z is not None:
            E *= z[sl, None]
        E += P
        Mkl += E.T @ ((w2[sl] * vl[c] - w1z[sl] * ql[c])[:, None] * E)
        PWP += (P.T * w0[sl]) @ P
    r = (2.0 * lam * (Sw1E / M[:, None]).sum(axis=0) + (lam * lam) * ((s3 / M) @ U)
         - lam ** 3 * (q @ (A + 2.0 * lS2U)))
    Mkl[0, :] += r
    Mkl[:, 0] += r
    Mkl[0, 0] += 2.0 * np.add.reduce(S2 / M)          # (np.sum's sum, without its wrapper)
    H = C.T @ U - PWP - 0.5 * Mkl + 0.5 * (G.T @ G)
    return 0.5 * (H + H.T)
