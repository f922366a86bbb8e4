"""Estimated marginal means (R's ``emmeans``) of LMM, GLMM and clmm fits.

The reference grid holds every factor of the fixed effects at all its levels and every numeric
covariate at its mean over the fitted rows (or at the values given in ``at=``); a numeric
covariate with two distinct values enters with both, as emmeans' default ``cov.keep = "2"``.  Its design
matrix is built by the model's own formula machinery (the path ``predict(data=...)`` takes), so
codings, ``C()``, transformations and interactions are the fitted ones.  A marginal mean of a
cell of the ``specs`` (and ``by``) variables is the equally weighted average of the grid's
predictions over the other variables (emmeans' default ``weights = "equal"``; the other
weights are in :mod:`.emm_scale`): a linear function
``l' beta`` of the fixed effects, whose variance is ``l' V l`` and whose df is the
Satterthwaite or Kenward-Roger df of the contrast ``l`` (LMMs; emmeans' ``lmer.df``), or
infinite (GLMM, clmm: z tests, as emmeans).  Contrasts among the means are in
:mod:`.emm_contrasts`.
"""
from __future__ import annotations

import re
from itertools import product

import numpy as np
import pandas as pd
from scipy import stats

from .._args import check_flag, reject_unknown
from ._common import _raw
from .ddf import _ddf_method, kenward_roger, satterthwaite
from .emm_ordinal import probability_rows
from .emm_scale import (cell_counts, check_weights, link_transform, regrid_df, regridded,
                        response_transform, row_counts, weight_matrix)


def _kind(res):
    model = _raw(res).model
    if hasattr(model, "thr"):
        return "clmm"
    if hasattr(model, "deviance_profiled"):
        return "lmm"
    return "glmm"


# ----------------------------------------------------------------------- the model's variables
def _factor_code(factor):
    """A term factor's source text (patsy's ``EvalFactor.name()``, formulaic's ``str``)."""
    name = getattr(factor, "name", None)
    return name() if callable(name) else str(factor)


def model_variables(res):
    """(data, variables, categorical): the fitted rows, the data columns the fixed effects
    use, in the formula's order, and which of them are factors (non-numeric columns, booleans
    and numeric columns wrapped in ``C()``).  Variables only in ``offset()`` terms are not
    grid variables: emmeans puts the mean of the fitted offsets on every grid point."""
    model = _raw(res).model
    info = getattr(model, "formula_info", None) or {}
    data, parsed = info.get("data"), info.get("parsed")
    if data is None and type(model).__module__.startswith("mlmext.dask"):   # no rows held
        raise NotImplementedError("emmeans of a model of Dask data is not implemented: the "
                                  "reference grid is built from the fitted rows, which it does "
                                  "not hold")
    if data is None or parsed is None:
        raise ValueError("emmeans needs the model's formula and fitted data (a model built from "
                         "arrays, or a result after remove_data(), has none)")
    columns = set(map(str, data.columns)) - {str(model.endog_names)}
    codes = [_factor_code(f) for t in model._fixed_spec().terms for f in t.factors]
    found = [w for c in codes for w in re.findall(r"[A-Za-z_][\w.]*", c) if w in columns]
    variables = list(dict.fromkeys(found))
    in_c = set(re.findall(r"\bC\(\s*([A-Za-z_][\w.]*)", str(parsed.fixed_rhs)))
    cats = {v for v in variables if v in in_c or data[v].dtype == bool
            or not pd.api.types.is_numeric_dtype(data[v])}
    return data, variables, cats


def _levels(s):
    """Observed levels of a column in the order the formula engine codes them."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        seen = set(s.dropna())
        return [c for c in s.cat.categories if c in seen]
    return sorted(s.dropna().unique())


def _as_names(x, what):
    if x is None:
        return []
    names = [x] if isinstance(x, str) else list(x)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a variable name or a list of names, got {x!r}")
    return names


def reference_grid(res, specs, by=None, at=None, extra=None, cov_keep=2):
    """The reference grid and what is averaged.

    A numeric covariate with at most ``cov_keep`` distinct values (emmeans' ``cov.keep``,
    default ``"2"``: a 0/1 indicator) enters with its values, as a factor, not at its mean.
    ``extra`` adds factors that are not data columns (``{name: levels}``: a clmm's response
    categories for emmeans' ``mode = "prob"``); they come first among the variables averaged.

    Returns
    -------
    grid : pandas.DataFrame
        Every combination of the grid values, the first variable varying fastest; the
        ``specs`` and ``by`` variables come first, so the cells of the marginal means are the
        first ``n_cells`` rows repeated over the other variables.
    cells : pandas.DataFrame
        The ``specs`` and ``by`` values of each marginal mean.
    averaged : list of str
        The factors (and covariates given several values in ``at``) averaged over.
    """
    data, variables, cats = model_variables(res)
    extra = dict(extra or {})
    cats_data = set(cats)
    variables, cats = list(extra) + variables, cats | set(extra)
    specs, by = _as_names(specs, "specs"), _as_names(by, "by")
    if not specs:
        raise ValueError("specs must name at least one variable of the fixed effects")
    at = {} if at is None else dict(at)
    for name, what in [(n, "specs") for n in specs] + [(n, "by") for n in by] + \
                      [(n, "at") for n in at]:
        if name not in variables:
            raise ValueError(f"{what}: {name!r} is not a variable of the fixed effects; they are "
                             f"{variables}")
    dup = [n for n in specs if n in by] or [n for n in specs + by if (specs + by).count(n) > 1]
    if dup:
        raise ValueError(f"{dup[0]!r} is named twice in specs / by")
    values, kept = {}, set()
    for v in variables:
        if v in cats:
            levels = list(extra[v]) if v in extra else _levels(data[v])
            if v in at:
                given = [at[v]] if np.ndim(at[v]) == 0 else list(at[v])
                bad = [g for g in given if g not in levels]
                if bad:
                    raise ValueError(f"at: {bad} are not levels of {v!r}; its levels are {levels}")
                levels = [g for g in levels if g in given]
            values[v] = levels
        elif v in at:
            vals = np.atleast_1d(np.asarray(at[v], dtype=float))
            if vals.size == 0 or not np.all(np.isfinite(vals)):
                raise ValueError(f"at: {v!r} needs finite numbers, got {at[v]!r}")
            values[v] = list(vals)
        else:
            x = np.asarray(data[v], dtype=float)
            distinct = np.unique(x[np.isfinite(x)])
            if 1 < distinct.size <= cov_keep:      # emmeans' cov.keep: kept with its values
                values[v] = list(distinct)
                kept.add(v)
                continue
            if v in specs or v in by:
                raise ValueError(f"{v!r} is numeric: give the values to compare in at= "
                                 f"(e.g. at={{{v!r}: [..]}}), or wrap it in C() in the formula")
            values[v] = [float(np.mean(x))]       # emmeans' cov.reduce
    order = specs + by + [v for v in variables if v not in specs and v not in by]
    rows = [tuple(reversed(r)) for r in product(*[values[v] for v in reversed(order)])]
    grid = pd.DataFrame(rows, columns=order)
    for v in order:
        if v in extra:
            continue
        if isinstance(data[v].dtype, pd.CategoricalDtype):   # the fitted categories and order
            grid[v] = pd.Categorical(grid[v], categories=data[v].cat.categories)
        elif v in cats:
            grid[v] = grid[v].astype(data[v].dtype)
    n_cells = int(np.prod([len(values[v]) for v in specs + by]))
    cells = grid.iloc[:n_cells][specs + by].reset_index(drop=True)
    averaged = [v for v in order[len(specs + by):] if len(values[v]) > 1]
    grid.attrs["factors"] = sorted((cats_data | kept) & set(order))   # what .wgt. counts
    grid.attrs["dims"] = [len(values[v]) for v in averaged]
    return grid, cells, averaged


def _design_frame(res, grid):
    """The grid with the columns only ``offset()`` terms use (at their first fitted value; the
    offsets computed from them are not used), so the model's formula can be evaluated on it."""
    model = _raw(res).model
    data = model.formula_info["data"]
    codes = " ".join(str(o) for o in model.formula_info["parsed"].offsets)
    out = grid.copy()
    for w in dict.fromkeys(re.findall(r"[A-Za-z_][\w.]*", codes)):
        if w in data.columns and w not in out.columns:
            out[w] = data[w].iloc[[0] * len(out)].to_numpy()
    return out


# ----------------------------------------------------------------------- the means
class EMMInfo:
    """What an :class:`EMMeans` table was computed from (read-only use by its methods)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def df_of(self, L, C=None):
        """Denominator df of the contrasts ``L`` (rows, on ``beta``), as the means used;
        regridded means: emmeans' rule from the means' df and the contrasts ``C`` of them."""
        if getattr(self, "regrid_df", None) is not None:
            return regrid_df(self.regrid_df, np.eye(len(self.regrid_df)) if C is None else C)
        if self.ddf == "kenward-roger":
            return kenward_roger(self.res, L)[0]
        if self.ddf == "satterthwaite":
            return satterthwaite(self.res, L)
        return np.full(L.shape[0], np.inf)


def _response_name(kind, family):
    fam = type(family).__name__ if family is not None else ""
    return {"Binomial": "prob", "Poisson": "rate"}.get(fam, "response")


def emmeans(res, specs, by=None, at=None, type="link", ddf=None, level=0.95, mode=None,
            weights="equal", cov_keep=2, **kwargs):
    """Estimated marginal means (R's ``emmeans``) and the table :class:`EMMeans` of them.

    Parameters
    ----------
    res : MixedResults
        A fitted LMM (``lmer``), GLMM (``glmer``, ``glmer_nb``) or ``clmm``.
    specs : str or list of str
        The factor(s) whose marginal means are wanted (emmeans' ``~ A`` or ``~ A * B``).
    by : str or list of str, optional
        Factors to condition on (``~ A | B``): the means are the same as with
        ``specs=[A, B]``; contrasts compare within each ``by`` group.
    at : dict, optional
        Grid values: a list of numbers for a numeric covariate (default: its mean over the
        fitted rows), or a subset of a factor's levels.  A numeric variable may be in
        ``specs`` / ``by`` only with values here.
    type : {"link", "response"}
        GLMM: the linear predictor, or back-transformed through the inverse link
        (``prob`` for binomial, ``rate`` for Poisson, else ``response``) with delta-method
        standard errors and back-transformed confidence limits.  LMM: the same for a
        transformed response (``np.log(y)``, ``np.log2``, ``np.log10``, ``np.log1p``,
        ``np.sqrt``: emmeans' ``type = "response"``; contrasts of a log response become
        ratios); an untransformed response is its own scale.  clmm: ``"link"`` only (the
        latent scale).  :meth:`EMMeans.regrid` puts the means (and their contrasts) on the
        response scale instead.
    ddf : {"kenward-roger", "satterthwaite", "asymptotic"}, optional
        LMM denominator df (emmeans' ``lmer.df``); default Kenward-Roger, emmeans' default
        (its standard errors then use pbkrtest's adjusted covariance, as emmeans), for REML
        fits; Satterthwaite (with a note) for ML fits and fits with ``correlation=``, where our
        Kenward-Roger is not implemented.  GLMM and clmm: asymptotic (z) only.
    level : float
        Confidence level of the intervals.
    mode : {"latent", "prob", "mean.class"}, optional
        clmm only (emmeans' modes): ``"latent"`` (default), ``x' beta`` minus the mean of
        the thresholds; ``"prob"``, the probability of each response category (the response
        is then a factor of the grid, by its name: ``specs="rating"`` or ``by="rating"``;
        averaged over when not named); ``"mean.class"``, the expected category number
        ``sum_j j P_j``.  Both are computed at each grid point and then averaged, with
        delta-method standard errors and symmetric intervals, as emmeans does.
    weights : {"equal", "proportional", "outer", "cells", "flat"} or sequence of float
        How the grid points averaged over are weighted (emmeans' ``weights``): equally (the
        default), by the marginal counts of the fitted rows, by the product of each
        variable's marginal counts, by the cell's own counts, by 1 for the non-empty cells,
        or by the given numbers (one per combination of the averaged variables, the first
        varying fastest); see :mod:`.emm_scale`.  Not for a clmm's ``"prob"`` /
        ``"mean.class"`` modes.

    cov_keep : int
        Numeric covariates with at most this many distinct values in the fitted rows (a 0/1
        indicator) enter the grid with their values, like factors, and are averaged over
        (or may be ``specs`` / ``by``), as emmeans' default ``cov.keep = "2"``; ``0`` puts
        every numeric covariate at its mean.

    Returns
    -------
    EMMeans
        A DataFrame with the ``specs`` and ``by`` columns, ``emmean`` (or ``prob`` / ``rate``
        / ``response``), ``SE``, ``df``, and ``lower.CL`` / ``upper.CL`` (``asymp.LCL`` /
        ``asymp.UCL`` for z-based intervals), as emmeans' ``summary``; methods
        :meth:`~EMMeans.pairs`, :meth:`~EMMeans.contrast` and :meth:`~EMMeans.plot`.
    """
    reject_unknown(kwargs, "emmeans()", accepted=["specs", "by", "at", "type", "ddf", "level",
                                                  "mode", "weights", "cov_keep"])
    if isinstance(cov_keep, bool) or not isinstance(cov_keep, (int, np.integer)) or cov_keep < 0:
        raise ValueError(f"cov_keep must be a whole number >= 0, got {cov_keep!r}")
    r = _raw(res)
    kind = _kind(r)
    if type not in ("link", "response"):
        raise ValueError(f"type must be 'link' or 'response', got {type!r}")
    weights = check_weights(weights)
    equal = isinstance(weights, str) and weights == "equal"
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    if getattr(r, "cov_type", "nonrobust") != "nonrobust":
        raise NotImplementedError("emmeans of a cluster-robust result is not implemented; use "
                                  "the model-based result")
    if kind == "clmm":
        mode = "latent" if mode is None else mode
        if mode not in ("latent", "prob", "mean.class"):
            raise NotImplementedError(f"clmm mode={mode!r}: emmeans' modes 'latent', 'prob' and "
                                      "'mean.class' are implemented")
        if type == "response":
            raise ValueError("a clmm's scale is chosen by mode=: 'latent' (default), 'prob' "
                             "(category probabilities) or 'mean.class'; type='response' is for GLMMs")
    elif mode is not None:
        raise ValueError("mode= is for clmm fits (emmeans' mode='latent', 'prob', 'mean.class')")
    if not equal and mode in ("prob", "mean.class"):
        raise NotImplementedError(f"weights={weights!r} with mode={mode!r}: only equal weights")
    ddf_note = None
    cor = getattr(r.model, "correlation", None)       # (KR: independent residuals only)
    if kind == "lmm" and ddf is None and (not r.reml or cor is not None):
        ddf, ddf_note = "satterthwaite", ("Kenward-Roger df need a REML fit: Satterthwaite df are "
                                          "used for this ML fit" if cor is None else "Kenward-"
                                          f"Roger df are not implemented with {cor!r}: Satterthwaite df")
    if kind == "lmm":
        ddf = "kenward-roger" if ddf is None else ("asymptotic" if str(ddf).lower() in (
            "asymptotic", "z") else _ddf_method(ddf))
    elif ddf is not None and str(ddf).lower() != "asymptotic":
        raise ValueError(f"ddf={ddf!r}: {kind} means are asymptotic (z); ddf is for LMMs")
    else:
        ddf = "asymptotic"
    if kind == "lmm":
        tran = response_transform(r.model.endog_names) if type == "response" else None
    else:
        tran = link_transform(r.model.family) if kind == "glmm" else None

    resp = str(r.model.endog_names)
    extra = {resp: list(r.model.levels)} if mode == "prob" else {}
    grid, cells, averaged = reference_grid(r, specs, by, at, extra, cov_keep=int(cov_keep))
    X = r.model._new_design(_design_frame(r, grid.drop(columns=list(extra))), re=False,
                            offset=np.zeros(len(grid)))[0]
    n_cells = len(cells)
    W = None
    if not equal:                             # emmeans' weights from the grid's cell counts
        w = row_counts(r.model) if kind == "lmm" else np.ones(int(r.nobs))
        if kind == "glmm" and np.any(np.asarray(r.model.weights) != 1) and \
                not str(r.model.endog_names).startswith("cbind("):
            raise NotImplementedError("emmeans weights for a GLMM with prior weights")
        data = r.model.formula_info["data"]
        if len(data) != w.size:
            raise NotImplementedError("emmeans weights need the fitted rows of the data")
        counts = cell_counts(data, grid, grid.attrs["factors"], w)
        W = weight_matrix(weights, counts, n_cells, grid.attrs["dims"])

    def average(A):                           # over the grid's other variables
        A = A.reshape(-1, n_cells, *A.shape[1:])
        if W is None:
            return A.mean(axis=0)
        return np.einsum("ac,ac...->c...", W, A)
    # emmeans (1.8.4) uses the mean of the fitted offsets, whatever the grid: offset(log(t))
    # adds mean(log(t)), not log(mean(t))
    offset = float(np.mean(np.asarray(r.model.offset, dtype=float)))
    beta = np.asarray(r.fe_params, dtype=float)
    V = np.asarray(r.cov_params(), dtype=float)
    k = V.shape[0] - beta.size                # clmm: the threshold parameters come first
    if kind == "clmm" and np.any(np.asarray(r.model.offset) != 0):
        raise NotImplementedError("emmeans of a clmm with an offset is not implemented")
    if mode in ("prob", "mean.class"):        # regridded before averaging, as emmeans
        cat = None if mode != "prob" else [extra[resp].index(v) for v in grid[resp]]
        value, G = probability_rows(r, X, cat, mode)
        L, est = average(G), average(value)
    elif kind == "clmm":                      # latent: x' beta - mean(thresholds) (emmeans)
        nom = np.asarray(r.model.thr.T, dtype=float).mean(axis=0)
        L = np.hstack([np.tile(-nom, (n_cells, 1)), average(X)])
        beta = np.asarray(r.params, dtype=float)
        est = L @ beta
    else:
        V = V[k:, k:]
        L = average(X)
        est = L @ beta + offset
    info = EMMInfo(res=r, kind=kind, ddf=ddf, ddf_note=ddf_note, level=float(level), type=type, mode=mode,
                   tran=tran, weights=weights if isinstance(weights, str) else "given",
                   specs=_as_names(specs, "specs"), by=_as_names(by, "by"), averaged=averaged,
                   cells=cells, family=getattr(r.model, "family", None))
    if ddf == "kenward-roger":
        df, V = kenward_roger(r, L)
    else:
        df = info.df_of(L)
    info.V, info.L = V, L
    se = np.sqrt(np.einsum("ij,jk,ik->i", L, V, L))
    info.est, info.se, info.df = est, se, df
    return EMMeans._build(info)


def _quantile(level, df):
    return stats.t.ppf(0.5 + level / 2, df)     # the normal quantile where df is infinite


class EMMeans(pd.DataFrame):
    """Estimated marginal means as emmeans' ``summary`` prints them (a ``pandas.DataFrame``).

    Columns: the ``specs`` and ``by`` variables, the estimate (``emmean``, or ``prob`` /
    ``rate`` / ``response`` on the response scale), ``SE``, ``df`` (``inf`` for z-based
    means) and the confidence limits (``lower.CL`` / ``upper.CL``, or ``asymp.LCL`` /
    ``asymp.UCL``).  ``attrs["notes"]`` holds emmeans' notes (df method, what is averaged).
    Slicing gives plain DataFrames; ``plot`` draws the means (it replaces pandas' plot
    accessor: ``pd.DataFrame(emm).plot`` is still there).
    """

    _metadata = ["_emm"]

    @property
    def _constructor(self):
        return pd.DataFrame

    @classmethod
    def _build(cls, info):
        est, se, df = info.est, info.se, info.df
        q = _quantile(info.level, df)
        lo, hi = est - q * se, est + q * se
        name = info.mode if info.mode in ("prob", "mean.class") else "emmean"
        regridded = getattr(info, "regridded", False)
        if regridded:           # on the response scale already: symmetric intervals
            name = _response_name(info.kind, info.family)
        elif info.type == "response" and info.tran is not None:
            link = info.tran
            name = _response_name(info.kind, info.family)
            se = se * np.abs(link.inverse_deriv(est))
            a, b = link.inverse(lo), link.inverse(hi)
            lo, hi = np.minimum(a, b), np.maximum(a, b)   # a decreasing link swaps the ends
            est = link.inverse(est)
        z = bool(np.all(np.isinf(df)))
        out = info.cells.copy()
        for c in out.columns:       # plain values, as emmeans prints the levels
            if isinstance(out[c].dtype, pd.CategoricalDtype):
                out[c] = out[c].astype(out[c].cat.categories.dtype)
        out[name], out["SE"], out["df"] = est, se, df
        out["asymp.LCL" if z else "lower.CL"], out["asymp.UCL" if z else "upper.CL"] = lo, hi
        self = cls(out)
        object.__setattr__(self, "_emm", info)
        notes = []
        if info.averaged:
            notes.append("Results are averaged over the levels of: " + ", ".join(info.averaged))
        if info.mode == "latent":
            notes.append("Estimates are on the latent scale (x'beta minus the mean threshold)")
        elif regridded:
            notes.append(f"Means and intervals are on the response scale (regridded from the "
                         f"{info.tran.name} scale)")
        elif info.kind == "lmm" and info.tran is not None:
            notes.append(f"Intervals are back-transformed from the {info.tran.name} scale")
        elif info.kind == "glmm":       # emmeans' wording
            link = type(info.family.link).__name__.lower()
            notes.append(f"Intervals are back-transformed from the {link} scale"
                         if info.type == "response"
                         else f"Results are given on the {link} (not the response) scale.")
        notes.append(f"Degrees-of-freedom method: {info.ddf}")
        if info.ddf_note:
            notes.append(info.ddf_note)
        notes.append(f"Confidence level used: {info.level:g}")
        self.attrs["notes"] = notes
        return self

    def __repr__(self):
        body = pd.DataFrame(self).to_string(index=False, float_format=lambda v: f"{v:.6g}")
        return body + "\n\n" + "\n".join(self.attrs.get("notes", []))

    __str__ = __repr__

    def _repr_html_(self):
        import html
        notes = "<br>".join(html.escape(n) for n in self.attrs.get("notes", []))
        return pd.DataFrame(self).to_html(index=False, float_format=lambda v: f"{v:.6g}") + \
            f"<p>{notes}</p>"

    # ------------------------------------------------------------------ methods
    def regrid(self):
        """The means on the response scale (emmeans' ``regrid``): ``g^-1(m)`` with delta-method
        SEs and symmetric intervals; contrasts of the result are differences on the response
        scale (df: the means' df, or the smallest df of the means a contrast uses, as emmeans).

        For GLMMs (the inverse link) and LMMs with a transformed response (``np.log(y)``,
        ...); a result of ``regrid`` is returned as it is.
        """
        info = self._emm
        if getattr(info, "regridded", False):
            return self
        tran = info.tran
        if tran is None and info.kind == "lmm":
            tran = response_transform(info.res.model.endog_names)
        if tran is None:
            raise ValueError("regrid needs a GLMM or a transformed LMM response; these means "
                             "are on their response scale already" if info.kind == "lmm" else
                             "regrid is not available for clmm means (use mode='prob')")
        return EMMeans._build(EMMInfo(**{**vars(info), **regridded(info, tran)}))

    def contrast(self, method="pairwise", adjust=None, ref=0):
        """Contrasts among the means within each ``by`` group (emmeans' ``contrast``).

        Parameters
        ----------
        method : {"pairwise", "revpairwise", "trt.vs.ctrl"}
            Every difference ``a - b`` for ``a`` before ``b``; the reverse ``b - a``; or
            each mean minus the reference mean ``ref``.
        adjust : {"tukey", "holm", "hochberg", "fdr", "BY", "bonferroni", "sidak", ...}
            p-value adjustment within each ``by`` group ("dunnettx", "none"; "BH" is "fdr",
            R's ``p.adjust`` methods; "hommel", "mvt", "scheffe" raise).  Default as
            emmeans: Tukey (studentized range) for pairwise families, ``"dunnettx"``
            (emmeans' approximation to Dunnett) for ``trt.vs.ctrl``.  Tukey for a family
            that is not all pairwise differences becomes Sidak (as emmeans).
        ref : int
            Position of the reference level for ``trt.vs.ctrl``.

        Returns
        -------
        EMMContrasts
            ``contrast``, the ``by`` columns, ``estimate``, ``SE``, ``df``, ``t.ratio`` (or
            ``z.ratio``), ``p.value``.  On the response scale of a log-link (logit-link)
            GLMM the contrasts are ratios (odds ratios) ``a / b``, as emmeans gives them,
            with a ``null`` column; for other links they stay differences on the link scale.
        """
        from .emm_contrasts import contrast
        return contrast(self._emm, method=method, adjust=adjust, ref=ref)

    def pairs(self, adjust="tukey", reverse=False):
        """Pairwise differences within each ``by`` group (emmeans' ``pairs``); see
        :meth:`contrast`.  ``reverse=True`` gives ``b - a`` (emmeans' ``revpairwise``)."""
        return self.contrast("revpairwise" if check_flag("reverse", reverse) else "pairwise", adjust=adjust)

    def plot(self, ax=None, **kwargs):
        """The means with their confidence intervals (emmeans' ``plot``): one row per mean.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Draw into this Axes (default: a new figure).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from .emm_contrasts import plot_emmeans
        return plot_emmeans(self, ax=ax, **kwargs)
