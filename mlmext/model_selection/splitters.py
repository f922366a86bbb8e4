"""Grouped cross-validation splitters with scikit-learn's interface (no scikit-learn import).

Each splitter has ``split(X, y=None, groups=None)``, yielding ``(train, test)`` arrays of row
positions, and ``get_n_splits(X=None, y=None, groups=None)``, so it can be passed as ``cv=`` to
scikit-learn's ``cross_val_score`` / ``GridSearchCV`` as well as to
:func:`mlmext.cross_validate`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def _group_codes(X, groups):
    """Integer codes (0..G-1, in order of first appearance) of the group labels, one per row."""
    if groups is None:
        raise ValueError("groups is required: one group label per row (e.g. data['Subject'])")
    g = pd.Series(np.asarray(groups).ravel() if not isinstance(groups, pd.Series) else groups.to_numpy())
    if X is not None and len(g) != len(X):
        raise ValueError(f"groups has {len(g)} labels for {len(X)} rows of X")
    if g.isna().any():
        raise ValueError("groups has missing labels; drop those rows or give them a label")
    codes, _ = pd.factorize(g, sort=False)
    return codes.astype(np.int64)


def _generator(rng):
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise ValueError(f"rng must be None, an int seed or a numpy.random.Generator; got {rng!r}")


def _check_n_splits(n_splits):
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer of at least 2; got {n_splits!r}")
    return int(n_splits)


class GroupKFold:
    """Leave-groups-out K-fold: each group's rows are all in one test fold.

    Parameters
    ----------
    n_splits : int
        Number of folds (at least 2, at most the number of groups).
    shuffle : bool
        Assign groups to folds in a random order (``rng``); otherwise in order of size,
        largest first, each to the fold with the fewest rows so far (as scikit-learn's
        ``GroupKFold``), which is deterministic.
    rng : int or numpy.random.Generator, optional
        Seed of the shuffling (``shuffle=True`` only).

    Examples
    --------
    >>> cv = GroupKFold(5)
    >>> for train, test in cv.split(df, groups=df["Subject"]):
    ...     ...
    """

    def __init__(self, n_splits=5, shuffle=False, rng=None):
        self.n_splits = _check_n_splits(n_splits)
        self.shuffle = bool(shuffle)
        if rng is not None and not self.shuffle:
            raise TypeError("GroupKFold uses rng only with shuffle=True")
        self.rng = rng

    def get_n_splits(self, X=None, y=None, groups=None):
        """The number of folds."""
        return self.n_splits

    def _fold_of_group(self, codes):
        G = codes.max() + 1
        if G < self.n_splits:
            raise ValueError(f"there are {G} groups for n_splits={self.n_splits} folds; "
                             f"leave-groups-out needs at least as many groups as folds")
        sizes = np.bincount(codes, minlength=G)
        if self.shuffle:
            order = _generator(self.rng).permutation(G)
        else:
            order = np.argsort(-sizes, kind="stable")
        fold = np.empty(G, dtype=np.int64)
        load = np.zeros(self.n_splits)
        for g in order:
            # balanced: the lightest fold takes the next group (ties: the first such fold)
            k = int(np.argmin(load))
            fold[g] = k
            load[k] += sizes[g]
        return fold

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` row positions, one pair per fold.

        Parameters
        ----------
        X : array_like
            The rows (only their number is used).
        y : ignored
            Accepted for scikit-learn's interface.
        groups : array_like
            One group label per row.
        """
        codes = _group_codes(X, groups)
        fold = self._fold_of_group(codes)[codes]
        rows = np.arange(len(codes))
        for k in range(self.n_splits):
            yield rows[fold != k], rows[fold == k]

    def __repr__(self):
        return f"GroupKFold(n_splits={self.n_splits}, shuffle={self.shuffle})"


class LeaveOneGroupOut:
    """One fold per group: each group's rows are the test set once."""

    def get_n_splits(self, X=None, y=None, groups=None):
        """The number of groups (``groups`` is required)."""
        return int(_group_codes(X, groups).max() + 1)

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` row positions, one pair per group (order of appearance)."""
        codes = _group_codes(X, groups)
        if codes.max() + 1 < 2:
            raise ValueError("LeaveOneGroupOut needs at least 2 groups")
        rows = np.arange(len(codes))
        for g in range(codes.max() + 1):
            yield rows[codes != g], rows[codes == g]

    def __repr__(self):
        return "LeaveOneGroupOut()"


class WithinGroupKFold:
    """K-fold on rows stratified by group: every group is in training in every fold.

    Each group's rows are put in random order and dealt to the folds in turn (starting at
    a random fold, so that small groups do not all land in the first folds).  A group with
    at least two rows therefore has rows in training whenever it has rows in the test set;
    the rows of a group with a single row are never tested (they stay in every training
    set), so every test row's group is seen in training.

    Parameters
    ----------
    n_splits : int
        Number of folds (at least 2).
    rng : int or numpy.random.Generator, optional
        Seed of the random order.
    """

    def __init__(self, n_splits=5, rng=None):
        self.n_splits = _check_n_splits(n_splits)
        self.rng = rng

    def get_n_splits(self, X=None, y=None, groups=None):
        """The number of folds."""
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield ``(train, test)`` row positions, one pair per fold (see the class)."""
        codes = _group_codes(X, groups)
        gen = _generator(self.rng)
        K = self.n_splits
        fold = np.full(len(codes), -1, dtype=np.int64)
        for g in range(codes.max() + 1):
            rows = np.flatnonzero(codes == g)
            if rows.size < 2:
                continue                       # a single row: never tested (group unseen otherwise)
            fold[gen.permutation(rows)] = (gen.integers(K) + np.arange(rows.size)) % K
        if not np.any(fold >= 0):
            raise ValueError("every group has a single row: no row can be held out within its group")
        allrows = np.arange(len(codes))
        for k in range(K):
            yield allrows[fold != k], allrows[fold == k]

    def __repr__(self):
        return f"WithinGroupKFold(n_splits={self.n_splits})"
