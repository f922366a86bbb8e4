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
* :class:`~._profile_glmm.GLMMProfile` -- a GLMM on the (sd/cor, beta) scale: the model's own deviance at
  its ``nagq`` (Laplace or adaptive Gauss-Hermite), every other parameter re-optimized at
  each point (lme4's GLMM ``devfun2``).  The conditional model's own parameters (a
  dispersion, zero-inflation coefficients) are re-optimized and profiled too, as glmmTMB
  does; a ``glmer_nb`` fit's alpha is held at its estimate, as lme4's profile of a
  ``glmer.nb`` fit holds its theta.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ._common import _fe_names, _is_glmm, _is_lmm, _params, _raw
from ._profile_common import _best_start, _bmin, _varpar_kinds, varpar_names
from ._profile_glmm import GLMMProfile
from ._refit import _ml_fit


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


def _profile_objective(res, nb_alpha=None):
    """The objective for a fitted model, or NotImplementedError naming what is supported.

    ``nb_alpha``: for ``glmer_nb`` fits, ``"fixed"`` (None: lme4's) or ``"free"`` (glmmTMB's).
    """
    r = _raw(res)
    m = r.model
    is_nb2 = _is_glmm(r) and getattr(m, "k_extra", 0) == 1 and m._extra_name == "alpha" \
        and not hasattr(m, "exog_zi")
    zi_nb = _is_glmm(r) and hasattr(m, "exog_zi") and bool(m._nb)
    if nb_alpha is not None:
        if not (is_nb2 or zi_nb):
            raise TypeError("nb_alpha applies to the profiles of glmer_nb fits only; other "
                            "families' own parameters are always re-optimized")
        if nb_alpha not in ("fixed", "free"):
            raise ValueError(f"nb_alpha must be 'fixed' (lme4's) or 'free' (glmmTMB's); "
                             f"got {nb_alpha!r}")
        if zi_nb and nb_alpha == "fixed":
            raise NotImplementedError(
                "nb_alpha='fixed' for a zero-inflated / hurdle negative binomial: its profile "
                "re-optimizes alpha with the zero-inflation coefficients (glmmTMB's); holding "
                "alpha at its estimate is not implemented (leave nb_alpha out)")
    if _is_lmm(r):
        return _LMMProfile(r)
    if _is_glmm(r):
        return GLMMProfile(r, free_extra=(nb_alpha == "free") if is_nb2 else None)
    raise NotImplementedError(
        "profile likelihood (profile(), conf_int(method='profile')) is implemented for linear "
        "and generalized linear mixed models (lmer, glmer, glmer_nb fits); this is a "
        f"{type(r.model).__name__}: use the Wald intervals, conf_int()")


# ============================================================================ the profiler
class _Profiler:
    """Profile zeta functions on lme4's scale (sd/cor[, sigma], beta), for any objective."""

    def __init__(self, res, nb_alpha=None):
        self.obj = _profile_objective(res, nb_alpha)
        o = self.obj
        self.names, self.lme4_names, self.est = o.names, o.lme4_names, o.est
        self._starts = {}                 # per parameter: (value, optimum of the others)
        for w in range(self.est.size):    # the estimate itself is a solution of every profile
            self._starts[w] = [(self.est[w], np.array(o.others_at_estimate(w), dtype=float))]
        self.low_dev = 0.0
        self._memo = {}

    def context(self):
        return self.obj.context()

    def report(self, w, x, limit=False):
        """Parameter w's value x on the scale the results report (a dispersion: exp of its log);
        ``limit``: x is an interval's end (at a dispersion's or zi coefficient's bound: the
        limit there, 0 or +-inf)."""
        f = getattr(self.obj, "to_report", None)
        return float(x) if f is None else f(w, x, limit)

    def internal(self, w, v):
        """The inverse of :meth:`report`."""
        f = getattr(self.obj, "from_report", None)
        return float(v) if f is None else f(w, v)

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
                with warnings.catch_warnings():      # nearly flat zeta (NB's Poisson limit)
                    warnings.simplefilter("ignore", np.exceptions.RankWarning)
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
