"""Generalized linear mixed models (lme4's ``glmer`` and ``glmer.nb``).

* :mod:`.conditional` -- ``y | eta`` for the binomial, Poisson and negative binomial;
* :mod:`.scale` -- ``y | eta`` for the Gamma and inverse Gaussian (dispersion estimated);
* :mod:`.response` -- response coercion and checks, family names;
* :mod:`.model` -- :class:`GeneralizedLinearMixedModel` and its staged fit;
* :mod:`.nb` -- :class:`NegativeBinomialMixedModel`;
* :mod:`.nb1`, :mod:`.beta` -- the NB1 and beta families (glmmTMB's ``nbinom1``,
  ``beta_family``), with what they share in :mod:`.phifamily`;
* :mod:`.results` -- :class:`GLMMResults`;
* :mod:`.zeroinfl`, :mod:`.zimodel`, :mod:`.ziresults` -- zero-inflated and hurdle Poisson /
  NB2 models (glmmTMB's ``ziformula``): :class:`ZeroInflatedMixedModel`.
"""
from .conditional import GLMConditional, NegativeBinomialConditional
from .model import GeneralizedLinearMixedModel
from .nb import NegativeBinomialMixedModel
from .nb1 import NB1Conditional, NB1Family, NB1MixedModel
from .beta import Beta, BetaConditional, BetaMixedModel, is_beta_family
from .results import GLMMResults
from .scale import ScaleConditional
from .zeroinfl import ZeroInflatedConditional
from .zimodel import ZeroInflatedMixedModel
from .ziresults import ZeroInflatedResults

__all__ = ["GeneralizedLinearMixedModel", "NegativeBinomialMixedModel", "GLMMResults",
           "GLMConditional", "NegativeBinomialConditional", "ScaleConditional",
           "NB1Conditional", "NB1Family", "NB1MixedModel",
           "Beta", "BetaConditional", "BetaMixedModel", "is_beta_family",
           "ZeroInflatedMixedModel", "ZeroInflatedResults", "ZeroInflatedConditional"]
