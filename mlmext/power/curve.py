"""Power over growing subsets of the design (simr's ``powerCurve``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._progress import Progress
from ..inference import power_sim
from .make import formula_design, make_lmer

__all__ = ["power_curve", "PowerCurve"]


class PowerCurve(pd.DataFrame):
    """The table of :func:`power_curve`: one row per break, with :meth:`plot`.

    Columns ``break``, ``n_levels`` (levels of ``along``; rows per level with ``within``),
    ``nobs``, ``power``, ``lower``, ``upper`` (Clopper-Pearson interval, as simr),
    ``successes``, ``nsim`` (successful refits), ``failed`` and ``warned`` (simulations whose
    refit or test warned; see :class:`~mlmext.inference.PowerSimResults`).
    """

    _metadata = ["term", "along", "within", "test", "alpha", "conf_level"]

    @property
    def _constructor(self):
        return PowerCurve

    def plot(self, ax=None):
        """Power against the break with its confidence interval (simr's ``plot(powerCurve)``).

        Returns the matplotlib ``Figure``; ``ax`` draws into an existing Axes.  (The table's
        pandas plotting stays available as ``pandas.DataFrame.plot(curve)``.)
        """
        import matplotlib.pyplot as plt
        fig, ax = (plt.subplots() if ax is None else (ax.figure, ax))
        x = self["break"].to_numpy(dtype=float)
        p = self["power"].to_numpy(dtype=float)
        err = np.vstack([p - self["lower"].to_numpy(), self["upper"].to_numpy() - p])
        ax.errorbar(x, p, yerr=err, marker="o", capsize=3, color="k")
        ax.axhline(0.8, color="grey", ls="--", lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        what = (f"levels of {self.along}" if self.along is not None
                else f"rows per level of {self.within}")
        ax.set_xlabel(f"number of {what}")
        ax.set_ylabel(f"power ({100 * self.conf_level:g}% CI)")
        ax.set_title(f"Power for {self.term!r} ({self.test})")
        return fig


def _keep(data, along, within, k):
    if along is not None:
        levels = pd.unique(data[along])
        return data[along].isin(levels[:k]).to_numpy()
    return (data.groupby(within, sort=False, dropna=False).cumcount() < k).to_numpy()


def power_curve(res, term, along=None, within=None, breaks=None, effect=None, nsim=100,
                alpha=0.05, test="satterthwaite", seed=None, conf_level=0.95, progress=False):
    """Power over growing subsets of the design (simr's ``powerCurve``).

    For each break the design is cut down (with ``along``, to the first ``k`` levels of a
    grouping factor in order of appearance; with ``within``, to the first ``k`` rows of
    each level), a model at the parameters of ``res`` is built on it with
    :func:`make_lmer` and :meth:`power_sim` runs on it.  Fits (``res.fe_params``,
    ``res.theta``, ``res.sigma``) and :func:`make_lmer` results both work.

    Parameters
    ----------
    res : LMMResults
        A linear mixed model fitted from a formula, or made by :func:`make_lmer`.
    term : str
        The fixed effect to test (a column of the design).
    along, within : str
        A column of the data; exactly one of them.
    breaks : sequence of int, optional
        Numbers of levels (rows per level with ``within``); by default up to 10 values
        evenly spaced from 3 (1 with ``within``) to all.
    effect, nsim, alpha, test, conf_level
        As :meth:`power_sim`.
    seed : int or numpy.random.Generator, optional
        One generator serves all breaks in turn: each break draws the response of its
        :func:`make_lmer` model and then its ``nsim`` simulations.
    progress : bool
        A progress bar over the breaks.

    Returns
    -------
    PowerCurve
    """
    model, data, formula = formula_design(res, "power_curve")
    names = list(model.exog_names)
    if term not in names:
        raise ValueError(f"unknown fixed effect {term!r}; the fixed effects are {names}")
    if (along is None) == (within is None):
        raise ValueError("give exactly one of along= (a grouping factor) and within=")
    col = along if along is not None else within
    if col not in data.columns:
        raise ValueError(f"{'along' if along is not None else 'within'}={col!r} is not a "
                         f"column of the data ({list(data.columns)})")
    top = (len(pd.unique(data[along])) if along is not None
           else int(data.groupby(within, sort=False, dropna=False).size().max()))
    if breaks is None:
        lo = min(3 if along is not None else 1, top)
        breaks = np.unique(np.round(np.linspace(lo, top, min(10, top - lo + 1))).astype(int))
    breaks = [int(b) for b in np.atleast_1d(breaks)]
    bad = [b for b in breaks if not 1 <= b <= top]
    if bad:
        raise ValueError(f"breaks {bad} are outside 1..{top} (the "
                         f"{'levels of ' + along if along is not None else 'most rows per level of ' + within})")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    fixef = pd.Series(np.asarray(res.fe_params, dtype=float), index=names)
    bar = Progress(len(breaks), progress, "power curve ")
    rows = []
    for b in breaks:
        sub = data.loc[_keep(data, along, within, b)]
        made = make_lmer(formula, sub, fixef, theta=res.theta, sigma=res.sigma,
                         reml=bool(res.reml), seed=rng)
        ps = power_sim(made, term, effect=effect, nsim=nsim, alpha=alpha, test=test, seed=rng,
                       conf_level=conf_level)
        nlev = (len(pd.unique(sub[along])) if along is not None else b)
        rows.append((b, nlev, int(made.nobs), ps.power, *ps.conf_int, ps.successes, ps.nsim,
                     ps.failed, ps.warned))
        bar.step()
    out = PowerCurve(rows, columns=["break", "n_levels", "nobs", "power", "lower", "upper",
                                    "successes", "nsim", "failed", "warned"])
    out.term, out.along, out.within, out.test = term, along, within, ps.test
    out.alpha, out.conf_level = alpha, conf_level
    return out
