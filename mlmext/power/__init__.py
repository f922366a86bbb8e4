"""Power analysis by simulation, as R's simr.

* :mod:`.make` -- :func:`make_lmer`: a linear mixed model at specified parameters (fixed
  effects, random-effects covariances, residual sd) on a given design (simr's ``makeLmer``);
* :mod:`.curve` -- :func:`power_curve`: power over growing subsets of the design (simr's
  ``powerCurve``), as a :class:`PowerCurve` table with a plot;
* :mod:`.extend` -- :func:`extend`: the model on a design with more (or fewer) levels of a
  grouping factor (simr's ``extend``).

``power_sim`` itself (simr's ``powerSim``) is a method of every mixed-model result
(:func:`mlmext.inference.power_sim`).
"""
from .curve import PowerCurve, power_curve
from .extend import extend
from .make import make_lmer

__all__ = ["make_lmer", "power_curve", "PowerCurve", "extend"]
