"""Diagnostic and effect plots for fitted mixed models (matplotlib).

matplotlib is an optional dependency (``pip install "mlmext[plots]"``): it is
imported when a plot is drawn, so ``import mlmext.plots`` works without it.
Every function returns the matplotlib ``Figure`` and takes ``ax=``: an Axes to draw
into, or for plots of several panels a sequence of Axes, one per panel (the error
names how many are needed).  Nothing calls ``plt.show()``.

>>> from mlmext import datasets, plots
>>> from mlmext.formula import api as mf
>>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
>>> fig = plots.caterpillar(res)
"""
from .effect_displays import effects, predictor_effects
from .influence_plot import influence_plot
from .emmeans_plot import emmeans
from .profiles import profile
from .qic_plot import qic
from .ranef import caterpillar, qqplot_ranef
from .residuals import qqplot_resid, resid_fitted

__all__ = ["caterpillar", "resid_fitted", "qqplot_resid", "qqplot_ranef", "effects",
           "predictor_effects", "profile", "qic", "influence_plot", "emmeans"]
