"""Grouped cross-validation for mixed models.

* :mod:`.splitters` -- :class:`GroupKFold` (leave-groups-out), :class:`LeaveOneGroupOut`,
  :class:`WithinGroupKFold` (held-out rows within groups): scikit-learn's splitter interface
  (``split(X, y, groups)``, ``get_n_splits``) without importing scikit-learn;
* :mod:`.crossval` -- :func:`cross_validate`: refit on each training fold, predict the
  held-out rows with and without random effects, and score them (RMSE, MAE, log score,
  Brier).
"""
from .crossval import CVResults, cross_validate
from .splitters import GroupKFold, LeaveOneGroupOut, WithinGroupKFold

__all__ = ["cross_validate", "CVResults", "GroupKFold", "LeaveOneGroupOut", "WithinGroupKFold"]
