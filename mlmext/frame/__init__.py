"""From an lme4-style formula and a table to the model's arrays.

* :mod:`.terms` -- the formula parser: fixed part, bar terms ``(lhs | g)``,
  ``||``, nesting ``a/b``, ``offset()``;
* :mod:`.engine` -- statsmodels' formula engine: names quoted for it, its
  errors naming the unknown column;
* :mod:`.model_frame` -- lme4's model frame: the random-effects design,
  weights, offset, the checks; :mod:`.pieces` -- the matrices on the complete
  rows (unused levels dropped, rows dropped counted), from :mod:`.patsy_pass`
  (with patsy: every piece of the formula in one pass over the columns used,
  as NumPy arrays when :mod:`.factor_code` finds the formula's code behaves
  alike on them) or piece by piece through the engine.

The formula api (:mod:`mlmext.formula.api`) sits on top of the models; this
package sits below them.
"""
from .engine import display_name, evaluate, formula_manager, name_heads, names_in, quote_names
from .model_frame import build_model_frame, used_columns
from .patsy_pass import FixedParts
from .terms import parse_formula

__all__ = ["FixedParts", "build_model_frame", "display_name", "evaluate", "formula_manager",
           "name_heads", "names_in", "parse_formula", "quote_names", "used_columns"]
