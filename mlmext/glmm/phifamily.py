"""What the NB1 and beta GLMMs share: glmmTMB's Laplace with a family parameter ``phi``.

Both use the observed information in the Laplace determinant (glmmTMB's), which can be
negative for single observations (an NB1 count far above its mean, a beta response far in
the tail): one scalar random-effects term takes that (PIRLS level by level, each level's
penalized information positive); other designs use the blocked factorization while the
weights are positive and a dense one (:mod:`mlmext.laplace.dense`) once they are not.  lme4's first stage (beta inside PIRLS, only
starting values) uses positive working weights.
"""
from __future__ import annotations

import numpy as np

from .. import laplace as lp
from .deviance import LaplaceDeviance
from ..results import add_notes
from .results import GLMMResults

__all__ = ["WorkingWeights", "PhiFamilyMixin", "PhiDeviance", "PhiResults", "reject_weights"]


class WorkingWeights:
    """A flag and its context manager: inside ``with``, a conditional model gives positive
    working weights as ``w`` (lme4's first stage, RX), outside the observed information."""

    def __init__(self):
        self.on = False

    def __enter__(self):
        self._was = self.on
        self.on = True
        return self

    def __exit__(self, *exc):
        self.on = self._was
        return False


def reject_weights(model):
    """``NotImplementedError`` for prior weights (glmmTMB multiplies the log-likelihood; R's
    glm reads them as dispersion weights: two meanings, neither built)."""
    if np.any(np.asarray(model.weights) != 1.0):
        raise NotImplementedError(f"prior weights with the {model._family_label} family are "
                                  "not implemented; fit without weights=")


class PhiDeviance(LaplaceDeviance):
    """:class:`LaplaceDeviance` with glmmTMB's observed information (see the module)."""

    def __init__(self, model):
        super().__init__(model)
        self.scalar = lp.is_scalar_design(self.design)
        # the one-scalar-term PIRLS takes single negative weights (its factor is diagonal)
        self.pirls_options = {"scalar_fast": True} if self.scalar else {}
        #: other designs: the dense system once a negative weight was met (see modes())
        self.dense = False

    def modes(self, theta, beta, tol=1e-14, warm=True, lams=None):
        """As :meth:`LaplaceDeviance.modes`; once the blocked PIRLS meets a negative weight (not
        with one scalar term), this deviance switches to the dense system of :mod:`mlmext.laplace.dense`."""
        if not self.dense:
            modes, lams = super().modes(theta, beta, tol=tol, warm=warm, lams=lams)
            if modes.converged or self.scalar or "negative working weights" not in modes.message:
                return modes, lams
            with np.errstate(all="ignore"):
                neg = int(np.sum(self.cond.derivatives(modes.eta)[1] < 0))
            if not neg:
                return modes, lams
            if self.design.nre > lp.MAX_DENSE_RE:
                raise NotImplementedError(
                    f"{neg} observations have a negative observed information (glmmTMB's "
                    f"Laplace for the {self.model._family_label} family): the sparse "
                    "factorization cannot take that, and this model is too large for the dense "
                    f"one (more than {lp.MAX_DENSE_RE} random effects)"
                    + getattr(self.model, "_negative_weights_hint", ""))
            self.dense = True
        des, m = self.design, self.model
        theta = np.asarray(theta, dtype=float)
        lams = des.lambdas(theta) if lams is None else lams
        eta_f = m.exog @ beta + m.offset
        u0 = self.warm_start if warm else None
        last = self._last if warm else None
        if last is not None and u0 is not None and "factor" in last[2].extra:
            u0 = self._predicted_start(theta, beta, None)
        modes = lp.pirls(des, None, eta_f, self.cond, theta, u0=u0, tol=tol, lams=lams, dense=True)
        if not modes.converged and u0 is not None:
            modes = lp.pirls(des, None, eta_f, self.cond, theta, u0=None, tol=tol, lams=lams,
                             dense=True)
            modes.message = "retried from u = 0; " + modes.message
        self._remember(theta, beta, modes, lams)
        return modes, lams

    def stage1(self, theta, beta, u=None):
        with self.cond.working():
            return super().stage1(theta, beta, u)

    def cov_rx(self, theta, modes, lams):
        with self.cond.working():
            return super().cov_rx(theta, modes, lams)


class PhiFamilyMixin:
    """Model hooks of the NB1 and beta GLMMs (put first among the bases)."""

    _extra_name = "phi"
    #: the covariance inverts the Hessian in (theta, beta, log phi), as glmmTMB
    _joint_cov = True

    def deviance(self):
        """A fresh :class:`PhiDeviance` (glmmTMB's Laplace, see :mod:`.phifamily`)."""
        return PhiDeviance(self)

    @property
    def _results_class(self):
        return PhiResults


class PhiResults(GLMMResults):
    """Results of an NB1 or beta GLMM: ``phi`` (glmmTMB's ``sigma()``), notes, simulation."""

    @property
    def phi(self):
        """The family's parameter: NB1 dispersion (``Var = mu (1 + phi)``) or beta precision
        (``Var = mu (1 - mu) / (1 + phi)``); glmmTMB's ``sigma()``."""
        return float(self._alpha)

    @property
    def _family_name(self):
        return self.model._family_label

    @property
    def link_name(self):
        return type(self.model.family.link).__name__.lower()

    @property
    def family(self):
        """The model's family with this fit's ``phi``."""
        return self.model._results_family(self.phi)

    @property
    def llf_lme4(self):
        """None: lme4 does not fit this family."""
        return None

    @property
    def cov_fe_joint(self):
        """The covariance of the fixed effects: glmmTMB's (``cov_params()``)."""
        return super().cov_fe_joint

    def _simulate_response(self, eta, rng):
        return self.model._simulate(self._cond.mean(eta), self.phi, rng)

    def _summary_top(self):
        if self.nagq > 1:
            method = f"Adaptive Gauss-Hermite ({self.nagq} points)"
        elif self.model.information == "observed":
            method = "Laplace (observed information, glmmTMB's)"
        else:
            method = "Laplace (expected information)"
        return [("Method:", [method]), ("Link:", [self.link_name])]

    def _add_extra_tables(self, smry, ddf=None):
        notes = [self.model._phi_note(self.phi), self._cov_description() + "; z tests."]
        add_notes(smry, notes)
