"""A DataFrame's columns as one model build reads them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..immutable_cache import per_object

__all__ = ["FrameColumns", "shallow_copy"]


def _block_copy(df):
    """``df.copy(deep=False)`` from its blocks' own shallow copies (pandas' ``Block.copy``,
    which registers each new block with the old one's references: copy-on-write keeps both
    frames apart) in a new manager of views of the axes, without the manager's generic
    ``apply`` and the frame's constructors: half the time, and after a garbage collection
    ~30 us of a ~0.9 ms build less (pandas' code comes back from memory).  Private pandas
    API: :data:`shallow_copy` checks it at import."""
    mgr = df._mgr
    new = type(mgr)(tuple(b.copy(deep=False) for b in mgr.blocks), [ax.view() for ax in mgr.axes],
                    verify_integrity=False)
    return pd.DataFrame._from_mgr(new, new.axes).__finalize__(df, method="copy")


def _checked_block_copy():
    """:func:`_block_copy` where this pandas gives with it what ``copy(deep=False)`` gives (equal
    frame, own axes, copy-on-write in both directions), else None."""
    try:
        src = pd.DataFrame({"a": [1.5, 2.5], "b": pd.Categorical(["x", "y"]), "c": [1, 2]})
        src.attrs["k"] = 1
        got, want = _block_copy(src), src.copy(deep=False)
        ok = type(got) is pd.DataFrame and got.equals(want) and got.dtypes.equals(want.dtypes) \
            and got.attrs == want.attrs and got.columns is not src.columns \
            and got.index is not src.index and len(got._mgr.blocks) == len(src._mgr.blocks)
        src.iloc[0, 0] = -1.0
        got.iloc[1, 2] = -2
        ok = ok and got["a"].tolist() == [1.5, 2.5] and src["c"].tolist() == [1, 2]
        return _block_copy if ok else None
    except Exception:  # noqa: BLE001 - any difference: pandas' own copy
        return None


_fast_copy = _checked_block_copy()


def shallow_copy(df):
    """``df.copy(deep=False)`` (a DataFrame): a frame of its own sharing ``df``'s data until
    either is written to."""
    return df.copy(deep=False) if _fast_copy is None or type(df) is not pd.DataFrame \
        else _fast_copy(df)


def _positions(index):
    """label -> position of an Index's unique labels (a label that repeats is left out)."""
    pos = {}
    for i, label in enumerate(index.tolist()):
        pos[label] = -1 if label in pos else i
    return {k: v for k, v in pos.items() if v >= 0}


def _stored_array(data, name, n):
    """The values of column ``name`` as the frame stores them (what ``data[name].array`` holds;
    a NumPy column as the read-only array ``data[name].to_numpy()`` gives), read without making
    a Series, or None.  pandas' ``_get_column_array`` is private: anything unexpected (no such
    method, a repeated label, a length other than the frame's ``n`` rows) gives None and the
    caller reads the Series."""
    get = getattr(data, "_get_column_array", None)
    if get is None or not isinstance(data, pd.DataFrame):
        return None
    try:
        i = per_object(_positions, data.columns).get(name)
        a = None if i is None else get(i)
    except Exception:  # noqa: BLE001 - a pandas without it: the public path
        return None
    if isinstance(a, np.ndarray):
        if a.ndim != 1 or a.shape[0] != n:
            return None
        a = a.view()
        a.flags.writeable = False        # (as Series.to_numpy() under copy-on-write)
        return a
    if isinstance(a, pd.api.extensions.ExtensionArray) and len(a) == n:
        return a
    return None


class FrameColumns:
    """``data[name]`` for one build, each column fetched once: a DataFrame's column access
    costs ~15 us (the label is looked up through the columns Index), and a build reads the
    grouping columns three times.  :meth:`array` reads a column's values without a Series:
    after a garbage collection has evicted the CPU caches, making the first Series of a build
    costs ~150 us (pandas' code and objects come back from memory).  Lives as long as the
    build (the frame is not changed during it)."""

    __slots__ = ("data", "series", "arrays", "nrows")

    def __init__(self, data, series=None):
        self.data = data
        self.series = {} if series is None else series
        self.arrays = {}
        self.nrows = None

    def __getitem__(self, name):
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = self.data[name]
        return s

    def array(self, name):
        """Column ``name``'s values: a NumPy array (read-only) or a pandas ExtensionArray, the
        array of ``data[name]`` (``to_numpy()`` of a NumPy column, else ``.array``)."""
        a = self.arrays.get(name)
        if a is None:
            s = self.series.get(name)
            if s is None and self.nrows is None:
                self.nrows = len(self.data)
            a = _stored_array(self.data, name, self.nrows) if s is None else None
            if a is None:
                s = self[name]
                a = s.to_numpy() if isinstance(s.dtype, np.dtype) else s.array
            self.arrays[name] = a
        return a

    def dtype(self, name):
        """``data[name].dtype``."""
        return self.array(name).dtype
