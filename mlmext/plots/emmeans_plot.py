"""The plot of estimated marginal means (emmeans' ``plot``)."""
from __future__ import annotations

from ..inference import EMMeans
from ._common import _axes


def emmeans(emm, ax=None):
    """Estimated marginal means with their confidence intervals, one row per mean.

    Parameters
    ----------
    emm : mlmext.inference.EMMeans
        The table of ``res.emmeans(...)``.
    ax : matplotlib.axes.Axes, optional
        Draw into this Axes (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plots.emmeans(res.emmeans("Product", by="Information"))
    """
    if not isinstance(emm, EMMeans):
        raise ValueError(f"emm must be the EMMeans table of res.emmeans(...), got "
                         f"{type(emm).__name__}")
    if ax is not None:
        _, ax = _axes(ax)          # one Axes (ValueError for a sequence of several)
    return emm.plot(ax=ax)
