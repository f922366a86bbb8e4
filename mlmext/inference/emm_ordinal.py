"""clmm marginal means on the probability scale (emmeans' ``mode = "prob"`` and
``"mean.class"``).

emmeans regrids a clmm's reference grid to these scales before averaging: each grid point's
category probabilities ``P_j = F(theta_j - eta) - F(theta_{j-1} - eta)`` (``theta = T alpha``,
``eta = x' beta``, random effects at 0) are averaged with equal weights, and their standard
errors come from the averaged gradients in (alpha, beta) (the delta method), so the intervals
are symmetric on the probability scale, as emmeans prints them.
"""
from __future__ import annotations

import numpy as np


def probability_rows(r, X, category, mode):
    """(values, gradients) per grid row: ``P_category`` (``mode="prob"``; ``category`` the
    0-based category of each row) or the mean class ``sum_j j P_j`` (``"mean.class"``)."""
    model = r.model
    T = np.asarray(model.thr.T, dtype=float)
    params = np.asarray(r.params, dtype=float)
    k = T.shape[1]
    theta = T @ params[:k]
    eta = X @ params[k:]
    n, K = len(eta), len(theta) + 1
    full = np.concatenate([[-np.inf], theta, [np.inf]])
    z = full[None, :] - eta[:, None]                       # (n, K + 1)
    with np.errstate(invalid="ignore"):
        F = model.link.cdf(z)
        f = np.where(np.isfinite(z), model.link.pdf(np.where(np.isfinite(z), z, 0.0)), 0.0)
    P = F[:, 1:] - F[:, :-1]
    Tfull = np.vstack([np.zeros(k), T, np.zeros(k)])      # d theta_j / d alpha (0 at +-inf)

    def grad(j):                                          # (n, k + p) gradient of P_j
        up, dn = f[:, j + 1], f[:, j]
        return np.hstack([up[:, None] * Tfull[j + 1] - dn[:, None] * Tfull[j],
                          -(up - dn)[:, None] * X])
    if mode == "prob":
        cat = np.asarray(category, dtype=int)
        G = np.zeros((n, k + X.shape[1]))
        for j in range(K):
            rows = cat == j
            if rows.any():
                G[rows] = grad(j)[rows]
        return P[np.arange(n), cat], G
    weights = np.arange(1, K + 1, dtype=float)
    return P @ weights, sum(w * grad(j) for j, w in enumerate(weights))
