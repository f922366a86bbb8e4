"""Cumulative link mixed models for ordinal responses (R's ``ordinal::clmm``).

The model for an ordinal response ``Y`` with categories ``1 < 2 < ... < K`` is

    P(Y <= j | b) = F(theta_j - x' beta - z' b),   j = 1, ..., K - 1,
    b ~ N(0, Sigma(theta_re)),

with ``F`` the inverse link (logistic, normal, complementary log-log, log-log
or Cauchy distribution function) and increasing thresholds
``theta_1 < ... < theta_{K-1}``.  The fixed part has no intercept: the
thresholds carry it.

The random-effects integration (conditional modes, Laplace approximation,
adaptive Gauss-Hermite quadrature) is done by :mod:`mlmext.laplace` on the
shared random-effects design and factorization; the results class extends
:class:`mlmext.results.MixedResults`.  This package holds what is ordinal-specific:

* ``links``: the inverse links (:data:`LINKS`) and category probabilities without cancellation,
* ``thresholds``: threshold structures (flexible, equidistant, symmetric; increasing by
  construction in the internal parameterization),
* ``conditional``: :class:`CumulativeLinkConditional`, the distribution of ``y`` given the
  linear predictor (the :class:`mlmext.laplace.ConditionalModel` protocol),
* ``response``: category codes and labels of the response,
* ``clm``: the Newton fit of the model without random effects (starting values),
* ``model``: :class:`OrdinalMixedModel` (data, formula, likelihood),
* ``fit``: the maximum likelihood fit, with ``objective`` (the negative log-likelihood,
  gradient and Hessian for the optimizers) and ``newton`` (the exact-Hessian Newton for a
  single scalar term),
* ``results``: :class:`OrdinalMixedResults`.
"""
from .clm import fit_clm
from .conditional import CumulativeLinkConditional
from .links import LINKS, category_probabilities, get_link
from .model import OrdinalMixedModel
from .response import ordinal_response
from .results import OrdinalMixedResults
from .thresholds import Thresholds
# private pieces the tests check directly
from .conditional import _log_interval_derivatives  # noqa: F401
from .links import _interval_logprob  # noqa: F401
from .objective import _ClmmObjective  # noqa: F401

__all__ = ["LINKS", "get_link", "Thresholds", "CumulativeLinkConditional", "category_probabilities",
           "fit_clm", "ordinal_response", "OrdinalMixedModel", "OrdinalMixedResults"]
