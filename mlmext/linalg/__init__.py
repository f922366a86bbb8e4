"""Blocked Cholesky factorization of the mixed-model system.

For random-effects blocks Z_1, ..., Z_K (see :mod:`mlmext.design`), fixed effects X and response
y with prior weights W, the cross-product

    A = [Z_1 ... Z_K X y]' W [Z_1 ... Z_K X y]

is formed once.  For each theta the scaled matrix ``Lambda' A Lambda + I_Z`` (Lambda is identity
on the X and y columns) is factored as ``L L'``; the profiled (RE)ML objective reads off
``log|L_ZZ|^2``, ``log|L_XX|^2`` and ``r^2`` (the squared last diagonal element), so no n-sized
array is touched per theta.  This is the MixedModels.jl scheme: each block of ``L`` keeps the
storage it needs, chosen once from the structure of the grouping factors.

One interface, one implementation per storage (:class:`~mlmext.linalg.base.Factor`):

* :class:`DenseFactor` -- the first block block-diagonal (one q x q factor per level: it never
  fills), every later block, X and y in one dense factor ``Lr``.  Crossed factors, and the
  reference path for nested ones (``nested=False``).
* :class:`NestedFactor` -- a chain of nested blocks, each nested in the next (``(1 | a/b/c)``,
  ``(x | school) + (1 | school:cls)``): every block of the chain block-diagonal (its off-diagonal
  blocks one block per level), the remaining crossed blocks, X and y dense.
* :class:`OneBlockFactor` -- one block of q >= 2 effects per level: ``M`` as a stack of q x q
  blocks, the remainder X and y (small fits such as sleepstudy's ``(Days | Subject)``).
* :class:`ScalarFactor` -- one scalar block: ``M`` diagonal, the remainder X and y.  The GLMM /
  ordinal PIRLS fast path wraps the diagonal it computes itself (``ScalarFactor.from_diagonal``).

:func:`BlockedCholesky` picks the storage for a model's blocks.  Modules: ``base`` (the
interface), ``_lead`` (cross-products and the elimination of the first block, shared by the
factors with a dense remainder), ``dense``, ``nested``, ``oneblock``, ``scalar``, ``_schur`` (the Schur-complement
product of the first block), ``_schur_rows`` (the same with the X/y rows as dense products:
pairs among the random effects only), ``_stacks`` (kernels on stacks of per-level blocks),
``_potri`` (the dense inverse from a Cholesky factor, its triangular inverse by halves).
"""
from __future__ import annotations

import numpy as np

from .base import Factor
from ._row_products import row_cross_products
from .dense import DenseFactor
from .nested import NestedFactor, nesting_chain
from .oneblock import OneBlockFactor
from .scalar import ScalarFactor

__all__ = ["BlockedCholesky", "Factor", "DenseFactor", "NestedFactor", "OneBlockFactor",
           "row_cross_products",
           "ScalarFactor"]


def BlockedCholesky(blocks, XY, weights=None, reweighting=False, nested=None):
    """The factor of ``Lambda' [Z X y]' W [Z X y] Lambda + I`` for these blocks, in the storage
    their structure allows (the name of the class this factory replaced).

    Parameters
    ----------
    blocks : list of ReBlock
        Random-effects blocks, the first one with the most random effects.
    XY : ndarray, shape (n, p + 1), or tuple
        Fixed-effects design with the response as its last column
        (``p`` may be 0, as in the penalized least squares step of a GLMM), or the pair
        ``(X, y)`` (the general storage's reweighting reads large data by columns).
    weights : ndarray, shape (n,), optional
        Prior (or working) weights.
    reweighting : bool
        Build only what ``reweight`` needs (its structure-reusing path),
        not the general one of ``set_data``.
    nested : bool, optional
        Keep the leading run of nested blocks block-diagonal (block 0 nested in
        block 1, block 1 in block 2, ...; attribute ``nested`` says whether the
        factor does, ``depth`` how many blocks the run has).  None (default):
        ``BlockedCholesky.nested_default``, i.e. whenever the levels are nested;
        False: the general dense path (:class:`DenseFactor`) always; True: require
        nesting (ValueError otherwise).

    Returns
    -------
    Factor
        A :class:`NestedFactor` for a chain of nested blocks, a :class:`ScalarFactor` for
        one scalar block, a :class:`OneBlockFactor` for one block of several effects (not for
        ``reweighting``: the GLMM's PIRLS keeps the general storage), else a
        :class:`DenseFactor`.
    """
    parents = []
    if (BlockedCholesky.nested_default if nested is None else nested) and len(blocks) > 1:
        parents = nesting_chain(blocks)
    if nested and not parents and len(blocks) > 1:
        raise ValueError(f"the levels of {blocks[0].name!r} are not nested in those of {blocks[1].name!r}")
    if isinstance(XY, tuple) and (parents or len(blocks) == 1 or not reweighting):
        XY = np.column_stack(XY)          # (X, y) is for the general storage's reweighting
    if parents:
        return NestedFactor(blocks, XY, weights, reweighting, parents=parents)
    if nested is not False and len(blocks) == 1 and blocks[0].q == 1:
        return ScalarFactor(blocks, XY, weights, reweighting)
    if nested is not False and len(blocks) == 1 and not reweighting:
        return OneBlockFactor(blocks, XY, weights)
    return DenseFactor(blocks, XY, weights, reweighting)


#: default of ``nested``: use the nested storage whenever the factors are nested (the benchmark's
#: ``--dense-second-block`` and the tests set it to False to time and check the dense path)
BlockedCholesky.nested_default = True
