"""Linear mixed models of Dask DataFrames: the model holds cross-products, not rows.

:class:`DaskLinearMixedModel` is a :class:`~mlmext.lmm.LinearMixedModel` whose factorization
is set up from the summed cross-products (:meth:`~mlmext.linalg.DenseFactor.from_cross_products`)
and which holds no row of the data: ``endog``, ``exog``, ``weights`` and the random-effects
model matrices are None, so anything that would need the rows raises instead of reading the
template frame's.  Everything that needs only the cross-products is the in-memory code
unchanged: the fit and its convergence checks, ``summary``, ``varcorr``, ``ranef`` with
conditional variances, Satterthwaite and Kenward-Roger df, ``t_test``, profiles.  The fitted
values, residuals and predictions of Dask data are lazy Dask series.
"""
from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
import pandas as pd

from ..base import caller_namespace, drop_rank_deficient
from ..frame import display_name
from ..inference.ddf_default import check_fit_ddf
from ..inference.robust import check_cov_args
from ..linalg import DenseFactor
from ..linalg.small import small_dense_fits
from ..linalg.small_levels import OneBlockLevels
from ..lmm import LinearMixedModel
from ..prediction import re_contribution
from ..results import LMMResults
from .accumulate import accumulate, partition_rows
from .learn import Laps, build_template, check_rows_args, learn, ship
from .results import DaskResultsMixin

__all__ = ["DaskLinearMixedModel", "DaskLMMResults", "RowsNotHeldError"]


def _alone_cross(blocks, A11, A_r1, A_rr, p1):
    """Per block, the cross-products of the model with that block alone (the fit's start):
    the block's diagonal blocks and its rows against ``[X y]``, read off the sums."""
    out = []
    rz = A_rr.shape[0] - p1
    b1 = blocks[0]
    C1 = A_r1[rz:].toarray().reshape(p1, b1.m, b1.q).transpose(2, 1, 0)
    G = A_rr[rz:, rz:]
    out.append((A11, C1, G))
    off = 0
    for b in blocks[1:]:
        idx = off + np.arange(b.nre).reshape(b.m, b.q)
        A = A_rr[idx[:, :, None], idx[:, None, :]]
        C = A_rr[idx.ravel(), rz:].reshape(b.m, b.q, p1).transpose(1, 0, 2)
        out.append((A, C, G))
        off += b.nre
    return out


class RowsNotHeldError(NotImplementedError, AttributeError):
    """A computation needs the rows of the data, which a model of Dask data does not hold
    (an AttributeError too, so ``getattr(model, "exog", None)`` is None)."""


def _rows(name):
    def get(self):
        raise RowsNotHeldError(f"model.{name}: a model of Dask data holds no rows, and this "
                               "computation needs them (see the user guide, 'Data beyond one "
                               "machine', for what works on the cross-products)")
    return property(get)


class DaskLinearMixedModel(LinearMixedModel):
    """A linear mixed model of a Dask DataFrame (see :mod:`mlmext.dask`).

    Build it with ``mf.lmer(formula, data=ddf)`` or :meth:`from_formula`.  Two passes over
    the partitions run on the workers (the formula's levels, then the cross-products); the
    model then holds arrays of the size of the random effects, not of the rows.

    Attributes
    ----------
    dask_data : dask.dataframe.DataFrame
        The data (lazy: a reference to the graph, not the rows).
    passes : int
        Passes over the data so far: 2 to build the model, and those of the first
        ``summary()`` of its results (the exact quantiles of the scaled residuals).
    npartitions : int
        Partitions of the data.
    timings : dict
        Seconds (wall clock) of each step of the build: ``levels_pass``, ``template``,
        ``cross_products_pass``, ``factor_setup``.
    """

    endog, exog, weights, offset, _XY = (_rows(n) for n in ("endog", "exog", "weights", "offset",
                                                             "_XY"))

    @classmethod
    def from_formula(cls, formula, data, subset=None, weights=None, offset=None,
                     missing="drop", eval_env=0, **kwargs):
        """Create the model of a Dask DataFrame from an lme4-style formula.

        Parameters as :meth:`mlmext.lmm.LinearMixedModel.from_formula`, except: ``weights``
        and ``offset`` name columns (arrays cannot be aligned with partitions); ``subset``
        is not taken (select rows of the Dask DataFrame first); ``missing="drop"`` only.
        """
        check_rows_args(subset, missing)
        env = caller_namespace(eval_env + 1) if isinstance(eval_env, int) else eval_env
        laps = Laps()
        state = learn(data, formula, weights=weights, offset=offset)
        laps.lap("levels_pass")
        template = build_template(LinearMixedModel, state, env, kwargs)
        self = cls.__new__(cls)                      # the template's state, then no rows
        self.__dict__.update(template.__dict__)
        self._hold_no_rows(state, data)
        laps.lap("template")
        sums = accumulate(data, self, state)          # the workers evaluate rows through self
        laps.lap("cross_products_pass")
        self._attach(sums)
        laps.lap("factor_setup")
        self.timings = laps.times
        self.formula = formula
        return self

    # -- from the template to the model of the data ------------------------------------------
    def _hold_no_rows(self, state, data):
        """Drop the template frame's rows: what would read them fails instead of answering
        for the template.  The formula state (specs, levels) stays."""
        info = dict(self.formula_info)
        info.update(data=None, template_frame=state.spec_frame, row_labels=None)
        state.frame = None                # built the template; its rows are not needed again
        self.formula_info = info
        self._weighted = state.weights is not None
        self._formula_state = state
        self.dask_data = data
        self.passes, self.npartitions = 2, data.npartitions
        for name in ("endog", "exog", "_XY", "weights", "offset") + self._unpickled_caches:
            self.__dict__.pop(name, None)             # rows, and factors built from them
        for name in ("endog", "exog", "orig_endog", "orig_exog", "frame"):
            if hasattr(self.data, name):
                setattr(self.data, name, None)
        des = copy.copy(self.re_design)
        for cache in ("_theta_units", "_lmm_block_units"):    # of the template frame's rows
            des.__dict__.pop(cache, None)
        des.terms = [copy.copy(t) for t in des.terms]
        new = dict(zip(map(id, self.re_design.terms), des.terms))
        des.blocks = [copy.copy(b) for b in des.blocks]
        for b in des.blocks:
            b.terms = [new[id(t)] for t in b.terms]
            b.X = b.codes = None
        for t in des.terms:
            t.X = t.codes = None
        self.re_design = des

    def _attach(self, sums):
        """The data's counts, checks and cross-products (pass 2's sums)."""
        n, p = sums["n"], self.k_fe
        self._check_data(sums, n, p)
        dropped = {k: v for k, v in (("missing values", sums["n_missing"]),
                                     ("zero weights", sums["n_zero"])) if v}
        self.nrows_dropped = sums["n_missing"] + sums["n_zero"]
        self.formula_info.update(nrows_dropped=self.nrows_dropped, dropped=dropped)
        self.nobs = float(n)
        self._logw = sums["sumlogw"]
        for t, zsq in zip(self.re_design.terms, sums["zsq"]):
            t.col_rms = np.sqrt(zsq / max(n, 1))
        A11, A_r1, A_rr = sums["A11"], sums["A_r1"], sums["A_rr"]
        blocks = self.re_design.blocks
        self._alone = _alone_cross(blocks, A11, A_r1, A_rr, p + 1)
        self._xprod = DenseFactor.from_cross_products(blocks, A11, A_r1, A_rr)

    def __getstate__(self):
        # shipped to the workers (passes, predictions): the rows' graph and the client's
        # cross-products stay behind
        state = super().__getstate__()
        for k in ("dask_data", "_alone"):
            state.pop(k, None)
        return state

    def same_rows(self, other):
        """``(True, "")`` when ``other`` (a Dask model) was fitted to the same rows with the same
        response, else ``(False, how they differ)``: likelihood-ratio comparisons need it.

        One pass over both models' data, partition by partition (counted in both models'
        ``passes``): the model rows' labels and responses must be equal.
        """
        import dask
        if getattr(other, "_formula_state", None) is None:
            return False, "one model's data are a Dask DataFrame and the other's are not"
        a, b = getattr(self, "dask_data", None), getattr(other, "dask_data", None)
        if a is None or b is None:
            return False, "an unpickled Dask model's data are not attached"
        if a.npartitions != b.npartitions:
            return False, (f"Dask DataFrames of {a.npartitions} and {b.npartitions} "
                           "partitions (compare models of one Dask DataFrame)")
        checks = [dask.delayed(_same_partition_rows)(pa, pb, ship(self), ship(other))
                  for pa, pb in zip(a.to_delayed(), b.to_delayed())]
        ok = all(dask.compute(*checks))
        self.passes += 1
        other.passes += 1
        return (True, "") if ok else (False, "different rows or responses")

    def _check_data(self, sums, n, p):
        """The in-memory model's checks of the data, on the cross-products."""
        name = display_name(self.endog_names)
        if n <= p:
            raise ValueError(f"{n} observations for {p} fixed effects: a linear mixed model needs "
                             "more observations than fixed effects")
        if sums["ymax"] == sums["ymin"]:
            raise ValueError(f"the response {name!r} is constant ({sums['ymin']:g}); there is "
                             "nothing to model")
        des = self.re_design
        for t in des.terms:
            if t.m >= n:
                raise ValueError(f"grouping factor {t.name!r} has {t.m} levels for {n} "
                                 "observations; the random effects and the residual are then "
                                 "unidentifiable")
        if des.nre >= n and len(des.terms) == 1:
            raise ValueError(f"the model has {des.nre} random effects for {n} observations")
        check_full_rank(sums["XtX"], self.exog_names)
        rz = sums["A_rr"].shape[0] - p - 1
        G = sums["A_rr"][rz:, rz:]
        rss = G[-1, -1] - G[-1, :-1] @ np.linalg.solve(G[:-1, :-1], G[:-1, -1])
        if rss <= 1e-20 * max(G[-1, -1], 1e-300):
            raise ValueError(f"the fixed effects fit the response {name!r} exactly (residual sum "
                             "of squares 0); a mixed model needs residual variation")

    def _spec_frame(self):
        return self.formula_info.get("template_frame")

    def _has_prior_weights(self):
        return self._weighted

    def _block_alone_cross(self, blk):
        return self._alone[self.re_design.blocks.index(blk)]

    def _cross_products(self):
        return self._xprod

    def _small_factor(self):
        return None                     # the small systems' dense storage is built from rows

    def _small_levels(self):
        """The level-by-level evaluator of a small one-factor system, from the cross-products
        (as the model of the rows has it: the same fit)."""
        lv = self.__dict__.get("_levels", False)
        if lv is False:
            des, lv = self.re_design, None
            if len(des.blocks) == 1 and small_dense_fits(des.blocks, self.k_fe):
                b = des.blocks[0]
                A, C, V = self._alone[0]
                lv = OneBlockLevels(b, np.array(A, dtype=float).reshape(b.m, b.q, b.q),
                                    np.ascontiguousarray(np.transpose(C, (1, 0, 2))),
                                    np.array(V, dtype=float), des.ntheta)
            self._levels = lv
        return lv

    def fit(self, *args, **kwargs):
        """Fit as :meth:`mlmext.lmm.LinearMixedModel.fit` (same arguments); the fitted values,
        residuals and predictions of the results are lazy Dask series."""
        # read as fit() reads them: positional, any case, ddf's spellings ("KR", "kenward_roger")
        try:
            got = inspect.signature(LinearMixedModel.fit).bind(self, *args, **kwargs).arguments
        except TypeError:                       # (too many arguments: the fit's own message)
            return super().fit(*args, **kwargs)
        cov_type = got.get("cov_type", "nonrobust")
        check_cov_args(cov_type, got.get("cov_kwds"))     # (an unknown value: the fit's error)
        if cov_type.lower() != "nonrobust":
            raise NotImplementedError("cluster-robust covariances need the rows; not available "
                                      "for Dask data")
        if check_fit_ddf(got.get("ddf", "satterthwaite"), got.get("reml", True)) == "kenward-roger":
            raise NotImplementedError("Kenward-Roger's df need the rows (n x q matrices); use "
                                      "ddf='satterthwaite' (the default) for Dask data")
        return super().fit(*args, **kwargs)


def _same_partition_rows(pa, pb, ma, mb):
    ra, rb = (partition_rows(m, p, m._formula_state)[3] for m, p in ((ma, pa), (mb, pb)))
    return bool(ra["index"].equals(rb["index"])
                and np.allclose(ra["response"], rb["response"], rtol=1e-10, atol=0))


def check_full_rank(XtX, names):
    """``ValueError`` naming the columns lme4 would drop when the data's fixed-effects design
    is rank deficient.  The in-memory criterion (``drop_rank_deficient``) runs on a square root
    ``S`` of ``X'X``: it reads the design only through ``X'X`` and the R of its QR, which ``S``
    shares with ``X``."""
    e, V = np.linalg.eigh(XtX)
    S = np.sqrt(np.clip(e, 0.0, None))[:, None] * V.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = drop_rank_deficient(pd.DataFrame(S, columns=names))
    if kept.shape[1] < len(names):
        dropped = [c for c in names if c not in kept.columns]
        raise ValueError(f"the fixed-effects design is rank deficient on the data (lme4 would "
                         f"drop {dropped}); drop the redundant columns (a Dask fit does not "
                         "drop them as lme4 does)")


def _predict_partition(part, model, beta, bs, re, which="mean"):
    """Predictions of one partition's rows (NaN where a row is incomplete): the linear
    predictor, whatever ``which`` (the link is the identity)."""
    X, terms, off = model._new_design(part, re=re)
    eta = X @ beta + off
    if re:
        eta = eta + re_contribution(model.re_design, bs, terms)
    return pd.Series(eta, index=part.index, name="predicted")


def _fitted_partition(part, model, beta, bs, what, sigma=None):
    """Fitted values, residuals or scaled residuals (``sigma`` given) of one partition's model
    rows (incomplete rows dropped)."""
    XY, w, terms, rows = partition_rows(model, part, model._formula_state)
    fit = XY[:, :-1] @ beta + re_contribution(model.re_design, bs, terms)
    # XY's last column is y - offset: the offset cancels in the residual
    out = fit + rows["offset"] if what == "fitted" else XY[:, -1] - fit
    if what == "scaled":
        out = out * (1.0 if w is None else np.sqrt(w)) / sigma
    return pd.Series(out, index=rows["index"], name=what)


class DaskLMMResults(DaskResultsMixin, LMMResults):
    """Results of a :class:`DaskLinearMixedModel` fit: the in-memory results, with the
    row-sized quantities lazy (Dask series computed on the workers when asked)."""

    _fitted_partition = staticmethod(_fitted_partition)
    _predict_partition = staticmethod(_predict_partition)

    def _scaled_resid_series(self):
        return self._over_rows("scaled", self.sigma)


DaskLinearMixedModel._results_class = DaskLMMResults
