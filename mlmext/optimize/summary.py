"""What an optimization did, kept on the results (MixedModels.jl's ``OptSummary``).

Every fit ends with one :class:`OptSummary`: where it started and ended, the
objective there, how many evaluations it took, the phases or methods it tried
(each with its success and evaluations), whether the convergence checks passed
and the optimizer's message.  ``summary()`` prints its one-line description.
The scipy ``OptimizeResult`` names (``x``, ``fun``, ``nfev``, ``success``) are
aliases, and fit-specific facts (``cov_method``, ``snapped``, ``max_grad``,
``jac``, ...) are read-only attributes from ``extras``.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = ["OptSummary"]


def _frozen(a):
    a = np.array(a, dtype=float).ravel()
    a.setflags(write=False)
    return a


#: the ``OptimizeResult`` fields that are OptSummary's own (the others become ``extras``)
_KNOWN = frozenset(("x", "fun", "nfev", "tried", "success", "message", "method"))


@dataclass(frozen=True, eq=False)
class OptSummary:
    """An optimizer's account of a fit.

    Attributes
    ----------
    initial, final : ndarray
        The optimizer's parameters at the start and at the end (read-only).
    fmin : float
        The objective at ``final`` (a deviance: -2 log-likelihood or REML criterion).
    feval : int
        Objective evaluations, all phases.
    tried : tuple of (str, bool, int)
        Each method or phase run: name, whether it succeeded, its evaluations.
    converged : bool
        Whether the convergence checks passed.
    message : str
        The final optimizer's message.
    optimizer : str
        The method(s) used.
    extra_items : tuple of (str, object)
        Fit-specific facts (``extras`` as a read-only mapping; also attributes), such as
        ``decrement``: the Newton decrement at the end (LMM and clmm checks:
        ``g' H^-1 g / 2``, the deviance decrease still available; the GLMM's Newton:
        ``g' H^-1 g``, lme4's PIRLS convention); on LMM fits ``scale``, the optimizer's
        scale of theta (it works on ``theta * scale``), and ``hessian``, the deviance's
        Hessian in that scaled theta at (or a Newton step before) the end, which a refit
        from this fit's theta uses to tell a far start.
    """

    initial: np.ndarray
    final: np.ndarray
    fmin: float
    feval: int
    tried: tuple
    converged: bool
    message: str
    optimizer: str
    extra_items: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "initial", _frozen(self.initial))
        object.__setattr__(self, "final", _frozen(self.final))
        object.__setattr__(self, "tried", tuple((str(m), bool(ok), int(n)) for m, ok, n in self.tried))
        object.__setattr__(self, "extra_items", tuple(dict(self.extra_items).items()))

    def replaced(self, **fields):
        """A copy with ``fields`` replaced, taken as they are: in this class's own form
        (read-only float arrays, ``tried`` and ``extra_items`` as tuples of tuples), since
        ``__post_init__`` does not run -- many summaries that differ in a few numbers
        (batched refits) at a fifth of the cost of making each."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(fields)
        return new

    @property
    def extras(self):
        """Fit-specific facts (``cov_method``, ``snapped``, ``max_grad``, ``jac``, ...)."""
        return MappingProxyType(dict(self.extra_items))

    @classmethod
    def from_result(cls, res, initial, *, optimizer=None, **extras):
        """From a scipy-style ``OptimizeResult`` (with ``tried``) and the starting point;
        its other fields, and ``extras``, become read-only ``extras``."""
        items = (res if isinstance(res, dict) else dict(res)).items()
        ex = {k: v for k, v in items if k not in _KNOWN}
        ex.update(extras)
        tried = getattr(res, "tried", None) or [(optimizer or getattr(res, "method", "?"),
                                                 bool(res.success), int(getattr(res, "nfev", 0)))]
        # the fields in their normal form, set as ``replaced`` does: the frozen dataclass's
        # __init__ and __post_init__ (a guarded setattr per field) cost as much again, and
        # every fit makes one
        new = object.__new__(cls)
        new.__dict__.update(
            initial=_frozen(initial), final=_frozen(res.x), fmin=float(res.fun),
            feval=int(getattr(res, "nfev", 0)),
            tried=tuple((str(m), bool(ok), int(n)) for m, ok, n in tried),
            converged=bool(res.success), message=str(getattr(res, "message", "")),
            optimizer=optimizer or str(getattr(res, "method", "") or " + ".join(t[0] for t in tried)),
            extra_items=tuple(ex.items()))
        return new

    # scipy's names
    @property
    def x(self):
        return self.final

    @property
    def fun(self):
        return self.fmin

    @property
    def nfev(self):
        return self.feval

    @property
    def success(self):
        return self.converged

    @property
    def method(self):
        return self.optimizer

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in object.__getattribute__(self, "extra_items"):
            if key == name:
                return value
        raise AttributeError(f"OptSummary has no attribute {name!r}")

    def describe(self):
        """One line: the methods tried, evaluations, and whether the checks passed."""
        steps = "; ".join(f"{m} ({'ok' if ok else 'failed'}, {n} evaluations)" for m, ok, n in self.tried)
        dec = dict(self.extra_items).get("decrement")
        checked = f" (Newton decrement {dec:.2g})" if dec is not None and np.isfinite(dec) else ""
        state = ("converged" + checked if self.converged
                 else f"did not converge: {self.message.rstrip('.')}")
        return f"Optimizer: {steps}; {self.feval} evaluations in all, {state}."

    def __repr__(self):
        return (f"OptSummary(optimizer={self.optimizer!r}, fmin={self.fmin:.6f}, feval={self.feval}, "
                f"converged={self.converged}, message={self.message!r})")
