"""The optimizers and numerical derivatives of the fits.

* :mod:`.theta` -- bounded minimization of a deviance in theta (LMM), probes off and onto
  bounds (:mod:`.bound_steps`: the probes' steps); :mod:`.bfgs` -- bounded BFGS (clmm);
  :mod:`.lbfgsb` -- scipy's L-BFGS-B core;
* :mod:`.newton` -- quasi-Newton and Newton with exact or differenced gradients (GLMM);
* :mod:`.polish` -- Newton polish and the second-order checks (decrement, saddles, bound
  probes) that decide convergence;
* :mod:`.linesearch` -- the backtracking line search of every Newton-type loop;
* :mod:`.numdiff` -- numerical derivatives;
* :mod:`.summary` -- :class:`OptSummary`, what a fit's optimization did.
"""
from .bound_steps import escape_bound, snap_to_bound
from .linesearch import backtrack
from .newton import newton, quasi_newton
from .numdiff import (CountingGradient, central_gradient, gradient_hessian, hessian,
                      hessian_central_gradient, hessian_from_gradient, hessian_from_values,
                      jacobian)
from .polish import descent_along, fd_hessian, newton_polish, probe_bounds, rounding_level
from .summary import OptSummary
from .theta import minimize_bfgs, minimize_theta

__all__ = ["backtrack", "rounding_level", "minimize_theta", "minimize_bfgs", "escape_bound", "snap_to_bound", "quasi_newton",
           "newton", "jacobian", "hessian", "hessian_from_gradient", "hessian_central_gradient",
           "central_gradient",
           "hessian_from_values", "CountingGradient", "gradient_hessian", "OptSummary",
           "newton_polish", "probe_bounds", "fd_hessian", "descent_along"]
