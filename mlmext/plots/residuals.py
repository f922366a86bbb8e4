"""Residuals against fitted values and their normal QQ plot."""
from __future__ import annotations


import numpy as np

from ._common import (_axes, _qq, _residuals)


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
