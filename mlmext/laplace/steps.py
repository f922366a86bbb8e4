"""PIRLS step control shared by the blocked and the scalar iterations: step halving, the
rounding floor of the decrement, the solve in the span of X, the messages."""
from __future__ import annotations

import math

import numpy as np

from .zops import _reweight


def _halving_step(evaluate, u_at, eta_at, obj, maxhalf, penalized=None):
    """PIRLS line search: the first t in 1, 1/2, 1/4, ... whose penalized log-likelihood
    ``loglik(eta_at(t)) - |u_at(t)|^2 / 2`` is not below ``obj`` (to rounding).  With
    ``penalized``, only the first ``penalized`` entries of ``u_at(t)`` are penalized (the
    dense path's ``(u, beta)``).

    Returns ``(t, u, eta, loglik, objective, d1, w, failed trials)``; ``t`` is None (and the
    rest is None too) when ``maxhalf`` halvings do not give such a step.
    """
    t = 1.0
    for k in range(maxhalf + 1):
        u_t, eta_t = u_at(t), eta_at(t)
        ll_t, d1_t, w_t = evaluate(eta_t)
        up = u_t if penalized is None else u_t[:penalized]
        obj_t = ll_t - 0.5 * float(up @ up)
        if math.isfinite(obj_t) and obj_t >= obj - 1e-10 * (1.0 + abs(obj)):
            return t, u_t, eta_t, ll_t, obj_t, d1_t, w_t, k
        t *= 0.5
    return None, None, None, None, None, None, None, maxhalf + 1


#: relative size (to the magnitude of the terms summed into the penalized log-likelihood)
#: below which a decrement that stopped shrinking is rounding noise
_ROUNDING_RTOL = 1e-15


def _at_rounding_floor(dec, dec_prev, obj, scale=0.0):
    """True when the PIRLS decrement stopped decreasing at the level of rounding.

    The absolute ``tol`` on the decrement cannot be met when the penalized log-likelihood is
    large (counts of 1e9: terms ~1e10, steps solved to ~1e-9 relative give decrements
    ~1e-6): the iterations then hover, up or down by rounding (which way depends on the BLAS
    kernel).  Newton and Fisher scoring shrink the decrement by large factors until rounding
    takes over, so a decrement that did not halve and is below ``_ROUNDING_RTOL`` times the
    size of the terms summed (``scale``: a Poisson log-likelihood of counts near 1e9 is -11
    per row, the difference of two terms of 2e10, so it is known to ~1e-6 per row) means
    converged.
    """
    return dec > 0.5 * dec_prev and dec < _ROUNDING_RTOL * (1.0 + abs(obj) + scale)


def _decrement_stop(dec, dec_prev, obj, tol, it, cond, certifies=True):
    """Whether PIRLS stops at iteration ``it`` on its Newton decrement ``dec`` (shared by the
    blocked, dense and scalar iterations): None to go on, else ``(converged, message)`` -- a
    non-finite decrement fails; one below ``tol`` or at the rounding floor converges when the
    step ``certifies`` the modes (a Fisher-scoring step or one without a factor does not)."""
    if not math.isfinite(dec):
        return False, f"non-finite PIRLS step at iteration {it}"
    if certifies and (dec < tol or _at_rounding_floor(dec, dec_prev, obj,
                                                      getattr(cond, "loglik_scale", 0.0))):
        return True, ""
    return None


def _solve_in_span(chol, X, z, w, lams):
    """PIRLS solution for a working response ``z`` whose factorization fails (see :func:`pirls`).

    Returns ``(u, beta)`` or None when the factor itself (not just the response's pivot) is
    not positive definite.  ``chol`` is left holding the factor with the auxiliary response.
    """
    e = np.random.default_rng(0).standard_normal(z.shape[0]) * (1.0 + np.max(np.abs(z)))
    sols = []
    for resp in (z + e, e):
        XY = np.column_stack([X, resp]) if X is not None else resp[:, None]
        _reweight(chol, XY, w)
        try:
            chol.update(lams)
        except np.linalg.LinAlgError:
            return None
        sols.append(chol.solve())
    (u1, b1), (u2, b2) = sols
    return u1 - u2, (None if b1 is None or X is None else b1 - b2)


def _halving_failed(dec, obj, it, maxhalf):
    """``(converged, message)`` of a PIRLS run whose line search found no better step: a
    decrement already at the floor of floating point counts as convergence."""
    if dec < 1e-6 * (1.0 + abs(obj)):
        return True, "converged to rounding level (step halving could not improve further)"
    return False, (f"PIRLS step halving failed to increase the penalized log-likelihood at "
                   f"iteration {it} after {maxhalf} halvings (decrement {dec:.3g})")


def _final_message(message, converged, restarted):
    """The PIRLS message after the iterations (shared by :func:`pirls` and the scalar path)."""
    if not converged and not message:
        message = "PIRLS failed"
    if restarted:
        message = ("restarted from u = 0 (non-finite start); " + message).rstrip("; ")
    return message
