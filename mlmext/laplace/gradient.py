"""The exact gradient of the Laplace log-likelihood in theta, beta and the model's own parameters."""
from __future__ import annotations


import numpy as np

from .pirls import factor_at
from .zops import _zops


# ----------------------------------------------------------------------------- gradient
def _solve_md(chol, ops, lams, h, w, v, tol=1e-13, maxiter=200):
    """Solve ``(Lambda' Z' H Z Lambda + I) x = v`` (observed information ``h``) by conjugate
    gradients preconditioned with the factor for the weights ``w`` held by ``chol``."""
    x = chol.solve_re(v)
    if h is w:
        return x
    apply = lambda y: y + ops.ztv(h * ops.zlam(y, lams), lams)
    r = v - apply(x)
    z = chol.solve_re(r)
    pvec = z.copy()
    rz = float(r @ z)
    vnorm = max(float(np.sqrt(v @ v)), 1e-300)
    for _ in range(maxiter):
        if np.sqrt(abs(rz)) <= tol * vnorm or not np.isfinite(rz):
            break
        Ap = apply(pvec)
        alpha = rz / float(pvec @ Ap)
        x += alpha * pvec
        r -= alpha * Ap
        z = chol.solve_re(r)
        rz_new = float(r @ z)
        pvec = z + (rz_new / rz) * pvec
        rz = rz_new
    return x


def laplace_gradient(design, chol, cond, theta, modes, X=None):
    """Exact gradient of the Laplace log-likelihood at converged modes.

    The Laplace log-likelihood ``F = sum_i l_i(eta~) - |u~|^2/2 - log|M|/2``,
    ``M = Lambda' Z' W Z Lambda + I``, depends on a parameter ``psi`` directly
    and through the modes.  By the envelope theorem the first two terms need
    only their partial derivatives; for the determinant,
    ``d log|M| = tr(M^-1 dM)`` with ``dM`` from ``d Lambda``, from parameters
    of the conditional model (``dw``), and from the move of ``eta~``:
    ``d eta~ = d eta_direct + Z Lambda H^-1 (d grad_u)`` where ``H`` is the
    penalized observed information.  The traces reduce to the leverages
    ``z_i' Lambda M^-1 Lambda' z_i`` and the row-local pieces of ``M^-1``
    (:meth:`mlmext.linalg.BlockedCholesky.local_inverse`), plus one solve with
    ``H`` (conjugate gradients preconditioned by ``M`` when the weights are
    expected rather than observed information).  Cost: O(n (q + p)) beyond
    the factor already computed.

    Parameters
    ----------
    design : RandomEffectsDesign
    chol : BlockedCholesky
        Holding the factor at the modes (as :func:`pirls` leaves it).
    cond : ConditionalModel
        Must provide ``hessian_terms``; ``param_derivatives`` for the gradient
        in its own parameters.
    theta : ndarray
    modes : Modes
        Converged modes at ``theta`` (and the fixed part used to find them).
    X : ndarray, optional
        Fixed-effects design; the gradient in ``beta`` is returned when given.

    Returns
    -------
    g_theta : ndarray
    g_beta : ndarray or None
    g_extra : ndarray or None
        Gradient in the conditional model's parameters (``k_extra`` of them).
    """
    if not hasattr(cond, "hessian_terms"):
        raise NotImplementedError("the conditional model has no hessian_terms(); use finite differences")
    chol = factor_at(chol, modes)
    theta = np.asarray(theta, dtype=float)
    lams = getattr(chol, "lams", None) or design.lambdas(theta)
    ops = _zops(design)
    eta = modes.eta
    if modes.d1 is not None and modes.w is not None:
        d1, w = modes.d1, modes.w
    else:
        d1, w = cond.derivatives(eta)
    h, dw = cond.hessian_terms(eta)
    if getattr(cond, "canonical", False):
        h = w
    t_list, rho_list = chol.local_inverse()
    lev = np.zeros(eta.shape[0])
    for tb, rb in zip(t_list, rho_list):
        lev += np.einsum("ij,ij->i", tb, rb)
    a = dw * lev
    s = _solve_md(chol, ops, lams, h, w, ops.ztv(a, lams))
    zs = ops.zlam(s, lams)
    hzs = h * zs
    # theta
    Ku = ops.dtheta_cols(modes.u, design, theta)          # (n, ntheta): Z dLambda_k u~
    Ks = ops.dtheta_cols(s, design, theta)
    T = np.zeros(design.ntheta)
    for kb, (b, rb) in enumerate(zip(design.blocks, rho_list)):
        if ops.all_ones[kb]:
            T[b.t_idx[0]] += w @ rb[:, 0]
            continue
        for r, c, k in zip(b.t_rows, b.t_cols, b.t_idx):
            T[k] += w @ (b.X[:, r] * rb[:, c])
    g_theta = Ku.T @ d1 - T - 0.5 * (Ku.T @ a + Ks.T @ d1 - Ku.T @ hzs)
    g_beta = None
    if X is not None:
        g_beta = np.asarray(X).T @ (d1 - 0.5 * a + 0.5 * hzs)
    g_extra = None
    if getattr(cond, "k_extra", 0) and hasattr(cond, "param_derivatives"):
        dl, dd1, dwp = cond.param_derivatives(eta)
        g_extra = dl.sum(axis=0) - 0.5 * (lev @ dwp + zs @ dd1)
    return g_theta, g_beta, g_extra
