"""Profile likelihood: one profiler driving a small objective per model kind.

:class:`_Profiler` holds what does not depend on the model: for parameter ``w`` held at
``x`` it asks the objective for the deviance minimized over the other parameters (started
from the solutions at the neighbouring profile points), turns it into
``zeta = sign(x - x_hat) sqrt(dev(x) - dev_min)``, and finds where ``|zeta|`` reaches a
cutoff.  The objectives say what the parameters are (names, estimates, bounds, a first
step) and how to minimize over the others:

* :class:`_LMMProfile` -- an LMM's ML fit on lme4's (sd/cor, sigma, beta) scale: for a
  variance parameter the deviance with beta profiled out in closed form (lme4's
  ``devfun2``), for a fixed effect the deviance profiled over sigma and the other fixed
  effects in closed form and over theta numerically (lme4's fixed-effect profiles);
* :class:`_GLMMProfile` -- a GLMM on the (sd/cor, beta) scale: the model's own deviance at
  its ``nagq`` (Laplace or adaptive Gauss-Hermite), every other parameter re-optimized at
  each point (lme4's GLMM ``devfun2``).  The negative binomial's alpha is held at its
  estimate, as lme4's profile of a ``glmer.nb`` fit holds its theta.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
from scipy import optimize

from .._blas import blas_threads
from ..design import lower_tri
from ..laplace import PIRLSError
from ..optimize import escape_bound, quasi_newton, snap_to_bound
from ._common import _beta, _fe_names, _is_glmm, _is_lmm, _params, _raw
from ..objective import sdcor_from_theta, theta_from_sdcor
from ._refit import _ml_fit


def varpar_names(res, names="descriptive"):
    """Names of the variance parameters on the sd / correlation scale (plus ``sigma``).

    Parameters
    ----------
    res : MixedResults
    names : {"descriptive", "lme4"}
        ``sd_Days|Subject``, ``cor_Days.Intercept|Subject``, ``sigma`` (lme4's
        ``oldNames = FALSE`` with mlmext's column names), or ``.sig01``, ..., ``.sigma``.
        GLMMs have no ``sigma``.
    """
    r = _raw(res)
    des = r.model.re_design
    out = []
    for label, t in zip(r._term_names(), des.terms):
        for i, j in lower_tri(t.q):
            if i == j:
                out.append(f"sd_{t.colnames[i]}|{label}")
            else:
                out.append(f"cor_{t.colnames[i]}.{t.colnames[j]}|{label}")
    if names == "lme4":
        out = [f".sig{k + 1:02d}" for k in range(len(out))]
        return out + ([".sigma"] if r._has_residual else [])
    if names != "descriptive":
        raise ValueError("names must be 'descriptive' or 'lme4'")
    return out + (["sigma"] if r._has_residual else [])


def _varpar_kinds(res):
    """'sd' or 'cor' per sd/cor parameter (theta order)."""
    return ["sd" if i == j else "cor"
            for t in _raw(res).model.re_design.terms for i, j in lower_tri(t.q)]


def _bmin(f, x0, lo, hi, scale):
    """Minimize f over a box by L-BFGS-B in scaled coordinates with central-difference gradients."""
    x0 = np.asarray(x0, dtype=float)
    if x0.size == 0:
        return float(f(x0)), x0
    s = np.asarray(scale, dtype=float)
    ylo, yhi = lo / s, hi / s
    g = lambda y: f(y * s)

    def jac(y):
        h = 1e-5 * np.maximum(1.0, np.abs(y))
        out = np.empty(y.size)
        for i in range(y.size):
            up, dn = y.copy(), y.copy()
            a = min(h[i], yhi[i] - y[i]) if np.isfinite(yhi[i]) else h[i]
            b = min(h[i], y[i] - ylo[i]) if np.isfinite(ylo[i]) else h[i]
            if a <= 0 and b <= 0:
                out[i] = 0.0
                continue
            up[i] += max(a, 0)
            dn[i] -= max(b, 0)
            out[i] = (g(up) - g(dn)) / (max(a, 0) + max(b, 0))
        return out

    y0 = np.clip(x0 / s, ylo, yhi)
    bounds = list(zip(np.where(np.isfinite(ylo), ylo, None), np.where(np.isfinite(yhi), yhi, None)))
    best = None
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = optimize.minimize(g, y0, jac=jac, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-6})
        if best is None or r.fun <= best.fun:
            best = r
        if best is r and r.success:
            break
        y0 = best.x
    return float(best.fun), best.x * s


def _best_start(f, cands, lo, hi):
    """The candidate start (clipped to the box) with the lowest f."""
    cands = [np.clip(np.asarray(c, dtype=float), lo, hi) for c in cands]
    if len(cands) == 1:
        return cands[0]
    vals = np.array([f(c) for c in cands], dtype=float)
    vals[~np.isfinite(vals)] = np.nan
    return cands[int(np.nanargmin(vals))] if np.any(np.isfinite(vals)) else cands[0]


def _box_steps(x, lo, hi, h):
    """(up, down) step sizes of at most h each that stay inside [lo, hi]."""
    up = np.minimum(h, np.where(np.isfinite(hi), hi - x, h))
    dn = np.minimum(h, np.where(np.isfinite(lo), x - lo, h))
    return np.maximum(up, 0.0), np.maximum(dn, 0.0)


# ============================================================================ objectives
class _LMMProfile:
    """An LMM's ML fit: variance parameters (sd/cor, sigma) with beta profiled out in closed
    form, fixed effects with sigma and the other betas in closed form and theta numerically."""

    def __init__(self, res):
        self.res = _raw(res)
        self.fit = _ml_fit(self.res)
        self.obj = self.fit.model.deviance(reml=False)
        fit = self.fit
        self.theta = fit.theta.copy()
        self.sigma = fit.sigma
        vp = np.append(self.obj.sdcor_from_theta(fit.theta, fit.sigma), fit.sigma)
        self.kinds = _varpar_kinds(fit) + ["sigma"]
        self.nvp = vp.size
        beta = _params(fit)
        self.se_beta = fit.bse_fe.to_numpy()
        self.lower = np.concatenate([[0.0 if k == "sd" else (-1.0 if k == "cor" else 1e-8 * self.sigma)
                                      for k in self.kinds], np.full(beta.size, -np.inf)])
        self.upper = np.concatenate([[1.0 if k == "cor" else np.inf for k in self.kinds],
                                     np.full(beta.size, np.inf)])
        self.base = self.obj.value_sdcor(vp)
        # the optimizer's own optimum may be a hair off: polish it on this scale
        lo, hi = self.lower[:self.nvp], self.upper[:self.nvp]
        f0, x0 = _bmin(self.obj.value_sdcor, vp, lo, hi, self._scale_vp(vp))
        if f0 < self.base:
            self.base, vp = f0, x0
        self.vp = vp
        self.names = varpar_names(fit) + _fe_names(fit)
        self.lme4_names = varpar_names(fit, "lme4") + _fe_names(fit)
        self.est = np.concatenate([vp, beta])

    def context(self):
        return contextlib.nullcontext()

    def _scale_vp(self, vp):
        return np.array([1.0 if k == "cor" else max(abs(v), 0.05 * self.sigma)
                         for k, v in zip(self.kinds, vp)])

    def others_at_estimate(self, w):
        """The other parameters' optimum at the estimate (what the profile of w minimizes over)."""
        if w < self.nvp:
            return np.delete(self.vp, w)
        return self.theta.copy()

    def step0(self, w):
        if w >= self.nvp:
            return self.se_beta[w - self.nvp]
        if self.kinds[w] == "cor":
            return 0.1
        return max(0.2 * abs(self.vp[w]), 0.05 * self.sigma)

    def minimize(self, w, x, cands):
        """(deviance minimized over the others with parameter w at x, the others' optimum)."""
        obj = self.obj
        if w < self.nvp:
            others = np.delete(np.arange(self.nvp), w)
            lo, hi = self.lower[others], self.upper[others]
            sc = self._scale_vp(self.vp)[others]

            def f(y):
                v = np.empty(self.nvp)
                v[w] = x
                v[others] = y
                return obj.value_sdcor(v)
        else:
            j = w - self.nvp
            lo = self.fit.model.re_design.lower
            hi = np.full(lo.size, np.inf)
            sc = np.maximum(np.abs(self.theta), 0.1)
            f = lambda th: obj.value_fixed(th, j, x)
        return _bmin(f, _best_start(f, cands, lo, hi), lo, hi, sc)



class _GLMMProfile:
    """A GLMM's deviance (Laplace or AGQ, as fitted) on the (sd/cor, beta) scale.

    At each profile point all other parameters are re-optimized: by quasi-Newton steps
    started from the curvature at the estimate, with the exact Laplace gradient (the
    chain rule through the sd/cor -> theta map) or, for AGQ, central differences.
    """

    def __init__(self, res):
        r = _raw(res)
        self.res = r
        m = r.model
        self.model = m
        # its own deviance: the profile's evaluations leave the model and the fit untouched
        self.objective = m.deviance()
        self.objective.warm_start = np.array(r._u, dtype=float)
        des = m.re_design
        self.des = des
        self.nagq = int(getattr(r, "nagq", 1) or 1)
        self.nt, self.p = des.ntheta, int(m.k_fe)
        self.extra = np.array([np.log(r._alpha)]) if m.k_extra else np.zeros(0)
        kinds = _varpar_kinds(r)
        self.nvp = len(kinds)
        self.kinds = kinds + ["beta"] * self.p
        self.scalar_only = all(t.q == 1 for t in des.terms)
        vp = sdcor_from_theta(des, r.theta, 1.0)
        self.est = np.concatenate([vp, _beta(r)])
        self.lower = np.array([0.0 if k == "sd" else (-1.0 if k == "cor" else -np.inf)
                               for k in self.kinds])
        self.upper = np.array([1.0 if k == "cor" else np.inf for k in self.kinds])
        self.names = varpar_names(r) + _fe_names(r)
        self.lme4_names = varpar_names(r, "lme4") + _fe_names(r)
        self.se_beta = r.bse_fe.to_numpy()
        self._dense_rows = des.nre - des.blocks[0].nre + self.p + 1
        self.nfev = 0
        with self.context():
            self.base = self.dev(self.est)
            self.H = self._hessian(self.est)
            # polish the fit's optimum on this scale: kept only if it is lower by more than
            # the fit's own tolerance (Newton decrement 1e-8: ~5e-9 in the deviance), with
            # practically-zero SDs back at 0 (a singular fit stays singular)
            allp = np.arange(self.est.size)
            fv, x = self._descend(allp, lambda y: y, self.est)
            sd_lo = np.where(np.array(self.kinds) == "sd", 0.0, -np.inf)
            x, fv, _, _ = snap_to_bound(self.dev, x, fv, sd_lo, tol=1e-10, width=1e-6)
            if fv < self.base - 1e-9:
                self.base, self.est = fv, x
        try:
            cov = 2.0 * np.linalg.inv(self.H)
            self.se = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
            if not np.all(np.linalg.eigvalsh(0.5 * (self.H + self.H.T)) > 0):
                self.se[:] = np.nan
        except np.linalg.LinAlgError:
            self.se = np.full(self.est.size, np.nan)

    def context(self):
        return blas_threads(self._dense_rows)

    # -- the deviance and its gradient on the (sd/cor, beta) scale
    def _model_params(self, pv):
        theta = theta_from_sdcor(self.des, pv[:self.nvp], 1.0)
        return np.concatenate([theta, pv[self.nvp:], self.extra])

    def dev(self, pv):
        """-2 log-likelihood (the model's, at its nagq) at (sd/cor, beta); alpha held fixed."""
        self.nfev += 1
        try:
            with np.errstate(all="ignore"):
                ll = self.objective.loglike(self._model_params(pv), nagq=self.nagq)
        except (np.linalg.LinAlgError, FloatingPointError, PIRLSError):
            return np.inf
        return -2.0 * ll if np.isfinite(ll) else np.inf

    def _theta_jac(self, pv):
        """d theta / d (sd/cor): the identity for scalar terms, central differences otherwise."""
        nvp = self.nvp
        if self.scalar_only:
            return None
        J = np.zeros((self.nt, nvp))
        v = pv[:nvp]
        up, dn = _box_steps(v, self.lower[:nvp], self.upper[:nvp], 1e-7 * np.maximum(1.0, np.abs(v)))
        k = 0
        for t in self.des.terms:
            if t.q == 1:
                J[t.theta_index[0], k] = 1.0
            else:
                for c in range(k, k + t.ntheta):
                    if up[c] + dn[c] <= 0:
                        continue
                    vp_, vm_ = v.copy(), v.copy()
                    vp_[c] += up[c]
                    vm_[c] -= dn[c]
                    J[:, c] = (theta_from_sdcor(self.des, vp_, 1.0)
                               - theta_from_sdcor(self.des, vm_, 1.0)) / (up[c] + dn[c])
            k += t.ntheta
        return J

    def fg(self, pv, idx):
        """(deviance, its gradient in the coordinates idx)."""
        if self.nagq == 1:
            self.nfev += 1
            try:
                with np.errstate(all="ignore"):
                    ll, g, _ = self.objective.loglike_and_score(self._model_params(pv))
            except (np.linalg.LinAlgError, FloatingPointError, PIRLSError):
                ll = -np.inf
            if not np.isfinite(ll):
                return np.inf, np.zeros(len(idx))
            gt, gb = g[:self.nt], g[self.nt:self.nt + self.p]
            J = self._theta_jac(pv)
            gv = gt if J is None else J.T @ gt
            return -2.0 * ll, -2.0 * np.concatenate([gv, gb])[idx]
        f0 = self.dev(pv)
        if not np.isfinite(f0):
            return np.inf, np.zeros(len(idx))
        x = pv[idx]
        up, dn = _box_steps(x, self.lower[idx], self.upper[idx], 1e-5 * np.maximum(1.0, np.abs(x)))
        g = np.zeros(len(idx))
        for i, j in enumerate(idx):
            if up[i] + dn[i] <= 0:
                continue
            a, b = pv.copy(), pv.copy()
            a[j] += up[i]
            b[j] -= dn[i]
            fa = self.dev(a) if up[i] > 0 else f0
            fb = self.dev(b) if dn[i] > 0 else f0
            g[i] = (fa - fb) / (up[i] + dn[i])
        return f0, g

    def _hessian(self, pv):
        """Second derivatives of the deviance at pv, from differences of the gradient."""
        k = pv.size
        allp = np.arange(k)
        H = np.zeros((k, k))
        up, dn = _box_steps(pv, self.lower, self.upper, 1e-4 * np.maximum(1.0, np.abs(pv)))
        g0 = None
        for i in range(k):
            if up[i] + dn[i] <= 0:
                H[i, i] = 1.0
                continue
            a, b = pv.copy(), pv.copy()
            a[i] += up[i]
            b[i] -= dn[i]
            if up[i] > 0:
                ga = self.fg(a, allp)[1]
            else:
                g0 = self.fg(pv, allp)[1] if g0 is None else g0
                ga = g0
            if dn[i] > 0:
                gb = self.fg(b, allp)[1]
            else:
                g0 = self.fg(pv, allp)[1] if g0 is None else g0
                gb = g0
            H[:, i] = (ga - gb) / (up[i] + dn[i])
        H = 0.5 * (H + H.T)
        if not np.all(np.isfinite(H)):
            H = 2.0 * np.eye(k)
        return H

    # -- minimization over a subset of the parameters
    def _descend(self, free, put, y0):
        """Minimize the deviance over the coordinates ``free`` (``put`` maps them to the full
        vector), from y0: damped BFGS from the curvature at the estimate, until the Newton
        decrement is below 1e-9 (the deviance is then within ~5e-10 of its minimum); an SD
        left at or near 0 is probed off the bound (the deviance is even in it)."""
        lo, hi = self.lower[free], self.upper[free]
        bounds = [(float(a) if np.isfinite(a) else None, float(b) if np.isfinite(b) else None)
                  for a, b in zip(lo, hi)]
        fg = lambda y: self.fg(put(y), free)
        H0 = self.H[np.ix_(free, free)]
        var_idx = [i for i, j in enumerate(free) if j < self.nvp]
        y, fv, _, _ = quasi_newton(fg, np.clip(y0, lo, hi), bounds, var_idx, maxiter=200,
                                         tol=1e-9, H0=H0)
        # an SD at or near 0: its gradient is ~0 there whether or not the deviance falls
        # further out (it is even in the SD of a scalar term), so probe from 0
        is_sd = np.array([self.kinds[j] == "sd" for j in free], dtype=bool)
        near = is_sd & (y < 1e-3)
        sd_lo = np.where(is_sd, lo, -np.inf)
        y_at0 = np.where(near, 0.0, y)
        esc = escape_bound(lambda v: self.dev(put(v)), y_at0, fv, sd_lo) if near.any() else None
        if esc is not None:
            y2, f2, _, _ = quasi_newton(fg, esc[0], bounds, var_idx, maxiter=200,
                                              tol=1e-9, H0=H0)
            if f2 < fv:
                y, fv = y2, f2
        return float(fv), y

    def others_at_estimate(self, w):
        return np.delete(self.est, w)

    def step0(self, w):
        """A first step of about one profile standard error (zeta near 1)."""
        se = self.se[w]
        k, v = self.kinds[w], self.est[w]
        if k == "beta":
            return se if np.isfinite(se) and se > 0 else self.se_beta[w - self.nvp]
        if k == "cor":
            return min(se, 0.2) if np.isfinite(se) and se > 0 else 0.1
        cap = max(abs(v), 0.25)
        return min(se, cap) if np.isfinite(se) and se > 0 else max(0.2 * abs(v), 0.05)

    def minimize(self, w, x, cands):
        k = self.est.size
        free = np.delete(np.arange(k), w)

        def put(y):
            pv = np.empty(k)
            pv[w] = x
            pv[free] = y
            return pv
        y0 = _best_start(lambda y: self.dev(put(y)), cands, self.lower[free], self.upper[free])
        return self._descend(free, put, y0)



def _profile_objective(res):
    """The objective for a fitted model, or NotImplementedError naming what is supported."""
    r = _raw(res)
    if _is_lmm(r):
        return _LMMProfile(r)
    if _is_glmm(r):
        return _GLMMProfile(r)
    raise NotImplementedError(
        "profile likelihood (profile(), conf_int(method='profile')) is implemented for linear "
        "and generalized linear mixed models (lmer, glmer, glmer_nb fits); this is a "
        f"{type(r.model).__name__}: use the Wald intervals, conf_int()")


# ============================================================================ the profiler
class _Profiler:
    """Profile zeta functions on lme4's scale (sd/cor[, sigma], beta), for any objective."""

    def __init__(self, res):
        self.obj = _profile_objective(res)
        o = self.obj
        self.names, self.lme4_names, self.est = o.names, o.lme4_names, o.est
        self._starts = {}                 # per parameter: (value, optimum of the others)
        for w in range(self.est.size):    # the estimate itself is a solution of every profile
            self._starts[w] = [(self.est[w], np.array(o.others_at_estimate(w), dtype=float))]
        self.low_dev = 0.0
        self._memo = {}

    def context(self):
        return self.obj.context()

    def bounds(self, w):
        return self.obj.lower[w], self.obj.upper[w]

    def _candidates(self, w, x):
        """Warm starts: the solution at the nearest profiled value, and the linear
        extrapolation from the two nearest ones."""
        pts = self._starts[w]
        xs = np.array([p[0] for p in pts])
        order = np.argsort(np.abs(xs - x))
        cands = [pts[order[0]][1]]
        if len(pts) > 1 and xs[order[0]] != xs[order[1]]:
            (x0, y0), (x1, y1) = pts[order[0]], pts[order[1]]
            cands.append(y0 + (x - x0) / (x1 - x0) * (y1 - y0))
        if len(pts) > 2 and len(set(xs[order[:3]])) == 3:      # quadratic through three
            near = order[:3]
            t = xs[near]
            wts = [np.prod([(x - t[j]) / (t[i] - t[j]) for j in range(3) if j != i]) for i in range(3)]
            cands.append(sum(wi * pts[i][1] for wi, i in zip(wts, near)))
        return cands

    def devdiff(self, w, x):
        """Profiled deviance minus the minimum, with parameter w fixed at x."""
        fv, y = self.obj.minimize(w, x, self._candidates(w, x))
        self._starts[w].append((x, y))
        d = fv - self.obj.base
        if d < -1e-6:
            self.low_dev = min(self.low_dev, d)
        return max(d, 0.0)

    def zeta(self, w, x):
        key = (w, float(x))
        if key not in self._memo:
            self._memo[key] = np.sign(x - self.est[w]) * np.sqrt(self.devdiff(w, x))
        return self._memo[key]

    def limit(self, w, side, z, ztol=1e-8):
        """The value where |zeta| reaches z on one side (or the bound, one-sided).

        zeta is smooth and close to linear in the parameter: the next value is the inverse
        interpolation (x as a polynomial in zeta, through the last three points visited) at
        z -- a secant step from the estimate at first.  Once the root is bracketed, steps
        that leave the bracket are replaced by bisection; while zeta does not increase
        outwards, the step doubles.  Converged when ``| |zeta| - z | < ztol z``.
        """
        est = self.est[w]
        lo, hi = self.bounds(w)
        bound = hi if side > 0 else lo
        if (side > 0 and est >= hi) or (side < 0 and est <= lo):
            return bound, True
        pts = [(est, 0.0)]                  # (x, |zeta|) visited, moving outwards
        below, above = pts[0], None         # the bracket: |zeta| < z and > z
        x = est + side * self.obj.step0(w)
        xtol = 1e-12 * max(abs(est), abs(x - est))
        for _ in range(100):
            at_bound = False
            if (side > 0 and x >= hi) or (side < 0 and x <= lo):
                x, at_bound = bound, True
            zx = abs(self.zeta(w, x))
            if abs(zx - z) < ztol * z:
                return x, False
            if zx < z:
                if at_bound:
                    return bound, True
                below = (x, zx)
            else:
                above = (x, zx)
            pts.append((x, zx))
            last = pts[-3:]
            zs = np.array([q[1] for q in last])
            xs = np.array([q[0] for q in last])
            if np.all(np.diff(zs) > 0) or (above is not None and len(set(zs)) == len(zs)):
                nxt = float(np.polyval(np.polyfit(zs - z, xs, len(zs) - 1), 0.0))
            else:                           # zeta not increasing outwards: go further
                nxt = x + side * 2 * abs(x - pts[-2][0])
            if above is None:               # outwards, at most 10 times the last step
                step = side * (nxt - below[0])
                last_step = abs(pts[-1][0] - pts[-2][0])
                nxt = below[0] + side * (min(step, 10 * last_step) if step > 0 else last_step)
            else:
                a, b = sorted((below[0], above[0]))
                if b - a <= xtol:
                    return above[0], False
                if not (a < nxt < b):
                    nxt = 0.5 * (a + b)
            x = nxt
        raise RuntimeError(f"profile of {self.names[w]} did not reach |zeta| = {z}")
