"""Generalized linear mixed models (binomial, Poisson) of Dask DataFrames.

A GLMM's Laplace log-likelihood needs the rows at every PIRLS iteration (the weights change
with the modes), so the rows are evaluated once through the template model into their arrays
(level codes, model matrices, response, prior weights, offset: a
:class:`~mlmext.laplace.RowChunk` per partition) and *persisted* on the workers.  The PIRLS
engine of :mod:`mlmext.laplace` then works through :class:`~mlmext.laplace.SummedRows`: each
PIRLS iteration is one map-reduce over the persisted chunks (the log-likelihood at the new
point and the weighted cross-products ``[Z X z]' W [Z X z]`` for the next step, summed in a
tree), each exact gradient one more (the leverages' sums); the factorization, the solves and
the optimizer run on the client, on sums of the size of the random and fixed effects.

Passes (``model.passes``): 2 to build (the levels; the rows into persisted chunks with their
checks and the start's ``X' W X``), then per objective evaluation one per PIRLS iteration
(and step halving) plus one for the gradient.  Canonical links only (logit, log).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
from statsmodels.genmod import families

from .. import laplace as lp
from ..base import caller_namespace
from ..frame import display_name
from ..glmm.conditional import GLMConditional
from ..glmm.deviance import LaplaceDeviance
from ..glmm.model import GeneralizedLinearMixedModel
from ..glmm.results import GLMMResults
from ..linalg import DenseFactor
from ..prediction import re_contribution
from .accumulate import _row_blocks, partition_rows
from .learn import Laps, build_template, check_rows_args, learn, ship, tree_reduce
from .model import DaskLinearMixedModel, RowsNotHeldError, _rows, check_full_rank
from .results import DaskResultsMixin

__all__ = ["DaskGeneralizedLinearMixedModel", "DaskGLMMResults"]


class _ChunkDesign:
    """The blocks of one chunk's rows (what the PIRLS products read of a design)."""

    def __init__(self, blocks, ntheta):
        self.blocks, self.ntheta = blocks, ntheta


def _make_chunk(part, template, state, family):
    """One partition's rows through the template: a RowChunk (persisted) and its checks."""
    XY, w, terms, counts = partition_rows(template, part, state)
    n = XY.shape[0]
    X, y, off = XY[:, :-1], counts["response"], counts["offset"]
    pw = np.ones(n) if w is None else w
    blocks = _row_blocks(template, terms)
    cond = GLMConditional(family, y, pw)
    chunk = lp.RowChunk(_ChunkDesign(blocks, template.re_design.ntheta), X, off, cond)
    chunk.counts = {k: counts[k] for k in ("n_rows", "n_missing", "n_zero")}
    chunk.counts["zsq"] = [np.sum(Z * Z, axis=0) for Z, _ in terms]
    return chunk


def _chunk_summary(chunk, family):
    """The checks of the response and the start's sums (in-memory model's ``_start_beta``)."""
    cond, X, off = chunk.cond, chunk.X, chunk.offset
    y, pw, n = cond.y, cond.pw, chunk.n
    out = dict(chunk.counts, n=n, loglik_const=float(cond.loglik_const),
               loglik_scale=float(cond.loglik_scale),
               ymin=float(y.min()) if n else np.inf, ymax=float(y.max()) if n else -np.inf,
               XtX=X.T @ X, XtWX=(X * pw[:, None]).T @ X, partitions=1)
    if isinstance(family, families.Binomial):
        k = pw * y
        mu0 = (pw * y + 0.5) / (pw + 1.0)
        out.update(successes=float(k.sum()), failures=float((pw - k).sum()),
                   nonint=int(np.sum(np.abs(k - np.round(k)) > 1e-7 * np.maximum(1.0, k))))
    else:
        mu0 = y + 0.1
        out.update(successes=float(np.sum(pw * y)), failures=0.0,
                   nonint=int(np.sum(y != np.round(y))))
    with np.errstate(all="ignore"):
        eta0 = np.asarray(family.link(mu0), dtype=float) - off
    out["start_finite"] = int(np.all(np.isfinite(eta0)))
    out["XtWeta0"] = (X * pw[:, None]).T @ np.where(np.isfinite(eta0), eta0, 0.0)
    return out


def _add(a, b):
    out = {}
    for k, v in a.items():
        if k == "ymin":
            out[k] = min(v, b[k])
        elif k == "ymax":
            out[k] = max(v, b[k])
        elif k == "start_finite":
            out[k] = v and b[k]
        elif k == "zsq":
            out[k] = [x + y for x, y in zip(v, b[k])]
        else:
            out[k] = v + b[k]
    return out


def _max_abs_xb(chunk, beta):
    return float(np.max(np.abs(chunk.X @ beta))) if chunk.n else 0.0


class _Passes:
    """The map-reduce over the persisted chunks (one pass per call), counted."""

    def __init__(self, chunks, model):
        self.chunks, self.model = chunks, model

    def __call__(self, request):
        self.model.passes += 1
        req = ship(_Box(request))            # one object (a dict would be scattered by key)
        parts = [_delayed(_chunk_sums)(c, req) for c in self.chunks]
        return tree_reduce(parts, lp.add_sums).compute()

    def reduce(self, fn, *args, combine=max):
        self.model.passes += 1
        parts = [_delayed(fn)(c, *args) for c in self.chunks]
        return tree_reduce(parts, lambda a, b: combine(a, b)).compute()


class _Box:
    def __init__(self, value):
        self.value = value


def _chunk_sums(chunk, box):
    return lp.chunk_sums(chunk, box.value)


def _delayed(fn):
    import dask
    return dask.delayed(fn, pure=False)


class DaskLaplaceDeviance(LaplaceDeviance):
    """The Laplace log-likelihood of a Dask GLMM: :func:`mlmext.laplace.pirls` and
    :func:`mlmext.laplace.laplace_gradient` on :class:`~mlmext.laplace.SummedRows` of the
    persisted chunks; the factors are set from the summed cross-products."""

    def _factor(self, p):
        blocks = self.design.blocks
        b1 = blocks[0]
        r = sum(b.nre for b in blocks[1:]) + p + 1
        from scipy import sparse
        return DenseFactor.from_cross_products(
            blocks, np.broadcast_to(np.eye(b1.q), (b1.m, b1.q, b1.q)).copy(),
            sparse.csr_matrix((r, b1.nre)), np.eye(r))

    @property
    def chol_u(self):
        if self._chol_u is None:
            self._chol_u = self._factor(0)
        return self._chol_u

    @property
    def chol_x(self):
        if self._chol_x is None:
            self._chol_x = self._factor(self.p)
        return self._chol_x

    def _summed(self, beta, has_x):
        return lp.SummedRows(self.design, self.model._passes, beta, has_x, self.p)

    def modes(self, theta, beta, tol=1e-14, warm=True, lams=None):
        """As :meth:`LaplaceDeviance.modes`: the warm start is the last modes moved to first
        order (from the last pass's sums: no pass of its own)."""
        des = self.design
        lams = des.lambdas(theta) if lams is None else lams
        u0 = self.warm_start if warm else None
        last = self._last if warm else None
        if last is not None and u0 is not None:
            th0, b0, m0, lams0, rows0 = last
            u0 = lp.predict_modes(des, self.chol_u, m0, theta - th0, lams=lams0, rows=rows0,
                                  dbeta=np.asarray(beta, dtype=float) - b0)
        rows = self._summed(beta, False)
        modes = lp.pirls(des, self.chol_u, None, self.cond, theta, u0=u0, tol=tol, lams=lams,
                         rows=rows)
        if not modes.converged and u0 is not None:
            rows = self._summed(beta, False)
            modes = lp.pirls(des, self.chol_u, None, self.cond, theta, u0=None, tol=tol,
                             lams=lams, rows=rows)
            modes.message = "retried from u = 0; " + modes.message
        self._rows = rows
        if modes.converged:
            self.warm_start = modes.u
            self._last = (np.array(theta, dtype=float), np.array(beta, dtype=float), modes, lams,
                          rows)
        else:
            self._last = None
        return modes, lams

    def loglike_and_score(self, params, tol=1e-14):
        theta, beta, extra = self.split(params)
        modes, lams = self.modes(theta, beta, tol=tol)
        if not modes.converged:
            return -np.inf, np.zeros(len(params)), modes
        gt, gb, _ = lp.laplace_gradient(self.design, self.chol_u, self.cond, theta, modes,
                                        X=True, rows=self._rows)
        return modes.laplace, np.concatenate([gt, gb]), modes

    def stage1(self, theta, beta, u=None):
        des = self.design
        start = np.zeros(self.p) if beta is None else beta
        modes = lp.pirls(des, self.chol_x, None, self.cond, theta, u0=u, beta0=beta, tol=1e-10,
                         rows=self._summed(start, True))
        if not modes.converged and (u is not None):
            modes = lp.pirls(des, self.chol_x, None, self.cond, theta, beta0=None, tol=1e-10,
                             rows=self._summed(np.zeros(self.p), True))
        value = -2.0 * modes.laplace if modes.converged else np.inf
        return value, modes

    def cov_rx(self, theta, modes, lams):
        """lme4's RX covariance: the joint system at the modes (one pass)."""
        rows = self._summed(modes.beta if modes.beta is not None else self._beta_at(modes), True)
        rows.point(modes.u, rows.beta_fixed, lams)
        status, _ = rows.factor(self.chol_x, lams, False)
        if status == "failed":
            return np.full((self.p, self.p), np.nan)
        return self.chol_x.cov_beta_unscaled()

    def _beta_at(self, modes):
        return self._rows.beta_fixed


class DaskGeneralizedLinearMixedModel(GeneralizedLinearMixedModel):
    """A binomial or Poisson GLMM of a Dask DataFrame (see :mod:`mlmext.dask.glmm`).

    Build it with ``mf.glmer(formula, data=ddf, family=...)``.  The rows are evaluated once
    into arrays persisted on the workers; the model holds sums of the size of the random and
    fixed effects, not rows (``endog``, ``exog``, ``weights``, ``offset`` raise
    :class:`~mlmext.dask.model.RowsNotHeldError`).

    Attributes
    ----------
    dask_data : dask.dataframe.DataFrame
    passes : int
        Passes over the data so far: 2 to build, then one per PIRLS iteration (and step
        halving) and one per gradient; a fit's share is ``results.passes``.
    npartitions : int
    timings : dict
        Seconds of the build's steps.
    """

    endog, exog, weights, offset, _XY = (_rows(n) for n in ("endog", "exog", "weights", "offset",
                                                             "_XY"))

    same_rows = DaskLinearMixedModel.same_rows

    @classmethod
    def from_formula(cls, formula, data, family=None, subset=None, weights=None, offset=None,
                     missing="drop", eval_env=0, **kwargs):
        """Create the model of a Dask DataFrame (arguments as :func:`mlmext.formula.api.glmer`;
        ``weights`` and ``offset`` name columns; no ``subset``; ``missing="drop"``)."""
        check_rows_args(subset, missing)
        fam = cls.__new__(cls)._resolve_family(family)
        link = type(fam.link).__name__
        if not ((isinstance(fam, families.Binomial) and link == "Logit")
                or (isinstance(fam, families.Poisson) and link == "Log")):
            raise NotImplementedError(
                f"a GLMM of Dask data takes the binomial family with the logit link and the "
                f"Poisson family with the log link (canonical links: each PIRLS iteration and "
                f"each gradient is one pass); got {type(fam).__name__} with the {link} link")
        env = caller_namespace(eval_env + 1) if isinstance(eval_env, int) else eval_env
        laps = Laps()
        state = learn(data, formula, weights=weights, offset=offset)
        laps.lap("levels_pass")
        template = build_template(GeneralizedLinearMixedModel, state, env, dict(kwargs, family=fam))
        if template.response_kind != "numeric":
            raise NotImplementedError(
                f"the response of a GLMM of Dask data must be numeric (0/1, proportions with "
                f"weights = trials, or counts); it is {template.response_kind!r} (add a 0/1 "
                "column first)")
        self = cls.__new__(cls)
        self.__dict__.update(template.__dict__)
        DaskLinearMixedModel._hold_no_rows(self, state, data)
        laps.lap("template")
        self._persist(data, state)
        laps.lap("rows_pass")
        self.timings = laps.times
        self.formula = formula
        return self

    # -- the rows on the workers
    def _persist(self, data, state):
        import dask
        tmpl = ship(self)
        light = copy.copy(state)
        light.frame = None
        chunks = [dask.delayed(_make_chunk)(p, tmpl, light, self.family) for p in data.to_delayed()]
        chunks = list(dask.persist(*chunks))
        self._chunks = chunks
        self._passes = _Passes(chunks, self)
        parts = [dask.delayed(_chunk_summary)(c, self.family) for c in chunks]
        sums = tree_reduce(parts, _add).compute()
        self._check_data(sums)
        self.nrows_dropped = sums["n_missing"] + sums["n_zero"]
        dropped = {k: v for k, v in (("missing values", sums["n_missing"]),
                                     ("zero weights", sums["n_zero"])) if v}
        self.formula_info.update(nrows_dropped=self.nrows_dropped, dropped=dropped)
        self.nobs = float(sums["n"])
        for t, zsq in zip(self.re_design.terms, sums["zsq"]):
            t.col_rms = np.sqrt(zsq / max(sums["n"], 1))
        self._sums = sums

    def _check_data(self, s):
        name = display_name(self.endog_names)
        n, p = s["n"], self.k_fe
        if n <= p:
            raise ValueError(f"{n} observations for {p} fixed effects")
        if isinstance(self.family, families.Binomial):
            if s["ymin"] < 0 or s["ymax"] > 1:
                raise ValueError(f"the binomial response {name!r} must be 0/1 or proportions in "
                                 f"[0, 1] (with weights = trials); it has values in "
                                 f"[{s['ymin']:g}, {s['ymax']:g}]")
            for v, what in ((s["successes"], "failures"), (s["failures"], "successes")):
                if v == 0:
                    raise ValueError(f"the binomial response {name!r} is constant (all {what}): "
                                     "the fixed effects have no finite estimates")
            if s["nonint"]:
                warnings.warn(f"non-integer number of successes in the binomial response "
                              f"{name!r} (proportion times weights); give weights = number of "
                              "trials", UserWarning, stacklevel=4)
        else:
            if s["ymin"] < 0 or s["nonint"]:
                raise ValueError(f"the count response {name!r} must hold non-negative whole "
                                 f"numbers (minimum {s['ymin']:g}, {s['nonint']} non-integer)")
            if s["successes"] == 0:
                raise ValueError(f"the count response {name!r} is all zeros: the fixed effects "
                                 "have no finite estimates")
        for t in self.re_design.terms:
            if t.m >= n:
                raise ValueError(f"grouping factor {t.name!r} has {t.m} levels for {n} "
                                 "observations")
        check_full_rank(s["XtX"], self.exog_names)

    def __getstate__(self):
        state = super().__getstate__()
        for k in ("dask_data", "_chunks", "_passes", "_sums"):
            state.pop(k, None)
        return state

    # -- what the in-memory model reads of the rows
    def _make_conditional(self):
        # the client's conditional model: no rows (they are on the workers), the summed
        # constant; its methods are evaluated per chunk
        cond = GLMConditional(self.family, np.zeros(0), np.zeros(0))
        sums = self.__dict__.get("_sums")
        if sums is not None:
            cond.loglik_const = sums["loglik_const"]
            cond.loglik_scale = sums["loglik_scale"]
        return cond

    def _setup(self):
        self.k_extra = 0

    def deviance(self):
        return DaskLaplaceDeviance(self)

    def _spec_frame(self):
        return self.formula_info.get("template_frame")

    def _has_prior_weights(self):
        return self._weighted

    def _start_beta(self):
        s = self._sums
        if not s["start_finite"]:
            return None
        beta = np.linalg.lstsq(s["XtWX"], s["XtWeta0"], rcond=None)[0]
        return beta if np.all(np.isfinite(beta)) else None

    def _warn_separation(self, beta):
        """The in-memory check needs the rows (a linear program on them); here only its
        trigger, ``max |X beta| > 10`` (one pass), which then warns that separation may be
        present."""
        big = self._passes.reduce(_max_abs_xb, np.asarray(beta, dtype=float))
        if big > 10.0:
            warnings.warn(f"max |X beta| = {big:.3g} over the rows: the fixed effects may have no "
                          "finite estimates ((quasi-)separation, or counts all zero where a "
                          "column is not); the check that decides needs the rows, which a Dask "
                          "fit does not hold", UserWarning, stacklevel=5)

    def _warn_link_not_monotone(self, eta):
        """Nothing to check: the canonical links' means increase in eta."""

    def fit(self, nagq=1, start_params=None, maxiter=500, tol=1e-8, stage1=False, disp=False,
            **kwargs):
        """Laplace fit as :meth:`GeneralizedLinearMixedModel.fit` (``nagq=1`` only); the
        results' ``passes`` counts the fit's passes over the data."""
        if nagq != 1:
            raise NotImplementedError("adaptive Gauss-Hermite quadrature (nagq > 1) is not "
                                      "available for Dask data; the Laplace fit (nagq=1) is")
        if stage1:
            raise NotImplementedError("stage1=True (a Nelder-Mead search with a pass per PIRLS "
                                      "iteration) is not available for Dask data")
        before = self.passes
        res = super().fit(nagq=1, start_params=start_params, maxiter=maxiter, tol=tol,
                          stage1=False, disp=disp, **kwargs)
        res._results.passes = self.passes - before
        return res

    def loglike(self, params, nagq=1):
        if nagq != 1:
            raise NotImplementedError("nagq > 1 is not available for Dask data")
        dev = self.deviance()
        return dev.loglike(self._internal(params), nagq=1, tol=1e-20) + dev.cond.loglik_const


def _eta_partition(part, model, beta, bs, re):
    X, terms, off = model._new_design(part, re=re)
    eta = X @ beta + off
    if re:
        eta = eta + re_contribution(model.re_design, bs, terms)
    return eta


def _predict_partition(part, model, beta, bs, re, which):
    eta = _eta_partition(part, model, beta, bs, re)
    out = eta if which == "linear" else model.family.link.inverse(eta)
    return pd.Series(out, index=part.index, name="predicted")


def _fitted_partition(part, model, beta, bs, what):
    XY, w, terms, rows = partition_rows(model, part, model._formula_state)
    eta = XY[:, :-1] @ beta + re_contribution(model.re_design, bs, terms) + rows["offset"]
    mu = model.family.link.inverse(eta)
    out = mu if what == "fitted" else rows["response"] - mu
    if what == "pearson":                      # prior weights: the binomial's trials
        out = out / np.sqrt(model.family.variance(mu) / (1.0 if w is None else w))
    return pd.Series(out, index=rows["index"], name=what)


class DaskGLMMResults(DaskResultsMixin, GLMMResults):
    """Results of a :class:`DaskGeneralizedLinearMixedModel` fit: the in-memory results, with
    the row-sized quantities lazy Dask series; ``passes``: the fit's passes over the data."""

    passes = None
    _fitted_partition = staticmethod(_fitted_partition)
    _predict_partition = staticmethod(_predict_partition)

    @property
    def resid_pearson(self):
        """Pearson residuals with the conditional modes, a lazy Dask series over the model rows."""
        return self._over_rows("pearson")

    _scaled_resid_series = resid_pearson.fget

    def linear_predictor(self, data=None, re=True, offset=None):
        raise RowsNotHeldError("the linear predictor of the fitted rows is not held; use "
                               "predict(data=ddf, which='linear') (a lazy Dask series)")

    def _fitted_rows(self, which):
        if which != "mean":
            raise RowsNotHeldError("predict(which='linear') of the fitted rows: give the "
                                   "Dask DataFrame as data=")
        return self.fittedvalues


DaskGeneralizedLinearMixedModel._results_class = DaskGLMMResults
