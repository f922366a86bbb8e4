"""BLAS threading during fits.

The dense part of the factorization is re-factored at every objective evaluation; for
matrices of a few hundred to a couple of thousand rows, OpenBLAS's threads mostly add
synchronization, and on a machine whose cores are busy with other work that costs far
more than the arithmetic (measured here: an InstEval fit 1.2 s with one thread against
1.8-37 s with two on a shared 2-core machine).  Fits therefore run with one BLAS thread
unless the dense part is large enough for threads to pay.
"""
from __future__ import annotations

__all__ = ["blas_threads"]

_controller = None

#: dense parts with at least this many rows keep the library's thread count
THREADED_MIN_ROWS = 1500


class blas_threads:
    """Context manager: one BLAS thread when the dense part has fewer than ``THREADED_MIN_ROWS`` rows.

    Uses threadpoolctl; does nothing if it is unavailable.

    Parameters
    ----------
    dense_rows : int
        Size of the dense part of the factorization.
    """

    def __init__(self, dense_rows):
        self.limit = dense_rows < THREADED_MIN_ROWS
        self._ctx = None

    def __enter__(self):
        global _controller
        if self.limit:
            try:
                if _controller is None:            # scanning the loaded libraries is slow: once
                    from threadpoolctl import ThreadpoolController
                    _controller = ThreadpoolController()
                self._ctx = _controller.limit(limits=1, user_api="blas")
            except Exception:  # noqa: BLE001 - threading is an optimization only
                self._ctx = None
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.restore_original_limits()
        return False
