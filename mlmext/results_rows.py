"""What a mixed model's results hold about the fitted rows: fitted values, residuals,
``remove_data()``, and the results' arrays frozen again after unpickling."""
from __future__ import annotations

from functools import cached_property as cache_readonly

import numpy as np
import pandas as pd

__all__ = ["FittedRowsMixin"]

#: arrays a result hands out read-only (a caller's edit must not move predict() or bse);
#: pickle and deepcopy give them back writeable
FROZEN = ("theta", "_u", "normalized_cov_params")


class FittedRowsMixin:
    """Fitted values and residuals as copies of cached Series (an edit to what a caller got
    changes neither), kept through :meth:`remove_data`."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in FROZEN:
            a = self.__dict__.get(name)
            if isinstance(a, np.ndarray):
                a.setflags(write=False)

    def remove_data(self):
        """Remove the data arrays (statsmodels' ``remove_data``), e.g. before pickling.

        ``predict`` on new data keeps working in this session, and ``fittedvalues`` and
        ``resid`` (computed here if they were not yet); anything else that needs the fitted
        rows does not.  A result pickled after ``remove_data()`` cannot evaluate the formula on
        new data (the formula engine's state is rebuilt from the fitted rows when unpickling).
        """
        model = self.model
        model._fixed_spec()
        for t in model.re_design.terms:
            model._term_spec(t)
        self._kept_resid_quantiles = self._scaled_resid_quantiles()    # for summary()
        self._resid                     # (from the rows, while there are rows)
        super().remove_data()
        model.formula_info["data"] = None
        if getattr(model, "_chol", None) is not None:      # the factor holds the cross-products
            model._XY = None

    @cache_readonly
    def _fitted(self):
        return self.predict()

    @cache_readonly
    def _resid(self):
        if self.model.endog is None:        # (np.asarray(None, float) is NaN: no silent NaNs)
            raise ValueError("remove_data() removed the fitted rows: no residuals")
        f = self._fitted
        return pd.Series(np.asarray(self.model.endog, dtype=float) - f.to_numpy(), index=f.index,
                         name="resid")

    @property
    def fittedvalues(self):
        """Fitted values with the conditional modes (``predict()`` on the fitted rows)."""
        return self._fitted.copy()   # a copy: a caller's edit must change neither it nor resid

    @property
    def resid(self):
        """Response residuals ``y - fittedvalues``, a Series indexed like the fitted rows."""
        return self._resid.copy()
