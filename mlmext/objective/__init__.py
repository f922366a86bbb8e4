"""The objectives: a model's deviance as an object, separate from the model.

A model is built once from the data and never written to afterwards.  Each fit
asks it for a fresh objective (``model.deviance()``), which owns its factor and
its warm starts; ``at(x)`` turns a point into an immutable fit state that the
results keep.  So fits of one model are independent (and may run in threads),
and reading one result never changes another (lme4's ``devfun``, MixedModels.jl's
``objective!``).

* :mod:`.params` -- the full parameter vector (:class:`MixedParams`) and lme4's
  sd / correlation scale of theta;
* :mod:`.lmm` -- the profiled (RE)ML deviance of a linear mixed model;
* :mod:`.start` -- the start of a fit with several grouping factors (each factor alone).
"""
from .lmm import LMMDeviance, LMMState
from .params import (MixedParams, read_only, sdcor_from_cov, sdcor_from_theta, sdcor_from_thetas,
                     theta_from_sdcor)

__all__ = ["LMMDeviance", "LMMState", "MixedParams", "read_only", "sdcor_from_cov", "sdcor_from_theta",
           "sdcor_from_thetas", "theta_from_sdcor"]
