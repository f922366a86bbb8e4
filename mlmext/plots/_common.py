"""What the plots share: matplotlib on first use, axes and grids, the random effects and
residuals of a result, normal quantiles."""
from __future__ import annotations


import numpy as np
from scipy import stats

from ..glmm import GLMMResults
from ..ordinal import OrdinalMixedResults


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
    return isinstance(_raw(results), OrdinalMixedResults)


def _is_glmm(results):
    return isinstance(_raw(results), GLMMResults)


def _z(level):
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    return float(stats.norm.ppf(0.5 + level / 2))


def _axes(ax, figsize=None):
    """(figure, axes): the given axes, or a new single-panel figure."""
    if ax is not None:
        fig, axes = _panels(ax, 1, "one axes")
        return fig, axes[0]
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


def _panels(ax, n, what, figsize=None, ncols=3, panel=(3.2, 2.8)):
    """(figure, ``n`` axes): a new grid, or the caller's ``ax`` -- one Axes per panel, in
    order (a single Axes when the plot has one panel, else a list or array of them)."""
    if ax is None:
        return _grid(n, figsize, ncols, panel)
    if figsize is not None:            # (it was ignored: the caller's axes keep their figure's)
        raise TypeError("figsize= sizes a new figure; with ax= the axes' figure is drawn into: "
                        "give one of them")
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n:
        raise ValueError(f"this plot draws {n} panel{'s' if n != 1 else ''} ({what}); "
                         f"ax= has {len(axes)}")
    return axes[0].figure, axes


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
