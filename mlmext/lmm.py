"""Linear mixed models fitted by (RE)ML on the profiled objective (lme4's ``lmer``)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.linalg import lapack
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from ._blas import fit_threads
from ._args import reject_unknown
from .base import MixedModel
from .frame import display_name
from .identifiability import clearly_not_fit_exactly
from .inference.ddf_default import check_fit_ddf
from .inference.robust import check_cov_args
from .linalg import BlockedCholesky
from .linalg.small import SmallDenseFactor, small_dense_fits
from .linalg.small_levels import OneBlockLevels
from .objective import LMMDeviance, MixedParams
from .objective.start import block_alone_cross, fit_block_alone, one_block_criterion
from .optimize import OptSummary, jacobian, minimize_theta
from .results import LMMResults, MixedResultsWrapper
from ._batch_results import lazy_results, lazy_results_many

__all__ = ["LinearMixedModel"]

_LOG2PI = np.log(2.0 * np.pi)
_geqrf = lapack.dgeqrf


def _frozen(a):
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def _canonical(des):
    """``des.canonical_theta`` that hands back theta itself where no template diagonal is
    negative (canonical_theta would return an equal copy): every fit maps its end point, and
    checking the diagonals in Python floats costs a fraction of building the templates'
    positions; the optimizer then sees at once that the point was not mirrored."""
    diag = [i for i, lo in enumerate(des.lower.tolist()) if math.isfinite(lo)]

    def reflect(theta):
        t = theta.tolist() if isinstance(theta, np.ndarray) and theta.dtype == float else None
        if t is not None and not any(t[i] < 0 for i in diag):
            return theta
        return des.canonical_theta(theta)
    return reflect


_sum, _max, _min = np.add.reduce, np.maximum.reduce, np.minimum.reduce


def _all_ones(w):
    """``np.all(w == 1.0)``, read off the one number a broadcast array stores (zero stride:
    ``constant_rows``' unit weights of a model without weights)."""
    if w.ndim == 1 and w.size and w.strides[0] == 0:
        return float(w[0]) == 1.0
    return bool(np.all(w == 1.0))


def _check_reml(reml):
    if not isinstance(reml, (bool, np.bool_)):
        raise ValueError(f"reml must be True (REML) or False (ML); got {reml!r}")


#: a dense part of at least this many rows makes an evaluation costly (a factorization and its
#: inverse of O(rows^3)): the fit starts from each grouping factor's fit alone and counts gradients
COSTLY_DENSE_ROWS = 200


class LinearMixedModel(MixedModel):
    """Linear mixed model ``y = X beta + Z b + e``, ``b ~ N(0, sigma^2 Lambda Lambda')``.

    Usually created with :func:`mlmext.formula.api.lmer`.

    The profiled deviance is evaluated from the blocked Cholesky factor of
    ``[Z Lambda, X, y]' W [Z Lambda, X, y] + I`` (:class:`mlmext.linalg.BlockedCholesky`):
    after the cross-products are formed once, an evaluation costs nothing of order n.
    """

    _api_name = "lmer"
    _results_class = LMMResults
    _init_hints = {
        "family": "lmer fits a Gaussian linear mixed model; use glmer(..., family=...) for "
                  "binomial or Poisson responses, glmer_nb for negative binomial counts",
        "link": "lmer fits a Gaussian linear mixed model with the identity link",
    }

    def __init__(self, endog, exog, re_design, weights=None, offset=None, **kwargs):
        super().__init__(endog, exog, re_design, weights=weights, offset=offset, **kwargs)
        y = np.asarray(self.endog, dtype=float) - self.offset
        self._XY = np.column_stack([self.exog, y])
        w = self.weights
        unit = _all_ones(w)
        self._check_response(y, self._XY, unit)
        self._chol = None
        self._logw = 0.0 if unit else np.log(w[w > 0]).sum()

    def _check_response(self, y, xy=None, unit=None):
        """A response the fixed effects fit exactly leaves no residual variance to estimate.
        ``xy``: ``[exog y]`` when the caller has it (the QR below factors a copy of it);
        ``unit``: whether every weight is 1, when the caller knows."""
        name = lambda: display_name(self.endog_names)        # noqa: E731 (for messages only)
        # (the reductions without the ndarray methods' Python wrappers: every build runs this)
        if not math.isfinite(_sum(y)) and not np.all(np.isfinite(y)):
            raise ValueError(f"the response {name()!r} has non-finite values")
        w = self.weights
        if unit is None:
            unit = _all_ones(w)              # the usual case: no weighted copies
        pos = None if unit else w > 0
        n, p = len(y) if unit else int(pos.sum()), self.exog.shape[1]
        if n <= p:
            raise ValueError(f"{n} observations for {p} fixed effects: a linear mixed model needs "
                             "more observations than fixed effects")
        every = n == len(y)                  # all weights positive: no copies of the rows
        yp = y if every else y[pos]
        if _max(yp) == _min(yp):
            raise ValueError(f"the response {name()!r} is constant ({yp[0]:g}); there is nothing "
                             "to model")
        if unit:
            Xw, yw = self.exog, yp
            xy = np.column_stack([Xw, yw]) if xy is None else xy
        else:
            sw = np.sqrt(w if every else w[pos])
            Xw, yw = (self.exog if every else self.exog[pos]) * sw[:, None], yp * sw
            xy = np.column_stack([Xw, yw])
        if clearly_not_fit_exactly(xy):
            return                           # (the usual case: no QR decomposition)
        # the residual sum of squares of the least-squares fit: the last diagonal entry of
        # the R of [Xw yw]'s QR decomposition, squared (LAPACK's QR: a sixth of lstsq's cost);
        # only where Xw has full rank (rows of zero weight left out can make it deficient,
        # and then R[p, p] misses part of the residual): else lstsq's
        R, _, _, info = _geqrf(xy)
        d = np.abs(R.diagonal()[:p])
        if info == 0 and (p == 0 or _min(d) > 1e-10 * _max(d)):
            rss = float(R[p, p]) ** 2
        else:
            coef = np.linalg.lstsq(Xw, yw, rcond=None)[0]
            rss = float(np.sum((yw - Xw @ coef) ** 2))
        if rss <= 1e-20 * max(float(yw @ yw), 1e-300):
            raise ValueError(f"the fixed effects fit the response {name()!r} exactly (residual sum "
                             "of squares 0); a mixed model needs residual variation")

    #: :meth:`_with_response` gives this model with a new response (refits, simulations)
    _response_refit = True

    def _with_response(self, endog, checked=False, factor=True):
        """This model with another response on the same rows (lme4's ``refit`` of a new
        response): the formula, the designs, weights and offset are those of this model, and
        nothing the response does not enter is computed again (no formula evaluation, no
        design checks; the small-system cross-products other than the response's are shared).

        ``endog`` has one finite value per row of the model (the caller checks its shape).
        ``checked``: the caller has run :meth:`_check_response` on it (batched refits check
        all responses at once); ``factor=False`` leaves the small-system storage to be built
        on first use (a batched refit's results read none of it unless asked).
        """
        y = np.asarray(endog, dtype=float)
        if y.shape != self.endog.shape:
            raise ValueError(f"endog has shape {y.shape}; the model's response has shape "
                             f"{self.endog.shape}")
        # a shallow copy of the attributes (copy.copy would go through __getstate__, which
        # prepares a pickle: 30 us, and __setstate__ resets the shared design's specs)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for k in self._unpickled_caches:               # caches of the old response's numbers
            new.__dict__.pop(k, None)
        new.formula_info = dict(self.formula_info)       # remove_data() of one leaves the other
        data = object.__new__(type(self.data))          # (as the model: no pickle round)
        data.__dict__.update(self.data.__dict__)
        data._cache = {}
        data.endog = y
        old = getattr(self.data, "orig_endog", None)
        data.orig_endog = pd.Series(y, index=old.index, name=old.name) \
            if isinstance(old, pd.Series) else y
        new.data, new.endog = data, y
        yo = y - self.offset
        if not checked:
            new._check_response(yo)
        XY = self._XY.copy()
        XY[:, -1] = yo
        new._XY = XY
        sf = self.__dict__.get("_small")
        if factor and sf is not None and sf is not False:
            new._small = sf.with_response(yo)
        elif small_dense_fits(self.re_design.blocks, self.k_fe):
            new._small_parent = self          # (_small_factor: this one's storage, new response)
        lv = self.__dict__.get("_levels")
        if factor and lv is not None and lv is not False:
            new._levels = lv.with_response(yo)
        xp = self.__dict__.get("_xprod")
        if factor and xp is not None and hasattr(xp, "with_response"):
            # the large storage: the response's cross-products alone (the Schur product's
            # pairs, most of the set-up, are the design's)
            xn = xp.with_response(XY, self.weights)
            if xn is not None:
                new._xprod = xn
        return new

    def _results_from_state(self, state, optim, ddf="satterthwaite"):
        """The results of this model at ``state`` (an :class:`~mlmext.objective.LMMState`)
        found by ``optim``, as :meth:`fit` returns them (batched refits)."""
        return MixedResultsWrapper(self._results_class(self, state, optim=optim, ddf=ddf))

    def _lazy_results(self, endog, state, optim, ddf="satterthwaite"):
        """:meth:`_results_from_state` of this model with the response ``endog`` (checked),
        that model made on first use (batched refits; :mod:`mlmext._batch_results`)."""
        return lazy_results(self, endog, state, optim, ddf)

    def _lazy_results_many(self, endogs, fields, optims, ddf="satterthwaite", cache=None):
        """:meth:`_lazy_results` of each response in ``endogs`` with its state's stacked
        ``fields`` and optimizer summary's maker ``optims`` (the constructors' per-model work
        once, kept in ``cache`` for the next call; state and summary made on first read:
        :func:`~mlmext._batch_results.lazy_results_many`)."""
        return lazy_results_many(self, endogs, fields, optims, ddf, cache)

    def _cross_products(self):
        """The factorization set up with the model's cross-products, never updated itself:
        each deviance takes its own :meth:`~mlmext.linalg.BlockedCholesky.workspace` of it."""
        xp = self.__dict__.get("_xprod")
        if xp is None:        # two threads may both build it: same value, either one is kept
            xp = self._xprod = BlockedCholesky(self.re_design.blocks, self._XY, self.weights)
        return xp

    def _has_prior_weights(self):
        return not np.allclose(self.weights, 1.0)

    def _block_alone_cross(self, blk):
        return block_alone_cross(blk, self._XY, self.weights)

    #: dense small-system factor (None: the model is too large for it) and the level-by-level
    #: evaluator of a one-block small system; rebuilt after unpickling
    _unpickled_caches = MixedModel._unpickled_caches + ("_small", "_levels", "_small_parent")

    def _small_levels(self):
        """The level-by-level cross-products (:class:`~mlmext.linalg.small_levels.OneBlockLevels`)
        of a small system with one grouping factor, else None: the fit's criterion and its
        exact derivatives from them cost a fraction of the dense factor's.  Built once."""
        lv = self.__dict__.get("_levels", False)
        if lv is False:       # two threads may both build it: same value, either one is kept
            des = self.re_design
            lv = None
            if len(des.blocks) == 1 and small_dense_fits(des.blocks, self.k_fe):
                lv = OneBlockLevels.from_rows(des.blocks[0], self._XY, self.weights, des.ntheta)
            self._levels = lv
        return lv

    def _small_factor(self):
        """The cross-products in one dense matrix (:class:`~mlmext.linalg.small.SmallDenseFactor`)
        when the whole system is small, else None: there one dense factorization per
        evaluation is several times cheaper than the structured storage.  Built once, never
        updated itself (each deviance takes a workspace of it)."""
        sf = self.__dict__.get("_small", False)
        if sf is False:       # two threads may both build it: same value, either one is kept
            sf = None
            if small_dense_fits(self.re_design.blocks, self.k_fe):
                # a model made by _with_response shares its parent's cross-products but the
                # response's (Satterthwaite df of simulated fits: no rebuild per simulation)
                parent = self.__dict__.get("_small_parent")
                psf = parent._small_factor() if parent is not None else None
                sf = SmallDenseFactor(self.re_design.blocks, self._XY, self.weights) \
                    if psf is None else psf.with_response(self._XY[:, -1])
            self._small = sf
        return sf

    def deviance(self, reml=True):
        """The profiled REML criterion (or -2 log-likelihood) as a function of theta.

        Returns a fresh :class:`~mlmext.objective.LMMDeviance` with its own factor:
        ``value(theta)``, ``value_and_grad(theta)``, ``at(theta)`` (the fit state),
        and the deviance with sigma or a fixed effect held fixed.
        """
        _check_reml(reml)          # bool("ML") would silently mean REML
        return LMMDeviance(self, reml=reml)

    def deviance_profiled(self, theta, reml=True):
        """-2 log-likelihood (or REML criterion) profiled over beta and sigma, at theta.

        A convenience for one evaluation; for many use :meth:`deviance`.
        """
        return self.deviance(reml).value(theta)

    def deviance_and_gradient(self, theta, reml=True):
        """The profiled deviance and its gradient in theta (see :meth:`LMMDeviance.value_and_grad`)."""
        return self.deviance(reml).value_and_grad(theta)

    @property
    def param_names(self):
        """Names of the full parameter vector ``(beta, theta, sigma)`` that :meth:`loglike` takes."""
        return list(self.exog_names) + self.re_design.theta_names() + ["sigma"]

    def _params(self, params):
        return MixedParams.from_packed(params, self.k_fe, self.re_design.ntheta, 1,
                                       names=self.param_names)

    def loglike(self, params, reml=True):
        """Log-likelihood at the full parameters ``(beta, theta, sigma)``.

        Parameters
        ----------
        params : MixedParams or array_like
            ``results.params_object``, or the packed vector in the order of
            :attr:`param_names`.
        reml : bool
            The restricted log-likelihood (free of beta: the fixed effects are
            integrated out), or the log-likelihood (``reml=False``).
        """
        pr = self._params(params)
        sigma = float(pr.extra[0])
        if not sigma > 0:
            raise ValueError(f"sigma must be positive; got {sigma}")
        return self.deviance(reml).loglike(pr.fe_params, pr.theta, sigma)

    def score(self, params, reml=True):
        """Gradient of :meth:`loglike` in the packed parameters (Richardson-refined differences)."""
        x = self._params(params).get_packed()
        return jacobian(lambda v: np.array([self.loglike(v, reml=reml)]), x)[0]

    def _start_theta(self, reml):
        """Starting theta and a scale for each of its entries.

        lme4's start (1 on diagonals) in the units of the predictors (theta times
        the root mean square of its column of Z), and those units as the scale, for
        one grouping factor or a small dense part.  Otherwise each factor's entries come from a fit of the model with
        that factor alone, and the scale is the square root of that one-factor
        deviance's curvature: the one-factor problems cost O(levels) per
        evaluation, and the start and scaling (the factors' curvatures differ by
        orders of magnitude) cut the joint iterations from ~20 to ~7 on InstEval.
        """
        des = self.re_design
        units = des.theta_units()            # lme4's start and unit steps in the predictors' units
        start = des.theta_start / units
        scale = units.copy()
        if len(des.blocks) < 2 or self._small_factor() is not None or \
                self._cross_products().r < COSTLY_DENSE_ROWS:   # cheap evaluations: lme4's start
            return start, scale
        nu = self.nobs - (self.k_fe if reml else 0)
        for blk in des.blocks:
            crit = one_block_criterion(self._block_alone_cross(blk), nu, reml)
            idx = blk.t_idx

            def dev(th_b, crit=crit, blk=blk, idx=idx):
                th = start.copy()
                th[idx] = th_b
                return crit(blk.lam(th))

            xb = fit_block_alone(dev, start[idx])
            if xb is not None:                           # its equivalent within the bounds
                th = start.copy()
                th[idx] = xb
                xb = des.canonical_theta(th)[idx]
            else:
                xb = minimize_theta(dev, start[idx], des.lower[idx], method="Nelder-Mead",
                                    maxiter=200, tol=1e-3).x
            if not np.all(np.isfinite(xb)):
                continue
            # keep diagonals off the bound: the gradient vanishes there
            x = np.where(np.isfinite(des.lower[idx]), np.maximum(xb, 0.1 / units[idx]), xb)
            start[idx] = x
            f0 = dev(x)
            for k in range(idx.size):                    # curvature along each entry
                h = 1e-3 * max(abs(x[k]), 0.1 / units[idx[k]])
                e = np.zeros(idx.size)
                e[k] = h
                c2 = (dev(x + e) - 2.0 * f0 + dev(x - e)) / h ** 2
                if np.isfinite(c2) and c2 > 0:
                    scale[idx[k]] = np.sqrt(c2)
        return start, scale

    def _warm_scale(self, reml):
        """The optimizer's scale of theta for a start given as ``start_params``: the scale the
        fit this model was made for refitting used (:func:`mlmext.inference.refit` sets it;
        on several grouping factors it comes from each factor's curvature, and the units of
        the predictors alone cost a refit twice the evaluations), else those units."""
        warm = self.__dict__.get("_refit_scale")
        if warm is not None and warm[0] == bool(reml) and warm[1].size == self.re_design.ntheta:
            return warm[1]
        return self.re_design.theta_units()

    def _warm_hessian(self, reml, start_params, scale):
        """The Hessian (the optimizer's scaled theta) of the fit this model refits, when the
        start is that fit's theta in the same scale (:func:`mlmext.inference.refit` sets it)."""
        warm = self.__dict__.get("_refit_hessian")
        if start_params is None or warm is None or warm[0] != bool(reml):
            return None
        theta, s, H = warm[1:]
        if np.shape(start_params) != theta.shape or np.any(np.asarray(start_params) != theta) or \
                s.shape != np.shape(scale) or np.any(s != scale):
            return None
        return H

    def fit(self, reml=True, start_params=None, method="auto", maxiter=2000, tol=1e-9,
            disp=False, cov_type="nonrobust", cov_kwds=None, ddf="satterthwaite", **kwargs):
        """Fit by REML (default) or maximum likelihood.

        Parameters
        ----------
        reml : bool
            Restricted maximum likelihood (lme4's default) or ML.
        start_params : array_like or MixedParams, optional
            Starting theta (lme4's order, see ``theta`` on the results), or a fit's
            ``params_object`` (its theta is read).  On a small system
            (exact Hessian) a start near an optimum (Newton decrement at most 0.5, as the ML
            refit of a REML fit) gets Newton steps first, L-BFGS-B only if they do not reach
            a point passing the checks; other starts go to L-BFGS-B.
        method : str
            ``"auto"``: L-BFGS-B in theta scaled by its predictors' units, then Newton
            with a Hessian from gradient differences (exact on a small system, see
            ``docs/lmm.md``) until the Newton decrement is below
            ``tol``; theta is optimized without bounds (a template column and its negative
            are one model) and mapped back, and saddles are left along negative
            curvature.  Any bounded method of ``scipy.optimize.minimize`` (``"COBYQA"``,
            ``"Nelder-Mead"``, ``"Powell"``, ``"L-BFGS-B"``, ...) runs alone instead.  Either
            way ``converged`` means the second-order checks passed at the end point:
            Newton decrement below 1e-7, Hessian positive definite, no descent across a
            zero standard deviation (see ``docs/lmm.md``, "Reaching the optimum").
        maxiter : int
            Iterations of the optimizer (and of the Newton phase, at most 30).
        tol : float
            ``"auto"``: the Newton decrement to reach (deviance units; at most the checks'
            1e-7); other methods: their own tolerance.
        disp : bool
            Print what the optimizer did (criterion, evaluations, methods tried).
        cov_type : {"nonrobust", "cluster"}
            The covariance of the fixed effects: model-based (lme4's ``vcov``), or
            cluster-robust as R's clubSandwich (see ``get_robustcov_results``).
        cov_kwds : dict, optional
            For ``"cluster"``: ``type`` (``"CR2"`` default, ``"CR0"``, ``"CR1"``,
            ``"CR1p"``, ``"CR1S"``), ``groups`` (default: the outermost grouping factor)
            and ``df`` (``"satterthwaite"`` default, ``"z"``, ``"naive-t"``, ``"naive-tp"``).
        ddf : {"satterthwaite", "kenward-roger", "z"}
            The tests of the fixed effects (model-based covariance): t tests on each
            coefficient's (and contrast's) Satterthwaite df, as lmerTest's ``summary``
            (default); on Kenward-Roger df with its adjusted standard errors (REML fits
            only, as pbkrtest); or z tests.  ``pvalues``, ``conf_int()``, ``t_test``,
            ``wald_test`` and ``summary()`` use it; the df are computed on first use, not
            here.  Cluster-robust results use their own df (``cov_kwds["df"]``).

        Returns
        -------
        LMMResults
        """
        if isinstance(method, str) and method.upper() in ("ML", "REML"):
            raise ValueError(f"method={method!r} names an optimizer here; choose the criterion with "
                             f"reml={method.upper() == 'REML'}")
        reject_unknown(kwargs, "fit()", accepted=["reml", "start_params", "method", "maxiter",
                                                  "tol", "disp", "cov_type", "cov_kwds", "ddf"])
        _check_reml(reml)
        ddf = check_fit_ddf(ddf, reml)                     # before the fit: fail fast
        if ddf == "kenward-roger" and self._has_prior_weights():
            raise NotImplementedError("Kenward-Roger's method is not implemented for models with "
                                      "prior weights; use ddf='satterthwaite'")
        cov_kwds = check_cov_args(cov_type, cov_kwds)     # before the fit: fail fast
        if isinstance(start_params, MixedParams):    # (results.params_object, as GLMMs take)
            start_params = start_params.theta
        if start_params is not None and np.size(start_params) != self.re_design.ntheta:
            raise ValueError(f"start_params needs {self.re_design.ntheta} values (theta: "
                             f"{self.re_design.theta_names()}); got {np.size(start_params)}")
        dev = self.deviance(reml)
        # small systems: the exact Hessian for Newton and the checks (else differences)
        hess = dev.hessian if dev.has_hessian else None
        # a large dense part: gradients counted (exact Hessian entries where the terms allow,
        # L-BFGS-B handing over to Newton early); cheap evaluations keep the plain path
        costly = hess is None and dev.size >= COSTLY_DENSE_ROWS
        # one BLAS thread for a small dense part, the tiniest too: OpenBLAS threads the 40 x 40
        # products of sleepstudy's factor, and with the cores busy its threads' handoffs made
        # that fit 10x slower (22 ms against 2.2 ms) -- the limit costs ~30 us; the tiniest
        # evaluated level by level make no product OpenBLAS threads: the setting is left alone
        with fit_threads(dev.size, dev.cheap_hessian):
            if start_params is None:
                start, scale = self._start_theta(reml)
            else:
                start, scale = np.asarray(start_params, dtype=float), self._warm_scale(reml)
            opt = minimize_theta(dev.value, start, dev.lower, method=method, maxiter=maxiter,
                                 tol=tol, grad=dev.value_and_grad, scale=scale,
                                 reflect=_canonical(self.re_design), hess=hess,
                                 warm=start_params is not None,
                                 warm_hessian=None if start_params is None else
                                 self._warm_hessian(reml, start_params, scale),
                                 newton_first=dev.cheap_hessian,
                                 hess_part=dev.hessian_part if costly else None, costly=costly)
            state = dev.at(opt.x)
        theta, crit = state.theta, state.criterion
        extra = {"scale": _frozen(scale)}            # read-only: refits read them
        if opt.get("hessian") is not None:
            extra["hessian"] = _frozen(opt["hessian"])
        opt = OptSummary.from_result(opt, initial=start, **extra)
        res = self._results_class(self, state, optim=opt, ddf=ddf)
        if disp:
            print(f"{'REML criterion' if reml else '-2 log-likelihood'} {crit:.6f} after "
                  f"{opt.nfev} evaluations: {opt.message} (tried {opt.tried})")
        if not res.converged:
            warnings.warn(f"the optimizer did not converge: {opt.message} (tried {opt.tried}, "
                          f"{opt.nfev} evaluations); the estimates may be unreliable",
                          ConvergenceWarning, stacklevel=2)
        if res.is_singular():
            warnings.warn("boundary (singular) fit: a random-effects covariance is singular "
                          f"(theta = {np.round(theta, 6).tolist()}); see results.is_singular()",
                          ConvergenceWarning, stacklevel=2)
        if cov_type.lower() == "cluster":
            return res.get_robustcov_results("cluster", **cov_kwds)
        return MixedResultsWrapper(res)
