"""What the results of Dask fits share: row-sized quantities as lazy Dask series.

The results classes are the in-memory ones (:class:`~mlmext.results.LMMResults`,
:class:`~mlmext.glmm.results.GLMMResults`) with this mixin in front: fitted values, residuals
and predictions of Dask data are evaluated partition by partition on the workers, through the
model (shipped once), and the summary's scaled residuals are exact quantiles found in a few
passes (:mod:`.quantiles`).  Each class names its partition functions.
"""
from __future__ import annotations

import functools

import numpy as np

from .learn import ship
from .quantiles import SUMMARY_PROBS, exact_quantiles

__all__ = ["DaskResultsMixin"]


class DaskResultsMixin:
    """Lazy row-sized results of a Dask fit.

    Subclasses set ``_fitted_partition(part, model, beta, bs, what, *args)`` (a pandas Series
    of the partition's model rows: ``what`` is "fitted", "resid" or the scaled residuals the
    summary uses) and ``_predict_partition(part, model, beta, bs, re, which)`` (one value per
    row), and ``_scaled_resid_series()``.
    """

    def _parts(self):
        return self.model, np.asarray(self.fe_params), self._blocks_b()

    @property
    def fittedvalues(self):
        """Fitted values (means) with the conditional modes, a lazy Dask series over the model
        rows."""
        return self._over_rows("fitted")

    @property
    def resid(self):
        """Response residuals ``y - fittedvalues``, a lazy Dask series over the model rows."""
        return self._over_rows("resid")

    def _over_rows(self, what, *args):
        model, beta, bs = self._parts()
        return model.dask_data.map_partitions(type(self)._fitted_partition, ship(model), beta, bs,
                                              what, *args, meta=(what, "f8"))

    def _fitted_rows(self, which):
        """``predict()`` without new data: the fitted rows' values."""
        return self.fittedvalues

    def remove_data(self):
        """Nothing to remove: the model holds no rows, and the results only a reference to the
        lazy Dask DataFrame (dropped when the model is pickled)."""

    def predict(self, exog=None, data=None, re=True, which="mean", offset=None, **kwargs):
        """Predictions as :meth:`MixedResults.predict`; for Dask ``data`` a lazy Dask series
        (one value per row, NaN where a row has a missing value)."""
        new = self._predict_args(exog, data, re, which, kwargs)
        if new is None:
            return self._fitted_rows(which)
        if type(new).__module__.split(".")[0] != "dask":
            return super().predict(data=new, re=re, which=which, offset=offset)
        if offset is not None:
            raise TypeError("offset= is not taken with Dask data; the model's offset column is "
                            "read from the new data")
        model, beta, bs = self._parts()
        return new.map_partitions(type(self)._predict_partition, ship(model), beta, bs, bool(re),
                                  which, meta=("predicted", "f8"))

    # the summary's "Scaled residuals": exact quantiles of ``_scaled_resid_series()``, made
    # by the first summary() (a few passes) and kept, also through pickling (an unpickled
    # result without them has no data to compute them from)
    @functools.cached_property
    def _dask_resid_quantiles(self):
        q, passes = exact_quantiles(self._scaled_resid_series(), SUMMARY_PROBS)
        self.model.passes += passes                  # the model counts every pass it made
        return q

    def _summary_resid_quantiles(self):
        if "_dask_resid_quantiles" not in self.__dict__ \
                and getattr(self.model, "dask_data", None) is None:
            return None
        return self._dask_resid_quantiles
