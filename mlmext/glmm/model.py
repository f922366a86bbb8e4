"""Generalized linear mixed models (lme4's ``glmer`` and ``glmer.nb``).

``y_i | u ~ F(mu_i)``, ``g(mu_i) = eta_i = x_i' beta + z_i' Lambda(theta) u + offset_i``,
``u ~ N(0, I)``, for the binomial and Poisson families of statsmodels (any
link the family accepts), the Gamma and inverse Gaussian families (dispersion ``scale``
estimated jointly, :mod:`.scale`) and the NB2 negative binomial
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
Hessian of the deviance in (theta, beta), by differences (of the analytic
gradient for Laplace fits), singular fits included; lme4's fallback from the
PIRLS system (``RX``) only where that block is not positive definite.  The
summary says which was used (``optim.cov_method``).

Log-likelihoods are on the full scale (with the binomial coefficients,
``log y!`` etc.), for Laplace and AGQ alike.  lme4 reports the same number for
Laplace fits; for ``nAGQ > 1`` its value omits the family's saturated
log-likelihood: ``lme4 logLik = llf - loglike_saturated``.
"""
from __future__ import annotations

import warnings

import numpy as np
from statsmodels.genmod import families
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from .. import laplace as lp
from .._args import reject_robust_cov, reject_unknown
from .._blas import blas_threads
from ..base import MixedModel, drop_rank_deficient
from ..model_data import FormulaResponse
from ..objective import MixedParams
from .conditional import GLMConditional
from .scale import ScaleConditional, is_scale_family
from . import scale as _scale
from .response import _check_counts, _family_from_name, _response_arrays, _response_from_frame
from .deviance import LaplaceDeviance
from .fit import fit_glmm


#: links whose mean increases with eta everywhere (:meth:`_warn_link_not_monotone` has nothing
#: to find: their inverse's derivative is never negative)
_INCREASING_LINKS = frozenset({"logit", "log", "probit", "cloglog", "loglog", "cauchy"})
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
    information : {None, "observed", "expected"}
        Gamma and inverse Gaussian only: the information in the Laplace
        determinant.  ``"observed"`` (glmmTMB's exact Laplace) is the default
        where it is positive for every response (Gamma: log and inverse links;
        inverse Gaussian: ``1/mu^2`` and inverse links); the other links
        (identity, the inverse Gaussian's log) use ``"expected"`` (the GLM
        working weights).  The dispersion (``scale``) is estimated jointly.
    """

    _check_nlev_vs_nobs = False

    def __init__(self, endog, exog, re_design, family=None, weights=None, offset=None,
                 information=None, **kwargs):
        self._reject_init_kwargs(kwargs)
        family = self._resolve_family(family)
        if is_scale_family(family):
            self.information = _scale.choose_information(family, information)
        elif information is not None:
            raise TypeError(f"{self._api_name}(): information= applies to the Gamma and inverse "
                            "Gaussian families (and glmer_nb), not to "
                            f"{type(family).__name__}")
        info = kwargs.get("formula_info") or {}
        trials = info.pop("trials", None)
        kind = info.get("response_kind", "numeric")
        y = np.asarray(endog.values if isinstance(endog, FormulaResponse) else endog, dtype=float)
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
        self._init_keys = list(getattr(self, "_init_keys", [])) + ["family"] + \
            (["information"] if is_scale_family(family) else [])
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
        if is_scale_family(family):
            _scale.check_scale_family(family)
            return
        if not isinstance(family, (families.Binomial, families.Poisson)):
            raise NotImplementedError(f"the {type(family).__name__} family is not implemented; "
                                      "binomial, Poisson, Gamma, inverse Gaussian, negative "
                                      "binomial (glmer_nb; NB1: variance='nb1') and beta "
                                      "(glmer(family='beta'), BetaMixedModel) are")

    def _response_name(self):
        return str(self.formula_info["parsed"].response) if "parsed" in self.formula_info \
            else str(getattr(self, "endog_names", "y"))

    @property
    def _family_label(self):
        """The family as messages name it ("binomial", "Poisson", "negative binomial")."""
        if is_scale_family(self.family):
            return "Gamma" if isinstance(self.family, families.Gamma) else "inverse Gaussian"
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
        what = "positive numbers" if is_scale_family(self.family) else "numeric counts"
        raise ValueError(f"the response {name!r} is categorical (levels {levels[:6]}); the "
                         f"{self._family_label} family needs {what} (convert the column "
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
        elif is_scale_family(self.family):
            _scale.check_response(self, y, name)
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
        return y, drop_rank_deficient(X)

    @classmethod
    def _response_arrays(cls, frame, info):
        # this constructor takes the array response (FormulaResponse); subclasses with their
        # own keep the frames
        if cls.__init__ is not GeneralizedLinearMixedModel.__init__:
            return None
        return _response_arrays(frame, info)

    def _make_conditional(self):
        if is_scale_family(self.family):
            return ScaleConditional(self.family, self.endog, information=self.information)
        return GLMConditional(self.family, self.endog, self.weights)

    def _setup(self):
        # the number of the family's own parameters; everything an evaluation writes lives on
        # the deviance objects (see deviance()).  A GLMConditional has none: not built only to
        # be asked (its per-row constants: ~0.1 ms of a small build)
        if (type(self)._make_conditional is GeneralizedLinearMixedModel._make_conditional
                and not is_scale_family(self.family)):
            self.k_extra = 0
        else:
            self.k_extra = int(getattr(self._make_conditional(), "k_extra", 0))

    # -- the objective and the documented parameter vector (beta, theta[, alpha])
    def deviance(self):
        """A fresh :class:`~mlmext.glmm.deviance.LaplaceDeviance`: the Laplace / AGQ
        log-likelihood with its own factorizations, warm start and alpha."""
        return LaplaceDeviance(self)

    @property
    def param_names(self):
        """Names of the full parameter vector ``(beta, theta[, alpha])`` :meth:`loglike` takes."""
        return (list(self.exog_names) + self.re_design.theta_names()
                + ([self._extra_name] if self.k_extra else []))

    @property
    def _extra_name(self):
        """The family's own parameter: ``scale`` (Gamma, inverse Gaussian) or ``alpha`` (NB)."""
        return "scale" if is_scale_family(self.family) else "alpha"

    def _internal(self, params, what="params"):
        """``(beta, theta[, alpha])`` (or MixedParams) -> the optimizer's ``(theta, beta[, log alpha])``."""
        pr = MixedParams.from_packed(params, self.k_fe, self.re_design.ntheta, self.k_extra,
                                     names=self.param_names, what=what)
        if self.k_extra and not pr.extra[0] > 0:
            raise ValueError(f"{what}: {self._extra_name} must be positive; got {pr.extra[0]}")
        return np.concatenate([pr.theta, pr.fe_params, np.log(pr.extra)])

    def loglike(self, params, nagq=1):
        """Laplace (``nagq = 1``) or adaptive Gauss-Hermite log-likelihood.

        Parameters
        ----------
        params : MixedParams or array_like
            ``results.params_object``, or the vector ``(beta, theta[, alpha])``
            in the order of :attr:`param_names`.
        nagq : int
            Quadrature points per random effect (1: Laplace).
        """
        nagq = lp.check_nagq(nagq)
        lp.check_agq(self.re_design, nagq)
        dev = self.deviance()
        # the modes as tight as the fit's final evaluation, so that llf round-trips
        return dev.loglike(self._internal(params), nagq=nagq, tol=1e-20) + dev.cond.loglik_const

    def score(self, params):
        """Gradient of the Laplace :meth:`loglike` in ``(beta, theta[, alpha])`` (exact)."""
        x = self._internal(params)
        _, g, _ = self.deviance().loglike_and_score(x)
        nt, p = self.re_design.ntheta, self.k_fe
        out = np.concatenate([g[nt:nt + p], g[:nt]])
        if self.k_extra:                      # d/d alpha = d/d log alpha / alpha
            out = np.append(out, g[nt + p:] / np.exp(x[nt + p:]))
        return out

    def _start_extra(self, modes):
        if is_scale_family(self.family):
            return _scale.start_log_scale(self, modes)
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
        if (isinstance(self.family, families.Poisson) or is_scale_family(self.family)) and \
                link in ("identity", "inversepower", "inversesquared"):
            return (f". With the {link} link the mean must stay positive (not guaranteed for "
                    "every eta); the log link avoids this")
        return ""

    def _start_mu(self):
        """glm's ``mustart``: the response moved off the boundary of the mean's range."""
        y, w = self.endog, self.weights
        if isinstance(self.family, families.Binomial):
            return (w * y + 0.5) / (w + 1.0)
        if is_scale_family(self.family):           # positive responses: glm's mustart = y
            return y.copy()
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
        start_params : MixedParams or array_like, optional
            ``(beta, theta[, alpha])`` to start from (the order of
            :attr:`param_names`, as :meth:`loglike` takes them).
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
        reject_robust_cov(kwargs, "GLMM")
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
            if start_params is not None:
                start_params = self._internal(start_params, "start_params")
            res = fit_glmm(self, self.deviance(), nagq, start_params, maxiter, tol, stage1)
        if disp:
            print(f"log-likelihood {res.llf:.6f} ({'Laplace' if nagq == 1 else f'AGQ, {nagq} nodes'}): "
                  f"{res.optim.message} (tried {res.optim.tried})")
        return res

    def _warn_separation(self, beta):
        """Warn when the fixed effects run off to infinity: (quasi-)separated binary data, or
        count data that are all zero where a fixed-effects direction points.

        Checked only when the fixed part of the linear predictor is large (``|X beta| > 10``,
        as such fits end up: the optimizer stops once ``exp(-|eta|)`` is negligible); the
        linear program (:func:`mlmext.laplace.separation_direction`) then decides.
        """
        if not self.k_fe or is_scale_family(self.family):
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
        if isinstance(self.family, families.NegativeBinomial) or \
                self._link_label in _INCREASING_LINKS:       # d mu / d eta >= 0 everywhere
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
