"""The profile objective of a GLMM (Laplace or AGQ, as fitted) on lme4's (sd/cor, beta) scale.

At each profile point all other parameters are re-optimized, with the model's own deviance
object (:class:`~mlmext.glmm.deviance.LaplaceDeviance`): the profile never touches the model
or the fit.

The conditional model's own parameters are coordinates too (glmmTMB's profiles): the
dispersion of Gamma / inverse Gaussian models (``scale``), NB1's and beta's ``phi``, and the
zero-inflation coefficients (``zi_...``) and NB2 ``alpha`` of zero-inflated / hurdle models,
re-optimized at each point and profiled themselves -- a dispersion on the log scale inside
(zeta is close to linear there), reported on the results' scale.  A plain ``glmer_nb`` fit
keeps lme4's profile: alpha held at its estimate, not profiled (``free_extra=True`` frees it).
"""
from __future__ import annotations

import numpy as np

from .._blas import blas_threads
from ..laplace import PIRLSError
from ..objective import sdcor_from_theta, theta_from_sdcor
from ..optimize import escape_bound, quasi_newton, snap_to_bound
from ._common import _beta, _fe_names, _raw
from ._profile_common import _best_start, _box_steps, _varpar_kinds, varpar_names

__all__ = ["GLMMProfile"]


def _extra_internal(r):
    """The conditional model's own parameters at the estimates, as its deviance takes them
    (log dispersion; zero-inflated: the zi coefficients then NB2's log alpha)."""
    if hasattr(r, "_extra_internal"):
        return np.asarray(r._extra_internal(), dtype=float)
    return np.array([np.log(r._alpha)]) if r.model.k_extra else np.zeros(0)


class GLMMProfile:
    """A GLMM's deviance (Laplace or AGQ, as fitted) on the (sd/cor, [log dispersion], beta,
    [zi]) scale.

    At each profile point all other parameters are re-optimized: by quasi-Newton steps
    started from the curvature at the estimate, with the exact Laplace gradient (the
    chain rule through the sd/cor -> theta map) or, for AGQ, central differences.

    Parameters
    ----------
    res : GLMMResults
    free_extra : bool, optional
        Whether the conditional model's own parameters are coordinates (re-optimized and
        profiled) or held at their estimates.  Default: held for a plain ``glmer_nb`` fit
        (lme4's), free otherwise (glmmTMB's); zero-inflated models are always free.
    """

    def __init__(self, res, free_extra=None):
        r = _raw(res)
        self.res = r
        m = r.model
        self.model = m
        ex = _extra_internal(r)
        zi = getattr(m, "exog_zi", None)
        nz = 0 if zi is None else zi.shape[1]          # zero-inflation coefficients
        nd = ex.size - nz                              # a log dispersion: 0 or 1
        if free_extra is None:                         # lme4's glmer.nb holds its theta
            free_extra = not (nd and nz == 0 and m._extra_name == "alpha")
        if not free_extra and nz:
            raise NotImplementedError("the profile of a zero-inflated / hurdle model re-optimizes "
                                      "its zero-inflation coefficients: free_extra=False is not "
                                      "implemented for it")
        self.free_extra = bool(free_extra) and ex.size > 0
        if not self.free_extra:
            nd = 0
        self.nd, self.nz = nd, nz
        self.extra = np.zeros(0) if self.free_extra else ex    # held at the estimate
        # its own deviance: the profile's evaluations leave the model and the fit untouched
        self.objective = m.deviance()
        self.objective.warm_start = np.array(r._u, dtype=float)
        des = m.re_design
        self.des = des
        self.nagq = int(getattr(r, "nagq", 1) or 1)
        self.nt, self.p = des.ntheta, int(m.k_fe)
        kinds = _varpar_kinds(r)
        self.nvp = len(kinds)
        # the profile's coordinates: sd/cor, log dispersion, beta, zero-inflation coefficients
        self.kinds = kinds + ["disp"] * nd + ["beta"] * self.p + ["zi"] * nz
        self.scalar_only = all(t.q == 1 for t in des.terms)
        vp = sdcor_from_theta(des, r.theta, 1.0)
        self.est = np.concatenate([vp, ex[nz:nz + nd], _beta(r), ex[:nz]])
        self.lower = np.array([0.0 if k == "sd" else (-1.0 if k == "cor" else -np.inf)
                               for k in self.kinds])
        self.upper = np.array([1.0 if k == "cor" else np.inf for k in self.kinds])
        # a log dispersion within e^{+-30} of its estimate, a zi coefficient within +-30 (NB's
        # alpha -> 0 is the Poisson limit, a zi intercept -> -inf no zero inflation, where
        # the deviance stays finite: the profile may end there, one-sided)
        jd = np.flatnonzero(np.isin(self.kinds, ["disp", "zi"]))
        self.lower[jd], self.upper[jd] = self.est[jd] - 30.0, self.est[jd] + 30.0
        extra_names = [m._extra_name] * nd + [f"zi_{n}" for n in getattr(m, "exog_zi_names", [])]
        vpn, vpl = varpar_names(r), varpar_names(r, "lme4")
        fe = _fe_names(r)
        self.names = vpn + extra_names[:nd] + fe + extra_names[nd:]
        self.lme4_names = vpl + extra_names[:nd] + fe + extra_names[nd:]
        self.se_beta = r.bse_fe.to_numpy()
        self._ib = np.arange(self.nvp + nd, self.nvp + nd + self.p)     # beta's positions
        # the model's (theta, beta, extra = [zi, log dispersion]) gradient -> the profile's order
        o = self.nt + self.p
        self._from_model = np.concatenate([o + nz + np.arange(nd), self.nt + np.arange(self.p),
                                           o + np.arange(nz)])
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

    # -- what is reported: a dispersion on the results' scale (exp of its log); an interval's
    # end at the profile's bounds is the limit there (0 or inf; a zi coefficient -inf or inf)
    def to_report(self, w, x, limit=False):
        k = self.kinds[w]
        if k not in ("disp", "zi"):
            return x
        if not limit:
            return float(np.exp(x)) if k == "disp" else x
        if x <= self.lower[w]:
            return 0.0 if k == "disp" else -np.inf
        if x >= self.upper[w]:
            return np.inf
        return float(np.exp(x)) if k == "disp" else x

    def from_report(self, w, v):
        if self.kinds[w] != "disp":
            return v
        if not v > 0:
            raise ValueError(f"{self.names[w]} must be positive; got {v}")
        return float(np.log(v))

    # -- the deviance and its gradient on the (sd/cor, beta) scale
    def _model_params(self, pv):
        nvp, nd, p = self.nvp, self.nd, self.p
        theta = theta_from_sdcor(self.des, pv[:nvp], 1.0)
        b0 = nvp + nd
        return np.concatenate([theta, pv[b0:b0 + p], pv[b0 + p:], pv[nvp:b0], self.extra])

    def dev(self, pv):
        """-2 log-likelihood (the model's, at its nagq) at the profile's coordinates."""
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
            gt = g[:self.nt]
            J = self._theta_jac(pv)
            gv = gt if J is None else J.T @ gt
            return -2.0 * ll, -2.0 * np.concatenate([gv, g[self._from_model]])[idx]
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
            return se if np.isfinite(se) and se > 0 else self.se_beta[w - self._ib[0]]
        if k in ("disp", "zi"):
            return se if np.isfinite(se) and se > 0 else 0.2
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
