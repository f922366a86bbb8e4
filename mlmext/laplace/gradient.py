"""The exact gradient of the Laplace log-likelihood in theta, beta and the model's own parameters."""
from __future__ import annotations


import numpy as np

from .pirls import factor_at
from .rows import MemoryRows


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
