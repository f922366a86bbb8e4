"""Random effects: caterpillar plots and normal QQ plots of the conditional modes."""
from __future__ import annotations


import numpy as np

from ._common import _panels, _pyplot, _qq, _ranef_frames, _term_label, _z


# --------------------------------------------------------------------- random effects
def caterpillar(results, group=None, level=0.95, sort=True, figsize=None, max_levels=60,
                ax=None):
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
        Figure size in inches; by default it grows with the number of levels shown.
    max_levels : int or None
        At most this many levels per factor: with ``sort``, the ``max_levels // 2`` lowest
        and highest modes (a dashed line marks the levels left out), else the first ones;
        the panel title says how many of how many are shown.  None: all of them.
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        Draw into these axes, one per panel (grouping factor and term, in the order of
        ``results.ranef()``); not with ``figsize`` (TypeError).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    >>> fig = plots.caterpillar(res)             # panels "Subject: (Intercept)", "Subject: Days"
    """
    z = _z(level)
    frames = _ranef_frames(results, group, condvar=True)
    shown = {name: _shown_levels(df, sort, max_levels) for name, df in frames.items()}
    panels = [(name, j) for name, df in frames.items() for j in range(df.shape[1])]
    if ax is None:
        fig, axes = _caterpillar_grid(frames, shown, figsize)
    else:
        fig, axes = _panels(ax, len(panels), "one per grouping factor and term", figsize)
    for a, (name, j) in zip(axes, panels):
        df = frames[name]
        sd = df.attrs.get("condsd")
        order, gap = shown[name]
        ypos = np.arange(len(order))
        what = "" if len(order) == len(df) else (
            f" ({len(order) // 2} lowest, {len(order) - len(order) // 2} highest of {len(df):,} levels)"
            if gap is not None else f" (first {len(order)} of {len(df):,} levels)")
        col = df.columns[j]
        mode = df[col].to_numpy()[order]
        xerr = None if sd is None else z * sd[col].to_numpy()[order]
        a.axvline(0.0, color="0.6", lw=0.8)
        a.errorbar(mode, ypos, xerr=xerr, fmt="o", ms=3.5, lw=1, capsize=0)
        a.set_yticks(ypos)
        a.set_yticklabels([str(v) for v in df.index[order]], fontsize=8 if len(order) <= 40 else 5)
        a.set_ylim(-0.7, len(order) - 0.3)
        if gap is not None:
            a.axhline(gap - 0.5, color="0.5", lw=0.8, ls="--")
        a.set_title(f"{name}: {_term_label(col)}{what}", fontsize=10)
        if j > 0 and ax is None:         # our grid: the row's first panel names the levels
            a.tick_params(labelleft=False)
    return fig


def _caterpillar_grid(frames, shown, figsize):
    """A row of panels per grouping factor, row heights following the levels shown; the
    axes in panel order (cells of factors with fewer terms than the widest are removed)."""
    plt = _pyplot()
    ncols = max(df.shape[1] for df in frames.values())
    nlev = [len(shown[name][0]) for name in frames]
    if figsize is None:
        figsize = (3.4 * ncols, min(0.9 + sum(0.17 * m + 0.8 for m in nlev), 60))
    fig, grid = plt.subplots(len(frames), ncols, squeeze=False, figsize=figsize,
                             constrained_layout=True, gridspec_kw={"height_ratios": nlev})
    axes = []
    for row, df in zip(grid, frames.values()):
        axes += list(row[:df.shape[1]])
        for extra in row[df.shape[1]:]:
            fig.delaxes(extra)
    return fig, axes


def _shown_levels(df, sort, max_levels):
    """(row positions to draw, position of the gap or None): all levels, or the extremes of
    the first term's modes (sorted), or the first ``max_levels`` (unsorted)."""
    n = len(df)
    order = np.argsort(df.iloc[:, 0].to_numpy(), kind="stable") if sort else np.arange(n)
    if max_levels is None or n <= max_levels:
        return order, None
    if not sort:
        return order[:max_levels], None
    k = max_levels // 2
    return np.concatenate([order[:k], order[n - (max_levels - k):]]), k


def qqplot_ranef(results, group=None, figsize=None, ax=None):
    """Normal QQ plots of the conditional modes, one panel per grouping factor and term.

    Parameters
    ----------
    results : MixedResults
        A fitted LMM, GLMM or ``clmm``.
    group : str, optional
        Only this grouping factor.
    figsize : tuple of float, optional
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        Draw into these axes, one per panel (grouping factor and term).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.qqplot_ranef(res)            # one panel per column of res.ranef()["Subject"]
    """
    frames = _ranef_frames(results, group, condvar=False)
    panels = [(name, col, df[col]) for name, df in frames.items() for col in df.columns]
    fig, axes = _panels(ax, len(panels), "one per grouping factor and term", figsize)
    for a, (name, col, vals) in zip(axes, panels):
        _qq(a, vals)
        a.set_title(f"{name}: {_term_label(col)}", fontsize=10)
        a.set_ylabel("Conditional mode")
    return fig
