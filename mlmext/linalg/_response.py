"""The dense-remainder factor of a new response on the same design (a refit): only ``Z' W y``,
``X' W y`` and ``y' W y`` are computed again.

The Schur product's pairs (:class:`~mlmext.linalg._schur.SchurProduct`, the most costly part of
setting a factor up) are those of the random-effects rows of ``A_r1`` alone: the response's row
is one of the rows held dense (:class:`~mlmext.linalg._schur_rows.SplitSchur`), so a new
response replaces that row and shares the pairs.
"""
from __future__ import annotations

import copy

import numpy as np
from scipy import sparse

from ._schur import DenseSchur
from ._schur_rows import SplitSchur

__all__ = ["factor_with_response"]


def factor_with_response(f, XY, weights):
    """A copy of the dense-remainder factor ``f`` (its cross-products set, natural order, no
    structure-reusing plan) for the new ``[X y]`` (only the last column differs from the one
    ``f`` was set up with), or None where ``f``'s storage does not allow it (then the caller
    builds the factor anew)."""
    schur = f.__dict__.get("_schur")
    if f._sn is not None or f._rpos is not None or f.__dict__.get("_rest") is not None \
            or f.__dict__.get("_rw_plan") is not None or schur is None:
        return None
    if not isinstance(schur, (SplitSchur, DenseSchur)):
        return None
    r, rz = f.r, f.rz
    n = XY.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    wy = XY[:, -1] * w
    a_new = np.asarray(f._Z1.T @ wy, dtype=float).ravel()
    col = np.empty(r)
    if rz:
        col[:rz] = f._Zrest.T @ wy
    col[rz:] = XY.T @ wy
    new = copy.copy(f)
    A_rr = f.A_rr.copy()
    A_rr[:, -1] = col
    A_rr[-1, :] = col
    new.A_rr = A_rr
    A_z = f.A_r1[:r - 1]
    new.A_r1 = sparse.vstack([A_z, sparse.csr_matrix(a_new[None, :])], format="csr")
    new.A_1r = new.A_r1.T.tocsr()
    new._a1y = a_new
    if isinstance(schur, DenseSchur):
        ns = schur.own_copy()
        ns.A[-1] = a_new
    else:
        ns = schur.with_response(a_new)
    new._schur = ns
    new._set_operators()
    new._S = np.zeros((r, r))
    new._inverse_kept = None
    return new
