"""Generalized linear mixed models (lme4's ``glmer`` and ``glmer.nb``).

``y_i | u ~ F(mu_i)``, ``g(mu_i) = eta_i = x_i' beta + z_i' Lambda(theta) u + offset_i``,
``u ~ N(0, I)``, for the binomial and Poisson families of statsmodels (any
link the family accepts) and the NB2 negative binomial
(``Var = mu + alpha mu^2``, log link).

The family-independent numerics (PIRLS, Laplace, adaptive Gauss-Hermite
quadrature, the gradient of the Laplace log-likelihood) are in
:mod:`mlmext.laplace`; this module supplies the conditional distributions
(:class:`GLMConditional`, :class:`NegativeBinomialConditional`), the models
and their fit, and the results class.

Fitting (see :meth:`GeneralizedLinearMixedModel.fit`):

1. lme4's first stage (``nAGQ = 0``): theta optimized with beta updated
   inside PIRLS; it gives starting values and the scale of beta.
2. theta, beta (and log alpha for the negative binomial) jointly, maximizing
   the Laplace log-likelihood with L-BFGS-B and its exact gradient (one
   PIRLS solve plus O(n) work per evaluation).  Unlike ``glmer.nb``, alpha is
   not found by an outer search that refits the model.
3. For ``nagq > 1`` (one grouping factor): the adaptive Gauss-Hermite
   log-likelihood, from the Laplace estimates.

Standard errors are lme4's default: the fixed-effects block of the inverse
Hessian of the deviance in (theta, beta), by central differences (of the
analytic gradient for Laplace fits).  For boundary (singular) fits, lme4's
fallback from the PIRLS system (``RX``) is used.

Log-likelihoods are on the full scale (with the binomial coefficients,
``log y!`` etc.), for Laplace and AGQ alike.  lme4 reports the same number for
Laplace fits; for ``nAGQ > 1`` its value omits the family's saturated
log-likelihood: ``lme4 logLik = llf - loglike_saturated``.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize
from statsmodels.genmod import families
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .. import laplace as lp
from .._args import reject_unknown
from .._blas import blas_threads
from ..base import MixedModel, _drop_rank_deficient
from ..optimize import (CountingGradient, escape_bound, hessian_from_gradient, hessian_from_values,
                        newton, quasi_newton)
from ..results import MixedResultsWrapper
from .conditional import GLMConditional
from .response import _check_counts, _family_from_name, _response_from_frame
from .results import GLMMResults


_FIT_ARGS = ("nagq", "start_params", "maxiter", "tol", "stage1", "disp")
_FIT_HINTS = {
    "method": "the GLMM fit has one method (quasi-Newton with the exact Laplace gradient, then "
              "Newton); remove method=",
    "optimizer": "the GLMM fit has one method (quasi-Newton with the exact Laplace gradient, "
                 "then Newton); remove optimizer=",
    "REML": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
    "reml": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
}



# ============================================================================ models
class GeneralizedLinearMixedModel(MixedModel):
    """Generalized linear mixed model fitted by Laplace or adaptive Gauss-Hermite quadrature.

    Usually created with :func:`mlmext.formula.api.glmer`.

    Parameters
    ----------
    endog : array_like
        Response: 0/1 or proportions (binomial; with ``weights`` = trials), a
        two-column array of (successes, failures), or counts (Poisson).
    exog : array_like
        Fixed-effects design.
    re_design : mlmext.design.RandomEffectsDesign
    family : statsmodels.genmod.families.Family
        ``Binomial()`` (default) or ``Poisson()``, any link the family accepts.
    weights : array_like, optional
        Prior weights (binomial proportions: the number of trials).
    offset : array_like, optional
        Known offset on the linear-predictor scale.
    """

    _check_nlev_vs_nobs = False

    def __init__(self, endog, exog, re_design, family=None, weights=None, offset=None, **kwargs):
        self._reject_init_kwargs(kwargs)
        family = self._resolve_family(family)
        info = kwargs.get("formula_info") or {}
        trials = info.pop("trials", None)
        kind = info.get("response_kind", "numeric")
        y = np.asarray(endog, dtype=float)
        if y.ndim == 2 and y.shape[1] == 2:              # (successes, failures) given as arrays
            if np.any(y < 0):
                raise ValueError("the (successes, failures) response has negative counts")
            trials = y.sum(axis=1)
            endog = np.divide(y[:, 0], trials, out=np.zeros(len(y)), where=trials > 0)
            kind = "cbind"
        elif y.ndim == 2 and y.shape[1] != 1:
            raise ValueError(f"the response must be one column or (successes, failures); it has {y.shape[1]}")
        if trials is not None:
            weights = trials if weights is None else np.asarray(weights, dtype=float) * trials
        self._set_family(family)
        self.response_kind = kind
        self._check_response_kind(info)
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        self._init_keys = list(getattr(self, "_init_keys", [])) + ["family"]
        self.endog = np.asarray(self.endog, dtype=float).ravel()
        self._check_response()
        self._setup()

    # -- arguments, family and response checks
    _api_name = "glmer"
    _init_hints = {
        "link": "the link belongs in the family: family=sm.families.Binomial("
                "link=sm.families.links.Probit()), or sm.families.Poisson("
                "link=sm.families.links.Sqrt())",
        "exposure": "give the log exposure as an offset: offset=np.log(exposure)",
        "nAGQ": "the number of quadrature nodes is a fit() argument: .fit(nagq=...)",
        "REML": "GLMMs are fitted by maximum likelihood (there is no REML criterion)",
    }

    def _reject_init_kwargs(self, kwargs):
        """R / statsmodels spellings, rejected before the response is processed (the base
        class rejects any other argument it does not read)."""
        bad = {k: kwargs.pop(k) for k in list(kwargs) if k in self._init_hints}
        reject_unknown(bad, f"{self._api_name}()", hints=self._init_hints)

    def _set_family(self, family):
        self.family = family

    def _resolve_family(self, family):
        """A statsmodels family instance from ``family`` (instance, class or R-style name)."""
        if family is None:
            return families.Binomial()
        if isinstance(family, str):
            family = _family_from_name(family)
        elif isinstance(family, type) and issubclass(family, families.Family):
            family = family()
        if isinstance(family, families.links.Link) or (
                isinstance(family, type) and issubclass(family, families.links.Link)):
            raise TypeError(f"family={family!r} is a link, not a family; give the link to the "
                            "family: family=sm.families.Binomial(link=sm.families.links."
                            f"{getattr(family, '__name__', type(family).__name__)}())")
        if not isinstance(family, families.Family):
            raise TypeError(f"family must be a statsmodels family (sm.families.Binomial(), "
                            f"sm.families.Poisson()) or its name ('binomial', 'poisson'); got "
                            f"{family!r}")
        self._validate_family(family)
        return family

    def _validate_family(self, family):
        if isinstance(family, (families.Gaussian,)):
            raise NotImplementedError("a Gaussian GLMM with an identity link is an LMM: use "
                                      "mlmext.formula.api.lmer; other Gaussian links are not implemented")
        if isinstance(family, families.NegativeBinomial):
            raise ValueError("for the negative binomial use glmer_nb (alpha is estimated with the "
                             "other parameters), not glmer with family=NegativeBinomial()")
        if not isinstance(family, (families.Binomial, families.Poisson)):
            raise NotImplementedError(f"the {type(family).__name__} family (it has a scale "
                                      "parameter) is not implemented; binomial, Poisson and "
                                      "negative binomial (glmer_nb) are")

    def _response_name(self):
        return str(self.formula_info["parsed"].response) if "parsed" in self.formula_info \
            else str(getattr(self, "endog_names", "y"))

    @property
    def _family_label(self):
        """The family as messages name it ("binomial", "Poisson", "negative binomial")."""
        return "binomial" if isinstance(self.family, families.Binomial) else "Poisson"

    def _check_response_kind(self, info):
        """A categorical response: two levels for the binomial, never for count families."""
        if self.response_kind != "factor":
            return
        name = str(info["parsed"].response) if "parsed" in info else "y"
        levels = list(info.get("response_levels", []))
        if isinstance(self.family, families.Binomial):
            if len(levels) != 2:
                raise ValueError(f"the response {name!r} is categorical with {len(levels)} levels "
                                 f"{levels}; a binomial response needs two levels (first level = "
                                 "failure) or 0/1 values")
            return
        raise ValueError(f"the response {name!r} is categorical (levels {levels[:6]}); the "
                         f"{self._family_label} family needs numeric counts (convert the column "
                         "with pd.to_numeric if it holds numbers as text)")

    def _check_response(self):
        y, name = self.endog, self._response_name()
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {name!r} has non-finite values")
        if isinstance(self.family, families.Binomial):
            if np.any(y < 0) or np.any(y > 1):
                raise ValueError(f"the binomial response {name!r} must be 0/1, proportions in "
                                 f"[0, 1] (with weights = trials), cbind(successes, failures) or "
                                 f"a two-level factor; it has values in [{y.min():g}, {y.max():g}]")
            pos = self.weights > 0
            for v, what in ((0.0, "failures"), (1.0, "successes")):
                if pos.any() and np.all(y[pos] == v):
                    raise ValueError(
                        f"the binomial response {name!r} is constant (all {what}): the fixed "
                        f"effects have no finite estimates (the intercept goes to "
                        f"{'-' if v == 0 else '+'}inf); lme4 stops with 'Response is constant' too")
            k = y * self.weights
            if np.any(np.abs(k - np.round(k)) > 1e-7 * np.maximum(1.0, k)):
                warnings.warn(f"non-integer number of successes in the binomial response {name!r} "
                              "(proportion times weights); give weights = number of trials",
                              UserWarning, stacklevel=3)
        else:
            if self.response_kind == "cbind":
                raise ValueError(f"the response {name!r} is cbind(successes, failures), a binomial "
                                 f"response; the {self._family_label} family needs counts")
            _check_counts(y, name)
            pos = self.weights > 0
            if pos.any() and np.all(y[pos] == 0):
                raise ValueError(f"the count response {name!r} is all zeros: the fixed effects "
                                 "have no finite estimates (the intercept goes to -inf); lme4 "
                                 "stops with 'Response is constant' too")

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        y, X = _response_from_frame(y, X, info)
        return y, _drop_rank_deficient(X)

    def _make_conditional(self):
        return GLMConditional(self.family, self.endog, self.weights)

    def _setup(self):
        self.cond = self._make_conditional()
        self.k_extra = int(getattr(self.cond, "k_extra", 0))
        self._chol_u = None
        self._chol_x = None
        self._u_warm = None
        self._last = None

    @property
    def chol_u(self):
        if self._chol_u is None:
            self._chol_u = lp.make_chol(self.re_design, self.endog.shape[0])
        return self._chol_u

    @property
    def chol_x(self):
        if self._chol_x is None:
            self._chol_x = lp.make_chol(self.re_design, self.endog.shape[0], X=self.exog)
        return self._chol_x

    # -- parameters: (theta, beta, extra)
    def _split(self, params):
        params = np.asarray(params, dtype=float)
        nt, p = self.re_design.ntheta, self.k_fe
        return params[:nt], params[nt:nt + p], params[nt + p:]

    def _set_extra(self, extra):
        if self.k_extra:
            self.cond.set_params(extra)

    # -- objectives
    def _modes(self, theta, beta, tol=1e-14, warm=True, lams=None):
        des = self.re_design
        lams = des.lambdas(theta) if lams is None else lams
        eta_f = self.exog @ beta + self.offset
        u0 = self._u_warm if warm else None
        last = self._last if warm else None
        if last is not None and u0 is not None:
            th0, ef0, m0, lams0, extra0 = last
            dd1 = None
            if extra0 is not None:                       # e.g. log alpha moved too
                dx = self._extra_now() - extra0
                if np.any(dx) and np.all(np.isfinite(dx)):
                    dd1 = self.cond.param_derivatives(m0.eta)[1] @ dx
            u0 = lp.predict_modes(des, self.chol_u, m0, theta - th0, eta_f - ef0, lams=lams0, dd1=dd1)
        modes = lp.pirls(des, self.chol_u, eta_f, self.cond, theta, u0=u0, tol=tol, lams=lams)
        if not modes.converged and u0 is not None:
            modes = lp.pirls(des, self.chol_u, eta_f, self.cond, theta, u0=None, tol=tol, lams=lams)
            modes.message = "retried from u = 0; " + modes.message
        if modes.converged:
            self._u_warm = modes.u
            self._last = (np.array(theta, dtype=float), eta_f, modes, lams, self._extra_now())
        else:
            self._last = None
        return modes, lams

    def _extra_now(self):
        return self.cond.get_params().copy() if self.k_extra else None

    def loglike(self, params, nagq=1):
        """Laplace (``nagq = 1``) or AGQ log-likelihood at ``params = (theta, beta[, log alpha])``."""
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta)
        if not modes.converged:
            return -np.inf
        if nagq == 1:
            return modes.laplace
        llf, _ = lp.agq_loglik(self.re_design, self.chol_u, None, self.cond, theta, nagq,
                               modes=modes, lams=lams)
        return llf

    def loglike_and_score(self, params):
        """Laplace log-likelihood and its exact gradient in ``(theta, beta[, log alpha])``."""
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta)
        if not modes.converged:
            return -np.inf, np.zeros(len(params)), modes
        gt, gb, ge = lp.laplace_gradient(self.re_design, self.chol_u, self.cond, theta, modes,
                                         X=self.exog)
        g = np.concatenate([gt, gb] + ([ge] if self.k_extra else []))
        return modes.laplace, g, modes

    def score(self, params):
        return self.loglike_and_score(params)[1]

    def _stage1(self, theta, beta, u=None):
        """lme4's nAGQ = 0 objective at theta: beta inside PIRLS. Returns (deviance, modes)."""
        des = self.re_design
        modes = lp.pirls(des, self.chol_x, self.offset, self.cond, theta, u0=u, X=self.exog,
                         beta0=beta, tol=1e-10)
        if not modes.converged and (u is not None):
            modes = lp.pirls(des, self.chol_x, self.offset, self.cond, theta, X=self.exog,
                             beta0=None, tol=1e-10)
        dev = -2.0 * modes.laplace if modes.converged else np.inf
        return dev, modes

    # -- starting values
    def _start_extra(self, beta):
        return np.zeros(0)

    @property
    def _link_label(self):
        return type(self.family.link).__name__.lower()

    def _range_hint(self):
        """Why PIRLS may fail with a link that does not keep the mean in the family's range."""
        link = self._link_label
        if isinstance(self.family, families.Binomial) and link in ("log", "identity"):
            return (f". With the {link} link the mean must stay in [0, 1] (not guaranteed for "
                    "every eta): the conditional modes may lie on that boundary, where PIRLS "
                    "cannot converge; the logit, probit or cloglog link avoids this")
        if isinstance(self.family, families.Poisson) and link == "identity":
            return (". With the identity link the mean must stay positive (not guaranteed for "
                    "every eta); the log link avoids this")
        return ""

    def _start_mu(self):
        """glm's ``mustart``: the response moved off the boundary of the mean's range."""
        y, w = self.endog, self.weights
        if isinstance(self.family, families.Binomial):
            return (w * y + 0.5) / (w + 1.0)
        return y + 0.1

    def _start_beta(self):
        """Fixed effects whose ``X beta + offset`` is closest to ``g(mustart)`` (weighted LS),
        or None when that is not finite."""
        p = self.k_fe
        if not p:
            return np.zeros(0)
        with np.errstate(all="ignore"):
            eta0 = np.asarray(self.family.link(self._start_mu()), dtype=float) - self.offset
        sw = np.sqrt(np.where(self.weights > 0, self.weights, 0.0))
        if not np.all(np.isfinite(eta0[sw > 0])):
            return None
        eta0 = np.where(sw > 0, eta0, 0.0)
        beta = np.linalg.lstsq(self.exog * sw[:, None], eta0 * sw, rcond=None)[0]
        return beta if np.all(np.isfinite(beta)) else None

    # -- fit
    def fit(self, nagq=1, start_params=None, maxiter=500, tol=1e-8, stage1=False, disp=False,
            **kwargs):
        """Maximum likelihood by the Laplace approximation or adaptive Gauss-Hermite quadrature.

        Parameters
        ----------
        nagq : int
            1 (default): Laplace approximation.  ``2`` to ``100`` (lme4's
            limit): adaptive Gauss-Hermite quadrature with ``nagq`` points per
            random effect (a single grouping factor with at most 3 random
            effects per level; the product grid has ``nagq**q`` nodes).  A
            whole number; ``2.5`` is an error.
        start_params : array_like, optional
            ``(theta, beta[, log alpha])`` to start from.
        maxiter : int
            Iterations of the quasi-Newton phase.
        tol : float
            Convergence when the Newton decrement ``g' H^-1 g`` of the
            deviance (``-2 llf``) is below ``tol``: the deviance is then within
            ``tol / 2`` of its minimum.
        stage1 : bool
            Optimize theta with beta inside PIRLS first (lme4's ``nAGQ = 0``
            stage, derivative-free).  By default only one such PIRLS solve at
            the starting theta is done: it gives beta's starting values and
            scale, and the joint phase has exact gradients.
        disp : bool
            Print what the optimizer did (log-likelihood, phases tried).
        **kwargs
            Any other keyword argument (lme4's ``nAGQ=``, statsmodels'
            ``method=``) raises ``TypeError`` naming it and the spelling
            that works here.

        Returns
        -------
        GLMMResults

        Raises
        ------
        TypeError
            For a keyword argument the fit does not read.
        ValueError
            For ``nagq`` outside ``1 .. 100`` or not a whole number, and
            ``start_params`` of the wrong length or not finite.
        """
        reject_unknown(kwargs, "fit()", accepted=_FIT_ARGS, hints=_FIT_HINTS)
        lp.check_positive(maxiter=maxiter, integer=True)
        lp.check_positive(tol=tol)
        if nagq == 0:
            raise ValueError("nagq must be at least 1: nagq=1 is the Laplace approximation "
                             "(lme4's nAGQ = 0, beta estimated inside PIRLS, is only the first "
                             "stage of the fit here: fit(stage1=True) runs it before the "
                             "Laplace fit)")
        nagq = lp.check_nagq(nagq)
        des = self.re_design
        lp.check_agq(des, nagq)
        dense_rows = des.nre - des.blocks[0].nre + self.k_fe + 1
        with blas_threads(dense_rows):
            res = self._fit(nagq, start_params, maxiter, tol, stage1)
        if disp:
            print(f"log-likelihood {res.llf:.6f} ({'Laplace' if nagq == 1 else f'AGQ, {nagq} nodes'}): "
                  f"{res.optim.message} (tried {res.optim.tried})")
        return res

    def _fit(self, nagq, start_params, maxiter, tol, stage1, em_steps=2):
        des = self.re_design
        nt, p, ke = des.ntheta, self.k_fe, self.k_extra
        tried = []
        self._u_warm = None
        self._last = None
        # ---- stage 1: beta inside PIRLS
        if start_params is not None:
            sp = np.asarray(start_params, dtype=float).ravel()
            if sp.size != nt + p + ke:
                raise ValueError(f"start_params needs {nt + p + ke} values (theta {nt}: "
                                 f"{des.theta_names() if hasattr(des, 'theta_names') else ''}"
                                 f", beta {p}: {list(self.exog_names)}"
                                 f"{', log alpha 1' if ke else ''}); got {sp.size}")
            if not np.all(np.isfinite(sp)):
                raise ValueError(f"start_params has non-finite values: {sp.tolist()}")
            if np.any(sp[:nt] < des.lower):
                raise ValueError("start_params: theta must be >= its lower bounds "
                                 f"{des.lower.tolist()} (standard deviations are >= 0); got "
                                 f"{sp[:nt].tolist()}")
            theta0, beta0, extra0 = self._split(sp)
            self._set_extra(extra0)
            _, m1 = self._stage1(theta0, beta0)
        else:
            theta0 = des.theta_start.copy()
            extra0 = self._start_extra(None)
            self._set_extra(extra0)
            # beta from the GLM-style start (eta = g(y adjusted away from the boundary)) as glm
            # and lme4 start; beta = 0 would put eta = 0 where the sqrt or identity link has
            # mu = 0, and far from the data for large counts
            fails = []
            for what, b0 in (("the GLM-style start g(mu0)", self._start_beta()),
                             ("beta = 0", None)):
                _, m1 = self._stage1(theta0, b0)
                if m1.converged:
                    break
                fails.append(f"from {what}: {m1.message}")
            else:
                raise lp.PIRLSError(
                    f"PIRLS failed at the starting values (theta = {np.round(theta0, 4).tolist()}, "
                    f"beta updated inside PIRLS, u from 0) of the {self._family_label} model "
                    f"({self._link_label} link): " + "; ".join(fails) + self._range_hint())
            if ke:                                        # alpha from the first stage's modes
                extra0 = self._start_extra(m1)
                self._set_extra(extra0)
                _, m1b = self._stage1(theta0, m1.beta, m1.u)
                m1 = m1b if m1b.converged else m1
            if stage1:
                theta0, m1, nfev1 = self._optimize_stage1(theta0, m1)
                tried.append(("stage 1 (theta; beta in PIRLS): Nelder-Mead", True, nfev1))
            elif em_steps:
                theta0, m1, nem = self._em_start(theta0, m1, em_steps)
                tried.append(("stage 1 (theta; beta in PIRLS): EM steps", True, nem))
            beta0 = m1.beta
        # scale for beta: Cholesky factor of the stage-1 (X' V^-1 X)^-1
        cov0 = self.chol_x.cov_beta_unscaled() if (m1.converged and p) else np.eye(p)
        try:
            R = np.linalg.cholesky(cov0) if p else np.zeros((0, 0))
        except np.linalg.LinAlgError:
            R = np.diag(np.sqrt(np.maximum(np.diag(cov0), 1e-8)))
        self._u_warm = m1.u if m1.converged else None
        tr = _Transform(nt, p, ke, beta0, R)
        x0 = np.concatenate([theta0, np.zeros(p), extra0])
        bounds = tr.bounds(des.lower)
        # ---- Laplace: all parameters jointly, exact gradient, then Newton with the Hessian
        fg = self._laplace_fg(tr)
        fd_idx = list(range(nt)) + list(range(nt + p, nt + p + ke))
        x1, f1, g1, qinfo = quasi_newton(fg, x0, bounds, fd_idx, maxiter=maxiter, tol=1e-7)
        tried.append(("Laplace: quasi-Newton (exact gradient)", qinfo["converged"], qinfo["nfev"]))
        lower_x = np.full(x1.size, -np.inf)           # only the variance parameters (theta)
        lower_x[:nt] = [-np.inf if b[0] is None else b[0] for b in bounds[:nt]]
        esc = escape_bound(fg, x1, f1, lower_x)
        if esc is not None:          # a variance stuck at zero although the optimum is inside
            x2, f2, g2, qinfo = quasi_newton(fg, esc[0], bounds, fd_idx, maxiter=maxiter, tol=1e-7)
            tried.append(("Laplace: quasi-Newton, restarted off the bound", qinfo["converged"],
                          qinfo["nfev"]))
            if f2 < f1:
                x1, f1, g1 = x2, f2, g2
        hess_fn = lambda x, g: hessian_from_gradient(fg, x, g, bounds)
        x, f, g, H, info = newton(fg, x1, bounds, hess_fn, tol, maxit=min(50, maxiter),
                                   fgx=(f1, g1))
        tried.append(("Laplace: Newton (Hessian from gradient differences)", info["converged"],
                      info["nfev"]))
        converged = info["converged"]
        message = info["message"]
        if nagq > 1:
            # from the Laplace estimates, with the Laplace Hessian as the first curvature
            fa = self._agq_f(tr, nagq)
            fga = CountingGradient(fa, bounds)
            x1, f1, g1, qinfo = quasi_newton(fga, x, bounds, [], maxiter=maxiter, tol=1e-6, H0=H)
            tried.append((f"AGQ({nagq}): quasi-Newton (gradient by differences)", qinfo["converged"],
                          fga.nfev))
            hess_fn = lambda z, gz: hessian_from_values(fa, z, bounds)
            fga.nfev = 0
            x, f, g, H, info = newton(fga, x1, bounds, hess_fn, tol, maxit=min(50, maxiter),
                                       fgx=(f1, g1))
            tried.append((f"AGQ({nagq}): Newton (Hessian from differences)", info["converged"],
                          fga.nfev + info["nfev"]))
            converged, message = info["converged"], info["message"]
        optim = optimize.OptimizeResult(x=x, fun=f, jac=g, success=converged, message=message,
                                        tried=tried, nfev=sum(t[2] for t in tried),
                                        method="L-BFGS-B + Newton")
        return self._finish(tr, x, nagq, optim, H)

    def _laplace_fg(self, tr):
        def fg(x):
            ll, g, _ = self.loglike_and_score(tr.params(x))
            if not np.isfinite(ll):
                return np.inf, np.zeros_like(x)
            return -2.0 * ll, -2.0 * tr.grad(g)
        return fg

    def _agq_f(self, tr, nagq):
        def f(x):
            ll = self.loglike(tr.params(x), nagq=nagq)
            return -2.0 * ll if np.isfinite(ll) else np.inf
        return f

    def _em_start(self, theta, m1, nsteps):
        """A few Laplace-EM updates of theta on lme4's first-stage system (beta inside PIRLS).

        For each term, ``Sigma_new = Lambda (U'U + S) Lambda' / m`` with ``U``
        the conditional modes and ``S`` the summed conditional covariances of
        the spherical effects; theta is the Cholesky factor of ``Sigma_new``.
        A cheap way to start the joint optimization near the optimum.
        """
        des = self.re_design
        done = 0
        for _ in range(nsteps):
            ch = self.chol_x
            try:
                S = ch.inverse_block_sums(0)
            except np.linalg.LinAlgError:
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
                    try:
                        Lt = np.linalg.cholesky(Ct + 1e-12 * np.eye(t.q))
                    except np.linalg.LinAlgError:
                        Lt = np.diag(np.sqrt(np.maximum(np.diag(Ct), 0.0)))
                    new[t.theta_index] = Lt.T[np.triu_indices(t.q)]   # column-major lower triangle
            _, m_new = self._stage1(new, m1.beta, m1.u)
            done += 1
            if not m_new.converged or m_new.laplace < m1.laplace - 1.0:
                self._stage1(theta, m1.beta, m1.u)       # keep the previous point (and its factor)
                break
            theta, m1 = new, m_new
        return theta, m1, done

    def _optimize_stage1(self, theta0, m1):
        des = self.re_design
        state = {"modes": m1, "nfev": 0}

        def f(th):
            th = np.where(np.isfinite(des.lower), np.maximum(th, des.lower), th)
            m = state["modes"]
            dev, mm = self._stage1(th, m.beta, m.u)
            state["nfev"] += 1
            if mm.converged:
                if dev <= state.get("best", np.inf):
                    state["best"], state["modes"], state["theta"] = dev, mm, th.copy()
                return dev
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
        self._stage1(state["theta"], best.beta, best.u)
        return state["theta"], best, state["nfev"]

    def _finish(self, tr, x, nagq, optim, H):
        des = self.re_design
        params = tr.params(x)
        theta, beta, extra = self._split(params)
        self._set_extra(extra)
        modes, lams = self._modes(theta, beta, tol=1e-20)
        if not modes.converged:
            raise lp.PIRLSError(f"PIRLS failed at the estimates: {modes.message}"
                                + self._range_hint())
        if nagq == 1:
            llf = modes.laplace
        else:
            llf, _ = lp.agq_loglik(des, self.chol_u, None, self.cond, theta, nagq, modes=modes, lams=lams)
        # covariance of beta as lme4: inverse Hessian of the deviance in (theta, beta), or RX
        # when the fit is singular (lme4 does not compute the Hessian then)
        nt, p = des.ntheta, self.k_fe
        singular = bool(np.any(theta[np.isfinite(des.lower)] < 1e-4))
        cov_method = "RX"
        cov = None
        cov_joint = None
        if not singular and H is not None and np.all(np.isfinite(H)):
            # lme4 (glmer.nb too) holds the negative binomial's alpha fixed here; the
            # covariance that also allows for alpha's uncertainty is kept as cov_fe_joint
            for k_h, name in ((nt + p, "cov"), (H.shape[0], "joint")):
                try:
                    Hi = np.linalg.inv(H[:k_h, :k_h])
                except np.linalg.LinAlgError:
                    continue
                Vt = 2.0 * Hi[nt:nt + p, nt:nt + p]
                Vt = 0.5 * (Vt + Vt.T)
                if p and not np.all(np.linalg.eigvalsh(Vt) > 0):
                    continue
                if name == "cov":
                    cov = tr.R @ Vt @ tr.R.T
                    cov_method = "Hessian"
                elif self.k_extra:
                    cov_joint = tr.R @ Vt @ tr.R.T
        if cov is None:
            cov = self._cov_rx(theta, modes, lams)
            self._modes(theta, beta, tol=1e-20)          # factor at the modes again
        optim.cov_method = cov_method
        extra_kw = {}
        if self.k_extra:
            extra_kw["_alpha"] = float(np.exp(extra[0]))
        res = GLMMResults(self, beta, cov, theta=theta, u=modes.u, sigma=1.0,
                          criterion=-2.0 * llf, optim=optim, reml=False, nagq=nagq,
                          pirls=modes, hessian=H, _transform=tr, _cov_joint=cov_joint,
                          **extra_kw)
        if not optim.success:
            warnings.warn(f"the optimizer did not converge: {optim.message} (tried: "
                          + "; ".join(f"{m} ({'ok' if ok else 'failed'}, {n} evaluations)"
                                      for m, ok, n in optim.tried) + ")",
                          ConvergenceWarning, stacklevel=3)
        self._warn_separation(beta)
        self._warn_link_not_monotone(modes.eta)
        return MixedResultsWrapper(res)

    def _warn_separation(self, beta):
        """Warn when the fixed effects run off to infinity: (quasi-)separated binary data, or
        count data that are all zero where a fixed-effects direction points.

        Checked only when the fixed part of the linear predictor is large (``|X beta| > 10``,
        as such fits end up: the optimizer stops once ``exp(-|eta|)`` is negligible); the
        linear program (:func:`mlmext.laplace.separation_direction`) then decides.
        """
        if not self.k_fe:
            return
        link = type(self.family.link).__name__
        binomial = isinstance(self.family, families.Binomial)
        if not ((binomial and link in ("Logit", "Probit", "CLogLog", "LogLog", "Cauchy"))
                or (not binomial and link == "Log")):
            return
        X, beta = self.exog, np.asarray(beta, dtype=float)
        if not np.max(np.abs(X @ beta)) > 10.0:
            return
        pw, y = self.weights, self.endog
        if binomial:         # successes want x'd >= 0, failures x'd <= 0
            k = pw * y
            G, C = np.vstack([X[(k > 0) & (pw > 0)], -X[(pw - k > 0) & (pw > 0)]]), None
        else:                # zero counts want x'd <= 0; positive counts x'd = 0
            G = -X[(y == 0) & (pw > 0)]
            Xp = X[(y > 0) & (pw > 0)]
            C = np.vstack([Xp, -Xp])
        d = lp.separation_direction(G, C)
        if d is None:
            return
        names = list(self.exog_names)
        cols = [n for n, v in zip(names, d) if v != 0]
        big = max(cols, key=lambda n: abs(beta[names.index(n)]))
        what = ("a combination of them predicts the successes and failures perfectly "
                "((quasi-)complete separation)") if binomial else \
            "the counts are all zero wherever a combination of them is not zero"
        msg = (f"the fixed effects {cols} have no finite estimates: {what}, so the likelihood "
               f"keeps increasing as they grow (the fit stopped at {big} = "
               f"{beta[names.index(big)]:.4g}; their standard errors are meaningless). ")
        msg += ("Fitted probabilities numerically 0 or 1 occurred (R's glm warns so; lme4 "
                "does not check). " if binomial else "Fitted means numerically 0 occurred. ")
        msg += "Remove or merge the columns (factor levels) involved, or use a penalized fit."
        warnings.warn(msg, PerfectSeparationWarning, stacklevel=4)

    def _warn_link_not_monotone(self, eta):
        """Warn when the mean is not monotone in eta over the fitted linear predictors."""
        if isinstance(self.family, families.NegativeBinomial):
            return
        with np.errstate(all="ignore"):
            d = np.asarray(self.family.link.inverse_deriv(np.asarray(eta, dtype=float)))
        neg = int(np.sum(d < 0))
        if neg and np.any(d > 0):
            warnings.warn(
                f"{neg} of {d.size} observations have a linear predictor where the "
                f"{self._link_label} link's mean decreases in eta (eta < 0 for the sqrt link, "
                "whose mean is eta^2): the conditional modes may be one of several local "
                "maxima and the Laplace log-likelihood depends on which (lme4 can end at "
                "another); a log link avoids this", UserWarning, stacklevel=4)

    def _cov_rx(self, theta, modes, lams):
        """lme4's RX-based covariance: (X' W X - ...)^-1 from the joint PIRLS system at the modes."""
        d1, w = self.cond.derivatives(modes.eta)
        lin = modes.eta - self.offset
        z = lin.copy()
        pos = w > 0
        z[pos] += d1[pos] / w[pos]
        ch = self.chol_x
        ch.reweight(np.column_stack([self.exog, z]), w)
        try:
            ch.update(lams)
        except np.linalg.LinAlgError:
            # z in the span of [Z Lambda, X] (an exact fit): the covariance does not depend on
            # the response column, any column outside the span gives the factor
            e = np.random.default_rng(0).standard_normal(z.shape[0])
            ch.reweight(np.column_stack([self.exog, e]), w)
            try:
                ch.update(lams)
            except np.linalg.LinAlgError:
                # X' W X singular: the weights vanish (fitted probabilities 0 or 1, means 0),
                # as in separated data; no standard errors (the separation check warns)
                return np.full((self.k_fe, self.k_fe), np.nan)
        return ch.cov_beta_unscaled()


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

    def bounds(self, lower):
        lo = [(float(l), None) if np.isfinite(l) else (None, None) for l in lower]
        return lo + [(None, None)] * self.p + [(-25.0, 10.0)] * self.ke
