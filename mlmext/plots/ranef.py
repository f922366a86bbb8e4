"""Random effects: caterpillar plots and normal QQ plots of the conditional modes."""
from __future__ import annotations


import numpy as np

from ._common import (_grid, _pyplot, _qq, _ranef_frames, _term_label, _z)


# --------------------------------------------------------------------- random effects
def caterpillar(results, group=None, level=0.95, sort=True, figsize=None, max_levels=60):
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
    shown = {name: _shown_levels(df, sort, max_levels) for name, df in frames.items()}
    nlev = [len(shown[name][0]) for name in frames]
    if figsize is None:
        figsize = (3.4 * ncols, min(0.9 + sum(0.17 * m + 0.8 for m in nlev), 60))
    fig, axes = plt.subplots(len(frames), ncols, squeeze=False, figsize=figsize,
                             constrained_layout=True, gridspec_kw={"height_ratios": nlev})
    for row, (name, df) in zip(axes, frames.items()):
        sd = df.attrs.get("condsd")
        order, gap = shown[name]
        labels = [str(v) for v in df.index[order]]
        ypos = np.arange(len(order))
        what = "" if len(order) == len(df) else (
            f" ({len(order) // 2} lowest, {len(order) - len(order) // 2} highest of {len(df):,} levels)"
            if gap is not None else f" (first {len(order)} of {len(df):,} levels)")
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
            ax.set_yticklabels(labels, fontsize=8 if len(order) <= 40 else 5)
            ax.set_ylim(-0.7, len(order) - 0.3)
            if gap is not None:
                ax.axhline(gap - 0.5, color="0.5", lw=0.8, ls="--")
            ax.set_title(f"{name}: {_term_label(col)}{what}", fontsize=10)
            if j > 0:                     # the level names are those of the row's first panel
                ax.tick_params(labelleft=False)
    return fig


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
