"""Random slopes the data cannot identify: a slope constant within every level of its group.

lme4 builds such a model silently and reports a variance for nothing; the formula's model
frame warns (:class:`UnidentifiedSlopeWarning`) as the design is built.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .design import lower_tri

__all__ = ["UnidentifiedSlopeWarning", "slopes_constant_within_levels", "warn_constant_slopes",
           "clearly_not_fit_exactly"]

_EPS = np.finfo(float).eps


def clearly_not_fit_exactly(XY, max_columns=4):
    """Whether the last column ``y`` of ``XY = [X y]`` (``n x (p + 1)``, at most
    ``max_columns`` columns) is certainly left with a residual sum of squares on the columns
    of ``X`` above ``1e-6 y'y`` (so far above any exact-fit threshold), ``X``'s columns far
    from collinear; False: undecided (a QR decomposition decides).

    From the cross-products in one product and their column-scaled Cholesky factor in Python
    floats: the last pivot squared is that ratio.  The products' rounding moves the scaled
    cross-products by at most ``(n + p + 1) eps`` each, and the ratio (a Schur complement)
    by at most that times ``(1 + sum |b|)^2`` to first order (``b``: y's coefficients on the
    scaled columns); the test asks for a thousandth of the ratio with a factor 16 to spare.
    LAPACK's QR is then not needed: its code is out of the CPU caches after a garbage
    collection, and no fit uses it.
    """
    n, k = XY.shape
    if not 2 <= k <= max_columns or n < k:
        return False
    G = (XY.T @ XY).tolist()
    d = [G[i][i] for i in range(k)]
    if not all(1e-150 < v < 1e150 for v in d):
        return False
    s = [1.0 / math.sqrt(v) for v in d]
    L = [[0.0] * k for _ in range(k)]
    for j in range(k):
        for i in range(j, k):
            v = G[i][j] * s[i] * s[j] - sum(L[i][t] * L[j][t] for t in range(j))
            if i > j:
                L[i][j] = v / L[j][j]
            elif v > (1e-2 if j < k - 1 else 1e-6):
                L[j][j] = math.sqrt(v)
            else:
                return False           # collinear columns or a near fit: the QR decides
    p = k - 1
    b = [0.0] * p                     # L_XX' b = L[p][:p]: y's coefficients, scaled
    for i in reversed(range(p)):
        b[i] = (L[p][i] - sum(L[t][i] * b[t] for t in range(i + 1, p))) / L[i][i]
    err = (n + k) * _EPS * (1.0 + sum(map(abs, b))) ** 2
    return 16.0 * err < 1e-3 * L[p][p] ** 2


class UnidentifiedSlopeWarning(UserWarning):
    """A random slope whose variable is constant within every level of its grouping factor.

    A ``UserWarning`` (as the other warnings about the model as specified, such as a
    rank-deficient fixed-effects design), not a ``ConvergenceWarning``: it is raised when
    the model is built, before any fit, and says what the data cannot identify.
    """


def _level_constant(X, codes):
    """Per column of ``X``: is it constant within every level of ``codes``?"""
    m = int(codes.max()) + 1 if len(codes) else 0
    scale = np.abs(X).max(axis=0)
    tol = 1e-12 * np.where(scale > 0, scale, 1.0)
    ref = np.zeros(m, dtype=np.int64)
    ref[codes] = np.arange(len(codes))             # a row of each level (any one will do)
    # two values of a level further apart than tol: not constant (the usual slope); one value
    # in every row (an intercept): constant; else each level's max - min decides
    out = ~(np.abs(X - X[ref[codes]]) > tol).any(axis=0)
    for j in np.flatnonzero(out & ~np.all(X == X[:1], axis=0)):
        hi = np.full(m, -np.inf)
        lo = np.full(m, np.inf)
        with np.errstate(invalid="ignore"):                 # NaN: NaN spread, not constant
            np.maximum.at(hi, codes, X[:, j])
            np.minimum.at(lo, codes, X[:, j])
        out[j] = np.all(hi - lo <= tol[j])          # a level without rows: -inf, no objection
    return out


def _spread_in_first_level(X, codes):
    """Per column of ``X``: does it spread by more than :func:`_level_constant`'s tolerance
    within the level of the first row?  Such a column is not constant within every level (a
    cheap look at one level that usually settles the question for every slope)."""
    scale = np.abs(X).max(axis=0)
    tol = 1e-12 * np.where(scale > 0, scale, 1.0)
    rows = X[codes == codes[0]]
    return rows.max(axis=0) - rows.min(axis=0) > tol


def _spread_in_first_two_rows(X, codes):
    """How many columns of ``X`` the first two rows, when they are in one level, show to
    spread by more than :func:`_level_constant`'s tolerance within it (0 otherwise): a
    lower bound of :func:`_spread_in_first_level`'s count (a level's max - min is at least
    any two of its values' difference, in floating point too) that settles the usual
    sorted data with a few Python floats instead of ~10 NumPy reductions."""
    if X.shape[0] < 2 or codes[0] != codes[1]:
        return 0
    scale = np.maximum.reduce(np.abs(X), axis=0).tolist()
    count = 0
    for u, v, s in zip(X[0].tolist(), X[1].tolist(), scale):
        count += abs(u - v) > 1e-12 * (s if s > 0 else 1.0)
    return count


def slopes_constant_within_levels(X, codes, colnames, pairs=None):
    """Random-effects columns whose variance parameters the data cannot identify.

    ``X`` holds the random-effects columns on one grouping factor (``codes``: the
    level of each row).  A column (other than a column of ones, the intercept) is a
    candidate when it is constant within every level and another column that is
    constant within every level (usually the intercept) is non-zero in a level where
    it is: in such a level the two columns are proportional, so their random effects
    act as one, ``b0 + b1 w_g``.  The covariance parameters of the constant columns
    then enter the model only through ``z_g' Sigma z_g`` per level (``z_g`` the
    level's values): they are identified only if the products ``z_ga z_gb`` of the
    parameters' column pairs ``(a, b)`` span their number of dimensions over the levels
    (``(1 + w | g)``: ``w`` with three or more distinct values; ``(1 + w || g)``: two
    distinct values of ``w^2``).  Candidates are reported when they do not.  Columns
    that never share a level (the dummies of ``(0 + f | g)``) are not candidates.

    Parameters
    ----------
    pairs : list of (int, int), optional
        The column pairs that have a covariance parameter (``(a, a)``: a variance);
        default all pairs (one correlated term).

    Returns
    -------
    list of str
        The names of the reported columns, in their order.
    """
    X = np.asarray(X, dtype=float)
    if X.shape[1] < 2:
        return []
    codes = np.asarray(codes)
    if len(codes) and (X.shape[1] - _spread_in_first_two_rows(X, codes) < 2 or
                       X.shape[1] - np.count_nonzero(_spread_in_first_level(X, codes)) < 2):
        return []           # at most one column constant within levels: nothing to report
    const = _level_constant(X, codes)
    ones = np.all(X == 1.0, axis=0)
    if const.sum() < 2 or not np.any(const & ~ones):
        return []
    nonzero = X != 0
    out = []
    for j in np.flatnonzero(const & ~ones):
        others = [k for k in np.flatnonzero(const) if k != j]
        if np.any(nonzero[:, [j]] & nonzero[:, others]):
            out.append(j)
    if not out:
        return []
    q = X.shape[1]
    if pairs is None:
        pairs = [(a, b) for b in range(q) for a in range(b, q)]
    cols = set(np.flatnonzero(const).tolist())
    pairs = [(a, b) for a, b in pairs if a in cols and b in cols]
    _, first = np.unique(codes, return_index=True)
    Zg = X[first]                                   # each level's (constant) values
    M = np.column_stack([Zg[:, a] * Zg[:, b] for a, b in pairs])
    scale = np.abs(M).max(axis=0)
    M = M / np.where(scale > 0, scale, 1.0)
    if np.linalg.matrix_rank(M, tol=1e-8 * max(M.shape)) >= len(pairs):
        return []                                   # identified by the spread of z_g
    return [colnames[j] for j in out]


def warn_constant_slopes(design, stacklevel=2):
    """Warn (:class:`UnidentifiedSlopeWarning`) for each grouping factor of ``design`` with random
    slopes that :func:`slopes_constant_within_levels` reports (the terms on one factor are
    taken together: ``(1 | g) + (0 + w | g)`` is ``(1 + w || g)``)."""
    for block in design.blocks:
        names = [c for t in block.terms for c in t.colnames]
        pairs, off = [], 0
        for t in block.terms:           # the (column, column) pairs with a parameter
            pairs += [(off + i, off + j) for i, j in lower_tri(t.q)]
            off += t.q
        cols = slopes_constant_within_levels(block.X, block.codes, names, pairs)
        if not cols:
            continue
        written = " + ".join(dict.fromkeys(getattr(t, "source", "") or f"({t.lhs} | {t.name})"
                                           for t in block.terms))
        what = ", ".join(repr(c) for c in cols)
        one = len(cols) == 1
        # with (1 + w || g) the slope has no correlation parameter, only a variance
        correlated = any(t.q > 1 and set(cols) & set(t.colnames) for t in block.terms)
        params = "variance and correlation" if correlated else "variance"
        warnings.warn(
            f"random effects {written}: {what} {'is' if one else 'are'} constant within every level of "
            f"{block.name!r}, so {'its random slope' if one else 'their random slopes'} cannot be told "
            f"apart from the random intercept (each level gets one effect, b0 + b1 * "
            f"{cols[0] if one else 'value'}): the {params} of {'this slope' if one else 'these slopes'} "
            f"{'is' if params == 'variance' else 'are'} "
            "not identified, only the covariance of the observations they imply. Drop the slope "
            f"(its fixed effect stays), or group by a factor within which {what} var{'ies' if one else 'y'}",
            UnidentifiedSlopeWarning, stacklevel=stacklevel + 1)
