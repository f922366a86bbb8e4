"""Zero-inflated and hurdle Poisson / NB2 / NB1 mixed models (glmmTMB's ``ziformula``).

:class:`ZeroInflatedMixedModel` is made by ``glmer(..., ziformula=...)`` (Poisson counts)
and ``glmer_nb(..., ziformula=...)`` (NB2; NB1 with ``variance="nb1"``), with ``hurdle=True``
for glmmTMB's ``truncated_poisson`` / ``truncated_nbinom2`` / ``truncated_nbinom1``.  The
random effects are in the count part; the zero-inflation coefficients (and NB2's
``log alpha`` or NB1's ``log phi``) are the conditional model's own
parameters (:class:`~mlmext.glmm.zeroinfl.ZeroInflatedConditional`), estimated jointly with
theta and beta on the Laplace log-likelihood, as glmmTMB does.  Results:
:class:`~mlmext.glmm.ziresults.ZeroInflatedResults`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special
from statsmodels.genmod import families

from .. import laplace as lp
from .._args import check_flag
from .._frames import as_dataframe, categoricals_as_values
from ..frame import display_name, evaluate, formula_manager
from ..objective import MixedParams
from .deviance import LaplaceDeviance
from .model import GeneralizedLinearMixedModel
from .nb1 import NB1Family
from .response import NBFamily
from .zeroinfl import ZeroInflatedConditional
from .ziresults import ZeroInflatedResults

__all__ = ["ZeroInflatedMixedModel"]


class _ZiSource:
    """The zero-inflation formula with the data it is evaluated on (from_formula -> __init__)."""

    def __init__(self, formula, data):
        self.formula, self.data = formula, data

    def __repr__(self):
        return repr(self.formula)


def _check_ziformula(ziformula):
    if not isinstance(ziformula, str):
        raise TypeError(f"ziformula must be a one-sided formula string such as '~ x'; got "
                        f"{ziformula!r}")
    zf = ziformula.strip()
    if "~" not in zf:
        zf = "~ " + zf
    lhs, rhs = zf.split("~", 1)
    if lhs.strip():
        raise ValueError(f"ziformula={ziformula!r} must be one-sided ('~ x'): the response is the "
                         "model formula's")
    if "|" in rhs:
        raise NotImplementedError(f"random effects in the zero-inflation formula ({ziformula!r}) "
                                  "are not implemented: the random effects go in the count "
                                  "model; use fixed effects in ziformula")
    if rhs.strip() in ("0", "-1", "0 + 0"):
        raise ValueError(f"ziformula={ziformula!r} has no terms (glmmTMB's default of no zero "
                         "inflation): leave ziformula out for a model without zero inflation")
    return "~ " + rhs.strip()


class _ZiDeviance(LaplaceDeviance):
    """The Laplace deviance of a zero-inflated model.

    The observed information of the zeros may be negative for single observations: the modes
    and lme4's first stage (beta inside PIRLS) use the engine's scalar path for one scalar
    term and its dense path otherwise (both take that; the first stage's dense path needs
    ``nre + p`` within ``MAX_DENSE_RE``); the RX covariance (and the first stage where those
    paths do not apply) use the blocked factorization with the positive weights of
    :meth:`ZeroInflatedConditional.fisher_weights` instead.
    """

    def __init__(self, model):
        super().__init__(model)
        self.pirls_options = {"scalar_fast": True, "dense": True}

    def _positive(self, fun, *args):
        cond = self.cond
        saved = cond.derivatives, cond.loglik_derivs
        cond.derivatives = lambda eta: (saved[0](eta)[0], cond.fisher_weights(eta))
        cond.loglik_derivs = lambda eta: (cond.loglik_obs(eta),) + cond.derivatives(eta)
        try:
            return fun(*args)
        finally:
            del cond.derivatives, cond.loglik_derivs

    def stage1(self, theta, beta, u=None):
        """lme4's first stage with Newton steps in ``(u, beta)``: the engine's scalar path (one
        scalar term, per-level sums) or its dense path (up to ``MAX_DENSE_RE``), which take
        the negative observed information.  With the Fisher weights of the blocked path (its
        factorization needs positive weights) PIRLS converges only linearly, at a rate near 1
        where the penalized Hessian is small in one direction (grouseticks' zero-inflated and
        hurdle Poisson: no convergence in 100 iterations); that path is left for the cases
        the others do not take or where they fail."""
        des, m = self.design, self.model
        dense = des.nre + self.p <= lp.MAX_DENSE_RE
        scalar = lp.is_scalar_design(des)
        if dense or scalar:
            kw = dict(X=m.exog, tol=self.stage1_tol, scalar_fast=True, dense=dense)
            chol = lambda: self.chol_x              # noqa: E731 (the blocked path's, if reached)
            modes = lp.pirls(des, chol, m.offset, self.cond, theta, u0=u, beta0=beta, **kw)
            if not modes.converged and u is not None:
                modes = lp.pirls(des, chol, m.offset, self.cond, theta, **kw)
            if modes.converged:
                return -2.0 * modes.laplace, modes
            value, fb = self._positive(super().stage1, theta, beta, u)
            if not fb.converged:                     # the message says what was tried
                fb.message = (f"with Newton steps: {modes.message}; with Fisher weights: "
                              f"{fb.message}")
            return value, fb
        return self._positive(super().stage1, theta, beta, u)

    def cov_rx(self, theta, modes, lams):
        return self._positive(super().cov_rx, theta, modes, lams)


class ZeroInflatedMixedModel(GeneralizedLinearMixedModel):
    """Zero-inflated or hurdle Poisson / NB2 / NB1 mixed model (glmmTMB's ``ziformula``).

    Usually created with :func:`mlmext.formula.api.glmer` (Poisson) or
    :func:`~mlmext.formula.api.glmer_nb` (NB2, or NB1 with ``variance="nb1"``) and
    ``ziformula=``.

    Zero-inflated: ``y = 0`` with probability ``pi``, else ``y ~ Poisson(mu)``,
    ``NB2(mu, alpha)`` or ``NB1(mu, phi)``; hurdle (``hurdle=True``): ``P(y = 0) = pi`` and
    the positive counts follow the zero-truncated distribution.  ``log mu = X beta + Z b + offset`` (the random
    effects are in the count part), ``logit pi = X_zi gamma``.

    Parameters
    ----------
    endog, exog, re_design, offset
        As :class:`GeneralizedLinearMixedModel`; ``endog`` non-negative integer counts.
    family : statsmodels family
        ``Poisson()`` (log link), or the NB2 / NB1 family of ``glmer_nb``.
    exog_zi : array_like, optional
        Design of the zero-inflation model (with the array interface).
    ziformula : str, optional
        One-sided formula of the zero-inflation model (``"~ x"``, ``"~ 1"``), fixed effects
        only; with :meth:`from_formula`.
    hurdle : bool
        Hurdle model instead of zero inflation.

    Notes
    -----
    Laplace approximation with the observed information (glmmTMB's exact Laplace), or
    adaptive Gauss-Hermite quadrature (``fit(nagq=...)``, one grouping factor); the
    conditional modes level by level for one scalar random-effects term, else with a dense
    system (up to ``mlmext.laplace.MAX_DENSE_RE`` random effects); standard errors of all
    coefficients from the inverse Hessian in every parameter (glmmTMB's ``sdreport``).
    """

    _api_name = "glmer"
    information = "observed"

    def __init__(self, endog, exog, re_design, family=None, weights=None, offset=None,
                 exog_zi=None, ziformula=None, hurdle=False, **kwargs):
        check_flag("hurdle", hurdle)
        self.hurdle = bool(hurdle)
        info = kwargs.get("formula_info") or {}
        names = None
        self._zi_source = None
        if isinstance(ziformula, _ZiSource):
            if exog_zi is not None:
                raise TypeError("give the zero-inflation model as ziformula= or exog_zi=, not both")
            exog_zi, names = self._zi_from_formula(ziformula, info)
            self._zi_source = ziformula
        elif ziformula is not None:
            raise TypeError("ziformula= needs the data: use glmer(..., ziformula=...) or "
                            "ZeroInflatedMixedModel.from_formula; with arrays give exog_zi=")
        if exog_zi is None:
            raise ValueError("a zero-inflated / hurdle model needs its zero-inflation model: "
                             "ziformula='~ 1' (a constant probability) or '~ x'")
        if isinstance(exog_zi, pd.DataFrame):
            names = names or [str(c) for c in exog_zi.columns]
        Xzi = np.asarray(exog_zi, dtype=float)
        if Xzi.ndim == 1:
            Xzi = Xzi[:, None]
        if not np.all(np.isfinite(Xzi)):
            raise ValueError("exog_zi (the zero-inflation design) has non-finite values")
        if np.linalg.matrix_rank(Xzi) < Xzi.shape[1]:
            raise ValueError(f"the zero-inflation design (columns {names}) is rank deficient")
        self.exog_zi = Xzi
        self.exog_zi_names = names or [f"zi{j}" for j in range(Xzi.shape[1])]
        super().__init__(endog, exog, re_design, family=family, weights=weights, offset=offset,
                         **kwargs)
        if Xzi.shape[0] != self.endog.shape[0]:
            raise ValueError(f"exog_zi has {Xzi.shape[0]} rows for {self.endog.shape[0]} "
                             "observations")
        self._init_keys = list(self._init_keys) + ["exog_zi", "hurdle"]
        nre = self.re_design.nre
        if nre > lp.MAX_DENSE_RE and not (len(self.re_design.blocks) == 1 and
                                         self.re_design.blocks[0].q == 1):
            raise NotImplementedError(
                f"zero-inflated and hurdle models with {nre} random effects: beyond one scalar "
                f"term ((1 | g)) the conditional modes use a dense system, implemented up to "
                f"{lp.MAX_DENSE_RE} random effects (the observed information of the zeros can "
                "be negative for single observations, which the sparse factorization does not "
                "take)")

    # -- the zero-inflation design
    @classmethod
    def from_formula(cls, formula, data, ziformula=None, hurdle=False, subset=None,
                     weights=None, offset=None, missing="drop", eval_env=0, **kwargs):
        """The model from an lme4-style formula and a one-sided ``ziformula``."""
        if ziformula is None:
            raise ValueError("ziformula is required (e.g. ziformula='~ 1' or '~ x')")
        zf = _check_ziformula(ziformula)
        df = as_dataframe(data)
        labels = None
        if not df.index.is_unique:       # rows are matched by label: positions, then the labels
            labels, df = df.index, df.reset_index(drop=True)
        mod = super().from_formula(formula, df, subset=subset, weights=weights, offset=offset,
                                   missing=missing, eval_env=eval_env + 1,
                                   ziformula=_ZiSource(zf, df), hurdle=hurdle, **kwargs)
        if labels is not None:
            info = mod.formula_info
            info["row_labels"] = labels[np.asarray(info["row_labels"], dtype=np.int64)]
        return mod

    def _zi_from_formula(self, src, info):
        rows = info.get("row_labels")
        d = src.data if rows is None else src.data.loc[rows]
        mgr = formula_manager()
        M = evaluate(mgr, src.formula, d, info.get("eval_env") or {}, "the ziformula")
        if len(M) != len(d):
            raise ValueError(f"the ziformula {src.formula!r} has missing values in "
                             f"{len(d) - len(M)} of the rows the count model uses; drop them "
                             "from the data first")
        self._zi_spec = mgr.get_model_spec(M)
        self._zi_frame = d
        return M.to_numpy(dtype=float), [display_name(c) for c in M.columns]

    def _new_exog_zi(self, data):
        """The zero-inflation design for new data (NaN rows where a value is missing)."""
        if self._zi_source is None:
            raise ValueError("this model was built from arrays: new data have no zero-inflation "
                             "design; predict on the fitted rows")
        if self.__dict__.get("_zi_spec") is None:          # after unpickling
            self._zi_from_formula(_ZiSource(self._zi_source.formula, self._zi_frame),
                                  {"eval_env": self.formula_info.get("eval_env")})
        d = as_dataframe(data, "new data").reset_index(drop=True)
        M = evaluate(formula_manager(), self._zi_spec, categoricals_as_values(d),
                     self.formula_info.get("eval_env") or {},
                     "the ziformula (new data)")
        M.columns = [display_name(c) for c in M.columns]
        return M.reindex(index=range(len(d)), columns=self.exog_zi_names).to_numpy(dtype=float)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_zi_spec", None)
        src = state.get("_zi_source")
        if src is not None:                       # the full data are not needed any more
            state["_zi_source"] = _ZiSource(src.formula, None)
        return state

    # -- family and response
    def _resolve_family(self, family):
        if isinstance(family, NBFamily):             # glmer_nb's (or a rebuilt model's)
            return NBFamily()
        if isinstance(family, NB1Family):            # glmer_nb(variance="nb1")'s
            return NB1Family()
        if isinstance(family, families.NegativeBinomial) or (
                isinstance(family, type) and issubclass(family, families.NegativeBinomial)):
            raise ValueError("for a zero-inflated / hurdle negative binomial use glmer_nb(..., "
                             "ziformula=...) (alpha is estimated with the other parameters), not "
                             "glmer with family=NegativeBinomial()")
        family = super()._resolve_family(family if family is not None else families.Poisson())
        if not isinstance(family, families.Poisson):
            raise NotImplementedError(
                f"zero inflation / hurdle with the {type(family).__name__} family is not "
                "implemented: glmer(..., family=Poisson(), ziformula=...) or glmer_nb(..., "
                "ziformula=...)")
        if type(family.link).__name__ != "Log":
            raise NotImplementedError("zero-inflated and hurdle Poisson models use the log link "
                                      f"(got {type(family.link).__name__})")
        return family

    @property
    def _nb(self):
        """NB2 counts (``alpha``)."""
        return isinstance(self.family, families.NegativeBinomial)

    @property
    def _nb1(self):
        """NB1 counts (``phi``)."""
        return isinstance(self.family, NB1Family)

    @property
    def _disp_name(self):
        """The count distribution's dispersion parameter: ``"alpha"``, ``"phi"`` or None."""
        return "alpha" if self._nb else "phi" if self._nb1 else None

    @property
    def _family_label(self):
        kind = "hurdle" if self.hurdle else "zero-inflated"
        what = "negative binomial" if self._nb else "NB1" if self._nb1 else "Poisson"
        return f"{kind} {what}"

    def _check_response(self):
        y, name = self.endog, self._response_name()
        if self.response_kind in ("cbind", "factor"):
            raise ValueError(f"the response {name!r} must be counts for the {self._family_label} "
                             "model")
        if not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y != np.round(y)):
            bad = y[~(np.isfinite(y) & (y >= 0) & (y == np.round(y)))]
            raise ValueError(f"the response {name!r} must be non-negative integer counts for the "
                             f"{self._family_label} model; it has {bad.size} other value"
                             f"{'s' if bad.size > 1 else ''} (e.g. {bad[0]:g})")
        if np.any(self.weights != 1.0):
            raise NotImplementedError("prior weights in zero-inflated / hurdle models are not "
                                      "implemented; fit without weights=")
        nz = int(np.sum(y == 0))
        if nz == 0 or nz == y.size:
            raise ValueError(f"the response {name!r} has {'no' if nz == 0 else 'only'} zeros: the "
                             f"zero-inflation coefficients of the {self._family_label} model have "
                             "no finite estimates")

    def _make_conditional(self):
        return ZeroInflatedConditional(self.endog, self.exog_zi, nb=self._nb, hurdle=self.hurdle,
                                       nb1=self._nb1)

    def deviance(self):
        """A fresh Laplace deviance (the engine's scalar or dense path, see :class:`_ZiDeviance`)."""
        return _ZiDeviance(self)

    # -- parameters: (beta, theta, gamma[, alpha or phi])
    @property
    def param_names(self):
        return (list(self.exog_names) + self.re_design.theta_names()
                + [f"zi_{n}" for n in self.exog_zi_names]
                + ([self._disp_name] if self._disp_name else []))

    @property
    def _extra_name(self):
        return self._disp_name or "zi"

    def _internal(self, params, what="params"):
        pr = MixedParams.from_packed(params, self.k_fe, self.re_design.ntheta, self.k_extra,
                                     names=self.param_names, what=what)
        ex = np.asarray(pr.extra, dtype=float).copy()
        if self._disp_name:
            if not ex[-1] > 0:
                raise ValueError(f"{what}: {self._disp_name} must be positive; got {ex[-1]}")
            ex[-1] = np.log(ex[-1])
        return np.concatenate([pr.theta, pr.fe_params, ex])

    def score(self, params):
        """Gradient of the Laplace :meth:`loglike` in ``(beta, theta, gamma[, alpha or phi])``."""
        x = self._internal(params)
        _, g, _ = self.deviance().loglike_and_score(x)
        nt, p = self.re_design.ntheta, self.k_fe
        ge = g[nt + p:].copy()
        if self._disp_name:
            ge[-1] /= np.exp(x[-1])
        return np.concatenate([g[nt:nt + p], g[:nt], ge])

    def _bounds_extra(self):
        return [(None, None)] * self.exog_zi.shape[1] + ([(-25.0, 10.0)] if self._disp_name else [])

    def _start_extra(self, modes):
        """gamma: hurdle -- the logistic regression of ``y == 0`` (its estimate); zero-inflated --
        a constant probability from the excess zeros.  log alpha: a moment estimate."""
        y, X = self.endog, self.exog_zi
        zero = (y == 0).astype(float)
        if self.hurdle:
            gamma = np.linalg.lstsq(X, np.full(y.size, special.logit(zero.mean())), rcond=None)[0]
            for _ in range(25):                       # Newton on the logistic log-likelihood
                pi = special.expit(X @ gamma)
                H = X.T @ (X * (pi * (1 - pi))[:, None])
                step = np.linalg.solve(H + 1e-10 * np.eye(X.shape[1]), X.T @ (zero - pi))
                gamma = gamma + step
                if np.max(np.abs(step)) < 1e-10:
                    break
        else:
            mu = np.exp(modes.eta) if modes is not None else np.full(y.size, max(y.mean(), 0.1))
            excess = zero.mean() - np.mean(np.exp(-mu))
            pi0 = min(max(excess, 0.05), 0.9)
            gamma = np.linalg.lstsq(X, np.full(y.size, special.logit(pi0)), rcond=None)[0]
        if not self._disp_name:
            return gamma
        if modes is None:
            la = 0.0
        else:
            mu = np.exp(modes.eta)
            pos = y > 0
            # Var - mu = alpha mu^2 (NB2), phi mu (NB1)
            den = mu[pos] ** 2 if self._nb else mu[pos]
            a = np.sum((y[pos] - mu[pos]) ** 2 - y[pos]) / max(np.sum(den), 1e-12)
            la = float(np.log(min(max(a, 1e-2), 1e2)))
        return np.concatenate([gamma, [la]])

    def _result_extras(self, extra, H, tr):
        """What the results keep of the estimated extra parameters: the zero-inflation
        coefficients, alpha, and their covariance from the inverse Hessian in all parameters."""
        k = self.exog_zi.shape[1]
        out = {"_zi_params": np.asarray(extra[:k], dtype=float).copy()}
        if self._disp_name:                 # alpha (NB2) or phi (NB1)
            out["_alpha"] = float(np.exp(extra[k]))
        cov = np.full((len(extra), len(extra)), np.nan)
        if H is not None and np.all(np.isfinite(H)):
            try:
                Hi = np.linalg.inv(H)
                j = tr.nt + tr.p
                cov = Hi[j:, j:] + Hi[j:, j:].T        # deviance Hessian: 2 H^-1, symmetrized
            except np.linalg.LinAlgError:
                pass
        out["_cov_extra"] = cov
        return out

    _results_class = ZeroInflatedResults

    def fit(self, nagq=1, **kwargs):
        """Laplace fit (glmmTMB's), or adaptive Gauss-Hermite quadrature with ``nagq > 1``;
        arguments as :meth:`GeneralizedLinearMixedModel.fit`.

        AGQ needs a single grouping factor (at most three random effects per level); it is
        centred and scaled at the conditional modes and the observed information of the
        Laplace fit (positive definite per level there, though single zeros' may be
        negative).  glmmTMB fits these models by the Laplace approximation only."""
        return super().fit(nagq=nagq, **kwargs)
