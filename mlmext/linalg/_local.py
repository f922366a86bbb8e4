"""Row-wise pieces of the inverse of the random-effects system, for any rows.

:meth:`DenseFactor.local_inverse_parts` computes, at the current factor, what does not depend
on the rows (the first block's diagonal blocks of ``M^-1``, its coupling ``K`` with the rest
and the rest's inverse ``G``); :meth:`LocalInverse.rows` gathers them for rows given by their
blocks' model matrices and level codes: the factor's own rows (``local_inverse``) or a chunk
of the data held elsewhere (a Dask worker's partition).
"""
from __future__ import annotations

import numpy as np

__all__ = ["LocalInverse"]


class LocalInverse:
    """The row-independent part of :meth:`~mlmext.linalg.base.Factor.local_inverse`.

    ``kind`` is "one" (one block: ``Minv`` per level), "scalar" (scalar first block: ``base``
    per level, ``K`` (m1, rz)) or "general" (``Minv`` (m1, q1, q1) with the rest's share
    added, ``K`` (m1, q1, rz)); ``G`` is the rest's inverse, ``rpos`` the positions of the
    rest's random effects in it (None: natural order).
    """

    def __init__(self, lams, kind, Minv=None, base=None, K=None, G=None, rpos=None, pattern=None):
        self.lams, self.kind = lams, kind
        self.Minv, self.base, self.K, self.G, self.rpos = Minv, base, K, G, rpos
        #: (first-block levels, rest positions) where rows of the data have both
        self._pattern = pattern
        self.keys = self.Kp = None

    def _index(self, idx):
        return idx if self.rpos is None else self.rpos[idx]

    def compact(self):
        """A copy holding ``K`` only where the data's rows read it (the levels of the first
        block and of the rest that occur together): what is sent to the workers that hold
        the rows, instead of the dense ``K`` (first-block levels x the rest's effects).

        The pattern is the cross-products' (a pair no row has is not read); a pair all of
        whose rows have weight 0 or a zero column may be missing from it: its rows then
        read 0, and enter the sums only multiplied by that weight or column.
        """
        if self.K is None or self._pattern is None:
            return self
        lvl, pos = self._pattern
        rz = self.G.shape[0]
        keys, first = np.unique(lvl.astype(np.int64) * rz + pos, return_index=True)
        lvl, pos = lvl[first], pos[first]
        new = LocalInverse(self.lams, self.kind, Minv=self.Minv, base=self.base, G=self.G,
                           rpos=self.rpos)
        new.keys = keys
        new.Kp = self.K[lvl, pos] if self.kind == "scalar" else self.K[lvl, :, pos]
        return new

    def _gather(self, g, P):
        """``K[g, P]`` (scalar: (n, k); general: (n, q1, k)) from ``K`` or its compact values."""
        if self.K is not None:
            if self.kind == "scalar":
                return self.K[g[:, None], P]
            q1 = self.K.shape[1]
            return self.K[g[:, None, None], np.arange(q1)[None, :, None], P[:, None, :]]
        key = g[:, None].astype(np.int64) * self.G.shape[0] + P
        idx = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
        found = self.keys[idx] == key
        if self.kind == "scalar":
            return np.where(found, self.Kp[idx], 0.0)
        vals = self.Kp[idx]                                 # (n, k, q1)
        return np.where(found[:, :, None], vals, 0.0).transpose(0, 2, 1)

    def rows(self, blocks):
        """``(t, rho)`` of :meth:`~mlmext.linalg.base.Factor.local_inverse` for the rows whose
        blocks (in factor order, with ``X`` and ``codes``) are ``blocks``."""
        lams = self.lams
        b1 = blocks[0]
        g = b1.codes
        a = b1.X @ lams[0]                                 # row i: (Lambda_1' x_i)'
        if self.kind == "one":
            return [a], [np.einsum("iab,ib->ia", self.Minv[g], a)]
        P_list, c_list = [], []
        off = 0
        for b, lam in zip(blocks[1:], lams[1:]):
            P_list.append(self._index(off + b.codes[:, None] * b.q + np.arange(b.q)[None, :]))
            c_list.append(b.X @ lam)
            off += b.nre
        P = np.hstack(P_list)
        c = np.hstack(c_list)
        G = self.G
        KP = self._gather(g, P)
        if self.kind == "scalar":                          # KP (n, k)
            rho1 = (self.base[g] * a[:, 0] - np.einsum("ik,ik->i", KP, c))[:, None]
            if P.shape[1] == 1:
                rhor = G[P[:, 0], P[:, 0]][:, None] * c - KP * a
            else:
                GPP = G[P[:, :, None], P[:, None, :]]
                rhor = np.einsum("ikl,il->ik", GPP, c) - KP * a
            return _split(blocks, a, rho1, c_list, rhor)
        GPP = G[P[:, :, None], P[:, None, :]]                                    # (n, k, k)
        rho1 = np.einsum("iab,ib->ia", self.Minv[g], a) - np.einsum("iak,ik->ia", KP, c)
        rhor = np.einsum("ikl,il->ik", GPP, c) - np.einsum("iak,ia->ik", KP, a)
        return _split(blocks, a, rho1, c_list, rhor)


def _split(blocks, a, rho1, c_list, rhor):
    t_out, rho_out = [a], [rho1]
    off = 0
    for b, cb in zip(blocks[1:], c_list):
        t_out.append(cb)
        rho_out.append(rhor[:, off:off + b.q])
        off += b.q
    return t_out, rho_out
