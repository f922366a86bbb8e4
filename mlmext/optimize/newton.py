"""Quasi-Newton and Newton minimization with an exact or differenced gradient (the GLMM fit).

``quasi_newton`` runs L-BFGS-B on a (value, gradient) function with the finite-difference
entries' noise in mind; ``newton`` polishes with a Hessian from ``hessian_fn`` until the Newton
decrement is below ``tol``.
"""
from __future__ import annotations


import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from .linesearch import backtrack
from .numdiff import fd_steps

__all__ = ["quasi_newton", "newton"]


def quasi_newton(fg, x0, bounds, fd_idx, maxiter=200, tol=1e-4, curv=2.0, H0=None):
    """Damped BFGS started from a structured Hessian, until the Newton decrement is below ``tol``.

    The starting Hessian has finite-difference columns (of the exact gradient)
    for the coordinates ``fd_idx`` (theta and the conditional model's own
    parameters: few, strongly nonlinear) and ``curv * I`` for the others (the
    fixed effects, already scaled so that their block is close to that).
    Steps are modified-Newton directions (absolute eigenvalues) with an
    Armijo line search; coordinates at a lower bound whose gradient pushes
    outwards are held there.

    Returns
    -------
    x, f, g, info
    """
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
    x = np.clip(np.asarray(x0, dtype=float), lo, hi)
    f, g = fg(x)
    nfev = 1
    info = {"converged": False, "message": "", "nfev": 0, "nit": 0}
    if not np.isfinite(f):
        info["message"] = "the deviance is not finite at the starting values"
        return x, f, g, info
    k = x.size
    H = curv * np.eye(k) if H0 is None else np.array(H0, dtype=float)
    h = fd_steps(x, bounds)
    for i in (fd_idx if H0 is None else ()):
        xi = x.copy()
        xi[i] += h[i] if x[i] + h[i] <= hi[i] else -h[i]
        fi, gi = fg(xi)
        nfev += 1
        if np.isfinite(fi):
            col = (gi - g) / (xi[i] - x[i])
            H[:, i] = col
            H[i, :] = col
    H = 0.5 * (H + H.T)
    wv, V = np.linalg.eigh(H)                       # start positive definite (|eigenvalues|)
    wv = np.maximum(np.abs(wv), 1e-6 * max(np.abs(wv).max(), 1e-12))
    H = (V * wv) @ V.T
    dec = np.inf
    for it in range(maxiter):
        info["nit"] = it + 1
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        Hf = H[np.ix_(free, free)]
        wv, V = np.linalg.eigh(Hf)
        wmax = max(np.abs(wv).max(), 1e-12)
        wv = np.maximum(np.abs(wv), 1e-6 * wmax)
        step = np.zeros(k)
        step[free] = -(V @ ((V.T @ g[free]) / wv))
        dec = float(-g @ step)
        if dec < tol:
            info["converged"] = True
            info["message"] = f"Newton decrement {dec:.3g} < {tol:g}"
            break
        big = np.max(np.abs(step[fd_idx])) if len(fd_idx) else 0.0
        if big > 1.0:                               # theta moves at most 1 per iteration
            step /= big
            dec = float(-g @ step)
        ls = backtrack(lambda t: _trial(fg, np.clip(x + t * step, lo, hi)),
                       lambda t, fn, p: fn <= f + 1e-4 * float(g @ (p[0] - x)) + 1e-13 * abs(f))
        nfev += ls.evaluations
        if ls.t is None:
            info["message"] = f"line search failed (decrement {dec:.3g})"
            break
        fn, (xn, gn) = ls.value, ls.payload
        sv, yv = xn - x, gn - g
        Hs = H @ sv
        sHs = float(sv @ Hs)
        sy = float(sv @ yv)
        if sHs > 0:
            if sy < 0.2 * sHs:                       # Powell damping keeps H positive definite
                th = 0.8 * sHs / (sHs - sy)
                yv = th * yv + (1.0 - th) * Hs
                sy = float(sv @ yv)
            if sy > 0:
                H = H - np.outer(Hs, Hs) / sHs + np.outer(yv, yv) / sy
        x, f, g = xn, fn, gn
    else:
        info["message"] = f"no convergence in {maxiter} iterations (decrement {dec:.3g})"
    info["nfev"] = nfev
    info["decrement"] = dec
    return x, f, g, info



def newton(fg, x, bounds, hess_fn, tol, maxit=20, fgx=None, fresh=False):
    """Newton steps with backtracking on the deviance, parameters at a lower bound held there.

    Returns ``x, f, g, H, info``; ``H`` is the Hessian at (or within one small
    step of) ``x``, for the covariance.  ``fresh``: a new Hessian at every accepted point
    (an exact one that costs no evaluation), so ``H`` is the one at ``x``, and one more full
    step where the decrement is below ``tol`` but above ``1e-4 tol``.
    """
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in bounds])
    if fgx is None:
        f, g = fg(x)
        nfev = 1
    else:
        (f, g), nfev = fgx, 0
    H, nh = hess_fn(x, g)
    nfev += nh
    info = {"converged": False, "message": "", "nfev": 0}
    dec, polished = np.inf, False
    for it in range(maxit):
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        step = np.zeros_like(x)
        Hf = H if free.all() else H[np.ix_(free, free)]
        indefinite = False
        try:
            step[free] = -_cho_solve(Hf, g[free])
        except (linalg.LinAlgError, ValueError):
            w, V = np.linalg.eigh(Hf)
            indefinite = bool(w.size and w[0] < 0)
            w = np.maximum(np.abs(w), 1e-8 * max(1.0, np.abs(w).max()))
            step[free] = -(V @ ((V.T @ g[free]) / w))
        dec = float(-g @ step)
        if dec < tol:
            if fresh and not polished and not indefinite and dec > 1e-4 * tol and it < maxit - 1:
                # an exact Hessian's step converges quadratically: one full step more (one
                # evaluation) takes the estimates from ~sqrt(dec) of their standard errors to
                # ~dec, kept where it lowers the deviance (not on the last iteration: this
                # point passes already, and the loop would end without its verdict).  Above
                # 1e-4 tol: a decrement of 1e-11 (tol = 1e-8) leaves ~2e-6 SE, 1e-12 ~7e-7
                polished = True
                xn = np.clip(x + step, lo, hi)
                fn, gn = fg(xn)
                nfev += 1
                if fn < f:
                    x, f, g = xn, fn, gn
                    H, nh = hess_fn(x, g)
                    nfev += nh
                    continue
            info["converged"] = True
            info["message"] = f"Newton decrement {dec:.3g} < tol"
            break
        ls = backtrack(lambda t: _trial(fg, np.clip(x + t * step, lo, hi)),
                       lambda t, fn, p: fn <= f - 1e-4 * t * dec + 1e-12 * abs(f), maxtries=30)
        nfev += ls.evaluations
        if ls.t is not None:
            fn, (xn, gn) = ls.value, ls.payload
            if indefinite and ls.t == 1.0:
                fn, xn, gn, n_ext = _extend(fg, x, step, fn, xn, gn, lo, hi)
                nfev += n_ext
        else:
            info["message"] = (f"Newton line search failed at decrement {dec:.3g} (the deviance "
                               "could not be lowered along the Newton direction)")
            info["converged"] = dec < 1e3 * tol
            break
        # far from the optimum, or off a saddle (the decrement of a modified step says
        # nothing about the distance): new curvature
        big = dec > 1e-4 or indefinite or fresh
        x, f, g = xn, fn, gn
        if big:
            H, nh = hess_fn(x, g)
            nfev += nh
    else:
        info["message"] = f"Newton did not converge in {maxit} iterations (decrement {dec:.3g})"
    info["nfev"] = nfev
    info["decrement"] = dec
    return x, f, g, H, info


def _cho_solve(A, b):
    """``A^-1 b`` by Cholesky: LAPACK's potrf / potrs, as ``scipy.linalg.cho_factor`` and
    ``cho_solve`` call them (the same numbers) without their wrappers' checks, which cost more
    than the factorization of a 5 x 5 Hessian.  ``LinAlgError`` where ``A`` is not positive
    definite, ``ValueError`` where it is not finite."""
    if not A.size:
        return np.zeros(0)
    if not np.logical_and.reduce(np.isfinite(A), axis=None):     # (np.all without its wrapper)
        raise ValueError("the Hessian is not finite")
    c, info = lapack.dpotrf(A, lower=0, clean=0)
    if info != 0:
        raise linalg.LinAlgError(f"{info}-th leading minor not positive definite")
    x, info = lapack.dpotrs(c, b, lower=0)
    if info != 0:
        raise ValueError(f"potrs: illegal value in argument {-info}")
    return x


def _extend(fg, x, step, fn, xn, gn, lo, hi, factor=4.0, most=10):
    """Longer steps ``t = factor, factor^2, ...`` along a modified-Newton direction while the
    deviance falls, then the minimum of the cubic through the last two (values and slopes);
    the best point found.

    Where the Hessian has negative curvature the step from its absolute eigenvalues is too
    short: near the saddle at theta = 0 of a GLMM whose optimum is at theta > 0 (the deviance
    is even in theta, its slope there ~ theta) each Newton step only doubles theta, at one
    finite-difference Hessian each (a cbpp simulation: 8 Hessians, 44 evaluations).
    """
    best, n = (fn, xn, gn), 0
    t0, f0, d0 = 1.0, fn, float(gn @ step)
    if not d0 < 0:                                   # the line's minimum is short of t = 1
        return (*best, n)
    for _ in range(most):
        t1 = t0 * factor
        f1, (x1, g1) = _trial(fg, np.clip(x + t1 * step, lo, hi))
        n += 1
        if not np.isfinite(f1):
            break
        d1 = float(g1 @ step)
        if f1 < best[0]:
            best = (f1, x1, g1)
        if f1 < f0 and d1 < 0:
            t0, f0, d0 = t1, f1, d1
            continue
        # past the line's minimum: the cubic's (Nocedal & Wright, eq. 3.59)
        e = d0 + d1 - 3.0 * (f0 - f1) / (t0 - t1)
        r = e * e - d0 * d1
        if r >= 0:
            tc = t1 - (t1 - t0) * (d1 + np.sqrt(r) - e) / (d1 - d0 + 2.0 * np.sqrt(r))
            if t0 < tc < t1:
                fc, (xc, gc) = _trial(fg, np.clip(x + tc * step, lo, hi))
                n += 1
                if fc < best[0]:
                    best = (fc, xc, gc)
        break
    return (*best, n)


def _trial(fg, x):
    """A line-search trial of a (value, gradient) function: ``(value, (x, gradient))``."""
    f, g = fg(x)
    return f, (x, g)
