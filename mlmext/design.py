"""Random-effects design: bar terms -> grouping factors, Z blocks, Lambda(theta).

Vocabulary (lme4 / MixedModels.jl):

* a *term* is one ``(lhs | g)`` after expansion; it has ``q`` columns and a
  ``q x q`` lower-triangular relative covariance factor whose lower triangle,
  column-major, is the term's slice of ``theta`` (lme4's order: terms sorted
  by decreasing number of levels, stable);
* a *block* gathers the terms that share a grouping factor (their templates
  are stacked block-diagonally), so that each grouping factor appears once in
  the factorization.  Blocks are ordered by decreasing number of random
  effects so that the first diagonal block of the Cholesky factor never fills.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["ReTerm", "ReBlock", "RandomEffectsDesign", "grouping_factor"]


def lower_tri(q):
    """``(i, j)`` of a q x q lower triangle column by column: lme4's order of a term's theta."""
    return [(i, j) for j in range(q) for i in range(j, q)]


def _factor_codes(values):
    """Integer codes and level labels for one column, in R's level order."""
    s = pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        cat = s.cat.remove_unused_categories()
        return np.asarray(cat.cat.codes, dtype=np.int64), [str(c) for c in cat.cat.categories]
    codes, uniq = pd.factorize(s, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniq]


def grouping_factor(data, factors):
    """Codes and labels of the interaction of ``factors`` (R's ``a:b``, unused levels dropped).

    The first factor varies slowest, as in R, and labels read ``"a1:b1"``.
    """
    codes, labels = _factor_codes(data[factors[0]])
    labels = np.asarray(labels, dtype=object)
    for f in factors[1:]:
        c2, l2 = _factor_codes(data[f])
        combined = codes * len(l2) + c2
        uniq, codes = np.unique(combined, return_inverse=True)
        l2 = np.asarray(l2, dtype=object)
        labels = np.array([f"{labels[u // len(l2)]}:{l2[u % len(l2)]}" for u in uniq], dtype=object)
    return codes.astype(np.int64), list(labels)


class ReTerm:
    """One random-effects term: grouping factor, model matrix and theta slice."""

    def __init__(self, name, factors, lhs, X, colnames, codes, levels):
        self.name = name
        self.factors = tuple(factors)
        self.lhs = lhs
        self.X = np.asarray(X, dtype=float)
        self.colnames = list(colnames)
        self.codes = codes
        self.levels = list(levels)
        self.theta_index = None  # set by RandomEffectsDesign

    @property
    def q(self):
        return self.X.shape[1]

    @property
    def m(self):
        return len(self.levels)

    @property
    def ntheta(self):
        return self.q * (self.q + 1) // 2

    def __repr__(self):
        return f"ReTerm(({self.lhs} | {self.name}), q={self.q}, levels={self.m})"


class ReBlock:
    """All terms on one grouping factor; one diagonal block of the factorization."""

    def __init__(self, terms):
        self.terms = list(terms)
        t0 = self.terms[0]
        self.name = t0.name
        self.codes = t0.codes
        self.levels = t0.levels
        self.X = np.hstack([t.X for t in self.terms]) if len(self.terms) > 1 else t0.X
        # template positions (row, col) in the q x q factor for each theta index
        rows, cols, idx = [], [], []
        off = 0
        for t in self.terms:
            k = 0
            for j in range(t.q):          # column-major lower triangle, as lme4
                for i in range(j, t.q):
                    rows.append(off + i)
                    cols.append(off + j)
                    idx.append(t.theta_index[k])
                    k += 1
            off += t.q
        self.t_rows = np.array(rows, dtype=np.int64)
        self.t_cols = np.array(cols, dtype=np.int64)
        self.t_idx = np.array(idx, dtype=np.int64)

    @property
    def q(self):
        return self.X.shape[1]

    @property
    def m(self):
        return len(self.levels)

    @property
    def nre(self):
        return self.m * self.q

    def lam(self, theta):
        """The block's q x q lower-triangular template Lambda for ``theta``."""
        L = np.zeros((self.q, self.q))
        L[self.t_rows, self.t_cols] = theta[self.t_idx]
        return L

    def Z(self):
        """Sparse n x (m q) model matrix; column ``g*q + j`` is column j at level g."""
        n, q = self.X.shape
        rows = np.repeat(np.arange(n), q)
        cols = (self.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        return sparse.csc_matrix((self.X.ravel(), (rows, cols)), shape=(n, self.m * q))


class RandomEffectsDesign:
    """The random-effects structure of a model: terms in lme4 order, blocks in factor order."""

    def __init__(self, terms):
        if not terms:
            raise ValueError("the formula has no random-effects term such as (1 | g)")
        # lme4 orders terms by decreasing number of levels (stable)
        order = sorted(range(len(terms)), key=lambda i: -terms[i].m)
        self.terms = [terms[i] for i in order]
        k = 0
        for t in self.terms:
            t.theta_index = np.arange(k, k + t.ntheta)
            k += t.ntheta
        self.ntheta = k
        groups = {}
        for t in self.terms:
            groups.setdefault(tuple(sorted(t.factors)), []).append(t)
        blocks = [ReBlock(ts) for ts in groups.values()]
        self.blocks = sorted(blocks, key=lambda b: -b.nre)
        lower = np.full(self.ntheta, -np.inf)
        start = np.zeros(self.ntheta)
        for t in self.terms:
            k = 0
            for j in range(t.q):
                for i in range(j, t.q):
                    if i == j:
                        lower[t.theta_index[k]] = 0.0
                        start[t.theta_index[k]] = 1.0
                    k += 1
        self.lower = lower
        self.theta_start = start

    @property
    def nre(self):
        return sum(b.nre for b in self.blocks)

    def lambdas(self, theta):
        return [b.lam(theta) for b in self.blocks]

    def Z(self, format="csc"):
        """Sparse n x nre model matrix of all random effects, blocks in order."""
        return sparse.hstack([b.Z() for b in self.blocks], format=format)

    def Lambda(self, theta):
        """Sparse nre x nre relative covariance factor (CSC): ``kron(I_m, lam)`` per block."""
        return sparse.block_diag([sparse.kron(sparse.identity(b.m), sparse.csr_matrix(lam))
                                  for b, lam in zip(self.blocks, self.lambdas(theta))], format="csc")

    def term_cov(self, theta, term):
        """Relative covariance Lambda Lambda' of one term (multiply by sigma^2)."""
        L = np.zeros((term.q, term.q))
        k = 0
        for j in range(term.q):
            for i in range(j, term.q):
                L[i, j] = theta[term.theta_index[k]]
                k += 1
        return L @ L.T

    def theta_names(self):
        names = []
        for t in self.terms:
            for i, j in lower_tri(t.q):
                if i == j:
                    names.append(f"{t.name}.{t.colnames[i]}")
                else:
                    names.append(f"{t.name}.{t.colnames[i]}.{t.colnames[j]}")
        return names
