"""The exact gradient of the Laplace log-likelihood in theta, beta and the model's own parameters."""
from __future__ import annotations


import numpy as np

from ..linalg import ScalarFactor
from .pirls import factor_at
from .rows import MemoryRows
from .zops import _zops


# ----------------------------------------------------------------------------- gradient
def laplace_gradient(design, chol, cond, theta, modes, X=None, rows=None, release_eta=False):
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
        Fixed-effects design; the gradient in ``beta`` is returned when given (for summed
        rows: anything not None, the design is on the chunks).
    rows : SummedRows, optional
        Rows held elsewhere (:mod:`.rows`): one pass for the leverages' sums, the rest from
        the cross-products at the modes (canonical links).  Default: the rows in memory.
    release_eta : bool
        The caller reads ``modes.eta`` no more and holds it nowhere else: it is dropped
        (``modes.eta`` set to None) once the Hessian terms are made, when the gradient does not
        read it again (no parameters of the conditional model's own): one n-sized array fewer
        through the gradient's peak of memory.

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
    if (rows is None and isinstance(chol, ScalarFactor) and chol.a11 is None
            and getattr(cond, "canonical", False) and not getattr(cond, "k_extra", 0)):
        return _scalar_gradient(design, chol, cond, modes, X, release_eta)
    theta = np.asarray(theta, dtype=float)
    lams = getattr(chol, "lams", None) or design.lambdas(theta)
    if rows is None:
        rows = MemoryRows.at_modes(design, cond, modes, X)
        h, dw = cond.hessian_terms(rows.eta)
        if getattr(cond, "canonical", False):
            h = rows.w
        if release_eta and not getattr(cond, "k_extra", 0):
            modes.eta = rows.eta_fixed = rows._eta = None
    elif not getattr(cond, "canonical", False):
        raise NotImplementedError("the gradient on summed rows needs a canonical link")
    else:
        h = dw = None                        # on the chunks (h = w: canonical)
    # the rows' part: the leverages a = dw * lev and their sums, then s = H^-1 Lambda' Z' a
    # and the sums with Z Lambda s
    first = rows.gradient_sums(chol, lams, theta, modes.u, dw, X)
    s, second = rows.gradient_second(chol, lams, theta, h, first["ztva"], X)
    g_theta = first["Kud1"] - first["T"] - 0.5 * (first["Kua"] + second["Ksd1"] - second["Kuhzs"])
    g_beta = None
    if X is not None:
        g_beta = first["Xd1"] - 0.5 * first["Xa"] + 0.5 * second["Xhzs"]
    g_extra = None
    if getattr(cond, "k_extra", 0) and hasattr(cond, "param_derivatives"):
        eta = rows.eta
        dl, dd1, dwp = cond.param_derivatives(eta)
        lev = first["lev"]
        g_extra = dl.sum(axis=0) - 0.5 * (lev @ dwp + second["zs"] @ dd1)
    return g_theta, g_beta, g_extra


def _scalar_gradient(design, fac, cond, modes, X, release_eta):
    """:func:`laplace_gradient` for one scalar term at the diagonal factor of PIRLS's scalar
    path (``fac``), canonical link (``h = w``), no parameters of the conditional model.

    ``M`` is diagonal, so the local inverse is ``lambda^2 z_i^2 / M_g`` and the solve with ``H``
    a division: with ``S_g`` the per-level sums, ``a = dw lambda^2 z^2 / M_g`` and
    ``du_g / dtheta = (S_g(d1 z) - lambda u_g S_g(w z^2)) / M_g``,
    ``dF/dtheta = sum_g [u_g S_g(d1 z) - lambda S_g(w z^2) / M_g
    - S_g(a z) (u_g + lambda du_g / dtheta) / 2]`` and
    ``dF/dbeta = X' (d1 - a / 2 + w z c / 2)`` with ``c_g = lambda^2 S_g(a z) / M_g``.
    The same sums as the general path in a dozen vector operations (its Python overhead was
    most of an evaluation on small data).
    """
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    lam, M, u = float(fac.lam1[0, 0]), fac.M1, modes.u
    d1, w = modes.d1, modes.w
    _, dw = cond.hessian_terms(modes.eta)
    if release_eta:
        modes.eta = None
    ops = _zops(design)
    z = None if ops.all_ones[0] else ops.x0[0]

    def per_level(v):
        return np.bincount(codes, weights=v if z is None else v * z, minlength=m)

    sd1 = per_level(d1)                                  # S_g(d1 z)
    swz2 = per_level(w if z is None else w * z)          # S_g(w z^2)
    lev = (lam * lam) / M[codes]
    if z is not None:
        lev *= z * z
    a = dw * lev
    saz = per_level(a)
    du = (sd1 - lam * u * swz2) / M
    # (np.add.reduce: np.sum's sum, without its wrapper)
    g_theta = np.array([u @ sd1 - lam * np.add.reduce(swz2 / M) - 0.5 * (saz @ (u + lam * du))])
    g_beta = None
    if X is not None:
        c = ((lam * lam) * saz / M)[codes] * w
        if z is not None:
            c *= z
        g_beta = np.asarray(X).T @ (d1 - 0.5 * a + 0.5 * c)
    return g_theta, g_beta, None
