"""The random effects' part of a prediction, shared by the results and the Dask predictions."""
from __future__ import annotations

import numpy as np

__all__ = ["re_contribution"]


def re_contribution(design, bs, term_arrays):
    """``sum_t Z_t b_t`` over the terms for their (model matrix, codes) pairs, ``bs`` the
    conditional modes per block (m, q); a code of -1 (a level not fitted) contributes 0."""
    total = 0.0
    for t, (Zt, codes) in zip(design.terms, term_arrays):
        bi = next(i for i, b in enumerate(design.blocks) if t in b.terms)
        blk = design.blocks[bi]
        off = sum(tt.q for tt in blk.terms[:blk.terms.index(t)])
        bt = bs[bi][:, off:off + t.q]
        ok = codes >= 0
        contrib = np.zeros(Zt.shape[0])
        contrib[ok] = np.einsum("ij,ij->i", Zt[ok], bt[codes[ok]])
        total = total + contrib
    return total
