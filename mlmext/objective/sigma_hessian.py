"""lmerTest's pieces for Satterthwaite's df, exact, on the dense storage of a small system.

lmerTest takes the Hessian of the deviance in ``(theta, sigma)`` (beta profiled out) and the
Jacobian of ``vcov(beta)`` by numerical differences: ~160 factorizations per fit (Richardson
extrapolation), ten times a refit on a small design, paid once per simulation in a power
analysis.  On the dense storage (:class:`~mlmext.linalg.small.SmallDenseFactor`) both are
closed forms from one factor and its inverse:

* the deviance is ``D = l(theta) + r2(theta) / sigma^2 + nu log sigma^2`` (+ constants), with
  ``l`` the log-determinant (REML: of the random and fixed effects' block) and ``r2`` the
  penalized residual sum of squares, so with the factor's exact ``l', l'', r2', r2''``
  (:meth:`~mlmext.linalg.small.SmallDenseFactor.derivatives`)::

      H_tt = l'' + r2'' / sigma^2,  H_ts = -2 r2' / sigma^3,  H_ss = 6 r2 / sigma^4 - 2 nu / sigma^2

* ``vcov(beta) = sigma^2 (Omega_P^-1)_XX`` (``Omega_P``: the system of the random and fixed
  effects), so ``d vcov / d theta_k = -sigma^2 [Omega_P^-1 Omega_k Omega_P^-1]_XX`` with
  ``Omega_k = E_k' B + B' E_k`` (``E_k = d Lambda / d theta_k``, ``B = A diag(Lambda, I)``)
  and ``d vcov / d sigma = 2 sigma (Omega_P^-1)_XX``.

Other storages keep the numerical differences (:func:`mlmext.inference.ddf._satt_pieces`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["exact_satt_derivatives"]


def exact_satt_derivatives(obj, theta, sigma):
    """``(H, jac)`` at ``(theta, sigma)``: the Hessian of the deviance in ``(theta, sigma)`` and
    the derivatives of ``vcov(beta)`` (one (p, p) array per parameter, sigma last); None when
    the deviance ``obj`` (:class:`~mlmext.objective.lmm.LMMDeviance`) is not on the dense
    storage or its factor is not positive definite at ``theta``."""
    try:
        ch = obj.factor(theta)
    except np.linalg.LinAlgError:
        return None
    if not hasattr(ch, "derivatives"):
        return None
    p = ch.p
    reml = bool(obj.reml)
    dld, d2ld, dr2, d2r2 = ch.derivatives(p if reml else 0)
    r2 = float(ch.r2)
    nu = obj.n - (p if reml else 0)
    s2 = float(sigma) ** 2
    K = dld.size
    H = np.empty((K + 1, K + 1))
    H[:K, :K] = d2ld + d2r2 / s2
    H[:K, K] = H[K, :K] = -2.0 * dr2 / (s2 * sigma)
    H[K, K] = 6.0 * r2 / s2 ** 2 - 2.0 * nu / s2
    cov, dcov = ch.cov_beta_derivatives()
    jac = [s2 * d for d in dcov]
    jac.append(2.0 * sigma * cov)
    return H, jac
