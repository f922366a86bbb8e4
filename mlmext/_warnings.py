"""Keep the user's warning filters in front of the ones statsmodels installs at import.

``statsmodels.tools.sm_exceptions`` runs ``warnings.simplefilter("always", ...)`` for its
warnings (``ConvergenceWarning`` among them) when first imported, which puts those filters
*before* any the user set: ``warnings.simplefilter("ignore")`` followed by ``import mlmext``
would not silence a ``ConvergenceWarning``.  Importing statsmodels here first and moving the
user's earlier filters back in front keeps statsmodels' defaults where the user set nothing.
"""
from __future__ import annotations

import warnings

__all__ = ["import_statsmodels_keeping_user_filters"]


def import_statsmodels_keeping_user_filters():
    """Import statsmodels' exceptions module with the user's filters kept in front."""
    before = list(warnings.filters)
    import statsmodels.tools.sm_exceptions  # noqa: F401  (installs statsmodels' filters)
    added = [f for f in warnings.filters if f not in before]
    if not added or not before:
        return
    order = before + added                       # the user's first, statsmodels' after
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:                      # CPython: reorder the same entries
        warnings.filters[:] = order
        mutated()                                # (invalidates the per-module caches)
        return
    warnings.resetwarnings()                     # elsewhere: the public API, entry by entry
    for action, message, category, module, lineno in reversed(order):
        warnings.filterwarnings(action, getattr(message, "pattern", message) or "", category,
                                getattr(module, "pattern", module) or "", lineno)
