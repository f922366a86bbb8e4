"""Family-independent engine for non-Gaussian mixed models: PIRLS, Laplace and AGQ.

The conditional distribution of the response given the linear predictor
``eta = eta_fixed + Z Lambda(theta) u`` is described by an object following
the :class:`ConditionalModel` protocol (GLM families and the negative
binomial in :mod:`mlmext.glmm`, the cumulative-link model in the ordinal
module).  This module only needs its per-observation log-likelihood and the
first two derivatives in ``eta``; it never looks at the response itself.

With ``u ~ N(0, I)`` (spherical random effects, ``b = Lambda u``) the
marginal log-likelihood is

    l(theta, beta) = log int prod_i p(y_i | eta_i(u)) phi(u) du.

* :func:`pirls` finds the conditional modes ``u~`` by penalized iteratively
  reweighted least squares (Newton / Fisher scoring on
  ``sum_i log p(y_i | eta_i) - |u|^2 / 2`` with step halving).  Each step is
  one weighted penalized least-squares problem solved with the shared
  :class:`mlmext.linalg.BlockedCholesky` (the system
  ``Lambda' Z' W Z Lambda + I`` for ``u`` alone, or with the fixed effects
  when ``X`` is given: lme4's ``nAGQ = 0`` stage).
* :func:`laplace_loglik` is the Laplace approximation
  ``sum_i log p(y_i | eta~_i) - |u~|^2 / 2 - log|L|^2 / 2``, ``L L' =
  Lambda' Z' W Z Lambda + I`` with ``W`` the weights at the modes; every
  random-effects structure the factorization handles (crossed, nested,
  correlated vector terms) is allowed.
* :func:`agq_loglik` is adaptive Gauss-Hermite quadrature for a single
  grouping factor: the integral factors over its levels, each one centred at
  its conditional mode and scaled by its conditional covariance; a vector
  term with up to three random effects per level uses the product grid.
  Cost is O(n * nodes) (per-level sums by ``bincount``).
* :func:`laplace_gradient` is the exact gradient of the Laplace
  log-likelihood in ``theta``, ``beta`` and the conditional model's own
  parameters (for conditional models that supply the optional third-order
  pieces of the protocol), so that quasi-Newton optimizers need one
  evaluation per step.

Log-likelihoods are on the full scale less the conditional model's
``loglik_const`` (zero unless it leaves out a large constant such as the
saturated log-likelihood of large counts), so Laplace and AGQ values compare
with each other and with GLM fits.

The n-sized work of a PIRLS iteration and of the gradient goes through a *rows* object
(:mod:`.rows`): the rows in memory, or summed rows held elsewhere (Dask workers), one pass
over them per iteration.

Modules: :mod:`.protocol` (the conditional-model protocol, modes), :mod:`.rows` and
:mod:`.summed` (with :mod:`.chunkplan`), :mod:`.zops`
(``Z Lambda u`` and the PIRLS factorization), :mod:`.pirls`, :mod:`.scalar`
(one scalar term, level by level), :mod:`.dense` (a dense system that takes negative
observed information), :mod:`.agq`, :mod:`.gradient`, :mod:`.hessian` (the exact Hessian
of one scalar term with a canonical link), :mod:`.separation`.
"""
from __future__ import annotations

from ..linalg import ScalarFactor
from .agq import (MAX_AGQ_GRID, MAX_NAGQ, agq_loglik, agq_loglik_gradient, check_agq, check_agq_grid,
                  check_nagq, check_positive, gh_rule)
from .dense import MAX_DENSE_RE
from .gradient import laplace_gradient
from .hessian import has_scalar_hessian, scalar_laplace_hessian
from .pirls import factor_at, laplace_loglik, pirls, predict_modes
from .protocol import ConditionalModel, Modes, PIRLSError
from .scalar import _is_scalar_design as is_scalar_design
from .rows import MemoryRows
from .summed import RowChunk, SummedRows, add_sums, chunk_sums
from .separation import separation_direction
from .zops import make_chol, random_effects_linear, random_effects_transpose

__all__ = ["ConditionalModel", "Modes", "PIRLSError", "ScalarFactor", "make_chol", "pirls",
           "laplace_loglik", "agq_loglik", "laplace_gradient", "agq_loglik_gradient", "gh_rule",
           "random_effects_linear", "random_effects_transpose", "predict_modes", "check_nagq",
           "check_positive", "check_agq",
           "check_agq_grid", "MAX_NAGQ", "MAX_AGQ_GRID", "MAX_DENSE_RE", "separation_direction", "factor_at",
           "MemoryRows", "SummedRows", "RowChunk", "chunk_sums", "add_sums", "is_scalar_design",
           "has_scalar_hessian", "scalar_laplace_hessian"]
