"""The conditional-model protocol, the conditional modes and the PIRLS error."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ConditionalModel:
    """Protocol for the distribution of ``y`` given the linear predictor ``eta``.

    Subclass it (or duck-type it).  Only :meth:`loglik_obs` and
    :meth:`derivatives` are required.  The optional methods make analytic
    gradients of the Laplace log-likelihood possible
    (:func:`laplace_gradient`); without them callers fall back to finite
    differences.

    Prior weights are the conditional model's business: ``loglik_obs`` and
    the derivatives must already include them.
    """

    #: number of parameters of the conditional model itself (e.g. log alpha of
    #: the negative binomial, thresholds of an ordinal model)
    k_extra = 0
    #: size of the terms that cancel in the summed log-likelihood (e.g. the log-factorials of
    #: large counts): the level below which PIRLS's decrement is rounding
    loglik_scale = 0.0
    #: the summed log-likelihood is ``sum(loglik_obs(eta)) + loglik_const``: a model may leave
    #: a large constant out of ``loglik_obs`` (the saturated log-likelihood of large counts),
    #: so that what is optimized is not a small difference of large numbers
    loglik_const = 0.0

    def loglik_obs(self, eta):
        """(n,) ``log p(y_i | eta_i)`` (prior weights applied), less its share of ``loglik_const``."""
        raise NotImplementedError

    def derivatives(self, eta):
        """``(d1, w)``: ``d1 = d loglik_i / d eta_i`` and positive weights ``w``.

        ``w`` is ``-d^2 loglik_i / d eta_i^2`` or its expectation (the GLM
        working weights, Fisher scoring).  ``w`` enters the Laplace
        determinant, so it defines which Laplace approximation is computed
        (lme4 uses the expected information).
        """
        raise NotImplementedError

    # -- optional --------------------------------------------------------------
    # def hessian_terms(self, eta):
    #     """``(h, dw)``: observed information ``h = -d^2 loglik_i / d eta_i^2``
    #     and ``dw = d w_i / d eta_i`` for the ``w`` of :meth:`derivatives`."""
    #
    # def param_derivatives(self, eta):
    #     """``(dl, dd1, dw)``, each (n, k_extra): derivatives of ``loglik_i``,
    #     ``d1_i`` and ``w_i`` with respect to the model's own parameters."""
    #
    # def param_loglik_derivatives(self, eta):
    #     """``dl`` of :meth:`param_derivatives` alone (cheaper, at AGQ nodes)."""
    #
    # vectorized_eta = False
    #     """True when the methods also take 2-D ``eta`` (nodes x n, each row a linear
    #     predictor): AGQ then evaluates all quadrature nodes in one call."""
    #
    # allow_negative_weights = False
    #     """True when single observations may have ``w < 0`` (observed information
    #     of a log-density that is not concave); only PIRLS' ``scalar_fast`` and ``dense``
    #     paths accept them, as long as the penalized information stays positive."""
    #
    # def fisher_weights(self, eta):
    #     """(n,) positive weights for a PIRLS step where the penalized information with ``w``
    #     is not positive definite (away from the modes): the expected information, say."""


class PIRLSError(RuntimeError):
    """PIRLS did not find the conditional modes (divergence or non-finite values)."""


@dataclass
class Modes:
    """Conditional modes and what PIRLS did to find them.

    Attributes
    ----------
    u : ndarray
        Spherical conditional modes (blocks in factorization order).
    eta : ndarray
        Linear predictor at the modes.
    beta : ndarray or None
        Fixed effects when they were updated inside PIRLS (``X`` given).
    loglik_cond : float
        ``sum_i log p(y_i | eta_i)`` at the modes.
    sqr_u : float
        ``|u|^2``.
    logdet : float
        ``log|L|^2`` for ``L L' = Lambda' Z' W Z Lambda + I`` at the modes.
    converged : bool
    niter, nhalf : int
        PIRLS iterations and step halvings.
    message : str
    """

    u: np.ndarray
    eta: np.ndarray
    beta: np.ndarray | None
    loglik_cond: float
    sqr_u: float
    logdet: float
    converged: bool
    niter: int = 0
    nhalf: int = 0
    message: str = ""
    decrement: float = np.nan
    extra: dict = field(default_factory=dict)
    d1: np.ndarray | None = None
    w: np.ndarray | None = None

    @property
    def laplace(self):
        """Laplace approximation of the marginal log-likelihood."""
        return self.loglik_cond - 0.5 * self.sqr_u - 0.5 * self.logdet
