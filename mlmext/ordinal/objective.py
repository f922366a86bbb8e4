"""The clmm objective for the optimizers: negative log-likelihood, gradient and Hessian."""
from __future__ import annotations

import numpy as np

from .. import laplace as _laplace
from ..optimize import gradient_hessian


class _ClmmObjective:
    """Negative log-likelihood of a clmm and its gradient, in internal or R coordinates.

    Internal coordinates ``x = (psi, beta, theta)`` make the thresholds
    increasing by construction; R coordinates ``z = (alpha, beta, theta)``
    are ``clmm``'s.  The conditional modes of a new evaluation start from a
    first-order prediction off the last converged one
    (:func:`mlmext.laplace.predict_modes`), which leaves PIRLS an error of
    second order in the change of the parameters.  Gradients are exact for the
    Laplace approximation and for AGQ with a single scalar term
    (:func:`mlmext.laplace.agq_loglik_gradient`), else central differences.
    """

    def __init__(self, model, nagq):
        self.model = model
        self.nagq = nagq
        self.thr = model.thr
        self.k, self.p = model.thr.k, model.k_fe
        self.base = None          # (z, modes) of the last converged evaluation
        self._fresh = False       # does the model's factor still belong to base?
        self.nfev = 0
        self.ngev = 0
        des = model.re_design
        self.agq_grad = nagq > 1 and len(des.blocks) == 1 and des.blocks[0].q == 1
        self.analytic = nagq == 1 or self.agq_grad
        self.X = model.exog if model.k_fe else None
        self.tol = None           # PIRLS tolerance (None: the model's default)
        self._tight = model._pirls_tol
        self._dd1 = self._dd1_for = None
        self._last_fg = None      # (z, (f, g), base, PIRLS decrement) of the last fg_r

    @property
    def u(self):
        return None if self.base is None else self.base[1].u

    def _start(self, z):
        """Warm start for the modes at ``z``."""
        if self.base is None:
            return None
        z0, modes = self.base[:2]
        dz = z - z0
        if not dz.any():
            return modes.u
        has_factor = bool(modes.extra) and "factor" in modes.extra
        if not (has_factor or self._fresh) or np.abs(dz).max() > 1.0 or modes.d1 is None:
            return modes.u
        k, p = self.k, self.p
        model = self.model
        dth = self.thr.T @ dz[:k]
        deta = self.X @ dz[k:k + p] if p and dz[k:k + p].any() else None
        dd1 = None
        if dth.any():
            if self._dd1_for is not modes:
                self._dd1 = model.cond.param_derivatives(modes.eta)[1]
                self._dd1_for = modes
            dd1 = self._dd1 @ dth
        try:
            return _laplace.predict_modes(model.re_design, model.chol, modes, dz[k + p:],
                                          deta_fixed=deta, dd1=dd1)
        except Exception:  # noqa: BLE001 - a warm start only
            return modes.u

    def _eval_z(self, z, nagq=None):
        k, p = self.k, self.p
        u0 = self._start(z)
        ll, modes = self.model.loglike_parts(z[:k], z[k:k + p], z[k + p:], nagq=nagq or self.nagq,
                                             u0=u0, tol=self.tol)
        self.nfev += 1
        if modes is not None and modes.converged and np.isfinite(ll):
            self.base = (z.copy(), modes, -ll)
            self._fresh = True
            return -ll, modes
        self._fresh = False
        return np.inf, modes

    def _grad_r(self, theta, modes):
        """Gradient of -loglik in R coordinates at converged modes (analytic, Laplace)."""
        model = self.model
        g_t, g_b, g_e = _laplace.laplace_gradient(model.re_design, model.chol, model.cond, theta,
                                                  modes, X=self.X)
        self.ngev += 1
        if self.k and modes.eta is model.cond._key:         # keep d d1 / d thresholds for warm starts
            self._dd1 = model.cond.param_derivatives(modes.eta)[1]
            self._dd1_for = modes
        return self._r_gradient(g_t, g_b, g_e)

    def _agq_fg(self, z):
        """AGQ value and exact gradient (single scalar term): modes by PIRLS, one pass over the nodes."""
        f, modes = self._eval_z(z, nagq=1)
        if not np.isfinite(f):
            return f, modes, None
        model = self.model
        llf, g_t, g_b, g_e = _laplace.agq_loglik_gradient(model.re_design, model.chol, model.cond,
                                                          z[self.k + self.p:], modes, self.nagq, X=self.X)
        self.ngev += 1
        if not np.isfinite(llf):
            return np.inf, modes, None
        return -llf, modes, self._r_gradient(g_t, g_b, g_e)

    def _r_gradient(self, g_t, g_b, g_e):
        """Gradient of -loglik in R coordinates from the engine's (theta, beta, thresholds) parts."""
        g_a = self.thr.T.T @ g_e
        g_b = np.zeros(0) if g_b is None else g_b
        return -np.concatenate([g_a, g_b, g_t])

    # R coordinates -----------------------------------------------------------------
    def fun_r(self, z):
        return self._eval_z(z)[0]

    def fg_r(self, z):
        last = self._last_fg
        if last is not None and last[2] is self.base and np.array_equal(last[0], z) and \
                (self.tol is not None or last[3] <= self._tight):
            return last[1]                       # same point, modes at least as accurate
        if self.agq_grad:
            f, modes, g = self._agq_fg(z)
            if not np.isfinite(f):
                return np.inf, np.zeros_like(z)
            out = f, g
            self._last_fg = (z.copy(), out, self.base, modes.decrement)
            return out
        f, modes = self._eval_z(z)
        if not np.isfinite(f):
            return f, np.zeros_like(z)
        if self.analytic:
            try:
                out = f, self._grad_r(z[self.k + self.p:], modes)
            except NotImplementedError:
                self.analytic = False
                out = f, self._fd_grad(self.fun_r, z, f)
        else:
            out = f, self._fd_grad(self.fun_r, z, f)
        self._last_fg = (z.copy(), out, self.base, modes.decrement)
        return out

    # internal coordinates ----------------------------------------------------------
    def to_r(self, x):
        k = self.k
        return np.concatenate([self.thr.alpha(x[:k]), x[k:]])

    def fg_x(self, x):
        k = self.k
        f, gz = self.fg_r(self.to_r(x))
        if not np.isfinite(f):
            return f, gz
        gx = gz.copy()
        gx[:k] = self.thr.jacobian(x[:k]).T @ gz[:k]
        return f, gx

    def _fd_grad(self, fun, z, f0):
        base, fresh = self.base, self._fresh
        g = np.empty_like(z)
        lower = self.lower_r
        for i in range(z.size):
            h = 1e-5 * max(1.0, abs(z[i]))
            zp = z.copy()
            zp[i] += h
            fp = fun(zp)
            self.base, self._fresh = base, fresh and self._scalar(base)
            if z[i] - h < lower[i]:
                g[i] = (fp - f0) / h
            else:
                zm = z.copy()
                zm[i] -= h
                fm = fun(zm)
                self.base, self._fresh = base, fresh and self._scalar(base)
                g[i] = (fp - fm) / (2.0 * h)
        return g

    @staticmethod
    def _scalar(base):
        return base is not None and bool(base[1].extra) and "factor" in base[1].extra

    def gradient_differences(self, fg, z, g0, idx, rel):
        """Forward differences ``(g(z + h e_i) - g0) / h`` of the gradient ``fg`` for ``i`` in
        ``idx`` (columns), ``h = rel * max(1, |z_i|)``.

        Every evaluation warm-starts from the modes at ``z``, and the state is left at ``z``.
        """
        base = self.base
        D = np.empty((z.size, len(idx)))
        for a, i in enumerate(idx):
            h = rel * max(1.0, abs(z[i]))
            zp = z.copy()
            zp[i] += h
            self.base, self._fresh = base, self._scalar(base)
            D[:, a] = (fg(zp)[1] - g0) / h
        self.base, self._fresh = base, False
        return D

    def hessian_r(self, z, free):
        """Hessian of -loglik in R coordinates over the ``free`` entries of ``z``.

        Forward differences of the analytic gradient (Laplace), else central
        second differences of the value (``clmm``'s scheme, step 1e-4).
        """
        idx = np.flatnonzero(free)
        if self.analytic:
            f0, g0 = self.fg_r(z)
            self.llf_at_hessian = (-f0, self.base[1])
            H = self.gradient_differences(self.fg_r, z, g0, idx, 1e-6)[idx]
            return 0.5 * (H + H.T)
        f0 = self.fun_r(z)
        base = self.base
        self.llf_at_hessian = (-f0, base[1])

        def fun(v):
            full = z.copy()
            full[free] = v
            self.base, self._fresh = base, self._scalar(base)
            return self.fun_r(full)
        _, H = gradient_hessian(fun, z[free], np.full(idx.size, 1e-4))
        self.base, self._fresh = base, False
        return H
