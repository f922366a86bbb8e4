"""What a model build reads off immutable pandas objects, computed once per object.

A small model's build (sleepstudy: 180 rows) spends most of its time in pandas' per-call
overhead, not in arithmetic: turning an Index of Arrow-backed strings into a list costs
~7 us, building an Index from a list of names ~60 us (its string dtype is inferred through
Arrow), and the same column names and grouping levels are converted again on every build.

A pandas ``Index`` (the data's columns, a categorical's categories) is immutable: the
same object always holds the same labels (``df["new"] = ...`` or ``df.columns = ...``
give the frame a *new* Index).  :func:`per_object` keeps what a function computed from
such an object, keyed by the object itself -- its ``id`` checked through a weak reference,
so an object that died and a new one at the same address is a miss.  Nothing is keyed on
values read out of a mutable object (a DataFrame's columns, a Series), so a frame changed
between two builds never meets a stale entry.  :func:`names_index` shares one Index per
tuple of names (handed out as a view, so setting one frame's ``columns.name`` changes no
other).  Both are safe across threads: a lost race computes the same value twice.
"""
from __future__ import annotations

import functools
import threading
import weakref

import pandas as pd

__all__ = ["per_object", "column_labels", "names_index", "clear", "MAX_OBJECTS"]

#: objects remembered per function (the oldest half is forgotten when full)
MAX_OBJECTS = 256

_tables = {}
_lock = threading.Lock()


def clear():
    """Forget everything kept."""
    with _lock:
        for table in _tables.values():
            table.clear()
    _names_index.cache_clear()


def per_object(func, obj, *args):
    """``func(obj, *args)`` for an immutable ``obj``, computed once per object (see the module
    docstring).  ``args`` must not change the value (a name for an error message);
    ``func`` must return something its callers do not mutate (a tuple, a frozenset);
    objects that take no weak reference are not kept."""
    table = _tables.get(func)
    if table is None:
        with _lock:
            table = _tables.setdefault(func, {})
    key = id(obj)
    hit = table.get(key)
    if hit is not None and hit[0]() is obj:
        return hit[1]
    value = func(obj, *args)
    try:
        ref = weakref.ref(obj)
    except TypeError:
        return value
    with _lock:
        if len(table) >= MAX_OBJECTS:
            for k in list(table)[: MAX_OBJECTS // 2]:
                del table[k]
        table[key] = (ref, value)
    return value


def _remember(func, obj, value):
    """Keep ``value`` as ``func(obj)`` (the caller knows it already)."""
    table = _tables.get(func)
    if table is None:
        with _lock:
            table = _tables.setdefault(func, {})
    with _lock:
        if len(table) >= MAX_OBJECTS:
            for k in list(table)[: MAX_OBJECTS // 2]:
                del table[k]
        table[id(obj)] = (weakref.ref(obj), value)


def _labels(index):
    return tuple(index.tolist())


def column_labels(index):
    """``tuple(index.tolist())``, once per Index object (an Index is immutable; a list of
    Arrow-backed strings costs ~7 us to make)."""
    return per_object(_labels, index)


@functools.lru_cache(maxsize=512)
def _names_index(names):
    return pd.Index(list(names))


def names_index(names):
    """``pd.Index(names)`` for column names (strings), the Index shared per tuple of names and
    handed out as a view of it (an Index's labels cannot change; its ``name`` can, per view)."""
    names = tuple(names)
    if not all(type(n) is str for n in names):
        return pd.Index(list(names))
    view = _names_index(names).view()
    _remember(_labels, view, names)      # its labels are known: column_labels(view) is free
    return view
