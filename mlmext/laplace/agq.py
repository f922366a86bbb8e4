"""Adaptive Gauss-Hermite quadrature: rules, checks, the log-likelihood and its gradient."""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from .pirls import factor_at, pirls
from .scalar import _is_scalar_design


# ----------------------------------------------------------------------------- AGQ
def gh_rule(nagq, q=1):
    """Gauss-Hermite nodes and weights for the standard normal in ``q`` dimensions.

    Product grid of the one-dimensional ``nagq``-point rule (lme4's
    ``GHrule``): ``sum_k w_k f(z_k) ~ E f(Z)``, ``Z ~ N(0, I_q)``.

    Returns
    -------
    z : ndarray, shape (nagq**q, q)
    w : ndarray, shape (nagq**q,)
    """
    nagq = check_nagq(nagq)
    z, ww = _gh_rule_cached(nagq, int(q))
    return z.copy(), ww.copy()


#: most quadrature nodes per random effect: lme4's limit (``GHrule``: ``ord < 101``); numpy's
#: Gauss-Hermite rule itself breaks down (overflow, NaN nodes) a few hundred nodes further on
MAX_NAGQ = 100


#: most nodes of a product grid (``nagq**q``) per level: every node costs a pass over the data
#: for each likelihood evaluation, and the fit needs hundreds of evaluations
MAX_AGQ_GRID = 100_000


def check_agq(design, nagq):
    """Whether adaptive quadrature with ``nagq`` nodes applies to ``design`` (GLMM and clmm).

    ``NotImplementedError`` unless there is a single grouping factor with at most three
    random effects per level; ``ValueError`` when the product grid is too large.
    """
    if nagq <= 1:
        return
    if len(design.blocks) != 1:
        raise NotImplementedError(
            "adaptive Gauss-Hermite quadrature (nagq > 1) needs a single grouping factor; "
            f"this model has {len(design.blocks)} ({', '.join(b.name for b in design.blocks)}). "
            "Use nagq=1 (Laplace).")
    q = design.blocks[0].q
    if q > 3:
        raise NotImplementedError(
            f"adaptive Gauss-Hermite quadrature supports at most 3 random effects per level; "
            f"the term on {design.blocks[0].name!r} has {q}. Use nagq=1 (Laplace).")
    check_agq_grid(nagq, q)


def check_agq_grid(nagq, q):
    """``ValueError`` when the product grid of ``nagq`` nodes in ``q`` dimensions is too large."""
    if q > 1 and nagq ** q > MAX_AGQ_GRID:
        top = int(math.floor(MAX_AGQ_GRID ** (1.0 / q) + 1e-9))
        raise ValueError(f"nagq={nagq} with {q} random effects per level is a product grid of "
                         f"{nagq ** q:,} nodes per level (at most {MAX_AGQ_GRID:,}: each node is a "
                         f"pass over the data per likelihood evaluation); use nagq <= {top}")


def check_positive(integer=False, **kw):
    """``ValueError`` unless the one keyword value is a positive number (whole, if ``integer``):
    the fits' ``maxiter`` and tolerances (0 or a negative value would end the iterations at
    once or never)."""
    (name, v), = kw.items()
    ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and v > 0
    if ok and integer:
        ok = float(v) == int(v)
    if not ok:
        raise ValueError(f"{name} must be a positive {'whole number' if integer else 'number'}; "
                         f"got {v!r}")


def check_nagq(nagq, allow=None):
    """``nagq`` as an int in ``1 .. MAX_NAGQ``, else a ``ValueError`` saying what is allowed.

    Parameters
    ----------
    nagq : int
        Quadrature nodes per random effect (1 = Laplace).  Floats are accepted only when
        they are whole numbers (``25.0``): ``2.5`` is an error, not silently 2.
    allow : callable, optional
        ``allow(n)`` is True for values below 1 that the caller handles itself (returned
        unchanged).
    """
    try:
        ok = isinstance(nagq, numbers.Real) and float(nagq) == int(nagq)
    except (TypeError, ValueError, OverflowError):      # nan, inf
        ok = False
    if not ok or isinstance(nagq, (bool, np.bool_)):
        raise ValueError(f"nagq must be a whole number of quadrature nodes (1 = Laplace, 2 to "
                         f"{MAX_NAGQ} = adaptive Gauss-Hermite); got {nagq!r}")
    n = int(nagq)
    if n < 1 and not (allow is not None and allow(n)):
        raise ValueError(f"nagq must be at least 1 (1 = Laplace, 2 to {MAX_NAGQ} = adaptive "
                         f"Gauss-Hermite); got {n}")
    if n > MAX_NAGQ:
        raise ValueError(f"nagq={n} is more quadrature nodes than the {MAX_NAGQ} allowed (lme4's "
                         "limit); the adaptive rule has converged long before: 25 nodes usually "
                         "agree with 100 to many digits")
    return n


@functools.lru_cache(maxsize=64)
def _gh_rule_cached(nagq, q):
    """:func:`gh_rule` without the copies (the rule is the same for every evaluation of a fit)."""
    from numpy.polynomial.hermite_e import hermegauss
    if nagq == 1:
        return np.zeros((1, q)), np.ones(1)
    x, w = hermegauss(nagq)
    w = w / np.sqrt(2.0 * np.pi)
    x[np.abs(x) < 1e-14] = 0.0
    grids = np.meshgrid(*([x] * q), indexing="ij")
    wgrids = np.meshgrid(*([w] * q), indexing="ij")
    z = np.column_stack([g.ravel() for g in grids])
    ww = np.prod(np.column_stack([g.ravel() for g in wgrids]), axis=1)
    return z, ww


def agq_loglik(design, chol, eta_fixed, cond, theta, nagq, u0=None, modes=None, **kwargs):
    """Adaptive Gauss-Hermite approximation for a single grouping factor.

    With one grouping factor the integral factors over its levels ``g``.
    Each is centred at the conditional mode ``u~_g`` and scaled by
    ``S_g`` with ``S_g S_g' = (Lambda' Z_g' W Z_g Lambda + I)^-1``:

        l_g = -log|L_g|^2 / 2 + log sum_k w_k exp(sum_{i in g} loglik_i(eta~_i + x_i' Lambda S_g z_k)
                                                 - |u~_g + S_g z_k|^2 / 2 + |z_k|^2 / 2)

    with the standard-normal Gauss-Hermite rule (:func:`gh_rule`; a product
    grid of ``nagq**q`` nodes for a term with ``q`` random effects).  With
    ``nagq = 1`` this is the Laplace approximation.

    Parameters
    ----------
    design, chol, eta_fixed, cond, theta, u0 :
        As for :func:`pirls`.
    nagq : int
        Quadrature points per dimension.
    modes : Modes, optional
        Modes already found at this ``theta`` and ``eta_fixed`` (``chol`` must
        still hold their factor); PIRLS is then skipped.

    Returns
    -------
    llf : float
        ``-inf`` when PIRLS failed. Less ``cond.loglik_const`` (as ``loglik_obs``).
    modes : Modes
    """
    if len(design.blocks) != 1:
        raise NotImplementedError("adaptive Gauss-Hermite quadrature (nagq > 1) needs a single "
                                  "grouping factor; the model has "
                                  f"{len(design.blocks)} ({', '.join(b.name for b in design.blocks)}). "
                                  "Use the Laplace approximation (nagq=1).")
    blk = design.blocks[0]
    q = blk.q
    if q > 3:
        raise NotImplementedError(f"adaptive Gauss-Hermite quadrature supports up to 3 random "
                                  f"effects per level; the term on {blk.name!r} has {q}")
    theta = np.asarray(theta, dtype=float)
    lams = kwargs.pop("lams", None)
    lams = design.lambdas(theta) if lams is None else lams
    if modes is None:
        modes = pirls(design, chol, eta_fixed, cond, theta, u0=u0, lams=lams, **kwargs)
    if not modes.converged or not np.isfinite(modes.logdet):
        return -np.inf, modes
    llf = _agq_from_modes(blk, factor_at(chol, modes), lams[0], cond, modes, nagq)
    return llf, modes


def _node_values(cond, ETA, what):
    """``what(cond, eta)`` for each row of ETA (nodes x n): in one call when the conditional
    model takes 2-D ``eta`` (``vectorized_eta = True``), else row by row."""
    with np.errstate(all="ignore"):
        if getattr(cond, "vectorized_eta", False):
            return what(cond, ETA)
        return np.stack([what(cond, row) for row in ETA])


def _node_chunks(K, n, size=1 << 20):
    """Slices of the K nodes with about ``size`` node-observation pairs each (bounded memory)."""
    step = max(1, size // max(n, 1))
    return [slice(a, min(a + step, K)) for a in range(0, K, step)]


def _level_node_sums(codes, m, V):
    """(K, n) -> (K, m): per-level sums of each row."""
    K = V.shape[0]
    idx = (codes[None, :] + m * np.arange(K)[:, None]).ravel()
    return np.bincount(idx, weights=V.ravel(), minlength=K * m).reshape(K, m)


def _agq_from_modes(blk, chol, lam, cond, modes, nagq):
    q, m, codes = blk.q, blk.m, blk.codes
    z, wts = gh_rule(nagq, q)
    u = modes.u.reshape(m, q)
    M = np.asarray(chol.M1)
    if q == 1:
        M = M.reshape(m, 1, 1)
    Lg = np.linalg.cholesky(M)                                   # M_g = L_g L_g'
    logdet_g = 2.0 * np.log(np.diagonal(Lg, axis1=1, axis2=2)).sum(axis=1)
    # S_g = L_g^-T, so S_g S_g' = M_g^-1
    eye = np.broadcast_to(np.eye(q), Lg.shape)
    S = np.swapaxes(np.linalg.solve(Lg, eye), 1, 2)              # (m, q, q)
    R = np.einsum("ab,gbc->gac", lam, S)                         # Lambda S_g
    XR = np.einsum("ia,iac->ic", blk.X, R[codes])                # x_i' Lambda S_g, (n, q)
    eta0 = modes.eta
    with np.errstate(all="ignore"):
        l0 = np.bincount(codes, weights=cond.loglik_obs(eta0), minlength=m)
    base = l0 - 0.5 * np.sum(u * u, axis=1)
    A = np.empty((m, z.shape[0]))
    for sl in _node_chunks(z.shape[0], eta0.shape[0]):
        zk = z[sl]
        lk = _level_node_sums(codes, m, _node_values(cond, eta0 + zk @ XR.T, lambda c, e: c.loglik_obs(e)))
        uk = u[None, :, :] + np.einsum("gab,kb->kga", S, zk)    # nodes in u: u~_g + S_g z_k
        A[:, sl] = (lk - 0.5 * np.sum(uk * uk, axis=2) - base + 0.5 * np.sum(zk * zk, axis=1)[:, None]).T
    A[~np.isfinite(A)] = -np.inf
    A += np.log(wts)[None, :]
    amax = A.max(axis=1, keepdims=True)
    amax[~np.isfinite(amax)] = 0.0      # a level impossible at every node: its sum is -inf
    with np.errstate(divide="ignore"):
        lse = amax[:, 0] + np.log(np.exp(A - amax).sum(axis=1))
    return float(np.sum(base + lse - 0.5 * logdet_g))


def agq_loglik_gradient(design, chol, cond, theta, modes, nagq, X=None):
    """AGQ log-likelihood and its exact gradient for a single scalar random-effects term.

    Per level ``g`` the quadrature is ``l_g = log sum_k w_k exp(B_gk) - log M_g / 2`` with
    ``B_gk = sum_{i in g} loglik_i(eta_ik) - v_gk^2 / 2 + t_k^2 / 2`` at the nodes ``v_gk =
    u~_g + s_g t_k``, ``s_g = M_g^(-1/2)``, ``eta_ik = eta~_i + lambda z_i s_g t_k``.  A
    parameter moves ``B_gk`` directly (``beta`` and the conditional model's own parameters
    through ``loglik_i``, ``lambda`` through ``eta_ik``) and through the nodes, which follow
    the mode ``u~_g`` and the scale ``s_g``: their derivatives come from the implicit function
    theorem at the modes, as in :func:`laplace_gradient` (``d u~ = G_u. / H`` with the
    observed information ``H``; ``dM`` from ``dw/deta`` and the model's ``dw/dpsi``).  One
    pass over the nodes gives the value and the gradient (central differences need ``2 p``).

    Parameters and returns as :func:`laplace_gradient` (``g_theta``, ``g_beta``,
    ``g_extra``), preceded by the AGQ log-likelihood (``-inf`` when it is not finite).
    The conditional model needs ``hessian_terms`` (and ``param_derivatives`` for ``g_extra``).
    """
    if not (_is_scalar_design(design) and hasattr(cond, "hessian_terms")):
        raise NotImplementedError("the AGQ gradient needs a single scalar random-effects term and "
                                  "hessian_terms(); use finite differences")
    blk = design.blocks[0]
    codes, m = blk.codes, blk.m
    zx = np.asarray(blk.X[:, 0], dtype=float)
    lam = float(np.asarray(theta, dtype=float)[blk.t_idx[0]])
    M = np.asarray(factor_at(chol, modes).M1, dtype=float).reshape(m)
    eta, u = modes.eta, modes.u
    n = eta.shape[0]
    d1, w = (modes.d1, modes.w) if modes.d1 is not None else cond.derivatives(eta)
    h, dw = cond.hessian_terms(eta)
    if getattr(cond, "canonical", False):
        h = w
    kx = getattr(cond, "k_extra", 0) if hasattr(cond, "param_derivatives") else 0
    Xf = np.zeros((n, 0)) if X is None else np.asarray(X, dtype=float)
    p = Xf.shape[1]
    # d u~ / dphi = G_uphi / H and d M / dphi for phi = (theta, beta, psi): per-level sums
    cols = [zx * d1, h * zx * zx, w * zx * zx, dw * zx ** 3, (h * zx)[:, None] * Xf,
            (dw * zx * zx)[:, None] * Xf]
    if kx:
        _, dd1, dwp = cond.param_derivatives(eta)
        cols += [zx[:, None] * dd1, (zx * zx)[:, None] * dwp]
    S = _level_col_sums(codes, m, np.column_stack(cols))
    S_zd1, S_hz2, S_wz2, S_dwz3 = S[:, 0], S[:, 1], S[:, 2], S[:, 3]
    S_hzX, S_dwz2X = S[:, 4:4 + p], S[:, 4 + p:4 + 2 * p]
    G_u = [(S_zd1 - lam * S_hz2 * u)[:, None], -lam * S_hzX]
    dM = [(2.0 * lam * S_wz2 + lam * lam * S_dwz3 * u)[:, None], lam * lam * S_dwz2X]
    if kx:
        G_u.append(lam * S[:, 4 + 2 * p:4 + 2 * p + kx])
        dM.append(lam * lam * S[:, 4 + 2 * p + kx:])
    du = np.hstack(G_u) / (1.0 + lam * lam * S_hz2)[:, None]
    dM = np.hstack(dM) + (lam ** 3 * S_dwz3)[:, None] * du      # ... plus the move of eta~
    # the nodes: value, d loglik / d eta and d loglik / d psi there
    t, wts = gh_rule(nagq, 1)
    t = t[:, 0]
    s = 1.0 / np.sqrt(M)
    v = u[None, :] + s[None, :] * t[:, None]                     # (K, m)
    ETA = eta[None, :] + (lam * zx * s[codes])[None, :] * t[:, None]
    Lsum = _level_node_sums(codes, m, _node_values(cond, ETA, lambda c, e: c.loglik_obs(e)))
    D1 = _node_values(cond, ETA, lambda c, e: c.derivatives(e)[0])
    Zl = _level_node_sums(codes, m, D1 * zx[None, :])
    if kx:
        dl_psi = getattr(cond, "param_loglik_derivatives", None) or (lambda e: cond.param_derivatives(e)[0])
        LP = _node_values(cond, ETA, lambda c, e: dl_psi(e))
    B = Lsum - 0.5 * v * v + 0.5 * (t * t)[:, None]
    B[~np.isfinite(B)] = -np.inf
    A = B + np.log(wts)[:, None]
    amax = A.max(axis=0)
    amax[~np.isfinite(amax)] = 0.0      # a level impossible at every node: its sum is -inf
    e = np.exp(A - amax)
    tot = e.sum(axis=0)
    with np.errstate(divide="ignore"):
        llf = float(np.sum(amax + np.log(tot) - 0.5 * np.log(M)))
    if not np.isfinite(llf):
        return (-np.inf, np.full(1, np.nan), None if X is None else np.full(p, np.nan),
                np.full(kx, np.nan) if kx else None)
    pi = e / tot                                                 # (K, m) node weights per level
    pi_obs = pi[:, codes]
    # direct derivatives of sum_k pi_gk B_gk, then through the nodes v_gk = u~_g + s_g t_k
    g = np.concatenate([[np.sum(pi * v * Zl)], Xf.T @ np.einsum("kn,kn->n", pi_obs, D1),
                        np.einsum("kn,knx->x", pi_obs, LP) if kx else []])
    a = lam * Zl - v                                             # d B_gk / d v_gk
    A1 = np.sum(pi * a, axis=0)
    A2 = np.sum(pi * a * t[:, None], axis=0)
    g += A1 @ du - 0.5 * ((1.0 + A2 * s) / M) @ dM
    return llf, g[:1], (None if X is None else g[1:1 + p]), (g[1 + p:] if kx else None)


def _level_col_sums(codes, m, V):
    """(n, c) -> (m, c): per-level sums of each column (one bincount)."""
    c = V.shape[1]
    idx = (codes[:, None] * c + np.arange(c)[None, :]).ravel()
    return np.bincount(idx, weights=V.ravel(), minlength=m * c).reshape(m, c)
