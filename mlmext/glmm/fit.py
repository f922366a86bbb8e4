"""The staged GLMM fit: lme4's first stage, the joint Laplace fit, AGQ, the covariance.

1. lme4's first stage (``nAGQ = 0``): theta with beta updated inside PIRLS; it
   gives starting values and the scale of beta (a few EM steps by default).
2. theta, beta (and log alpha) jointly on the Laplace log-likelihood: quasi-Newton
   with the exact gradient, then Newton with the Hessian from gradient differences,
   then the second-order checks of :mod:`.optimum` (curvature on the free parameters,
   probes off the variance bounds; a restart where they find descent).  One scalar term
   with a canonical link: Newton alone with the exact Hessian
   (:func:`mlmext.laplace.scalar_laplace_hessian`), which is also the covariance's.
3. For ``nagq > 1``: the AGQ log-likelihood from the Laplace estimates, the same way.

Everything runs on one :class:`~mlmext.glmm.deviance.LaplaceDeviance`; the model
only supplies data, starting values and warnings.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from .. import laplace as lp
from ..design import lower_tri
from ..optimize import (CountingGradient, OptSummary, hessian_central_gradient,
                        hessian_from_gradient, hessian_from_values)
from ..results import MixedResultsWrapper
from .optimum import minimize_checked
from .results import GLMMResults

__all__ = ["fit_glmm"]

#: PIRLS's tolerance in the first stage where it only starts Newton with the exact Hessian
START_TOL = 1e-4


def fit_glmm(model, dev, nagq, start_params, maxiter, tol, stage1, em_steps=2):
    """The staged fit (see the package docstring); a GLMMResults wrapper."""
    des = dev.design
    nt, p, ke = des.ntheta, model.k_fe, dev.k_extra
    tried = []
    dev.warm_start = None
    exact = dev.exact_hessian and nagq == 1
    if exact and start_params is None and not stage1:
        # the first stage only starts Newton with the exact Hessian (which converges
        # quadratically from near the optimum): its PIRLS to a decrement of 1e-4 (beta within
        # ~1e-2 of its standard error), not 1e-10, three iterations fewer on cbpp
        dev.stage1_tol = START_TOL
    # ---- stage 1: beta inside PIRLS
    if start_params is not None:
        sp = np.asarray(start_params, dtype=float).ravel()
        if sp.size != nt + p + ke:
            raise ValueError(f"start_params needs {nt + p + ke} values (theta {nt}: "
                             f"{des.theta_names() if hasattr(des, 'theta_names') else ''}"
                             f", beta {p}: {list(model.exog_names)}"
                             f"{f', log {model._extra_name} 1' if ke else ''}); got {sp.size}")
        if not np.all(np.isfinite(sp)):
            raise ValueError(f"start_params has non-finite values: {sp.tolist()}")
        if np.any(sp[:nt] < des.lower):
            raise ValueError("start_params: theta must be >= its lower bounds "
                             f"{des.lower.tolist()} (standard deviations are >= 0); got "
                             f"{sp[:nt].tolist()}")
        theta0, beta0, extra0 = dev.split(sp)
        dev.set_extra(extra0)
        _, m1 = dev.stage1(theta0, beta0)
    else:
        theta0 = des.theta_start.copy()
        extra0 = model._start_extra(None)
        dev.set_extra(extra0)
        # beta from the GLM-style start (eta = g(y adjusted away from the boundary)) as glm
        # and lme4 start; beta = 0 would put eta = 0 where the sqrt or identity link has
        # mu = 0, and far from the data for large counts
        fails = []
        for what, b0 in (("the GLM-style start g(mu0)", model._start_beta()),
                         ("beta = 0", None)):
            _, m1 = dev.stage1(theta0, b0)
            if m1.converged:
                break
            fails.append(f"from {what}: {m1.message}")
        else:
            raise lp.PIRLSError(
                f"PIRLS failed at the starting values (theta = {np.round(theta0, 4).tolist()}, "
                f"beta updated inside PIRLS, u from 0) of the {model._family_label} model "
                f"({model._link_label} link): " + "; ".join(fails) + model._range_hint())
        if ke:                                        # alpha from the first stage's modes
            extra0 = model._start_extra(m1)
            dev.set_extra(extra0)
            _, m1b = dev.stage1(theta0, m1.beta, m1.u)
            m1 = m1b if m1b.converged else m1
        if stage1:
            theta0, m1, nfev1 = _optimize_stage1(dev, theta0, m1)
            tried.append(("stage 1 (theta; beta in PIRLS): Nelder-Mead", True, nfev1))
        elif em_steps:
            theta0, m1, nem = _em_start(dev, theta0, m1, em_steps, solve_last=not exact)
            tried.append(("stage 1 (theta; beta in PIRLS): EM steps", True, nem))
        beta0 = m1.beta
    # scale for beta: Cholesky factor of the stage-1 (X' V^-1 X)^-1
    cov0 = dev.stage1_cov_beta(m1) if (m1.converged and p) else np.eye(p)
    try:
        R = np.linalg.cholesky(cov0) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        R = np.diag(np.sqrt(np.maximum(np.diag(cov0), 1e-8)))
    # the first stage's factor is done with (cov_rx rebuilds it where the Hessian fails): its
    # workspace holds a Schur product, a dense system and its factor (300 MB at 1M ratings)
    dev.release_stage1()
    dev.warm_start = m1.u if m1.converged else None
    # nor are the first stage's modes: their rows (eta, d1, w: 24 MB at 1M rows) would stay
    # alive through the Laplace phase, at its peak of memory
    del m1
    tr = _Transform(nt, p, ke, beta0, R)
    x0 = np.concatenate([theta0, np.zeros(p), extra0])
    bounds = tr.bounds(des.lower)
    if ke and hasattr(model, "_bounds_extra"):     # e.g. zero-inflation coefficients: unbounded
        bounds[nt + p:] = model._bounds_extra()
    names = (list(des.theta_names()) + [f"{b} (scaled)" for b in model.exog_names]
             + [f"log {model._extra_name}"] * ke)
    # ---- Laplace: all parameters jointly, exact gradient, then Newton with the Hessian; where
    # the exact Hessian is at hand (one scalar term, canonical link), Newton alone with it
    last = {}                                 # Newton's last Hessian: its point and columns
    if exact:
        ex = _ExactLaplace(dev, tr)
        count = _Count(ex.fg)
        hess_fn = lambda z, gz: ex.hessian(z, count)              # noqa: E731
    else:
        count = _Count(_laplace_fg(dev, tr))
        hess_fn = lambda z, gz: hessian_from_gradient(count, z, gz, bounds, keep=last)  # noqa: E731
    fd_idx = list(range(nt)) + list(range(nt + p, nt + p + ke))
    x, f, g, H, out = minimize_checked(
        count, lambda z: count(z)[0], x0, bounds, hess_fn, tol=tol, maxiter=maxiter,
        phase="Laplace", evals=lambda: count.n, names=names, fd_idx=fd_idx,
        qn_label=" (exact gradient)", mirror=des.column_mirrors(), exact=exact,
        hess_label=" (exact Hessian)" if exact else " (Hessian from gradient differences)")
    tried += out.tried
    fine_modes = None
    if exact:
        # the covariance's Hessian at the modes to PIRLS's 1e-20, as _finish reports llf at:
        # Newton's last one where it was made at the end point (its modes are to 1e-20),
        # else one PIRLS solve from the end point's modes, no differences
        n_cov = 0
        if ex.at is not None and np.array_equal(ex.at[0], x):
            _, fine, H = ex.at
            fine_modes = (fine, dev.design.lambdas(dev.split(tr.params(x))[0]))
        else:
            fine_modes = dev.modes(*dev.split(tr.params(x))[:2], tol=1e-20)
            n_cov = 1
            if fine_modes[0].converged:
                H = tr.hess(-2.0 * dev.hessian(fine_modes[0]))
        tried.append(("Laplace: exact Hessian for the covariance", True, n_cov))
    elif nagq == 1:
        # the covariance's Hessian at the end point by central differences of the exact
        # gradient: Newton's (forward differences, at its last iterate) is good for steps but
        # leaves O(h) ~ 1e-3 relative errors in the standard errors.  Its forward gradients
        # are reused when it was computed at the end point (then k more gradients, else 2k);
        # PIRLS to 1e-20 for the new ones, as the modes' error enters the gradient to first
        # order (through the log-determinant)
        fine = _Count(_laplace_fg(dev, tr, tol=1e-20))
        plus = last["plus"] if "x" in last and np.array_equal(last["x"], x) else None
        H = hessian_central_gradient(fine, x, g, plus=plus)[0]
        tried.append(("Laplace: Hessian for the covariance (central differences of the "
                      "exact gradient)", True, fine.n))
    if nagq > 1:
        # from the Laplace estimates, with the Laplace Hessian as the first curvature
        fa = _Count(_agq_f(dev, tr, nagq))
        fga = CountingGradient(fa, bounds)
        x, f, g, H, out = minimize_checked(
            fga, fa, x, bounds, lambda z, gz: hessian_from_values(fa, z, bounds), tol=tol,
            maxiter=maxiter, phase=f"AGQ({nagq})", evals=lambda: fa.n, names=names, H0=H,
            qn_tol=1e-6, qn_label=" (gradient by differences)",
            hess_label=" (Hessian from differences)", mirror=des.column_mirrors())
        tried += out.tried
        # Newton's Hessian is from its last iterate; the covariance's, at the end point
        n0 = fa.n
        H = hessian_from_values(fa, x, bounds)[0]
        tried.append((f"AGQ({nagq}): Hessian for the covariance (central differences)", True,
                      fa.n - n0))
    optim = optimize.OptimizeResult(x=x, fun=f, jac=g, success=out.converged,
                                    message=out.message, tried=tried,
                                    nfev=sum(t[2] for t in tried), method="quasi-Newton + Newton",
                                    decrement=out.decrement, min_eigenvalue=out.min_eigenvalue,
                                    at_bound=[names[i] for i in out.at_bound])
    return _finish(model, dev, tr, x, nagq, optim, H, initial=tr.params(x0), fine_modes=fine_modes)


class _Count:
    """A function that counts its calls (the objective evaluations of a phase)."""

    def __init__(self, fun):
        self.fun, self.n = fun, 0

    def __call__(self, x):
        self.n += 1
        return self.fun(x)


class _ExactLaplace:
    """The Laplace deviance and its gradient in the optimizer's coordinates (:meth:`fg`), and
    its exact Hessian (:meth:`hessian`) from the modes of the last evaluation when it was at
    the same point (Newton asks for it where it has just evaluated the deviance).

    The modes are found to PIRLS's 1e-20 (not 1e-14), as the fit reports llf and the
    covariance at: Newton's Hessian at its end point (:attr:`at`: point, modes, Hessian) is
    then the covariance's, without another PIRLS solve and Hessian there.  That costs a
    PIRLS iteration on some evaluations (Newton converges quadratically: ~1e-15 to ~1e-30)."""

    def __init__(self, dev, tr):
        self.dev, self.tr, self.last, self.at = dev, tr, None, None

    def fg(self, x):
        ll, g, modes = self.dev.loglike_and_score(self.tr.params(x), tol=1e-20, keep_eta=True)
        if not np.isfinite(ll):
            self.last = None
            return np.inf, np.zeros_like(x)
        self.last = (np.array(x, dtype=float), modes)
        return -2.0 * ll, -2.0 * self.tr.grad(g)

    def hessian(self, x, count):
        """``(H, evaluations)``: ``count`` evaluates the deviance at ``x`` when the last
        evaluation was elsewhere."""
        n = 0
        if self.last is None or not np.array_equal(self.last[0], x):
            count(x)
            n = 1
        if self.last is None:
            return np.full((x.size, x.size), np.nan), n
        H = self.tr.hess(-2.0 * self.dev.hessian(self.last[1]))
        self.at = (self.last[0], self.last[1], H)
        return H, n


def _laplace_fg(dev, tr, tol=1e-14):
    def fg(x):
        ll, g, _ = dev.loglike_and_score(tr.params(x), tol=tol)
        if not np.isfinite(ll):
            return np.inf, np.zeros_like(x)
        return -2.0 * ll, -2.0 * tr.grad(g)
    return fg

def _agq_f(dev, tr, nagq):
    def f(x):
        ll = dev.loglike(tr.params(x), nagq=nagq)
        return -2.0 * ll if np.isfinite(ll) else np.inf
    return f

def _em_start(dev, theta, m1, nsteps, solve_last=True):
    """A few Laplace-EM updates of theta on lme4's first-stage system (beta inside PIRLS).

    For each term, ``Sigma_new = Lambda (U'U + S) Lambda' / m`` with ``U``
    the conditional modes and ``S`` the summed conditional covariances of
    the spherical effects; theta is the Cholesky factor of ``Sigma_new``.
    A cheap way to start the joint optimization near the optimum.  Not
    ``solve_last``: the last update's theta with the previous modes (beta, u and the
    scale of beta), without the first stage's PIRLS at it, when they carry their own
    ``cov_beta`` (the scalar path's: the blocked factor is spent by the inverse).
    """
    des = dev.design
    done = 0
    for _ in range(nsteps):
        # the modes' rows are not read here: not held through the next PIRLS (24 MB at 1M
        # rows, at the first stage's peak of memory)
        m1.eta = m1.d1 = m1.w = None
        ch = dev.stage1_factor(m1)
        try:
            S = ch.inverse_block_sums(0)           # (the factor is spent: stage1 factors again)
        except np.linalg.LinAlgError:
            dev.stage1(theta, m1.beta, m1.u)       # the factor at the current point again
            break
        lams = des.lambdas(theta)
        new = theta.copy()
        off = 0
        for blk, lam, Sb in zip(des.blocks, lams, S):
            U = m1.u[off:off + blk.nre].reshape(blk.m, blk.q)
            off += blk.nre
            C = lam @ (U.T @ U + Sb) @ lam.T / blk.m
            start = 0
            for t in blk.terms:
                Ct = C[start:start + t.q, start:start + t.q]
                start += t.q
                if t.q == 1:                   # the 1 x 1 Cholesky factor (LAPACK's sqrt)
                    c = float(Ct[0, 0])
                    new[t.theta_index] = math.sqrt(c + 1e-12 if c + 1e-12 > 0 else max(c, 0.0))
                    continue
                try:
                    Lt = np.linalg.cholesky(Ct + 1e-12 * np.eye(t.q))
                except np.linalg.LinAlgError:
                    Lt = np.diag(np.sqrt(np.maximum(np.diag(Ct), 0.0)))
                new[t.theta_index] = [Lt[i, j] for i, j in lower_tri(t.q)]
        if not solve_last and done == nsteps - 1 and "cov_beta" in m1.extra:
            # Newton with the exact Hessian starts from there (and checks its own steps)
            return new, m1, done + 1
        _, m_new = dev.stage1(new, m1.beta, m1.u)
        done += 1
        if not m_new.converged or m_new.laplace < m1.laplace - 1.0:
            dev.stage1(theta, m1.beta, m1.u)       # keep the previous point (and its factor)
            break
        theta, m1 = new, m_new
    return theta, m1, done

def _optimize_stage1(dev, theta0, m1):
    des = dev.design
    state = {"modes": m1, "nfev": 0}

    def f(th):
        th = np.where(np.isfinite(des.lower), np.maximum(th, des.lower), th)
        m = state["modes"]
        value, mm = dev.stage1(th, m.beta, m.u)
        state["nfev"] += 1
        if mm.converged:
            if value <= state.get("best", np.inf):
                state["best"], state["modes"], state["theta"] = value, mm, th.copy()
            return value
        return 1e100

    state["best"] = -2.0 * m1.laplace
    state["theta"] = theta0.copy()
    nt = len(theta0)
    simplex = np.vstack([theta0] + [theta0 + 0.5 * np.eye(nt)[i] * (-1 if theta0[i] > 0.5 else 1)
                                    for i in range(nt)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        optimize.minimize(f, theta0, method="Nelder-Mead",
                          options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4,
                                   "maxfev": 200 * nt})
    # the stage-1 system at the best theta (for the scale of beta)
    best = state["modes"]
    dev.stage1(state["theta"], best.beta, best.u)
    return state["theta"], best, state["nfev"]

def _finish(model, dev, tr, x, nagq, optim, H, initial, fine_modes=None):
    des = dev.design
    params = tr.params(x)
    theta, beta, extra = dev.split(params)
    dev.set_extra(extra)
    # fine_modes: (modes, lams) at x to 1e-20 already found (with the exact Hessian)
    modes, lams = dev.modes(theta, beta, tol=1e-20) if fine_modes is None else fine_modes
    if not modes.converged:
        raise lp.PIRLSError(f"PIRLS failed at the estimates: {modes.message}"
                            + model._range_hint())
    if nagq == 1:
        llf = modes.laplace + dev.cond.loglik_const
    else:
        llf, _ = lp.agq_loglik(des, dev.chol_u, None, dev.cond, theta, nagq, modes=modes, lams=lams)
        llf += dev.cond.loglik_const
    cov, cov_method, cov_joint = _fe_covariance(model, tr, H)
    if cov is not None and cov_method == "Hessian (theta, beta, log alpha)":
        cov_method = f"Hessian (theta, beta, log {model._extra_name})"
    cov_note = ""
    if cov is None:
        cov, cov_method = dev.cov_rx(theta, modes, lams), "RX"
        cov_note = ("the fixed-effects block of the inverse finite-difference Hessian is not "
                    "positive definite")
    optim = OptSummary.from_result(optim, initial=initial, cov_method=cov_method,
                                   cov_note=cov_note)
    extra_kw = {}
    if dev.k_extra:
        extra_kw["_alpha"] = float(np.exp(extra[0]))     # the family's own parameter
    if model._extra_name == "scale":
        # statsmodels' GLM convention: cov_params() = scale * normalized_cov_params
        extra_kw["scale"] = extra_kw["_alpha"]
        cov = np.asarray(cov) / extra_kw["scale"]
    if hasattr(model, "_result_extras"):           # models with several own parameters
        extra_kw = model._result_extras(extra, H, tr)
    results_class = getattr(model, "_results_class", None) or GLMMResults   # NB1, beta, zi
    res = results_class(model, beta, cov, theta=theta, u=modes.u, sigma=1.0,
                        criterion=-2.0 * llf, optim=optim, reml=False, nagq=nagq,
                        pirls=modes, hessian=H, _transform=tr, _cov_joint=cov_joint,
                        **extra_kw)
    # stacklevel 4: the user's fit() call (_finish <- fit_glmm <- model.fit)
    if not optim.success:
        warnings.warn(f"the optimizer did not converge: {optim.message} (tried: "
                      + "; ".join(f"{m} ({'ok' if ok else 'failed'}, {n} evaluations)"
                                  for m, ok, n in optim.tried) + ")",
                      ConvergenceWarning, stacklevel=4)
    if res.is_singular():                          # as lmer (and lme4) say it
        warnings.warn("boundary (singular) fit: a random-effects covariance is singular "
                      f"(theta = {np.round(theta, 6).tolist()}); see results.is_singular()",
                      ConvergenceWarning, stacklevel=4)
    model._warn_separation(beta)
    model._warn_link_not_monotone(modes.eta)
    return MixedResultsWrapper(res)


def _fe_covariance(model, tr, H):
    """Covariance of beta from the Hessian ``H`` of the deviance: ``(cov, method, cov_joint)``.

    As lme4's ``vcov.merMod`` (1.1-31): ``2 H^-1`` in (theta, beta), its fixed-effects
    block, whenever that block is positive definite -- singular fits included (lme4 computes
    the Hessian by central differences of the deviance across a theta at 0; ours, by central
    differences of the exact gradient at the end point (AGQ: of the deviance), likewise).  For the
    negative binomial ``cov_joint`` also allows for alpha's uncertainty (the Hessian in
    (theta, beta, log alpha)); it is the covariance of glmmTMB-mode fits
    (``information="observed"``: glmmTMB inverts the Hessian in all its parameters).
    ``cov`` is None when the Hessian does not give one (then lme4 uses RX).

    lme4 1.1-38 and later skip the Hessian of singular fits unless ``calc.derivs = TRUE`` is
    set, and so report RX there; the references here are lme4 1.1-31's (as 1.1-32 to 1.1-37).
    """
    nt, p = tr.nt, tr.p

    def block(k):
        if H is None or not np.all(np.isfinite(H[:k, :k])):
            return None
        try:
            Hi = np.linalg.inv(H[:k, :k])
        except np.linalg.LinAlgError:
            return None
        V = Hi[nt:nt + p, nt:nt + p] + Hi[nt:nt + p, nt:nt + p].T
        if p and not np.all(np.linalg.eigvalsh(V) > 0):
            return None
        return tr.R @ V @ tr.R.T

    joint = block(nt + p + tr.ke) if tr.ke else None
    if getattr(model, "information", "expected") == "observed" or \
            getattr(model, "_extra_name", "") == "scale" or \
            getattr(model, "_joint_cov", False):     # Gamma, inverse Gaussian, NB1, beta: glmmTMB's
        return joint, "Hessian (theta, beta, log alpha)", joint
    return block(nt + p), "Hessian", joint


class _Transform:
    """Optimizer coordinates: beta = beta0 + R b (R from the stage-1 covariance)."""

    def __init__(self, nt, p, ke, beta0, R):
        self.nt, self.p, self.ke = nt, p, ke
        self.beta0 = np.asarray(beta0, dtype=float)
        self.R = R

    def params(self, x):
        x = np.asarray(x, dtype=float)
        nt, p = self.nt, self.p
        return np.concatenate([x[:nt], self.beta0 + self.R @ x[nt:nt + p], x[nt + p:]])

    def grad(self, g):
        nt, p = self.nt, self.p
        return np.concatenate([g[:nt], self.R.T @ g[nt:nt + p], g[nt + p:]])

    def hess(self, H):
        """A Hessian in ``(theta, beta)`` taken to the optimizer's coordinates (``R' H R`` in
        the fixed effects' block and rows)."""
        nt, p = self.nt, self.p
        out = np.array(H, dtype=float)
        out[nt:nt + p] = self.R.T @ out[nt:nt + p]
        out[:, nt:nt + p] = out[:, nt:nt + p] @ self.R
        return out

    def bounds(self, lower):
        lo = [(float(l), None) if np.isfinite(l) else (None, None) for l in lower]
        return lo + [(None, None)] * self.p + [(-25.0, 10.0)] * self.ke
