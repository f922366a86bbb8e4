"""Hand freed heap memory back to the system after large one-off constructions.

glibc keeps the memory of freed blocks below its mmap threshold in the heap, resident, for
later allocations; a process whose allocator has adapted its threshold (numpy temporaries of
a few MB freed once raise it to 32 MB) keeps the temporaries of a one-off construction
resident for the rest of its life, and later allocations (the dense Schur complement, mapped
on its own) add to them.  :func:`trim_heap` (``malloc_trim``) gives the free pages back; it
is called only after constructions that free large temporaries once per model (the GLMM's
reweighting plan), never in loops, where the pages would be faulted in again at every use.
A no-op where the C library has no ``malloc_trim`` (not glibc).
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["trim_heap"]


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


#: constructions over fewer rows than this free too little to be worth trimming (the pages
#: given back are faulted in again by the next allocations: on small models a cost, no gain)
TRIM_ROWS = 200_000


def trim_heap(rows):
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``) after a
    construction over ``rows`` rows (nothing below :data:`TRIM_ROWS`)."""
    if _TRIM is not None and rows >= TRIM_ROWS:
        _TRIM(0)
