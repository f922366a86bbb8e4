"""GEE iterations that stop by a scale-free rule.

statsmodels' ``GEE.fit`` stops when the norm of the estimating function falls below an
absolute ``ctol``.  That norm carries the units of the response and the covariates: with a
response of about 2e-4 it is below 1e-6 from the first iteration, so the working correlation
is left after one update; with counts in the tens of thousands and calendar years as a
covariate it never gets there, and the fit is reported as not converged although its
estimates no longer move.  geepack's rule (no parameter changed by more than an absolute
epsilon) has the same flaw the other way round.

:class:`ScaleFreeGEE` runs the same iterations (a Fisher-scoring step for the mean, then the
working-correlation update at the new mean, as statsmodels and geepack do) and stops when both
changes are small in units that do not depend on the data's:

- the mean step in standard-error units, ``sqrt(|step' U| / phi)`` -- ``U`` the estimating
  function, ``step = B^-1 U`` the Fisher-scoring step, so ``step' U = step' B step`` and
  ``phi B^-1`` is the naive covariance (``phi`` the Pearson dispersion at the current means):
  the Newton decrement, invariant to rescaling ``y`` or a column of ``X``;
- the change of the working-correlation parameters in the last update, absolute for
  correlations (unitless), relative to the residual variance for statsmodels' ``Nested``
  variance components.
"""
from __future__ import annotations

import copy
import warnings
from collections import defaultdict

import numpy as np
from statsmodels.genmod import cov_struct as sm_cov
from statsmodels.genmod.generalized_estimating_equations import GEE
from statsmodels.tools.sm_exceptions import ConvergenceWarning, IterationLimitWarning

__all__ = ["ScaleFreeGEE", "DEFAULT_TOL"]

#: Default tolerance of the scale-free rule: the last mean step below 1e-8 standard errors and
#: the last change of a correlation below 1e-8.
DEFAULT_TOL = 1e-8


def pearson_dispersion(model):
    """``sum w r**2 / sum w`` over all rows, ``r`` the Pearson residuals at the cached means."""
    mu = np.concatenate([m[0] for m in model.cached_means])
    r2 = (np.concatenate(model.endog_li) - mu) ** 2 / model.family.variance(mu)
    w = np.ones_like(r2) if model.weights is None else np.concatenate(model.weights_li)
    return float(np.dot(w, r2) / w.sum())


def dep_change(cov_struct, old, new):
    """The size of a working-correlation update in units of the parameters' own scale."""
    if old is None or new is None:
        return 0.0
    old, new = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    if old.shape != new.shape:
        return np.inf
    if new.size == 0:
        return 0.0
    delta = float(np.abs(new - old).max())
    if isinstance(cov_struct, sm_cov.Nested):       # variance components: in units of y**2
        return delta / cov_struct.scale if cov_struct.scale > 0 else delta
    # correlations are unitless; other parameters (odds ratios, ...) relative to their size
    return delta / max(1.0, float(np.abs(new).max()))


class ScaleFreeGEE(GEE):
    """
    statsmodels' ``GEE`` whose ``fit`` stops by a rule that does not depend on units.

    Everything but the stopping rule is statsmodels': the model, the starting
    values (a GLM fit), the updates, the covariances and the results class.
    See the module docstring for the rule.
    """

    def fit(self, maxiter=25, ctol=DEFAULT_TOL, start_params=None, params_niter=1, first_dep_update=0,
            cov_type="robust", ddof_scale=None, scaling_factor=1.0, scale=None):
        """
        Fit by alternating mean and working-correlation updates.

        Parameters
        ----------
        maxiter : int
            The largest number of iterations (mean step plus correlation
            update); 25 is geepack's default.
        ctol : float
            Tolerance of the scale-free rule: the fit has converged when the
            last mean step is below ``ctol`` standard errors (its Newton
            decrement) and the last working-correlation update changed no
            correlation by more than ``ctol``.
        start_params, params_niter, first_dep_update, cov_type, ddof_scale, scaling_factor, scale
            As in statsmodels' ``GEE.fit``.

        Returns
        -------
        GEEResults
            statsmodels' results; ``converged`` is the scale-free rule's
            verdict, ``n_iter`` the iterations run, and ``fit_history`` also
            holds ``step_se`` (each mean step in standard errors) and
            ``dep_change`` (the correlation update before it).
        """
        if not ctol > 0:
            raise ValueError(f"ctol must be positive, got {ctol!r}")
        # what statsmodels' fit sets before iterating (the structures' updates read them)
        self.scaletype, self.scaling_factor = scale, scaling_factor
        if ddof_scale is not None and not ddof_scale >= 0:
            raise ValueError("ddof_scale must be a non-negative number or None")
        self.ddof_scale = self.exog.shape[1] if ddof_scale is None else ddof_scale
        if self.weights is not None and cov_type == "naive":
            raise ValueError("when using weights, cov_type may not be naive")
        params = (self._starting_params() if start_params is None
                  else np.array(start_params, dtype=float))
        self.update_cached_means(params)
        history = self._fit_history = defaultdict(list)     # statsmodels' updates add "cov_adjust"
        n_dep_updates, d_dep, converged, n_iter = 0, np.inf, False, 0
        for itr in range(maxiter):
            update, score = self._update_mean_params()
            if update is None:
                warnings.warn("Singular matrix encountered in GEE update", ConvergenceWarning, stacklevel=2)
                break
            n_iter = itr + 1
            phi = pearson_dispersion(self)
            step_se = np.sqrt(abs(float(np.dot(update, score))) / phi) if phi > 0 else 0.0
            params = params + update
            self.update_cached_means(params)
            history["params"].append(params.copy())
            history["score"].append(score)
            history["dep_params"].append(copy.deepcopy(self.cov_struct.dep_params))
            history["step_se"].append(step_se)
            history["dep_change"].append(d_dep if n_dep_updates else np.nan)
            # as statsmodels: the working correlation is updated at least once before stopping
            settled = not self.update_dep or (n_dep_updates > 0 and d_dep < ctol)
            if step_se < ctol and settled:
                converged = True
                break
            if self.update_dep and itr % params_niter == 0 and itr >= first_dep_update:
                old = copy.deepcopy(self.cov_struct.dep_params)
                self._update_assoc(params)
                n_dep_updates += 1
                d_dep = dep_change(self.cov_struct, old, self.cov_struct.dep_params)
        if not converged and n_iter == maxiter:
            warnings.warn("Iteration limit reached prior to convergence", IterationLimitWarning, stacklevel=2)
        # statsmodels builds the results (covariances, scale) at the final estimates: no iteration
        # runs with maxiter=0, and its own verdict is replaced below
        results = super().fit(maxiter=0, start_params=params, params_niter=params_niter,
                              first_dep_update=first_dep_update, cov_type=cov_type, ddof_scale=ddof_scale,
                              scaling_factor=scaling_factor, scale=scale)
        if results is None:
            return None
        inner = results._results
        inner.fit_history = history
        inner.converged = converged
        inner.score_norm = float(np.linalg.norm(history["score"][-1])) if history["score"] else np.nan
        inner.ctol, inner.maxiter, inner.n_iter = ctol, maxiter, n_iter
        inner._props.append("n_iter")
        return results
