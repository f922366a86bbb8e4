"""Dot plot of a case-deletion diagnostic or a leverage, with its cut-off (HLMdiag's
``dotplot_diag``)."""
from __future__ import annotations


import numpy as np
import pandas as pd

from ._common import _axes

_TWO_SIDED = ("covratio",)          # and every rvc_ column: a change either way is unusual
_LABELLED = 40                      # tick labels for every row up to this many rows
_NAMED = 5                          # beyond that, the unusual points named (as HLMdiag's top 5)


def internal_cutoff(values, which):
    """HLMdiag's ``internal_cutoff``: ``Q3 + 3 IQR``, and ``(Q1 - 3 IQR, Q3 + 3 IQR)`` for
    COVRATIO and relative variance changes (R's default quantiles, numpy's linear ones)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    q1, q3 = np.quantile(x, [0.25, 0.75])
    iqr = q3 - q1
    if which in _TWO_SIDED or str(which).startswith("rvc"):
        return (q1 - 3 * iqr, q3 + 3 * iqr)
    return (-np.inf, q3 + 3 * iqr)


def influence_plot(results, which="cooks_d", cutoff="internal", group=None, method="one-step",
                   ax=None):
    """Dot plot of one influence diagnostic, sorted, with a cut-off line (HLMdiag's
    ``dotplot_diag``).

    The values run along the x axis, one row per deleted level (or observation), the largest
    at the top; values beyond the cut-off are drawn as red triangles.  Up to 40 rows each is named on the
    y axis; beyond that the five points furthest beyond the cut-off are labelled.

    Parameters
    ----------
    results : MixedResults or pandas.DataFrame or pandas.Series
        An LMM fit (its :meth:`influence` table is computed with ``group`` and ``method``),
        or a table :meth:`influence` or :meth:`leverage` returned, or one column of it.
    which : str
        The column to plot: ``"cooks_d"``, ``"mdffits"``, ``"covtrace"``, ``"covratio"``,
        an ``"rvc_..."`` column of a refit table, a fixed effect's change, or a leverage
        column (``"overall"``, ``"fixef"``, ``"ranef"``, ``"ranef.uc"``) of a leverage table.
    cutoff : "internal", float, (float, float) or None
        ``"internal"`` (default) is HLMdiag's internal scaling: the upper quartile plus three
        interquartile ranges, and for COVRATIO and RVC also the lower quartile minus three
        (values outside either line are unusual).  A number is an upper cut-off, a pair
        (lower, upper) two; None draws no line.
    group, method
        Passed to :meth:`influence` when ``results`` is a fit; with a table, TypeError.
    ax : matplotlib.axes.Axes, optional
        Draw into this axes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.influence_plot(res, "cooks_d", group="Subject")
    >>> fig = plots.influence_plot(res.leverage("Subject"), "overall")
    """
    if isinstance(results, (pd.Series, pd.DataFrame)) and (group is not None or method != "one-step"):
        # (they were ignored: the table was drawn as it came)
        raise TypeError("group= and method= are for a fit (they compute its influence table); "
                        "this is a table already: give the fit, or compute the table with them")
    if isinstance(results, pd.Series):
        values = results
        which = results.name if results.name is not None else which
    else:
        table = results if isinstance(results, pd.DataFrame) else results.influence(group=group, method=method)
        if which not in table.columns:
            raise ValueError(f"unknown diagnostic {which!r}; the table has {list(table.columns)}")
        values = table[which]
    values = values.astype(float).sort_values(kind="stable")
    if isinstance(cutoff, str):
        if cutoff != "internal":
            raise ValueError(f"cutoff must be 'internal', a number, a (lower, upper) pair or None; got {cutoff!r}")
        lo, hi = internal_cutoff(values, which)
    elif cutoff is None:
        lo, hi = -np.inf, np.inf
    elif np.ndim(cutoff) == 0:
        lo, hi = -np.inf, float(cutoff)
    elif np.shape(cutoff) == (2,):
        lo, hi = (float(c) for c in cutoff)
    else:
        raise ValueError(f"cutoff must be 'internal', a number, a (lower, upper) pair or None; got {cutoff!r}")
    v = values.to_numpy()
    pos = np.arange(1, v.size + 1, dtype=float)
    out = (v < lo) | (v > hi)
    fig, ax = _axes(ax)
    ax.plot(v[~out], pos[~out], "o", color="C0", ms=4, ls="none")
    if out.any():
        ax.plot(v[out], pos[out], "^", color="C3", ms=6, ls="none")
    for c in (lo, hi):
        if np.isfinite(c):
            ax.axvline(c, color="C3", lw=1)
    labels = [str(k) for k in values.index]
    if v.size <= _LABELLED:
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=7 if v.size > 20 else None)
    else:                            # too many rows to name: name the most unusual ones
        ax.set_yticks([])
        beyond = np.flatnonzero(out)
        excess = np.maximum(v[beyond] - hi, lo - v[beyond])
        for i in beyond[np.argsort(-excess, kind="stable")[:_NAMED]]:
            ax.annotate(labels[i], (v[i], pos[i]), xytext=(3, -3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(str(which))
    if values.index.name:
        ax.set_ylabel(str(values.index.name))
    return fig
