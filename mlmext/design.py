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

import math
import numbers

import numpy as np
import pandas as pd
from scipy import sparse

from .immutable_cache import per_object

__all__ = ["ReTerm", "ReBlock", "RandomEffectsDesign", "grouping_factor", "match_levels",
           "lower_tri", "constant_rows", "used_categories"]


def constant_rows(value, shape):
    """An array of ``shape`` whose entries all equal ``value``, without memory of that size.

    A read-only broadcast of one number (zero strides): unit prior weights, a zero offset, the
    ones of an intercept-only random-effects term.  Numpy reads it like the full array (the same
    results); writing into it raises.  At 1M rows each is 8 MB less for the model to hold.
    """
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    # np.broadcast_to's array, made directly (its checks and iterator cost 2x a model's two)
    out = np.ndarray(shape, dtype=float, buffer=np.array(value, dtype=float),
                     strides=(0,) * len(shape))
    out.flags.writeable = False
    return out


def lower_tri(q):
    """``(i, j)`` of a q x q lower triangle column by column: lme4's order of a term's theta."""
    return [(i, j) for j in range(q) for i in range(j, q)]


def _is_missing(v):
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def _normalize_keys(values, name):
    """Distinct values of one grouping column as keys that compare by value, and their kind.

    Numbers become floats (``1``, ``1.0`` and ``np.int64(1)`` are one level, as in R),
    strings stay strings, missing values become None.  A column that mixes numbers
    and strings raises: ``1`` and ``"1"`` would otherwise be merged or split
    depending on how they print.
    """
    types = set(map(type, values))
    if types and all(t is str for t in types):
        return np.array(values, dtype=object), "string"
    if types and all(issubclass(t, (int, float, np.integer, np.floating))
                     and not issubclass(t, (bool, np.bool_)) for t in types):
        try:
            f = np.asarray(values, dtype=float)
        except OverflowError:
            f = None
        if f is not None:                # the loop's float(v), None for NaN, in one pass
            out = np.array(f.tolist(), dtype=object)
            nan = np.isnan(f)
            if nan.any():
                out[nan] = None
            return out, "number"
    out = np.empty(len(values), dtype=object)
    kinds = set()
    for i, v in enumerate(values):
        if _is_missing(v):
            out[i] = None
        elif isinstance(v, (bool, np.bool_)):
            out[i] = bool(v)
            kinds.add("bool")
        elif isinstance(v, numbers.Number):
            out[i] = float(v)
            kinds.add("number")
        elif isinstance(v, str):
            out[i] = v
            kinds.add("string")
        elif isinstance(v, (np.datetime64, pd.Timestamp)):
            out[i] = pd.Timestamp(v)
            kinds.add("time")
        else:
            out[i] = v
            kinds.add("other")
    if len(kinds) > 1:
        raise ValueError(f"grouping column {name!r} mixes {' and '.join(sorted(kinds))} values "
                         f"(e.g. 1 and '1'); convert it to one type, e.g. data[{name!r}].astype(str)")
    return out, (kinds.pop() if kinds else "number")


def column_keys(values, name):
    """``(codes, keys, kind)``: row i has key ``keys[codes[i]]`` (code -1: missing).

    Only the distinct values are normalized, so a million-row column costs one hash pass.
    """
    s = pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        keys, kind = _normalize_keys(s.cat.categories.to_numpy(dtype=object), name)
        return np.asarray(s.cat.codes, dtype=np.int64), keys, kind
    codes, uniq = pd.factorize(s, sort=False)
    keys, kind = _normalize_keys(np.asarray(uniq, dtype=object), name)
    return codes.astype(np.int64), keys, kind


def _level_label(key):
    """A level's label as R prints it: integral numbers without a decimal point."""
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() and abs(key) < 1e15 else repr(key)
    return str(key)


def _level_labels(keys):
    """:func:`_level_label` of each key (integral floats converted in one pass)."""
    if keys and all(type(k) is float for k in keys):
        f = np.asarray(keys, dtype=float)
        whole = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 1e15)
        out = np.where(whole, f, 0).astype(np.int64).astype(str).tolist()
        for i in np.flatnonzero(~whole).tolist():
            out[i] = repr(keys[i])
        return out
    if all(type(k) is str for k in keys):
        return list(keys)
    return [_level_label(k) for k in keys]


def _category_levels(cats, name):
    """Keys, kind and labels of a categorical's categories (all used)."""
    keys, kind = _normalize_keys(cats.to_numpy(dtype=object), name)
    keys = list(keys)
    return tuple(keys), kind, tuple(_level_labels(keys))


def used_categories(codes, k):
    """Per category of ``k``, whether some row has it (``codes``: a categorical's codes, -1
    where missing): the counts of the codes present, without the mask and its copy when none
    is missing (the usual case; the same counts)."""
    if len(codes) and np.minimum.reduce(codes) >= 0:
        return np.bincount(codes, minlength=k) > 0
    return np.bincount(codes[codes >= 0], minlength=k) > 0


def _factor_codes(values, name):
    """Integer codes, level keys, kind and level labels for one grouping column, in R's level
    order."""
    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        # the categories in their order, unused ones dropped (R's drop.unused.levels)
        cat = values.array if isinstance(values, pd.Series) else \
            values if isinstance(values, pd.Categorical) else pd.Categorical(values)
        codes = np.asarray(cat.codes, dtype=np.int64)
        cats = cat.categories
        used = used_categories(codes, len(cats))
        if np.logical_and.reduce(used):
            # the categories' keys and labels once per Index object (it is immutable)
            keys, kind, labels = per_object(_category_levels, cats, name)
            return codes, list(keys), kind, list(labels)
        new = np.cumsum(used) - 1
        codes = np.where(codes >= 0, new[np.maximum(codes, 0)], -1)
        keys, kind, labels = _category_levels(cats[used], name)
        return codes, list(keys), kind, list(labels)
    if isinstance(getattr(values, "dtype", None), pd.StringDtype):
        # strings only: the sorted distinct values are the keys (what the general path
        # below finds, in one factorize; of objects: sorting Arrow strings costs 4x more)
        codes, uniq = pd.factorize(np.asarray(values.to_numpy(dtype=object)), sort=True)
        if len(uniq):
            keys = uniq.tolist()
            return np.asarray(codes, dtype=np.int64), keys, "string", list(keys)
    codes, keys, kind = column_keys(values, name)
    # merge keys that are equal by value (1 and 1.0 in one object column) and sort
    merged, uniq = pd.factorize(pd.Series(keys, dtype=object), sort=True)
    codes = np.where(codes >= 0, merged[np.maximum(codes, 0)], -1)
    keys = list(np.asarray(uniq, dtype=object))
    return codes.astype(np.int64), keys, kind, _level_labels(keys)


def grouping_factor(data, factors):
    """Codes and labels of the interaction of ``factors`` (R's ``a:b``, unused levels dropped).

    The first factor varies slowest, as in R, and labels read ``"a1:b1"``.  ``data``: a
    DataFrame, or a callable giving a column's values (a Series or an array) by name.

    Returns
    -------
    codes : ndarray of int64
        Level of each row.
    labels : list of str
        Level labels.
    keys : list of tuple
        Per level, the value of each factor (as :func:`_normalize_keys` makes
        them): new data are matched to levels by these, not by the labels.
    kinds : tuple of str
        Per factor, the kind of its values ("number", "string", ...).
    """
    get = data if callable(data) else data.__getitem__
    codes, keys0, kind, labels = _factor_codes(get(factors[0]), factors[0])
    keys = [(k,) for k in keys0]
    kinds = [kind]
    for f in factors[1:]:
        c2, k2, kind2, labels2 = _factor_codes(get(f), f)
        kinds.append(kind2)
        combined = codes * len(k2) + c2
        uniq, codes = np.unique(combined, return_inverse=True)
        outer, inner = np.divmod(uniq, len(k2))
        pairs = list(zip(outer.tolist(), inner.tolist()))
        keys = [keys[a] + (k2[b],) for a, b in pairs]
        labels = [labels[a] + ":" + labels2[b] for a, b in pairs]
    if len(set(labels)) < len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        raise ValueError(f"the grouping factor {':'.join(factors)} has two levels labelled {dup!r} "
                         "(labels containing ':' are ambiguous in an interaction); replace ':' in "
                         "the labels of " + ", ".join(repr(f) for f in factors))
    return codes.astype(np.int64, copy=False), labels, keys, tuple(kinds)


def match_levels(data, term):
    """Codes of ``term``'s fitted levels for the rows of new ``data`` (-1: not seen, or missing).

    Values are compared as :func:`_normalize_keys` makes them, so a group stored as
    int when fitting and as float in new data is the same group; a missing value
    is an unseen level.  A column holding numbers when fitting and strings now
    (or the reverse) raises rather than matching nothing.
    """
    combined = np.zeros(len(data), dtype=np.int64)
    fitted = np.zeros(term.m, dtype=np.int64)
    unseen = np.zeros(len(data), dtype=bool)
    for j, (f, kind) in enumerate(zip(term.factors, term.kinds)):
        codes, keys, new_kind = column_keys(data[f], f)
        if new_kind != kind and (codes >= 0).any() and "other" not in (kind, new_kind):
            raise ValueError(f"grouping column {f!r} held {kind} values when the model was fitted "
                             f"and holds {new_kind} values in the new data; convert it (levels "
                             "are matched by value)")
        levels_f = pd.Index(list(dict.fromkeys(k[j] for k in term.keys)), dtype=object)
        pos = levels_f.get_indexer(pd.Index(keys, dtype=object)) if len(keys) else np.zeros(0, int)
        row = np.where(codes >= 0, pos[np.maximum(codes, 0)] if len(pos) else -1, -1)
        unseen |= row < 0
        combined = combined * len(levels_f) + np.maximum(row, 0)
        fitted = fitted * len(levels_f) + levels_f.get_indexer(
            pd.Index([k[j] for k in term.keys], dtype=object))
    out = pd.Index(fitted).get_indexer(combined).astype(np.int64)
    out[unseen] = -1
    return out


class ReTerm:
    """One random-effects term: grouping factor, model matrix and theta slice."""

    def __init__(self, name, factors, lhs, X, colnames, codes, levels, keys=None, kinds=None):
        self.name = name
        self.factors = tuple(factors)
        self.lhs = lhs
        self.X = np.asarray(X, dtype=float)
        if self.X.shape[1:] == (1,) and self.X.strides[0] and np.all(self.X == 1.0):
            self.X = constant_rows(1.0, self.X.shape)      # an intercept: ones, not stored
        self._q, self.col_rms = self.X.shape[1], None
        self.colnames = list(colnames)
        self.codes = codes
        self.levels = list(levels)
        # per level, the value of each factor: new data are matched by value (match_levels)
        self.keys = [(lab,) for lab in self.levels] if keys is None else list(keys)
        self.kinds = tuple(kinds) if kinds is not None else ("string",) * len(self.factors)
        self.theta_index = None  # set by RandomEffectsDesign

    @property
    def q(self):
        return self._q

    @property
    def m(self):
        return len(self.levels)

    def column_rms(self):
        """Root mean square of each column of X (stored when the rows are not held: Dask)."""
        if self.X is None:
            return self.col_rms
        # (np.mean's sum and division without its wrappers: the same rounding; X * X is
        # X ** 2 bit for bit, without the power ufunc no other step of a fit uses)
        return np.sqrt(np.add.reduce(self.X * self.X, axis=0) / len(self.X)) if len(self.X) \
            else np.ones(self.q)

    @property
    def ntheta(self):
        return self.q * (self.q + 1) // 2

    def __repr__(self):
        return f"ReTerm(({self.lhs} | {self.name}), q={self.q}, levels={self.m})"

    def __getstate__(self):
        # the formula engine's spec (patsy's DesignInfo) cannot be pickled; the model rebuilds it
        state = self.__dict__.copy()
        state["spec"] = None
        return state


class ReBlock:
    """All terms on one grouping factor; one diagonal block of the factorization."""

    def __init__(self, terms):
        self.terms = list(terms)
        t0 = self.terms[0]
        self.name = t0.name
        self.codes = t0.codes
        self.levels = t0.levels
        self.X = np.hstack([t.X for t in self.terms]) if len(self.terms) > 1 else t0.X
        self._q = self.X.shape[1]
        # template positions (row, col) in the q x q factor for each theta index
        rows, cols, idx = [], [], []
        off = 0
        for t in self.terms:
            for (i, j), k in zip(lower_tri(t.q), t.theta_index.tolist()):   # (Python ints)
                rows.append(off + i)
                cols.append(off + j)
                idx.append(k)
            off += t.q
        self.t_rows = np.array(rows, dtype=np.int64)
        self.t_cols = np.array(cols, dtype=np.int64)
        self.t_idx = np.array(idx, dtype=np.int64)

    @property
    def q(self):
        return self._q

    @property
    def m(self):
        return len(self.levels)

    @property
    def nre(self):
        return self.m * self.q

    def column_rms(self):
        return np.concatenate([t.column_rms() for t in self.terms])

    def lam(self, theta):
        """The block's q x q lower-triangular template Lambda for ``theta``."""
        L = np.zeros((self.q, self.q))
        L[self.t_rows, self.t_cols] = theta[self.t_idx]
        return L

    def Z(self):
        """Sparse n x (m q) model matrix; column ``g*q + j`` is column j at level g."""
        n, q = self.X.shape
        cols = (self.codes[:, None] * q + np.arange(q)[None, :]).ravel()
        # q entries per row: built as CSR and transposed, not through COO (half the time)
        return sparse.csr_matrix((self.X.ravel(), cols, np.arange(0, n * q + 1, q)),
                                 shape=(n, self.m * q)).tocsc()


class RandomEffectsDesign:
    """The random-effects structure of a model: terms in lme4 order, blocks in factor order."""

    def __init__(self, terms):
        if not terms:
            raise ValueError("the formula has no random-effects term such as (1 | g)")
        # lme4 orders terms by decreasing number of levels (stable)
        self.terms = terms = sorted(terms, key=lambda t: -t.m) if len(terms) > 1 else list(terms)
        # theta's entries term by term, each template's lower triangle column by column: the
        # diagonals (standard deviations) bounded by 0 and started at 1, in Python lists
        k = 0
        lower, start = [], []
        for t in terms:
            tri = lower_tri(t.q)
            t.theta_index = np.arange(k, k + len(tri))
            k += len(tri)
            for i, j in tri:
                lower.append(0.0 if i == j else -np.inf)
                start.append(1.0 if i == j else 0.0)
        self.ntheta = k
        groups = {}
        for t in terms:
            groups.setdefault(tuple(sorted(t.factors)), []).append(t)
        blocks = [ReBlock(ts) for ts in groups.values()]
        self.blocks = sorted(blocks, key=lambda b: -b.nre) if len(blocks) > 1 else blocks
        self.lower = np.array(lower, dtype=float)
        self.theta_start = np.array(start, dtype=float)

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
        for k, (i, j) in enumerate(lower_tri(term.q)):
            L[i, j] = theta[term.theta_index[k]]
        return L @ L.T

    def theta_units(self):
        """Per theta entry, the root mean square of its term's row column of Z.

        Entry (i, j) of a template multiplies column i of the term's model matrix, so
        ``theta * units`` does not depend on the units of the predictors: the optimizer's
        scaling, and the scale-free test of a zero standard deviation.
        """
        if self.__dict__.get("_theta_units") is None:     # the terms never change: once
            units = np.ones(self.ntheta)
            for t in self.terms:
                rms, idx = t.column_rms().tolist(), t.theta_index.tolist()   # (Python floats:
                for k, (i, _) in enumerate(lower_tri(t.q)):                 # no NumPy scalars)
                    if math.isfinite(rms[i]) and rms[i] > 0:
                        units[idx[k]] = rms[i]
            self._theta_units = units
        return self._theta_units.copy()

    def column_mirrors(self):
        """``{diagonal's theta index: theta indices below it in its template column}`` for
        the columns that have entries below the diagonal: negating them with the diagonal
        gives the same model (see :meth:`canonical_theta`)."""
        out = {}
        for t in self.terms:
            pos = {ij: t.theta_index[k] for k, ij in enumerate(lower_tri(t.q))}
            for j in range(t.q - 1):
                out[int(pos[(j, j)])] = np.array([pos[(i, j)] for i in range(j + 1, t.q)])
        return out

    def canonical_theta(self, theta):
        """The same model with every template diagonal >= 0.

        Negating a column of a template (its diagonal and the entries below) leaves
        ``Lambda Lambda'`` unchanged, so the deviance is defined and smooth for any sign of
        a diagonal and each point has a mirror image with nonnegative diagonals: the
        optimizer works without bounds and this maps its end point back.
        """
        theta = np.array(theta, dtype=float)
        for t in self.terms:
            pos = {ij: t.theta_index[k] for k, ij in enumerate(lower_tri(t.q))}
            for j in range(t.q):
                if theta[pos[(j, j)]] < 0:
                    for i in range(j, t.q):
                        theta[pos[(i, j)]] = -theta[pos[(i, j)]]
        return theta

    def theta_names(self):
        """Names of the entries of theta (``group.column``, ``group.row.column`` below the
        diagonals), lme4's order; a new list each call (made once: the terms never change)."""
        names = self.__dict__.get("_theta_names")
        if names is None:
            names = self._theta_names = tuple(self._make_theta_names())
        return list(names)

    def _make_theta_names(self):
        names = []
        for t in self.terms:
            for i, j in lower_tri(t.q):
                if i == j:
                    names.append(f"{t.name}.{t.colnames[i]}")
                else:
                    names.append(f"{t.name}.{t.colnames[i]}.{t.colnames[j]}")
        return names

