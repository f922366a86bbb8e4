"""GEE working-correlation selection: QIC by candidate structure."""
from __future__ import annotations


import numpy as np

from ._common import _axes


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
    off = _flagged_off_scale(ax, vals.loc[ok, list(criteria)].to_numpy(), flagged, names)
    if off:
        notes.append("off the scale (flagged): " + ", ".join(off))
    if failed:
        notes.append("not shown (failed): " + ", ".join(failed))
    if notes:
        ax.text(0.01, 0.99, "; ".join(notes), transform=ax.transAxes, va="top", fontsize=8,
                color="0.35")
    ax.set_xlabel("Working correlation")
    ax.set_ylabel(" / ".join(criteria))
    # above the axes, in a row: inside, it would cover points of some structure
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(criteria),
              frameon=False, borderaxespad=0.2)
    ax.margins(x=0.15, y=0.15 if not off else 0)
    return fig


def _flagged_off_scale(ax, v, flagged, names, far=3.0):
    """Keep the scale on the unflagged fits: when a flagged fit lies more than ``far`` times
    their spread away, the y axis shows the unflagged range and the far points sit at its edge
    (triangles), named with their values.  Returns those names (empty: nothing moved)."""
    good = v[~flagged]
    if not flagged.any() or good.size == 0:
        return []
    lo, hi = float(good.min()), float(good.max())
    span = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
    outside = flagged[:, None] & ((v > hi + far * span) | (v < lo - far * span))
    if not outside.any():
        return []
    ylo, yhi = lo - 0.25 * span, hi + 0.25 * span
    ax.set_ylim(ylo, yhi)
    out = []
    for i, j in zip(*np.nonzero(outside)):
        up = v[i, j] > hi
        ax.scatter([i], [yhi if up else ylo], marker="^" if up else "v", s=50, facecolors="none",
                   edgecolors=f"C{j}", clip_on=False, zorder=4)
        out.append(f"{names[i]} ({v[i, j]:.4g})")
    return list(dict.fromkeys(out))
