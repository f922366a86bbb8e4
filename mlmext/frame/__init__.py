"""From an lme4-style formula and a table to the model's arrays.

* :mod:`.terms` -- the formula parser: fixed part, bar terms ``(lhs | g)``,
  ``||``, nesting ``a/b``, ``offset()``;
* :mod:`.model_frame` -- lme4's model frame: complete rows, unused levels
  dropped and counted, each term's model matrix through statsmodels' formula
  engine, the random-effects design.

The formula api (:mod:`mlmext.formula.api`) sits on top of the models; this
package sits below them.
"""
from .model_frame import build_model_frame, display_name, evaluate, formula_manager, names_in
from .terms import parse_formula

__all__ = ["build_model_frame", "display_name", "evaluate", "formula_manager", "names_in",
           "parse_formula"]
