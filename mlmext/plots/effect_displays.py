"""Effect displays: predictions over a focal variable with confidence bands."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ._common import _axes, _is_glmm, _is_ordinal, _panels, _z
from ..ordinal import category_probabilities


# --------------------------------------------------------------------- effects
def _categorical_vars(results, data):
    """Columns used as factors: non-numeric ones and numeric ones wrapped in ``C()``."""
    formula = str(results.model.formula_info.get("parsed").fixed_rhs)
    in_c = set(re.findall(r"\bC\(\s*([A-Za-z_][\w.]*)", formula))
    return {c for c in data.columns
            if c in in_c or not pd.api.types.is_numeric_dtype(data[c]) or data[c].dtype == bool}


def _levels(s):
    """Observed levels of a column in the order the formula engine codes them."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        seen = set(s.dropna())
        return [c for c in s.cat.categories if c in seen]
    return sorted(s.dropna().unique())


def _new_frame(data, typical, columns):
    """DataFrame of typical values with ``columns`` (dict name -> values) varied."""
    n = len(next(iter(columns.values())))
    out = {}
    for c in data.columns:
        vals = columns[c] if c in columns else [typical[c]] * n
        if isinstance(data[c].dtype, pd.CategoricalDtype):    # keep all levels and their order
            vals = pd.Categorical(vals, categories=data[c].cat.categories)
        out[c] = vals
    return pd.DataFrame(out)


def _link_band(results, X, off, z):
    """Linear predictor ``X beta + offset`` with its delta-method limits (``se^2 = x' V x``)."""
    V = np.asarray(results.cov_params(), dtype=float)
    k = V.shape[0] - len(results.fe_params)        # clmm: skip the threshold rows
    V = V[k:, k:]
    eta = X @ np.asarray(results.fe_params, dtype=float) + off
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, V, X))
    return eta, eta - z * se, eta + z * se


def _prob_band(results, X, off, z):
    """clmm category probabilities (n, K) with delta-method limits on the logit scale.

    ``P_j = F(theta_j - eta) - F(theta_{j-1} - eta)`` with ``theta = T alpha``;
    its gradient in (alpha, beta) is mapped through ``cov_params()``.  The
    interval is built for ``logit(P_j)`` and transformed back, so it stays in (0, 1).
    """
    model = results.model
    thr = model.thr
    params = np.asarray(results.params, dtype=float)
    C = np.asarray(results.cov_params(), dtype=float)
    eta = X @ params[thr.k:] + off
    P = category_probabilities(model.link, np.asarray(results.thresholds), eta)
    # f(theta_j - eta) at the K - 1 finite thresholds, 0 at -inf and +inf
    f = np.zeros((len(eta), thr.n_thresholds + 2))
    f[:, 1:-1] = model.link.pdf(np.asarray(results.thresholds)[None, :] - eta[:, None])
    T = np.vstack([np.zeros(thr.k), thr.T, np.zeros(thr.k)])
    lo, hi = np.empty_like(P), np.empty_like(P)
    for j in range(P.shape[1]):
        up, dn = f[:, j + 1], f[:, j]
        G = np.hstack([up[:, None] * T[j + 1] - dn[:, None] * T[j], -(up - dn)[:, None] * X])
        se = np.sqrt(np.einsum("ij,jk,ik->i", G, C, G))
        p = np.clip(P[:, j], 1e-300, 1 - 1e-16)
        lg, se_lg = np.log(p / (1 - p)), se / (p * (1 - p))
        lo[:, j] = 1 / (1 + np.exp(-(lg - z * se_lg)))
        hi[:, j] = 1 / (1 + np.exp(-(lg + z * se_lg)))
    return P, lo, hi


def _draw_effect(ax, xs, categorical, fit, lo, hi, color, label, slot, nslots):
    """One curve with band (numeric focal) or dodged points with error bars (categorical)."""
    if categorical:
        d = (slot - (nslots - 1) / 2) * min(0.12, 0.6 / nslots)
        ax.errorbar(np.arange(len(xs)) + d, fit, yerr=[fit - lo, hi - fit], fmt="o", ms=5,
                    capsize=3, color=color, label=label)
    else:
        ax.plot(xs, fit, color=color, label=label)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def effects(results, focal, by=None, scale="response", level=0.95, n=50, data=None, ax=None,
            at=None):
    """Effect plot: population-level predictions (random effects 0) along one variable.

    Predictions are made for a grid of the ``focal`` variable (``n`` points
    over its range if numeric, each level if categorical) with the other
    variables held at typical values: the mean of numeric variables and the
    reference (first) level of categorical ones (numeric variables used in
    ``C()`` count as categorical).  The design of the grid is built with the
    model's own formula, so transformations (``I(x**2)``, ``np.log(x)``,
    ``C(x)``) and interactions are respected.  Variables in an
    ``offset(...)`` term are held at their typical value too.

    Confidence bands are pointwise normal intervals for the linear predictor
    with ``se = sqrt(diag(X V X'))`` (``V``: covariance of the fixed effects);
    on the response scale of a GLMM the linear predictor and its limits are
    passed through the inverse link.  A numeric ``focal`` gives lines with
    bands, a categorical one points with error bars.

    For ``clmm`` results, ``scale="response"`` draws the predicted
    probability of each response category (one curve per category), with
    delta-method intervals (gradient in thresholds and fixed effects, built
    on the logit of the probability); with ``by`` there is one panel per
    value of ``by``.  ``scale="link"`` draws ``x' beta`` (relative to the
    thresholds, so 0 at the reference levels) with its band.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM, GLMM or ``clmm``.
    focal : str
        Column of the data whose effect is shown.
    by : str, optional
        Second variable for a two-way interaction: one curve per level if
        categorical, or at its 10 %, 50 % and 90 % quantiles if numeric.
    scale : {"response", "link"}
        Response (mean) scale or linear predictor; the same for an LMM.
    level : float
        Coverage of the confidence bands.
    n : int
        Grid points for a numeric ``focal``.
    data : pandas.DataFrame, optional
        Data giving the range of ``focal`` and the typical values (default:
        the rows used in the fit).  It needs every column the formula uses.
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        Draw into this axes; ``clmm`` category probabilities with ``by`` are drawn one
        panel per value of ``by``, so they take that many axes.
    at : sequence, optional
        The values of ``by`` to draw (numbers, or levels of a categorical ``by``)
        instead of its quantiles or all its levels.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> hsb = datasets.load("hsb82")
    >>> fit = mf.lmer("mAch ~ cses * sector + (cses | school)", hsb).fit()
    >>> fig = plots.effects(fit, "cses", by="sector")
    """
    if scale not in ("response", "link"):
        raise ValueError(f"scale must be 'response' or 'link', got {scale!r}")
    z = _z(level)
    model = results.model
    data = model.formula_info["data"] if data is None else pd.DataFrame(data)
    for name in (focal, by):
        if name is not None and name not in data.columns:
            raise ValueError(f"{name!r} is not a column of the data; columns: {list(data.columns)}")
    if by is not None and by == focal:
        raise ValueError("by must differ from focal")
    glmm = _is_glmm(results)
    probs = _is_ordinal(results) and scale == "response"
    cats = _categorical_vars(results, data)
    typical = {c: (_levels(data[c])[0] if c in cats else float(data[c].mean())) for c in data.columns}

    focal_cat = focal in cats
    xs = _levels(data[focal]) if focal_cat else \
        np.linspace(float(data[focal].min()), float(data[focal].max()), int(n))
    if at is not None and by is None:
        raise ValueError("at= gives values of by=; name the variable with by=")
    if by is None:
        by_vals, by_labels = [None], [None]
    elif at is not None:
        by_vals = list(at)
        if by in cats:
            unknown = [v for v in by_vals if v not in list(_levels(data[by]))]
            if unknown:
                raise ValueError(f"at= has values that are not levels of {by!r}: {unknown}")
            by_labels = [f"{by} = {v}" for v in by_vals]
        else:
            by_vals = [float(v) for v in by_vals]
            by_labels = [f"{by} = {v:.3g}" for v in by_vals]
    elif by in cats:
        by_vals = _levels(data[by])
        by_labels = [f"{by} = {v}" for v in by_vals]
    else:
        by_vals = list(np.unique(np.quantile(data[by].astype(float), [0.1, 0.5, 0.9])))
        by_labels = [f"{by} = {v:.3g}" for v in by_vals]

    if probs and by is not None:
        fig, axes = _panels(ax, len(by_vals), f"one per value of {by}", ncols=len(by_vals),
                            panel=(3.6, 3.2))
        if ax is None:
            for a in axes[1:]:
                a.sharey(axes[0])
    else:
        fig, ax = _axes(ax)
        axes = [ax] * len(by_vals)
    resp = str(model.endog_names)
    for i, (bv, blab, ax) in enumerate(zip(by_vals, by_labels, axes)):
        cols = {focal: list(xs)}
        if by is not None:
            cols[by] = [bv] * len(xs)
        X, _, off = model._new_design(_new_frame(data, typical, cols), re=False)
        if probs:               # one curve per response category
            P, lo, hi = _prob_band(results, X, off, z)
            for j, cat in enumerate(model.levels):
                _draw_effect(ax, xs, focal_cat, P[:, j], lo[:, j], hi[:, j], f"C{j}", str(cat),
                             j, len(model.levels))
            if by is not None:
                ax.set_title(blab, fontsize=10)
            continue
        fit, lo, hi = _link_band(results, X, off, z)
        if scale == "response" and glmm:
            inv = results._inverse_link
            fit, a, b = inv(fit), inv(lo), inv(hi)
            lo, hi = np.minimum(a, b), np.maximum(a, b)     # a decreasing link swaps the ends
        _draw_effect(ax, xs, focal_cat, fit, lo, hi, f"C{i}", blab, i, len(by_vals))

    for ax in dict.fromkeys(axes):      # each distinct axes once, in order
        if focal_cat:
            ax.set_xticks(np.arange(len(xs)))
            ax.set_xticklabels([str(v) for v in xs])
        ax.set_xlabel(focal)
    ax0 = axes[0]
    if probs:
        ax0.set_ylabel(f"Probability of {resp} category")
        if by is None:
            ax0.legend(title=resp, fontsize=8)
        else:                   # outside the last panel: the panels are full of intervals
            axes[-1].legend(title=resp, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        if scale == "link" and (glmm or _is_ordinal(results)):
            ylab = "Linear predictor" + (f" ({results.link_name} link)" if glmm else "")
        elif glmm:
            binomial = type(getattr(model, "family", None)).__name__ == "Binomial"
            ylab = "Predicted probability" if binomial else f"Predicted mean of {resp}"
        else:
            ylab = resp
        ax0.set_ylabel(ylab)
        if by is not None:
            ax0.legend(fontsize=8)
    if not (probs and by is not None):
        ax0.set_title(f"Effect of {focal}" + (f" by {by}" if by else ""), fontsize=10)
    else:
        fig.suptitle(f"Effect of {focal} by {by}", fontsize=11)
    return fig


def predictor_effects(results, predictors=None, scale="response", level=0.95, n=50, data=None,
                      ncols=3, figsize=None, ax=None):
    """Effect plots of every predictor, one panel each (R's ``plot(predictorEffects(fit))``).

    Each panel is :func:`effects` of one predictor of the fixed-effects formula, the other
    variables held at typical values.  A predictor in an interaction is drawn at values of
    the first variable it interacts with (``by=``: its levels, or its 10 %, 50 % and 90 %
    quantiles), as ``predictorEffects`` conditions on the interacting variables -- except
    for ``clmm`` category probabilities, which already draw one curve per category.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM, GLMM or ``clmm``.
    predictors : list of str, optional
        Columns of the data to show (default: every variable of the fixed effects, in the
        formula's order; variables only in ``offset()`` are held at typical values).
    scale, level, n, data
        As in :func:`effects`.
    ncols : int
        Panels per row of a new figure.
    figsize : tuple of float, optional
    ax : sequence of matplotlib.axes.Axes, optional
        Draw into these axes, one per predictor.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fit = mf.lmer("mAch ~ cses * sector + meanses + (cses | school)", hsb).fit()
    >>> fig = plots.predictor_effects(fit)   # cses by sector, sector by cses, meanses
    """
    frame = results.model.formula_info["data"] if data is None else pd.DataFrame(data)
    terms = _term_variables(results, frame)
    rhs = str(results.model.formula_info["parsed"].fixed_rhs)

    def first_use(v):            # the formula's order (the design may put factors first)
        m = re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", rhs)
        return m.start() if m else len(rhs)
    found = sorted(dict.fromkeys(v for t in terms for v in t), key=first_use)
    if predictors is None:
        predictors = found
    unknown = [p for p in predictors if p not in found]
    if unknown:
        raise ValueError(f"{unknown} are not variables of the fixed effects; they are {found}")
    if not predictors:
        raise ValueError("the fixed effects have no predictor to plot (intercept only)")
    probs = _is_ordinal(results) and scale == "response"
    fig, axes = _panels(ax, len(predictors), "one per predictor: " + ", ".join(predictors),
                        figsize, ncols=ncols, panel=(3.6, 3.0))
    for a, p in zip(axes, predictors):
        partners = [v for t in terms if p in t for v in t if v != p]
        by = None if probs or not partners else partners[0]
        effects(results, p, by=by, scale=scale, level=level, n=n, data=data, ax=a)
    return fig


def _term_variables(results, data):
    """The data columns each fixed-effects term uses (``C(x):np.log(z)`` -> ``(x, z)``),
    found as names in the term's factors; the response and the intercept use none."""
    spec = results.model._fixed_spec()
    resp = str(results.model.endog_names)
    columns = set(map(str, data.columns)) - {resp}
    out = []
    for term in spec.terms:
        code = " ".join(_factor_code(f) for f in term.factors)
        names = [w for w in dict.fromkeys(re.findall(r"[A-Za-z_][\w.]*", code)) if w in columns]
        if names:
            out.append(tuple(names))
    return out


def _factor_code(factor):
    """A term factor's source text (patsy's ``EvalFactor.name()``, formulaic's ``str``)."""
    name = getattr(factor, "name", None)
    return name() if callable(name) else str(factor)

