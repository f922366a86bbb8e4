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
from .effect_displays import effects
from .profiles import profile
from .qic_plot import qic
from .ranef import caterpillar, qqplot_ranef
from .residuals import qqplot_resid, resid_fitted

__all__ = ["caterpillar", "resid_fitted", "qqplot_resid", "qqplot_ranef", "effects", "profile", "qic"]
