"""Maximum likelihood fit of a cumulative link mixed model (:meth:`OrdinalMixedModel.fit`).

Starting values from the model without random effects.  With a single scalar random-effects
term (``clmm``'s usual ``(1 | g)``) the Laplace log-likelihood is maximized by Newton's method
with its exact Hessian (:mod:`mlmext.ordinal.newton`), which also gives the standard errors;
otherwise, and where Newton cannot go on (theta heading for 0), by a bounded quasi-Newton method
on (thresholds, fixed effects, theta) with the exact gradient
(:func:`mlmext.laplace.laplace_gradient`), started from the Hessian of the joint log-likelihood
with the modes profiled out.  Conditional modes are warm-started from their first-order
prediction.  AGQ fits start from the Laplace optimum, with the exact AGQ gradient for a single
scalar term (:func:`mlmext.laplace.agq_loglik_gradient`).  Standard errors come from the Hessian
of the log-likelihood in ``clmm``'s parameters (forward differences of the gradient where it is
not exact).
"""
from __future__ import annotations

import warnings

import numpy as np
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .. import laplace as _laplace
from .._args import reject_unknown as _reject_unknown
from ..optimize import OptSummary, escape_bound, minimize_bfgs, newton_polish, snap_to_bound
from ..results import MixedResultsWrapper
from .clm import fit_clm
from .newton import _laplace_by_newton
from .objective import _ClmmObjective
from .results import OrdinalMixedResults
from .thresholds import _increasing


# PIRLS tolerance while optimizing (first-order warm starts usually overshoot it by far); the
# Hessian and the final values use the model's tighter default
_OPT_PIRLS_TOL = 1e-14


# the keyword arguments of OrdinalMixedModel.fit, and hints for R's and glmer's spellings
_FIT_ARGS = ("nagq", "start_params", "maxiter", "gtol", "hessian")
_FIT_HINTS = {
    "Hess": "use hessian=True/False",
    "method": "the clmm fit has one method (Newton with the exact Hessian for a single scalar "
              "term, else bounded quasi-Newton); remove method=",
    "tol": "use gtol= (tolerance on the largest gradient entry)",
    "REML": "cumulative link models are fitted by maximum likelihood (there is no REML criterion)",
    "reml": "cumulative link models are fitted by maximum likelihood (there is no REML criterion)",
    "link": "the link is chosen when the model is made: clmm(..., link='probit')",
    "threshold": "the threshold structure is chosen when the model is made: "
                 "clmm(..., threshold='equidistant')",
}


def _fit_clmm(model, nagq=1, start_params=None, maxiter=500, gtol=1e-6, hessian=True, **kwargs):
    _reject_unknown(kwargs, "fit()", accepted=_FIT_ARGS, hints=_FIT_HINTS)
    _laplace.check_positive(maxiter=maxiter, integer=True)
    _laplace.check_positive(gtol=gtol)
    # clmm's nAGQ < 0 (non-adaptive quadrature) and 0 have their own messages below
    nagq = _laplace.check_nagq(nagq, allow=lambda n: n <= 0)
    if nagq < -_laplace.MAX_NAGQ:
        raise ValueError(f"nagq={nagq}: at most {_laplace.MAX_NAGQ} quadrature nodes")
    if nagq < 0:
        raise NotImplementedError("non-adaptive Gauss-Hermite quadrature (clmm's nAGQ < 0) is not "
                                  f"implemented; use nagq={-nagq} for adaptive quadrature with "
                                  f"{-nagq} nodes, or nagq=1 for the Laplace approximation")
    if nagq == 0:
        raise ValueError("nagq must be 1 (Laplace approximation; clmm's nAGQ = 0 and 1 both mean "
                         "Laplace) or a number of quadrature nodes > 1")
    des = model.re_design
    _laplace.check_agq(des, nagq)
    thr = model.thr
    k, p, nt = thr.k, model.k_fe, des.ntheta
    lower_r = np.concatenate([np.full(k + p, -np.inf), des.lower])
    # ---- starting values: the fit without random effects (as clmm), theta = 1
    H_clm = None
    ll_clm = None
    if start_params is None:
        x_clm, ll_clm, H_clm, _ = fit_clm(model.cond, thr, model.exog, model.offset,
                                          jacobians=model._jacobians())
        alpha0, beta0 = x_clm[:k], x_clm[k:]
        theta0 = des.theta_start.copy()
    else:
        sp = np.asarray(start_params, dtype=float).ravel()
        if sp.size != k + p + nt:
            raise ValueError(f"start_params needs {k + p + nt} values (threshold parameters {k}: "
                             f"{list(thr.names)}, fixed effects {p}: {model.exog_names_fe}, theta "
                             f"{nt}); got {sp.size}")
        if not np.all(np.isfinite(sp)):
            raise ValueError(f"start_params has non-finite values: {sp.tolist()}")
        alpha0, beta0, theta0 = sp[:k], sp[k:k + p], sp[k + p:]
        if np.any(theta0 < des.lower):
            raise ValueError("start_params: theta must be >= its lower bounds "
                             f"{des.lower.tolist()} (standard deviations are >= 0); got "
                             f"{theta0.tolist()}")
        if not _increasing(thr.thresholds(alpha0)):
            raise ValueError(f"start_params: the threshold parameters {alpha0.tolist()} give "
                             f"thresholds {thr.thresholds(alpha0).tolist()}, which must be "
                             "increasing")
    lower_x = lower_r
    z_start = np.concatenate([alpha0, beta0, theta0])
    tried = []

    # ---- Laplace fit (also the start of AGQ): Newton with the exact Hessian for a single
    # scalar term, else (or when Newton cannot go on) bounded quasi-Newton
    obj = _ClmmObjective(model, 1)
    obj.lower_r = lower_r
    exact = _laplace_by_newton(model, obj, np.concatenate([alpha0, beta0, theta0]),
                               attenuate=start_params is None, maxiter=maxiter, tried=tried)
    if exact is not None and exact.success:
        opt, x_hat = exact, exact.x
    else:
        if exact is not None:       # continue from where Newton stopped (it only went downhill)
            alpha0, beta0, theta0 = exact.x[:k], exact.x[k:k + p], exact.x[k + p:]
        exact = None
        x0 = np.concatenate([thr.psi(alpha0), beta0, theta0])
        f0, g0 = obj.fg_x(x0)
        if not np.isfinite(f0):
            raise ValueError("non-finite log-likelihood at the starting values (thresholds "
                             f"{thr.thresholds(alpha0)}, fixed effects {beta0}, theta {theta0})")
        B0 = _initial_hessian(obj, x0, g0, H_clm, k, p, nt)
        obj.tol = _OPT_PIRLS_TOL
        opt = minimize_bfgs(obj.fg_x, x0, lower_x, B0=B0, gtol=gtol, maxiter=maxiter, f0g0=(f0, g0))
        tried.append(("BFGS (Laplace)", bool(opt.success), int(obj.nfev)))
        esc = escape_bound(obj.fg_x, opt.x, opt.fun, lower_x)
        if esc is not None:          # a variance stuck at zero although the optimum is inside
            f1, g1 = obj.fg_x(esc[0])
            opt2 = minimize_bfgs(obj.fg_x, esc[0], lower_x, B0=B0, gtol=gtol, maxiter=maxiter,
                                f0g0=(f1, g1))
            tried.append(("BFGS (Laplace), restarted off the bound", bool(opt2.success), int(obj.nfev)))
            if opt2.fun < opt.fun:
                opt = opt2
        obj.tol = None
        x_hat = opt.x
    if nagq > 1:
        objq = _ClmmObjective(model, nagq)
        objq.lower_r = lower_r
        objq.base = obj.base
        fq, gq = objq.fg_x(x_hat)
        # the Laplace Hessian in internal coordinates as the starting matrix
        B1 = exact.hess_x if exact is not None else _bfgs_hessian_guess(obj, x_hat)
        objq.tol = _OPT_PIRLS_TOL
        opt = minimize_bfgs(objq.fg_x, x_hat, lower_x, B0=B1, gtol=gtol, maxiter=maxiter, f0g0=(fq, gq))
        objq.tol = None
        tried.append((f"BFGS (AGQ, {nagq} nodes)", bool(opt.success), int(objq.nfev)))
        x_hat = opt.x
        obj = objq
        exact = None
    # variance parameters that are practically zero are set to zero (clean singular fits)
    x_hat = snap_to_bound(obj.fg_x, x_hat, opt.fun, lower_x, 1e-8)[0]
    if exact is None:
        # the quasi-Newton verdict is not enough: Newton decrement with a difference Hessian,
        # saddles, and every variance at zero probed inward (its gradient is 0 there either way)
        x_hat, converged, H_x, message = _second_order_checks(
            obj, x_hat, lower_x, B0 if nagq == 1 else B1, gtol, maxiter, tried)
        opt.fun, opt.jac = obj.fg_x(x_hat)        # (also leaves the modes at the estimate)
        # the results report the checks' verdict, at the point they judged
        opt.x, opt.success, opt.message = x_hat, converged, message
    else:
        converged = bool(opt.success)             # Newton with the exact Hessian: decrement, PD
    z_hat = exact.x_r if exact is not None else obj.to_r(x_hat)
    alpha, beta, theta = z_hat[:k], z_hat[k:k + p], z_hat[k + p:]
    pg = np.where(np.isfinite(lower_x) & (x_hat <= lower_x) & (opt.jac > 0), 0.0, opt.jac)
    max_grad = float(np.max(np.abs(pg))) if pg.size else 0.0
    separated = _separation_message(model, alpha, beta)
    # ---- Hessian in R coordinates, without variance parameters at zero (as clmm)
    free = np.ones(z_hat.size, dtype=bool)
    free[k + p:] = ~(np.isfinite(des.lower) & (theta * des.theta_units() <= des.lower + 1e-4))
    cov_full = None
    H = None
    if hessian:
        if exact is not None:
            H = exact.hess
        elif H_x is not None:       # the checks' Hessian at the estimate: no second one
            J = np.eye(z_hat.size)  # d z / d x; at a stationary point H_z = J^-T H_x J^-1
            J[:k, :k] = thr.jacobian(x_hat[:k])
            Ji = np.linalg.inv(J)
            H = (Ji.T @ H_x @ Ji)[np.ix_(free, free)]
            obj.llf_at_hessian = (-opt.fun, obj.base[1])
        else:
            H = obj.hessian_r(z_hat, free)
        try:
            cov_free = np.linalg.inv(H)
            if not np.all(np.isfinite(cov_free)) or np.any(np.diag(cov_free) <= 0):
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            if separated is None:      # (separated data: the warning below says why)
                warnings.warn("the Hessian of the negative log-likelihood is not positive definite "
                              "at the optimum; standard errors are not available",
                              ConvergenceWarning, stacklevel=3)
            cov_free = np.full((free.sum(), free.sum()), np.nan)
        cov_full = np.full((z_hat.size, z_hat.size), np.nan)
        cov_full[np.ix_(free, free)] = cov_free
    # ---- final state at the optimum (modes and factor)
    if exact is not None:
        llf, modes = -exact.fun, exact.modes
    elif hessian:
        llf, modes = obj.llf_at_hessian
    else:
        llf, modes = model.loglike_parts(alpha, beta, theta, nagq=nagq,
                                         u0=None if obj.base is None else obj.base[1].u)
    if not converged:
        warnings.warn(f"the optimizer did not converge: {opt.message} (tried {tried}; largest "
                      f"projected gradient {max_grad:.3g})", ConvergenceWarning, stacklevel=3)
    if separated is not None:
        warnings.warn(separated, PerfectSeparationWarning, stacklevel=3)
    opt.tried = tried
    opt.max_grad = max_grad
    opt.nfev = sum(t[2] for t in tried)
    cov_ab = cov_full[:k + p, :k + p] if cov_full is not None else np.full((k + p, k + p), np.nan)
    opt = OptSummary.from_result(opt, initial=z_start)
    res = OrdinalMixedResults(model.model, np.concatenate([alpha, beta]), cov_ab, theta=theta, u=modes.u,
                              sigma=1.0, criterion=-2.0 * llf, optim=opt, nagq=nagq,
                              cov_params_full=cov_full, hessian=H, hessian_free=free,
                              llf_no_re=ll_clm, modes=modes, max_grad=max_grad)
    return MixedResultsWrapper(res)


def _second_order_checks(obj, x, lower, B0, gtol, maxiter, tried, restarts=2):
    """Newton polish of a quasi-Newton end point (:func:`mlmext.optimize.newton_polish`), with
    a restart of the quasi-Newton method where a probe finds descent.

    Returns ``(x, passed, H, message)``: ``H`` is the Hessian at ``x`` in internal coordinates
    when the checks computed it there (no Newton step was needed), else None.  A step is taken only
    when the decrement exceeds the checks' tolerance (1e-7: the estimates within ~5e-4 SE),
    so that this Hessian also serves the standard errors.
    """
    des = obj.model.re_design
    off = obj.k + obj.p            # theta's place in the internal coordinates
    mirror = {off + i: off + below for i, below in des.column_mirrors().items()}
    # the checks work on beta and theta in their predictors' units (root mean squares of
    # the columns of X and Z): difference steps then mean alike at any scale
    s = np.ones(x.size)
    X = obj.model.exog
    if obj.p:
        rms = np.sqrt(np.mean(X * X, axis=0))
        s[obj.k:off] = np.where(rms > 0, rms, 1.0)
    s[off:] = des.theta_units()

    def fg_s(z):
        f, g = obj.fg_x(z / s)
        return f, g / s

    for _ in range(restarts + 1):
        n0 = obj.nfev
        pol = newton_polish(fg_s, x * s, lower * s, tol=1e-7, check_tol=1e-7,
                            maxit=min(20, maxiter), mirror=mirror)
        tried.append(("second-order checks (Newton polish, Hessian from gradient differences)",
                      pol.converged, obj.nfev - n0))
        if pol.escape is None:
            if not np.isfinite(pol.f):
                return x, False, None, pol.message
            H = (pol.H * np.outer(s, s) if pol.hessian_at_x and np.all(np.isfinite(pol.H))
                 else None)
            return pol.x / s, pol.converged, H, pol.message
        n0 = obj.nfev
        x_esc = pol.escape[0] / s
        f1, g1 = obj.fg_x(x_esc)
        opt = minimize_bfgs(obj.fg_x, x_esc, lower, B0=B0, gtol=gtol, maxiter=maxiter,
                            f0g0=(f1, g1))
        tried.append((f"BFGS, restarted ({pol.message})", bool(opt.success), obj.nfev - n0))
        x = opt.x
    return x, False, None, (f"a probe still found descent after {restarts} restarts "
                            f"({pol.message})")


def _separation_message(model, alpha, beta, big=10.0):
    """The warning for (quasi-)completely separated data, or None.

    Separated categories have no finite maximum likelihood estimates: along some direction
    of (thresholds, fixed effects) every observation's interval probability grows, so the
    optimizer ends wherever the gradient becomes negligible (estimates of 20 to thousands).
    Checked when the estimates are that large (a threshold or ``|x' beta|`` above ``big``);
    the linear program (:func:`mlmext.laplace.separation_direction`) decides.
    """
    thr, cond = model.thr, model.cond
    th = thr.thresholds(alpha)
    xb = model.exog @ beta if model.k_fe else np.zeros(1)
    if not max(np.max(np.abs(th)), np.max(np.abs(xb))) > big:
        return None
    Ju, Jl = model._jacobians()                    # d(theta_y - eta), d(theta_{y-1} - eta)
    w = cond.weights
    pos = np.ones(Ju.shape[0], dtype=bool) if w is None else np.asarray(w) > 0
    G = np.vstack([Ju[cond.has_upper & pos], -Jl[cond.has_lower & pos]])
    T = thr.T                                      # thresholds stay increasing along d
    C = np.hstack([np.diff(T, axis=0), np.zeros((T.shape[0] - 1, model.k_fe))])
    d = _laplace.separation_direction(G, C if len(C) else None)
    if d is None:
        return None
    names = list(thr.names) + list(model.exog_names_fe)
    params = np.concatenate([alpha, beta])
    involved = [n for n, v in zip(names, d) if v != 0]
    fe = [n for n in involved if n in model.exog_names_fe]
    big_name = max(involved, key=lambda n: abs(params[names.index(n)]))
    return (f"the response categories are (quasi-)completely separated: a combination of "
            f"{'the fixed effects ' + str(fe) if fe else 'the thresholds'}"
            f"{' and the thresholds' if fe and len(fe) < len(involved) else ''} predicts the "
            f"categories perfectly, so the maximum likelihood estimates of {involved} are "
            f"infinite (the fit stopped at {big_name} = {params[names.index(big_name)]:.4g}; the "
            "standard errors are meaningless). R's clm / clmm warn 'Hessian is numerically "
            "singular: parameters are not uniquely determined'. Remove or merge the columns "
            "(factor levels) or categories involved.")


def _profiled_hessian(model, modes, theta):
    """Hessian in (alpha, beta) of the joint log-likelihood with the modes profiled out.

    ``H_pp + H_pu M^-1 H_up`` at the modes: the second derivatives of
    ``sum_i l_i`` in (alpha, beta) and in (alpha, beta) and ``u``, with
    ``M = Lambda' Z' W Z Lambda + I``.  It leaves out the third-derivative
    terms of the Laplace log-determinant, so it is a close (typically within
    ~15 %) and cheap approximation of the Hessian of the Laplace
    log-likelihood: a good starting matrix for the quasi-Newton iterations.
    """
    cond = model.cond
    lu, ll_, luu, lll, lul = cond.interval_derivatives(modes.eta)
    Ju, Jl = model._jacobians()
    Hpp = (Ju.T * luu) @ Ju + (Jl.T * lll) @ Jl + (Ju.T * lul) @ Jl + (Jl.T * lul) @ Ju
    # d d1_i / d(alpha, beta): d1 = -(l_u + l_l) and (u, l) move with Ju, Jl
    C = -(Ju * (luu + lul)[:, None] + Jl * (lul + lll)[:, None])
    lams = model.re_design.lambdas(np.asarray(theta, dtype=float))
    fac = _laplace.factor_at(model.chol, modes)
    Hup = np.column_stack([_laplace.random_effects_transpose(model.re_design, C[:, j], lams)
                           for j in range(C.shape[1])])
    Minv_Hup = np.column_stack([fac.solve_re(Hup[:, j]) for j in range(C.shape[1])])
    return Hpp + Hup.T @ Minv_Hup


def _initial_hessian(obj, x0, g0, H_clm, k, p, nt):
    """Starting BFGS matrix: the profiled Hessian (:func:`_profiled_hessian`) at the start,
    else the no-random-effects Hessian, for (psi, beta); a column by forward differences for
    each theta."""
    n = k + p + nt
    B = np.eye(n)
    J = np.eye(k + p)
    J[:k, :k] = obj.thr.jacobian(x0[:k])
    for H in (_try_profiled(obj, x0), H_clm):
        if H is None:
            continue
        Hab = -J.T @ H @ J
        try:
            np.linalg.cholesky(Hab)
            B[:k + p, :k + p] = Hab
            break
        except np.linalg.LinAlgError:
            continue
    if nt <= 4:
        base = obj.base
        for j in range(nt):
            i = k + p + j
            h = 1e-4 * max(1.0, abs(x0[i]))
            xp = x0.copy()
            xp[i] += h
            obj.base, obj._fresh = base, obj._scalar(base)
            f, g = obj.fg_x(xp)
            if np.isfinite(f):
                col = (g - g0) / h
                B[:, i] = col
                B[i, :] = col
        B[k + p:, k + p:] = 0.5 * (B[k + p:, k + p:] + B[k + p:, k + p:].T)
        try:
            np.linalg.cholesky(B)
        except np.linalg.LinAlgError:
            d = np.diag(B).copy()
            B = np.diag(np.where(d > 0, d, 1.0))
    return B


def _try_profiled(obj, x0):
    """The profiled Hessian at the start when the model's factor still holds its modes."""
    if obj.base is None or not (obj._fresh or obj._scalar(obj.base)):
        return None
    z0, modes = obj.base[:2]
    try:
        H = _profiled_hessian(obj.model, modes, z0[obj.k + obj.p:])
    except Exception:  # noqa: BLE001 - only a starting matrix
        return None
    return H if np.all(np.isfinite(H)) else None


def _bfgs_hessian_guess(obj, x):
    """Hessian of the Laplace objective at x in internal coordinates (start for AGQ)."""
    f0, g0 = obj.fg_x(x)
    H = obj.gradient_differences(obj.fg_x, x, g0, range(x.size), 1e-5)
    H = 0.5 * (H + H.T)
    try:
        np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        d = np.abs(np.diag(H))
        H = np.diag(np.where(d > 0, d, 1.0))
    return H
