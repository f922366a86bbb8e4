"""Linear mixed models of Dask DataFrames: data beyond one machine's memory.

An LMM sees its data only through the cross-products ``[Z X y]' W [Z X y]`` (sums over rows),
so a fit of a Dask DataFrame is exact, not an approximation: two passes over the partitions on
the workers, then the factorization and the optimizer on the client, where every evaluation
costs what it costs in memory.

* :mod:`.learn` -- pass 1: the formula's state (grouping levels, categorical levels) from every
  partition, and the model that holds it (built on a small frame with those levels);
* :mod:`.accumulate` -- pass 2: each partition's cross-products, summed in a tree on the workers;
* :mod:`.model` -- :class:`DaskLinearMixedModel` and its results, whose row-sized parts
  (fitted values, residuals, predictions) are lazy Dask series;
* :mod:`.glmm` -- binomial and Poisson GLMMs: the rows persisted on the workers, one pass over
  them per PIRLS iteration and per gradient (:class:`mlmext.laplace.SummedRows`).

``mf.lmer(formula, data=<dask DataFrame>)`` builds a :class:`DaskLinearMixedModel`,
``mf.glmer(formula, data=<dask DataFrame>, family=...)`` a
:class:`~mlmext.dask.glmm.DaskGeneralizedLinearMixedModel`.  Dask is an
optional dependency (``pip install "mlmext[dask]"``): nothing here imports it before a Dask
DataFrame is passed.
"""
from __future__ import annotations

__all__ = ["is_dask_frame", "lmer"]


def is_dask_frame(data):
    """Whether ``data`` is a Dask DataFrame (checked without importing Dask)."""
    return type(data).__module__.split(".")[0] == "dask" and hasattr(data, "map_partitions") \
        and hasattr(data, "columns")


def lmer(formula, data, **kwargs):
    """:meth:`DaskLinearMixedModel.from_formula` (what ``mf.lmer`` calls for Dask data)."""
    from .model import DaskLinearMixedModel
    return DaskLinearMixedModel.from_formula(formula, data, **kwargs)
