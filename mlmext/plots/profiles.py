"""Profile zeta plots (lme4's xyplot of a profile)."""
from __future__ import annotations


import pandas as pd

from ._common import _panels, _z


# --------------------------------------------------------------------- profile
def profile(results, params=None, figsize=None, ax=None, **profile_kwargs):
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
    ax : matplotlib.axes.Axes or sequence of Axes, optional
        Draw into these axes, one per parameter.
    **profile_kwargs
        Passed to ``results.profile`` (``alpha``, ``npoints``, ``names``); with a profile
        table, TypeError.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fit = mf.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("dyestuff")).fit()
    >>> fig = plots.profile(fit)                   # Intercept, sd_Intercept|Batch, sigma
    """
    if isinstance(results, pd.DataFrame):
        if profile_kwargs:             # (they were ignored: the table was drawn as it came)
            raise TypeError(f"{sorted(profile_kwargs)} are for results.profile(); this is a "
                            "profile already: give the fit, or compute the profile with them")
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
    fig, axes = _panels(ax, len(names), "one per parameter: " + ", ".join(names), figsize)
    for i, (a, name) in enumerate(zip(axes, names)):
        d = prof[prof["parameter"] == name].sort_values("value")
        a.plot(d["value"], d["zeta"], "o-", ms=3.5, lw=1.2)
        for h in (-z, z):
            a.axhline(h, color="0.5", lw=0.8, ls="--")
        a.axhline(0.0, color="0.8", lw=0.6)
        a.set_title(name, fontsize=10)
        a.set_xlabel("value")
        if i % 3 == 0 or ax is not None:
            a.set_ylabel("zeta")
    return fig
