"""Row-wise pieces of the inverse of the random-effects system, for any rows.

:meth:`DenseFactor.local_inverse_parts` computes, at the current factor, what does not depend
on the rows (the first block's diagonal blocks of ``M^-1``, its coupling ``K`` with the rest
and the rest's inverse ``G``); :meth:`LocalInverse.rows` gathers them for rows given by their
blocks' model matrices and level codes: the factor's own rows (``local_inverse``) or a chunk
of the data held elsewhere (a Dask worker's partition).
"""
from __future__ import annotations

import numpy as np

__all__ = ["LocalInverse", "coupling_on_pattern", "pattern_keys"]

#: pairs per batch of :func:`coupling_on_pattern`
CHUNK = 1 << 19


class LocalInverse:
    """The row-independent part of :meth:`~mlmext.linalg.base.Factor.local_inverse`.

    ``kind`` is "one" (one block: ``Minv`` per level), "scalar" (scalar first block: ``base``
    per level, ``K`` (m1, rz)) or "general" (``Minv`` (m1, q1, q1) with the rest's share
    added, ``K`` (m1, q1, rz)); ``G`` is the rest's inverse, ``rpos`` the positions of the
    rest's random effects in it (None: natural order).

    ``K`` is dense, or compact (``K`` None): ``Kp`` holds it only at ``keys``, the (first-block
    level, rest position) pairs where rows of the data have both (the cross-products'
    pattern; about one number per distinct pair, :func:`coupling_on_pattern`).  A pair all of
    whose rows have weight 0 or a zero column may be missing from it: its rows then read 0,
    and enter the sums only multiplied by that weight or column.
    """

    def __init__(self, lams, kind, Minv=None, base=None, K=None, G=None, rpos=None,
                 keys=None, Kp=None, cache=None):
        self.lams, self.kind = lams, kind
        self.Minv, self.base, self.K, self.G, self.rpos = Minv, base, K, G, rpos
        #: the compact K (no dense K): sorted ``level * rz + position`` and K's values there
        self.keys, self.Kp = keys, Kp
        #: a dict the factor keeps across evaluations: the rows' positions in ``keys`` (the
        #: same rows and keys at every evaluation of a fit)
        self._cache = cache

    def _key_positions(self, key, blocks):
        """``(idx, found)``: positions of ``key`` in ``keys`` (``found`` None: all found), from
        the cache when the keys and the rows' codes are the same objects as when it was filled
        (one entry per set of rows: the chunks of the in-memory gradient)."""
        tag = [self.keys, self.rpos] + [b.codes for b in blocks]
        c = self._cache
        slot = ("rows", id(blocks[0].codes))
        got = None if c is None else c.get(slot)
        if got is not None and len(got[0]) == len(tag) and all(x is y for x, y in zip(got[0], tag)):
            return got[1], got[2]
        idx = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
        found = self.keys[idx] == key
        if found.all():
            found = None
        if self.keys.size < 2**31:                 # kept across evaluations: half the bytes
            idx = idx.astype(np.int32)
        if c is not None:
            c[slot] = (tag, idx, found)            # one assignment: consistent for other threads
        return idx, found

    def __getstate__(self):                        # sent to workers: not the factor's cache
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _index(self, idx):
        return idx if self.rpos is None else self.rpos[idx]

    def _gather(self, g, P, blocks):
        """``K[g, P]`` (scalar: (n, k); general: (n, q1, k)) from ``K`` or its compact values."""
        if self.K is not None:
            if self.kind == "scalar":
                return self.K[g[:, None], P]
            q1 = self.K.shape[1]
            return self.K[g[:, None, None], np.arange(q1)[None, :, None], P[:, None, :]]
        key = g[:, None].astype(np.int64) * self.G.shape[0] + P
        if not self.keys.size:                              # no coupling at all
            return np.zeros(key.shape if self.kind == "scalar" else
                            (key.shape[0], self.Kp.shape[1], key.shape[1]))
        idx, found = self._key_positions(key, blocks)
        if self.kind == "scalar":
            return self.Kp[idx] if found is None else np.where(found, self.Kp[idx], 0.0)
        vals = self.Kp[idx]                                 # (n, k, q1)
        if found is not None:
            vals = np.where(found[:, :, None], vals, 0.0)
        return vals.transpose(0, 2, 1)

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
        P = P_list[0] if len(P_list) == 1 else np.hstack(P_list)
        c = c_list[0] if len(c_list) == 1 else np.hstack(c_list)
        G = self.G
        KP = self._gather(g, P, blocks)
        if self.kind == "scalar":                          # KP (n, k)
            rho1 = (self.base[g] * a[:, 0] - np.einsum("ik,ik->i", KP, c))[:, None]
            if P.shape[1] == 1:
                rhor = np.diagonal(G)[P[:, 0]][:, None] * c - KP * a
            else:
                GPP = G[P[:, :, None], P[:, None, :]]
                rhor = np.einsum("ikl,il->ik", GPP, c) - KP * a
            return _split(blocks, a, rho1, c_list, rhor)
        GPP = G[P[:, :, None], P[:, None, :]]                                    # (n, k, k)
        rho1 = np.einsum("iab,ib->ia", self.Minv[g], a) - np.einsum("iak,ik->ia", KP, c)
        rhor = np.einsum("ikl,il->ik", GPP, c) - np.einsum("iak,ia->ik", KP, a)
        return _split(blocks, a, rho1, c_list, rhor)


def pattern_keys(lvl, pos, rz):
    """Sorted unique ``lvl * rz + pos`` (the keys of :func:`coupling_on_pattern`)."""
    return np.unique(np.asarray(lvl, dtype=np.int64) * rz + pos)


def coupling_on_pattern(indptr, cols, data, G, q1, keys):
    """``K = C G`` only where the pattern ``(lvl, pos)`` reads it, never the dense ``K``.

    ``C`` (``m1 q1`` x ``rz``, row ``g q1 + a``) is given by its CSR arrays, ``G`` is the
    rest's inverse (rz x rz), ``keys`` the pattern (:func:`pattern_keys`).  ``K[g q1 + a, p] = sum_r C[g q1 + a, r] G[r, p]`` is summed over
    the pairs (nonzero r of a row of level g, pattern position p of g): ``sum_g k_g^2`` pairs
    for ``k_g`` effects per level (20 items per user: 20 x 20 per user), where the dense
    product costs ``nnz(C) rz``; about ``CHUNK`` pairs at a time.

    Returns
    -------
    Kp : ndarray, shape (nkeys, q1)
        ``K`` at the keys.
    """
    rz = G.shape[0]
    nrow = indptr.size - 1
    Gf, ld = _flat(G)
    if q1 == 1 and keys.size == cols.size:
        row_of = np.repeat(np.arange(nrow, dtype=np.int64), np.diff(indptr))
        if np.array_equal(keys, row_of * rz + cols):
            # the pattern is C's own (scalar blocks): per level the k x k block of G on its
            # columns times its values, levels grouped by k (no index per pair)
            return _coupling_by_count(indptr, cols, data, Gf, ld)[:, None]
    klvl, kpos = np.divmod(keys, rz)
    kptr = np.searchsorted(klvl, np.arange(nrow // q1 + 1))     # level g's keys: kptr[g]:kptr[g+1]
    row_lvl = np.arange(nrow) // q1
    npat = np.diff(kptr)[row_lvl]                               # pattern positions per row
    row_of = np.repeat(np.arange(nrow), np.diff(indptr))        # row of each nonzero
    reps = npat[row_of]                                         # pairs per nonzero
    Kp = np.zeros(keys.size * q1)
    cum = np.concatenate([[0], np.cumsum(reps)])
    start, nnz = 0, cols.size
    chunk = CHUNK
    while start < nnz:
        stop = max(int(np.searchsorted(cum, cum[start] + chunk, side="right")) - 1, start + 1)
        j = np.repeat(np.arange(start, stop), reps[start:stop])
        within = np.arange(j.size) - np.repeat(cum[start:stop] - cum[start], reps[start:stop])
        rows = row_of[j]
        kidx = kptr[row_lvl[rows]] + within
        vals = data[j] * Gf[cols[j].astype(np.int64) * ld + kpos[kidx]]
        tgt = kidx * q1 + rows % q1
        lo = int(tgt.min())
        part = np.bincount(tgt - lo, weights=vals)
        Kp[lo:lo + part.size] += part
        start = stop
    return Kp.reshape(-1, q1)


def _coupling_by_count(indptr, cols, data, Gf, ld, chunk=CHUNK):
    """``K[g, c] = sum_r C[g, r] G[r, c]`` at C's nonzeros (row g's columns ``R_g``:
    ``G[R_g, R_g] @ C[g, R_g]``), rows with the same number of nonzeros together."""
    k = np.diff(indptr)
    out = np.zeros(cols.size)
    order = np.argsort(k, kind="stable")
    ks = k[order]
    bounds = np.flatnonzero(np.diff(ks)) + 1
    for c0, c1 in zip(np.r_[0, bounds], np.r_[bounds, ks.size]):
        kv = int(ks[c0])
        if kv == 0:
            continue
        step = max(1, chunk // (kv * kv))
        for s0 in range(int(c0), int(c1), step):
            rows = order[s0:min(s0 + step, int(c1))]
            ent = indptr[rows][:, None] + np.arange(kv)           # (levels, k) entries
            I = cols[ent].astype(np.int64)
            GG = Gf[(I * ld)[:, :, None] + I[:, None, :]]          # (levels, k, k)
            out[ent] = np.einsum("gkl,gl->gk", GG, data[ent])
    return out


def _flat(G):
    """``(flat, ld)`` with ``G[i, j] = flat[i * ld + j]`` for the symmetric ``G``, without a copy
    when ``G`` is C- or F-contiguous (symmetric: the transpose) or a block of rows and leading
    columns of a C-contiguous array (the factor's inverse, :meth:`DenseFactor._rest_inverse`)."""
    if G.flags.c_contiguous:
        return G.reshape(-1), G.shape[1]
    if G.flags.f_contiguous:
        return G.T.reshape(-1), G.shape[0]
    s0, s1 = G.strides
    if s1 == G.itemsize and s0 % G.itemsize == 0 and s0 >= s1 * G.shape[1] and G.size:
        ld = s0 // G.itemsize
        # the span from G[0, 0] to G[-1, -1]: inside the array G is a view of
        return np.lib.stride_tricks.as_strided(G, shape=((G.shape[0] - 1) * ld + G.shape[1],),
                                               strides=(G.itemsize,), writeable=False), ld
    return np.ascontiguousarray(G).reshape(-1), G.shape[1]


def _split(blocks, a, rho1, c_list, rhor):
    t_out, rho_out = [a], [rho1]
    off = 0
    for b, cb in zip(blocks[1:], c_list):
        t_out.append(cb)
        rho_out.append(rhor[:, off:off + b.q])
        off += b.q
    return t_out, rho_out
