"""BLAS threading during fits.

The dense part of the factorization is re-factored at every objective evaluation; for
matrices of a few hundred to a couple of thousand rows, OpenBLAS's threads mostly add
synchronization, and on a machine whose cores are busy with other work that costs far
more than the arithmetic (measured here: an InstEval fit 1.2 s with one thread against
1.8-37 s with two on a shared 2-core machine).  Fits therefore run with one BLAS thread
unless the dense part is large enough for threads to pay; the dense inverse of the
gradient (``potri``, which does gain from threads from ~600 rows) asks for them back.

Threads also need idle cores: OpenBLAS's threads wait for each other by spinning, so with
another process busy on a core a threaded inverse of 1,000 rows ran 5-6 times slower than
on one thread (InstEval 0.65 s quiet, 3.5-4.3 s beside one busy process, 0.8 s on one thread
there).  The count asked for is therefore capped by the cores the load average leaves free
(:func:`free_cores`).
"""
from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["blas_threads", "inverse_threads", "fit_threads", "free_cores", "THREADED_MIN_ROWS",
           "INVERSE_THREADED_MIN_ROWS"]

_state = {"controller": None, "default": None, "original": None}

#: dense parts with at least this many rows keep the library's thread count during a fit
THREADED_MIN_ROWS = 1500
#: dense inverses with at least this many rows use the library's thread count
INVERSE_THREADED_MIN_ROWS = 600
#: dense inverses with fewer rows leave the thread setting alone (see :func:`inverse_threads`)
TINY_ROWS = 64


def _controller():
    if _state["controller"] is None:            # scanning the loaded libraries is slow: once
        from threadpoolctl import ThreadpoolController
        ctl = ThreadpoolController()
        _state["controller"] = ctl
        blas = [lib["num_threads"] for lib in ctl.info() if lib.get("user_api") == "blas"]
        _state["default"] = max(blas) if blas else None
    return _state["controller"]


def free_cores():
    """Cores not busy with other work, at least 1: the CPU count less the 1-minute load
    average, this process's own share (up to one core) counted as free."""
    ncpu = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):          # (not on every platform)
        return ncpu
    return max(1, min(ncpu, int(ncpu + 1.5 - max(load, 1.0))))


class blas_threads:
    """Context manager: one BLAS thread for a dense part of fewer than ``min_rows`` rows,
    the library's default number of threads otherwise, at most :func:`free_cores`.

    Uses threadpoolctl; does nothing if it is unavailable.  The BLAS thread count
    is process state: active contexts (of any thread) form a stack whose newest
    entry is in force, and the library's own setting comes back when the last one
    exits, whatever order threads leave in.

    Parameters
    ----------
    dense_rows : int
        Size of the dense part of the factorization.
    min_rows : int
        Threshold (default ``THREADED_MIN_ROWS``).
    """

    def __init__(self, dense_rows, min_rows=None):
        self.small = dense_rows < (THREADED_MIN_ROWS if min_rows is None else min_rows)
        self._entry = None

    def __enter__(self):
        try:
            ctl = _controller()
            n = 1 if self.small else _state["default"]
            if n is None:
                return self
            if n > 1:                  # (one thread needs no count of the free cores)
                n = min(n, free_cores())
            if not _active and _in_force(ctl, n):
                return self            # nothing to set or give back (one get: ~3 us, a set ~15)
            with _lock:
                self._entry = [n]                        # a fresh object: removed by identity
                _active.append(self._entry)
                _set_limit(ctl, n)
        except Exception:  # noqa: BLE001 - threading is an optimization only
            self._entry = None
        return self

    def __exit__(self, *exc):
        if self._entry is None:
            return False
        try:
            with _lock:
                _active[:] = [e for e in _active if e is not self._entry]
                if _active:
                    _set_limit(_state["controller"], _active[-1][0])
                elif _state["original"] is not None:
                    for lib, k in _state["original"]:
                        lib.set_num_threads(k)
                    _state["original"] = None
        except Exception:  # noqa: BLE001
            pass
        return False


_lock = threading.Lock()
_active = []


def _blas_libs(ctl):
    libs = _state.get("libs")
    if libs is None:
        libs = _state["libs"] = [lib for lib in ctl.lib_controllers if lib.user_api == "blas"]
    return libs


def _in_force(ctl, n):
    """Whether every BLAS library runs ``n`` threads now (a one-thread process: every fit)."""
    libs = _blas_libs(ctl)
    return bool(libs) and all(lib.get_num_threads() == n for lib in libs)


def _set_limit(ctl, n):
    """Set the BLAS thread count; the first limit remembers the libraries' own settings.
    Each library is set directly (one C call each): threadpoolctl's ``limit`` queries and
    wraps every library first, ~30 us, a tenth of a small fit."""
    libs = _blas_libs(ctl)
    if _state["original"] is None:
        _state["original"] = [(lib, lib.num_threads) for lib in libs]
    for lib in libs:
        lib.set_num_threads(n)


def inverse_threads(rows):
    """``blas_threads(rows, INVERSE_THREADED_MIN_ROWS)`` for a dense inverse, or nothing for one
    of fewer than ``TINY_ROWS`` rows: OpenBLAS runs those on one thread anyway, and setting
    the limit through threadpoolctl (~40 us) would cost more than the inverse."""
    if rows < TINY_ROWS:
        return contextlib.nullcontext()
    return blas_threads(rows, INVERSE_THREADED_MIN_ROWS)


def fit_threads(rows, level_by_level=False):
    """The BLAS setting of an LMM fit whose dense part has ``rows`` rows: ``blas_threads(rows)``,
    or nothing for a ``level_by_level`` system (:class:`~mlmext.linalg.small_levels.OneBlockLevels`)
    of fewer than ``TINY_ROWS`` rows.  That evaluator makes only products of a few level blocks,
    below the size OpenBLAS threads at, and setting the limit and giving it back cost 15-40 us
    of a ~1 ms fit (sleepstudy).  The library scan a limit needs is still made there, once per
    process as before: a later threaded context (batched refits) does not pay it."""
    if level_by_level and rows < TINY_ROWS:
        try:
            _controller()
        except Exception:  # noqa: BLE001 - threading is an optimization only
            pass
        return contextlib.nullcontext()
    return blas_threads(rows)
