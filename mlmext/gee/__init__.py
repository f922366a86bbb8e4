"""GEE working-correlation selection by QIC (Pan 2001), with geepack's conventions.

:func:`qic` computes QIC, QICu, CIC and the quasi-likelihood of any fitted
statsmodels ``GEEResults`` [1]_.  :func:`gee_select` fits one GEE per candidate
working correlation on the same rows and tabulates the criteria, flagging fits
that should not be ranked silently.

The working correlations :class:`PairwiseExchangeable`, :class:`PairwiseAR1`
and :class:`PairwiseUnstructured` estimate their parameters from the pairwise
products of standardized Pearson residuals by (weighted) least squares, the
moment estimators of geepack (Yan and Fine 2004 [2]_), so that their fits agree with
``geepack::geeglm`` [3]_.

The package, by module:

* ``covstructs``: the working correlations :class:`PairwiseCovStruct`,
  :class:`PairwiseExchangeable`, :class:`PairwiseAR1`, :class:`PairwiseUnstructured`;
* ``criteria``: :func:`qic` and the quasi-likelihood;
* ``selection``: :func:`gee_select`, with ``inputs`` (checks of its columns, family and
  formula), ``candidates`` (its ``cov_structs`` argument as named structures),
  ``fitting`` (:class:`ScaleFreeGEE`: statsmodels' GEE with a stopping rule that does not
  depend on units) and ``diagnostics`` (the description and flags of each fit);
* ``results``: :class:`GEESelection`.

References
----------
.. [1] W. Pan (2001). Akaike's information criterion in generalized estimating
   equations. Biometrics 57(1), 120-125.
.. [2] J. Yan and J. Fine (2004). Estimating equations for association
   structures. Statistics in Medicine 23(6), 859-874.
.. [3] U. Halekoh, S. Hojsgaard and J. Yan (2006). The R package geepack for
   generalized estimating equations. Journal of Statistical Software 15(2).
"""
from .covstructs import PairwiseAR1, PairwiseCovStruct, PairwiseExchangeable, PairwiseUnstructured
from .criteria import qic
from .fitting import ScaleFreeGEE
from .results import GEESelection
from .selection import gee_select

__all__ = [
    "qic",
    "gee_select",
    "GEESelection",
    "ScaleFreeGEE",
    "PairwiseCovStruct",
    "PairwiseExchangeable",
    "PairwiseAR1",
    "PairwiseUnstructured",
]
