"""Diagnostic and effect plots for fitted mixed models (matplotlib).

matplotlib is an optional dependency (``pip install "mlmext[plots]"``): it is
imported when a plot is drawn, so ``import mlmext.plots`` works without it.
Every function returns the matplotlib ``Figure``; those that take ``ax``
draw into that axes when it is given.  Nothing calls ``plt.show()``.

>>> from mlmext import datasets, plots
>>> from mlmext.formula import api as mf
>>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
>>> fig = plots.caterpillar(res)
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["caterpillar", "resid_fitted", "qqplot_resid", "qqplot_ranef", "effects", "profile", "qic"]


def _pyplot():
    """matplotlib.pyplot, imported on first use (matplotlib is an optional extra)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("mlmext.plots needs matplotlib: pip install 'mlmext[plots]'") from err
    return plt


def _raw(results):
    """The results object behind a statsmodels wrapper (for isinstance checks)."""
    return getattr(results, "_results", results)


def _is_ordinal(results):
    from .ordinal import OrdinalMixedResults
    return isinstance(_raw(results), OrdinalMixedResults)


def _is_glmm(results):
    from .glmm import GLMMResults
    return isinstance(_raw(results), GLMMResults)


def _z(level):
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    return float(stats.norm.ppf(0.5 + level / 2))


def _axes(ax, figsize=None):
    """(figure, axes): the given axes, or a new single-panel figure."""
    if ax is not None:
        return ax.figure, ax
    return _pyplot().subplots(figsize=figsize)


def _grid(n, figsize=None, ncols=3, panel=(3.2, 2.8)):
    """Figure with ``n`` panels in rows of ``ncols``; unused cells are removed."""
    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, constrained_layout=True,
                             figsize=figsize or (panel[0] * ncols, panel[1] * nrows))
    axes = list(axes.ravel())
    for extra in axes[n:]:
        fig.delaxes(extra)
    return fig, axes[:n]


def _term_label(name):
    return "(Intercept)" if name == "Intercept" else name       # lme4's spelling


def _ranef_frames(results, group, condvar):
    """``results.ranef`` restricted to ``group`` (ValueError naming the available factors)."""
    try:
        re_ = results.ranef(condvar=condvar)
    except NotImplementedError:
        if not condvar:
            raise
        re_ = results.ranef(condvar=False)          # modes without intervals
    if group is None:
        return re_
    if group not in re_:
        raise ValueError(f"unknown grouping factor {group!r}; the model has {list(re_)}")
    return {group: re_[group]}


def _ppoints(n):
    """R's ``ppoints``: plotting positions of a normal QQ plot."""
    a = 3 / 8 if n <= 10 else 0.5
    return (np.arange(1, n + 1) - a) / (n + 1 - 2 * a)


def _qq(ax, values):
    """Normal QQ points of ``values`` and R's ``qqline`` (through the quartiles)."""
    y = np.sort(np.asarray(values, dtype=float))
    x = stats.norm.ppf(_ppoints(y.size))
    ax.plot(x, y, "o", ms=4)
    q1, q3 = np.quantile(y, [0.25, 0.75])
    z1, z3 = stats.norm.ppf([0.25, 0.75])
    ax.axline((z1, q1), slope=(q3 - q1) / (z3 - z1), color="0.4", lw=1, ls="--")
    ax.set_xlabel("Standard normal quantiles")


def _residuals(results):
    """Residuals and their axis label: Pearson residuals for GLMMs, raw ones for LMMs."""
    if _is_glmm(results):
        return np.asarray(results.resid_pearson, dtype=float), "Pearson residuals"
    return np.asarray(results.resid, dtype=float), "Residuals"  # clmm: NotImplementedError


# --------------------------------------------------------------------- random effects
def caterpillar(results, group=None, level=0.95, sort=True, figsize=None):
    """Caterpillar plot of the conditional modes (lme4's ``dotplot(ranef(fit, condVar = TRUE))``).

    One panel per grouping factor and random-effect term, with the levels of
    the factor on the y axis and each mode drawn with the interval
    ``mode +- z * condsd`` (``condsd``: conditional standard deviation).

    Parameters
    ----------
    results : MixedResults
        A fitted LMM, GLMM or ``clmm``.
    group : str, optional
        Only this grouping factor (default: all of them, one row of panels each).
    level : float
        Coverage of the normal intervals.
    sort : bool
        Order the levels by the mode of the factor's first term (smallest at
        the bottom); otherwise in the factor's level order.
    figsize : tuple of float, optional
        Figure size in inches; by default it grows with the number of levels.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    >>> fig = plots.caterpillar(res)             # panels "Subject: (Intercept)", "Subject: Days"
    """
    plt = _pyplot()
    z = _z(level)
    frames = _ranef_frames(results, group, condvar=True)
    ncols = max(df.shape[1] for df in frames.values())
    nlev = [df.shape[0] for df in frames.values()]
    if figsize is None:
        figsize = (3.4 * ncols, min(0.9 + sum(0.17 * m + 0.8 for m in nlev), 60))
    fig, axes = plt.subplots(len(frames), ncols, squeeze=False, figsize=figsize,
                             constrained_layout=True, gridspec_kw={"height_ratios": nlev})
    for row, (name, df) in zip(axes, frames.items()):
        sd = df.attrs.get("condsd")
        order = np.argsort(df.iloc[:, 0].to_numpy(), kind="stable") if sort else np.arange(len(df))
        labels = [str(v) for v in df.index[order]]
        ypos = np.arange(len(df))
        for j, ax in enumerate(row):
            if j >= df.shape[1]:
                fig.delaxes(ax)
                continue
            col = df.columns[j]
            mode = df[col].to_numpy()[order]
            xerr = None if sd is None else z * sd[col].to_numpy()[order]
            ax.axvline(0.0, color="0.6", lw=0.8)
            ax.errorbar(mode, ypos, xerr=xerr, fmt="o", ms=3.5, lw=1, capsize=0)
            ax.set_yticks(ypos)
            ax.set_yticklabels(labels, fontsize=8 if len(df) <= 40 else 5)
            ax.set_ylim(-0.7, len(df) - 0.3)
            ax.set_title(f"{name}: {_term_label(col)}", fontsize=10)
            if j > 0:                     # the level names are those of the row's first panel
                ax.tick_params(labelleft=False)
    return fig


def qqplot_ranef(results, group=None, figsize=None):
    """Normal QQ plots of the conditional modes, one panel per grouping factor and term.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM, GLMM or ``clmm``.
    group : str, optional
        Only this grouping factor.
    figsize : tuple of float, optional

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.qqplot_ranef(res)            # one panel per column of res.ranef()["Subject"]
    """
    frames = _ranef_frames(results, group, condvar=False)
    panels = [(name, col, df[col]) for name, df in frames.items() for col in df.columns]
    fig, axes = _grid(len(panels), figsize)
    for ax, (name, col, vals) in zip(axes, panels):
        _qq(ax, vals)
        ax.set_title(f"{name}: {_term_label(col)}", fontsize=10)
        ax.set_ylabel("Conditional mode")
    return fig


# --------------------------------------------------------------------- residuals
def resid_fitted(results, lowess=True, ax=None):
    """Residuals against fitted values (lme4's ``plot(fit)``).

    The fitted values include the random effects.  For GLMMs the residuals
    are Pearson residuals (``results.resid_pearson``) and the fitted values
    are on the response scale.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM or GLMM (ordinal models have no residuals:
        ``NotImplementedError``).
    lowess : bool
        Add a lowess smoother (statsmodels' ``lowess``, ``frac=2/3`` as R's).
    ax : matplotlib.axes.Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.resid_fitted(res)
    """
    r, label = _residuals(results)
    f = np.asarray(results.fittedvalues, dtype=float)
    fig, ax = _axes(ax)
    ax.scatter(f, r, s=12, alpha=0.7)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    if lowess:
        from statsmodels.nonparametric.smoothers_lowess import lowess as _lowess
        sm = _lowess(r, f, frac=2 / 3, it=3)
        ax.plot(sm[:, 0], sm[:, 1], color="C3", lw=1.5)
    ax.set_xlabel("Fitted values")
    ax.set_ylabel(label)
    return fig


def qqplot_resid(results, ax=None):
    """Normal QQ plot of the residuals with R's ``qqline`` reference line.

    Points are the sorted residuals (Pearson residuals for GLMMs) against
    normal quantiles at R's ``ppoints`` positions; the dashed line passes
    through the first and third quartiles.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM or GLMM.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.qqplot_resid(res)
    """
    r, label = _residuals(results)
    fig, ax = _axes(ax)
    _qq(ax, r)
    ax.set_ylabel(label)
    return fig


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
    from .ordinal import category_probabilities
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


def effects(results, focal, by=None, scale="response", level=0.95, n=50, data=None, ax=None):
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
    ax : matplotlib.axes.Axes, optional
        Draw into this axes (not with ``by`` for ``clmm`` category
        probabilities, which need one panel per value of ``by``).

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
    if probs and by is not None and ax is not None:
        raise ValueError("clmm category probabilities with by= need one panel per value of by: "
                         "leave ax=None")
    cats = _categorical_vars(results, data)
    typical = {c: (_levels(data[c])[0] if c in cats else float(data[c].mean())) for c in data.columns}

    focal_cat = focal in cats
    xs = _levels(data[focal]) if focal_cat else \
        np.linspace(float(data[focal].min()), float(data[focal].max()), int(n))
    if by is None:
        by_vals, by_labels = [None], [None]
    elif by in cats:
        by_vals = _levels(data[by])
        by_labels = [f"{by} = {v}" for v in by_vals]
    else:
        by_vals = list(np.unique(np.quantile(data[by].astype(float), [0.1, 0.5, 0.9])))
        by_labels = [f"{by} = {v:.3g}" for v in by_vals]

    if probs and by is not None:
        fig, axes = _grid(len(by_vals), ncols=len(by_vals), panel=(3.6, 3.2))
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


# --------------------------------------------------------------------- profile
def profile(results, params=None, figsize=None, **profile_kwargs):
    """Profile zeta plots (lme4's ``xyplot(profile(fit))``), one panel per parameter.

    ``zeta = sign(x - x_hat) sqrt(deviance(x) - deviance(x_hat))`` is drawn
    against the parameter value; it is 0 at the estimate, and a straight line
    means a quadratic log-likelihood.  Dashed lines at ``+-1.96`` mark where
    the profile crosses the ends of the 95 % profile interval.  As in lme4,
    the profile is that of the maximum-likelihood fit (REML fits are refitted
    by ML), so zeta is 0 at the ML estimates; a GLMM's is that of its own
    deviance (Laplace or adaptive Gauss-Hermite, as fitted).

    Parameters
    ----------
    results : MixedResults or pandas.DataFrame
        A fitted LMM or GLMM (``results.profile()`` is called; clmm fits
        raise its ``NotImplementedError``), or a profile already computed: a
        DataFrame with columns ``parameter``, ``value``, ``zeta``.
    params : list of str, optional
        Parameters to show (names as in the profile, e.g. ``"Days"``,
        ``"sd_Days|Subject"``, ``"sigma"``); all by default.
    figsize : tuple of float, optional
    **profile_kwargs
        Passed to ``results.profile`` (``alpha``, ``npoints``, ``names``).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fit = mf.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("dyestuff")).fit()
    >>> fig = plots.profile(fit)                   # Intercept, sd_Intercept|Batch, sigma
    """
    if isinstance(results, pd.DataFrame):
        prof = results
        if params is not None:
            prof = prof[prof["parameter"].isin(list(params))]
    else:
        prof = results.profile(cols=params, **profile_kwargs)
    names = list(params) if params is not None else list(pd.unique(prof["parameter"]))
    names = [p for p in names if (prof["parameter"] == p).any()]
    if not names:
        raise ValueError("the profile has no parameter to plot")
    z = _z(0.95)
    fig, axes = _grid(len(names), figsize)
    for i, (ax, name) in enumerate(zip(axes, names)):
        d = prof[prof["parameter"] == name].sort_values("value")
        ax.plot(d["value"], d["zeta"], "o-", ms=3.5, lw=1.2)
        for h in (-z, z):
            ax.axhline(h, color="0.5", lw=0.8, ls="--")
        ax.axhline(0.0, color="0.8", lw=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("value")
        if i % 3 == 0:
            ax.set_ylabel("zeta")
    return fig


# --------------------------------------------------------------------- GEE
def qic(selection, criteria=("QIC", "QICu"), ax=None):
    """Dot plot of a GEE working-correlation selection (:func:`mlmext.gee.gee_select`).

    One marker per working correlation per criterion, structures on the x
    axis.  The best structure (``selection.best``, lowest QIC among unflagged
    fits) is labelled "best by QIC", also when other criteria are drawn, and
    its tick label is bold; flagged fits (not converged, correlation outside
    [-1, 1], ...) get hollow markers and grey tick labels; failed fits (no
    QIC) are left out and named in a note.

    Parameters
    ----------
    selection : GEESelection
        What ``gee_select`` returns.
    criteria : sequence of str
        Columns of ``selection.table`` to plot (``"QIC"``, ``"QICu"``,
        ``"CIC"``, ``"dQIC"``, ...).
    ax : matplotlib.axes.Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import statsmodels.api as sm
    >>> sel = mf.gee_select("Weight ~ Time + Cu", "Pig", datasets.load("dietox"),
    ...                     sm.families.Gaussian(), time="Time")
    >>> fig = plots.qic(sel)
    """
    if isinstance(criteria, str):
        criteria = (criteria,)
    table = selection.table
    missing = [c for c in criteria if c not in table.columns]
    if missing:
        raise ValueError(f"unknown criteria {missing}; the table has {list(table.columns)}")
    vals = table[list(criteria)].astype(float)
    ok = np.isfinite(vals.to_numpy()).all(axis=1)
    failed = [str(s) for s in table.index[~ok]]
    tab = table[ok]
    flagged = (tab["flag"].astype(str) != "").to_numpy() if "flag" in tab else np.zeros(len(tab), bool)
    names = [str(s) for s in tab.index]
    fig, ax = _axes(ax)
    pos = np.arange(len(names), dtype=float)
    markers = "osD^v<>"
    for i, crit in enumerate(criteria):
        color = f"C{i}"
        d = (i - (len(criteria) - 1) / 2) * 0.12
        face = [("none" if f else color) for f in flagged]
        ax.scatter(pos + d, vals.loc[ok, crit], marker=markers[i % len(markers)], s=40,
                   facecolors=face, edgecolors=color, label=crit, zorder=3)
    ax.set_xticks(pos)
    # long structure names collide side by side: slant them when there are several
    slant = len(names) > 3 or max(map(len, names), default=0) * len(names) > 40
    ax.set_xticklabels(names, rotation=20 if slant else 0, ha="right" if slant else "center")
    for lab, f, name in zip(ax.get_xticklabels(), flagged, names):
        if f:
            lab.set_color("0.5")
        if name == selection.best:
            lab.set_fontweight("bold")
    if selection.best in names:
        b = names.index(selection.best)
        ax.annotate("best by QIC", (pos[b], vals.loc[ok, list(criteria)].iloc[b].min()),
                    xytext=(0, -14), textcoords="offset points", ha="center", fontsize=9)
    notes = []
    if flagged.any():
        notes.append("hollow: flagged fit")
    if failed:
        notes.append("not shown (failed): " + ", ".join(failed))
    if notes:
        ax.text(0.01, 0.99, "; ".join(notes), transform=ax.transAxes, va="top", fontsize=8,
                color="0.35")
    ax.set_xlabel("Working correlation")
    ax.set_ylabel(" / ".join(criteria))
    ax.legend(fontsize=8)
    ax.margins(x=0.15, y=0.15)
    return fig
